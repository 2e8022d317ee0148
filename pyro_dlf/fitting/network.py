"""The student's network: built from the options, its inputs and outputs standardized by the data (mathematics §1)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyro_dlf._validation import cast_inputs, check_body_output, check_network_size
from pyro_dlf.fitting.context import FitContext
from pyro_dlf.fitting.data import TeacherData
from pyro_dlf.fitting.options import DistillOptions
from pyro_dlf.models.deep_latent_factor import DeepLatentFactor

__all__ = ["new_network", "build_network", "standardize_stats"]


def standardize_stats(t: Tensor, dim) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation along ``dim``; a constant column keeps scale 1."""
    loc = t.mean(dim)
    scale = t.std(dim)
    # A constant column -- no spread beyond the rounding of its dtype -- has nothing to standardize; leave it
    # unscaled. The test is relative: inputs of any magnitude (1e-30 or 1e30) with a real spread are standardized.
    resolved = scale > 16 * torch.finfo(t.dtype).eps * loc.abs()
    return loc, torch.where(resolved & (scale > 0), scale, torch.ones_like(scale))


def new_network(in_features: Optional[int], num_factors: int, hidden: tuple[int, ...], num_outputs: Optional[int],
                covariance: str, centered_loadings: bool, o: DistillOptions, device: torch.device,
                distance_anchors: Optional[int] = None) -> DeepLatentFactor:
    """The student's network, freshly initialized from the current random state, in ``o.dtype`` on ``device``
    (mathematics §1; shared by the in-memory and streamed fits). Widths or a factor count too large for the memory
    here are refused first, naming the option."""
    full = num_outputs is not None and covariance == "full"
    check_network_size(in_features if o.body is None else None, hidden, o.loading_hidden, num_factors,
                       (num_outputs or 1, num_factors * (num_outputs if full else 1)), o.batch_size, o.dtype, device)
    return DeepLatentFactor(
        in_features, num_factors, hidden, num_outputs, body=o.body, body_features=o.body_features, activation=o.activation,
        covariance=covariance if num_outputs is not None else "separable", centered_loadings=bool(centered_loadings),
        loading_hidden=o.loading_hidden, distance_anchors=distance_anchors,
    ).to(dtype=o.dtype, device=device)


def build_network(data: TeacherData, x: Tensor, values: Tensor, hidden: tuple[int, ...], o: DistillOptions,
                 context: FitContext) -> DeepLatentFactor:
    """The network, its inputs and outputs standardized by the design points and the observed values."""
    model = new_network(x.shape[1] if o.body is None else None, data.num_factors, hidden, data.num_outputs, data.covariance,
                        data.centered_loadings, o, x.device, context.distance_anchors)
    with torch.no_grad():
        if o.body is None:
            model.input_loc, model.input_scale = standardize_stats(x, 0)
        if context.distance_anchors is not None:
            rows = x if context.data_rows is None else cast_inputs(context.data_rows.to(x.device), o.dtype)
            # Their own draws, so that a fit with the feature keeps the minibatch order of one without it.
            model.set_anchors(rows, torch.Generator().manual_seed(o.seed + 2))
        loc, _ = standardize_stats(values, tuple(range(values.dim() - (data.f.dim() - 2))))
        model.output_loc.copy_(loc)
        # The fit is scale-free: the values' own spread (positive: check_value_scale), however small or large.
        model.output_scale.copy_(values.std())
    model.set_noise_variance(0.1 * float(values.var()))
    if o.body is not None:
        # A wrong body would otherwise surface as a shape error inside the heads.
        check_body_output(model.body, x, model.body_features)
    return model
