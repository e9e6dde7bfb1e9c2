"""SAGIN topology: the nodes and link types of a description file, and each round's paths.

A :class:`Topology` is read from a TOML description file
(:func:`relay.topology_file.load_topology`; ``relay/topologies/default.toml`` ships
with the project) and validated at that boundary. For each federated learning
round it places every node (:mod:`relay.mobility`: UAVs fly patrol circles, the HAP
keeps station within a drift radius, LEO satellites pass along their ground
tracks), builds the graph of links that exist at that moment and finds each UAV's
best path to the base station (:mod:`relay.routing`), then computes that path's
figures (:class:`relay.link.PathLink`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from relay import physics
from relay.link import Hop, PathLink
from relay.mobility import node_states
from relay.routing import RoundHops, round_hops, shortest_path_tree
from relay.topology_spec import LAYERS, MIN_PAIR_RATE_HZ, LinkType, NodeSpec, NodeState


@dataclass(frozen=True)
class Topology:
    """A SAGIN topology read from a description file.

    Use :func:`relay.topology_file.load_topology` to build one. Mobility and paths
    are pure functions of ``(seed, server_round)``: rounds can be queried in any
    order and the same seed always gives the same links.
    """

    name: str
    source: str
    nodes: tuple[NodeSpec, ...]
    link_types: tuple[LinkType, ...]
    round_duration_s: float = 60.0
    swap_success_probability: float = 1.0
    swap_gate_fidelity: float = 1.0
    swap_measurement_fidelity: float = 1.0
    min_end_to_end_fidelity: float = 0.5
    _link_type_by_layers: dict[frozenset[str], LinkType] = field(
        init=False, repr=False, compare=False
    )
    _uav_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _name_rank: npt.NDArray[np.intp] = field(init=False, repr=False, compare=False)
    _layer_members: dict[str, npt.NDArray[np.intp]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Derived once: links_for_round runs every round, uav_ids once per message.
        names = [node.name for node in self.nodes]
        name_rank = np.empty(len(names), dtype=np.intp)
        name_rank[np.argsort(np.array(names, dtype=object), kind="stable")] = np.arange(
            len(names)
        )
        derived = {
            "_link_type_by_layers": {link.layers: link for link in self.link_types},
            "_uav_ids": tuple(node.name for node in self.nodes if node.layer == "uav"),
            "_name_rank": name_rank,
            "_layer_members": {
                layer: np.array(
                    [index for index, node in enumerate(self.nodes) if node.layer == layer],
                    dtype=np.intp,
                )
                for layer in LAYERS
            },
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def uav_ids(self) -> tuple[str, ...]:
        """UAV names in file order; partition ``i`` of the data belongs to ``uav_ids[i]``."""
        return self._uav_ids

    @property
    def base_station(self) -> str:
        """Name of the base station (the aggregator's ground node)."""
        return next(node.name for node in self.nodes if node.base_station)

    def node_states(self, server_round: int, seed: int = 0) -> dict[str, NodeState]:
        """Place every node at the start of ``server_round``: :func:`relay.mobility.node_states`.

        Parameters
        ----------
        server_round : int
            Round number (>= 0); time is ``server_round * round_duration_s``.
        seed : int
            Mobility seed (>= 0).

        Returns
        -------
        dict
            Node name -> :class:`~relay.topology_spec.NodeState`.
        """
        _check_round_and_seed(server_round, seed)
        return node_states(self.nodes, server_round, seed, self.round_duration_s)

    def hops_for_round(self, server_round: int, seed: int = 0) -> list[Hop]:
        """Every link that exists in ``server_round``: in range and above the elevation mask.

        Hops are ordered by the file order of their first node, then of their second;
        ``first`` comes before ``second`` in the file. With many UAVs most pairs are
        hops, so this list is long; :meth:`links_for_round` does not build it.
        """
        hops = self._round_hops(server_round, seed)
        order = np.lexsort((hops.second, hops.first))
        return [hops.hop(int(index)) for index in order]

    def links_for_round(self, server_round: int, seed: int = 0) -> dict[str, PathLink | None]:
        """Each UAV's best path to the base station in ``server_round``.

        Parameters
        ----------
        server_round : int
            Round number (>= 0).
        seed : int
            Mobility seed (>= 0).

        Returns
        -------
        dict
            UAV name -> :class:`PathLink`, or ``None`` when the UAV has no path
            (out of range of every relay, the best path's end-to-end fidelity is
            below ``min_end_to_end_fidelity``, or it delivers pairs slower than
            :data:`~relay.topology_spec.MIN_PAIR_RATE_HZ`); such a UAV is not sampled.
        """
        hops = self._round_hops(server_round, seed)
        size = len(self.nodes)
        weights = np.full((size, size), np.inf)
        weights[hops.first, hops.second] = weights[hops.second, hops.first] = hops.routing_weight
        hop_index = np.full((size, size), -1, dtype=np.intp)
        hop_index[hops.first, hops.second] = hop_index[hops.second, hops.first] = np.arange(
            len(hops)
        )
        source = next(index for index, node in enumerate(self.nodes) if node.base_station)
        parent = shortest_path_tree(weights, source, self._name_rank)
        links: dict[str, PathLink | None] = {}
        for uav_index in self._layer_members["uav"]:
            uav_id = self.nodes[uav_index].name
            if parent[uav_index] < 0:
                links[uav_id] = None
                continue
            path_indices = [int(uav_index)]
            while path_indices[-1] != source:
                path_indices.append(int(parent[path_indices[-1]]))
            path = tuple(self.nodes[index].name for index in path_indices)
            path_hops = [
                hops.hop(int(hop_index[first, second]))
                for first, second in pairwise(path_indices)
            ]
            link = self._evaluate_path(uav_id, server_round, path, path_hops)
            usable = (
                link.end_to_end_fidelity >= self.min_end_to_end_fidelity
                and link.pair_rate_hz >= MIN_PAIR_RATE_HZ
            )
            links[uav_id] = link if usable else None
        return links

    def _round_hops(self, server_round: int, seed: int) -> RoundHops:
        states = list(self.node_states(server_round, seed).values())
        return round_hops(self.nodes, self.link_types, self._layer_members, states)

    def _evaluate_path(
        self, uav_id: str, server_round: int, path: tuple[str, ...], hops: list[Hop]
    ) -> PathLink:
        rates = np.array([hop.pair_rate_hz for hop in hops])
        swaps = len(hops) - 1
        all_hops_ready_s = physics.expected_max_waiting_time_s(rates)
        # Each hop's pair waits, on average, for the slower hops to finish.
        memory_wait_s = np.maximum(all_hops_ready_s - 1.0 / rates, 0.0)
        hop_fidelities = physics.memory_decoherence(
            [hop.link_type.raw_fidelity for hop in hops],
            memory_wait_s,
            [hop.link_type.memory_coherence_time_s for hop in hops],
        )
        end_to_end_fidelity = physics.swap_chain_fidelity(
            hop_fidelities,
            gate_fidelity=self.swap_gate_fidelity,
            measurement_fidelity=self.swap_measurement_fidelity,
        )
        swap_success = self.swap_success_probability**swaps
        # A failed swap restarts the whole chain: a geometric number of tries (never, in
        # floating point, for a chain so long that its success probability underflows).
        waiting_time_s = all_hops_ready_s / swap_success if swap_success > 0.0 else math.inf
        pair_rate_hz = 1.0 / waiting_time_s
        propagation_delay_s = float(sum(hop.delay_s for hop in hops))
        classical_rate_bps = min(hop.link_type.classical_rate_bps for hop in hops)
        return PathLink(
            uav_id=uav_id,
            server_round=server_round,
            path=path,
            hop_link_types=tuple(hop.link_type.name for hop in hops),
            hop_distances_km=tuple(hop.distance_km for hop in hops),
            hop_fidelities=tuple(float(value) for value in hop_fidelities),
            end_to_end_fidelity=float(end_to_end_fidelity),
            success_probability=float(
                np.prod([hop.success_probability for hop in hops]) * swap_success
            ),
            pair_rate_hz=float(pair_rate_hz),
            waiting_time_s=float(waiting_time_s),
            propagation_delay_s=propagation_delay_s,
            latency_s=float(
                physics.teleport_latency_s(1, pair_rate_hz, propagation_delay_s, classical_rate_bps)
            ),
            classical_rate_bps=float(classical_rate_bps),
        )


def _check_round_and_seed(server_round: int, seed: int) -> None:
    for name, value in (("server_round", server_round), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
