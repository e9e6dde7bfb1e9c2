"""The scale study's fix of Flower's simulation polling asks only the nodes with mail."""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace

import flwr
from flwr.server.superlink.fleet.vce import vce_api

from experiments import flower_polling


class OneCycle:
    """An f_stop event that lets the loop run exactly one cycle."""

    def __init__(self) -> None:
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > 1

    def wait(self, _timeout: float) -> bool:
        return True


class FakeState:
    """The parts of Flower's in-memory link state the loop reads."""

    def __init__(self, messages: dict[str, SimpleNamespace]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = messages
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int) -> list[SimpleNamespace]:
        self.asked.append(node_id)
        found = [m for m in self.message_ins_store.values()
                 if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == ""][:limit]
        for message in found:
            message.metadata.delivered_at = "now"
        return found


def message(node_id: int, delivered: bool = False) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(
        dst_node_id=node_id, delivered_at="earlier" if delivered else ""))


def test_one_cycle_asks_only_the_nodes_that_have_an_undelivered_message():
    nodes = {node_id: index for index, node_id in enumerate(range(10_000))}
    pending = {"a": message(17), "b": message(4242), "c": message(9_999, delivered=True),
               "d": message(123_456)}  # not a node of this simulation
    state, queue = FakeState(pending), Queue()
    flower_polling.pending_only_loop(state, queue, nodes, OneCycle())
    assert sorted(state.asked) == [17, 4242]  # not 10,000 look-ups
    assert {queue.get_nowait().metadata.dst_node_id for _ in range(2)} == {17, 4242}
    assert queue.empty()


def test_the_fix_installs_on_the_flower_version_it_was_written_for(monkeypatch):
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    assert flwr.__version__.startswith(flower_polling.PATCHED_FLOWER)
    assert flower_polling.poll_pending_nodes()
    state, queue = FakeState({"a": message(3)}), Queue()
    vce_api.add_messages_to_queue(state, queue, {3: 0}, OneCycle())
    assert state.asked == [3] and queue.qsize() == 1
