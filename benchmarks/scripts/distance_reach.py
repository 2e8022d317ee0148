"""How far are test inputs from the data, in the distance feature's units? (Evidence for the UCI results page, docs/benchmarks/uci.md.)

For split 0 of each set, standard and extrapolation, the distance feature is set up as ``distill`` sets it for
the data rows (mathematics §9.3: up to 256 anchors drawn from the training rows with ``seed + 2``, the scale the
median of the anchors' nearest-neighbour distances), with the inputs standardized by the training rows (``distill``
standardizes by its design points, which for a design off the rows spread a little wider). Printed: the reference
``d_ref`` past which the predictive keeps the nugget's growth (the 95 % quantile of those distances, mathematics
§9.4), and the distances of the test inputs: their quantiles, the share past d = 1 (the earlier reference) and past
``d_ref``; on the extrapolation split for the in-range and the out-of-range test inputs apart. No labels are read.

    python benchmarks/scripts/distance_reach.py [--data-dir ../shared/data/uci] [--out FILE.md] SET [SET ...]
"""
import argparse
import os
import platform

import torch

from pyro_dlf._files import atomic_write
from pyro_dlf.api import DISTANCE_ANCHORS
from pyro_dlf_bench.datasets import load_uci
from pyro_dlf.models import DeepLatentFactor


def _model(x_train: torch.Tensor, seed: int) -> DeepLatentFactor:
    model = DeepLatentFactor(x_train.shape[1], num_factors=1, hidden=(), distance_anchors=DISTANCE_ANCHORS).double()
    with torch.no_grad():
        model.input_loc.copy_(x_train.mean(0))
        model.input_scale.copy_(x_train.std(0).clamp_min(1e-12))
    model.set_anchors(x_train, torch.Generator().manual_seed(seed + 2))
    return model


def _describe(d: torch.Tensor, reference: float) -> str:
    q = torch.quantile(d, torch.tensor([0.5, 0.9], dtype=d.dtype))
    # Lattice data put many inputs at exactly one spacing: d = 1 up to rounding is not past it.
    past = lambda level: 100 * float((d > level * (1 + 1e-6)).double().mean())  # noqa: E731
    return f"{float(q[0]):.2f} / {float(q[1]):.2f} | {past(1.0):.0f} % | {past(reference):.0f} %"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_DLF_UCI_DIR", "../shared/data/uci"))
    parser.add_argument("--out", default=None, help="write the Markdown table here (atomically)")
    args = parser.parse_args()
    lines = ["| set | split | test inputs | d_ref | median / 90 % of d | share d > 1 | share d > d_ref |", "|---|---|---|---|---|---|---|"]
    for name in args.sets:
        data = load_uci(os.path.join(args.data_dir, name))
        for kind in ("standard", "extrapolation"):
            split = data.split(0) if kind == "standard" else data.extrapolation_split(0)
            model = _model(split.x_train.double(), 0)
            reference = float(model.distance_reference)
            d = model.data_distance(split.x_test.double())[:, 0].detach()
            groups = [("all", torch.ones_like(d, dtype=torch.bool))]
            if split.test_out_of_range is not None:
                groups = [("in range", ~split.test_out_of_range), ("out of range", split.test_out_of_range)]
            for label, mask in groups:
                lines.append(f"| {name} | {kind} 0 | {label} | {reference:.2f} | {_describe(d[mask], reference)} |")
    header = ["# Distances of test inputs from the data (distance feature units)", "",
              "Command: `python benchmarks/scripts/distance_reach.py " + " ".join(args.sets) + "`  ",
              f"Machine: {platform.platform()}, torch {torch.__version__}.", "",
              "d is the distance to the nearest anchor over the median nearest-neighbour distance among the anchors "
              "(mathematics §9.3); d_ref, the 95 % quantile of the anchors' own nearest-neighbour distances, is where "
              "the predictive starts to keep the nugget's growth (§9.4).", ""]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        atomic_write(args.out, lambda handle: handle.write(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
