"""A swarm of many Flower nodes without ClientApps: a Grid that answers UAV queries from a
script, and a topology stand-in with as many UAVs, for tests of how rounds draw nodes.

Building 10,000 real ClientApps (or the real topology's paths) would test the test
harness; what the draw depends on is which nodes answer, how, and which UAVs have a path.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping

from flower_messages import assign_message_id, over_the_wire
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from relay.flower import UAV_ID_KEY, UAV_RECORD
from relay.link import PathLink

REFUSAL = "node config 'data-dir' = '/no/such': the mnist archives were not found"


def path_link(uav_id: str, server_round: int) -> PathLink:
    """A plausible one-hop link of ``uav_id``."""
    return PathLink(
        uav_id=uav_id, server_round=server_round, path=(uav_id, "bs"),
        hop_link_types=("uav-ground",), hop_distances_km=(1.0,), hop_fidelities=(0.98,),
        end_to_end_fidelity=0.98, success_probability=0.2, pair_rate_hz=1e4,
        waiting_time_s=1e-4, propagation_delay_s=1e-5, latency_s=1e-3,
        classical_rate_bps=5e7,
    )


class _RoundLinks(Mapping[str, PathLink | None]):
    def __init__(self, topology: SwarmTopology, server_round: int) -> None:
        self.topology, self.server_round = topology, server_round

    def __getitem__(self, uav_id: str) -> PathLink | None:
        if uav_id not in self.topology.index:
            raise KeyError(uav_id)
        if (uav_id, self.server_round) in self.topology.no_path:
            return None
        return path_link(uav_id, self.server_round)

    def __iter__(self) -> Iterator[str]:
        return iter(self.topology.uav_ids)

    def __len__(self) -> int:
        return len(self.topology.uav_ids)


class SwarmTopology:
    """``n`` UAVs ``uav-0`` ..; ``no_path`` holds the ``(uav_id, round)`` without a path."""

    def __init__(self, n: int, no_path: set[tuple[str, int]] | None = None) -> None:
        self.name = f"swarm-stub-{n}"
        self.source = "(test)"
        self.uav_ids = tuple(f"uav-{i}" for i in range(n))
        self.index = {uav_id: i for i, uav_id in enumerate(self.uav_ids)}
        self.no_path = no_path or set()
        self.nodes = ()  # no satellites: nothing crosses the space segment

    def links_for_round(self, server_round: int, seed: int = 0) -> _RoundLinks:
        return _RoundLinks(self, server_round)


class SwarmGrid:
    """``n`` nodes with random ids; node ``i`` of :attr:`node_ids` is UAV ``uav-i``.

    Parameters
    ----------
    n : int
        Nodes.
    silent : set[int]
        Indices of nodes that never answer a query.
    refusing : set[int]
        Indices of nodes that answer with an error (a bad node setup).
    late : set[int]
        Indices of nodes that miss their first query and answer the next ones.
    lost : set[int]
        Indices of nodes whose first answer the SuperLink replaces by an error.
    seed : int
        Seed of the node ids.
    """

    def __init__(self, n: int, silent=(), refusing=(), late=(), lost=(), seed: int = 0) -> None:
        rng = random.Random(seed)
        self.node_ids = rng.sample(range(1, 2**62), n)
        self.uav_of = {node_id: f"uav-{i}" for i, node_id in enumerate(self.node_ids)}
        self.silent = {self.node_ids[i] for i in silent}
        self.refusing = {self.node_ids[i] for i in refusing}
        self.late = {self.node_ids[i] for i in late}
        self.lost = {self.node_ids[i] for i in lost}
        self.queries: Counter[int] = Counter()
        self.query_batches: list[list[int]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        messages = list(messages)
        assert all(m.metadata.message_type == MessageType.QUERY for m in messages)
        self.query_batches.append([m.metadata.dst_node_id for m in messages])
        return [reply for m in messages if (reply := self._answer(m)) is not None]

    def _answer(self, message: Message) -> Message | None:
        assign_message_id(message)
        node_id = message.metadata.dst_node_id
        self.queries[node_id] += 1
        first = self.queries[node_id] == 1
        if node_id in self.silent or (node_id in self.late and first):
            return None
        if node_id in self.lost and first:
            # The SuperLink writes this error, as itself (see test_node_failures).
            as_seen_by_the_superlink = over_the_wire(message)
            as_seen_by_the_superlink.metadata.dst_node_id = SUPERLINK_NODE_ID
            return Message(Error(ErrorCode.MESSAGE_UNAVAILABLE, "reply expired"),
                           reply_to=as_seen_by_the_superlink)
        if node_id in self.refusing:
            return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, REFUSAL), reply_to=message)
        record = ConfigRecord({UAV_ID_KEY: self.uav_of[node_id]})
        return Message(RecordDict({UAV_RECORD: record}), reply_to=message)
