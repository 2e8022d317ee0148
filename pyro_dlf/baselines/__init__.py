"""Baselines, including the teacher deep ensemble that is distilled."""

from pyro_dlf.baselines.ensemble import DeepEnsembleRegressor, MixtureRegressor, fit_regressor, fit_regressors
from pyro_dlf.baselines.students import (
    BatchEnsembleLinear,
    BatchEnsembleStudent,
    DistilledEnsemble,
    HydraStudent,
    SmallEnsembleStudent,
)

__all__ = [
    "DeepEnsembleRegressor",
    "MixtureRegressor",
    "fit_regressor",
    "fit_regressors",
    "DistilledEnsemble",
    "SmallEnsembleStudent",
    "HydraStudent",
    "BatchEnsembleLinear",
    "BatchEnsembleStudent",
]
