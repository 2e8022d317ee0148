"""Can a label-free check choose the DLF fit that ranks out-of-range inputs best? (Evidence for the UCI results page, docs/benchmarks/uci.md.)

On the extrapolation split of each set (`UCIData.extrapolation_split`: the 10 % of rows furthest along
the first principal component are the out-of-range test points), fit six DLF candidates on the
teachers' values -- bodies 1 x 50 and 2 x 100, each on three design sets (the training inputs, plus a
Gaussian-perturbed copy of each, plus an outward-probe copy of each; seeds as in `pyro-dlf bench uci`)
-- and score each by three checks that use only the training inputs and the teachers:

* probe AUROC: the AUROC of the student's epistemic variance ||Phi(x)||^2 at outward probes
  (`pyro_dlf.design.outward_probes`, a fresh draw) against the training rows -- does its variance
  rise beyond the data?
* rank agreement, pooled: Spearman correlation between the student's ||Phi(x)||^2 and the teachers'
  spread over the training rows and the probes together;
* rank agreement, probes: the same over the probes only.

Each candidate's test AUROC (its epistemic variance, out-of-range against in-range test inputs,
as in the benchmark) is then set beside the checks: per split, the rank correlation between each
check and the test AUROC over the six candidates, and the test AUROC of the candidate each check
would choose, of the best candidate, and of the teachers. The test inputs are used only to describe
the checks, never to choose anything. Teachers are trained (or loaded from the benchmark's cache)
exactly as in `pyro-dlf bench uci --extrapolation`.

    python benchmarks/scripts/extrapolation_ranking_check.py [--splits 3] [--out FILE.md] SET [SET ...]
"""
import argparse
import json
import os
import platform
import sys

import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from pyro_dlf_bench import metrics
from pyro_dlf._files import atomic_write
from pyro_dlf.api import distill
from pyro_dlf_bench.harness.uci import UCIBenchConfig, _augmented, _datasets, _teachers
from pyro_dlf.design import outward_probes

BODIES = ((50,), (100, 100))
#: (design, seed offset) as in the benchmark's design variants.
DESIGNS = (("train", 0), ("gaussian", 60_000), ("outward", 90_000))
CHECKS = (("probe_auroc", "probe AUROC"), ("rank_pooled", "rank agreement, pooled"), ("rank_probes", "rank agreement, probes"))


def _candidates(config: UCIBenchConfig, data, seed: int) -> list[dict]:
    split = data.extrapolation_split(seed)
    teachers = _teachers(config, data, split, split.x_train, split.y_train, "train_extrapolation")
    x = split.x_train
    f, noise = teachers.member_predictions(x), teachers.noise_variances
    f_test, out = teachers.member_predictions(split.x_test), split.test_out_of_range
    probes = outward_probes(x, generator=torch.Generator().manual_seed(80_000 + seed))
    f_probes = teachers.member_predictions(probes)
    pool, teacher_spread = torch.cat([x, probes]), torch.cat([f.var(0), f_probes.var(0)]).double()
    teacher_auroc = metrics.auroc(f_test.var(0)[~out].double(), f_test.var(0)[out].double())
    rows = []
    for design, salt in DESIGNS:
        x_design = _augmented(x, design, torch.Generator().manual_seed(salt + seed))
        f_design = f if design == "train" else teachers.member_predictions(x_design)
        for hidden in BODIES:
            student = distill(x_design, f_design, num_factors=config.num_factors, teacher_noise_variances=noise, hidden=hidden,
                              num_iterations=config.dlf_iterations, mmd_steps=config.mmd_steps, seed=seed, progress=False)
            variance_test = student.predict(split.x_test, 1, return_samples=False).epistemic_variance.double()
            variance_pool = student.predict(pool, 1, return_samples=False).epistemic_variance.double()
            rows.append({
                "dataset": data.name, "split": seed, "design": design, "hidden": list(hidden), "teacher_auroc": teacher_auroc,
                "test_auroc": metrics.auroc(variance_test[~out], variance_test[out]),
                "probe_auroc": metrics.auroc(variance_pool[: len(x)], variance_pool[len(x):]),
                "rank_pooled": float(spearmanr(variance_pool.numpy(), teacher_spread.numpy())[0]),
                "rank_probes": float(spearmanr(variance_pool[len(x):].numpy(), teacher_spread[len(x):].numpy())[0]),
            })
    return rows


def _report(rows: list[dict], command: str) -> list[str]:
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["split"]), []).append(row)
    lines = ["# Choosing the DLF fit for extrapolation by a label-free ranking check", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads).", "",
             "Six DLF fits per split (bodies 1 × 50 and 2 × 100 on the training inputs, the Gaussian design and the outward "
             "design); test AUROC of each fit's epistemic variance, out of range against in range. Columns `chosen by ...`: "
             "the test AUROC of the fit that the check ranks first; `rank corr.`: Spearman correlation, over the six fits, "
             "between the check and the test AUROC.", "",
             "| set | split | teachers | training inputs 1 × 50 | training inputs 2 × 100 | best of six | "
             + " | ".join(f"chosen by {label}" for _, label in CHECKS) + " | "
             + " | ".join(f"rank corr. {label}" for _, label in CHECKS) + " |",
             "|" + "---|" * (6 + 2 * len(CHECKS))]
    correlations = {key: [] for key, _ in CHECKS}
    for (dataset, seed), group in groups.items():
        on_train = {tuple(r["hidden"]): r["test_auroc"] for r in group if r["design"] == "train"}
        tests = [r["test_auroc"] for r in group]
        chosen = [max(group, key=lambda r: r[key])["test_auroc"] for key, _ in CHECKS]
        corr = []
        for key, _ in CHECKS:
            value = float(spearmanr([r[key] for r in group], tests)[0])
            correlations[key].append(value)
            corr.append(value)
        lines.append(f"| {dataset} | {seed} | {group[0]['teacher_auroc']:.3f} | {on_train[BODIES[0]]:.3f} | {on_train[BODIES[1]]:.3f} | "
                     f"{max(tests):.3f} | " + " | ".join(f"{c:.3f}" for c in chosen) + " | " + " | ".join(f"{c:.2f}" for c in corr) + " |")
    lines += ["", "Mean rank correlation over splits: " + ", ".join(
        f"{label} {sum(correlations[key]) / len(correlations[key]):.2f}" for key, label in CHECKS) + ".", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"))
    parser.add_argument("--cache-dir", default="benchmarks/cache")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the Markdown report here, and the rows beside it as .json (atomically)")
    args = parser.parse_args()
    if args.splits < 1:
        parser.error("--splits must be at least 1")
    config = UCIBenchConfig(data_dir=args.data_dir, datasets=tuple(args.sets), cache_dir=args.cache_dir or None,
                            extrapolation=True, progress=False)
    try:
        datasets = _datasets(config)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    rows = []
    jobs = [(data, seed) for data in datasets for seed in range(args.splits)]
    for data, seed in tqdm(jobs, desc="splits"):
        rows += _candidates(config, data, seed)
    lines = _report(rows, "python " + " ".join(sys.argv))
    if args.out:
        atomic_write(args.out, lambda fh: fh.write("\n".join(lines)))
        atomic_write(os.path.splitext(args.out)[0] + ".json", lambda fh: json.dump(rows, fh, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
