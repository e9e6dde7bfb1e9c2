"""A study harness fix for Flower 1.41's simulation engine: poll only nodes with mail.

Flower's simulation engine (``flwr.server.superlink.fleet.vce.vce_api``) hands messages
to its workers from one thread that asks the link state, every 0.1 s, for the next
message of *every* registered node (``add_messages_to_queue``), and each of those calls
scans every message in flight. With N simulated UAVs and M messages in flight a cycle
costs N x M look-ups under the state's lock: at 10,000 UAVs and the ten training
messages of a round, a core busy for the whole round and 0.3 s or more before a message
is picked up. (A fan-out of one query per node made it N²: 1,000 queries to 1,000 nodes
were never answered within 300 s.) Deployment has no such loop: each SuperNode pulls
its own messages.

:func:`poll_pending_nodes` replaces that thread's loop, in this process, by one that asks
only for the nodes that have an undelivered message, through the same
``get_message_ins`` call (which still checks expiry and marks the message delivered).
Nothing else changes: the same messages reach the same workers. It reads two attributes
of Flower's in-memory link state (``lock``, ``message_ins_store``), not a public API, so
it installs itself only on the Flower version it was written against and otherwise
leaves the engine as it is, with a warning. :mod:`experiments.scale` uses it (and says
so in its report); ``--flower-polling stock`` measures the engine unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from queue import Queue
from threading import Event
from typing import Any

import flwr

PATCHED_FLOWER = "1.41."
"""Flower versions (prefix) whose simulation engine this patch was written against."""


def pending_nodes(state: Any) -> set[int]:
    """The nodes that have a message not yet delivered, from an in-memory link state."""
    with state.lock:
        return {
            message.metadata.dst_node_id
            for message in state.message_ins_store.values()
            if message.metadata.delivered_at == ""
        }


def pending_only_loop(
    state: Any, queue: Queue, nodes_mapping: Mapping[int, int], f_stop: Event
) -> None:
    """``add_messages_to_queue`` asking only the nodes with mail (same signature)."""
    while not f_stop.is_set():
        for node_id in pending_nodes(state):
            if node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
        f_stop.wait(0.1)


def poll_pending_nodes() -> bool:
    """Install :func:`pending_only_loop` in Flower's simulation engine; ``True`` if done."""
    from flwr.server.superlink.fleet.vce import vce_api

    original: Callable[..., None] | None = getattr(vce_api, "add_messages_to_queue", None)
    if not flwr.__version__.startswith(PATCHED_FLOWER) or original is None:
        warnings.warn(
            f"Flower {flwr.__version__}: the simulation engine's polling is left as it is "
            f"(the patch is for Flower {PATCHED_FLOWER}x)", stacklevel=2,
        )
        return False

    def add_messages_to_queue(
        state: Any, queue: Queue, nodes_mapping: Mapping[int, int], f_stop: Event
    ) -> None:
        if not (hasattr(state, "lock") and hasattr(state, "message_ins_store")):
            original(state, queue, nodes_mapping, f_stop)  # not the in-memory state
            return
        pending_only_loop(state, queue, nodes_mapping, f_stop)

    vce_api.add_messages_to_queue = add_messages_to_queue  # type: ignore[assignment]
    return True
