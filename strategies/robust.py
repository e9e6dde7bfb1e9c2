"""Robust aggregation and update screening: what a hostile or broken client cannot do.

Two pieces, each a pure function of numpy arrays so they can be tested on hand-made
updates:

- :func:`screen_updates`: the round-relative rules. An update whose distance from the
  current global model is more than ``max_norm_ratio`` times the round's median
  distance is **rejected**, and so is a reply whose claimed ``num-examples`` is more
  than ``max_weight_ratio`` times the round's median claim. Rejection rather than
  clipping: the update never touches the model, the reason is logged and recorded, and
  an honest outlier shows up in ``metrics.json`` where an operator can raise the ratio.
- :func:`robust_aggregate`: coordinate-wise median or trimmed mean (the rules of
  Flower's ``FedMedian`` and ``FedTrimmedAvg``, unweighted like them, so a claimed
  sample count buys no influence). Rotation angles are aggregated as wrapped deltas
  from the current global angle, which is angle-correct while the clients' deltas
  stay within half a period of each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord


def wrap_angle(values: np.ndarray, period: float) -> np.ndarray:
    """Map periodic values into ``(-period/2, period/2]``."""
    half = period / 2
    return half - np.mod(half - np.asarray(values, dtype=np.float64), period)


def array_deltas(
    stacked: np.ndarray, reference: np.ndarray, period: float | None
) -> np.ndarray:
    """Each row minus the reference; for an angle array, wrapped into half a period."""
    deltas = stacked.astype(np.float64) - reference.astype(np.float64)
    return deltas if period is None else wrap_angle(deltas, period)


def update_distances(
    updates: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    angle_periods: Mapping[str, float],
) -> np.ndarray:
    """Euclidean distance of each update from ``reference`` over all its arrays.

    Angle differences are wrapped first: an angle that went from 3.1 to -3.1 moved
    by 0.08, not 6.2.
    """
    squared = np.zeros(len(updates))
    for name, ref in reference.items():
        stacked = np.stack([update[name] for update in updates])
        deltas = array_deltas(stacked, ref, angle_periods.get(name))
        squared += (deltas.reshape(len(updates), -1) ** 2).sum(axis=1)
    return np.sqrt(squared)


@dataclass(frozen=True)
class ScreeningRules:
    """Round-relative limits; 0 turns a rule off.

    Attributes
    ----------
    max_norm_ratio : float
        Reject an update whose distance from the global model exceeds this multiple of
        the round's median distance.
    max_weight_ratio : float
        Reject a reply whose claimed weight (``num-examples``) exceeds this multiple of
        the round's median claim.
    """

    max_norm_ratio: float = 0.0
    max_weight_ratio: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_norm_ratio", "max_weight_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value == 0.0 or value >= 1.0)):
                raise ValueError(f"{name} = {value!r} must be 0 (off) or at least 1")


def screen_updates(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    reference: Mapping[str, np.ndarray],
    angle_periods: Mapping[str, float],
    rules: ScreeningRules,
) -> dict[int, str]:
    """Which of a round's checked updates to reject, by index, with the reason.

    Both rules compare with the median over all the round's checked updates, so they
    act from three updates on: with two, neither can exceed twice the median.

    Parameters
    ----------
    updates : sequence of mappings
        Decoded arrays of each update (already of the expected names, shapes, dtypes).
    weights : sequence of float
        Each update's claimed weight.
    reference : mapping
        The global model the updates started from.
    angle_periods : mapping
        Angle arrays and their periods (their differences are wrapped).
    rules : ScreeningRules
        The limits.
    """
    if not updates:
        return {}
    rejected = screen_weights(weights, rules.max_weight_ratio)
    if rules.max_norm_ratio:
        distances = update_distances(updates, reference, angle_periods)
        median = float(np.median(distances))
        for index, distance in enumerate(distances):
            if index not in rejected and distance > rules.max_norm_ratio * median:
                ratio = "inf" if median == 0 else f"{distance / median:.3g}"
                rejected[index] = (
                    f"update norm {distance:.4g} (distance from the global model) is {ratio} "
                    f"x the round's median {median:.4g}; the limit is "
                    f"{rules.max_norm_ratio:g} x"
                )
    return rejected


def screen_weights(weights: Sequence[float], max_weight_ratio: float) -> dict[int, str]:
    """Which claimed weights exceed ``max_weight_ratio`` x the median claim (0: none).

    The rule :func:`screen_updates` applies to training replies and the strategy applies
    to evaluate replies, whose weight sets the aggregated evaluation just the same.
    """
    if not max_weight_ratio or not len(weights):
        return {}
    claims = np.asarray(weights, dtype=np.float64)
    limit = max_weight_ratio * float(np.median(claims))
    return {
        index: (
            f"claims {claim:g} examples, more than {max_weight_ratio:g} x the "
            f"round's median claim {limit / max_weight_ratio:g}"
        )
        for index, claim in enumerate(claims)
        if claim > limit
    }


def trimmed_mean(values: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Mean along axis 0 after dropping ``floor(trim_fraction * n)`` rows from each tail,
    coordinate by coordinate (as Flower's ``FedTrimmedAvg``)."""
    n = values.shape[0]
    cut = int(math.floor(trim_fraction * n))
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction = {trim_fraction!r} must be in [0, 0.5)")
    ordered = np.sort(values.astype(np.float64), axis=0)
    return ordered[cut : n - cut].mean(axis=0)


def coordinate_median(values: np.ndarray) -> np.ndarray:
    """Median along axis 0, coordinate by coordinate (as Flower's ``FedMedian``)."""
    return np.median(values.astype(np.float64), axis=0)


def robust_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    angle_periods: Mapping[str, float],
    method: str,
    trim_fraction: float = 0.2,
) -> ArrayRecord:
    """Coordinate-wise ``median`` or ``trimmed-mean`` of the updates' deltas.

    Every array is aggregated as ``reference + aggregate(update - reference)``. For a
    plain array this is the median / trimmed mean of the values themselves; for an
    angle array the deltas are first wrapped into ``(-P/2, P/2]`` and the result is
    wrapped again, so 3.1 and -3.1 (period 2 pi) are treated as neighbours across pi.

    Parameters
    ----------
    updates : sequence of mappings
        Decoded, screened arrays of each update.
    reference : mapping
        The global model of this round.
    angle_periods : mapping
        Angle arrays and their periods; empty to treat angles as plain numbers.
    method : {"median", "trimmed-mean"}
        The coordinate-wise rule.
    trim_fraction : float
        For ``trimmed-mean``: the fraction dropped from each tail.
    """
    if method not in ("median", "trimmed-mean"):
        raise ValueError(f"robust method {method!r} is not known; use 'median' or 'trimmed-mean'")
    aggregated = {}
    for name, ref in reference.items():
        period = angle_periods.get(name)
        deltas = array_deltas(np.stack([update[name] for update in updates]), ref, period)
        if method == "median":
            step = coordinate_median(deltas)
        else:
            step = trimmed_mean(deltas, trim_fraction)
        value = ref.astype(np.float64) + step
        if period is not None:
            value = wrap_angle(value, period)
        if np.issubdtype(ref.dtype, np.integer):
            value = np.rint(value)
        aggregated[name] = Array(np.ascontiguousarray(value.astype(ref.dtype)))
    return ArrayRecord(aggregated)
