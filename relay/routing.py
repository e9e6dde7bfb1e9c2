"""The links of one round and the tree of best paths to the base station.

For each round every pair of nodes whose layers a link type joins is a candidate
hop; it is a hop when it is in range, above the elevation mask, and delivers pairs
worth routing over (:func:`round_hops`, computed one link type at a time over
arrays). Dijkstra from the base station then gives every UAV's path in one pass
(:func:`relay.path_tree.best_path_tree`, which computes only the hops it needs).

Routing choice
--------------
A path's end-to-end Werner parameter is the product of its hops' parameters
(§2.2 of ``shared/research/relay_physics.md``), so maximising end-to-end
fidelity is a shortest-path problem on the additive weight ``-log p_i``. Each
hop's ``p_i`` for routing is its raw pair fidelity decohered for one mean
generation time ``1/lambda_i`` of that hop: a path-independent proxy that makes
slow (long, lossy) hops cost fidelity. Ties go to fewer hops, then to node names.
The figures reported for the chosen path are then computed exactly for that path
(:meth:`relay.topology.Topology.links_for_round`): waiting time from the slowest
hops together, memory decoherence of each hop's pair while it waits for the
others, and swapping along the whole chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from relay import physics
from relay.link import Hop
from relay.topology_spec import MIN_PAIR_RATE_HZ, LinkType, NodeSpec, NodeState


@dataclass(frozen=True)
class RoundHops:
    """Every hop of one round as parallel arrays, one entry per hop.

    ``first`` and ``second`` index the topology's nodes, with ``first < second``; the
    other arrays hold the :class:`Hop` fields of the same name. Only the hops a caller
    needs become :class:`Hop` objects (:meth:`hop`).
    """

    names: tuple[str, ...]
    link_types: tuple[LinkType, ...]
    first: npt.NDArray[np.intp]
    second: npt.NDArray[np.intp]
    link_type_index: npt.NDArray[np.intp]
    distance_km: npt.NDArray[np.float64]
    elevation_deg: npt.NDArray[np.float64]
    transmissivity: npt.NDArray[np.float64]
    success_probability: npt.NDArray[np.float64]
    pair_rate_hz: npt.NDArray[np.float64]
    delay_s: npt.NDArray[np.float64]
    routing_weight: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.first)

    def hop(self, index: int) -> Hop:
        """Hop number ``index`` as a :class:`Hop`."""
        return Hop(
            first=self.names[self.first[index]],
            second=self.names[self.second[index]],
            link_type=self.link_types[self.link_type_index[index]],
            distance_km=float(self.distance_km[index]),
            elevation_deg=float(self.elevation_deg[index]),
            transmissivity=float(self.transmissivity[index]),
            success_probability=float(self.success_probability[index]),
            pair_rate_hz=float(self.pair_rate_hz[index]),
            delay_s=float(self.delay_s[index]),
            routing_weight=float(self.routing_weight[index]),
        )


def round_hops(
    nodes: tuple[NodeSpec, ...],
    link_types: tuple[LinkType, ...],
    layer_members: Mapping[str, npt.NDArray[np.intp]],
    states: list[NodeState],
) -> RoundHops:
    """Every hop of one round, computed one link type at a time over arrays.

    Parameters
    ----------
    nodes : tuple of NodeSpec
        The topology's nodes; hop ends index this tuple.
    link_types : tuple of LinkType
        The topology's link types.
    layer_members : Mapping
        Layer name -> indices into ``nodes`` of that layer's nodes, in file order.
    states : list of NodeState
        Where each node is this round, in the order of ``nodes``.

    Returns
    -------
    RoundHops
    """
    positions = Positions.of(states)
    parts = []
    for type_index, link_type in enumerate(link_types):
        layers = sorted(link_type.layers)
        first, second = _candidate_pairs(
            layer_members[layers[0]],
            layer_members[layers[-1]],
            same_layer=len(layers) == 1,
        )
        part = hop_physics(link_type, positions, first, second)
        part["link_type_index"] = np.full(len(part["first"]), type_index, dtype=np.intp)
        parts.append(part)
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return RoundHops(names=tuple(node.name for node in nodes), link_types=link_types, **columns)


@dataclass(frozen=True)
class Positions:
    """Node positions of one round as arrays indexed like the topology's nodes."""

    x_km: npt.NDArray[np.float64]
    y_km: npt.NDArray[np.float64]
    altitude_km: npt.NDArray[np.float64]
    along_track_rad: npt.NDArray[np.float64]
    cross_track_rad: npt.NDArray[np.float64]
    track_azimuth_rad: npt.NDArray[np.float64]
    east_km: npt.NDArray[np.float64]
    north_km: npt.NDArray[np.float64]
    up_km: npt.NDArray[np.float64]
    is_leo: npt.NDArray[np.bool_]
    from_tle: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, states: list[NodeState]) -> Positions:
        def column(name: str) -> npt.NDArray[np.float64]:
            return np.array([getattr(state, name) for state in states], dtype=np.float64)

        return cls(
            x_km=column("x_km"),
            y_km=column("y_km"),
            altitude_km=column("altitude_km"),
            along_track_rad=column("along_track_rad"),
            cross_track_rad=column("cross_track_rad"),
            track_azimuth_rad=column("track_azimuth_rad"),
            east_km=column("east_km"),
            north_km=column("north_km"),
            up_km=column("up_km"),
            is_leo=np.array([state.layer == "leo" for state in states], dtype=bool),
            from_tle=np.array([state.from_tle for state in states], dtype=bool),
        )


def _candidate_pairs(
    first_members: npt.NDArray[np.intp],
    second_members: npt.NDArray[np.intp],
    same_layer: bool,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Every pair of nodes from two layers' members, once, as ``(first, second)``, first < second.

    With ``same_layer`` both member arrays are the same layer's, and a node is never
    paired with itself.
    """
    if same_layer:
        upper, lower = np.triu_indices(len(first_members), k=1)
        return first_members[upper], first_members[lower]
    first = np.repeat(first_members, len(second_members))
    second = np.tile(second_members, len(first_members))
    return np.minimum(first, second), np.maximum(first, second)


def _distance_and_elevation(
    positions: Positions,
    first: npt.NDArray[np.intp],
    second: npt.NDArray[np.intp],
    max_range_km: float,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distance (km) and elevation (deg) of the higher node seen from the lower one.

    Returns which pairs are within ``max_range_km``, and the distance and elevation of
    those pairs only (the elevation of the others is never needed).
    """
    first_is_leo = positions.is_leo[first]
    if np.any(first_is_leo | positions.is_leo[second]):
        # Link types never join two satellites: one end is the satellite, the other
        # the observer.
        satellite = np.where(first_is_leo, first, second)
        observer = np.where(first_is_leo, second, first)
        tle = positions.from_tle[satellite]
        if np.any(tle):
            distance, elevation = np.empty(len(satellite)), np.empty(len(satellite))
            circular = ~tle
            distance[circular], elevation[circular] = _circular_orbit_geometry(
                positions, satellite[circular], observer[circular]
            )
            enu = np.stack([positions.east_km[satellite[tle]], positions.north_km[satellite[tle]],
                            positions.up_km[satellite[tle]]], axis=-1)
            distance[tle], elevation[tle] = physics.enu_range_and_elevation(
                enu, positions.x_km[observer[tle]], positions.y_km[observer[tle]],
                positions.altitude_km[observer[tle]],
            )
        else:
            distance, elevation = _circular_orbit_geometry(positions, satellite, observer)
        in_range = ~(distance > max_range_km)
        return in_range, distance[in_range], elevation[in_range]
    # Tens of km: a flat local plane is accurate enough.
    height = np.abs(positions.altitude_km[first] - positions.altitude_km[second])
    distance = np.sqrt(
        (positions.x_km[first] - positions.x_km[second]) ** 2
        + (positions.y_km[first] - positions.y_km[second]) ** 2
        + height**2
    )
    in_range = ~(distance > max_range_km)
    distance, height = distance[in_range], height[in_range]
    with np.errstate(divide="ignore", invalid="ignore"):
        elevation = np.where(distance > 0.0, np.degrees(np.arcsin(height / distance)), 90.0)
    return in_range, distance, elevation


def _circular_orbit_geometry(
    positions: Positions, satellite: npt.NDArray[np.intp], observer: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distance and elevation of circular-orbit satellites (given along and across their
    ground tracks) seen from observers of the local plane."""
    azimuth = positions.track_azimuth_rad[satellite]
    x_km, y_km = positions.x_km[observer], positions.y_km[observer]
    along_km = x_km * np.sin(azimuth) + y_km * np.cos(azimuth)
    cross_km = x_km * np.cos(azimuth) - y_km * np.sin(azimuth)
    along = positions.along_track_rad[satellite] - along_km / physics.EARTH_RADIUS_KM
    cross = positions.cross_track_rad[satellite] - cross_km / physics.EARTH_RADIUS_KM
    # Right spherical triangle: the ground track is a great circle.
    central_angle = np.arccos(np.clip(np.cos(along) * np.cos(cross), -1.0, 1.0))
    return physics.satellite_range_and_elevation(
        central_angle, positions.altitude_km[observer], positions.altitude_km[satellite]
    )


def hop_physics(
    link_type: LinkType,
    positions: Positions,
    first: npt.NDArray[np.intp],
    second: npt.NDArray[np.intp],
) -> dict[str, npt.NDArray[Any]]:
    """The hops among candidate pairs of one link type, as :class:`RoundHops` columns.

    A pair is a hop when it is in range, above the elevation mask, delivers pairs at
    :data:`~relay.topology_spec.MIN_PAIR_RATE_HZ` or faster, and its routing Werner
    parameter is positive.
    """
    in_range, distance_km, elevation_deg = _distance_and_elevation(
        positions, first, second, link_type.max_range_km
    )
    first, second = first[in_range], second[in_range]
    keep = ~(elevation_deg < link_type.min_elevation_deg)
    first, second = first[keep], second[keep]
    distance_km, elevation_deg = distance_km[keep], elevation_deg[keep]
    transmissivity = link_type.transmissivity(distance_km, elevation_deg)
    success_probability = physics.heralding_success_probability(
        transmissivity, link_type.heralding
    )
    pair_rate_hz = link_type.pair_rate_hz * success_probability
    keep = pair_rate_hz >= MIN_PAIR_RATE_HZ
    columns = {
        "first": first,
        "second": second,
        "distance_km": distance_km,
        "elevation_deg": elevation_deg,
        "transmissivity": transmissivity,
        "success_probability": success_probability,
        "pair_rate_hz": pair_rate_hz,
    }
    columns = {key: value[keep] for key, value in columns.items()}
    routing_fidelity = physics.memory_decoherence(
        link_type.raw_fidelity, 1.0 / columns["pair_rate_hz"], link_type.memory_coherence_time_s
    )
    routing_p = physics.werner_parameter(routing_fidelity)
    keep = ~(routing_p <= 0.0)
    columns = {key: value[keep] for key, value in columns.items()}
    columns["delay_s"] = physics.propagation_delay_s(columns["distance_km"], link_type.medium)
    columns["routing_weight"] = -np.log(routing_p[keep])
    return columns
