"""What the base station knows of each UAV's quantum device, for weighting and averaging.

The ServerApp fills it from run config ``device`` / ``device-map`` (:mod:`task.devices`)
before the first round; :class:`strategies.relay.RelayStrategy` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UavDevices:
    """Per UAV id: its device's expected circuit fidelity (``weighting='calibration'``) and,
    for a UAV whose circuit is shallower than the run's, its number of layers."""

    fidelity: dict[str, float] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
