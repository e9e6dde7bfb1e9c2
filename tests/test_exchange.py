"""strategies.exchange: replies collected over push/pull, each once, up to a deadline.

Time is a virtual clock here: the test counts polls and virtual seconds, not wall time.
"""

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from strategies import exchange
from tests.flower_messages import assign_message_id


class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0
        self.now += seconds


@pytest.fixture
def clock(monkeypatch, flower_run):
    fake = Clock()
    monkeypatch.setattr(exchange.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(exchange.time, "sleep", fake.sleep)
    return fake


class TimedGrid:
    """Node ``n`` replies ``delays[n]`` virtual seconds after the push (None: never);
    ``pull_messages`` returns every reply so far, also ones already returned."""

    def __init__(self, clock, delays):
        self.clock, self.delays = clock, delays
        self.pulls = 0
        self.sent: list[Message] = []

    def push_messages(self, messages):
        self.pushed_at = self.clock.now
        for message in messages:
            self.sent.append(assign_message_id(message))
        return [m.metadata.message_id for m in self.sent]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [
            Message(RecordDict(), reply_to=m) for m in self.sent
            if self.delays[m.metadata.dst_node_id] is not None
            and self.clock.now - self.pushed_at >= self.delays[m.metadata.dst_node_id]
        ]


def _queries(nodes):
    return [
        Message(RecordDict({"c": ConfigRecord({"q": 1})}), dst_node_id=node,
                message_type=MessageType.QUERY)
        for node in nodes
    ]


def test_every_reply_once_within_a_poll_interval_of_the_last_one(clock):
    grid = TimedGrid(clock, {1: 0.0, 2: 3.0, 3: 10.0})
    replies = exchange.send_and_receive(grid, _queries([1, 2, 3]), timeout=600)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(
        m.metadata.message_id for m in grid.sent
    )
    # Flower's deployment grid looks every 3 s; this one at most every MAX_POLL_S.
    assert 10.0 <= clock.now <= 10.0 + exchange.MAX_POLL_S
    assert grid.pulls <= 10.0 / exchange.MAX_POLL_S + 10


def test_a_node_that_never_answers_ends_the_wait_at_the_deadline_with_the_others(clock):
    grid = TimedGrid(clock, {1: 0.0, 2: None})
    replies = exchange.send_and_receive(grid, _queries([1, 2]), timeout=7.0)
    assert clock.now == pytest.approx(7.0)
    assert [r.metadata.reply_to_message_id for r in replies] == [grid.sent[0].metadata.message_id]


def test_no_message_no_wait(clock):
    grid = TimedGrid(clock, {})
    assert exchange.send_and_receive(grid, [], timeout=60) == []
    assert clock.now == 0.0


def test_a_grid_without_non_blocking_calls_is_asked_with_its_own_send_and_receive(flower_run):
    class Blocking:
        def send_and_receive(self, messages, *, timeout=None):
            self.timeout = timeout
            return [Message(RecordDict(), reply_to=assign_message_id(m)) for m in messages]

    grid = Blocking()
    assert len(exchange.send_and_receive(grid, _queries([5, 6]), timeout=12.5)) == 2
    assert grid.timeout == 12.5
