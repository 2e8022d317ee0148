"""Where the DLF's epistemic variance at test inputs comes from: ‖Φ(x)‖² or the nugget's growth. (A diagnostic.)

The standard protocol's variance ratio is ``Σ_x σ²_DLF(x) / Σ_x s²_teachers(x)`` over the test inputs, a ratio of
sums, so a few inputs with a large variance can carry it. With the distance feature the DLF's epistemic variance is
``‖Φ(x)‖² + g(x)``, where ``g(x) = σ_f² ((1 + d(x))^β − (1 + d_ref)^β)_+`` is the nugget's growth past ``d_ref``
(mathematics §9.4). For each standard split given, this refits the ``DLF`` row of ``pyro-dlf bench uci`` with the
design, body and distance feature recorded for that split in the results file (skipping the choices, which only
pick them), and splits the ratio into the two parts, with the distance ``d(x)`` of the test inputs against ``d_ref``,
the share of the sum the top 1 % of inputs carry, and the teachers' own spread at those inputs. The teachers are the
benchmark's (loaded from its cache, or trained as it trains them). It writes a markdown table with its command.

    python benchmarks/scripts/variance_ratio_parts.py protein-tertiary-structure 0 5 7 \\
        --output benchmarks/results/variance_ratio_parts_protein.md
"""
import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch

from pyro_dlf import distill
from pyro_dlf._files import atomic_write
from pyro_dlf_bench import metrics
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf_bench.harness.uci import UCIBenchConfig, _teachers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("dataset")
parser.add_argument("splits", type=int, nargs="+")
parser.add_argument("--data-dir", default=os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"))
parser.add_argument("--cache-dir", default="benchmarks/cache")
parser.add_argument("--results", default="benchmarks/results/uci_default.json",
                    help="the standard-protocol results whose DLF rows give each split's design and body")
parser.add_argument("--output", default=None, help="markdown file for the table (default: print only)")
args = parser.parse_args()
warnings.filterwarnings("ignore")
torch.set_num_threads(1)

with open(args.results) as fh:
    recorded = {row["split"]: row for row in json.load(fh)["rows"]
                if row["dataset"] == args.dataset and row["method"] == "DLF"}
missing = [s for s in args.splits if s not in recorded]
if missing:
    sys.exit(f"splits: {args.results} has no DLF row of {args.dataset} for split(s) {missing}")

data = load_uci(os.path.join(args.data_dir, args.dataset))
config = UCIBenchConfig(cache_dir=args.cache_dir or None)
lines = []
started = time.perf_counter()
for seed in args.splits:
    row, split = recorded[seed], data.split(seed)
    choice = row["design_choice"]
    ensemble = _teachers(config, data, split, split.x_train, split.y_train, "train")
    student = distill(split.x_train, ensemble.member_predictions, num_factors=config.num_factors,
                      teacher_noise_variances=ensemble.noise_variances, hidden=tuple(row["hidden"]),
                      loading_hidden=tuple(row["loading_hidden"]), design=choice["design"],
                      distance_feature=choice["distance_feature"], num_iterations=config.dlf_iterations,
                      mmd_steps=config.mmd_steps, seed=seed, progress=True)
    x_test = split.x_test
    with torch.no_grad():
        teacher_test = ensemble.member_predictions(x_test)
        spread = teacher_test.var(0)
        epistemic = student.predict(x_test, 1, return_samples=False).epistemic_variance
        dlf = student.dlf
        growth = dlf.nugget_growth_variance(x_test.to(dlf.input_loc)).to(epistemic)
        distance = dlf.data_distance(x_test.to(dlf.anchors))[:, 0] if dlf.distance_anchors is not None else None
        if distance is not None:
            # The farthest distance among the design points the growth was fitted on: beyond it the power law
            # (1 + d)^β is extrapolated. What the growth part would be with d held there (a what-if, not the model).
            design_points = student.design_choice.points(split.x_train)
            reach = float(dlf.data_distance(design_points.to(dlf.anchors))[:, 0].max())
            capped = dlf.growth_at_distance(distance.clamp_max(reach))
            # The distance to the nearest of every training row, not of the anchors drawn from them, in the same units.
            rows = ((split.x_train.to(dlf.anchors) - dlf.input_loc) / dlf.input_scale)
            tests = ((x_test.to(dlf.anchors) - dlf.input_loc) / dlf.input_scale)
            to_rows = torch.cat([torch.cdist(chunk, rows).min(-1).values for chunk in tests.split(512)]) / dlf.distance_scale
    total = float(spread.sum())
    top = epistemic.argsort(descending=True)[: max(1, len(epistemic) // 100)]
    cells = {
        "split": seed,
        "ratio (bench)": f"{row['variance_ratio']:.2f}",
        "ratio (refit)": f"{float(metrics.variance_ratio(epistemic, teacher_test)):.2f}",
        "‖Φ‖² part": f"{float((epistemic - growth).sum()) / total:.2f}",
        "growth part": f"{float(growth.sum()) / total:.2f}",
        "median σ²/s²": f"{float((epistemic / spread).median()):.2f}",
        "top 1 % share": f"{float(epistemic[top].sum() / epistemic.sum()):.2f}",
        "teachers' s² top 1 % / all": f"{float(spread[top].mean()) / float(spread.mean()):.2f}",
    }
    if distance is not None:
        reference = float(dlf.distance_reference)
        cells.update({
            "d_ref": f"{reference:.2f}",
            "d > d_ref": f"{float((distance > reference).double().mean()):.3f}",
            "d: q99 / max": f"{float(distance.quantile(0.99)):.2f} / {float(distance.max()):.2f}",
            "design's max d": f"{reach:.2f}",
            "growth part, d ≤ design's max": f"{float(capped.sum()) / total:.2f}",
            "top 1 %: d to rows / d": f"{float(to_rows[top].mean()):.2f} / {float(distance[top].mean()):.2f}",
            "growth part, d to every row": f"{float(dlf.growth_at_distance(to_rows).sum()) / total:.2f}",
            "σ_f², β": f"{float(dlf.noise_variance):.3g}, {float(dlf.nugget_growth):.2f}",
        })
    if not lines:
        lines += ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]
    lines.append("| " + " | ".join(str(v) for v in cells.values()) + " |")
    print(lines[-1], flush=True)

minutes = (time.perf_counter() - started) / 60
header = [f"# Parts of the DLF's variance ratio: {args.dataset}", "",
          f"`python {' '.join(sys.argv)}` ({platform.processor() or platform.machine()}, torch {torch.__version__}, one "
          f"thread, {minutes:.0f} min). The design, body and distance feature of each split are those recorded in "
          f"`{os.path.relpath(args.results)}`; the refit repeats that split's `DLF` row without its choices, so "
          "`ratio (refit)` differs from the bench's only by the fit's own variation. Parts: `‖Φ‖²` and the nugget's "
          "growth past `d_ref`, each summed over the test inputs over the teachers' summed spread (they add to the "
          "ratio). `top 1 %`: the 1 % of test inputs with the largest DLF variance, their share of its sum, and the "
          "teachers' mean spread there over their mean spread at every test input. `d`: the test inputs' distance "
          "feature (mathematics §9.3) in its own units, like `d_ref`; `design's max d`: the farthest design point the growth "
          "was fitted on, and the growth part were `d` held there; `d to rows`: the distance to the nearest of every "
          "training row instead of the nearest anchor drawn from them (same units, mean over the top 1 %), and the growth "
          "part with it (what-ifs with the fitted σ_f², β and d_ref, not the model).", ""]
text = "\n".join(header + lines) + "\n"
print(text)
if args.output:
    atomic_write(args.output, lambda handle: handle.write(text))
