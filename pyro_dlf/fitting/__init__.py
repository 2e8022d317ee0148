"""The parts :func:`pyro_dlf.distill` is composed of, each a function a reader can find by name.

:mod:`~pyro_dlf.fitting.options` (the options, checked once), :mod:`~pyro_dlf.fitting.teachers` (evaluating
teacher callables), :mod:`~pyro_dlf.fitting.data` (the data, checked once), :mod:`~pyro_dlf.fitting.design` (the
design set beyond the data), :mod:`~pyro_dlf.fitting.body` (the body and training length),
:mod:`~pyro_dlf.fitting.fit` (one maximum-likelihood fit, with its noise law), :mod:`~pyro_dlf.fitting.network`
(the network), :mod:`~pyro_dlf.fitting.schedule` (the MMD start and EM under Adam's schedule),
:mod:`~pyro_dlf.fitting.divergence` (the divergence check), :mod:`~pyro_dlf.fitting.context` (what a candidate fit
carries) and :mod:`~pyro_dlf.fitting.pipeline` (one distillation of given design points).
"""

from pyro_dlf.fitting.data import TeacherData, TeacherInputs, prepare_data
from pyro_dlf.fitting.options import DistillOptions, check_options

__all__ = ["DistillOptions", "check_options", "TeacherInputs", "TeacherData", "prepare_data"]
