"""What a SAGIN topology file describes: layers, link types, nodes, and a node's place in a round.

The bottom of the topology modules: it imports none of them, so the link, mobility,
routing, file and :class:`relay.topology.Topology` modules can all build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from relay import physics

LAYERS = ("ground", "uav", "hap", "leo")
"""Node layers, ground up."""

Medium = Literal["free-space", "fibre"]
Heralding = Literal["direct", "midpoint"]

MEDIA: tuple[Medium, ...] = ("free-space", "fibre")
"""Propagation media a link type can use."""

HERALDING_SCHEMES: tuple[Heralding, ...] = ("direct", "midpoint")
"""Entanglement-generation schemes (see :func:`relay.physics.heralding_success_probability`)."""

LINK_TYPE_NAMES = tuple(
    f"{first}-{second}"
    for index, first in enumerate(LAYERS)
    for second in LAYERS[index:]
    if not (first == "leo" and second == "leo")
)
"""Allowed link-type names, one per pair of layers (either order is accepted in a file).
Inter-satellite links are not modelled."""

MIN_PAIR_RATE_HZ = 1e-6
"""Slowest pair delivery that still counts as a link or a path: one pair in 11.6 days.

A round lasts at most a day (``round_duration_s``), so a slower hop or path carries
nothing a round could use; treating it as absent also keeps every waiting time and
latency finite, however far a file's losses push a transmissivity towards zero."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the topology file (see ``relay/topologies/default.toml``)."""

    name: str
    layer: str
    x_km: float = 0.0
    y_km: float = 0.0
    altitude_km: float = 0.0
    base_station: bool = False
    patrol_radius_km: float = 0.0
    speed_km_s: float = 0.0
    drift_km: float = 0.0
    closest_approach_s: float = 0.0
    track_offset_km: float = 0.0
    track_azimuth_deg: float = 0.0
    train_s: float = 0.0
    tle_file: str = ""
    tle_name: str = ""
    tle_lines: tuple[str, str] | None = None

    @property
    def from_tle(self) -> bool:
        """A LEO satellite placed from its TLE (``tle_lines``) rather than a circular orbit."""
        return self.tle_lines is not None


@dataclass(frozen=True)
class LinkType:
    """Physical parameters shared by every link between two layers."""

    name: str
    layers: frozenset[str]
    medium: Medium
    raw_fidelity: float
    pair_rate_hz: float
    memory_coherence_time_s: float
    max_range_km: float
    classical_rate_bps: float
    min_elevation_deg: float = 0.0
    heralding: Heralding = "direct"
    attenuation_db_per_km: float = 0.2
    divergence_rad: float = 0.0
    aperture_radius_m: float = 0.0
    beam_waist_m: float = 0.0
    zenith_transmissivity: float = 1.0
    atmosphere_db_per_km: float = 0.0
    receiver_efficiency: float = 1.0
    extra_loss_db: float = 0.0

    def transmissivity(
        self, distance_km: npt.ArrayLike, elevation_deg: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """Total transmissivity of links of this type (§2.6), elementwise over the arrays."""
        if self.medium == "fibre":
            eta = physics.fibre_transmissivity(distance_km, self.attenuation_db_per_km)
            return eta * physics.transmissivity_from_db(self.extra_loss_db)
        return physics.free_space_transmissivity(
            distance_km,
            self.divergence_rad,
            self.aperture_radius_m,
            beam_waist_m=self.beam_waist_m,
            elevation_deg=elevation_deg,
            zenith_transmissivity=self.zenith_transmissivity,
            atmosphere_db_per_km=self.atmosphere_db_per_km,
            receiver_efficiency=self.receiver_efficiency,
            extra_loss_db=self.extra_loss_db,
        )


@dataclass(frozen=True)
class NodeState:
    """Where a node is at one moment (the start of a round, or any emulated time).

    Air and ground nodes use a local tangent plane (``x_km`` east, ``y_km``
    north, origin near the base station). A LEO satellite on a circular orbit is
    given by its sub-satellite point as angles along and across its ground track,
    which stays accurate thousands of km away; ``x_km``/``y_km`` then hold that point
    projected onto the plane, for display only. A satellite from a TLE
    (``from_tle``) is given by ``east_km``/``north_km``/``up_km`` of the plane's
    origin, computed on the real (ellipsoidal) Earth; ``x_km``/``y_km`` repeat east
    and north, and ``altitude_km`` is its height above the mean Earth radius, for
    display only.
    """

    name: str
    layer: str
    x_km: float
    y_km: float
    altitude_km: float
    along_track_rad: float = 0.0
    cross_track_rad: float = 0.0
    track_azimuth_rad: float = 0.0
    east_km: float = 0.0
    north_km: float = 0.0
    up_km: float = 0.0
    from_tle: bool = False
