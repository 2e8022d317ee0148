"""Helpers shared by the tests: small random DLFs and synthetic teachers."""

import torch


def random_dlf(in_features=2, num_factors=3, num_outputs=None, hidden=(8,), seed=0, noise_variance=0.3, dtype=torch.float64,
               covariance="separable", loading_hidden=None, distance_anchors=None):
    """A small DLF with random weights (and a random L when separable), in float64 for exact comparisons.

    ``num_outputs="full"`` is shorthand for three outputs with the full class covariance.
    """
    from pyro_dlf.models import DeepLatentFactor

    if num_outputs == "full":
        num_outputs, covariance = 3, "full"
    torch.manual_seed(seed)
    model = DeepLatentFactor(in_features, num_factors, hidden, num_outputs, noise_variance=noise_variance,
                             covariance=covariance, loading_hidden=loading_hidden, distance_anchors=distance_anchors).to(dtype)
    if distance_anchors is not None:
        model.set_anchors(torch.randn(3 * distance_anchors, in_features, dtype=dtype), torch.Generator().manual_seed(seed))
    if model.separable:
        L = torch.tril(torch.randn(num_outputs, num_outputs, dtype=dtype))
        L.diagonal().copy_(L.diagonal().abs() + 0.5)
        model.class_factor = L
    return model


def synthetic_teachers(num_teachers, num_points=60, num_factors=3, num_outputs=None, noise_variance=0.01, seed=0, hidden=(16,),
                       covariance="separable"):
    """Teachers drawn from a known DLF on 1-D inputs: (true_model, x, f) in float32."""
    from pyro_dlf.models import DeepLatentFactor

    torch.manual_seed(seed)
    truth = DeepLatentFactor(1, num_factors, hidden, num_outputs, activation="Tanh", noise_variance=noise_variance,
                             covariance=covariance)
    with torch.no_grad():
        truth.loading_head.weight.mul_(0.7)
    x = torch.linspace(-2, 2, num_points).unsqueeze(-1)
    with torch.no_grad():
        f = truth.sample(x, num_teachers, include_noise=True)
    return truth, x, f
