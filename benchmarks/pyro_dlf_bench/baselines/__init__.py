"""Baselines, including the teacher deep ensembles that are distilled, and the one training loop."""

from pyro_dlf_bench.baselines.classifiers import (
    BatchEnsembleClassifier,
    BatchEnsembleConv2d,
    ConvEnsemble,
    DirichletClassifier,
    HydraClassifier,
    conv_classifier,
    prediction_from_probs,
)
from pyro_dlf_bench.baselines.dirichlet import (
    DirichletUncertainty,
    concentrations_from_logits,
    dirichlet_kl,
    dirichlet_uncertainty,
    proxy_dirichlet_targets,
    proxy_end2_loss,
)
from pyro_dlf_bench.baselines.divergences import DIVERGENCES, distillation_loss, f_divergence, sequence_f_divergence
from pyro_dlf_bench.baselines.ensemble import DeepEnsembleRegressor, MixtureRegressor, fit_regressor, fit_regressors
from pyro_dlf_bench.baselines.students import (
    BatchEnsembleLinear,
    BatchEnsembleStudent,
    DistilledEnsemble,
    HydraStudent,
    SmallEnsembleStudent,
)
from pyro_dlf.training import LOSSES, fit_networks

__all__ = [
    "fit_networks",
    "LOSSES",
    "DeepEnsembleRegressor",
    "MixtureRegressor",
    "fit_regressor",
    "fit_regressors",
    "DistilledEnsemble",
    "SmallEnsembleStudent",
    "HydraStudent",
    "BatchEnsembleLinear",
    "BatchEnsembleStudent",
    "ConvEnsemble",
    "HydraClassifier",
    "BatchEnsembleClassifier",
    "BatchEnsembleConv2d",
    "DirichletClassifier",
    "conv_classifier",
    "prediction_from_probs",
    "DIVERGENCES",
    "f_divergence",
    "distillation_loss",
    "sequence_f_divergence",
    "proxy_dirichlet_targets",
    "proxy_end2_loss",
    "dirichlet_kl",
    "dirichlet_uncertainty",
    "DirichletUncertainty",
    "concentrations_from_logits",
]
