"""Pyro guides of pyro_dlf (installed as :mod:`pyro_dlf.guides`)."""

from pyro_dlf.guides.exact_factor_posterior import ExactFactorPosterior

__all__ = ["ExactFactorPosterior"]
