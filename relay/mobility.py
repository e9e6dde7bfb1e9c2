"""Where every node of a topology is in a round: UAV patrols, HAP station keeping, LEO passes."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from relay import physics
from relay.topology_spec import NodeSpec, NodeState

POSITION_COLUMNS = (
    "x_km", "y_km", "altitude_km", "along_track_rad", "cross_track_rad", "track_azimuth_rad",
    "east_km", "north_km", "up_km",
)
"""The :class:`~relay.topology_spec.NodeState` fields :func:`node_columns` gives as arrays."""


def node_states(
    nodes: tuple[NodeSpec, ...], server_round: int, seed: int, round_duration_s: float,
    satellite_enu_km: npt.NDArray[np.float64] | None = None,
) -> dict[str, NodeState]:
    """Place every node at the start of ``server_round``.

    - UAVs fly a circular patrol (fixed-wing relay model, §5.4) through their
      file position, which is where they are in round 0; the circle's
      orientation and direction come from the seed.
    - HAPs keep station: a fresh offset, uniform in a disc of radius
      ``drift_km``, each round.
    - LEO satellites move along a circular orbit (angular speed from §5.1),
      closest to the origin at ``closest_approach_s``; Earth rotation is
      ignored over a pass. Satellites from TLEs are where ``satellite_enu_km`` says
      (:class:`relay.tle.TleTracks` propagates them).

    Parameters
    ----------
    nodes : tuple of NodeSpec
        The topology's nodes, in file order; a node's position in it seeds its motion.
    server_round : int
        Round number (>= 0, not checked here); time is ``server_round * round_duration_s``.
    seed : int
        Mobility seed (>= 0, not checked here).
    round_duration_s : float
        Simulated time between two rounds, s.
    satellite_enu_km : numpy.ndarray, optional
        East/north/up km of the satellites placed from TLEs, one row each in node
        order; needed when ``nodes`` has such satellites.

    Returns
    -------
    dict
        Node name -> :class:`~relay.topology_spec.NodeState`, in file order.
    """
    columns = node_columns_at(
        nodes, server_round * round_duration_s, server_round, seed, satellite_enu_km
    )
    values = {name: columns[name].tolist() for name in POSITION_COLUMNS}
    return {
        node.name: NodeState(node.name, node.layer, from_tle=node.from_tle,
                             **{name: values[name][index] for name in POSITION_COLUMNS})
        for index, node in enumerate(nodes)
    }


def node_columns_at(
    nodes: tuple[NodeSpec, ...], time_s: float, station_round: int, seed: int,
    satellite_enu_km: npt.NDArray[np.float64] | None = None,
) -> dict[str, npt.NDArray[np.float64]]:
    """Every node at emulated time ``time_s``, as arrays indexed like ``nodes`` (one per
    NodeState field in :data:`POSITION_COLUMNS`): the UAVs, thousands in a swarm, over
    arrays at once.

    UAVs and satellites move continuously with ``time_s``; a HAP's station-keeping
    offset is drawn afresh for each ``station_round`` (the round ``time_s`` falls in),
    so it stays put within a round. :func:`node_states` at round ``r`` is this
    function at ``time_s = r * round_duration_s`` and ``station_round = r``.
    """
    columns = {name: np.zeros(len(nodes)) for name in POSITION_COLUMNS}
    columns["x_km"][:] = [node.x_km for node in nodes]
    columns["y_km"][:] = [node.y_km for node in nodes]
    columns["altitude_km"][:] = [node.altitude_km for node in nodes]
    uavs = np.array([index for index, node in enumerate(nodes) if node.layer == "uav"],
                    dtype=np.intp)
    if len(uavs):
        x_km, y_km = _uav_positions(nodes, uavs, time_s, seed)
        columns["x_km"][uavs], columns["y_km"][uavs] = x_km, y_km
    for index, node in enumerate(nodes):
        if node.layer == "hap":
            state = _hap_state(node, np.random.default_rng([seed, index, station_round]))
        elif node.layer == "leo" and not node.from_tle:
            state = _leo_state(node, time_s)
        else:
            continue
        for name in POSITION_COLUMNS:
            columns[name][index] = getattr(state, name)
    tle = np.array([index for index, node in enumerate(nodes) if node.from_tle], dtype=np.intp)
    if len(tle):
        if satellite_enu_km is None or np.shape(satellite_enu_km) != (len(tle), 3):
            got = None if satellite_enu_km is None else np.shape(satellite_enu_km)
            raise ValueError(
                f"{len(tle)} satellites come from TLEs: satellite_enu_km must have shape "
                f"({len(tle)}, 3), got {got}"
            )
        enu = np.asarray(satellite_enu_km, dtype=np.float64)
        columns["east_km"][tle], columns["north_km"][tle], columns["up_km"][tle] = enu.T
        columns["x_km"][tle], columns["y_km"][tle] = enu[:, 0], enu[:, 1]
        # Height above the mean sphere touching the origin, for display (routing uses ENU).
        columns["altitude_km"][tle] = np.sqrt(
            enu[:, 0] ** 2 + enu[:, 1] ** 2 + (enu[:, 2] + physics.EARTH_RADIUS_KM) ** 2
        ) - physics.EARTH_RADIUS_KM
    return columns


def _uav_positions(
    nodes: tuple[NodeSpec, ...], uavs: npt.NDArray[np.intp], time_s: float, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Where the UAVs at ``uavs`` are at ``time_s``, in the order of ``uavs``."""
    x_km = np.array([nodes[index].x_km for index in uavs])
    y_km = np.array([nodes[index].y_km for index in uavs])
    radius = np.array([nodes[index].patrol_radius_km for index in uavs])
    speed = np.array([nodes[index].speed_km_s for index in uavs])
    orientation, turn = _patrol_draws(seed, len(nodes))
    orientation, turn = orientation[uavs], turn[uavs]
    moving = (radius > 0.0) & (speed > 0.0)
    radius, orientation, turn, speed = (
        radius[moving], orientation[moving], turn[moving], speed[moving]
    )
    # The same operations, in the same order, as one UAV at a time in Python floats.
    centre_x = x_km[moving] + radius * np.cos(orientation)
    centre_y = y_km[moving] + radius * np.sin(orientation)
    angle = orientation + math.pi + turn * speed * time_s / radius
    x_km[moving] = centre_x + radius * np.cos(angle)
    y_km[moving] = centre_y + radius * np.sin(angle)
    return x_km, y_km


@lru_cache(maxsize=8)
def _patrol_draws(seed: int, count: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each node position's patrol orientation and turn direction (+1 or -1) for a seed.

    They depend on the seed and the node's position in the file only, so they are drawn
    once per seed, not once per round (a swarm's 10,000 generators take half a second).
    """
    orientation = np.empty(count)
    turn = np.empty(count)
    for index in range(count):
        run_rng = np.random.default_rng([seed, index])
        orientation[index] = run_rng.uniform(0.0, 2.0 * math.pi)
        turn[index] = 1.0 if run_rng.random() < 0.5 else -1.0
    orientation.flags.writeable = turn.flags.writeable = False
    return orientation, turn


def _hap_state(node: NodeSpec, round_rng: np.random.Generator) -> NodeState:
    radius = node.drift_km * math.sqrt(round_rng.random())
    bearing = round_rng.uniform(0.0, 2.0 * math.pi)
    return NodeState(
        node.name,
        node.layer,
        node.x_km + radius * math.cos(bearing),
        node.y_km + radius * math.sin(bearing),
        node.altitude_km,
    )


def _leo_state(node: NodeSpec, time_s: float) -> NodeState:
    angular_speed = float(physics.orbital_angular_speed(node.altitude_km))
    along = (angular_speed * (time_s - node.closest_approach_s) + math.pi) % (2 * math.pi)
    along -= math.pi
    cross = node.track_offset_km / physics.EARTH_RADIUS_KM
    azimuth = math.radians(node.track_azimuth_deg)
    along_km = along * physics.EARTH_RADIUS_KM
    return NodeState(
        node.name,
        node.layer,
        along_km * math.sin(azimuth) + node.track_offset_km * math.cos(azimuth),
        along_km * math.cos(azimuth) - node.track_offset_km * math.sin(azimuth),
        node.altitude_km,
        along_track_rad=along,
        cross_track_rad=cross,
        track_azimuth_rad=azimuth,
    )
