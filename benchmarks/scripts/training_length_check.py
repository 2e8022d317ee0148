"""Where a long fit's mean goes: the DLF's mean against the ensemble mean at the design points and
at the test inputs, for each training length of `pyro_dlf.selection.TRAINING_FAMILY` (evidence for
the UCI results page, docs/benchmarks/uci.md).

For each length: the held-out score that `distill(training_length="auto")` compares (fitted on 80 %
of the training inputs, scored on the rest, as `select_hidden` does), then the fit on all training
inputs -- the RMS gap between its mean and the ensemble mean at the training inputs and at the test
inputs (in standard deviations of the training targets) and, for reference only, its test NLL and
RMSE. The teachers are the benchmark's (loaded from its cache, or trained as `pyro-dlf bench uci` does).

    python benchmarks/scripts/training_length_check.py wine-quality-red 0 --hidden 100 100
"""
import argparse
import os
import warnings

import torch

from pyro_dlf import distill
from pyro_dlf_bench import metrics
from pyro_dlf_bench.harness.uci import UCIBenchConfig, _teachers
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf.selection import TRAINING_FAMILY, predictive_log_score, split_design

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("dataset")
parser.add_argument("split", type=int)
parser.add_argument("--hidden", type=int, nargs="+", default=[100, 100])
parser.add_argument("--data-dir", default=os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"))
parser.add_argument("--cache-dir", default="benchmarks/cache")
args = parser.parse_args()
warnings.filterwarnings("ignore")
torch.set_num_threads(1)

data = load_uci(os.path.join(args.data_dir, args.dataset))
split = data.split(args.split)
ensemble = _teachers(UCIBenchConfig(cache_dir=args.cache_dir or None), data, split, split.x_train, split.y_train, "train")
x, x_test = split.x_train, split.x_test
f, noise = ensemble.member_predictions(x), ensemble.noise_variances
f_test = ensemble.member_predictions(x_test)
fit, val = split_design(len(x), 0.2, args.split)
ys = split.y_standardizer
print(f"{args.dataset} split {args.split}, body {tuple(args.hidden)}: teachers' spread (sd) "
      f"{float(f.std(0).mean()):.3f} at the training inputs, {float(f_test.std(0).mean()):.3f} at the test inputs")
print("| length | held-out score | gap to ensemble mean, design | gap, test | test NLL | test RMSE |")
print("|---|---|---|---|---|---|")
for length in TRAINING_FAMILY:
    options = dict(num_factors=10, teacher_noise_variances=noise, hidden=tuple(args.hidden), num_iterations=150,
                   mmd_steps=500, training_length=length, seed=args.split, progress=False)
    part = distill(x[fit], f[:, fit], **options)
    score = float(predictive_log_score(part, x[val], f[:, val], noise.double()).mean())
    student = distill(x, f, **options)
    with torch.no_grad():
        gap_design = float((student.dlf.mean(x) - f.mean(0)).pow(2).mean().sqrt())
        gap_test = float((student.dlf.mean(x_test) - f_test.mean(0)).pow(2).mean().sqrt())
    means, variances = student.predictive_mixture(x_test)
    means_o, vars_o = ys.inverse(means), ys.inverse_variance(variances)
    nll = float(metrics.mixture_nll(means_o, vars_o, split.y_test_original))
    rmse = float((means_o.mean(0) - split.y_test_original).pow(2).mean().sqrt())
    print(f"| {length:g} | {score:.4f} | {gap_design:.3f} | {gap_test:.3f} | {nll:.4f} | {rmse:.4f} |", flush=True)
