"""The ServerApp's asynchronous loop (run config ``mode='async'``): FedBuff over Flower's
non-blocking grid calls.

Up to ``concurrency`` UAVs train at once; each reply is taken in the order of its job's
mission-time delivery (:mod:`strategies.asynchronous`), so a seed fixes the run whatever
order the replies come back in over the network; new work goes out as soon as a reply is
taken, and every ``buffer-size`` updates make a new global version. ``num-server-rounds``
counts versions; ``end_of_version`` records, evaluates and checkpoints each one.

A job ends exactly once: with its reply, with the error the node or the SuperLink sent
instead, or when ``round-timeout`` seconds of wall time passed since it was sent (a UAV
that died). A reply pulled twice, or one for a job already ended, is ignored.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.asynchronous import AsyncRelayStrategy, Job
from strategies.exchange import FIRST_POLL_S, MAX_POLL_S
from strategies.qfl import one_line_reason

MAX_IDLE_SLOTS = 1000
"""Topology rounds the loop skips ahead, with nothing in flight, looking for a UAV with a
path; past that the run stops early, said in the log."""


def run_async(
    strategy: AsyncRelayStrategy,
    grid: Grid,
    arrays: ArrayRecord,
    last_version: int,
    train_config: ConfigRecord,
    concurrency: int,
    end_of_version: Callable[[int, ArrayRecord], None],
    timeout: float = 3600.0,
) -> ArrayRecord:
    """Train until the global model reaches ``last_version``; return its arrays.

    Parameters
    ----------
    strategy : AsyncRelayStrategy
        Holds the version, the mission clock, the buffer and the relay.
    grid : flwr.serverapp.Grid
        The run's grid; needs ``push_messages`` and ``pull_messages``.
    arrays : ArrayRecord
        The global model at ``strategy.version``.
    last_version : int
        ``num-server-rounds``.
    train_config : ConfigRecord
        What every training message carries besides its job number.
    concurrency : int
        Jobs in flight at most.
    end_of_version : Callable[[int, ArrayRecord], None]
        Called with each new version and its arrays.
    timeout : float
        Wall seconds a job may take before it counts as failed.
    """
    strategy.round_timeout = timeout
    strategy.set_round_model(arrays)
    jobs: dict[str, Job] = {}  # message id -> job in flight
    deadlines: dict[str, float] = {}
    order: list[tuple[float, int, str]] = []  # (delivery, job number, message id)
    arrived: dict[str, Message] = {}
    interval = FIRST_POLL_S
    idle_slots = 0  # topology rounds skipped in a row without sending any work
    while strategy.version < last_version:
        free = concurrency - len(jobs)
        if free > 0:
            busy = {job.node_id for job in jobs.values()}
            sent = strategy.dispatch(grid, arrays, train_config, free, busy)
            if sent:
                ids = list(grid.push_messages([message for _job, message in sent]))
                now = time.monotonic()
                for (job, _message), message_id in zip(sent, ids, strict=True):
                    jobs[message_id] = job
                    deadlines[message_id] = now + timeout
                    heapq.heappush(order, (job.deliver_s, job.number, message_id))
                interval = FIRST_POLL_S
                idle_slots = 0
        if not jobs and strategy.held_at_relays:
            # Every UAV that could train holds an update at its relay until the next
            # version (buffer-size above the UAVs there are): make it with what is held.
            log(INFO, "Version %d made from %d held update(s): no UAV is free to fill the "
                "buffer of %d", strategy.version + 1, strategy.held_count,
                strategy.buffer_size)
            arrays, _metrics, _report = strategy.flush(arrays, [])
            end_of_version(strategy.version, arrays)
            continue
        if not jobs:
            skipped = _wait_for_contact(strategy)
            idle_slots += skipped
            if not skipped or idle_slots > MAX_IDLE_SLOTS:
                log(WARNING, "Asynchronous run stopped at version %d: no UAV has a path in "
                    "the next %d topology rounds", strategy.version, MAX_IDLE_SLOTS)
                break
            continue
        deliver_s, _number, head = order[0]
        if head not in arrived and time.monotonic() < deadlines[head]:
            for reply in grid.pull_messages(list(jobs)):
                reply_to = reply.metadata.reply_to_message_id
                if reply_to in jobs and reply_to not in arrived:
                    arrived[reply_to] = reply
            if head not in arrived:
                time.sleep(max(0.0, min(interval, deadlines[head] - time.monotonic())))
                interval = min(2 * interval, MAX_POLL_S)
                continue
        heapq.heappop(order)
        job = jobs.pop(head)
        deadlines.pop(head)
        taken = arrived.pop(head, None)
        strategy.clock_s = max(strategy.clock_s, deliver_s)
        if taken is None:
            strategy.resolve_failed(job, f"no reply before the deadline ({timeout:g} s)")
        elif taken.has_error():
            strategy.resolve_failed(job, one_line_reason(str(taken.error.reason)))
        else:
            strategy.receive(taken, job)
        if strategy.buffer_full:
            arrays, metrics, _report = strategy.flush(arrays, list(jobs.values()))
            if metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
            end_of_version(strategy.version, arrays)
    if jobs:
        log(INFO, "Asynchronous run done at version %d; %d job(s) still training are not "
            "waited for", strategy.version, len(jobs))
    return arrays


def _wait_for_contact(strategy: AsyncRelayStrategy) -> int:
    """Move the mission clock to the next opening of a known UAV's contact window (at
    least one topology round on, when every UAV in contact was passed over); return the
    topology rounds skipped, 0 if no window opens within the contact plan's reach."""
    step = strategy.topology.round_duration_s
    opening = strategy.next_any_contact_s()
    if opening is None:
        return 0
    skipped = max(opening - strategy.clock_s, step)
    strategy.clock_s += skipped
    log(INFO, "No UAV could be given work: mission clock moved to %.1f s", strategy.clock_s)
    return max(1, round(skipped / step))
