"""RelayStrategy: QFLStrategy whose messages cross the SAGIN relay through a channel.

The base station's half of the relay layer (the UAV's half is
:func:`client.relay_mod.build_relay_mod`). Per round it

1. learns which UAV each new Flower node is, by asking it (a ``query`` message): the
   mapping comes from the clients, never from a shared file;
2. asks the topology for the round's links and leaves UAVs without a path out of the
   sampling (logged, counted as ``clients_no_path``);
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

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from relay.channels import Channel, ChannelRejected, ChannelReport
from relay.flower import (
    LINK_PREFIX,
    UAV_ID_KEY,
    UAV_RECORD,
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
from strategies.names import WEIGHTINGS
from strategies.qfl import QFLStrategy, RoundReport, UpdateRejected

if TYPE_CHECKING:
    from flwr.proto.node_pb2 import NodeInfo
    from flwr.supercore.run import Run

MAX_LOGGED_NODES = 20
"""Above this many nodes mapped at once, the log gives their number, not the list."""


@dataclass
class RelayRoundReport(RoundReport):
    """A round's replies plus what its messages cost on the relay.

    Attributes
    ----------
    clients_no_path : int
        Known nodes whose UAV had no path to the base station (not sampled).
    not_sent : dict[int, str]
        Sampled nodes whose training downlink could not be sent, with the reason.
    link_fidelity : dict[int, float]
        End-to-end fidelity of each messaged node's link.
    channel_reports : list[tuple[int, str, ChannelReport]]
        ``(node_id, direction, report)`` of every message: the base station's encode
        report for each downlink, its decode report for each uplink it could open, and
        the sender's own report for an uplink it could not.
    """

    clients_no_path: int = 0
    not_sent: dict[int, str] = field(default_factory=dict)
    link_fidelity: dict[int, float] = field(default_factory=dict)
    channel_reports: list[tuple[int, str, ChannelReport]] = field(default_factory=list)

    @property
    def keys_aborted(self) -> int:
        """Key exchanges of this round that aborted (both directions, train and evaluate)."""
        return sum(report.aborted for _node, _direction, report in self.channel_reports)

    def channel_figures(self) -> dict[str, Any]:
        """The round's channel figures, as they go into ``metrics.json``.

        ``fidelity`` is the mean end-to-end fidelity of the links used, ``qber`` the mean
        estimated QBER of the key exchanges (``None`` without either), ``latency_s`` the
        slowest node's summed message latencies (the round waits for it); Bell pairs,
        classical bits (teleport and swap signalling), key bits and bytes are totals.
        """
        reports = [report for _node, _direction, report in self.channel_reports]
        qbers = [report.qber for report in reports if report.qber is not None]
        latency_by_node: dict[int, float] = defaultdict(float)
        for node_id, _direction, report in self.channel_reports:
            latency_by_node[node_id] += report.latency_s
        fidelities = list(self.link_fidelity.values())
        return {
            "fidelity": sum(fidelities) / len(fidelities) if fidelities else None,
            "bell_pairs": sum(report.bell_pairs for report in reports),
            "classical_bits": sum(report.classical_bits for report in reports),
            "latency_s": max(latency_by_node.values(), default=0.0),
            "qber": sum(qbers) / len(qbers) if qbers else None,
            "key_bits": sum(report.key_bits for report in reports),
            "bytes_up": sum(r.n_bytes for _n, d, r in self.channel_reports if d == "up"),
            "bytes_down": sum(r.n_bytes for _n, d, r in self.channel_reports if d == "down"),
            "keys_aborted": self.keys_aborted,
            "clients_no_path": self.clients_no_path,
        }


class _NodeSubset(Grid):
    """A Grid seen through a filter: FedAvg's sampling only sees ``node_ids``; everything
    else is the wrapped grid's."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    # The rest of Grid, delegated (Grid's own get_nodes would list only node_ids).
    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


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
        Seconds to wait for nodes to say which UAV they are.
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
        query_timeout: float = 300.0,
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
        self.uav_of_node: dict[int, str] = {}
        self.unmapped: dict[int, str] = {}
        self._round_links: dict[int, dict[str, PathLink | None]] = {}
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
    def map_nodes(self, grid: Grid, wait: bool = False) -> dict[int, str]:
        """Ask every connected node not yet known which UAV it is.

        Parameters
        ----------
        grid : flwr.serverapp.Grid
            The run's grid.
        wait : bool
            First wait, as Flower's sampling does, until ``min_available_nodes`` nodes
            are connected (at start-up).

        Returns
        -------
        dict[int, str]
            The nodes mapped by this call. Nodes that answered with an error or an
            invalid claim are in :attr:`unmapped` with the reason and never sampled;
            nodes that did not answer, or for which the SuperLink answered with an
            error (a lost or expired reply), are asked again next round.
        """
        while wait and len(list(grid.get_node_ids())) < self.min_available_nodes:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(list(grid.get_node_ids())), self.min_available_nodes)
            time.sleep(1)
        unknown = sorted(
            node_id for node_id in grid.get_node_ids()
            if node_id not in self.uav_of_node and node_id not in self.unmapped
        )
        if not unknown:
            return {}
        queries = [
            Message(
                RecordDict({self.configrecord_key: ConfigRecord({"query": UAV_ID_KEY})}),
                dst_node_id=node_id,
                message_type=MessageType.QUERY,
            )
            for node_id in unknown
        ]
        replies = grid.send_and_receive(queries, timeout=self.query_timeout)
        mapped = self._record_claims(queries, replies)
        answered = mapped.keys() | self.unmapped.keys()
        silent = [node_id for node_id in unknown if node_id not in answered]
        if silent:
            log(WARNING, "Nodes %s did not say which UAV they are; asking again next round",
                silent)
        if len(mapped) > MAX_LOGGED_NODES:
            # A swarm's full list would be one line of tens of kilobytes; config.json has it.
            log(INFO, "Relay: %d nodes mapped to their UAVs (list in the run's config.json)",
                len(mapped))
        elif mapped:
            log(INFO, "Relay: %s", ", ".join(f"node {n} is {u}" for n, u in sorted(mapped.items())))
        return mapped

    def _record_claims(self, queries: list[Message], replies: Iterable[Message]) -> dict[int, str]:
        """Map the nodes whose replies name a free UAV of the topology; return them."""
        mapped: dict[int, str] = {}
        # Looked up once per reply: a scan of uav_of_node per reply is O(N²) with N nodes.
        holders = {uav_id: node_id for node_id, uav_id in self.uav_of_node.items()}
        # Errors the SuperLink makes up for a node carry its own id as sender.
        asked = {query.metadata.message_id: query.metadata.dst_node_id for query in queries}
        for reply in replies:
            node_id = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error() and reply.metadata.src_node_id != node_id:
                # The SuperLink answered for the node (its reply was lost or late): nothing
                # is known about the node itself, so it is asked again, not turned away.
                log(WARNING, "Node %s: no answer to the UAV query (%s)", node_id,
                    reply.error.reason)
                continue
            try:
                uav_id = self._claimed_uav(reply, holders)
            except ValueError as error:
                self.unmapped[node_id] = str(error)
                log(WARNING, "Node %s cannot join the relay: %s", node_id, error)
                continue
            self.uav_of_node[node_id] = uav_id
            holders[uav_id] = node_id
            mapped[node_id] = uav_id
        return mapped

    def _claimed_uav(self, reply: Message, holders: dict[str, int]) -> str:
        if reply.has_error():
            raise ValueError(reply.error.reason)
        record = reply.content.config_records.get(UAV_RECORD)
        uav_id = record.get(UAV_ID_KEY) if record is not None else None
        if not isinstance(uav_id, str) or uav_id not in self.topology.uav_ids:
            raise ValueError(
                f"claims UAV {uav_id!r}, which topology {self.topology.name!r} does not have "
                f"({', '.join(self.topology.uav_ids)})"
            )
        holder = holders.get(uav_id)
        if holder is not None:
            raise ValueError(f"claims {uav_id}, which node {holder} already is")
        return uav_id

    # --- which nodes have a path this round ------------------------------------------
    def links_for_round(self, server_round: int) -> dict[str, PathLink | None]:
        """Each UAV's link in ``server_round`` (computed once per round)."""
        if server_round not in self._round_links:
            self._round_links = {
                server_round: self.topology.links_for_round(server_round, self.seed)
            }
        return self._round_links[server_round]

    def _nodes_with_a_path(
        self, grid: Grid, server_round: int, needed: int, purpose: str
    ) -> tuple[list[int] | None, int]:
        """Known nodes whose UAV has a path, or ``None`` when fewer than ``needed`` do.

        Fewer reachable nodes than Flower's sampling needs would make it wait for nodes
        that are connected but out of reach until the round ends: the round is skipped
        instead.
        """
        self.map_nodes(grid)
        links = self.links_for_round(server_round)
        reachable: list[int] = []
        no_path: list[int] = []
        for node_id in grid.get_node_ids():
            uav_id = self.uav_of_node.get(node_id)
            if uav_id is None:
                continue
            (reachable if links.get(uav_id) is not None else no_path).append(node_id)
        if no_path:
            log(INFO, "Round %s: no relay path for %s: not sampled for %s", server_round,
                ", ".join(f"{self.uav_of_node[n]} (node {n})" for n in sorted(no_path)), purpose)
        # Flower samples by position in this list and node ids are random per start:
        # in UAV order, a seed samples the same UAVs in every run, resumed ones included.
        reachable.sort(key=self._uav_position)
        if len(reachable) < needed:
            log(WARNING, "Round %s: %s skipped: %d known UAV(s) have a relay path, %d needed",
                server_round, purpose, len(reachable), needed)
            return None, len(no_path)
        return reachable, len(no_path)

    def _report_for(self, server_round: int) -> RelayRoundReport:
        report = super()._report_for(server_round)
        # report_type is RelayRoundReport: every report this strategy makes is one.
        assert isinstance(report, RelayRoundReport)
        return report

    # --- Flower hooks ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample among nodes whose UAV has a path, then encode each downlink."""
        self._sent_links = {}
        needed = max(self.min_available_nodes, self.min_train_nodes)
        nodes, no_path = self._nodes_with_a_path(grid, server_round, needed, "training")
        if nodes is None:
            report = self._report_for(server_round)
            report.clients_no_path = no_path
            report.skipped = (
                f"fewer than {needed} known UAVs have a relay path ({no_path} without one)"
            )
            self._awaited = set()
            return []
        messages = super().configure_train(server_round, arrays, config, _NodeSubset(grid, nodes))
        self._report_for(server_round).clients_no_path = no_path
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation over the relay: same sampling rule, same downlink path."""
        if self.fraction_evaluate == 0.0:
            return []
        needed = max(self.min_available_nodes, self.min_evaluate_nodes)
        nodes, _no_path = self._nodes_with_a_path(grid, server_round, needed, "evaluation")
        if nodes is None:
            return []
        messages = super().configure_evaluate(
            server_round, arrays, config, _NodeSubset(grid, nodes)
        )
        encoded = (self.encode_downlink(message, server_round) for message in messages)
        return [message for message in encoded if message is not None]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate in UAV order (a fixed seed then fixes the sums), and say why if nothing."""
        # Unknown senders last; node id breaks ties.
        ordered = sorted(replies, key=lambda reply: self._uav_position(reply.metadata.src_node_id))
        arrays, metrics = super().aggregate_train(server_round, ordered)
        report = self._report_for(server_round)
        aborted = [r for _node, _direction, r in report.channel_reports if r.aborted]
        if aborted:
            qbers = [r.qber for r in aborted if r.qber is not None]
            qber = f"QBER {sum(qbers) / len(qbers):.3f}" if qbers else "no QBER estimate"
            if arrays is None:
                log(WARNING, "Round %s: no update aggregated: %d keys aborted (%s); "
                    "the global model stays as it was", server_round, len(aborted), qber)
            else:
                log(WARNING, "Round %s: %d keys aborted (%s); those updates were not sent",
                    server_round, len(aborted), qber)
        return arrays, metrics

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
        report.channel_reports.append((node_id, "down", sent))
        report.link_fidelity[node_id] = link.end_to_end_fidelity
        if sent.aborted:
            reason = f"{category} downlink not sent: {sent.reason}"
            if category == MessageType.TRAIN:
                report.not_sent[node_id] = reason
            log(WARNING, "Round %s: %s (%s) %s", server_round, uav_id, node_id, reason)
            return None
        self._sent_links[(server_round, category, node_id)] = link
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
        report = self._report_for(server_round)
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
                report.channel_reports.append((node_id, "up", sender))
            raise UpdateRejected(
                f"{self.channel.name} channel rejected the uplink: {rejection.reason}"
            ) from None
        report.channel_reports.append((node_id, "up", received))
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
        """Sample count, times the link's end-to-end fidelity for ``samples-x-fidelity``."""
        if self.weighting == "samples":
            return weight
        key = (server_round, message_category(message.metadata.message_type),
               message.metadata.src_node_id)
        return weight * self._sent_links[key].end_to_end_fidelity

    def _uav_position(self, node_id: int) -> tuple[int, int]:
        """Sort key of a node: its UAV's place in the topology, then its id."""
        uav_id = self.uav_of_node.get(node_id)
        unknown = len(self._uav_index)
        position = unknown if uav_id is None else self._uav_index.get(uav_id, unknown)
        return position, node_id
