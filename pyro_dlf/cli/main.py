"""The ``pyro-dlf`` command line: ``distill`` and ``predict``, and the commands other packages register.

Every user mistake (a bad value, a missing or unreadable file, a folder that
cannot be written) ends with one line on standard error naming the flag, and
exit status 2; set ``PYRO_DLF_DEBUG=1`` to see the traceback instead. The
library's messages name its own arguments (``teacher_outputs``); the command
line translates them to its flags (``--teachers``, or ``--teacher-module`` when
the teachers come as a module) through one table, :func:`flag_names`, and
prints each distinct warning once, on one line.
Output folders and files are checked before any long computation starts.
``bench`` and ``demo`` come from the lab package (:mod:`pyro_dlf.cli.plugins`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from pyro_dlf._version import __version__
from pyro_dlf.cli.arguments import (
    NONNEGATIVE,
    POSITIVE,
    HelpFormatter,
    Parser,
    add_command,
    device_name,
    fraction,
    num_factors,
    training_length,
)
from pyro_dlf.cli.messages import Warnings, translate
from pyro_dlf.cli.plugins import installed_commands

__all__ = ["main", "build_parser", "flag_names", "translate"]


def build_parser(commands: Optional[list] = None) -> argparse.ArgumentParser:
    """The whole command line: ``distill``, ``predict`` and every registered command (``commands``, default
    :func:`~pyro_dlf.cli.plugins.installed_commands`)."""
    parser = Parser(prog="pyro-dlf", description="Gaussian distillation of deep ensembles with deep latent factor models.",
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pyro-dlf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _distill_parser(sub)
    _predict_parser(sub)
    for command in installed_commands() if commands is None else commands:
        command.add_arguments(add_command(sub, command.name, command.help))
    return parser


def _distill_parser(sub) -> None:
    distill = add_command(sub, "distill", "distill your own ensemble from files: design inputs and each teacher's values at "
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
                          help="the ensemble itself: a TorchScript file (torch.jit.save) mapping inputs (b, d) of --dtype to the "
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
    distill.add_argument("--num-factors", type=num_factors, default="auto", metavar="Q",
                         help="q, the number of latent factors (at most n - 1 identified), or auto: the fewest principal "
                              "directions of the teachers' deviations that explain most of their spread (no labels; the "
                              "fit report says how much)")
    distill.add_argument("--hidden", nargs="+", default=["auto"],
                         help="body widths such as 50 50, or auto (chosen from 1-2 layers of 50/100 by held-out scores of the teachers' values)")
    distill.add_argument("--loading-hidden", type=POSITIVE, nargs="+", default=None,
                         help="widths of a separate body for the factor loadings, such as 50 (without it one body gives mean and "
                              "loadings)")
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
    distill.add_argument("--iterations", type=POSITIVE, default=100, help="EM iterations")
    distill.add_argument("--mmd-steps", type=NONNEGATIVE, default=500, help="steps of the MMD-penalized initialization")
    distill.add_argument("--training-length", type=training_length, default=1.0,
                         help="fraction of --mmd-steps and --iterations to run, or auto (chosen with the body on held-out "
                              "design points: early stopping, no labels)")
    distill.add_argument("--lr", type=fraction, default=1e-2, help="Adam step size of the M-steps")
    distill.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed of the initialization and the minibatch order")
    distill.add_argument("--no-progress", action="store_true",
                         help="no progress bars and no stage lines (TQDM_DISABLE=1 hides the bars alone)")
    distill.add_argument("--stream", action="store_true",
                         help="stream .npy files in batches (memory-mapped; no (n, m) array in memory) with StreamingEM; "
                              "under torchrun every process takes its shard of the batches")
    distill.add_argument("--batch-size", type=POSITIVE, default=4096, help="--stream: design points per batch")
    distill.add_argument("--device", type=device_name, default="cpu", help="where the model is fitted (cpu, cuda, cuda:1, mps)")
    distill.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                         help="the student's precision (float64 for values whose sums of squares overflow float32)")
    # The required groups first in --help, before the options.
    distill._action_groups.sort(key=lambda group: group not in (required, regression))


def _predict_parser(sub) -> None:
    predict = add_command(sub, "predict", "predict with a saved student at new inputs")
    predict.add_argument("--student", required=True, metavar="FILE", help="a student file written by 'pyro-dlf distill' or Student.save")
    predict.add_argument("--x", required=True, metavar="FILE", help="inputs (m, d): .npy, or .csv/.txt with one row per point")
    predict.add_argument("--out", required=True, metavar="FILE", help="predictions: .npz (every array) or .csv (one row per input)")
    predict.add_argument("--num-samples", type=POSITIVE, default=None,
                         help="draws of the latent factors (default: none -- regression summaries are closed form, classification "
                              "integrates over the factors with a fixed rule; 1000 draws with --samples)")
    predict.add_argument("--batch-size", type=POSITIVE, default=4096, help="inputs per network pass")
    predict.add_argument("--samples", action="store_true", help="also write the function (or logit) draws (.npz only)")
    predict.add_argument("--seed", type=NONNEGATIVE, default=0, help="seed of the draws")
    predict.add_argument("--no-progress", action="store_true", help="no stage lines on standard error")


#: Library argument names that a command spells differently on the command line, or that are
#: plain words (translated only where they stand as an argument: first in the message, or before
#: ``=``, ``:`` or ``[``). With every option's own snake_case name (``held_out`` -> ``--held-out``),
#: read from the parser by :func:`flag_names`, this is the whole table.
_LIBRARY_NAMES: dict[str, dict[str, str]] = {
    # pyro_dlf.distill and pyro_dlf.distributed.distill_stream
    "distill": {"x_design": "--x", "teacher_outputs": "--teachers", "teacher_noise_variances": "--noise-variances",
                "num_iterations": "--iterations", "observed": "--observed", "task": "--task", "covariance": "--covariance",
                "hidden": "--hidden", "lr": "--lr", "seed": "--seed", "device": "--device", "path": "--out", "design": "--design",
                "dtype": "--dtype",
                # pyro_dlf.data.NpyStream (distill --stream)
                "x_path": "--x", "f_path": "--teachers", "x_batch": "--x", "f_batch": "--teachers"},
    # pyro_dlf.Student.load and Student.predict
    "predict": {"path": "--student", "x": "--x", "return_samples": "--samples", "seed": "--seed"},
}


def _plugin_names(command: str, commands: list) -> dict[str, str]:
    for plugin in commands:
        if command in plugin.flag_names:
            return plugin.flag_names[command]
    return {}


def _subparser(parser: argparse.ArgumentParser, command: str) -> Optional[argparse.ArgumentParser]:
    """The parser of ``command`` (``"distill"``, ``"bench uci"``), or ``None``."""
    for word in command.split():
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            return None
        parser = actions[0].choices[word]
    return parser


def flag_names(command: str, parser: Optional[argparse.ArgumentParser] = None,
               commands: Optional[list] = None) -> dict[str, str]:
    """The translation table of ``command``: library argument name -> the flag that sets it.

    :param command: ``"distill"``, ``"predict"``, or a registered command such as ``"bench uci"``.
    :param parser: the parser to read (default :func:`build_parser`).
    :param commands: the registered commands (default :func:`~pyro_dlf.cli.plugins.installed_commands`).
    """
    commands = installed_commands() if commands is None else commands
    sub = _subparser(parser or build_parser(commands), command)
    table = {}
    if sub is not None:
        for action in sub._actions:
            flags = [o for o in action.option_strings if o.startswith("--")]
            # Only snake_case names are taken from the parser: a plain word (teachers, name) is English too.
            if flags and "_" in action.dest:
                table[action.dest] = flags[0]
    table.update(_LIBRARY_NAMES.get(command) or _plugin_names(command, commands))
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    commands = installed_commands()  # the entry points are read once per run
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "benchmark", None)]))
    names = flag_names(command, parser, commands)
    if getattr(args, "teacher_module", None) is not None:
        names["teacher_outputs"] = "--teacher-module"  # the library's teachers are the module's
    with warnings.catch_warnings():
        warnings.showwarning = Warnings(f"pyro-dlf {command}", names)
        try:
            _run(args, argv, names, commands)
        except (ValueError, TypeError, OSError, NotImplementedError, ImportError) as error:
            if os.environ.get("PYRO_DLF_DEBUG"):
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"pyro-dlf {command}: error: {translate(message, names)}", file=sys.stderr)
            return 2
    return 0


def _run(args: argparse.Namespace, argv: Optional[Sequence[str]], names: dict[str, str], commands: list) -> None:
    if args.command == "distill":
        from pyro_dlf.cli.files import run_distill

        run_distill(args, names)
    elif args.command == "predict":
        from pyro_dlf.cli.files import run_predict

        run_predict(args)
    else:
        line = " ".join(["pyro-dlf", *(sys.argv[1:] if argv is None else argv)])
        next(c for c in commands if c.name == args.command).run(args, line)


if __name__ == "__main__":
    sys.exit(main())
