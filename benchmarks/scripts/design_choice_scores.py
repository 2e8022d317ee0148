"""Would the design choice pick differently if it scored candidates as the body choice does? (A diagnostic.)

``distill(design="auto")`` scores each candidate design by the DLF marginal density of the teachers' held-out
values (`pyro_dlf.design.choice.held_out_score`); the body choice scores regression candidates by the
ensemble-predictive log score (`pyro_dlf.selection.predictive_log_score`: the teachers' noisy outputs under the
student's predictive). For each standard split given, this fits the default `DLF` row of `pyro-dlf bench uci` once,
scores the same five candidate fits both ways (per family: in range, around, beyond), and where the predictive score
would choose another candidate, fits that design too. It prints both choices' test NLL (labels used for the report
only, never for a choice). The teachers are the benchmark's (loaded from its cache, or trained as it trains them).

    python benchmarks/scripts/design_choice_scores.py yacht 0 1 5 7
"""
import argparse
import os
import warnings

import torch

import pyro_dlf.design.choice as choice_module
from pyro_dlf import distill
from pyro_dlf.selection import predictive_log_score
from pyro_dlf_bench import metrics
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf_bench.harness.uci import UCIBenchConfig, _teachers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("dataset")
parser.add_argument("splits", type=int, nargs="+")
parser.add_argument("--data-dir", default=os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"))
parser.add_argument("--cache-dir", default="benchmarks/cache")
args = parser.parse_args()
warnings.filterwarnings("ignore")
torch.set_num_threads(1)

data = load_uci(os.path.join(args.data_dir, args.dataset))
density_score = choice_module.held_out_score
for seed in args.splits:
    split = data.split(seed)
    ensemble = _teachers(UCIBenchConfig(cache_dir=args.cache_dir or None), data, split, split.x_train, split.y_train, "train")
    x, x_test, noise = split.x_train, split.x_test, ensemble.noise_variances
    ys, y = split.y_standardizer, split.y_test_original

    def test_nll(means, variances) -> float:
        return float(metrics.mixture_nll(ys.inverse(means), ys.inverse_variance(variances), y))

    scored = []

    def both_scores(student, points, values):
        """The density score the choice uses (returned), and the predictive score beside it (recorded)."""
        density = density_score(student, points, values)
        predictive = {k: -float(predictive_log_score(student, points[k], values[k], noise).mean()) for k in points}
        scored.append((density, sum(predictive.values()) / len(predictive), predictive))
        return density

    # The bench's DLF row: distill(hidden="auto", loading_hidden=(50,), design="auto") with its schedule.
    options = dict(num_factors=10, teacher_noise_variances=noise, hidden="auto", loading_hidden=(50,), num_iterations=150,
                   mmd_steps=500, seed=seed, progress=False)
    choice_module.held_out_score = both_scores
    try:
        student = distill(x, ensemble.member_predictions, design="auto", **options)
    finally:
        choice_module.held_out_score = density_score
    candidates = [(s["design"], s["distance_feature"]) for s in student.design_choice.scores]
    for (design, feature), (density, predictive, families) in zip(candidates, scored):
        print(f"  {args.dataset} {seed} {design:7s} distance feature {feature!s:5s} density {density['score']:8.3f}  "
              f"predictive {predictive:8.3f} ({' '.join(f'{k}={v:.3f}' for k, v in families.items())})")
    chosen = (student.design_choice.design, student.design_choice.distance_feature)
    best = candidates[min(range(len(scored)), key=lambda i: scored[i][1])]
    line = (f"{args.dataset} {seed} ensemble NLL {test_nll(*ensemble.predictive(x_test)):.4f} | density choice "
            f"{chosen[0]}/{chosen[1]} NLL {test_nll(*student.predictive_mixture(x_test)):.4f}")
    if best != chosen:
        other = distill(x, ensemble.member_predictions, design=best[0], distance_feature=best[1], **options)
        line += f" | predictive choice {best[0]}/{best[1]} NLL {test_nll(*other.predictive_mixture(x_test)):.4f}"
    else:
        line += " | predictive choice: the same"
    print(line, flush=True)
