"""The teachers as the fit sees them: callables evaluated in batches, or their values given as an array."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from pyro_dlf._validation import check_int, check_teacher_output

__all__ = ["TeacherOutputs", "evaluate_teachers", "is_teacher_list"]

#: What ``distill`` takes as the teachers: values ``(n, m[, c])``, a list of callables, or one callable for the ensemble.
TeacherOutputs = Union[Tensor, Sequence[Callable[[Tensor], Tensor]], Callable[[Tensor], Tensor]]


def evaluate_teachers(teachers: Sequence[Callable[[Tensor], Tensor]], x: Tensor, batch_size: int = 1024,
                      where: str = "x_design rows") -> Tensor:
    """Evaluate callables on the design points in batches: ``(n, m)`` or ``(n, m, c)``.

    ``teachers`` is a list of ``n`` callables, or one callable for the whole
    ensemble that maps ``(b, ...)`` inputs to ``(n, b)`` or ``(n, b, c)``
    values (e.g. a vectorized ensemble).

    Each callable maps ``(b, ...)`` inputs to ``(b,)``, ``(b, 1)`` or ``(b, c)``
    outputs (a tensor, or a NumPy array of real numbers); it runs under
    :func:`torch.no_grad`, and an :class:`torch.nn.Module` in eval mode (so
    dropout teachers give one function, not a new draw per evaluation),
    restored to its mode afterwards.
    """
    batch_size = check_int(batch_size, "batch_size", 1, fix="e.g. batch_size=1024")
    if callable(teachers) and not is_teacher_list(teachers):
        first: list = []  # every batch must name the teachers (and classes) of the first

        def check_ensemble(out, rows: int) -> Tensor:
            first.append(_ensemble_batch(out, rows, first[0].shape if first else None))
            return first[-1]

        return torch.cat(_in_batches(teachers, x, batch_size, "teacher_outputs", where, check_ensemble), 1)
    if not is_teacher_list(teachers):
        raise TypeError(f"teacher_outputs must be a list of callables or one callable for the whole ensemble, got {type(teachers).__name__}")
    if len(teachers) == 0:
        raise ValueError("teacher_outputs is an empty list: give at least 2 teachers")
    outputs = []
    for i, teacher in enumerate(teachers):
        if not callable(teacher):
            raise TypeError(f"teacher_outputs[{i}] is a {type(teacher).__name__}, not a callable; pass a tensor or a list of callables")
        out = torch.cat(_in_batches(teacher, x, batch_size, f"teacher_outputs[{i}]", where,
                                    lambda out, rows, i=i: check_teacher_output(out, i, rows)))
        outputs.append(out.squeeze(1) if out.dim() == 2 and out.shape[1] == 1 else out)
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"teacher_outputs: the teachers returned different shapes {sorted(shapes)}")
    return torch.stack(outputs)


def is_teacher_list(teachers) -> bool:
    """A list of teachers (a list, tuple or ``nn.ModuleList``), as opposed to one callable for the whole ensemble."""
    return isinstance(teachers, (list, tuple, nn.ModuleList))


def _in_batches(fn: Callable, x: Tensor, batch_size: int, label: str, where: str, check: Callable) -> list[Tensor]:
    """``check(fn(x_b), b)`` for each batch ``x_b`` of ``x``, without gradients; a module runs in eval mode (dropout off,
    batch-norm statistics frozen) and is put back. ``fn``'s own error is kept, noted with ``label`` and the rows."""
    training = isinstance(fn, nn.Module) and fn.training
    if training:
        fn.eval()
    parts = []
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                xb = x[s:s + batch_size]
                try:
                    out = fn(xb)
                except Exception as err:
                    err.add_note(f"raised by {label} on {where} {s}..{s + xb.shape[0] - 1}")
                    raise
                parts.append(check(out, xb.shape[0]))
    finally:
        if training:
            fn.train()
    return parts


def _ensemble_batch(out, rows: int, first: Optional[torch.Size]) -> Tensor:
    """One batch of an ensemble callable's output, checked: real floating ``(n, rows[, c])``, shaped as the first batch."""
    if isinstance(out, np.ndarray) and out.dtype.kind == "f":
        out = torch.from_numpy(np.ascontiguousarray(out))
    wanted = f"real floating values (n, {rows}) or (n, {rows}, c), one row per teacher"
    if not isinstance(out, Tensor) or not out.is_floating_point() or out.dim() not in (2, 3) or out.shape[1] != rows:
        got = tuple(out.shape) if isinstance(out, (Tensor, np.ndarray)) else type(out).__name__
        dtype = f" of dtype {out.dtype}" if isinstance(out, (Tensor, np.ndarray)) else ""
        raise ValueError(f"teacher_outputs: the ensemble callable returned {got}{dtype} for a batch of {rows} inputs; it must "
                         f"return {wanted}")
    if first is not None and (out.shape[0], *out.shape[2:]) != (first[0], *first[2:]):
        raise ValueError(f"teacher_outputs: the ensemble callable returned {tuple(out.shape)} after {tuple(first)} on an earlier "
                         "batch; it must return the same teachers (and classes) for every batch")
    return out.detach()
