"""Weighted means of checked updates: on the circle for rotation angles, plain otherwise."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord


def circular_mean(
    angles: np.ndarray, weights: np.ndarray, period: float = 2 * math.pi
) -> np.ndarray:
    """Weighted mean of periodic values along axis 0, in ``(-period/2, period/2]``.

    Each value is mapped to a point on the unit circle, the points are averaged with
    the weights, and the mean's direction is mapped back (Mardia & Jupp, *Directional
    Statistics*, 2000, sec. 2.2.1). The mean of 3.1 and -3.1 (period 2 pi) is pi,
    not 0. Where the points cancel exactly the direction is undefined and 0 is returned.

    Parameters
    ----------
    angles : np.ndarray
        Stacked values, one row per client.
    weights : np.ndarray
        One non-negative weight per row.
    period : float
        The period: 2 pi for a rotation angle that acts up to a global phase, 4 pi for
        a controlled rotation, whose relative phase only repeats after 4 pi.
    """
    scale = 2 * math.pi / period
    shape = (-1,) + (1,) * (angles.ndim - 1)
    w = np.asarray(weights, dtype=np.float64).reshape(shape)
    phase = np.asarray(angles, dtype=np.float64) * scale
    mean = np.arctan2((w * np.sin(phase)).sum(0), (w * np.cos(phase)).sum(0))
    # arctan2 returns [-pi, pi]; fold -pi onto pi so the range is half-open.
    mean = np.where(mean <= -math.pi + 1e-15, math.pi, mean)
    return mean / scale


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted arithmetic mean along axis 0 (float64 accumulation)."""
    shape = (-1,) + (1,) * (values.ndim - 1)
    w = np.asarray(weights, dtype=np.float64).reshape(shape)
    return (w * values.astype(np.float64)).sum(0) / w.sum()


def weighted_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    angle_periods: Mapping[str, float],
    depths: Sequence[int | None] | None = None,
    layered: Collection[str] = (),
) -> ArrayRecord:
    """Aggregate checked updates: circular mean for angle arrays, weighted mean otherwise.

    With ``depths`` (UAVs whose circuits run only their first layers), each layer of a
    ``layered`` array (axis 0: the circuit's layer) is averaged over the updates whose
    circuit has it, with their weights renormalised; the others sent it back unchanged,
    and averaging those in would pull it towards the old model like a zero step. A
    layer no update has keeps the plain mean (all updates then hold the same values).

    Parameters
    ----------
    updates : list[Mapping[str, np.ndarray]]
        Decoded, validated updates, all with the same names, shapes and dtypes.
    weights : list[float]
        One positive weight per update.
    angle_periods : Mapping[str, float]
        Names of the arrays that hold rotation angles, with the period of each.
    depths : list[int or None], optional
        Layers each update's circuit ran (``None``: all).
    layered : Collection[str]
        Names of the arrays whose axis 0 is the circuit's layer.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    aggregated = {}
    for name, first in updates[0].items():
        stacked = np.stack([update[name] for update in updates])
        if name in layered and depths is not None and any(d is not None for d in depths):
            mean = np.stack([
                _mean(stacked[:, layer], layer_weights(w, depths, layer), name, angle_periods)
                for layer in range(stacked.shape[1])
            ])
        else:
            mean = _mean(stacked, w, name, angle_periods)
        if np.issubdtype(first.dtype, np.integer):
            mean = np.rint(mean)
        aggregated[name] = Array(np.ascontiguousarray(mean.astype(first.dtype)))
    return ArrayRecord(aggregated)


def _mean(stacked: np.ndarray, w: np.ndarray, name: str,
          angle_periods: Mapping[str, float]) -> np.ndarray:
    if name in angle_periods:
        return circular_mean(stacked, w, angle_periods[name])
    return weighted_mean(stacked, w)


def layer_weights(weights: np.ndarray, depths: Sequence[int | None], layer: int) -> np.ndarray:
    """The weights for one circuit layer: zero for updates whose circuit stops before it
    (all weights if no update has the layer)."""
    has = np.array([depth is None or depth > layer for depth in depths])
    if not has.any():
        return weights
    masked = np.where(has, weights, 0.0)
    return masked / masked.sum()
