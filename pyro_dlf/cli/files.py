"""``pyro-dlf distill`` and ``pyro-dlf predict``: your own ensemble from files, a student to a file.

``distill`` reads the design inputs and every teacher's values at them (and,
for regression, each teacher's noise variance), or the data rows and the
ensemble itself as a TorchScript module, so that ``--design`` can place points
off the rows (mathematics §9); it fits the student with
:func:`pyro_dlf.distill`, writes it with :meth:`pyro_dlf.Student.save` and a
fit report beside it (``<out>_fit.png``: the negative log marginal likelihood
per observed value over the EM iterations). ``predict`` loads a student and
writes its predictive summaries at new inputs (``.npz`` or ``.csv``).
Every file argument is checked before the fit starts. Unless ``--no-progress``
is given, a line on standard error says what each long stage does before it
starts (reading, choosing the body and fitting, writing); the bars below it
also go with ``TQDM_DISABLE=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Optional

import numpy as np
import torch

from pyro_dlf._progress import progress_disabled
from pyro_dlf._validation import MAX_SEED, check_device, check_int, check_not_input
from pyro_dlf.arrays import check_writable, load_array, make_folder, save_arrays
from pyro_dlf.cli.messages import translate

__all__ = ["run_distill", "run_predict", "parse_widths", "parse_loading_widths", "check_finite", "load_teacher_module",
           "probe_teacher_module"]

#: Rows of --x a teacher module is first evaluated on, to learn the shape of its values.
PROBE_ROWS = 8

#: What a --teacher-module file must be, for the errors that say it.
_MODULE_NEEDS = ("a module saved with torch.jit.save(torch.jit.script(ensemble), path) (or torch.jit.trace) that maps "
                 "inputs (b, d) of --dtype (float32 by default) to the teachers' values (n, b) or logits (n, b, c)")


def _say(args: argparse.Namespace, text: str) -> None:
    """One line on standard error before a long stage, unless ``--no-progress``."""
    if not args.no_progress:
        print(text, file=sys.stderr, flush=True)


def _bars(args: argparse.Namespace) -> bool:
    """Whether the library draws its progress bars: not with ``--no-progress`` nor ``TQDM_DISABLE``."""
    return not args.no_progress and not progress_disabled()


def _task_and_noise(args: argparse.Namespace, f) -> tuple[str, Optional[np.ndarray]]:
    """The task (``--task``, else from the teachers' shape) and the ``--noise-variances`` it needs.

    :param f: the teachers' values, or any array of their shape's rank with ``n`` rows (a module's values on a few rows).
    """
    task = args.task or ("classification" if f.ndim == 3 else "regression")
    if task == "regression" and args.noise_variances is None:
        raise ValueError(f"--noise-variances: regression teachers need each teacher's noise variance, a file of n = {f.shape[0]} "
                         "values (e.g. each teacher's held-out mean squared error); add --noise-variances FILE, or give "
                         "(n, m, c) logits for classification")
    noise = None if args.noise_variances is None else load_array(args.noise_variances, "--noise-variances")
    if noise is not None and noise.ndim == 2 and 1 in noise.shape:
        noise = noise.reshape(-1)  # one row or one column of a text file: one value per teacher
    return task, noise


def check_finite(array: np.ndarray, flag: str, path: str, needs: str) -> None:
    """A one-line error naming ``flag`` and ``path`` where ``array`` holds NaN or Inf (``needs``: what needs finite values)."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = np.argwhere(bad)[0]
        where = f"row {first[0]}" + (f", column {first[1]}" if len(first) > 1 else "")
        raise ValueError(f"{flag}: {path} holds {int(bad.sum())} non-finite value(s) (NaN or Inf), the first at {where}; "
                         f"{needs} need finite inputs: remove or impute those rows")


def _positive_widths(values, name: str, expected: str) -> tuple[int, ...]:
    """Positive widths as a tuple of ints, or a one-line error naming ``name`` and what it takes."""
    try:
        widths = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"{name}: give {expected}, got {' '.join(values)}") from None
    if any(w < 1 for w in widths):
        raise ValueError(f"{name}: widths must be positive, got {' '.join(values)}")
    return widths


def parse_widths(values, name: str):
    """``["auto"]`` → ``"auto"``; otherwise positive widths as a tuple of ints (argparse has no union types)."""
    if list(values) == ["auto"]:
        return "auto"
    return _positive_widths(values, name, "auto or positive widths such as 100 100")


def parse_loading_widths(values, name: str):
    """``["none"]`` → ``None`` (one body for mean and loadings); otherwise positive widths as a tuple of ints."""
    if list(values) == ["none"]:
        return None
    return _positive_widths(values, name, "none or positive widths such as 50")


def _loading_hidden(args: argparse.Namespace):
    """``--loading-hidden``: ``None`` (one body for mean and loadings) or the widths as a tuple."""
    return None if args.loading_hidden is None else tuple(args.loading_hidden)


def _inputs(args: argparse.Namespace) -> dict[str, Optional[str]]:
    """The files a command reads, by flag: its --out must be none of them."""
    flags = ("--x", "--teachers", "--teacher-module", "--noise-variances", "--observed", "--held-out", "--student")
    return {flag: getattr(args, flag[2:].replace("-", "_"), None) for flag in flags}


def load_teacher_module(path: str, device: torch.device):
    """The ``--teacher-module`` TorchScript ensemble, loaded on the CPU, in eval mode, moved to ``device``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--teacher-module: no file at {path!r}; give {_MODULE_NEEDS}")
    try:
        with warnings.catch_warnings():
            # TorchScript is this flag's file format; torch's notice that it is deprecated is not the user's to act on.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu")
    except Exception:  # torch says only that the archive lacks its parts; what the file must be is the useful part
        raise ValueError(f"--teacher-module: cannot load {path!r} as TorchScript; it must be {_MODULE_NEEDS}") from None
    module.eval()  # one function per teacher: dropout off, batch-norm statistics frozen
    return module.to(device)


def probe_teacher_module(module, x: torch.Tensor) -> tuple[int, ...]:
    """The shape ``(n, b)`` or ``(n, b, c)`` of ``module``'s values on the first rows of ``x`` (at most
    :data:`PROBE_ROWS`), or a one-line error naming ``--teacher-module``. Two batch sizes are tried, so that an
    output with one row per input (``(b, n)``) is told apart from one row per teacher even where ``n = b``."""
    first = min(PROBE_ROWS, x.shape[0])
    shape: tuple[int, ...] = ()
    for rows in dict.fromkeys((first, max(1, first - 1))):
        try:
            with torch.no_grad():
                out = module(x[:rows])
        except Exception as err:  # the module's own error (e.g. another input width): its last line says what
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise ValueError(f"--teacher-module: the module fails on the first {rows} rows of --x, shape "
                             f"{tuple(x[:rows].shape)} ({lines[-1] if lines else type(err).__name__}); it must map {str(x.dtype).removeprefix('torch.')} "
                             "inputs (b, d) to the teachers' values (n, b) or logits (n, b, c): check that --x has the "
                             "columns the module takes") from None
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"--teacher-module: the module returns a {type(out).__name__} for {rows} rows of --x; it must "
                             f"return one tensor, the teachers' values (n, {rows}) or logits (n, {rows}, c)")
        if out.dim() not in (2, 3) or out.shape[1] != rows:
            raise ValueError(f"--teacher-module: the module returns shape {tuple(out.shape)} for {rows} rows of --x; it must "
                             f"return the teachers' values (n, {rows}) or logits (n, {rows}, c), one row per teacher "
                             "(transpose a (b, n) output)")
        if not out.is_floating_point():
            raise ValueError(f"--teacher-module: the module returns {out.dtype} values; it must return real floating-point "
                             "values or logits")
        shape = shape or tuple(out.shape)
    if shape[0] < 2:  # said before any fit starts (a design choice fits once per candidate)
        raise ValueError(f"--teacher-module: the module returns the values of {shape[0]} teacher(s); distilling an ensemble needs "
                         "at least 2, one row each: (n, b) or (n, b, c)")
    return shape


def _check_design(args: argparse.Namespace) -> None:
    """The ``--design`` options that need the ensemble itself (``--teacher-module``) and none of the per-row masks."""
    if args.design in ("auto", "given"):
        return
    if args.teachers is not None:
        raise ValueError(f"--design {args.design}: --teachers gives the teachers' values at the --x rows only, so no points "
                         "can be placed off them; pass the ensemble with --teacher-module FILE, or --design given")
    masks = [flag for flag, path in (("--observed", args.observed), ("--held-out", args.held_out)) if path is not None]
    if masks:
        raise ValueError(f"--design {args.design}: {' and '.join(masks)} mark{'s' if len(masks) == 1 else ''} values at the "
                         f"--x rows only, so no points can be placed off them; drop {' and '.join(masks)} or pass "
                         "--design given")


def run_distill(args: argparse.Namespace, names: dict[str, str]) -> None:
    from pyro_dlf.api import distill

    if args.stream:
        run_distill_stream(args)
        return
    _check_design(args)
    check_writable(args.out, "--out")
    check_not_input(args.out, "--out", _inputs(args))
    report = os.path.splitext(args.out)[0] + "_fit.png"
    if os.path.isdir(report):
        raise ValueError(f"--out: the fit report goes beside the student, at {report!r}, which is a folder; choose another --out")
    device = check_device(args.device)
    hidden = parse_widths(args.hidden, "--hidden")
    module = args.teacher_module is not None
    source = f"--teacher-module {args.teacher_module}" if module else f"--teachers {args.teachers}"
    _say(args, f"Reading --x {args.x} and {source} ...")
    x = _rows(args.x)
    check_finite(x, "--x", args.x, "the design points")
    dtype = getattr(torch, args.dtype)
    x = torch.as_tensor(x, dtype=dtype)
    if module:
        teachers = load_teacher_module(args.teacher_module, device)
        shape = probe_teacher_module(teachers, x.to(device))
    else:
        teachers = torch.as_tensor(load_array(args.teachers, "--teachers"), dtype=dtype)
        shape = tuple(teachers.shape)
    task, noise = _task_and_noise(args, torch.empty(shape) if module else teachers)
    observed, held_out = (None if path is None else _load_mask(path, flag)
                          for path, flag in ((args.observed, "--observed"), (args.held_out, "--held-out")))
    n, m = shape[0], x.shape[0]
    q = "q chosen from the teachers' values" if args.num_factors == "auto" else f"q = {args.num_factors}"
    schedule = f"{args.mmd_steps} MMD steps, then {args.iterations} EM iterations"
    where = f"at {m} design points"
    if module and args.design == "auto" and observed is None and held_out is None:
        where = (f"on a design built from {m} rows of --x (given, around or beyond them, chosen first by the teachers' "
                 "held-out values: one fit per candidate)")
    elif module and args.design != "given" and args.design != "auto":
        where = f"on the --design {args.design} points built from {m} rows of --x"
    if hidden == "auto" or args.training_length == "auto":
        _say(args, f"Distilling {n} teachers {where} ({q}): first the body"
             + (" and the training length are" if args.training_length == "auto" else " is")
             + f" chosen by held-out scores of the teachers' values (one fit per candidate), then the student ({schedule}) ...")
    else:
        _say(args, f"Distilling {n} teachers {where} ({q}; {schedule}) ...")
    started = time.perf_counter()
    try:
        student = _distill_files(distill, x, teachers, noise, observed, held_out, hidden, device, args)
    except Exception as err:
        raise _module_error(err, names, args.dtype) if module else err
    seconds = time.perf_counter() - started
    _check_fitted(student, args)
    _say(args, f"Writing {args.out} and {report} ...")
    make_folder(args.out)
    student.save(args.out)
    _fit_plot(report, student.history)
    dlf = student.dlf
    choice = student.design_choice
    print(f"Distilled {n} teachers at {m if choice is None else choice.num_design_points} design points ({student.task}) "
          f"in {seconds:.1f} s: "
          f"q = {dlf.num_factors}" + (_factor_choice(student) if args.num_factors == "auto" else "")
          + f", body {tuple(dlf.hidden) or 'linear'}"
          + (f", loadings from a body {dlf.loading_hidden}" if dlf.loading_hidden is not None else "")
          + (f" (chosen from {len(student.body_selection.candidates)} by held-out scores"
             + (f"; training length {student.body_selection.chosen_length:g} of the schedule" if len(set(student.body_selection.lengths)) > 1 else "")
             + ")" if student.body_selection else "")
          + _design_words(args, choice, names)
          + f", final negative log-likelihood per value {student.history[-1]:.4f}, nugget σ_f² = {float(dlf.noise_variance.detach()):.3g}"
          + (f" × (1 + d(x))^{float(dlf.nugget_growth.detach()):.3g} (the predictive keeps the growth past d = "
             f"{float(dlf.distance_reference):.3g})" if dlf.distance_anchors is not None else "")
          + (_noise_words(student) if student.task == "regression" else "")
          + (f" × u(z)^{student.noise_factor_exponent:.3g} (the teachers' noise follows their factors: likelihood-ratio "
             f"p = {student.noise_fit.p_value:.2g})" if getattr(student, "noise_factor_exponent", 0.0) else "")
          + (f", loadings scaled to the teachers' held-out spread (‖Φ‖² × {student.spread_calibration.scale:.3g})"
             if student.spread_calibration is not None else "")
          + ".")
    print(f"Wrote {args.out} and {report}")


def _distill_files(distill, x: torch.Tensor, teachers, noise, observed, held_out, hidden, device: torch.device,
                   args: argparse.Namespace):
    """:func:`pyro_dlf.distill` with the options of ``pyro-dlf distill``."""
    return distill(x, teachers,
                   num_factors=args.num_factors, teacher_noise_variances=noise, observed=observed, held_out=held_out,
                   task=args.task, noise_given_factors={"auto": "auto", "yes": True, "no": False}[args.noise_given_factors],
                   covariance=args.covariance,
                   hidden=hidden, loading_hidden=_loading_hidden(args), num_iterations=args.iterations, mmd_steps=args.mmd_steps,
                   lr=args.lr, seed=args.seed, training_length=args.training_length, progress=_bars(args), device=device,
                   design=args.design, distance_feature={"auto": "auto", "yes": True, "no": False}[args.distance_feature],
                   dtype=x.dtype)


def _module_error(err: Exception, names: dict[str, str], dtype: str) -> Exception:
    """A failure of the user's ``--teacher-module`` during the fit (the library notes where the teachers raised) as a
    one-line error naming the flag; any other error unchanged."""
    note = next((n for n in getattr(err, "__notes__", ()) if n.startswith("raised by teacher_outputs on ")), None)
    if note is None:
        return err
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    where = translate(note[len("raised by teacher_outputs on "):], names)
    return ValueError(f"--teacher-module: the module fails on {where} ({lines[-1] if lines else type(err).__name__}); it "
                      f"must map any batch of {dtype} rows (b, d) to the teachers' values (n, b) or logits (n, b, c)")


def _check_fitted(student, args: argparse.Namespace) -> None:
    """Refuse to write a student whose fit diverged to non-finite weights, naming the step size that did it."""
    if all(bool(torch.isfinite(t).all()) for t in student.dlf.state_dict().values() if t.is_floating_point()):
        return
    raise ValueError(f"--lr: the fit diverged (the student's weights are not finite) with --lr {args.lr:g}; lower it, e.g. "
                     f"--lr {args.lr / 10:g}, or check --x and the teachers' values for extreme numbers")


def _design_words(args: argparse.Namespace, choice, names: dict[str, str]) -> str:
    """The fit report's words on the design (mathematics §9): which, why, how many points from how many rows, and
    whether the loadings read the distance from the rows."""
    if choice is None:
        return ""
    masks = [flag for flag, path in (("--observed", args.observed), ("--held-out", args.held_out)) if path is not None]
    if args.teacher_module is None:
        why = "the teachers are given as values at the --x rows"
    elif choice.scores:
        why = "chosen by the teachers' held-out values"
    elif args.design == "auto" and masks:
        why = f"{' and '.join(masks)} mark{'s' if len(masks) == 1 else ''} values at the --x rows only"
    else:
        why = "asked for" if args.design != "auto" else translate(choice.reason, names)
    reach = "" if choice.reach is None else f", reach {choice.reach:g}"
    points = (f"; {choice.num_design_points:,} design points from {choice.num_data_points:,} rows"
              if choice.num_design_points != choice.num_data_points else "")
    return f", design {choice.design}{reach} ({why}{points}; distance feature {'on' if choice.distance_feature else 'off'})"


def _noise_words(student) -> str:
    """The fit report's words on the regression noise law: one inverse gamma, or a law per input (per-point variances)."""
    if student.noise_concentration is None:
        return ", noise law per input (from the teachers' per-point noise variances)"
    return f", noise prior IG({student.noise_concentration:.3g}, {student.noise_rate:.3g})"


def _factor_choice(student) -> str:
    """The fit report's words on ``--num-factors auto``: what the chosen q explains of the teachers' spread."""
    choice = student.num_factors_choice  # declared on every student; None when q was given
    words = " (--num-factors auto: chosen from the teachers' values"
    if choice is not None:
        words += (f", {100 * choice.explained[choice.num_factors - 1]:.0f} % of their spread in {choice.num_factors} "
                  f"direction(s), {100 * choice.share:.0f} % asked")
    return words + ")"


def _rows(path: str) -> np.ndarray:
    """The ``--x`` file as rows ``(m, d)``: a vector is one column; the command line's default body reads rows only."""
    x = load_array(path, "--x")
    if x.ndim == 1:
        return x[:, None]
    if x.ndim > 2:
        raise ValueError(f"--x: {path!r} holds an array of shape {x.shape}; the command line reads rows (m, d): flatten "
                         "each point's values into one row (a custom body for other shapes needs the Python API)")
    return x


def _load_mask(path: str, flag: str) -> torch.Tensor:
    """A 0/1 (or boolean) mask file as a boolean tensor."""
    mask = load_array(path, flag)
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{flag}: the mask must hold only 0 and 1 (or booleans)")
    return torch.as_tensor(mask.astype(bool))


def run_distill_stream(args: argparse.Namespace) -> None:
    """``distill --stream``: memory-mapped ``.npy`` batches through :func:`pyro_dlf.distributed.distill_stream`;
    under ``torchrun`` each process streams its shard and rank 0 writes the student."""
    from pyro_dlf.data.streams import NpyStream
    from pyro_dlf.distributed import close_distributed, distill_stream, init_distributed, is_main_process

    if args.teacher_module is not None:
        raise ValueError("--teacher-module: --stream reads the teachers' values from a .npy file; pass them with --teachers "
                         "FILE, or drop --stream")
    if args.design not in ("auto", "given"):
        raise ValueError(f"--design {args.design}: a streamed fit reads the teachers' values at the --x rows from files, so no "
                         "points can be placed off them; drop --stream, or pass --design given")
    if args.distance_feature == "yes":
        raise ValueError("--distance-feature: a streamed fit has no distance feature; drop --stream or the option")
    for name, path in (("--x", args.x), ("--teachers", args.teachers)):
        if not path.lower().endswith(".npy"):
            raise ValueError(f"{name}: --stream reads .npy files (memory-mapped), got {path!r}")
    for path, flag in ((args.observed, "--observed"), (args.held_out, "--held-out")):
        if path is not None:
            raise ValueError(f"{flag}: masks are not streamed; drop --stream or the mask")
    if args.noise_given_factors != "no":
        raise ValueError("--noise-given-factors: a streamed fit keeps the i.i.d. noise law; drop --stream or the option")
    if args.training_length != 1.0:
        raise ValueError("--training-length: a streamed fit runs the whole schedule (--iterations); drop --stream or the option")
    hidden = parse_widths(args.hidden, "--hidden")
    if isinstance(hidden, str):
        raise ValueError("--hidden: --stream fits one body; give widths such as 50 50 (auto needs the design points in memory)")
    if args.num_factors == "auto":
        raise ValueError("--num-factors: --stream needs a number such as --num-factors 5 (auto reads every teacher value in "
                         "memory); give q or drop --stream")
    device = check_device(args.device)
    rank, world = init_distributed()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    completed = False
    try:
        if is_main_process():
            check_writable(args.out, "--out")
            check_not_input(args.out, "--out", _inputs(args))
        stream = NpyStream(args.x, args.teachers, args.batch_size, rank=rank, world_size=world)
        task, noise = _task_and_noise(args, stream.f)
        if is_main_process():
            _say(args, f"Distilling {stream.f.shape[0]} teachers at {stream.x.shape[0]} design points streamed in batches of "
                       f"{args.batch_size} (q = {args.num_factors}; {args.iterations} EM iterations) ...")
        started = time.perf_counter()
        student = distill_stream(stream, num_factors=args.num_factors, teacher_noise_variances=noise, task=task,
                                 covariance=args.covariance, hidden=hidden, loading_hidden=_loading_hidden(args),
                                 num_iterations=args.iterations, lr=args.lr,
                                 seed=args.seed, progress=_bars(args), device=device, dtype=getattr(torch, args.dtype))
        seconds = time.perf_counter() - started
        if is_main_process():
            student.dlf.cpu()
            make_folder(args.out)
            student.save(args.out)
            report = os.path.splitext(args.out)[0] + "_fit.png"
            _fit_plot(report, student.history)
            print(f"Distilled {stream.f.shape[0]} teachers at {stream.x.shape[0]} design points ({task}) streamed in batches of "
                  f"{args.batch_size} over {world} process(es) in {seconds:.1f} s: final negative log-likelihood per value "
                  f"{student.history[-1]:.4f}. Wrote {args.out} and {report}")
        completed = True
    finally:
        if world > 1:
            close_distributed(completed)


def run_predict(args: argparse.Namespace) -> None:
    from pyro_dlf.student import Student

    check_writable(args.out, "--out")
    check_not_input(args.out, "--out", _inputs(args))
    if not args.out.lower().endswith((".npz", ".csv")):
        raise ValueError(f"--out: {args.out!r} must end in .npz or .csv")
    if args.samples and not args.out.lower().endswith(".npz"):
        raise ValueError("--samples: draws need an .npz output (a .csv holds one row per input)")
    check_int(args.seed, "--seed", 0, maximum=MAX_SEED)
    try:
        student = Student.load(args.student)
    except (ValueError, TypeError, OSError) as err:
        if str(err).startswith("path"):
            raise  # the table translates it to --student
        raise type(err)(f"--student: {err}") from None
    x = _rows(args.x)
    check_finite(x, "--x", args.x, "predictions")
    how = (f"{args.num_samples or 1000} draws" if args.num_samples or args.samples else
           "closed-form summaries" if student.task == "regression" else "the fixed integration rule")
    _say(args, f"Predicting {x.shape[0]} inputs with {how} ...")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(args.seed)
    try:
        # The inputs in the student's own precision (pyro-dlf distill --dtype).
        dtype = next(student.dlf.parameters()).dtype
        prediction = student.predict(torch.as_tensor(x, dtype=dtype), args.num_samples, batch_size=args.batch_size,
                                     return_samples=args.samples)
    finally:
        torch.random.set_rng_state(generator_state)
    arrays = {key: value.detach().cpu().numpy() for key, value in vars(prediction).items() if value is not None}
    if student.task == "regression":
        arrays["total_variance"] = arrays["epistemic_variance"] + arrays["aleatoric_variance"]
    save_arrays(args.out, arrays)
    print(f"Predicted {x.shape[0]} inputs with {how}; wrote {', '.join(arrays)} to {args.out}")


def _fit_plot(path: str, history: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(range(len(history)), history, marker=".", lw=1)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("negative log-likelihood per value")
    ax.set_title("Distillation fit (exact marginal likelihood)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
