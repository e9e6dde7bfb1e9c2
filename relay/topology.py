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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from relay import physics
from relay.link import Hop, PathLink
from relay.mobility import node_columns_at, node_states
from relay.path_tree import PAIR_BUDGET, PathTree
from relay.routing import Positions, RoundHops, hop_physics, round_hops
from relay.topology_spec import LAYERS, MIN_PAIR_RATE_HZ, LinkType, NodeSpec, NodeState

if TYPE_CHECKING:
    from relay.tle import TleTracks


@dataclass(frozen=True)
class Topology:
    """A SAGIN topology read from a description file.

    Use :func:`relay.topology_file.load_topology` to build one. Mobility and paths
    are pure functions of ``(seed, server_round)``, or of ``(seed, time_s)`` for any
    emulated time (:meth:`links_at`): rounds can be queried in any order and the same
    seed always gives the same links.

    ``latitude_deg``, ``longitude_deg`` (geodetic, of the local plane's origin) and
    ``epoch_utc`` (ISO time of emulated time 0) tie the plane to the Earth; the file
    reader requires them when a satellite comes from a TLE (:mod:`relay.tle`).
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
    uav_train_s: float = 30.0
    latitude_deg: float | None = None
    longitude_deg: float | None = None
    epoch_utc: str | None = None
    _link_type_by_layers: dict[frozenset[str], LinkType] = field(
        init=False, repr=False, compare=False
    )
    _uav_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _name_rank: npt.NDArray[np.intp] = field(init=False, repr=False, compare=False)
    _layer_members: dict[str, npt.NDArray[np.intp]] = field(
        init=False, repr=False, compare=False
    )
    _source: int = field(init=False, repr=False, compare=False)
    _layer_of_node: npt.NDArray[np.str_] = field(init=False, repr=False, compare=False)
    _uav_node_index: dict[str, int] = field(init=False, repr=False, compare=False)
    _from_tle: npt.NDArray[np.bool_] = field(init=False, repr=False, compare=False)
    _tracks: list[TleTracks] = field(init=False, repr=False, compare=False)
    _node_index: dict[str, int] = field(init=False, repr=False, compare=False)

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
            "_source": next(index for index, node in enumerate(self.nodes) if node.base_station),
            "_layer_of_node": np.array([node.layer for node in self.nodes]),
            "_from_tle": np.array([node.from_tle for node in self.nodes], dtype=bool),
            "_tracks": [],  # the TleTracks, built when a TLE satellite is first placed
            "_uav_node_index": {
                node.name: index for index, node in enumerate(self.nodes) if node.layer == "uav"
            },
            "_node_index": {node.name: index for index, node in enumerate(self.nodes)},
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

    def train_seconds(self, uav_id: str) -> float:
        """Mission time ``uav_id``'s local training takes: its own ``train_s``, else the
        topology's ``uav_train_s`` (the emulated clock of the asynchronous mode)."""
        own = self.nodes[self._uav_node_index[uav_id]].train_s
        return own if own > 0 else self.uav_train_s

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
        return node_states(self.nodes, server_round, seed, self.round_duration_s,
                           self._satellite_enu(server_round * self.round_duration_s))

    def hops_for_round(self, server_round: int, seed: int = 0) -> list[Hop]:
        """Every link that exists in ``server_round``: in range and above the elevation mask.

        Hops are ordered by the file order of their first node, then of their second;
        ``first`` comes before ``second`` in the file. With many UAVs most pairs are
        hops, so this list is long; :meth:`links_for_round` does not build it.
        """
        hops = self._round_hops(server_round, seed)
        order = np.lexsort((hops.second, hops.first))
        return [hops.hop(int(index)) for index in order]

    def links_for_round(self, server_round: int, seed: int = 0) -> RoundLinks:
        """Each UAV's best path to the base station in ``server_round``.

        Parameters
        ----------
        server_round : int
            Round number (>= 0).
        seed : int
            Mobility seed (>= 0).

        Returns
        -------
        RoundLinks
            A mapping UAV name -> :class:`PathLink`, or ``None`` when the UAV has no
            path (out of range of every relay, the best path's end-to-end fidelity is
            below ``min_end_to_end_fidelity``, or it delivers pairs slower than
            :data:`~relay.topology_spec.MIN_PAIR_RATE_HZ`); such a UAV is not sampled.
            The tree of best paths is computed here; a UAV's figures when it is first
            looked up (a round of a large swarm looks up only the UAVs it draws).
        """
        positions = self.positions(server_round, seed)
        return RoundLinks(self, server_round, positions, self.path_tree(positions))

    def links_at(self, time_s: float, seed: int = 0) -> RoundLinks:
        """Each UAV's best path to the base station at emulated time ``time_s``.

        The same rules as :meth:`links_for_round`, at any moment: UAVs and satellites
        where they are at ``time_s``, HAPs where they keep station in the round
        ``time_s`` falls in (:meth:`station_round`). ``links_at(r * round_duration_s)``
        gives exactly ``links_for_round(r)``.

        Parameters
        ----------
        time_s : float
            Emulated time, s (finite, >= 0).
        seed : int
            Mobility seed (>= 0).

        Returns
        -------
        RoundLinks
            As :meth:`links_for_round`; each :class:`PathLink`'s ``server_round`` is
            :meth:`station_round` of ``time_s``.
        """
        positions = self.positions_at(time_s, seed)
        return RoundLinks(self, self.station_round(time_s), positions,
                          self.path_tree(positions))

    def station_round(self, time_s: float) -> int:
        """The round emulated time ``time_s`` falls in: ``floor(time_s / round_duration_s)``."""
        _check_time(time_s)
        return int(time_s // self.round_duration_s)

    def positions(self, server_round: int, seed: int = 0) -> Positions:
        """:meth:`node_states` as arrays indexed like :attr:`nodes` (what routing reads)."""
        _check_round_and_seed(server_round, seed)
        return self._positions(server_round * self.round_duration_s, server_round, seed)

    def positions_at(
        self, time_s: float, seed: int = 0,
        satellite_enu_km: npt.NDArray[np.float64] | None = None,
    ) -> Positions:
        """Every node at emulated time ``time_s`` (see :meth:`links_at`), as arrays.

        ``satellite_enu_km`` (the TLE satellites' rows of :meth:`satellite_enu_km` at
        ``time_s``) saves propagating them again when a caller has them already.
        """
        _check_time(time_s)
        _check_round_and_seed(0, seed)
        return self._positions(time_s, self.station_round(time_s), seed, satellite_enu_km)

    def satellite_enu_km(self, times_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """East/north/up km of the satellites placed from TLEs, at emulated times.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(times_s), satellites, 3)``, satellites in node order
            (``tle_satellites``); no satellites, shape ``(len(times_s), 0, 3)``.
        """
        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        if not np.any(self._from_tle):
            return np.zeros((len(times), 0, 3))
        if not self._tracks:
            from relay.tle import TleTracks  # sgp4 and skyfield: only for TLE satellites

            if self.latitude_deg is None or self.longitude_deg is None or not self.epoch_utc:
                raise ValueError(
                    f"topology {self.name!r} has TLE satellites but no latitude_deg, "
                    "longitude_deg and epoch_utc"
                )
            self._tracks.append(TleTracks(
                [node.tle_lines for node in self.nodes if node.tle_lines is not None],
                self.latitude_deg, self.longitude_deg, self.epoch_utc,
            ))
        return self._tracks[0].enu_km(times)

    @property
    def tle_satellites(self) -> tuple[str, ...]:
        """Names of the satellites placed from TLEs, in node order."""
        return tuple(node.name for node in self.nodes if node.from_tle)

    def _satellite_enu(self, time_s: float) -> npt.NDArray[np.float64] | None:
        return self.satellite_enu_km(time_s)[0] if np.any(self._from_tle) else None

    def _positions(
        self, time_s: float, station_round: int, seed: int,
        satellite_enu_km: npt.NDArray[np.float64] | None = None,
    ) -> Positions:
        if satellite_enu_km is None:
            satellite_enu_km = self._satellite_enu(time_s)
        columns = node_columns_at(self.nodes, time_s, station_round, seed, satellite_enu_km)
        return Positions(**columns, is_leo=self._layer_of_node == "leo", from_tle=self._from_tle)

    def path_tree(self, positions: Positions, pair_budget: int | None = PAIR_BUDGET) -> PathTree:
        """The tree of best paths to the base station with the nodes at ``positions``
        (:class:`relay.path_tree.PathTree`; ``pair_budget=None`` completes it at once)."""
        return PathTree(self.link_types, self._layer_members, positions, self._source,
                        self._name_rank, pair_budget)

    def _link(
        self, uav_index: int, server_round: int, positions: Positions, tree: PathTree
    ) -> PathLink | None:
        """The link of the UAV at ``uav_index`` along ``tree``, if it has a usable one."""
        if tree.parent_of(uav_index) < 0:
            return None
        path_indices = [uav_index]
        while path_indices[-1] != self._source:
            path_indices.append(tree.parent_of(path_indices[-1]))
        path = tuple(self.nodes[index].name for index in path_indices)
        hops = [self._hop(first, second, positions) for first, second in pairwise(path_indices)]
        link = self._evaluate_path(self.nodes[uav_index].name, server_round, path, hops)
        usable = (
            link.end_to_end_fidelity >= self.min_end_to_end_fidelity
            and link.pair_rate_hz >= MIN_PAIR_RATE_HZ
        )
        return link if usable else None

    def _chain_link(
        self, owner: str, server_round: int, path: tuple[str, ...], positions: Positions
    ) -> PathLink:
        """The figures of the chain of hops ``path`` (node names), as for a UAV's path.

        ``owner`` becomes the link's ``uav_id`` (the UAV whose channel material keys it).
        No usability check: a segment of a usable path is itself a shorter chain.
        """
        indices = [self._node_index[name] for name in path]
        hops = [self._hop(first, second, positions) for first, second in pairwise(indices)]
        return self._evaluate_path(owner, server_round, path, hops)

    def _hop(self, one: int, other: int, positions: Positions) -> Hop:
        """The hop between two nodes of a path, as :meth:`hops_for_round` gives it."""
        first, second = min(one, other), max(one, other)
        link_type = self._link_type_by_layers[
            frozenset((self.nodes[first].layer, self.nodes[second].layer))
        ]
        columns = hop_physics(
            link_type, positions, np.array([first], dtype=np.intp),
            np.array([second], dtype=np.intp),
        )
        return Hop(
            first=self.nodes[first].name,
            second=self.nodes[second].name,
            link_type=link_type,
            **{key: float(value[0]) for key, value in columns.items()
               if key not in ("first", "second")},
        )

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


def _check_time(time_s: float) -> None:
    if (isinstance(time_s, bool) or not isinstance(time_s, (int, float, np.integer, np.floating))
            or not math.isfinite(time_s) or time_s < 0):
        raise ValueError(f"time_s must be a finite number >= 0 (emulated seconds), got {time_s!r}")


def _check_round_and_seed(server_round: int, seed: int) -> None:
    for name, value in (("server_round", server_round), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")


class RoundLinks(Mapping[str, PathLink | None]):
    """The links of one round, by UAV name in file order, each computed when first read.

    The tree of best paths is known; a UAV's :class:`PathLink` (its hops' figures, the
    swapping along the chain) costs about a millisecond, which a round of a swarm of
    10,000 UAVs that trains ten of them does not spend on the other 9,990.
    """

    def __init__(
        self, topology: Topology, server_round: int, positions: Positions, tree: PathTree
    ) -> None:
        self._topology = topology
        self._server_round = server_round
        self._positions = positions
        self._tree = tree
        self._uav_index = topology._uav_node_index
        self._links: dict[str, PathLink | None] = {}

    def __getitem__(self, uav_id: str) -> PathLink | None:
        if uav_id not in self._links:
            index = self._uav_index[uav_id]  # KeyError for a name that is not a UAV
            self._links[uav_id] = self._topology._link(
                index, self._server_round, self._positions, self._tree
            )
        return self._links[uav_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._uav_index)

    def segment(self, uav_id: str, start: str, end: str, owner: str | None = None) -> PathLink:
        """The part of ``uav_id``'s path from node ``start`` to node ``end``, as a link.

        Its figures are those the topology gives a path made of exactly those hops in
        this round (same hop physics, memory waiting, swapping along the shorter chain),
        so a segment from the UAV to the base station equals the UAV's own link.
        Used by relays that aggregate (:mod:`strategies.hierarchy`): the lower segment
        UAV -> relay and the upper segment relay -> base station.

        Parameters
        ----------
        uav_id : str
            A UAV with a path this round.
        start, end : str
            Nodes of that path, ``start`` nearer the UAV than ``end``.
        owner : str, optional
            ``uav_id`` of the returned link (default ``uav_id``): the UAV whose channel
            material keys a segment that carries an aggregate.

        Raises
        ------
        ValueError
            The UAV has no path this round, or ``start``/``end`` are not in order on it.
        """
        link = self[uav_id]
        if link is None:
            raise ValueError(f"{uav_id} has no path in round {self._server_round}")
        path = link.path
        if start not in path or end not in path or path.index(start) >= path.index(end):
            raise ValueError(
                f"{start!r} -> {end!r} is not a segment of {uav_id}'s path {' > '.join(path)}"
            )
        chain = path[path.index(start) : path.index(end) + 1]
        return self._topology._chain_link(
            owner or uav_id, self._server_round, chain, self._positions
        )

    def __len__(self) -> int:
        return len(self._uav_index)
