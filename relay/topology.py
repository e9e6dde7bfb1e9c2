"""SAGIN topology: nodes by layer, link types, per-round mobility and UAV paths.

A topology is read from a TOML description file (``relay/topologies/default.toml``
ships with the project) and validated at that boundary. For each federated
learning round it places every node (UAVs fly patrol circles, the HAP keeps
station within a drift radius, LEO satellites pass along their ground tracks),
builds the graph of links that exist at that moment (in range, above the
elevation mask), and finds each UAV's best path to the base station.

Routing choice
--------------
A path's end-to-end Werner parameter is the product of its hops' parameters
(§2.2 of ``shared/research/relay_physics.md``), so maximising end-to-end
fidelity is a shortest-path problem on the additive weight ``-log p_i``. Each
hop's ``p_i`` for routing is its raw pair fidelity decohered for one mean
generation time ``1/lambda_i`` of that hop: a path-independent proxy that makes
slow (long, lossy) hops cost fidelity. Dijkstra from the base station gives
every UAV's path in one pass; ties go to fewer hops, then to node names. The
figures reported for the chosen path are then computed exactly for that path:
waiting time from the slowest hops together, memory decoherence of each hop's
pair while it waits for the others, and swapping along the whole chain.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from relay import physics

LAYERS = ("ground", "uav", "hap", "leo")
"""Node layers, ground up."""

MEDIA = ("free-space", "fibre")
"""Propagation media a link type can use."""

HERALDING_SCHEMES = ("direct", "midpoint")
"""Entanglement-generation schemes (see :func:`relay.physics.heralding_success_probability`)."""

LINK_TYPE_NAMES = tuple(
    f"{first}-{second}"
    for index, first in enumerate(LAYERS)
    for second in LAYERS[index:]
    if not (first == "leo" and second == "leo")
)
"""Allowed link-type names, one per pair of layers (either order is accepted in a file).
Inter-satellite links are not modelled."""

DEFAULT_TOPOLOGY_PATH = Path(__file__).with_name("topologies") / "default.toml"
"""The shipped default: 10 UAVs, 1 HAP, 2 LEO satellites and 1 base station."""


# --------------------------------------------------------------------------------------
# Public results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathLink:
    """One UAV's relay path to the base station in one round, with its figures.

    Attributes
    ----------
    uav_id : str
        Name of the UAV (``uav-0`` ...).
    server_round : int
        Round the geometry belongs to.
    path : tuple of str
        Node names from the UAV to the base station.
    hop_link_types : tuple of str
        Link type of each hop.
    hop_distances_km : tuple of float
        Length of each hop, km.
    hop_fidelities : tuple of float
        Fidelity of each hop's pair when it is swapped, i.e. after decohering in
        memory while the other hops finish.
    end_to_end_fidelity : float
        Werner fidelity of the end-to-end pair after swapping along the path.
    success_probability : float
        Probability that one synchronous attempt succeeds on every hop and every
        swap: ``prod_i P_i · P_swap^(N-1)``.
    pair_rate_hz : float
        End-to-end Bell pairs per second (1 / ``waiting_time_s``).
    waiting_time_s : float
        Expected time until an end-to-end pair exists.
    propagation_delay_s : float
        One-way classical propagation delay along the path.
    latency_s : float
        Latency of teleporting one qubit: pair waiting time, then the 2 classical
        bits travel the path.
    classical_rate_bps : float
        Classical data rate of the path's bottleneck hop.
    """

    uav_id: str
    server_round: int
    path: tuple[str, ...]
    hop_link_types: tuple[str, ...]
    hop_distances_km: tuple[float, ...]
    hop_fidelities: tuple[float, ...]
    end_to_end_fidelity: float
    success_probability: float
    pair_rate_hz: float
    waiting_time_s: float
    propagation_delay_s: float
    latency_s: float
    classical_rate_bps: float

    _FLOAT_FIELDS: ClassVar[tuple[str, ...]] = (
        "end_to_end_fidelity",
        "success_probability",
        "pair_rate_hz",
        "waiting_time_s",
        "propagation_delay_s",
        "latency_s",
        "classical_rate_bps",
    )

    @property
    def hop_count(self) -> int:
        """Number of hops (elementary links) on the path."""
        return len(self.path) - 1

    def to_config(self, prefix: str = "link.") -> dict[str, Any]:
        """Flatten into values a Flower ``ConfigRecord`` accepts.

        Parameters
        ----------
        prefix : str
            Prepended to every key.

        Returns
        -------
        dict
            ``str``, ``int``, ``float`` and list values.
        """
        config: dict[str, Any] = {
            "uav_id": self.uav_id,
            "server_round": self.server_round,
            "path": list(self.path),
            "hop_link_types": list(self.hop_link_types),
            "hop_distances_km": [float(value) for value in self.hop_distances_km],
            "hop_fidelities": [float(value) for value in self.hop_fidelities],
        }
        config.update({name: float(getattr(self, name)) for name in self._FLOAT_FIELDS})
        return {prefix + key: value for key, value in config.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], prefix: str = "link.") -> PathLink:
        """Rebuild a ``PathLink`` from :meth:`to_config` output, validating it.

        Parameters
        ----------
        config : Mapping
            For example the ``ConfigRecord`` a client receives.
        prefix : str
            Key prefix used by :meth:`to_config`.

        Returns
        -------
        PathLink

        Raises
        ------
        ValueError
            A key is missing or a value has the wrong type or range.
        """

        def get(key: str, kind: type | tuple[type, ...]) -> Any:
            full_key = prefix + key
            if full_key not in config:
                raise ValueError(f"link config is missing key {full_key!r}")
            value = config[full_key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"link config key {full_key!r} has invalid value {value!r}")
            return value

        def get_list(key: str, kind: type | tuple[type, ...], length: int) -> tuple[Any, ...]:
            values = get(key, list)
            if len(values) != length or not all(
                isinstance(value, kind) and not isinstance(value, bool) for value in values
            ):
                raise ValueError(
                    f"link config key {prefix + key!r} must be a list of {length} values, "
                    f"got {values!r}"
                )
            return tuple(values)

        path = get("path", list)
        if len(path) < 2 or not all(isinstance(name, str) for name in path):
            raise ValueError(f"link config key {prefix + 'path'!r} must list >= 2 node names")
        hops = len(path) - 1
        floats = {name: float(get(name, (int, float))) for name in cls._FLOAT_FIELDS}
        link = cls(
            uav_id=get("uav_id", str),
            server_round=int(get("server_round", int)),
            path=tuple(path),
            hop_link_types=get_list("hop_link_types", str, hops),
            hop_distances_km=tuple(
                float(value) for value in get_list("hop_distances_km", (int, float), hops)
            ),
            hop_fidelities=tuple(
                float(value) for value in get_list("hop_fidelities", (int, float), hops)
            ),
            **floats,
        )
        link.validate()
        return link

    def validate(self) -> None:
        """Check ranges; raise ``ValueError`` naming the bad field."""
        if not 0.25 < self.end_to_end_fidelity <= 1.0:
            raise ValueError(
                f"end_to_end_fidelity must lie in (0.25, 1], got {self.end_to_end_fidelity}"
            )
        if not all(0.25 < value <= 1.0 for value in self.hop_fidelities):
            raise ValueError(f"hop_fidelities must lie in (0.25, 1], got {self.hop_fidelities}")
        if not 0.0 <= self.success_probability <= 1.0:
            raise ValueError(
                f"success_probability must lie in [0, 1], got {self.success_probability}"
            )
        for name in ("pair_rate_hz", "classical_rate_bps"):
            value = getattr(self, name)
            if not (value > 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("waiting_time_s", "propagation_delay_s", "latency_s"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if any(not (value >= 0.0 and math.isfinite(value)) for value in self.hop_distances_km):
            raise ValueError(f"hop_distances_km must be >= 0, got {self.hop_distances_km}")


@dataclass(frozen=True)
class NodeState:
    """Where a node is in one round.

    Air and ground nodes use a local tangent plane (``x_km`` east, ``y_km``
    north, origin near the base station). A LEO satellite is given by its
    sub-satellite point as angles along and across its ground track, which
    stays accurate thousands of km away; ``x_km``/``y_km`` then hold that point
    projected onto the plane, for display only.
    """

    name: str
    layer: str
    x_km: float
    y_km: float
    altitude_km: float
    along_track_rad: float = 0.0
    cross_track_rad: float = 0.0
    track_azimuth_rad: float = 0.0


# --------------------------------------------------------------------------------------
# File contents
# --------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class LinkType:
    """Physical parameters shared by every link between two layers."""

    name: str
    layers: frozenset[str]
    medium: str
    raw_fidelity: float
    pair_rate_hz: float
    memory_coherence_time_s: float
    max_range_km: float
    classical_rate_bps: float
    min_elevation_deg: float = 0.0
    heralding: str = "direct"
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
class Hop:
    """One link that exists in a round, with its physics."""

    first: str
    second: str
    link_type: LinkType
    distance_km: float
    elevation_deg: float
    transmissivity: float
    success_probability: float
    pair_rate_hz: float
    delay_s: float
    routing_weight: float

    def other(self, name: str) -> str:
        """The end of the hop that is not ``name``."""
        return self.second if name == self.first else self.first


@dataclass(frozen=True)
class _RoundHops:
    """Every hop of one round as parallel arrays, one entry per hop.

    ``first`` and ``second`` index :attr:`Topology.nodes`, with ``first < second``; the
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


def _shortest_path_tree(
    weights: npt.NDArray[np.float64], source: int, name_rank: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """Each node's predecessor on its best path from ``source``, by Dijkstra.

    The best path minimises ``(weight, hops, path)``, where ``weight`` is the sum of
    the hops' routing weights taken from the source outwards and paths compare as
    tuples of node names from the source: exactly the order a heap of
    ``(weight, hops, path)`` entries pops them in. Weights are ``>= 0``, so extending a
    path never sorts it earlier and each node is final once it is the smallest open
    one. Dense form, ``O(V²)`` numpy work, no path tuples: two paths with equal hop
    counts (the only ones whose names are ever compared) first differ just below the
    node where they meet in the tree, found by walking both up.

    Parameters
    ----------
    weights : numpy.ndarray
        ``(V, V)`` symmetric routing weights, ``inf`` where there is no hop.
    source : int
        Index of the node the paths start from.
    name_rank : numpy.ndarray
        Position of each node's name in sorted order.

    Returns
    -------
    numpy.ndarray
        Predecessor index of each node; ``-1`` for the source and for nodes that
        cannot be reached.
    """
    size = len(weights)
    distance = np.full(size, np.inf)
    hop_count = np.zeros(size, dtype=np.intp)
    parent = np.full(size, -1, dtype=np.intp)
    settled = np.zeros(size, dtype=bool)
    open_distance = np.full(size, np.inf)  # inf once settled, so argmin skips it
    distance[source] = open_distance[source] = 0.0

    def sorts_before(first: int, second: int) -> bool:
        # The paths to first and second have the same number of hops.
        while parent[first] != parent[second]:
            first, second = parent[first], parent[second]
        return bool(name_rank[first] < name_rank[second])

    while True:
        node = int(np.argmin(open_distance))
        best = open_distance[node]
        if best == np.inf:
            break
        ties = np.flatnonzero(open_distance == best)
        if len(ties) > 1:
            fewest = ties[hop_count[ties] == hop_count[ties].min()]
            node = int(fewest[0])
            for other in fewest[1:]:
                if sorts_before(int(other), node):
                    node = int(other)
        settled[node] = True
        open_distance[node] = np.inf
        candidate = distance[node] + weights[node]
        hops = hop_count[node] + 1
        improved = (candidate < distance) & ~settled
        tied = (candidate == distance) & (candidate < np.inf) & ~settled
        for other in np.flatnonzero(tied):
            if hops < hop_count[other] or (
                hops == hop_count[other] and sorts_before(node, int(parent[other]))
            ):
                improved[other] = True
        distance[improved] = open_distance[improved] = candidate[improved]
        hop_count[improved] = hops
        parent[improved] = node
    return parent


# --------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """A SAGIN topology read from a description file.

    Use :func:`load_topology` to build one. Mobility and paths are pure
    functions of ``(seed, server_round)``: rounds can be queried in any order
    and the same seed always gives the same links.
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
        server_round : int
            Round number (>= 0); time is ``server_round * round_duration_s``.
        seed : int
            Mobility seed (>= 0).

        Returns
        -------
        dict
            Node name -> :class:`NodeState`.
        """
        _check_round_and_seed(server_round, seed)
        time_s = server_round * self.round_duration_s
        states: dict[str, NodeState] = {}
        for index, node in enumerate(self.nodes):
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
            (out of range of every relay, or the best path's end-to-end fidelity
            is below ``min_end_to_end_fidelity``); such a UAV is not sampled.
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
        parent = _shortest_path_tree(weights, source, self._name_rank)
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
            fidelity_ok = link.end_to_end_fidelity >= self.min_end_to_end_fidelity
            links[uav_id] = link if fidelity_ok else None
        return links

    def _round_hops(self, server_round: int, seed: int) -> _RoundHops:
        """Every hop of ``server_round``, computed one link type at a time over arrays."""
        states = list(self.node_states(server_round, seed).values())
        positions = _Positions.of(states)
        parts = []
        for type_index, link_type in enumerate(self.link_types):
            layers = sorted(link_type.layers)
            first, second = _candidate_pairs(
                self._layer_members[layers[0]],
                self._layer_members[layers[-1]],
                same_layer=len(layers) == 1,
            )
            part = _link_physics(link_type, positions, first, second)
            part["link_type_index"] = np.full(len(part["first"]), type_index, dtype=np.intp)
            parts.append(part)
        columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        return _RoundHops(
            names=tuple(node.name for node in self.nodes), link_types=self.link_types, **columns
        )

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
        # A failed swap restarts the whole chain: a geometric number of tries.
        waiting_time_s = all_hops_ready_s / swap_success
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


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a SAGIN topology description file.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        TOML file; ``None`` loads the shipped default
        (``relay/topologies/default.toml``).

    Returns
    -------
    Topology

    Raises
    ------
    ValueError
        The file is missing, is not valid TOML, or breaks the schema; the
        message names the file, the bad key or value, and what is allowed.
    """
    if path is None:
        path = DEFAULT_TOPOLOGY_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"topology file {str(path)!r}: cannot be read ({error})") from error
    return _TopologyReader(str(path), text).read()


# --------------------------------------------------------------------------------------
# Mobility and geometry
# --------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Positions:
    """Node positions of one round as arrays indexed like :attr:`Topology.nodes`."""

    x_km: npt.NDArray[np.float64]
    y_km: npt.NDArray[np.float64]
    altitude_km: npt.NDArray[np.float64]
    along_track_rad: npt.NDArray[np.float64]
    cross_track_rad: npt.NDArray[np.float64]
    track_azimuth_rad: npt.NDArray[np.float64]
    is_leo: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, states: list[NodeState]) -> _Positions:
        def column(name: str) -> npt.NDArray[np.float64]:
            return np.array([getattr(state, name) for state in states], dtype=np.float64)

        return cls(
            x_km=column("x_km"),
            y_km=column("y_km"),
            altitude_km=column("altitude_km"),
            along_track_rad=column("along_track_rad"),
            cross_track_rad=column("cross_track_rad"),
            track_azimuth_rad=column("track_azimuth_rad"),
            is_leo=np.array([state.layer == "leo" for state in states], dtype=bool),
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
    positions: _Positions,
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
        azimuth = positions.track_azimuth_rad[satellite]
        x_km, y_km = positions.x_km[observer], positions.y_km[observer]
        along_km = x_km * np.sin(azimuth) + y_km * np.cos(azimuth)
        cross_km = x_km * np.cos(azimuth) - y_km * np.sin(azimuth)
        along = positions.along_track_rad[satellite] - along_km / physics.EARTH_RADIUS_KM
        cross = positions.cross_track_rad[satellite] - cross_km / physics.EARTH_RADIUS_KM
        # Right spherical triangle: the ground track is a great circle.
        central_angle = np.arccos(np.clip(np.cos(along) * np.cos(cross), -1.0, 1.0))
        distance, elevation = physics.satellite_range_and_elevation(
            central_angle, positions.altitude_km[observer], positions.altitude_km[satellite]
        )
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


def _link_physics(
    link_type: LinkType,
    positions: _Positions,
    first: npt.NDArray[np.intp],
    second: npt.NDArray[np.intp],
) -> dict[str, npt.NDArray[Any]]:
    """The hops among candidate pairs of one link type, as :class:`_RoundHops` columns.

    A pair is a hop when it is in range, above the elevation mask, delivers pairs at a
    positive rate, and its routing Werner parameter is positive.
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
    keep = ~(pair_rate_hz <= 0.0)
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


def _check_round_and_seed(server_round: int, seed: int) -> None:
    for name, value in (("server_round", server_round), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")


# --------------------------------------------------------------------------------------
# File validation
# --------------------------------------------------------------------------------------

_NODE_KEYS = {
    "ground": ("name", "layer", "x_km", "y_km", "altitude_km", "base_station"),
    "uav": ("name", "layer", "x_km", "y_km", "altitude_km", "patrol_radius_km", "speed_km_s"),
    "hap": ("name", "layer", "x_km", "y_km", "altitude_km", "drift_km"),
    "leo": (
        "name",
        "layer",
        "altitude_km",
        "closest_approach_s",
        "track_offset_km",
        "track_azimuth_deg",
    ),
}
_REQUIRED_NODE_KEYS = {
    "ground": ("x_km", "y_km", "altitude_km"),
    "uav": ("x_km", "y_km", "altitude_km"),
    "hap": ("x_km", "y_km", "altitude_km"),
    "leo": ("altitude_km", "closest_approach_s"),
}
_COMMON_LINK_KEYS = (
    "medium",
    "raw_fidelity",
    "pair_rate_hz",
    "memory_coherence_time_s",
    "max_range_km",
    "classical_rate_bps",
    "min_elevation_deg",
    "heralding",
    "extra_loss_db",
)
_MEDIUM_LINK_KEYS = {
    "fibre": ("attenuation_db_per_km",),
    "free-space": (
        "divergence_rad",
        "aperture_radius_m",
        "beam_waist_m",
        "zenith_transmissivity",
        "atmosphere_db_per_km",
        "receiver_efficiency",
    ),
}
_TOPOLOGY_KEYS = (
    "name",
    "round_duration_s",
    "swap_success_probability",
    "swap_gate_fidelity",
    "swap_measurement_fidelity",
    "min_end_to_end_fidelity",
)


class _TopologyReader:
    """Turns the parsed TOML into a :class:`Topology`, with one clear error per problem."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def fail(self, message: str) -> ValueError:
        return ValueError(f"topology file {self.source!r}: {message}")

    def read(self) -> Topology:
        try:
            document = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as error:
            raise self.fail(f"not valid TOML ({error})") from error
        self.check_keys(document, ("topology", "nodes", "links"), "top level")
        settings = self.table(document, "topology", "top level")
        self.check_keys(settings, _TOPOLOGY_KEYS, "[topology]")
        nodes = self.read_nodes(document)
        link_types = self.read_link_types(document)
        name = settings.get("name", Path(self.source).stem)
        if not isinstance(name, str):
            raise self.fail(f"[topology] name must be a string, got {name!r}")
        return Topology(
            name=name,
            source=self.source,
            nodes=nodes,
            link_types=link_types,
            round_duration_s=self.number(
                settings, "round_duration_s", "[topology]", minimum=0.0, strict=True, default=60.0
            ),
            swap_success_probability=self.number(
                settings,
                "swap_success_probability",
                "[topology]",
                minimum=0.0,
                maximum=1.0,
                strict=True,
                default=1.0,
            ),
            swap_gate_fidelity=self.number(
                settings, "swap_gate_fidelity", "[topology]", minimum=0.0, maximum=1.0, default=1.0
            ),
            swap_measurement_fidelity=self.number(
                settings,
                "swap_measurement_fidelity",
                "[topology]",
                minimum=0.5,
                maximum=1.0,
                default=1.0,
            ),
            min_end_to_end_fidelity=self.number(
                settings,
                "min_end_to_end_fidelity",
                "[topology]",
                minimum=0.25,
                maximum=1.0,
                default=0.5,
            ),
        )

    def read_nodes(self, document: dict[str, Any]) -> tuple[NodeSpec, ...]:
        entries = document.get("nodes")
        if not isinstance(entries, list) or not entries:
            raise self.fail("needs at least one [[nodes]] entry")
        nodes: list[NodeSpec] = []
        seen: set[str] = set()
        for position, entry in enumerate(entries):
            where = f"[[nodes]] entry {position + 1}"
            if not isinstance(entry, dict):
                raise self.fail(f"{where} must be a table")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{where} needs a non-empty string 'name', got {name!r}")
            where = f"node {name!r}"
            if name in seen:
                raise self.fail(f"{where} is defined twice; node names must be unique")
            seen.add(name)
            layer = entry.get("layer")
            if layer not in LAYERS:
                raise self.fail(
                    f"{where} has unknown layer {layer!r}; allowed: {', '.join(LAYERS)}"
                )
            self.check_keys(entry, _NODE_KEYS[layer], f"{where} (layer {layer!r})")
            for key in _REQUIRED_NODE_KEYS[layer]:
                if key not in entry:
                    raise self.fail(f"{where} is missing required key {key!r}")
            base_station = entry.get("base_station", False)
            if not isinstance(base_station, bool):
                raise self.fail(f"{where} key 'base_station' must be true or false")
            nodes.append(
                NodeSpec(
                    name=name,
                    layer=layer,
                    x_km=self.number(entry, "x_km", where, default=0.0),
                    y_km=self.number(entry, "y_km", where, default=0.0),
                    altitude_km=self.number(
                        entry,
                        "altitude_km",
                        where,
                        minimum=0.0,
                        strict=layer == "leo",
                        default=0.0,
                    ),
                    base_station=base_station,
                    patrol_radius_km=self.number(
                        entry, "patrol_radius_km", where, minimum=0.0, default=0.0
                    ),
                    speed_km_s=self.number(entry, "speed_km_s", where, minimum=0.0, default=0.0),
                    drift_km=self.number(entry, "drift_km", where, minimum=0.0, default=0.0),
                    closest_approach_s=self.number(entry, "closest_approach_s", where, default=0.0),
                    track_offset_km=self.number(entry, "track_offset_km", where, default=0.0),
                    track_azimuth_deg=self.number(entry, "track_azimuth_deg", where, default=0.0),
                )
            )
        base_stations = [node.name for node in nodes if node.base_station]
        if len(base_stations) != 1:
            raise self.fail(
                "needs exactly one ground node with base_station = true, "
                f"found {len(base_stations)}: {base_stations}"
            )
        if not any(node.layer == "uav" for node in nodes):
            raise self.fail("needs at least one node with layer = 'uav'")
        return tuple(nodes)

    def read_link_types(self, document: dict[str, Any]) -> tuple[LinkType, ...]:
        tables = self.table(document, "links", "top level")
        if not tables:
            raise self.fail("needs at least one [links.<layer>-<layer>] table")
        link_types: list[LinkType] = []
        seen: dict[frozenset[str], str] = {}
        for name, entry in tables.items():
            layers = self.link_layers(name)
            where = f"[links.{name}]"
            if layers in seen:
                raise self.fail(f"{where} duplicates [links.{seen[layers]}]")
            seen[layers] = name
            if not isinstance(entry, dict):
                raise self.fail(f"{where} must be a table")
            medium = entry.get("medium")
            if medium not in MEDIA:
                raise self.fail(
                    f"{where} has unknown medium {medium!r}; allowed: {', '.join(MEDIA)}"
                )
            self.check_keys(
                entry, _COMMON_LINK_KEYS + _MEDIUM_LINK_KEYS[medium], f"{where} (medium {medium!r})"
            )
            heralding = entry.get("heralding", "direct")
            if heralding not in HERALDING_SCHEMES:
                raise self.fail(
                    f"{where} has unknown heralding {heralding!r}; "
                    f"allowed: {', '.join(HERALDING_SCHEMES)}"
                )
            raw_fidelity = self.number(entry, "raw_fidelity", where, required=True)
            if not 0.25 < raw_fidelity <= 1.0:
                raise self.fail(f"{where} raw_fidelity = {raw_fidelity} is outside (0.25, 1]")
            free_space = medium == "free-space"
            link_types.append(
                LinkType(
                    name=name,
                    layers=layers,
                    medium=medium,
                    raw_fidelity=raw_fidelity,
                    pair_rate_hz=self.number(
                        entry, "pair_rate_hz", where, minimum=0.0, strict=True, required=True
                    ),
                    memory_coherence_time_s=self.number(
                        entry,
                        "memory_coherence_time_s",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=True,
                        allow_inf=True,
                    ),
                    max_range_km=self.number(
                        entry,
                        "max_range_km",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=True,
                        allow_inf=True,
                    ),
                    classical_rate_bps=self.number(
                        entry, "classical_rate_bps", where, minimum=0.0, strict=True, required=True
                    ),
                    min_elevation_deg=self.number(
                        entry, "min_elevation_deg", where, minimum=-90.0, maximum=90.0, default=0.0
                    ),
                    heralding=heralding,
                    attenuation_db_per_km=self.number(
                        entry, "attenuation_db_per_km", where, minimum=0.0, default=0.2
                    ),
                    divergence_rad=self.number(
                        entry,
                        "divergence_rad",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=free_space,
                        default=0.0,
                    ),
                    aperture_radius_m=self.number(
                        entry,
                        "aperture_radius_m",
                        where,
                        minimum=0.0,
                        strict=True,
                        required=free_space,
                        default=0.0,
                    ),
                    beam_waist_m=self.number(
                        entry, "beam_waist_m", where, minimum=0.0, default=0.0
                    ),
                    zenith_transmissivity=self.number(
                        entry,
                        "zenith_transmissivity",
                        where,
                        minimum=0.0,
                        maximum=1.0,
                        strict=True,
                        default=1.0,
                    ),
                    atmosphere_db_per_km=self.number(
                        entry, "atmosphere_db_per_km", where, minimum=0.0, default=0.0
                    ),
                    receiver_efficiency=self.number(
                        entry,
                        "receiver_efficiency",
                        where,
                        minimum=0.0,
                        maximum=1.0,
                        strict=True,
                        default=1.0,
                    ),
                    extra_loss_db=self.number(
                        entry, "extra_loss_db", where, minimum=0.0, default=0.0
                    ),
                )
            )
        return tuple(link_types)

    def link_layers(self, name: str) -> frozenset[str]:
        first, _, second = name.partition("-")
        canonical = [f"{first}-{second}", f"{second}-{first}"]
        if not any(candidate in LINK_TYPE_NAMES for candidate in canonical):
            raise self.fail(
                f"unknown link type [links.{name}]; allowed: {', '.join(LINK_TYPE_NAMES)} "
                "(either order)"
            )
        return frozenset((first, second))

    def table(self, container: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = container.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{where} key {key!r} must be a table")
        return value

    def check_keys(self, table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{where} has unknown key {key!r}; allowed: {', '.join(allowed)}")

    def number(
        self,
        table: dict[str, Any],
        key: str,
        where: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        strict: bool = False,
        required: bool = False,
        allow_inf: bool = False,
        default: float = 0.0,
    ) -> float:
        """Read a number; ``strict`` makes ``minimum`` exclusive."""
        if key not in table:
            if required:
                raise self.fail(f"{where} is missing required key {key!r}")
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where} key {key!r} must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise self.fail(f"{where} key {key!r} must be a finite number, got {value!r}")
        low = "" if minimum is None else f"{'>' if strict else '>='} {minimum:g}"
        high = "" if maximum is None else f"<= {maximum:g}"
        allowed = " and ".join(part for part in (low, high) if part)
        too_low = minimum is not None and (value <= minimum if strict else value < minimum)
        too_high = maximum is not None and value > maximum
        if too_low or too_high:
            raise self.fail(f"{where} key {key!r} = {value:g} is not allowed; must be {allowed}")
        return value
