"""Pyro models of pyro_dlf (installed as :mod:`pyro_dlf.models`)."""

from pyro_dlf.models.bayesian_mlp import BayesianMLP
from pyro_dlf.models.deep_latent_factor import ACTIVATIONS, DeepLatentFactor

__all__ = ["ACTIVATIONS", "BayesianMLP", "DeepLatentFactor"]
