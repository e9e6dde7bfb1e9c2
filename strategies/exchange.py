"""Send messages over a Flower grid and collect their replies, polling briskly.

Flower 1.41's deployment grid (``HttpGrid.send_and_receive``) looks for replies every
3 s, so every exchange of a round ends on average 1.5 s after its last reply arrived (up
to 3 s). :func:`send_and_receive` does the same over the grid's public non-blocking calls
(``push_messages``, ``pull_messages``), looking after 0.05 s, then at doubling intervals
up to 0.5 s: a round of seconds pays tenths, a round of minutes one request a half
second. Same contract as Flower's: the replies that arrived before ``timeout``, in the
order they arrived; a missing one is simply absent. A grid without the non-blocking
calls (a test's stand-in) is asked with its own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.05
MAX_POLL_S = 0.5


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Push ``messages``, then pull their replies until all came or ``timeout`` passed.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The run's grid (deployment or simulation).
    messages : iterable of Message
        Messages to send.
    timeout : float
        Seconds to wait for the replies, from when the messages were pushed.

    Returns
    -------
    list of Message
        The replies received, each at most once.
    """
    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        return list(grid.send_and_receive(messages, timeout=timeout))
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    interval = FIRST_POLL_S
    while waiting:
        arrived = [m for m in grid.pull_messages(waiting)
                   if m.metadata.reply_to_message_id in waiting]
        replies.extend(arrived)
        waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        time.sleep(min(interval, left))
        interval = min(2 * interval, MAX_POLL_S)
    return replies
