"""The asynchronous mode's strategy: FedBuff over the relay, on an emulated mission clock.

:class:`AsyncRelayStrategy` is a :class:`~strategies.relay.RelayStrategy` whose unit of
work is one *job* (one UAV training from one global version), not a round. The ServerApp's
event loop (:func:`server.asynchronous.run_async`) asks it to

- :meth:`~AsyncRelayStrategy.dispatch` jobs to free UAVs that have a path now: each job
  gets a job number (the ``server-round`` its messages carry, so every message's header,
  replay memory entry and random stream is its own), the links of the topology at the
  mission time it starts, the global version it trains from, and the mission time its
  update will reach the base station: downlink latency, the UAV's compute model
  (``train_s`` in the topology file), then waiting for the UAV's next contact window
  when its path is gone by then, then the uplink;
- :meth:`~AsyncRelayStrategy.receive` each reply in the order of those delivery times:
  open it with the channel, check it, and hold it in the buffer with its staleness
  (versions the global model advanced meanwhile) and staleness weight; an update older
  than ``max-staleness`` versions is rejected with that reason;
- :meth:`~AsyncRelayStrategy.flush` the buffer once ``buffer-size`` updates are held:
  every update's step is applied to the current version (:func:`strategies.buffer.rebase`),
  screened and aggregated with the base station's rules, and the global version advances.

Every accepted update is in exactly one buffer: a job is resolved once (its reply, its
error, or its deadline), and a reply that arrives twice is the same message id.

Mission time and the topology: topology round ``r`` places the nodes at ``r x
round_duration_s`` (as a synchronous round ``r`` does); mission time ``t`` is topology
time ``round_duration_s + t``, so mission time 0 is where synchronous round 1 starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from relay.link import PathLink
from strategies.buffer import rebase, staleness_factor
from strategies.names import STALENESS_WEIGHTINGS
from strategies.qfl import UpdateRejected, decode_update, weighted_aggregate
from strategies.relay import RelayRoundReport, RelayStrategy
from strategies.robust import robust_aggregate, screen_updates

MAX_CONTACT_WAIT_SLOTS = 1000
"""Topology rounds a finished UAV may wait for its next contact window; a UAV that would
wait longer is not given work (its update could not be delivered)."""


@dataclass
class AsyncRoundReport(RelayRoundReport):
    """One aggregation (global version) of the asynchronous mode, with what it took.

    Attributes
    ----------
    versions_used : list[int]
        The global version each aggregated update was trained from.
    staleness : list[int]
        Each aggregated update's staleness (versions the model advanced meanwhile).
    emulated_time_s : float
        Mission time of the aggregation.
    jobs : dict[str, list[int]]
        Job numbers by fate, each job in exactly one list of one version: ``sent`` while
        this version was built; ``used`` (aggregated into it), ``rejected`` and
        ``failed`` when taken; ``in_flight`` still training when it was made.
    """

    versions_used: list[int] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    emulated_time_s: float = 0.0
    jobs: dict[str, list[int]] = field(default_factory=lambda: {
        "sent": [], "used": [], "rejected": [], "failed": [], "in_flight": []})

    @property
    def in_flight(self) -> int:
        """Jobs still training when the version was made."""
        return len(self.jobs["in_flight"])


@dataclass(frozen=True)
class Job:
    """One UAV training from one global version.

    Attributes
    ----------
    number : int
        Job number: the ``server-round`` of its messages.
    node_id : int
        Flower node.
    uav_id : str
        The node's UAV.
    version : int
        Global version it trains from.
    dispatched_s : float
        Mission time it was sent.
    deliver_s : float
        Mission time its update reaches the base station.
    """

    number: int
    node_id: int
    uav_id: str
    version: int
    dispatched_s: float
    deliver_s: float


@dataclass(frozen=True)
class Buffered:
    """A checked update held in the buffer."""

    job: Job
    values: dict[str, np.ndarray]
    weight: float
    staleness: int
    content: RecordDict


class AsyncRelayStrategy(RelayStrategy):
    """FedBuff over the relay (see the module doc).

    Parameters
    ----------
    buffer_size : int
        Updates aggregated into each new global version (K).
    max_staleness : int
        Updates more versions old than this are rejected.
    staleness_weighting : {"constant", "polynomial"}
        Weight factor rule (:func:`strategies.buffer.staleness_factor`).
    staleness_exponent : float
        Exponent of the polynomial rule.
    **kwargs
        Passed to :class:`strategies.relay.RelayStrategy`.
    """

    report_type = AsyncRoundReport

    def __init__(
        self,
        buffer_size: int = 5,
        max_staleness: int = 10,
        staleness_weighting: str = "polynomial",
        staleness_exponent: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if staleness_weighting not in STALENESS_WEIGHTINGS:
            raise ValueError(
                f"staleness_weighting {staleness_weighting!r} is not known; use one of "
                f"{', '.join(STALENESS_WEIGHTINGS)}"
            )
        self.buffer_size = buffer_size
        self.max_staleness = max_staleness
        self.staleness_weighting = staleness_weighting
        self.staleness_exponent = staleness_exponent
        self.version = 0
        self.clock_s = 0.0
        self.next_job = 1
        self.buffer: list[Buffered] = []
        self._job_slot: dict[int, int] = {}
        self._slot_links: dict[int, Mapping[str, PathLink | None]] = {}
        self._bases: dict[int, dict[str, np.ndarray]] = {}
        self._open = AsyncRoundReport(1)

    # --- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The version, the mission clock and the next job number (the buffer is empty
        right after an aggregation, when checkpoints are written)."""
        return {"version": self.version, "clock_s": self.clock_s, "next_job": self.next_job}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`'s values."""
        expected = {"version", "clock_s", "next_job"}
        if set(state) != expected:
            raise ValueError(
                f"an asynchronous run's checkpoint holds {sorted(expected)}, this one "
                f"{sorted(state)}"
            )
        self.version = int(state["version"])
        self.clock_s = float(state["clock_s"])
        self.next_job = int(state["next_job"])
        self._open = AsyncRoundReport(self.version + 1)

    # --- the mission clock and the topology --------------------------------------------
    def slot_at(self, mission_s: float) -> int:
        """Topology round in which mission time ``mission_s`` falls."""
        return int((mission_s + self.topology.round_duration_s) // self.topology.round_duration_s)

    def slot_start_s(self, slot: int) -> float:
        """Mission time at which topology round ``slot`` starts."""
        return (slot - 1) * self.topology.round_duration_s

    def links_at_slot(self, slot: int) -> Mapping[str, PathLink | None]:
        """Each UAV's link in topology round ``slot`` (a few recent slots are kept)."""
        if slot not in self._slot_links:
            if len(self._slot_links) >= 64:
                self._slot_links.pop(min(self._slot_links))
            self._slot_links[slot] = self.topology.links_for_round(slot, self.seed)
        return self._slot_links[slot]

    def links_for_round(self, server_round: int) -> Mapping[str, PathLink | None]:
        """The links a job's messages travel on: those of the topology round it started
        in. (Before the first job, the start-up draw asks for the first round's.)"""
        return self.links_at_slot(self._job_slot.get(server_round, server_round))

    def next_contact_s(self, uav_id: str, mission_s: float) -> float | None:
        """Earliest mission time from ``mission_s`` at which ``uav_id`` has a path, or
        ``None`` if it has none within :data:`MAX_CONTACT_WAIT_SLOTS` topology rounds."""
        first = self.slot_at(mission_s)
        for slot in range(first, first + MAX_CONTACT_WAIT_SLOTS + 1):
            if self.links_at_slot(slot)[uav_id] is not None:
                return max(mission_s, self.slot_start_s(slot))
        return None

    def _report_for(self, server_round: int) -> RelayRoundReport:
        # Every message's figures go to the version being built, whatever its job number.
        return self._open

    # --- jobs -------------------------------------------------------------------------
    def dispatch(
        self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, wanted: int,
        busy: set[int],
    ) -> list[tuple[Job, Message]]:
        """Give up to ``wanted`` free UAVs with a path now a job on ``arrays``.

        A UAV is free when no job of its node is in flight (``busy``); it is given work
        only when its update could be delivered (a contact window within
        :data:`MAX_CONTACT_WAIT_SLOTS` topology rounds after it finishes).
        """
        if wanted <= 0:
            return []
        if self.version not in self._bases:
            self.set_round_model(arrays)
            self._bases[self.version] = dict(self._reference)
        slot = self.slot_at(self.clock_s)
        links = self.links_at_slot(slot)
        busy_uavs = {self.uav_of_node.get(node) for node in busy}
        connected = list(grid.get_node_ids())
        draw = self.directory.draw(
            grid, connected, self.next_job, "training", wanted,
            lambda uav: uav not in busy_uavs and links.get(uav) is not None
            and self._delivery_s(uav, links[uav]) is not None,
            self.query_timeout, needed=0,
        )
        # The start-up draw's queries count with the first version's.
        self._open.uav_queries += draw.queries + self._early_queries
        self._early_queries = 0
        self._open.refused.update(draw.refused)
        sent: list[tuple[Job, Message]] = []
        for node_id in draw.nodes:
            number = self.next_job
            self.next_job += 1
            self._job_slot[number] = slot
            uav_id = self.uav_of_node[node_id]
            message = self._messages([node_id], number, arrays, ConfigRecord(dict(config)),
                                     MessageType.TRAIN)[0]
            encoded = self.encode_downlink(message, number)
            if encoded is None:
                continue
            deliver_s = self._delivery_s(uav_id, links[uav_id])
            assert deliver_s is not None  # the draw took only deliverable UAVs
            self._open.clients_sampled += 1
            self._open.jobs["sent"].append(number)
            sent.append((Job(number, node_id, uav_id, self.version, self.clock_s, deliver_s),
                         encoded))
        return sent

    def _delivery_s(self, uav_id: str, link: PathLink | None) -> float | None:
        """Mission time the update of a job starting now reaches the base station."""
        if link is None:
            return None
        done = self.clock_s + link.latency_s + self.topology.train_seconds(uav_id)
        contact = self.next_contact_s(uav_id, done)
        return None if contact is None else contact + link.latency_s

    def resolve_failed(self, job: Job, reason: str) -> None:
        """A job that ended without an update (error reply, deadline)."""
        self._open.failed[job.node_id] = reason
        self._open.jobs["failed"].append(job.number)
        self._forget(job)
        log(WARNING, "Job %s (%s, node %s) failed: %s", job.number, job.uav_id, job.node_id,
            reason)

    def receive(self, reply: Message, job: Job) -> None:
        """Open, check and buffer one job's update, or record why it is rejected."""
        try:
            content = self.decode_uplink(reply, job.number)
            values, weight = decode_update(
                content, self._specs, self.weighted_by_key, self.arrayrecord_key,
                self.metricrecord_key,
            )
            weight = self.weigh_update(reply, weight, job.number)
            staleness = self.version - job.version
            if staleness > self.max_staleness:
                raise UpdateRejected(
                    f"stale: trained from version {job.version}, the model is at version "
                    f"{self.version} (max-staleness {self.max_staleness})"
                )
        except UpdateRejected as rejection:
            self._reject(self._open, self.version + 1, job.node_id, rejection.reason)
            self._open.jobs["rejected"].append(job.number)
            self._forget(job)
            return
        factor = staleness_factor(staleness, self.staleness_weighting, self.staleness_exponent)
        self.buffer.append(Buffered(job, values, weight * factor, staleness, content))
        self._sent_links.pop((job.number, "train", job.node_id), None)

    def _forget(self, job: Job) -> None:
        self._sent_links.pop((job.number, "train", job.node_id), None)
        self._job_slot.pop(job.number, None)

    @property
    def buffer_full(self) -> bool:
        """Whether the buffer holds ``buffer-size`` updates."""
        return len(self.buffer) >= self.buffer_size

    def flush(
        self, arrays: ArrayRecord, in_flight: list[Job]
    ) -> tuple[ArrayRecord, MetricRecord | None, AsyncRoundReport]:
        """Aggregate the buffer into the next global version.

        Returns the new arrays (the old ones when every update was screened out), the
        aggregated training metrics and the version's report, which also joins
        :attr:`reports`.
        """
        report = self._open
        report.emulated_time_s = self.clock_s
        report.jobs["in_flight"] = sorted(job.number for job in in_flight)
        current = {name: array.numpy() for name, array in arrays.items()}
        held, self.buffer = self.buffer, []
        rebased = [rebase(update.values, self._bases[update.job.version], current,
                          self._periods()) for update in held]
        screened = screen_updates(rebased, [update.weight for update in held], current,
                                  self._periods(), self.rules)
        for index in sorted(screened):
            self._reject(report, report.server_round, held[index].job.node_id, screened[index])
            report.jobs["rejected"].append(held[index].job.number)
        kept = [index for index in range(len(held)) if index not in screened]
        metrics = None
        if kept:
            updates = [rebased[index] for index in kept]
            if self.aggregation == "fedavg":
                arrays = weighted_aggregate(updates, [held[i].weight for i in kept],
                                            self._periods())
            else:
                arrays = robust_aggregate(updates, current, self._periods(), self.aggregation,
                                          self.trim_fraction)
            metrics = self.train_metrics_aggr_fn(
                [self._metrics_content(held[i].content, held[i].weight) for i in kept],
                self.weighted_by_key,
            )
        else:
            report.skipped = f"every one of the {len(held)} buffered updates was rejected"
            log(WARNING, "Version %s: %s; the global model is unchanged", report.server_round,
                report.skipped)
        report.clients_used = len(kept)
        report.versions_used = [held[i].job.version for i in kept]
        report.staleness = [held[i].staleness for i in kept]
        report.jobs["used"] = [held[i].job.number for i in kept]
        for update in held:
            self._job_slot.pop(update.job.number, None)
        self.reports.append(report)
        self.version += 1
        self._open = AsyncRoundReport(self.version + 1)
        referenced = {job.version for job in in_flight}
        self._bases = {v: base for v, base in self._bases.items() if v in referenced}
        log(INFO, "Version %s aggregated at mission time %.1f s: %d update(s) (staleness %s), "
            "%d in flight", self.version, self.clock_s, len(kept),
            ", ".join(map(str, report.staleness)) or "-", len(in_flight))
        return arrays, metrics, report

