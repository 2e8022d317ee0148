"""How much of the teachers' spread does a calibrated predictive want? (Evidence for the UCI results page, docs/benchmarks/uci.md.)

For every cached teacher ensemble of the standard UCI splits, scale each member's deviation from the
ensemble mean at the test inputs by sqrt(r), keep each member's noise variance, and score the mixture
on the test labels:

    p_r(y | x) = (1/n) Σ_i N(y | f̄(x) + sqrt(r) (f_i(x) − f̄(x)), σ²_{ε,i})

r = 1 is the ensemble itself, r = 0 its mean with the members' noise. A student whose epistemic
variance is a share r of the teachers' (its variance ratio) and that matches their mean and noise
predicts about p_r, so the NLL-optimal r says which variance ratio the NLL target rewards. Also
prints the 95 % coverage at r = 0 and 1, and the NLL at r = 1 with each member's noise variance
replaced by the inverse gamma fitted to all of them (50 equal-probability nodes, every member
with every node): the aleatoric law the DLF's predictive uses; and the NLL at r = 1 with every
member paired with every member's own noise variance (the teachers' noise variances kept, their
pairing with the members' functions dropped, as in any predictive that draws the noise
independently of the function); and the rank correlation (Spearman) between each member's mean
squared deviation from the ensemble mean at the training inputs and its noise variance, mean
over splits: how strongly a member's noise goes with how far its function strays. Test labels are used only to
describe this trade-off, never to choose anything. Needs the cached teachers of
`pyro-dlf bench uci` (benchmarks/cache).

    python benchmarks/scripts/teacher_spread_share.py [--cache-dir benchmarks/cache] [--out FILE.md] SET [SET ...]
"""
import argparse
import math
import os
import platform
import sys

import torch

from pyro_dlf_bench import metrics
from pyro_dlf._files import atomic_write
from pyro_dlf_bench.baselines import DeepEnsembleRegressor
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf.noise import fit_inverse_gamma, inverse_gamma_quantiles

SHARES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"))
    parser.add_argument("--cache-dir", default="benchmarks/cache")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the Markdown table here (atomically)")
    args = parser.parse_args()
    lines = ["| set | splits | " + " | ".join(f"NLL r={r:g}" for r in SHARES) + " | best r | cov95 r=0 | cov95 r=1 | NLL r=1, IG noise | NLL r=1, unpaired noise "
             "| rank corr. (deviation, noise) |",
             "|---|---|" + "---|" * (len(SHARES) + 6)]
    for name in args.sets:
        data = load_uci(os.path.join(args.data_dir, name))
        nll = {r: [] for r in SHARES}
        coverage = {0.0: [], 1.0: []}
        ig_nll, unpaired_nll, rank_corr = [], [], []
        for seed in range(args.splits):
            path = os.path.join(args.cache_dir, f"{name}_s{seed}_train_n50_100x100.pt")
            if not os.path.exists(path):
                continue
            split = data.split(seed)
            ensemble = DeepEnsembleRegressor(split.x_train.shape[1], num_members=50, hidden=(100, 100))
            ensemble.load_state_dict(torch.load(path, weights_only=True))
            with torch.no_grad():
                f = ensemble.member_predictions(split.x_test)
            noise = ensemble.noise_variances.unsqueeze(1).expand_as(f)
            ys, y = split.y_standardizer, split.y_test_original
            for r in SHARES:
                members = f.mean(0) + math.sqrt(r) * (f - f.mean(0))
                means, variances = ys.inverse(members), ys.inverse_variance(noise)
                nll[r].append(float(metrics.mixture_nll(means, variances, y)))
                if r in coverage:
                    coverage[r].append(float(metrics.interval_coverage(means, variances, y, level=0.95)))
            a, b = fit_inverse_gamma(ensemble.noise_variances.double())
            nodes = inverse_gamma_quantiles(a, b, 50).to(f.dtype)
            means = ys.inverse(f).repeat_interleave(len(nodes), 0)  # every member with every node
            variances = ys.inverse_variance(nodes.repeat(f.shape[0]).unsqueeze(1).expand(-1, f.shape[1]))
            ig_nll.append(float(metrics.mixture_nll(means, variances, y)))
            v = ensemble.noise_variances.to(f.dtype)
            means = ys.inverse(f).repeat_interleave(len(v), 0)  # every member with every member's variance
            variances = ys.inverse_variance(v.repeat(f.shape[0]).unsqueeze(1).expand(-1, f.shape[1]))
            unpaired_nll.append(float(metrics.mixture_nll(means, variances, y)))
            with torch.no_grad():
                train = ensemble.member_predictions(split.x_train)
            deviation = (train - train.mean(0)).pow(2).mean(1)
            ranks = torch.stack([deviation.argsort().argsort(), v.argsort().argsort()]).double()
            rank_corr.append(float(torch.corrcoef(ranks)[0, 1]))
        count = len(nll[1.0])
        if not count:
            print(f"{name}: no cached teachers under {args.cache_dir}", file=sys.stderr)
            continue
        mean = {r: sum(v) / count for r, v in nll.items()}
        best = min(SHARES, key=mean.get)
        lines.append(f"| {name} | {count} | " + " | ".join(f"{mean[r]:.3f}" for r in SHARES) + f" | {best:g} | "
                     f"{sum(coverage[0.0]) / count:.3f} | {sum(coverage[1.0]) / count:.3f} | {sum(ig_nll) / count:.3f} | "
                     f"{sum(unpaired_nll) / count:.3f} | {sum(rank_corr) / count:.2f} |")
    text = "\n".join(["# Test-label NLL of the teacher ensemble with a share r of its spread", "",
                      "Each member's deviation from the ensemble mean scaled by sqrt(r), its noise variance kept; "
                      "mean over the cached splits, original units (r = 1: the ensemble; r = 0: its mean with the "
                      "members' noise). A description of the trade-off, not a choice.", "",
                      "Command: `python " + " ".join(sys.argv) + "`  ",
                      f"Machine: {platform.platform()}, torch {torch.__version__}.", ""] + lines) + "\n"
    print(text)
    if args.out:
        atomic_write(args.out, lambda fh: fh.write(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
