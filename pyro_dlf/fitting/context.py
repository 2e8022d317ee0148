"""What a candidate fit of a choice carries besides the data and the options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

__all__ = ["FitContext"]


@dataclass(frozen=True)
class FitContext:
    """A fit's name in warnings and the distance feature's anchors.

    :ivar candidate: names a candidate fit of a choice in its warnings (``None``: the fit the caller gets).
    :ivar distance_anchors: how many data rows the distance feature measures from (mathematics §9.3), or ``None``.
    :ivar data_rows: the rows it measures from (``None``: the design points).
    """

    candidate: Optional[str] = None
    distance_anchors: Optional[int] = None
    data_rows: Optional[Tensor] = None
