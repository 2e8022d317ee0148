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

    bench = sub.add_parser("bench", help="benchmarks (results under benchmarks/results/)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    uci = bench_sub.add_parser("uci", help="the UCI regression benchmark (the paper's Table 1 protocol)")
    source = uci.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="a folder of UCI sets in the standard layout (e.g. ../shared/data/uci)")
    source.add_argument("--data-path", help="one set's folder in the same layout")
    uci.add_argument("--datasets", nargs="+", default=(), help="set names under --data-dir (default: all)")
    uci.add_argument("--splits", type=int, default=10, help="number of random 90/10 splits")
    uci.add_argument("--first-split", type=int, default=0,
                     help="seed of the first split (runs seeds first..first+splits-1; merge runs with `bench report`)")
    uci.add_argument("--teachers", type=int, default=50)
    uci.add_argument("--teacher-epochs", type=int, default=None, help="override the teachers' epoch schedule")
    uci.add_argument("--student-epochs", type=int, default=1000, help="epochs of the one-to-one baselines")
    uci.add_argument("--student-hidden", type=int, nargs="+", default=[50],
                     help="hidden widths of every student, DLF body included (default: 50)")
    uci.add_argument("--dlf-iterations", type=int, default=150)
    uci.add_argument("--mmd-steps", type=int, default=500)
    uci.add_argument("--num-factors", type=int, default=10)
    uci.add_argument("--ablations", nargs="*", default=(), choices=("estep", "init", "q", "design", "nugget", "augment", "oof"),
                     help="DLF variants to add: minibatch E-step, random init, q in {2, 5, 20}, held-out and jittered design "
                          "points, nugget in the predictive, Gaussian/mixup-augmented design points, out-of-fold teacher values")
    uci.add_argument("--max-design", type=int, default=0,
                     help="at most this many training inputs as design points (default 0: all of them)")
    uci.add_argument("--dlf-hidden", nargs="+", default=["auto"],
                     help="body of the row DLF: 'auto' (chosen from 1-2 layers of 50/100 by held-out marginal likelihood, "
                          "the default) or widths such as 100 100")
    uci.add_argument("--design", default="train", choices=("train", "jitter", "gaussian", "mixup"),
                     help="design points of every student: the training inputs, plus one moved copy of each (default train)")
    uci.add_argument("--extrapolation", action="store_true",
                     help="hold out the 10%% of rows with the largest first-principal-component projection as "
                          "out-of-range test points (results: uci_extrapolation.*)")
    uci.add_argument("--no-baselines", action="store_true",
                     help="skip small-Ens, Hydra and BE (for ablation-only runs; the teacher ensemble is always scored)")
    uci.add_argument("--output-dir", default="benchmarks/results")
    uci.add_argument("--name", default=None, help="file stem of the JSON/Markdown results (default uci, or uci_extrapolation)")
    uci.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers per split ('' to disable)")
    uci.add_argument("--seed", type=int, default=0)
    uci.add_argument("--no-progress", action="store_true")
    svi = bench_sub.add_parser("svi", help="EM against SVI (exact guide, AutoNormal) on one UCI split's teachers")
    svi.add_argument("--data-path", required=True, help="one UCI set's folder (e.g. ../shared/data/uci/bostonHousing)")
    svi.add_argument("--split", type=int, default=0)
    svi.add_argument("--teachers", type=int, default=50)
    svi.add_argument("--num-factors", type=int, default=10)
    svi.add_argument("--mmd-steps", type=int, default=500)
    svi.add_argument("--em-iterations", type=int, default=None,
                     help="EM iterations (default: as many gradient steps as --svi-steps)")
    svi.add_argument("--svi-steps", type=int, default=1500)
    svi.add_argument("--evaluations", type=int, default=30, help="exact-likelihood evaluations per method (off the clock)")
    svi.add_argument("--output-dir", default="benchmarks/results")
    svi.add_argument("--name", default="em_vs_svi")
    svi.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers per split ('' to disable)")
    svi.add_argument("--seed", type=int, default=0)
    svi.add_argument("--no-progress", action="store_true")
    images = bench_sub.add_parser("images", help="image classification: CNN teachers, DLF and the classification baselines, OOD, MNIST-Flip")
    images.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/ (e.g. ../shared/data); not needed for --dataset digits")
    images.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "digits"),
                        help="in-distribution set; the OOD set is the other of MNIST/Fashion-MNIST (digits: uniform noise)")
    images.add_argument("--teachers", type=int, default=5)
    images.add_argument("--teacher-epochs", type=int, default=2)
    images.add_argument("--student-epochs", type=int, default=30, help="epochs of every rival student (on the design images)")
    images.add_argument("--batch-size", type=int, default=128, help="minibatch size of every network's training")
    images.add_argument("--design-size", type=int, default=None,
                        help="held-out training images used as design points (default 10000; 500 for digits)")
    images.add_argument("--num-factors", type=int, default=8, help="q of the separable DLF (default 8)")
    images.add_argument("--full-num-factors", type=int, default=None,
                        help="q of the full DLF (default: teachers - 1, every direction the teachers span)")
    images.add_argument("--dlf-covariance", default="full", choices=("full", "separable"),
                        help="class covariance of the row named DLF; the other structure runs beside it (default full)")
    images.add_argument("--dlf-iterations", type=int, default=26, help="EM iterations, one pass over the design images each")
    images.add_argument("--mmd-steps", type=int, default=300)
    images.add_argument("--shift-sizes", type=int, nargs="+", default=[10, 50, 100, 500, 1000])
    images.add_argument("--shift-seeds", type=int, default=5)
    images.add_argument("--output-dir", default="benchmarks/results")
    images.add_argument("--name", default="images", help="file stem of the JSON/Markdown/PNG results")
    images.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers ('' to disable)")
    images.add_argument("--seed", type=int, default=0)
    images.add_argument("--no-progress", action="store_true")
    report = bench_sub.add_parser("report", help="merge result files: UCI runs (e.g. one per set and an ablation run) or "
                                  "image runs of different data seeds (means ± standard errors)")
    report.add_argument("inputs", nargs="+", help="JSON files written by 'pyro-dlf bench uci' or by 'pyro-dlf bench images' (one kind)")
    report.add_argument("--output-dir", default="benchmarks/results")
    report.add_argument("--name", default=None, help="file stem of the merged JSON/Markdown (default: uci or images)")
    return parser


def _dlf_hidden(values: Sequence[str]):
    """``["auto"]`` → ``"auto"``; widths → a tuple of ints (argparse has no union types)."""
    if list(values) == ["auto"]:
        return "auto"
    try:
        widths = tuple(int(v) for v in values)
    except ValueError:
        raise SystemExit(f"--dlf-hidden: give 'auto' or positive widths such as 100 100, got {' '.join(values)}") from None
    if any(w < 1 for w in widths):
        raise SystemExit(f"--dlf-hidden: widths must be positive, got {' '.join(values)}")
    return widths


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
              f"distilled in {result['distill_seconds']:.1f} s on {result['design_points']} design points "
              f"(q = {config.num_factors}, body {tuple(result['student_hidden'])}).")
        print(format_table(result["rows"]))
        fid = result["fidelity"]
        print(f"Student vs ensemble at the test inputs: RMS mean difference {fid['rms_mean_difference']:.1f} "
              f"(the teachers' own spread: sd {fid['teacher_spread_sd']:.1f}).")
        print(f"Predict times: {config.num_samples} student draws vs {config.num_teachers} teacher forwards, on the test set.")
        print(f"Wrote {result['png']} and {config.output_dir}/results.json")
    elif args.command == "bench" and args.benchmark == "uci":
        from pyro_dlf.bench import UCIBenchConfig, run_uci_benchmark, write_report

        config = UCIBenchConfig(
            data_dir=args.data_dir, data_path=args.data_path, datasets=tuple(args.datasets), splits=args.splits, first_split=args.first_split,
            teachers=args.teachers, teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
            student_hidden=tuple(args.student_hidden),
            dlf_iterations=args.dlf_iterations, mmd_steps=args.mmd_steps, num_factors=args.num_factors,
            ablations=tuple(args.ablations), output_dir=args.output_dir, name=args.name or ("uci_extrapolation" if args.extrapolation else "uci"),
            cache_dir=args.cache_dir or None, seed=args.seed, progress=not args.no_progress,
            max_design=args.max_design or None, baselines=not args.no_baselines,
            dlf_hidden=_dlf_hidden(args.dlf_hidden), design=args.design, extrapolation=args.extrapolation,
        )
        json_path, md_path = write_report(run_uci_benchmark(config), config.output_dir, config.name)
        print(f"Wrote {json_path} and {md_path}")
    elif args.command == "bench" and args.benchmark == "svi":
        from pyro_dlf.bench.svi import SVIBenchConfig, run_svi_benchmark, write_svi_report

        config = SVIBenchConfig(
            data_path=args.data_path, split=args.split, teachers=args.teachers, num_factors=args.num_factors,
            mmd_steps=args.mmd_steps, em_iterations=args.em_iterations, svi_steps=args.svi_steps,
            evaluations=args.evaluations, output_dir=args.output_dir, name=args.name,
            cache_dir=args.cache_dir or None, seed=args.seed, progress=not args.no_progress,
        )
        json_path, md_path = write_svi_report(run_svi_benchmark(config), config.output_dir, config.name)
        print(f"Wrote {json_path} and {md_path}")
    elif args.command == "bench" and args.benchmark == "images":
        from pyro_dlf.bench.images import ImagesBenchConfig, run_images_benchmark, write_images_report

        config = ImagesBenchConfig(
            data_dir=args.data_dir, dataset=args.dataset, teachers=args.teachers, teacher_epochs=args.teacher_epochs,
            student_epochs=args.student_epochs, batch_size=args.batch_size, design_size=args.design_size, num_factors=args.num_factors,
            full_num_factors=args.full_num_factors, dlf_covariance=args.dlf_covariance,
            dlf_iterations=args.dlf_iterations, mmd_steps=args.mmd_steps, shift_sizes=tuple(args.shift_sizes),
            shift_seeds=args.shift_seeds, output_dir=args.output_dir, name=args.name, cache_dir=args.cache_dir or None,
            seed=args.seed, progress=not args.no_progress,
            command=" ".join(["pyro-dlf", *(sys.argv[1:] if argv is None else argv)]),
        )
        json_path, md_path = write_images_report(run_images_benchmark(config), config.output_dir, config.name)
        print(f"Wrote {json_path} and {md_path}")
    elif args.command == "bench" and args.benchmark == "report":
        import json

        from pyro_dlf.bench import merge_results, write_report
        from pyro_dlf.bench.images import merge_images_results, write_images_report

        results = []
        for path in args.inputs:
            try:
                with open(path) as fh:
                    results.append(json.load(fh))
            except (OSError, ValueError) as error:
                raise SystemExit(f"inputs: cannot read {path} as a benchmark result ({error})") from None
        kinds = {r.get("benchmark", "uci") if isinstance(r, dict) else None for r in results}
        if kinds == {"images"}:
            try:
                merged = merge_images_results(results)
            except ValueError as error:
                raise SystemExit(str(error)) from None
            json_path, md_path = write_images_report(merged, args.output_dir, args.name or "images")
        elif "images" in kinds:
            raise SystemExit("inputs: mix of image and UCI results; merge one kind at a time")
        else:
            json_path, md_path = write_report(merge_results(results), args.output_dir, args.name or "uci")
        print(f"Wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
