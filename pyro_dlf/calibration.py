r"""Calibrating the student's epistemic variance to the teachers' *out-of-sample* spread.

Teachers trained on the same labels agree at their training inputs far more
than at new inputs: every member has fitted the same labels there. A DLF fitted to the teachers'
values at their training inputs learns that in-sample spread, and its
loadings ``Φ`` report a fraction of the disagreement a new input meets
(mathematics §7's variance ratio, ideal 1).

Teachers that each hold out some training rows from their fit (a deep
ensemble whose members estimate their noise on a held-out 10 %) carry the
missing information, without labels: teacher ``i``'s value at a row it did
not train on varies as its value at a new input would. With ``H_ij`` true
where teacher ``i`` held out point ``j``, ``k_j = Σ_i H_ij`` and
``\bar f_j`` the mean of the held-out values at ``j``, the pooled
within-point variance

.. math::

    \hat v = \frac{\sum_j \sum_{i: H_{ij}} (f_i(x_j) - \bar f_j)^2}{\sum_j (k_j - 1)}
    \qquad (\text{points with } k_j \ge 2)

is unbiased for the teachers' average out-of-sample variance at those points
(each point's term is a sample variance with ``k_j − 1`` degrees of freedom,
weighted by them). :func:`calibrate_spread` rescales the loadings once,
``Φ ← \sqrt{s}\,Φ`` with

.. math::

    s = \frac{\hat v - \bar n}{\sum_j (k_j - 1)\,\|Φ(x_j)\|^2 / \sum_j (k_j - 1)},

with ``\bar n`` the same weighted average of the nugget the predictive keeps
(``σ_f^2(x_j)`` with the nugget included, else its growth beyond the data, zero
for a constant nugget; mathematics §9.4),

so that the epistemic variance the student reports, averaged over the same
points with the same weights, equals ``\hat v``. This is a one-parameter
post-hoc calibration (as temperature scaling is for a classifier): the fit
keeps its mean ``μ`` and the shape of its covariance, learned from every
value, and takes its *scale* from the values that are out of sample. The
rescaled model is no longer the maximum-likelihood fit to the in-sample
values -- by design, since those understate the spread at new inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from pyro_dlf._validation import cast_inputs, check_design_points, check_held_out, check_int, check_teacher_values

__all__ = ["SpreadCalibration", "InfeasibleCalibration", "out_of_sample_spread", "calibrate_spread"]


class InfeasibleCalibration(ValueError):
    """No loading scale can match the teachers' out-of-sample spread: the nugget the predictive keeps
    already reports more variance at the held-out points (:func:`calibrate_spread`)."""


@dataclass(frozen=True)
class SpreadCalibration:
    """What :func:`calibrate_spread` did.

    :ivar scale: the factor ``s`` applied to ``‖Φ‖²`` (the loadings were multiplied by ``√s``).
    :ivar teacher_spread: ``\\hat v``, the teachers' pooled out-of-sample variance.
    :ivar student_variance_before: the weighted mean of ``‖Φ(x_j)‖²`` before rescaling.
    :ivar degrees_of_freedom: ``Σ_j (k_j − 1)`` behind ``\\hat v``.
    :ivar points: design points held out by two or more teachers.
    """

    scale: float
    teacher_spread: float
    student_variance_before: float
    degrees_of_freedom: int
    points: int

    def as_dict(self) -> dict:
        return asdict(self)


def out_of_sample_spread(f: Tensor, held_out: Tensor) -> tuple[float, Tensor]:
    r"""The pooled within-point variance of the teachers' held-out values (module docstring).

    :param f: teacher values ``(n, m)``; entries outside ``held_out`` are ignored (may be NaN).
    :param held_out: ``(n, m)`` booleans, true where the teacher did not train on the point.
    :returns: ``(\hat v, w)`` with ``w_j = k_j − 1`` for points held out by two or more
        teachers and 0 elsewhere (the weights of each point in ``\hat v``).
    """
    held_out = check_held_out(held_out, f)
    values = torch.where(held_out, f.double(), torch.zeros((), dtype=torch.float64, device=f.device))
    count = held_out.sum(0)
    mean = values.sum(0) / count.clamp_min(1)
    squares = torch.where(held_out, (values - mean) ** 2, torch.zeros((), dtype=torch.float64, device=f.device)).sum(0)
    weight = (count - 1).clamp_min(0).double()
    return float(squares.sum() / weight.sum()), weight


def calibrate_spread(student, x: Tensor, f: Tensor, held_out: Tensor, batch_size: int = 4096) -> SpreadCalibration:
    r"""Rescale a regression student's loadings so that its epistemic variance matches the
    teachers' out-of-sample spread (module docstring); in place.

    :param student: a fitted :class:`~pyro_dlf.student.Student` with one regression output.
    :param x: the design points ``(m, d)`` the teachers' values belong to.
    :param f: teacher values ``(n, m)`` at ``x``.
    :param held_out: ``(n, m)`` booleans, true where teacher ``i`` did not train on point ``j``.
    :returns: the :class:`SpreadCalibration`, also stored as ``student.spread_calibration``.
    """
    if not (hasattr(student, "dlf") and hasattr(student, "task")):
        raise TypeError(f"student must be a fitted pyro_dlf.Student (what distill returns), got {type(student).__name__}")
    dlf = student.dlf
    x = check_design_points(x, "x", integer_ok=dlf.custom_body)
    f = check_teacher_values(f, x, None, "f", finite=False)  # entries a teacher did not hold out may be placeholders
    batch_size = check_int(batch_size, "batch_size")
    if student.task != "regression" or dlf.multivariate:
        raise ValueError("held_out: spread calibration is for students of one regression output; drop held_out=")
    if f.dim() != 2 or f.shape[1] != x.shape[0]:
        raise ValueError(f"f must hold teacher values (n, m) at the {x.shape[0]} design points, got shape {tuple(f.shape)}")
    spread, weight = out_of_sample_spread(f, held_out)
    if spread <= 0:
        raise InfeasibleCalibration("held_out: the teachers agree exactly at every held-out point (out-of-sample "
                                    "spread 0), so no loading scale matches it; pass values of teachers that differ there")
    weights = dlf.loading_head.weight
    points = weight > 0
    # Token ids or category codes reach a custom body unchanged; float inputs take the model's dtype.
    xs = cast_inputs(x[points.to(x.device)], weights.dtype, weights.device)
    with torch.no_grad():
        variance = torch.cat([dlf.loading(xs[s:s + batch_size]).double().pow(2).sum(-1)
                              for s in range(0, xs.shape[0], batch_size)])
        # The nugget the predictive keeps (all of it with include_nugget, else its growth beyond the data).
        kept = torch.cat([student._nugget(xs[s:s + batch_size]).double() for s in range(0, xs.shape[0], batch_size)])
        w = weight[points].to(variance.device)
        target = spread - float((w * kept.to(w.device)).sum() / w.sum())
        if target <= 0:
            kept_part, fix = (("the nugget the predictive keeps", "distill with include_nugget=False") if student.include_nugget
                              else ("the nugget's growth beyond the data, which the predictive keeps,",
                                    "distill with distance_feature=False for a constant nugget"))
            raise InfeasibleCalibration(f"held_out: {kept_part} alone exceeds the teachers' out-of-sample spread, so no "
                                        f"loading scale matches it; {fix}")
        before = float((w * variance).sum() / w.sum())
        if not before > 0:
            raise ValueError("held_out: the student's loadings are zero at the held-out points, so no scale can match the "
                             "teachers' spread; refit with more EM iterations")
        scale = target / before
        # Φ(x) = output_scale · loading_head(h): scaling the head's weight and bias scales Φ exactly
        # and travels with the state dict (saved students keep it).
        root = scale ** 0.5
        dlf.loading_head.weight.mul_(root)
        dlf.loading_head.bias.mul_(root)
    result = SpreadCalibration(scale=scale, teacher_spread=spread, student_variance_before=before,
                               degrees_of_freedom=int(weight.sum()), points=int(points.sum()))
    student.spread_calibration = result
    return result
