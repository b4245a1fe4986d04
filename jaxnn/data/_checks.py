"""Argument checks shared by the modules of jaxnn.data (NumPy only, imports nothing of jaxnn)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an int >= 1 (bool excluded), else raise naming
    ``name``: TypeError for a non-int, ValueError for an int < 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)
