"""Baselines, including the teacher deep ensemble that is distilled."""

from pyro_dlf.baselines.ensemble import DeepEnsembleRegressor, fit_regressor

__all__ = ["DeepEnsembleRegressor", "fit_regressor"]
