"""Noise laws of regression students, one file each, read through one interface (:class:`NoiseLaw`).

:class:`InverseGammaNoise` (the i.i.d. law, mathematics §2.4), :class:`FactorInverseGammaNoise` (noise that
follows the factors, §6.3) and :class:`HeteroscedasticNoise` (a log-normal law whose location follows ``x``,
§6.4). The student's Pyro model, its predictive summaries and mixture, and the student file use them alone.
"""

from pyro_dlf.likelihoods.base import MixtureParts, NoiseLaw
from pyro_dlf.likelihoods.given_factors import FactorInverseGammaNoise
from pyro_dlf.likelihoods.heteroscedastic import HeteroscedasticNoise, fit_heteroscedastic_noise
from pyro_dlf.likelihoods.inverse_gamma import InverseGammaNoise

__all__ = ["NoiseLaw", "MixtureParts", "InverseGammaNoise", "FactorInverseGammaNoise", "HeteroscedasticNoise",
           "fit_heteroscedastic_noise"]
