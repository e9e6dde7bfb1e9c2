"""Who failed and why: failures the SuperLink reports for a node are booked to that node."""

from __future__ import annotations

import pytest
from flower_messages import assign_message_id, over_the_wire
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from in_process import TINY, global_arrays, make_grid, make_strategy

pytestmark = pytest.mark.usefixtures("flower_run")

UNAVAILABLE = "Error: Node Unavailable - the destination node failed to report a heartbeat"


class GridWithADeadNode:
    """In-process nodes; node ``dead`` dies after saying which UAV it is: its training
    message is never answered and the SuperLink answers for it."""

    def __init__(self, grid, dead: int) -> None:
        self.grid, self.dead = grid, dead

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        lost = [m for m in messages if m.metadata.dst_node_id == self.dead
                and m.metadata.message_type == MessageType.TRAIN]
        live = [m for m in messages if m not in lost]
        replies = self.grid.send_and_receive(live, timeout=timeout)
        replies += [superlink_error(m, f"to-{self.dead}", ErrorCode.NODE_UNAVAILABLE, UNAVAILABLE)
                    for m in lost]
        return replies


def superlink_error(message: Message, message_id: str, code: int, reason: str) -> Message:
    """The error reply Flower's SuperLink writes for ``message``: sent by the SuperLink,
    not by the node it was addressed to."""
    assign_message_id(message, message_id)
    # A reply comes from the node its instruction was addressed to: answer a copy
    # readdressed to the SuperLink (the original stays as the strategy sent it).
    as_seen_by_the_superlink = over_the_wire(message)
    as_seen_by_the_superlink.metadata.dst_node_id = SUPERLINK_NODE_ID
    return Message(Error(code, reason), reply_to=as_seen_by_the_superlink)


def test_error_made_up_by_the_superlink_is_booked_to_the_dead_node():
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides)
    grid = GridWithADeadNode(make_grid(overrides), dead=303)
    arrays: ArrayRecord = global_arrays(overrides)
    messages = strategy.configure_train(1, arrays, ConfigRecord({"learning-rate": 0.001}), grid)
    aggregated, _metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    report = strategy.reports[-1]
    assert aggregated is not None and report.clients_used == 2
    assert report.failed == {303: UNAVAILABLE}


class GridLosingAQueryReply(GridWithADeadNode):
    """The first UAV query to node ``dead`` is answered by the SuperLink with an error
    (the node's reply was lost); later queries reach the node."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        lost = [m for m in messages if m.metadata.dst_node_id == self.dead
                and m.metadata.message_type == MessageType.QUERY and not self.__dict__.get("hit")]
        self.__dict__["hit"] = self.__dict__.get("hit") or bool(lost)
        replies = self.grid.send_and_receive([m for m in messages if m not in lost],
                                             timeout=timeout)
        replies += [superlink_error(m, f"query-{self.dead}", ErrorCode.MESSAGE_UNAVAILABLE,
                                    "reply expired") for m in lost]
        return replies


def test_a_lost_query_reply_leaves_the_node_to_be_asked_again():
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides)
    grid = GridLosingAQueryReply(make_grid(overrides), dead=303)
    strategy.uav_of_node.clear()
    first = strategy.map_nodes(grid)
    assert 303 not in first and 303 not in strategy.unmapped
    second = strategy.map_nodes(grid)
    assert 303 in second and not strategy.unmapped
