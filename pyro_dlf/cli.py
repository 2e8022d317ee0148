"""The ``pyro-dlf`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-dlf", description="Gaussian distillation of deep ensembles with deep latent factor models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="distill a 10-MLP deep ensemble on the diabetes data and compare predictives")
    demo.add_argument("--output-dir", default="dlf_demo", help="where the PNG and results.json go (default: ./dlf_demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-factors", type=int, default=None, help="q (default 5)")
    demo.add_argument("--iterations", type=int, default=None, help="EM iterations (default 150)")
    demo.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny settings (checks the pipeline, not the method)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from pyro_dlf.demo import DemoConfig, format_table, run_demo

        overrides = {"output_dir": args.output_dir, "seed": args.seed, "progress": not args.no_progress}
        if args.num_factors is not None:
            overrides["num_factors"] = args.num_factors
        if args.iterations is not None:
            overrides["num_iterations"] = args.iterations
        config = DemoConfig.smoke(**overrides) if args.smoke else DemoConfig(**overrides)
        result = run_demo(config)
        print(f"Diabetes (442 x 10): {config.num_teachers} teachers trained in {result['teacher_fit_seconds']:.1f} s, "
              f"distilled in {result['distill_seconds']:.1f} s (q = {config.num_factors}).")
        print(format_table(result["rows"]))
        fid = result["fidelity"]
        print(f"Student vs ensemble at the test inputs: RMS mean difference {fid['rms_mean_difference']:.1f} "
              f"(the teachers' own spread: sd {fid['teacher_spread_sd']:.1f}).")
        print(f"Predict times: {config.num_samples} student draws vs {config.num_teachers} teacher forwards, on the test set.")
        print(f"Wrote {result['png']} and {config.output_dir}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
