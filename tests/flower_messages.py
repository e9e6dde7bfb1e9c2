"""Flower Messages outside a SuperLink: the run and task identity they are made under,
the id a SuperLink gives them, and the wire format they travel in.

Only Flower's public properties are used, except in ``assign_message_id`` (see there).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import Message
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 4242
SECRET = bytes.fromhex("c3a5" * 16)
"""The QKD master secret the tests put in the environment (each UAV's is derived from it)."""

_IDENTITY = ("run_id", "node_id", "task_id")


@contextmanager
def task_identity(run_id: int = RUN_ID, node_id: int = 0, task_id: int = 1) -> Iterator[None]:
    """Make Messages as the ServerApp task ``task_id`` of run ``run_id`` on ``node_id``.

    ``Message(content, dst_node_id, message_type)`` reads its sender from
    ``TaskIdentity``, which Flower's runtimes set before they call an app; outside them a
    test sets it through the same public properties, and puts back what was there
    (unset reads as ``RuntimeError`` and is restored as ``None``) so nothing leaks into
    the next test.
    """
    saved = {}
    for name in _IDENTITY:
        try:
            saved[name] = getattr(TaskIdentity, name)
        except RuntimeError:  # not set in this process
            saved[name] = None
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)


def assign_message_id(message: Message, message_id: str | None = None) -> Message:
    """Give ``message`` the id a SuperLink gives it when it is pushed (a fresh UUID unless
    ``message_id`` is given), as a Grid does before delivering it.

    The one place the tests reach into Flower: ``Metadata.message_id`` has no public
    setter, and Flower's own Grids set it exactly this way (``InMemoryGrid.push_messages``:
    ``msg.metadata.__dict__["_message_id"] = str(uuid4())``). It must be set on the
    sender's own object, since a strategy matches replies to the messages it sent by this
    id, so a copy made through the wire format would not do.
    """
    message.metadata.__dict__["_message_id"] = message_id or str(uuid.uuid4())
    return message


def over_the_wire(message: Message) -> Message:
    """The message as the other end receives it (protobuf round trip)."""
    return message_from_proto(message_to_proto(message))
