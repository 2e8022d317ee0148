"""Warnings of one call said once: the candidate fits of a choice would repeat them."""

from __future__ import annotations

import warnings

__all__ = ["say_once"]


def say_once(caught: list, stacklevel: int) -> None:
    """Re-emit the recorded warnings ``caught``, each distinct one once; ``stacklevel`` counts from the caller of
    this function (2: the caller's caller, the user's line when called from a public entry point)."""
    for category, message in dict.fromkeys((record.category, str(record.message)) for record in caught):
        warnings.warn(message, category, stacklevel=stacklevel + 1)
