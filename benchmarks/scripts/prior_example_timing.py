"""Time the user guide's "student as a prior" example and report its diagnostics.

Runs the quick start's one-call example (the student; the README's example, word for word) and then
the prior example of ``docs/guide/prior.md`` (NUTS 500 + 500 with a dense mass matrix and SVI on the
model with ``student.function_dist`` as the prior on f), on one torch thread, and writes the wall time of each, NUTS's split R-hat and effective sample size per site, and
the noise scale's 90 % interval against the truth 0.2:

    python benchmarks/scripts/prior_example_timing.py [--out benchmarks/results/prior_example.md]
"""
import argparse
import pathlib
import platform
import re
import sys
import time

import torch
from pyro.infer.mcmc.util import diagnostics

GUIDE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "guide"
QUICKSTART, PRIOR = GUIDE / "quickstart.md", GUIDE / "prior.md"


def _example(path: pathlib.Path, marker: str) -> str:
    """The first ```python block of a guide page that contains ``marker`` (as ``tests/test_readme.py`` finds it)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S) if marker in b]
    if not blocks:
        raise SystemExit(f"{path}: no python example contains {marker!r}")
    return blocks[0]


def _split_prior_block(block: str) -> tuple[str, str, str]:
    """The prior example cut at its NUTS run and its SVI loop, so each part is timed alone."""
    nuts_at, svi_at = block.index("pyro.set_rng_seed(0)"), block.index("guide = ")
    return block[:nuts_at], block[nuts_at:svi_at], block[svi_at:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the report here (Markdown)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    namespace: dict = {}
    seconds = {}
    start = time.perf_counter()
    exec(compile(_example(QUICKSTART, "pyro_dlf.distill(x_design"), "quickstart.md", "exec"), namespace)  # noqa: S102 - our own guide
    seconds["distill (one-call example)"] = time.perf_counter() - start
    for name, part in zip(("model and data", "NUTS 500 + 500", "SVI 1000 steps"), _split_prior_block(_example(PRIOR, "NUTS"))):
        start = time.perf_counter()
        exec(compile(part, "prior.md", "exec"), namespace)  # noqa: S102
        seconds[name] = time.perf_counter() - start
    mcmc, x_obs, y_obs = namespace["mcmc"], namespace["x_obs"], namespace["y_obs"]
    stats = diagnostics(mcmc.get_samples(group_by_chain=True))
    sigma = namespace["posterior"]["sigma"]
    lower, median, upper = torch.quantile(sigma, torch.tensor([0.05, 0.5, 0.95])).tolist()
    with torch.no_grad():
        svi_sigma = float(namespace["guide"].median(x_obs, y_obs)["sigma"])
    lines = ["# The prior example of the user guide (docs/guide/prior.md): time and diagnostics", "",
             "Command: `python benchmarks/scripts/prior_example_timing.py --out benchmarks/results/prior_example.md`", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread, torch {torch.__version__}, "
             f"Python {platform.python_version()}.", "",
             "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in seconds.items()]
    lines += ["", "| site | max split R-hat | min effective sample size |", "|---|---|---|"]
    lines += [f"| {site} | {float(s['r_hat'].max()):.4f} | {float(s['n_eff'].min()):.0f} |" for site, s in stats.items()]
    lines += ["", f"Noise scale (truth 0.2): NUTS median {median:.3f}, 90 % interval [{lower:.3f}, {upper:.3f}]; "
              f"SVI (AutoMultivariateNormal) median {svi_sigma:.3f}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
