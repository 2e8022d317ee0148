r"""The body and the training length, chosen by held-out scores of the teachers' values (no labels).

Each candidate (a body's widths and a fraction of the schedule) is fitted on ``1 − validation_fraction`` of
the design points and scored at the rest (:func:`pyro_dlf.selection.select_hidden`): regression teachers with
one noise variance each by the ensemble-predictive log score, others by the exact marginal likelihood of
their values (mathematics §3).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch
from torch import Tensor

from pyro_dlf.fitting.data import TeacherData
from pyro_dlf.fitting.context import FitContext
from pyro_dlf.fitting.fit import fit_student
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.selection import BodySelection, check_selection_size, predictive_log_score, select_hidden
from pyro_dlf.student import Student

__all__ = ["choose_body"]


def _score(data: TeacherData) -> Callable[[Student, Tensor, Tensor, Optional[Tensor]], Tensor]:
    """The held-out score of a candidate: each teacher's per-value score at the validation points."""
    v = data.noise_variances
    scalar_noise = v if data.task == "regression" and data.num_outputs is None and v.dim() == 1 else None

    def score(student: Student, xs: Tensor, fs: Tensor, mask: Optional[Tensor]) -> Tensor:
        if scalar_noise is not None:
            return predictive_log_score(student, xs, fs, scalar_noise, mask)  # see pyro_dlf.selection
        dtype = student.dlf.loading_head.weight.dtype
        if mask is None:
            return student.dlf.log_marginal_likelihood(xs.to(dtype), fs.to(dtype)) / fs[0].numel()
        # A teacher with no observed validation point has no score (NaN; left out of the comparison).
        seen = mask.any(1)
        ll = torch.full((fs.shape[0],), float("nan"), dtype=torch.float64)
        ll[seen] = student.dlf.log_marginal_likelihood(xs.to(dtype), fs[seen].to(dtype), observed=mask[seen]) / mask[seen].sum(1)
        return ll

    return score


def choose_body(data: TeacherData, o: DistillOptions,
                context: FitContext) -> tuple[tuple[int, ...], float, Optional[BodySelection]]:
    """``(widths, training length, selection)``: ``o``'s own when nothing is compared, else the simplest candidate
    within one standard error of the best held-out score (``selection`` records the comparison)."""
    if not o.compares_bodies:
        return o.hidden, o.training_lengths[0], None
    candidates = o.hidden_candidates or (o.hidden,)  # one body: only the training length is compared
    if context.candidate is None:
        if o.hidden_candidates is not None:
            check_selection_size(data.x.shape[0], o.validation_fraction, "hidden", o.hidden_given, "pass one body, e.g. hidden=(50,)")
        else:
            check_selection_size(data.x.shape[0], o.validation_fraction, "training_length", o.training_length_given,
                                 "pass a fraction, e.g. training_length=1.0")
    quiet = replace(o, progress=False)
    rows = FitContext(None, context.distance_anchors, data.x if context.data_rows is None else context.data_rows)

    def fit(xs: Tensor, fs: Tensor, widths: tuple[int, ...], mask: Optional[Tensor], idx: Tensor, length: float) -> Student:
        # Candidates are compared as fitted; the chosen body is calibrated after its refit.
        named = replace(rows, candidate=f"body selection (hidden={widths}, training_length={length:g})")
        return fit_student(data.subset(xs, fs, mask, idx), quiet, widths, length, named)

    selection = select_hidden(data.x, data.f, candidates, fit, _score(data), validation_fraction=o.validation_fraction,
                              seed=o.seed, observed=data.observed, lengths=o.training_lengths, progress=o.progress)
    return selection.chosen, selection.chosen_length, selection
