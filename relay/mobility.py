"""Where every node of a topology is in a round: UAV patrols, HAP station keeping, LEO passes."""

from __future__ import annotations

import math

import numpy as np

from relay import physics
from relay.topology_spec import NodeSpec, NodeState


def node_states(
    nodes: tuple[NodeSpec, ...], server_round: int, seed: int, round_duration_s: float
) -> dict[str, NodeState]:
    """Place every node at the start of ``server_round``.

    - UAVs fly a circular patrol (fixed-wing relay model, §5.4) through their
      file position, which is where they are in round 0; the circle's
      orientation and direction come from the seed.
    - HAPs keep station: a fresh offset, uniform in a disc of radius
      ``drift_km``, each round.
    - LEO satellites move along a circular orbit (angular speed from §5.1),
      closest to the origin at ``closest_approach_s``; Earth rotation is
      ignored over a pass.

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

    Returns
    -------
    dict
        Node name -> :class:`~relay.topology_spec.NodeState`, in file order.
    """
    time_s = server_round * round_duration_s
    states: dict[str, NodeState] = {}
    for index, node in enumerate(nodes):
        if node.layer == "uav":
            states[node.name] = _uav_state(node, time_s, np.random.default_rng([seed, index]))
        elif node.layer == "hap":
            round_rng = np.random.default_rng([seed, index, server_round])
            states[node.name] = _hap_state(node, round_rng)
        elif node.layer == "leo":
            states[node.name] = _leo_state(node, time_s)
        else:
            states[node.name] = NodeState(
                node.name, node.layer, node.x_km, node.y_km, node.altitude_km
            )
    return states


def _uav_state(node: NodeSpec, time_s: float, run_rng: np.random.Generator) -> NodeState:
    orientation = run_rng.uniform(0.0, 2.0 * math.pi)
    turn = 1.0 if run_rng.random() < 0.5 else -1.0
    x_km, y_km = node.x_km, node.y_km
    if node.patrol_radius_km > 0.0 and node.speed_km_s > 0.0:
        radius = node.patrol_radius_km
        centre_x = node.x_km + radius * math.cos(orientation)
        centre_y = node.y_km + radius * math.sin(orientation)
        angle = orientation + math.pi + turn * node.speed_km_s * time_s / radius
        x_km = centre_x + radius * math.cos(angle)
        y_km = centre_y + radius * math.sin(angle)
    return NodeState(node.name, node.layer, x_km, y_km, node.altitude_km)


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
