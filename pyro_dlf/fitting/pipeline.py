"""One distillation of given design points: the data checked once, the body chosen, the student fitted."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from pyro_dlf.fitting.body import choose_body
from pyro_dlf.fitting.data import TeacherInputs, prepare_data
from pyro_dlf.fitting.context import FitContext
from pyro_dlf.fitting.fit import fit_student
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.fitting.teachers import TeacherOutputs
from pyro_dlf.student import Student

__all__ = ["fit_teachers"]


def fit_teachers(x_design: Tensor, teacher_outputs: TeacherOutputs, inputs: TeacherInputs, o: DistillOptions,
                 context: Optional[FitContext] = None) -> Student:
    """Distill the teachers at the design points ``x_design`` as given: :func:`~pyro_dlf.fitting.data.prepare_data`,
    :func:`~pyro_dlf.fitting.body.choose_body`, then :func:`~pyro_dlf.fitting.fit.fit_student` with the chosen body
    and training length. ``student.body_selection`` records the comparison (``None`` when nothing was compared)."""
    context = context or FitContext()
    data = prepare_data(x_design, teacher_outputs, inputs, o)
    hidden, length, selection = choose_body(data, o, context)
    student = fit_student(data, o, hidden, length, context)
    student.body_selection = selection
    return student
