"""The tree of best paths to the base station, computed as far as the round needs it.

Dijkstra from the base station settles nodes in order of path weight and relaxes the
hops out of each node it settles. A swarm of N UAVs in range of each other has about
N²/2 candidate hops: at 10,000 UAVs, 5·10⁷ pairs whose physics and an N x N weight matrix
take gigabytes and seconds. :class:`PathTree` gives exactly the paths of the
straightforward algorithm (the same predecessors, ties included) with far less work:

- **Batches.** Every hop weighs at least its link type's floor (:func:`weight_floor`: the
  routing weight of a hop that never loses a photon), so no open node can improve
  another by less than the smallest floor ``step``. All open nodes lighter than the
  lightest one plus ``step`` are therefore final together and settled as one batch,
  whose hops are relaxed together, over arrays. (With a link type whose floor is 0,
  perfect memories and pairs, nodes are settled one at a time, as before.)
- **Pruning.** A hop from settled node ``u`` can only improve, or tie, open node ``v``
  when ``weight(u) + floor <= weight(v)``; the physics of a hop is computed only for
  pairs that pass, and for at most :data:`PAIR_CHUNK` pairs at a time.
- **Deferral.** A batch whose hops to the open nodes would take more than a budget of
  pairs (a swarm's UAVs in direct sight of the base station, towards the thousands
  that need a relay) is settled but not relaxed. Every node still open then weighs at
  least the batch's limit, so a path through another open node weighs at least the
  limit plus the floor of the hops into the node's layer. A node asked for
  (:meth:`PathTree.parent_of`) is relaxed from the batch alone; if its weight is below
  that bound, its path is final, else the search is completed. A round that looks up
  ten UAVs pays for ten, not for the swarm.

The best path minimises ``(weight, hops, path)``, ``weight`` summed from the base
station outwards and paths compared by node names from the base station (see
:mod:`relay.routing`); ``tests/test_relay_topology.py`` checks the tree against a
pairwise reference, ties included, and deferred lookups against the complete tree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from relay import physics
from relay.routing import Positions, hop_physics
from relay.topology_spec import LinkType

PAIR_CHUNK = 1 << 20
"""Most candidate pairs whose physics is computed at once (bounds the memory)."""

PAIR_BUDGET = 1 << 18
"""Most hop pairs a batch may relax before the rest of the search is deferred."""

LAZY_TARGETS = 64
"""Deferred lookups after which the search is completed instead (cheaper by then)."""

_FLOOR_MARGIN = 1e-9
"""Relative margin below a link type's floor, so floating-point rounding of the true
weights never falls below the floor used."""


def weight_floor(link_type: LinkType) -> float:
    """A lower bound of the routing weight of any hop of ``link_type``.

    The weight is ``-log p`` of the pair decohered for one generation time; a hop that
    delivers every attempt (success probability 1) waits least and weighs least.
    ``inf`` when no hop of the type can carry anything.
    """
    fidelity = physics.memory_decoherence(
        link_type.raw_fidelity, 1.0 / link_type.pair_rate_hz, link_type.memory_coherence_time_s
    )
    routing_p = float(physics.werner_parameter(fidelity))
    if routing_p <= 0.0:
        return np.inf
    return max(0.0, -float(np.log(routing_p)) * (1.0 - _FLOOR_MARGIN))


class _Search:
    """The state of one search: each node's weight, hop count and predecessor."""

    def __init__(self, size: int, source: int, name_rank: npt.NDArray[np.intp]) -> None:
        self.distance = np.full(size, np.inf)
        self.hop_count = np.zeros(size, dtype=np.intp)
        self.parent = np.full(size, -1, dtype=np.intp)
        self.settled = np.zeros(size, dtype=bool)
        self.open_distance = np.full(size, np.inf)  # inf once settled, so argmin skips it
        self.name_rank = name_rank
        self.distance[source] = self.open_distance[source] = 0.0

    def next_to_settle(self) -> int:
        """The open node whose best path sorts first, or ``-1`` when none is reachable."""
        node = int(np.argmin(self.open_distance))
        best = self.open_distance[node]
        if best == np.inf:
            return -1
        ties = np.flatnonzero(self.open_distance == best)
        if len(ties) > 1:
            fewest = ties[self.hop_count[ties] == self.hop_count[ties].min()]
            node = int(fewest[0])
            for other in fewest[1:]:
                if self.sorts_before(int(other), node):
                    node = int(other)
        return node

    def sorts_before(self, first: int, second: int) -> bool:
        """Whether the path to ``first`` sorts before the path to ``second``, by names.

        Both paths have the same number of hops, so they meet at a common ancestor
        (the source at the latest) and first differ just below it.
        """
        parent = self.parent
        while parent[first] != parent[second]:
            first, second = int(parent[first]), int(parent[second])
        return bool(self.name_rank[first] < self.name_rank[second])

    def better(self, node: int, via: int, hops: int) -> bool:
        """Whether a path to ``node`` through ``via`` with ``hops`` hops and the same
        weight as ``node``'s best so far sorts before it (fewer hops, then names)."""
        if hops != self.hop_count[node]:
            return hops < self.hop_count[node]
        return self.sorts_before(via, int(self.parent[node]))


class PathTree:
    """Each node's best path from ``source``, computed as far as lookups need it.

    Parameters
    ----------
    link_types : tuple of LinkType
        The topology's link types.
    layer_members : Mapping
        Layer name -> indices of that layer's nodes.
    positions : relay.routing.Positions
        Where every node is this round.
    source : int
        Index of the node the paths start from (the base station).
    name_rank : numpy.ndarray
        Position of each node's name in sorted order.
    pair_budget : int or None
        Hop pairs a batch may relax before the search is deferred; ``None`` completes
        the search at once.
    """

    def __init__(
        self,
        link_types: tuple[LinkType, ...],
        layer_members: Mapping[str, npt.NDArray[np.intp]],
        positions: Positions,
        source: int,
        name_rank: npt.NDArray[np.intp],
        pair_budget: int | None = PAIR_BUDGET,
    ) -> None:
        self._link_types = link_types
        self._layer_members = layer_members
        self._positions = positions
        self._search = _Search(len(name_rank), source, name_rank)
        self._floors = {link_type.name: weight_floor(link_type) for link_type in link_types}
        self._step = min(self._floors.values(), default=0.0)
        self._layer_of: dict[int, str] = {}
        for layer, members in layer_members.items():
            self._layer_of.update(dict.fromkeys(members.tolist(), layer))
        self._floor_into: dict[str, float] = {}
        self._pending: npt.NDArray[np.intp] | None = None
        self._limit = np.inf
        self._looked_up: set[int] = set()
        self._advance(pair_budget)

    @property
    def complete(self) -> bool:
        """Whether every node's path is known (nothing deferred)."""
        return self._pending is None

    def parents(self) -> npt.NDArray[np.intp]:
        """Every node's predecessor (``-1``: the source, or no path); completes the search."""
        if self._pending is not None:
            self._advance(None)
        return self._search.parent

    def parent_of(self, node: int) -> int:
        """The predecessor of ``node`` on its best path, ``-1`` when it has none."""
        search = self._search
        if self._pending is None or search.settled[node]:
            return int(search.parent[node])
        if node not in self._looked_up:
            if len(self._looked_up) >= LAZY_TARGETS:
                return int(self.parents()[node])
            self._relax(self._pending, np.array([node], dtype=np.intp))
            self._looked_up.add(node)
        # Any path through a node still open weighs at least this: strictly below it,
        # the best path through the settled nodes is the best path.
        if search.distance[node] < self._limit + self._floor_into[self._layer_of[node]]:
            return int(search.parent[node])
        return int(self.parents()[node])

    def _advance(self, pair_budget: int | None) -> None:
        """Settle and relax batches until done, or until one would cost too much."""
        search = self._search
        if self._pending is not None:
            batch, self._pending = self._pending, None
            self._looked_up.clear()
            self._relax(batch)
        while (node := search.next_to_settle()) >= 0:
            if self._step > 0.0:
                # Nothing open can make any of these lighter: final together.
                limit = search.open_distance[node] + self._step
                batch = np.flatnonzero(search.open_distance < limit)
            else:
                limit = search.open_distance[node]
                batch = np.array([node], dtype=np.intp)
            search.settled[batch] = True
            search.open_distance[batch] = np.inf
            if pair_budget is not None and self._pair_count(batch) > pair_budget:
                self._pending, self._limit = batch, limit
                self._floor_into = self._floors_from_open_nodes()
                return
            self._relax(batch)

    def _floors_from_open_nodes(self) -> dict[str, float]:
        """Per layer, the least a hop into a node of that layer from an open node weighs."""
        settled = self._search.settled
        open_layers = {layer for layer, members in self._layer_members.items()
                       if len(members) and not settled[members].all()}
        floors = {}
        for layer in self._layer_members:
            into = [self._floors[link_type.name] for link_type in self._link_types
                    if layer in link_type.layers and link_type.layers - {layer} <= open_layers]
            floors[layer] = min(into, default=np.inf)
        return floors

    def _directions(
        self, batch: npt.NDArray[np.intp], only: npt.NDArray[np.intp] | None
    ) -> list[tuple[LinkType, npt.NDArray[np.intp], npt.NDArray[np.intp]]]:
        """``(link type, starts in batch, open ends)`` of every hop direction worth relaxing."""
        search = self._search
        in_batch = np.zeros(len(search.settled), dtype=bool)
        in_batch[batch] = True
        directions = []
        for link_type in self._link_types:
            floor = self._floors[link_type.name]
            if floor == np.inf:
                continue
            layers = sorted(link_type.layers)
            pairs = [(layers[0], layers[-1])]
            if len(layers) == 2:
                pairs.append((layers[1], layers[0]))
            for from_layer, to_layer in pairs:
                members = self._layer_members[from_layer]
                starts = members[in_batch[members]]
                ends = self._layer_members[to_layer] if only is None else only[
                    [self._layer_of[int(node)] == to_layer for node in only]
                ]
                ends = ends[~search.settled[ends]]
                if not len(starts) or not len(ends):
                    continue
                # An end already lighter than the lightest start plus the floor stays so.
                lightest = search.distance[starts].min()
                ends = ends[~(lightest + floor > search.distance[ends])]
                if len(ends):
                    directions.append((link_type, starts, ends))
        return directions

    def _pair_count(self, batch: npt.NDArray[np.intp]) -> int:
        return sum(len(starts) * len(ends) for _t, starts, ends in self._directions(batch, None))

    def _relax(self, batch: npt.NDArray[np.intp],
               only: npt.NDArray[np.intp] | None = None) -> None:
        """Relax every hop from ``batch`` to the open nodes (or to ``only`` of them)."""
        targets, candidates, sources = [], [], []
        for link_type, starts, ends in self._directions(batch, only):
            floor = self._floors[link_type.name]
            for found in _hops_between(self._search, link_type, self._positions, starts, ends,
                                       floor):
                sources.append(found[0])
                targets.append(found[1])
                candidates.append(found[2])
        if targets:
            _improve(self._search, np.concatenate(targets), np.concatenate(candidates),
                     np.concatenate(sources))


def _hops_between(
    search: _Search,
    link_type: LinkType,
    positions: Positions,
    starts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
    floor: float,
) -> list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]]:
    """``(start, end, weight through start)`` of every hop of ``link_type`` from
    ``starts`` to ``ends`` that could improve or tie its end, in chunks of pairs."""
    found: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]] = []
    if not len(ends):
        return found
    per_chunk = max(1, PAIR_CHUNK // len(ends))
    for offset in range(0, len(starts), per_chunk):
        chunk = starts[offset : offset + per_chunk]
        first = np.repeat(chunk, len(ends))
        second = np.tile(ends, len(chunk))
        keep = ~(search.distance[first] + floor > search.distance[second])
        hops = hop_physics(link_type, positions, first[keep], second[keep])
        if len(hops["first"]):
            weight = search.distance[hops["first"]] + hops["routing_weight"]
            found.append((hops["first"], hops["second"], weight))
    return found


def _improve(
    search: _Search,
    targets: npt.NDArray[np.intp],
    candidates: npt.NDArray[np.float64],
    sources: npt.NDArray[np.intp],
) -> None:
    """Give each target its best candidate path if it beats, or ties and sorts before,
    the target's best so far: ``(weight, hops, names)``, as one hop at a time would."""
    order = np.lexsort((candidates, targets))
    targets, candidates, sources = targets[order], candidates[order], sources[order]
    starts = np.flatnonzero(np.r_[True, targets[1:] != targets[:-1]])
    # Ties need hop counts and names: rare, done one at a time; the rest over arrays.
    tied_next = np.r_[(targets[1:] == targets[:-1]) & (candidates[1:] == candidates[:-1]), False]
    best, weight = targets[starts], candidates[starts]
    plain = ~tied_next[starts] & (weight != search.distance[best])
    better = plain & (weight < search.distance[best])
    _update(search, best[better], weight[better],
            search.hop_count[sources[starts[better]]] + 1, sources[starts[better]])
    for index in starts[~plain]:
        _improve_one(search, targets, candidates, sources, int(index))


def _improve_one(
    search: _Search,
    targets: npt.NDArray[np.intp],
    candidates: npt.NDArray[np.float64],
    sources: npt.NDArray[np.intp],
    index: int,
) -> None:
    """:func:`_improve` for the target whose sorted candidates start at ``index``."""
    target, weight = int(targets[index]), candidates[index]
    best, end = int(sources[index]), index + 1
    # Equal weights through several sources: fewer hops, then names, decide.
    while end < len(targets) and targets[end] == target and candidates[end] == weight:
        other = int(sources[end])
        if search.hop_count[other] < search.hop_count[best] or (
            search.hop_count[other] == search.hop_count[best]
            and search.sorts_before(other, best)
        ):
            best = other
        end += 1
    hops = int(search.hop_count[best]) + 1
    current = search.distance[target]
    if weight < current or (
        weight == current and weight < np.inf and search.better(target, best, hops)
    ):
        _update(search, np.array([target]), np.array([weight]), np.array([hops]),
                np.array([best]))


def _update(
    search: _Search,
    nodes: npt.NDArray[np.intp],
    weights: npt.NDArray[np.float64],
    hops: npt.NDArray[np.intp],
    parents: npt.NDArray[np.intp],
) -> None:
    search.distance[nodes] = search.open_distance[nodes] = weights
    search.hop_count[nodes] = hops
    search.parent[nodes] = parents
