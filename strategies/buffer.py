"""The asynchronous mode's buffer rules (FedBuff, FedAsync): staleness and rebasing.

Pure functions of numpy arrays, so they can be checked on hand-made updates:

- :func:`staleness_factor`: how much an update trained from an older global version
  counts: 1 (``constant``), or ``(1 + staleness) ** -exponent`` (``polynomial``, FedAsync's
  rule; exponent 0.5 is FedBuff's ``1 / sqrt(1 + staleness)``).
- :func:`rebase`: an update trained from version ``v`` carries a step away from ``v``;
  applied to the current version it becomes the model that step leads to now
  (FedBuff aggregates the steps). Angle steps are wrapped into half a period first, so
  a step from 3.1 to -3.1 is a step of 0.08 and the result is an angle again.

With every update of a buffer rebased onto the current version, the base station's
aggregation rules apply unchanged: a weighted (circular) mean of ``current + step_i`` is
``current`` plus the (circular) mean step, and the robust rules and screening measure
each update's distance from the current version.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from strategies.names import STALENESS_WEIGHTINGS
from strategies.robust import array_deltas, wrap_angle


def staleness_factor(staleness: int, weighting: str, exponent: float) -> float:
    """Weight factor of an update ``staleness`` global versions old.

    Parameters
    ----------
    staleness : int
        Versions the global model advanced while the update was trained (>= 0).
    weighting : {"constant", "polynomial"}
        The rule.
    exponent : float
        The polynomial rule's exponent (>= 0).
    """
    if weighting not in STALENESS_WEIGHTINGS:
        raise ValueError(
            f"staleness weighting {weighting!r} is not known; use one of "
            f"{', '.join(STALENESS_WEIGHTINGS)}"
        )
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if weighting == "constant":
        return 1.0
    return float((1.0 + staleness) ** -exponent)


def rebase(
    values: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    angle_periods: Mapping[str, float],
) -> dict[str, np.ndarray]:
    """``current`` moved by the step ``values - base`` (angles wrapped), array by array.

    Parameters
    ----------
    values : Mapping[str, np.ndarray]
        The checked update, trained from ``base``.
    base : Mapping[str, np.ndarray]
        The global version the update was trained from.
    current : Mapping[str, np.ndarray]
        The global version now.
    angle_periods : Mapping[str, float]
        Names of the angle arrays with their periods (empty: every array is plain).

    Returns
    -------
    dict[str, np.ndarray]
        Arrays of ``values``' dtypes; with ``base is current`` exactly ``values`` up to
        the angle wrap (and float rounding of the step).
    """
    rebased = {}
    for name, value in values.items():
        period = angle_periods.get(name)
        step = array_deltas(value[None], base[name], period)[0]
        moved = current[name].astype(np.float64) + step
        if period is not None:
            moved = wrap_angle(moved, period)
        if np.issubdtype(value.dtype, np.integer):
            moved = np.rint(moved)
        rebased[name] = moved.astype(value.dtype)
    return rebased
