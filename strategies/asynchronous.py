"""The asynchronous mode's strategy: FedBuff over the relay, on an emulated mission clock.

:class:`AsyncRelayStrategy` is a :class:`~strategies.relay.RelayStrategy` whose unit of
work is one *job* (one UAV training from one global version), not a round. The ServerApp's
event loop (:func:`server.asynchronous.run_async`) asks it to

- :meth:`~AsyncRelayStrategy.dispatch` jobs to free UAVs that have a path now: each job
  gets a job number (the ``server-round`` its messages carry, so every message's header,
  replay memory entry and random stream is its own), the links of the topology at the
  mission time it starts, the global version it trains from, and the mission time its
  update will reach the base station: the UAV's compute model (``train_s`` in the
  topology file), then waiting for the UAV's next contact window when its path is gone
  by then (the channels' message latency is reported in ``latency_s``, not put on the
  clock);
- :meth:`~AsyncRelayStrategy.receive` each reply in the order of those delivery times:
  open it with the channel, check it, and hold it in the buffer with its staleness
  (versions the global model advanced meanwhile) and staleness weight; an update older
  than ``max-staleness`` versions is rejected with that reason;
- :meth:`~AsyncRelayStrategy.flush` the buffer once ``buffer-size`` updates are held:
  every update's step is applied to the current version (:func:`strategies.buffer.rebase`),
  screened and aggregated with the base station's rules, and the global version advances.

Every accepted update is in exactly one buffer: a job is resolved once (its reply, its
error, or its deadline), and a reply that arrives twice is the same message id.

Mission time and the topology: mission time ``t`` is topology time ``round_duration_s +
t`` (topology round ``r`` places the nodes at ``r x round_duration_s``, so mission time 0
is where synchronous round 1 starts). A job travels on the links of the moment it is sent
(:meth:`relay.topology.Topology.links_at`); when its UAV can deliver comes from the run's
contact plan (:class:`relay.contacts.ContactPlan`, computed once, extended when a job
looks past its end).

With ``hierarchy='relays'`` a job whose path shares a relay (a HAP, a satellite) with
another known UAV's path at that moment goes through it (:mod:`strategies.hierarchy`):
the relay keeps one copy of each global version, holds the updates that reach it, and
forwards one aggregate of them when the buffer is flushed. A UAV is then given new work
only once its previous update has been aggregated.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from relay.contacts import ContactPlan
from relay.link import PathLink
from relay.topology import RoundLinks
from strategies.buffer import rebase, staleness_factor
from strategies.hierarchy import (
    Held,
    Partial,
    RelayEmulator,
    RelayRefused,
    Route,
    combine,
    finish,
    plan_routes,
)
from strategies.means import weighted_aggregate
from strategies.names import HIERARCHIES, STALENESS_WEIGHTINGS
from strategies.qfl import UpdateRejected, decode_update
from strategies.relay import RelayRoundReport, RelayStrategy
from strategies.relay_hierarchy import FlatEntry, screen_at_base_station
from strategies.robust import robust_aggregate, screen_updates

PLAN_HORIZON_S = 4 * 3600.0
"""Mission time the contact plan first covers; doubled when a job looks past its end."""

MAX_PLAN_HORIZON_S = 7 * 86_400.0
"""Longest contact plan: a UAV with no window within a week is not given work."""

PLAN_STEP_S = 30.0
PLAN_TOLERANCE_S = 1.0
"""The contact plan's sampling step and edge precision (s): a window shorter than the step
may be missed; an edge is known to a second."""


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
    content: RecordDict
    message: Message


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
    hierarchy : {"none", "relays"}
        ``relays``: shared relays hold and aggregate their UAVs' updates.
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
        hierarchy: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.optimizer is not None:  # FedBuff takes its own server step per version
            raise ValueError("a server optimizer needs synchronous rounds (mode 'sync')")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if staleness_weighting not in STALENESS_WEIGHTINGS:
            raise ValueError(
                f"staleness_weighting {staleness_weighting!r} is not known; use one of "
                f"{', '.join(STALENESS_WEIGHTINGS)}"
            )
        if hierarchy not in HIERARCHIES:
            raise ValueError(
                f"hierarchy {hierarchy!r} is not known; use one of {', '.join(HIERARCHIES)}"
            )
        if hierarchy == "relays" and self.aggregation != "fedavg":
            raise ValueError("aggregation at the relays needs aggregation 'fedavg'")
        self.buffer_size = buffer_size
        self.max_staleness = max_staleness
        self.staleness_weighting = staleness_weighting
        self.staleness_exponent = staleness_exponent
        self.emulator = (
            RelayEmulator(self.channel, self.run_id, self.seed, self._periods(), self.rules,
                          self.weighting, self.bill, self.weighted_by_key,
                          self.metricrecord_key)
            if hierarchy == "relays" else None
        )
        self.version = 0
        self.clock_s = 0.0
        self.next_job = 1
        self.buffer: list[Buffered] = []
        self._plan: ContactPlan | None = None
        self._links_now: tuple[float, RoundLinks] | None = None
        self._job_links: dict[int, Mapping[str, PathLink | None]] = {}
        self._job_routes: dict[int, Route] = {}
        self._held_jobs: dict[int, Job] = {}  # node -> job whose update a relay holds
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
    def topology_time_s(self, mission_s: float) -> float:
        """Topology time of mission time ``mission_s``."""
        return self.topology.round_duration_s + mission_s

    def links_now(self) -> RoundLinks:
        """Each UAV's link at the current mission time."""
        if self._links_now is None or self._links_now[0] != self.clock_s:
            self._links_now = (self.clock_s, self.topology.links_at(
                self.topology_time_s(self.clock_s), self.seed))
        return self._links_now[1]

    def links_for_round(self, server_round: int) -> Mapping[str, PathLink | None]:
        """The links a job's messages travel on: those of the moment it was sent. (Before
        the first job, the start-up draw asks for the first round's.)"""
        links = self._job_links.get(server_round)
        return links if links is not None else self.topology.links_for_round(
            server_round, self.seed)

    @property
    def contact_plan(self) -> ContactPlan:
        """The run's contact plan, in topology time (computed when first needed)."""
        if self._plan is None:
            self._plan = self._compute_plan(PLAN_HORIZON_S)
        return self._plan

    def _compute_plan(self, horizon_s: float) -> ContactPlan:
        started = time.perf_counter()
        plan = ContactPlan.compute(self.topology, horizon_s, self.seed, PLAN_STEP_S,
                                   PLAN_TOLERANCE_S)
        log(INFO, "Contact plan: %d UAVs over %.0f s of topology time in %.1f s",
            len(plan.uav_ids), horizon_s, time.perf_counter() - started)
        return plan

    def next_contact_s(self, uav_id: str, mission_s: float) -> float | None:
        """Earliest mission time from ``mission_s`` at which ``uav_id`` has a path, or
        ``None`` if none within :data:`MAX_PLAN_HORIZON_S` of topology time."""
        at = self.topology_time_s(mission_s)
        while True:
            plan = self.contact_plan
            contact = plan.next_contact(uav_id, at)
            if contact is not None or plan.horizon_s >= MAX_PLAN_HORIZON_S:
                return None if contact is None else contact - self.topology.round_duration_s
            if at < plan.horizon_s and not plan.windows(uav_id):
                # No window at all so far: look further only once the clock gets there.
                return None
            self._plan = self._compute_plan(min(2 * plan.horizon_s, MAX_PLAN_HORIZON_S))

    def next_any_contact_s(self) -> float | None:
        """Earliest mission time after now at which a known UAV's window opens."""
        times = [t for uav in set(self.uav_of_node.values())
                 if (t := self.next_contact_s(uav, self.clock_s + PLAN_TOLERANCE_S)) is not None]
        return min(times, default=None)

    def _report_for(self, server_round: int) -> RelayRoundReport:
        # Every message's figures go to the version being built, whatever its job number.
        return self._open

    # --- jobs -------------------------------------------------------------------------
    def dispatch(
        self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, wanted: int,
        busy: set[int],
    ) -> list[tuple[Job, Message]]:
        """Give up to ``wanted`` free UAVs with a path now a job on ``arrays``.

        A UAV is free when no job of its node is in flight (``busy``) and, with relays,
        no relay holds its last update; it is given work only when its update could be
        delivered (a contact window after it finishes, :data:`MAX_PLAN_HORIZON_S`).
        """
        if wanted <= 0:
            return []
        if self.version not in self._bases:
            self.set_round_model(arrays)
            self._bases[self.version] = dict(self._reference)
        links = self.links_now()
        busy_uavs = {self.uav_of_node.get(node) for node in busy | set(self._held_jobs)}
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
        routes = self._routes(links) if self.emulator is not None else {}
        sent: list[tuple[Job, Message]] = []
        for node_id in draw.nodes:
            number = self.next_job
            self.next_job += 1
            self._job_links[number] = links
            uav_id = self.uav_of_node[node_id]
            message = self._messages([node_id], number, arrays, ConfigRecord(dict(config)),
                                     MessageType.TRAIN)[0]
            route = routes.get(uav_id)
            if route is not None and route.relay is not None:
                self._job_routes[number] = route
                encoded = self._through_relay(message, number, route)
            else:
                encoded = self.encode_downlink(message, number)
            if encoded is None:
                self._job_links.pop(number, None)
                self._job_routes.pop(number, None)
                continue
            deliver_s = self._delivery_s(uav_id, links[uav_id])
            assert deliver_s is not None  # the draw took only deliverable UAVs
            self._open.clients_sampled += 1
            self._open.jobs["sent"].append(number)
            sent.append((Job(number, node_id, uav_id, self.version, self.clock_s, deliver_s),
                         encoded))
        return sent

    def _routes(self, links: RoundLinks) -> dict[str, Route]:
        """Routes of the known UAVs with a path now: who would meet at which relay."""
        usable = {uav: link for uav in sorted(set(self.uav_of_node.values()),
                                              key=lambda u: self._uav_index.get(u, 0))
                  if (link := links[uav]) is not None}
        return plan_routes(usable, links.segment)

    def _through_relay(self, message: Message, number: int, route: Route) -> Message | None:
        """One job's downlink through its relay (the relay's copy of this version)."""
        assert self.emulator is not None
        node_id = message.metadata.dst_node_id
        arrays = message.content[self.arrayrecord_key]
        assert isinstance(arrays, ArrayRecord)
        self._open.relay_of_node[node_id] = route.relay or ""
        self._open.link_fidelity[node_id] = route.link.end_to_end_fidelity
        try:
            envelope, link = self.emulator.downlink(
                arrays, route, message.metadata.message_type, number, node_id,
                copy_round=self.version,
            )
        except RelayRefused as refusal:
            self._open.not_sent[node_id] = f"train downlink not sent: {refusal.reason}"
            log(WARNING, "Job %s: %s (%s) train downlink not sent: %s", number,
                route.link.uav_id, node_id, refusal.reason)
            return None
        return self.seal_for_link(message, number, envelope, link)

    def _delivery_s(self, uav_id: str, link: PathLink | None) -> float | None:
        """Mission time the update of a job starting now reaches the base station."""
        if link is None:
            return None
        # The channels' message latency is reported, not put on the clock (as for a
        # synchronous round, server.recorder): compute time, then waiting for contact.
        return self.next_contact_s(uav_id, self.clock_s + self.topology.train_seconds(uav_id))

    def resolve_failed(self, job: Job, reason: str) -> None:
        """A job that ended without an update (error reply, deadline)."""
        self._open.failed[job.node_id] = reason
        self._open.jobs["failed"].append(job.number)
        self._forget(job)
        log(WARNING, "Job %s (%s, node %s) failed: %s", job.number, job.uav_id, job.node_id,
            reason)

    def receive(self, reply: Message, job: Job) -> None:
        """Open, check and buffer one job's update (at its relay, with relays), or record
        why it is rejected."""
        staleness = self.version - job.version
        route = self._job_routes.get(job.number)
        try:
            if staleness > self.max_staleness:
                raise UpdateRejected(
                    f"stale: trained from version {job.version}, the model is at version "
                    f"{self.version} (max-staleness {self.max_staleness})"
                )
            if route is not None and self.emulator is not None:
                self.emulator.receive(reply.content, route, reply.metadata.message_type,
                                      job.number, job.node_id, self._specs)
                self._held_jobs[job.node_id] = job
                self._forget(job)
                return
            content = self.decode_uplink(reply, job.number)
            values, weight = decode_update(
                content, self._specs, self.weighted_by_key, self.arrayrecord_key,
                self.metricrecord_key,
            )
            weight = self.weigh_update(reply, weight, job.number)
        except UpdateRejected as rejection:
            self._reject(self._open, self.version + 1, job.node_id, rejection.reason)
            self._open.jobs["rejected"].append(job.number)
            self._forget(job)
            return
        self.buffer.append(Buffered(job, values, weight * self._factor(job), content, reply))
        self._forget(job)

    def _forget(self, job: Job) -> None:
        self._sent_links.pop((job.number, MessageType.TRAIN, job.node_id), None)
        self._job_links.pop(job.number, None)
        self._job_routes.pop(job.number, None)

    @property
    def held_at_relays(self) -> bool:
        """Whether a relay holds an update (its UAV gets no new work until a version)."""
        return bool(self._held_jobs)

    @property
    def held_count(self) -> int:
        """Updates held, at the base station and at relays."""
        return len(self.buffer) + len(self._held_jobs)

    @property
    def buffer_full(self) -> bool:
        """Whether ``buffer-size`` updates are held (at the base station or relays)."""
        return self.held_count >= self.buffer_size

    def _factor(self, job: Job) -> float:
        return staleness_factor(self.version - job.version, self.staleness_weighting,
                                self.staleness_exponent)

    def flush(
        self, arrays: ArrayRecord, in_flight: list[Job]
    ) -> tuple[ArrayRecord, MetricRecord | None, AsyncRoundReport]:
        """Aggregate the buffer (and the relays' aggregates) into the next version.

        Returns the new arrays (the old ones when every update was screened out), the
        aggregated training metrics and the version's report, which also joins
        :attr:`reports`.
        """
        report = self._open
        report.emulated_time_s = self.clock_s
        report.jobs["in_flight"] = sorted(job.number for job in in_flight)
        current = {name: array.numpy() for name, array in arrays.items()}
        held, self.buffer = self.buffer, []
        flat: list[FlatEntry] = [
            (update.job.node_id, update.message, update.content,
             rebase(update.values, self._bases[update.job.version], current, self._periods()),
             update.weight)
            for update in held
        ]
        used: list[Job] = []
        rejected: list[Job] = []
        if self.emulator is not None:
            relayed_jobs, self._held_jobs = self._held_jobs, {}

            def prepare(update: Held) -> Held:
                job = relayed_jobs[update.node_id]
                values = rebase(update.values, self._bases[job.version], current,
                                self._periods())
                return dataclasses.replace(update, values=values,
                                           weight=update.weight * self._factor(job))

            flushed = self.emulator.flush(current, self._specs, MessageType.TRAIN,
                                          report.server_round, prepare)
            kept_flat, kept_relayed = screen_at_base_station(
                self, report, report.server_round, flat, flushed, current)
            jobs_of_flat = {id(entry): update.job for entry, update in zip(flat, held, strict=True)}
            kept_ids = {id(entry) for entry in kept_flat} | {id(f) for f in kept_relayed}
            used = [jobs_of_flat[id(e)] for e in kept_flat] + [
                relayed_jobs[h.node_id] for f in kept_relayed for h in f.members]
            rejected = [jobs_of_flat[id(e)] for e in flat if id(e) not in kept_ids] + [
                relayed_jobs[node] for node in flushed.rejected]
            rejected += [relayed_jobs[h.node_id] for f in flushed.forwarded
                         if id(f) not in kept_ids for h in f.members]
            partials = [Partial.of_update(values, weight, self._periods())
                        for _n, _m, _c, values, weight in kept_flat]
            partials += [f.partial for f in kept_relayed]
            contents = [(c, w) for _n, _m, c, _v, w in kept_flat] + [
                (h.content, h.samples) for f in kept_relayed for h in f.members]
            if partials:
                arrays = finish(combine(partials), self._specs, self._periods())
        else:
            screened = screen_updates([entry[3] for entry in flat],
                                      [update.weight for update in held], current,
                                      self._periods(), self.rules)
            for index in sorted(screened):
                self._reject(report, report.server_round, held[index].job.node_id,
                             screened[index])
            kept = [index for index in range(len(held)) if index not in screened]
            used = [held[i].job for i in kept]
            rejected = [held[i].job for i in sorted(screened)]
            contents = [(held[i].content, held[i].weight) for i in kept]
            if kept:
                updates = [flat[i][3] for i in kept]
                if self.aggregation == "fedavg":
                    arrays = weighted_aggregate(updates, [held[i].weight for i in kept],
                                                self._periods())
                else:
                    arrays = robust_aggregate(updates, current, self._periods(),
                                              self.aggregation, self.trim_fraction)
        metrics = None
        if used:
            metrics = self.train_metrics_aggr_fn(
                [self._metrics_content(content, weight) for content, weight in contents],
                self.weighted_by_key,
            )
        else:
            report.skipped = "every buffered update was rejected"
            log(WARNING, "Version %s: %s; the global model is unchanged", report.server_round,
                report.skipped)
        report.clients_used = len(used)
        report.versions_used = [job.version for job in used]
        report.staleness = [self.version - job.version for job in used]
        report.jobs["used"] = [job.number for job in used]
        report.jobs["rejected"] += [job.number for job in rejected]
        self.reports.append(report)
        self.version += 1
        self._open = AsyncRoundReport(self.version + 1)
        referenced = {job.version for job in in_flight}
        self._bases = {v: base for v, base in self._bases.items() if v in referenced}
        log(INFO, "Version %s aggregated at mission time %.1f s: %d update(s) (staleness %s), "
            "%d in flight", self.version, self.clock_s, len(used),
            ", ".join(map(str, report.staleness)) or "-", len(in_flight))
        return arrays, metrics, report
