r"""Where the teachers are evaluated: the design set built from the data rows, chosen without labels (mathematics §9).

With callable teachers, ``x_design`` are the data rows and :func:`fit_on_design` builds the design set from
them (a named set, a callable, or ``"auto"``: the candidates of
:data:`pyro_dlf.design.choice.DESIGN_CANDIDATES` compared by the teachers' held-out values in range, around and
beyond the rows); with values, per-point inputs or a custom body the rows are the design.
``student.design_choice`` records the design and why.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor

from pyro_dlf._validation import check_design_points, check_num_points
from pyro_dlf.design.choice import DESIGN_CANDIDATES, DesignChoice, choose_design
from pyro_dlf.fitting.data import TeacherInputs
from pyro_dlf.fitting.context import FitContext
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.fitting.pipeline import fit_teachers
from pyro_dlf.fitting.teachers import TeacherOutputs, evaluate_teachers, is_teacher_list
from pyro_dlf.selection import minimum_design_points
from pyro_dlf.student import Student

__all__ = ["DISTANCE_ANCHORS", "fit_on_design"]

#: Data rows the distance feature measures from (a random subset when there are more; mathematics §9.3).
DISTANCE_ANCHORS = 256


def _no_design_reason(x: Tensor, teacher_outputs: TeacherOutputs, inputs: TeacherInputs, o: DistillOptions) -> Optional[str]:
    """Why no design can be built from ``x`` (``None`` when one can): the teachers must be callables, and
    per-point inputs exist only at the given points."""
    if not (is_teacher_list(teacher_outputs) or callable(teacher_outputs)):
        return "the teachers are given as values at x_design; pass them as callables so that they can be evaluated off the data"
    for name, value in (("observed", inputs.observed), ("held_out", inputs.held_out)):
        if value is not None:
            return f"{name} marks the given points only"
    noise = inputs.noise_variances
    if noise is not None and getattr(noise, "ndim", 1) == 2 and len(x) > 0 and noise.shape[1] == len(x):
        return "teacher_noise_variances gives variances at the given points only"
    if not callable(o.design) and (o.body is not None or getattr(x, "ndim", 0) != 2):
        return "the named design sets need (m, d) rows and the default MLP body (pass a callable design= for other inputs)"
    fraction = o.validation_fraction
    if o.design == "auto" and hasattr(x, "shape") and len(x) < minimum_design_points(fraction):
        return (f"{len(x)} rows are too few to hold some out for the choice (at least {minimum_design_points(fraction)} at "
                f"validation_fraction={fraction:g})")
    return None


def _context(feature: bool, rows: Optional[Tensor], candidate: Optional[str] = None) -> FitContext:
    return FitContext(candidate, DISTANCE_ANCHORS if feature else None, rows if feature else None)


def _choose(x: Tensor, teachers, inputs: TeacherInputs, o: DistillOptions) -> DesignChoice:
    """The design ``o.design`` names, or with ``"auto"`` the one the teachers' held-out values prefer (mathematics §9.2)."""
    if o.design != "auto":
        name, reach = ("custom", None) if callable(o.design) else (o.design, 0.5 if o.design == "beyond" else None)
        feature = o.distance_feature if o.distance_feature != "auto" else name != "given" and o.body is None
        return DesignChoice(name, reach, "asked for", distance_feature=feature)
    # Candidates are compared with one body and the whole schedule; the chosen design then gets the caller's options.
    hidden = o.hidden if o.hidden_candidates is None else o.hidden_candidates[0]
    quick = replace(o, hidden=hidden, hidden_candidates=None, training_lengths=(1.0,), progress=False)
    candidates = DESIGN_CANDIDATES if o.distance_feature == "auto" else tuple(
        dict.fromkeys((name, reach, o.distance_feature) for name, reach, _ in DESIGN_CANDIDATES))

    def fit_candidate(dx: Tensor, df: Tensor, rows: Tensor, feature: bool) -> Student:
        return fit_teachers(dx, df, inputs, quick, _context(feature, rows, f"design choice (distance_feature={feature})"))

    return choose_design(x, teachers, fit_candidate, candidates=candidates, validation_fraction=o.validation_fraction,
                         seed=o.seed, progress=o.progress)


def _design_points(x: Tensor, choice: DesignChoice, o: DistillOptions) -> Tensor:
    if not callable(o.design):
        return choice.points(x)
    added = check_design_points(o.design(x, generator=torch.Generator().manual_seed(o.seed + 1)), "design(x, generator)",
                                integer_ok=not x.is_floating_point())
    if added.shape[1:] != x.shape[1:] or added.is_floating_point() != x.is_floating_point():
        raise ValueError(f"design: the callable returned points {tuple(added.shape)} of dtype {added.dtype} for rows "
                         f"{tuple(x.shape)} of dtype {x.dtype}; it must return (k, {', '.join(map(str, x.shape[1:]))}) points "
                         "of the rows' kind")
    return torch.cat([x, added.to(x)])


def fit_on_design(x_design: Tensor, teacher_outputs: TeacherOutputs, inputs: TeacherInputs, o: DistillOptions) -> Student:
    """Build the design set from the rows ``x_design``, evaluate the teachers there, and distill
    (:func:`~pyro_dlf.fitting.pipeline.fit_teachers`); ``student.design_choice`` records the design."""
    reason = _no_design_reason(x_design, teacher_outputs, inputs, o)
    if reason is not None:
        if o.design not in ("auto", "given"):
            raise ValueError(f"design={o.design!r} places points off x_design, but {reason}; pass design='given'")
        choice = DesignChoice("given", None, reason if o.design == "auto" else "asked for",
                              distance_feature=o.distance_feature is True, seed=o.seed)
        student = fit_teachers(x_design, teacher_outputs, inputs, o, _context(choice.distance_feature, None))
        choice.num_data_points = choice.num_design_points = len(x_design)
        student.design_choice = choice
        return student
    x = check_design_points(x_design, "x_design", integer_ok=callable(o.design))
    check_num_points(x.shape[0], "x_design")
    if o.device is not None:
        x = x.to(o.device)
    ensemble = list(teacher_outputs) if is_teacher_list(teacher_outputs) else teacher_outputs
    # The rows first: a failing teacher is named with the rows it failed on, before any design is built.
    f_rows = evaluate_teachers(ensemble, x, o.teacher_batch_size)
    teachers = functools.partial(evaluate_teachers, ensemble, batch_size=o.teacher_batch_size,
                                 where="design points built from x_design, rows")
    choice = _choose(x, teachers, inputs, o)
    choice.seed = o.seed
    design_x = _design_points(x, choice, o)
    f_design = torch.cat([f_rows, teachers(design_x[len(x):])], 1) if len(design_x) > len(x) else f_rows
    student = fit_teachers(design_x, f_design, inputs, o, _context(choice.distance_feature, x))
    choice.num_data_points, choice.num_design_points = int(x.shape[0]), int(design_x.shape[0])
    student.design_choice = choice
    return student
