"""What the strategies accept, by name: light enough to validate a run config.

:mod:`task.config` offers these as the allowed values of ``aggregation``, ``weighting``
and ``angle-aggregation``; the strategies refuse anything else with the same lists.
"""

AGGREGATIONS: tuple[str, ...] = ("fedavg", "trimmed-mean", "median")
"""``fedavg``: weighted mean; ``trimmed-mean`` and ``median``: coordinate-wise robust rules."""

ANGLE_AGGREGATIONS: tuple[str, ...] = ("circular", "arithmetic")
"""How rotation angles are averaged: on the circle, or as plain numbers (for comparison)."""

WEIGHTINGS: tuple[str, ...] = ("samples", "samples-x-fidelity")
"""An update's weight: its sample count, or that times its path's end-to-end fidelity."""
