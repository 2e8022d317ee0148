r"""Named design sets built from a user's inputs (mathematics §9.1).

Each set is the data ``x`` plus unlabeled points placed off them; the
teachers are evaluated at every point, so no labels are needed:

* ``"given"``: ``x`` itself;
* ``"between"``: ``x`` plus one mixup point per row (:func:`~pyro_dlf.design.tabular.mixup`),
  inside the data's convex hull;
* ``"around"``: ``x`` plus one Gaussian perturbation per row
  (:func:`~pyro_dlf.design.tabular.gaussian_perturbation`, Scott's bandwidth), around the data;
* ``"beyond"``: ``x`` plus one Gaussian perturbation and one outward probe per row
  (:func:`~pyro_dlf.design.tabular.outward_probes` with reach ``ρ``): around the data and in
  the shell out to ``1 + ρ`` times each row's distance from the centroid.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyro_dlf._validation import check_generator, check_rows
from pyro_dlf.design.tabular import gaussian_perturbation, mixup, outward_probes

__all__ = ["DESIGNS", "build_design"]

#: The named design sets, from the data alone to beyond them.
DESIGNS: tuple[str, ...] = ("given", "between", "around", "beyond")


def build_design(x: Tensor, name: str, *, reach: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """The design set ``name`` (one of :data:`DESIGNS`) built from the data rows ``x`` ``(n, D)``.

    :param x: the data's inputs in original units; they come first in the result, in order.
    :param name: which set (see the module docstring).
    :param reach: ``ρ`` of ``"beyond"``: how far past each row the outward probes may go, as a share of
        its distance from the centroid (standardized coordinates).
    :param generator: the source of every random draw (CPU), for reproducible sets.
    :returns: ``(k n, D)`` points, ``k = 1, 2, 2, 3`` for the four names.
    """
    if name not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS} (or 'auto' in distill), got {name!r}")
    check_rows(x)  # every name, "given" too: the rows are the design
    check_generator(generator)
    parts = [x]
    if name == "between":
        parts.append(mixup(x, generator=generator))
    if name in ("around", "beyond"):
        parts.append(gaussian_perturbation(x, generator=generator))
    if name == "beyond":
        parts.append(outward_probes(x, reach=reach, generator=generator))
    return torch.cat(parts)
