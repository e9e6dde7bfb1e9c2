"""RelayStrategy: QFLStrategy whose messages cross the SAGIN relay through a channel.

The base station's half of the relay layer (the UAV's half is
:func:`client.relay_mod.build_relay_mod`). Per round it

1. draws the round's nodes along a seeded order (:mod:`strategies.discovery`), asking
   a node which UAV it is (a ``query`` message) when it is first drawn: the mapping
   comes from the clients, never from a shared file, and the queries of a round grow
   with the nodes it needs, not with the federation;
2. asks the topology for the round's links and passes over drawn UAVs without a path
   (logged, counted as ``clients_no_path``);
3. encodes the global model per node with the channel (:meth:`encode_downlink`) and
   sends the link's parameters in the node's ConfigRecord; a downlink whose key
   exchange aborted is not sent at all;
4. decodes every update (:meth:`decode_uplink`): whatever the channel rejects becomes an
   :class:`~strategies.qfl.UpdateRejected` with the channel's reason, logged and counted,
   never aggregated;
5. optionally weights updates by their link's end-to-end fidelity
   (:meth:`weigh_update`), and aggregates in UAV order so a seed fixes the result.

The figures each message cost are collected in a :class:`RelayRoundReport`.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from relay.channels import Channel, ChannelRejected, ChannelReport
from relay.flower import (
    LINK_PREFIX,
    UPLINK_PREFIX,
    message_category,
    message_header,
    message_rng,
    report_from_metrics,
    seal,
    unbind_weight,
)
from relay.link import PathLink
from relay.topology import Topology
from strategies.devices import UavDevices
from strategies.discovery import MAX_LOGGED_NODES, Draw, NodeDirectory
from strategies.names import WEIGHTINGS
from strategies.qfl import QFLStrategy, RoundReport, UpdateRejected

QUERY_TIMEOUT_S = 60.0
"""Seconds a round waits for a batch of UAV queries; a node that misses it is asked again
when next drawn."""

STARTUP_QUERY_TIMEOUT_S = 300.0
"""Seconds the first draw, before the run folder is written, waits: every node's first
message starts a fresh ClientApp process in deployment, slow on a loaded machine."""


@dataclass
class RelayRoundReport(RoundReport):
    """A round's replies plus what its messages cost on the relay.

    Attributes
    ----------
    clients_no_path : int
        Drawn nodes passed over because their UAV had no path to the base station.
    uav_queries : int
        UAV query messages sent while drawing this round's nodes (training and evaluation).
    refused : dict[int, str]
        Nodes first asked in this round that cannot join the relay, with the reason.
    not_sent : dict[int, str]
        Sampled nodes whose training downlink could not be sent, with the reason.
    link_fidelity : dict[int, float]
        End-to-end fidelity of each messaged node's link.
    channel_reports : list[tuple[int, str, ChannelReport]]
        ``(node_id, direction, report)`` of every message a UAV sent or received: the
        ServerApp's encode report for each downlink, its decode report for each uplink
        it could open, and the sender's own report for an uplink it could not.
    relay_reports : list[tuple[str, str, ChannelReport]]
        ``(relay, direction, report)`` of every message between an aggregating relay and
        the base station (``hierarchy='relays'``, :mod:`strategies.hierarchy`).
    relay_of_node : dict[int, str]
        The relay each node's messages went through, for nodes whose relay aggregates.
    bills : list[tuple[tuple[str, ...], ChannelReport]]
        The path each message crossed (node names, from the UAV side) with its report:
        every message of the two lists above, once.
    """

    clients_no_path: int = 0
    uav_queries: int = 0
    refused: dict[int, str] = field(default_factory=dict)
    not_sent: dict[int, str] = field(default_factory=dict)
    link_fidelity: dict[int, float] = field(default_factory=dict)
    channel_reports: list[tuple[int, str, ChannelReport]] = field(default_factory=list)
    relay_reports: list[tuple[str, str, ChannelReport]] = field(default_factory=list)
    relay_of_node: dict[int, str] = field(default_factory=dict)
    bills: list[tuple[tuple[str, ...], ChannelReport]] = field(default_factory=list)
    space_messages: int = 0

    @property
    def keys_aborted(self) -> int:
        """Key exchanges of this round that aborted (both directions, train and evaluate)."""
        return sum(report.aborted for report in self.all_reports())

    def all_reports(self) -> list[ChannelReport]:
        """Every message's report: the UAVs' (:attr:`channel_reports`), then the relays'."""
        return [report for _node, _direction, report in self.channel_reports] + [
            report for _relay, _direction, report in self.relay_reports
        ]

    def hops(self) -> dict[str, dict[str, int | float]]:
        """What crossed each hop this round, by ``"<a>><b>"`` in path order from the UAV.

        Every message is billed on each hop of the path it crossed: its bytes and
        classical bits travel every hop, each end-to-end Bell pair over N hops consumes
        one elementary pair per hop (teleport, and BB84's signals for ``qkd``), and the
        key bits are those of the key the message's two ends agreed. ``latency_s`` sums
        the latencies of the messages that crossed the hop. Without aggregating relays a
        message crosses its UAV's whole path; with them, a UAV's messages cross its lower
        segment and one aggregate per relay the upper one.
        """
        bill: dict[str, dict[str, int | float]] = {}
        for path, report in self.bills:
            for first, second in zip(path, path[1:], strict=False):
                hop = bill.setdefault(f"{first}>{second}", {
                    "messages": 0, "bell_pairs": 0, "classical_bits": 0, "key_bits": 0,
                    "bytes": 0, "latency_s": 0.0,
                })
                hop["messages"] += 1
                hop["bell_pairs"] += report.bell_pairs
                hop["classical_bits"] += report.classical_bits
                hop["key_bits"] += report.key_bits
                hop["bytes"] += report.n_bytes
                hop["latency_s"] += report.latency_s
        return dict(sorted(bill.items()))

    def channel_figures(self) -> dict[str, Any]:
        """The round's channel figures, as they go into ``metrics.json``.

        ``fidelity`` is the mean end-to-end fidelity of the links used, ``qber`` the mean
        estimated QBER of the key exchanges (``None`` without either), ``latency_s`` the
        slowest node's summed message latencies (the round waits for it); Bell pairs,
        classical bits (teleport and swap signalling), key bits and bytes are totals
        over every message (a relay's aggregate included); ``hops`` bills each hop
        (:meth:`hops`) and ``space_messages`` counts the messages that crossed a hop
        with a LEO satellite at one end.
        """
        reports = self.all_reports()
        qbers = [report.qber for report in reports if report.qber is not None]
        latency_by_node: dict[int, float] = defaultdict(float)
        for node_id, _direction, report in self.channel_reports:
            latency_by_node[node_id] += report.latency_s
        latency_by_relay: dict[str, float] = defaultdict(float)
        for relay, _direction, report in self.relay_reports:
            latency_by_relay[relay] += report.latency_s
        # A node behind an aggregating relay also waits for the relay's own messages.
        for node_id, relay in self.relay_of_node.items():
            if node_id in latency_by_node:
                latency_by_node[node_id] += latency_by_relay[relay]
        directions = [(d, r) for _n, d, r in self.channel_reports] + [
            (d, r) for _relay, d, r in self.relay_reports
        ]
        fidelities = list(self.link_fidelity.values())
        return {
            "fidelity": sum(fidelities) / len(fidelities) if fidelities else None,
            "bell_pairs": sum(report.bell_pairs for report in reports),
            "classical_bits": sum(report.classical_bits for report in reports),
            "latency_s": max(latency_by_node.values(), default=0.0),
            "qber": sum(qbers) / len(qbers) if qbers else None,
            "key_bits": sum(report.key_bits for report in reports),
            "bytes_up": sum(r.n_bytes for d, r in directions if d == "up"),
            "bytes_down": sum(r.n_bytes for d, r in directions if d == "down"),
            "keys_aborted": self.keys_aborted,
            "clients_no_path": self.clients_no_path,
            "hops": self.hops(),
            "space_messages": self.space_messages,
        }


class RelayStrategy(QFLStrategy):
    """QFLStrategy over a relay channel and a SAGIN topology.

    Parameters
    ----------
    channel : relay.channels.Channel
        The base station's end of the channel (for ``qkd``: every UAV's pre-shared secret).
    topology : relay.topology.Topology
        The SAGIN topology; ``topology.uav_ids`` are the UAVs nodes may claim.
    run_id : int or str
        Flower run id, bound into every message's header.
    seed : int
        Run seed: mobility of the topology and the channels' emulated physics.
    weighting : {"samples", "samples-x-fidelity"}
        How accepted updates are weighted.
    query_timeout : float
        Seconds a round waits for a batch of UAV queries.
    startup_query_timeout : float
        Seconds :meth:`first_draw` waits for its queries (before the first round).
    **kwargs
        Passed to :class:`strategies.qfl.QFLStrategy`.
    """

    report_type = RelayRoundReport

    def __init__(
        self,
        channel: Channel,
        topology: Topology,
        run_id: int | str,
        seed: int = 0,
        weighting: str = "samples",
        query_timeout: float = QUERY_TIMEOUT_S,
        startup_query_timeout: float = STARTUP_QUERY_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting {weighting!r} is not known; use one of {', '.join(WEIGHTINGS)}"
            )
        self.channel = channel
        self.topology = topology
        self._uav_index = {uav_id: index for index, uav_id in enumerate(topology.uav_ids)}
        self.run_id = run_id
        self.seed = seed
        self.weighting = weighting
        self.query_timeout = query_timeout
        self.startup_query_timeout = startup_query_timeout
        # With dp the draw must be secret for sampling to amplify privacy: its order then
        # comes from the operating system's entropy, not from the run's public seed.
        draw_seed = seed if self.privacy is None else secrets.randbits(62)
        self.directory = NodeDirectory(
            topology.uav_ids, topology.name, self.configrecord_key, draw_seed
        )
        self._early_queries = 0
        self.devices = UavDevices()  # the ServerApp sets the run's (task.devices)
        self._leo_nodes = frozenset(node.name for node in topology.nodes if node.layer == "leo")
        self._round_links: dict[int, Mapping[str, PathLink | None]] = {}
        # (round, category, node) -> link the message was encoded for; uplinks decode on it.
        self._sent_links: dict[tuple[int, str, int], PathLink] = {}

    def summary(self) -> None:
        """Log the QFLStrategy summary plus the relay settings."""
        super().summary()
        log(
            INFO,
            "\t└──> Relay: %s channel, topology %s (%d UAVs), weighting %s",
            self.channel.name, self.topology.name, len(self.topology.uav_ids), self.weighting,
        )

    # --- which UAV is which node ---------------------------------------------------
    @property
    def uav_of_node(self) -> dict[int, str]:
        """Node id -> UAV id of every node that has said which UAV it is."""
        return self.directory.uav_of_node

    @uav_of_node.setter
    def uav_of_node(self, mapping: dict[int, str]) -> None:
        self.directory.uav_of_node = mapping

    @property
    def unmapped(self) -> dict[int, str]:
        """Node id -> reason, for every node refused (it cannot join the relay)."""
        return self.directory.unmapped

    def map_nodes(self, grid: Grid, timeout: float | None = None) -> dict[int, str]:
        """Ask every connected node not yet known which UAV it is, in one batch.

        One message per node: the rounds never do this (they ask nodes as they are
        drawn, :meth:`first_draw`, :meth:`configure_train`); it is for tools and tests
        that want a whole federation mapped at once.

        Returns
        -------
        dict[int, str]
            The nodes mapped by this call. Nodes that answered with an error or an
            invalid claim are in :attr:`unmapped` with the reason and never drawn;
            nodes that did not answer, or for which the SuperLink answered with an
            error (a lost or expired reply), stay unknown.
        """
        unknown = sorted(n for n in grid.get_node_ids() if not self.directory.known(n))
        mapped, _refused = self.directory.ask(
            grid, unknown, self.startup_query_timeout if timeout is None else timeout
        )
        return mapped

    def first_draw(self, grid: Grid, server_round: int) -> Draw:
        """Before the run starts: wait for the nodes, then draw ``server_round``'s.

        Waits, as Flower's sampling does, until ``min_available_nodes`` nodes are
        connected, then asks the nodes the first round will train which UAV they are
        (every node of a federation small enough to be asked at once,
        :data:`strategies.discovery.ASK_ALL_FACTOR`), with the longer start-up timeout.
        The caller decides what a refused node means at this point (the ServerApp stops
        the run). The round itself draws again, from what is known by then.
        """
        while len(list(grid.get_node_ids())) < self.min_available_nodes:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(list(grid.get_node_ids())), self.min_available_nodes)
            time.sleep(1)
        started = time.perf_counter()
        draw = self._draw(grid, server_round, "training", self.fraction_train,
                          self.min_train_nodes, self.startup_query_timeout)
        log(INFO, "Start-up: round %s's nodes drawn in %.1f s (%d UAV queries)", server_round,
            time.perf_counter() - started, draw.queries)
        # Counted in the round's figures: they are that round's queries, sent early.
        self._early_queries += draw.queries
        return draw

    # --- which nodes have a path this round ------------------------------------------
    def links_for_round(self, server_round: int) -> Mapping[str, PathLink | None]:
        """Each UAV's link in ``server_round`` (computed once per round)."""
        if server_round not in self._round_links:
            self._round_links = {
                server_round: self.topology.links_for_round(server_round, self.seed)
            }
        return self._round_links[server_round]

    def _draw(
        self, grid: Grid, server_round: int, purpose: str, fraction: float, min_nodes: int,
        timeout: float,
    ) -> Draw:
        """Draw ``purpose``'s nodes of ``server_round``, as many as Flower would sample.

        Flower samples ``max(int(connected * fraction), min_nodes)`` nodes; the draw
        takes that many nodes whose UAV has a path, or all it can find. Too few
        connected nodes (below ``min_available_nodes``) draw nothing.
        """
        connected = list(grid.get_node_ids())
        if len(connected) < self.min_available_nodes:
            log(WARNING, "Round %s: %s skipped: %d node(s) connected, %d needed",
                server_round, purpose, len(connected), self.min_available_nodes)
            return Draw()
        links = self.links_for_round(server_round)
        wanted = max(int(len(connected) * fraction), min_nodes)
        draw = self.directory.draw(
            grid, connected, server_round, purpose, wanted,
            lambda uav_id: links.get(uav_id) is not None, timeout, needed=min_nodes,
        )
        if draw.passed_over:
            log(INFO, "Round %s: no relay path for %s: not sampled for %s", server_round,
                ", ".join(f"{self.uav_of_node[n]} (node {n})"
                          for n in sorted(draw.passed_over)[:MAX_LOGGED_NODES]), purpose)
        log(INFO, "Round %s: %s draws %d of %d wanted node(s) (%d connected, %d known, "
            "%d UAV queries)", server_round, purpose, len(draw.nodes), wanted, len(connected),
            len(self.uav_of_node), draw.queries)
        return draw

    def _report_for(self, server_round: int) -> RelayRoundReport:
        report = super()._report_for(server_round)
        # report_type is RelayRoundReport: every report this strategy makes is one.
        assert isinstance(report, RelayRoundReport)
        return report

    def _messages(
        self, node_ids: list[int], server_round: int, arrays: ArrayRecord, config: ConfigRecord,
        message_type: str,
    ) -> list[Message]:
        """One message per node with the global arrays and ``config``, as FedAvg makes them."""
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=message_type, dst_node_id=node_id)
                for node_id in node_ids]

    # --- Flower hooks ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Draw the round's nodes (asking new ones which UAV they are), then encode each
        downlink."""
        self._sent_links = {}
        self._awaited = set()
        if self.fraction_train == 0.0:
            return []
        self.set_round_model(arrays)
        draw = self._draw(grid, server_round, "training", self.fraction_train,
                          self.min_train_nodes, self.query_timeout)
        needed = max(self.min_available_nodes, self.min_train_nodes)
        if len(draw.nodes) < needed:
            report = self._record_draw(server_round, draw)
            report.clients_no_path = len(draw.passed_over)
            report.skipped = (
                f"fewer than {needed} UAVs with a relay path found ({len(draw.nodes)} found; "
                f"{len(draw.passed_over)} drawn without a path, {len(draw.silent)} silent, "
                f"{len(draw.refused)} refused)"
            )
            log(WARNING, "Round %s: training skipped: %s", server_round, report.skipped)
            return []
        messages = self._messages(draw.nodes, server_round, arrays, config, MessageType.TRAIN)
        sent = self.dispatch_train(server_round, messages, self._pool_size(grid, server_round))
        self._record_draw(server_round, draw).clients_no_path = len(draw.passed_over)
        return sent

    def sender_id(self, node_id: int) -> str:
        """The node's UAV (the privacy ledger counts a UAV's updates across restarts)."""
        return self.uav_of_node.get(node_id, super().sender_id(node_id))

    def _pool_size(self, grid: Grid, server_round: int) -> int:
        """How many nodes the round's training draw chose from, at least: connected nodes
        whose UAV has a path (every connected node is one UAV of the topology, so at
        least ``connected + with a path - UAVs`` of them). A smaller pool only makes the
        accountant's sampling rate larger, and its epsilon safer."""
        connected = len(list(grid.get_node_ids()))
        with_path = sum(link is not None for link in self.links_for_round(server_round).values())
        return min(connected, connected + with_path - len(self.topology.uav_ids))

    def _record_draw(self, server_round: int, draw: Draw) -> RelayRoundReport:
        """Count a draw's queries and refusals in the round's report; return the report."""
        report = self._report_for(server_round)
        report.uav_queries += draw.queries + self._early_queries
        self._early_queries = 0
        report.refused.update(draw.refused)
        return report

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation over the relay: drawn the same way, same downlink path."""
        if self.fraction_evaluate == 0.0:
            return []
        draw = self._draw(grid, server_round, "evaluation", self.fraction_evaluate,
                          self.min_evaluate_nodes, self.query_timeout)
        self._record_draw(server_round, draw)
        needed = max(self.min_available_nodes, self.min_evaluate_nodes)
        if len(draw.nodes) < needed:
            log(WARNING, "Round %s: evaluation skipped: %d UAV(s) with a relay path found, "
                "%d needed", server_round, len(draw.nodes), needed)
            return []
        messages = self._messages(draw.nodes, server_round, arrays, config,
                                  MessageType.EVALUATE)
        encoded = (self.encode_downlink(message, server_round) for message in messages)
        return [message for message in encoded if message is not None]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate in UAV order (a fixed seed then fixes the sums), and say why if nothing."""
        # Unknown senders last; node id breaks ties.
        ordered = sorted(replies, key=lambda reply: self._uav_position(reply.metadata.src_node_id))
        arrays, metrics = super().aggregate_train(server_round, ordered)
        self._log_aborted_keys(server_round, arrays is not None)
        return arrays, metrics

    def _log_aborted_keys(self, server_round: int, aggregated: bool) -> None:
        """Say, once per round, how many key exchanges aborted and what that cost."""
        report = self._report_for(server_round)
        aborted = [r for r in report.all_reports() if r.aborted]
        if aborted:
            qbers = [r.qber for r in aborted if r.qber is not None]
            qber = f"QBER {sum(qbers) / len(qbers):.3f}" if qbers else "no QBER estimate"
            if not aggregated:
                log(WARNING, "Round %s: no update aggregated: %d keys aborted (%s); "
                    "the global model stays as it was", server_round, len(aborted), qber)
            else:
                log(WARNING, "Round %s: %d keys aborted (%s); those updates were not sent",
                    server_round, len(aborted), qber)

    def bill(
        self, server_round: int, sender: int | str, direction: str, path: tuple[str, ...],
        sent: ChannelReport,
    ) -> None:
        """Count one message's channel report in ``server_round``'s figures.

        ``sender`` is the UAV's node id for a message a UAV sends or receives, or the
        name of an aggregating relay for a message between it and the base station;
        ``path`` the nodes the message crossed, from the UAV side.
        """
        report = self._report_for(server_round)
        if isinstance(sender, str):
            report.relay_reports.append((sender, direction, sent))
        else:
            report.channel_reports.append((sender, direction, sent))
        report.bills.append((tuple(path), sent))
        if self._leo_nodes.intersection(path):
            report.space_messages += 1

    # --- relay hooks of QFLStrategy ---------------------------------------------------
    def encode_downlink(self, message: Message, server_round: int) -> Message | None:
        """Replace the plain arrays by the channel's envelope for this node's link.

        Returns ``None`` (the node is left out) when the channel could not carry the
        payload, for example an aborted key exchange or no secret for the node's UAV:
        nothing is sent in the clear.
        """
        node_id = message.metadata.dst_node_id
        message_type = message.metadata.message_type
        uav_id = self.uav_of_node[node_id]
        link = self.links_for_round(server_round)[uav_id]
        # Nodes are sampled only among those whose UAV has a link this round.
        assert link is not None
        arrays = message.content[self.arrayrecord_key]
        assert isinstance(arrays, ArrayRecord)  # FedAvg's configure_* put the model there
        report = self._report_for(server_round)
        category = message_category(message_type)
        try:
            envelope, sent = self.channel.encode(
                arrays,
                link,
                message_header(self.run_id, message_type, server_round, node_id, "down"),
                message_rng(self.seed, message_type, server_round, uav_id, "down"),
            )
        except ChannelRejected as refusal:
            # This end cannot send on the link at all (qkd: no secret for that UAV).
            reason = f"{category} downlink not sent: {refusal.reason}"
            if category == MessageType.TRAIN:
                report.not_sent[node_id] = reason
            log(WARNING, "Round %s: %s (%s) %s", server_round, uav_id, node_id, reason)
            return None
        self.bill(server_round, node_id, "down", link.path, sent)
        report.link_fidelity[node_id] = link.end_to_end_fidelity
        if sent.aborted:
            reason = f"{category} downlink not sent: {sent.reason}"
            if category == MessageType.TRAIN:
                report.not_sent[node_id] = reason
            log(WARNING, "Round %s: %s (%s) %s", server_round, uav_id, node_id, reason)
            return None
        return self.seal_for_link(message, server_round, envelope, link)

    def seal_for_link(
        self, message: Message, server_round: int, envelope: RecordDict, link: PathLink
    ) -> Message:
        """Put ``envelope`` in ``message`` with the link's parameters in its ConfigRecord,
        and remember the link: the node's reply is decoded on it."""
        category = message_category(message.metadata.message_type)
        self._sent_links[(server_round, category, message.metadata.dst_node_id)] = link
        # Each node gets its own ConfigRecord: FedAvg shares one record between messages.
        shared_config = message.content[self.configrecord_key]
        assert isinstance(shared_config, ConfigRecord)
        config = ConfigRecord({**shared_config, **link.to_config(LINK_PREFIX)})
        message.content = seal(envelope, {self.configrecord_key: config})
        return message

    def decode_uplink(self, message: Message, server_round: int) -> RecordDict:
        """Open one node's update with the channel, or reject it with the channel's reason.

        Raises
        ------
        UpdateRejected
            No link was sent to this node this round; the channel rejected the envelope
            (tampered, replayed, misrouted, aborted key...); or the weight bound to the
            payload is missing or differs from the reply's metric.
        """
        node_id = message.metadata.src_node_id
        message_type = message.metadata.message_type
        link = self._sent_links.get((server_round, message_category(message_type), node_id))
        if link is None:
            raise UpdateRejected(
                f"no relay link was sent to node {node_id} in round {server_round}"
            )
        content = message.content
        metrics = content.metric_records.get(self.metricrecord_key)
        if metrics is None:
            raise UpdateRejected(f"reply lacks the '{self.metricrecord_key}' record")
        try:
            arrays, received = self.channel.decode(
                content,
                link,
                message_header(self.run_id, message_type, server_round, node_id, "up"),
                message_rng(self.seed, message_type, server_round, link.uav_id, "up"),
            )
        except ChannelRejected as rejection:
            # Count what the sender says it spent, since nothing was received.
            sender = report_from_metrics(metrics, UPLINK_PREFIX, self.channel.name)
            if sender is not None:
                self.bill(server_round, node_id, "up", link.path, sender)
            raise UpdateRejected(
                f"{self.channel.name} channel rejected the uplink: {rejection.reason}"
            ) from None
        self.bill(server_round, node_id, "up", link.path, received)
        try:
            model, bound_weight = unbind_weight(arrays)
        except ValueError as error:
            raise UpdateRejected(str(error)) from None
        claimed = metrics.get(self.weighted_by_key)
        if claimed is not None and claimed != bound_weight:
            raise UpdateRejected(
                f"metric '{self.weighted_by_key}' = {claimed!r} differs from the value bound "
                f"to the payload ({bound_weight:g}): changed in transit?"
            )
        return RecordDict({self.arrayrecord_key: model, self.metricrecord_key: metrics})

    def weigh_update(self, message: Message, weight: float, server_round: int) -> float:
        """Sample count, times the link's end-to-end fidelity for ``samples-x-fidelity``,
        or the UAV's device's expected circuit fidelity for ``calibration``."""
        if self.weighting == "samples":
            return weight
        if self.weighting == "calibration":
            uav_id = self.uav_of_node[message.metadata.src_node_id]
            return weight * self.devices.fidelity.get(uav_id, 1.0)
        key = (server_round, message_category(message.metadata.message_type),
               message.metadata.src_node_id)
        return weight * self._sent_links[key].end_to_end_fidelity

    def update_depth(self, message: Message) -> int | None:
        """Circuit layers the sender's UAV runs (run config ``device-map``)."""
        return self.devices.depth.get(self.uav_of_node.get(message.metadata.src_node_id, ""))

    def _uav_position(self, node_id: int) -> tuple[int, int]:
        """Sort key of a node: its UAV's place in the topology, then its id."""
        uav_id = self.uav_of_node.get(node_id)
        unknown = len(self._uav_index)
        position = unknown if uav_id is None else self._uav_index.get(uav_id, unknown)
        return position, node_id
