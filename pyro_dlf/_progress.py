"""Progress bars: one place that decides whether a bar is shown.

Every long step (body selection, MMD start, EM, the benchmarks) draws its bar
through :func:`progress_bar`, so ``progress=False`` and the environment variable
``TQDM_DISABLE`` (any value but ``""``, ``"0"`` or ``"false"``) hide them all.
tqdm reads ``TQDM_DISABLE`` only as a default, which an explicit
``disable=`` overrides; hence the check here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Optional

from tqdm.auto import tqdm

__all__ = ["progress_bar", "progress_disabled"]


def progress_disabled() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no bars."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def progress_bar(iterable: Optional[Iterable] = None, *, desc: str, enabled: bool = True, total: Optional[int] = None,
                 leave: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar labelled ``desc``, hidden when ``enabled`` is false or ``TQDM_DISABLE`` is set."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=(not enabled) or progress_disabled(), **kwargs)
