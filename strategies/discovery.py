"""Which UAV each Flower node is, learnt when the node is first drawn for a round.

The base station learns a node's UAV by asking the node (a ``query`` message, answered
by :func:`client.relay_mod.answer_uav_query`): the mapping comes from the clients,
never from a shared file. It never asks every node at once: a federation of 10,000
simulated UAVs answered such a fan-out too slowly for any round to train. Instead each
round *draws* its nodes (:meth:`NodeDirectory.draw`):

1. When the nodes not yet known are few (at most :data:`ASK_ALL_FACTOR` times the
   nodes the round wants), they are all asked at once: a small federation is fully
   known from its first round on, as before.
2. The connected nodes are put in a seeded random order: a hash of the run seed, the
   round, the purpose (training or evaluation) and the node's UAV when every connected
   node is known, else its node id. A seed therefore draws the same UAVs in every run
   of a fully known federation, whatever ids Flower gives its nodes (a resumed run
   included), and the same nodes in every run of a larger one that keeps its node ids.
3. The order is walked: a known node whose UAV has a path this round is taken, one
   without a path is passed over; unknown nodes are collected until the taken and the
   collected reach the number wanted, and then asked together, so each batch is about
   the number of nodes still needed. The walk stops once the round has its nodes: the
   query messages of a round grow with the nodes it needs, not with the federation.
4. A node that does not answer within the timeout (or for which the SuperLink answers
   with an error: its reply was lost) is left out of this round and asked again when it
   is next drawn. A node that answers with an error, or claims a UAV the topology does
   not have or another node already is, is *refused*: never drawn again in this run.
5. Only if the order runs out with fewer nodes than the round needs are the nodes that
   stayed silent asked again (up to :data:`QUERY_ATTEMPTS` times per round): an
   unanswered query alone never skips a round while another node could fill it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from relay.flower import UAV_ID_KEY, UAV_RECORD
from strategies.exchange import send_and_receive

ASK_ALL_FACTOR = 2
"""Nodes not yet known are all asked at once when they are at most this many times the
nodes a round wants (a small federation), instead of in batches along the order."""

QUERY_ATTEMPTS = 2
"""Times a round asks a silent node before it gives up on it for that round."""

MAX_LOGGED_NODES = 20
"""Above this many nodes, a log line gives their number, not the list."""


def nodes_text(node_ids: Sequence[int]) -> str:
    """``node_ids`` for a log line: the list when short, else the count and the first few."""
    if len(node_ids) <= MAX_LOGGED_NODES:
        return ", ".join(str(node_id) for node_id in node_ids)
    first = ", ".join(str(node_id) for node_id in node_ids[:5])
    return f"{len(node_ids)} nodes ({first}, ...)"


def names_text(names: Sequence[str]) -> str:
    """A topology's UAV names for a message: all when few, else the first and last."""
    if len(names) <= 12:
        return ", ".join(names)
    return f"{names[0]} .. {names[-1]}, {len(names)} UAVs"


@dataclass
class Draw:
    """The nodes one walk found for a round.

    Attributes
    ----------
    nodes : list[int]
        Nodes taken, in walk order: known, not refused, their UAV with a path.
    passed_over : list[int]
        Known nodes the walk met whose UAV had no path this round.
    silent : list[int]
        Nodes asked during this draw that did not answer (asked again when next drawn).
    refused : dict[int, str]
        Nodes refused during this draw, with the reason.
    queries : int
        Query messages this draw sent.
    """

    nodes: list[int] = field(default_factory=list)
    passed_over: list[int] = field(default_factory=list)
    silent: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    queries: int = 0


class NodeDirectory:
    """Which UAV each node is, as far as the nodes have said, and the per-round draws.

    Parameters
    ----------
    uav_ids : Sequence[str]
        The topology's UAVs: the only ids a node may claim.
    topology_name : str
        Named in the reason a node with an unknown UAV is refused.
    configrecord_key : str
        Key of the query's ConfigRecord (the strategy's).
    seed : int
        Run seed of the draw order.
    """

    def __init__(
        self, uav_ids: Sequence[str], topology_name: str, configrecord_key: str, seed: int
    ) -> None:
        self._uav_names = tuple(uav_ids)
        self._uav_set = frozenset(uav_ids)
        self._topology_name = topology_name
        self._configrecord_key = configrecord_key
        self._seed = seed
        self.uav_of_node: dict[int, str] = {}
        self.unmapped: dict[int, str] = {}
        self.queries_sent = 0

    def known(self, node_id: int) -> bool:
        """Whether ``node_id`` has said which UAV it is (mapped or refused)."""
        return node_id in self.uav_of_node or node_id in self.unmapped

    # --- asking ---------------------------------------------------------------------
    def ask(self, grid: Grid, node_ids: Sequence[int], timeout: float) -> tuple[
        dict[int, str], dict[int, str]
    ]:
        """Ask ``node_ids`` which UAV they are, in one batch; record the answers.

        Returns
        -------
        tuple[dict[int, str], dict[int, str]]
            The nodes mapped and the nodes refused (with the reason) by this batch. The
            others did not answer, or the SuperLink answered for them; they stay unknown.
        """
        if not node_ids:
            return {}, {}
        queries = [
            Message(
                RecordDict({self._configrecord_key: ConfigRecord({"query": UAV_ID_KEY})}),
                dst_node_id=node_id,
                message_type=MessageType.QUERY,
            )
            for node_id in node_ids
        ]
        self.queries_sent += len(queries)
        replies = send_and_receive(grid, queries, timeout)
        return self._record_claims(queries, replies)

    def _record_claims(
        self, queries: list[Message], replies: Iterable[Message]
    ) -> tuple[dict[int, str], dict[int, str]]:
        """Map the nodes whose replies name a free UAV of the topology; refuse the rest."""
        mapped: dict[int, str] = {}
        refused: dict[int, str] = {}
        # Looked up once per batch: a scan of uav_of_node per reply is O(N²) with N nodes.
        holders = {uav_id: node_id for node_id, uav_id in self.uav_of_node.items()}
        # Errors the SuperLink makes up for a node carry its own id as sender.
        asked = {query.metadata.message_id: query.metadata.dst_node_id for query in queries}
        batch = set(asked.values())
        for reply in replies:
            node_id = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node_id not in batch or self.known(node_id):
                continue  # not a node of this batch, or a duplicate reply
            if reply.has_error() and reply.metadata.src_node_id != node_id:
                # The SuperLink answered for the node (its reply was lost or late): nothing
                # is known about the node itself, so it is asked again, not turned away.
                log(WARNING, "Node %s: no answer to the UAV query (%s)", node_id,
                    reply.error.reason)
                continue
            try:
                uav_id = self._claimed_uav(reply, holders)
            except ValueError as error:
                self.unmapped[node_id] = refused[node_id] = str(error)
                log(WARNING, "Node %s cannot join the relay: %s", node_id, error)
                continue
            self.uav_of_node[node_id] = uav_id
            holders[uav_id] = node_id
            mapped[node_id] = uav_id
        if len(mapped) > MAX_LOGGED_NODES:
            # A swarm's full list would be one line of tens of kilobytes; config.json has it.
            log(INFO, "Relay: %d nodes mapped to their UAVs (list in the run's config.json)",
                len(mapped))
        elif mapped:
            log(INFO, "Relay: %s", ", ".join(f"node {n} is {u}" for n, u in sorted(mapped.items())))
        return mapped, refused

    def _claimed_uav(self, reply: Message, holders: dict[str, int]) -> str:
        if reply.has_error():
            raise ValueError(reply.error.reason)
        record = reply.content.config_records.get(UAV_RECORD)
        uav_id = record.get(UAV_ID_KEY) if record is not None else None
        if not isinstance(uav_id, str) or uav_id not in self._uav_set:
            raise ValueError(
                f"claims UAV {uav_id!r}, which topology {self._topology_name!r} does not have "
                f"({names_text(self._uav_names)})"
            )
        holder = holders.get(uav_id)
        if holder is not None:
            raise ValueError(f"claims {uav_id}, which node {holder} already is")
        return uav_id

    # --- drawing a round's nodes ------------------------------------------------------
    def order(self, connected: Sequence[int], server_round: int, purpose: str) -> list[int]:
        """The connected nodes not refused, in the round's seeded random order.

        Keyed by UAV when every connected node is known (the order then depends on the
        UAVs only, not on the ids Flower gave the nodes), else by node id.
        """
        candidates = [node_id for node_id in connected if node_id not in self.unmapped]
        by_uav = all(node_id in self.uav_of_node for node_id in candidates)
        prefix = f"{self._seed}/{server_round}/{purpose}/"

        def rank(node_id: int) -> bytes:
            key = f"uav:{self.uav_of_node[node_id]}" if by_uav else f"node:{node_id}"
            return hashlib.blake2b((prefix + key).encode(), digest_size=8).digest()

        return sorted(candidates, key=lambda node_id: (rank(node_id), node_id))

    def draw(
        self,
        grid: Grid,
        connected: Sequence[int],
        server_round: int,
        purpose: str,
        wanted: int,
        has_path: Callable[[str], bool],
        timeout: float,
        needed: int | None = None,
    ) -> Draw:
        """Walk the round's order until ``wanted`` nodes with a path are found.

        Parameters
        ----------
        grid : flwr.serverapp.Grid
            The run's grid, for the queries.
        connected : Sequence[int]
            The connected nodes.
        server_round : int
            The round (seeds the order).
        purpose : str
            ``"training"`` or ``"evaluation"`` (each has its own order).
        wanted : int
            Nodes the round takes when it can.
        has_path : Callable[[str], bool]
            Whether a UAV has a path to the base station this round.
        timeout : float
            Seconds to wait for a batch of queries.
        needed : int, optional
            Fewer than this many found and the order run out: silent nodes are asked
            again (at most :data:`QUERY_ATTEMPTS` times in all). Default ``wanted``.

        Returns
        -------
        Draw
        """
        result = Draw()
        queries_before = self.queries_sent
        unknown = [node_id for node_id in connected if not self.known(node_id)]
        asked: dict[int, int] = {}  # node -> times asked in this draw
        if unknown and len(unknown) <= ASK_ALL_FACTOR * wanted:
            asked = dict.fromkeys(unknown, 1)
            self._ask_into(grid, unknown, timeout, result)
        order = self.order(connected, server_round, purpose)
        self._walk(grid, order, wanted, has_path, timeout, asked, result)
        needed = wanted if needed is None else needed
        while len(result.nodes) < needed:
            retry = [node_id for node_id in order if not self.known(node_id)
                     and 0 < asked.get(node_id, 0) < QUERY_ATTEMPTS]
            if not retry:
                break
            for node_id in retry:
                asked[node_id] += 1
            self._ask_into(grid, retry, timeout, result)
            self._walk(grid, order, wanted, has_path, timeout, asked, result)
        position = {node_id: index for index, node_id in enumerate(order)}
        result.nodes.sort(key=position.__getitem__)
        result.silent = [node_id for node_id in order
                         if asked.get(node_id) and not self.known(node_id)]
        result.queries = self.queries_sent - queries_before
        if result.silent:
            log(WARNING, "Round %s: nodes %s did not say which UAV they are; left out of "
                "this %s, asked again when next drawn", server_round,
                nodes_text(result.silent), purpose)
        return result

    def _walk(
        self,
        grid: Grid,
        order: list[int],
        wanted: int,
        has_path: Callable[[str], bool],
        timeout: float,
        asked: dict[int, int],
        result: Draw,
    ) -> None:
        """Take nodes along ``order`` into ``result``, asking unknown ones in batches.

        Every node before the walk's position is settled (taken, passed over, refused or
        silent) except the batch being collected, so the nodes taken are the first
        ``wanted`` of the order that have a path.
        """
        taken = set(result.nodes)
        passed = set(result.passed_over)
        batch: list[int] = []
        for node_id in order:
            if len(result.nodes) >= wanted:
                break
            if node_id in taken or node_id in passed or node_id in self.unmapped:
                continue
            uav_id = self.uav_of_node.get(node_id)
            if uav_id is None:
                if asked.get(node_id):
                    continue  # silent earlier in this draw
                batch.append(node_id)
            else:
                _take_or_pass(node_id, has_path(uav_id), result, taken, passed)
            if batch and len(result.nodes) + len(batch) >= wanted:
                # Ask before going further: the batch comes first in the order.
                self._settle(grid, batch, has_path, timeout, asked, result, taken, passed)
                batch = []
        if batch and len(result.nodes) < wanted:
            self._settle(grid, batch, has_path, timeout, asked, result, taken, passed)

    def _settle(
        self,
        grid: Grid,
        batch: list[int],
        has_path: Callable[[str], bool],
        timeout: float,
        asked: dict[int, int],
        result: Draw,
        taken: set[int],
        passed: set[int],
    ) -> None:
        """Ask one batch and take, in batch order, those whose UAV has a path."""
        for node_id in batch:
            asked[node_id] = asked.get(node_id, 0) + 1
        self._ask_into(grid, batch, timeout, result)
        for node_id in batch:
            uav_id = self.uav_of_node.get(node_id)
            if uav_id is not None:
                _take_or_pass(node_id, has_path(uav_id), result, taken, passed)

    def _ask_into(self, grid: Grid, node_ids: Sequence[int], timeout: float,
                  result: Draw) -> None:
        _mapped, refused = self.ask(grid, node_ids, timeout)
        result.refused.update(refused)


def _take_or_pass(node_id: int, reachable: bool, result: Draw, taken: set[int],
                  passed: set[int]) -> None:
    """Take a known node whose UAV has a path this round; pass over one that has none."""
    if reachable:
        result.nodes.append(node_id)
        taken.add(node_id)
    else:
        result.passed_over.append(node_id)
        passed.add(node_id)
