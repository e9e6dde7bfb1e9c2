"""Argument checks shared by the physics modules (package-internal)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def as_probability(value: ArrayLike, name: str) -> FloatArray:
    """``value`` as a float array; ``ValueError`` naming ``name`` if an entry is outside [0, 1]."""
    array = np.asarray(value, dtype=np.float64)
    bad = ~((array >= 0.0) & (array <= 1.0))
    if np.any(bad):
        raise ValueError(f"{name} must lie in [0, 1], got {array[bad].flat[0]!r}")
    return array


def as_non_negative(value: ArrayLike, name: str) -> FloatArray:
    """``value`` as a float array; ``ValueError`` naming ``name`` if an entry is < 0 or NaN."""
    array = np.asarray(value, dtype=np.float64)
    bad = ~(array >= 0.0)
    if np.any(bad):
        raise ValueError(f"{name} must be >= 0, got {array[bad].flat[0]!r}")
    return array
