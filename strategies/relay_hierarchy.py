"""HierarchicalRelayStrategy: RelayStrategy whose shared relays aggregate (``hierarchy='relays'``).

Per round, the sampled UAVs whose paths meet at a relay (a HAP, a LEO satellite) are
grouped (:func:`strategies.hierarchy.plan_routes`); a flat UAV travels exactly as under
:class:`~strategies.relay.RelayStrategy`. For a grouped UAV the relay, emulated in this
process by :class:`~strategies.hierarchy.RelayEmulator`, receives the global model once
over the upper segment and sends it on over the lower one; the UAV is told its lower
segment and answers over it. The relay decodes, checks, screens and averages the updates
that reach it and forwards one aggregate with its total weight; the base station screens
the flat updates and the relays' aggregates together and merges them as one weighted
mean (angles on the circle), which over an ideal channel is the flat mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log

from relay.flower import message_category
from relay.topology import RoundLinks
from strategies.hierarchy import (
    Flushed,
    Forwarded,
    Partial,
    RelayEmulator,
    RelayRefused,
    Route,
    combine,
    finish,
    plan_routes,
)
from strategies.qfl import UpdateRejected, decode_update, one_line_reason, split_replies
from strategies.relay import RelayRoundReport, RelayStrategy
from strategies.robust import screen_updates


class HierarchicalRelayStrategy(RelayStrategy):
    """RelayStrategy with aggregation at the relays shared by several sampled UAVs.

    Takes :class:`~strategies.relay.RelayStrategy`'s parameters; ``aggregation`` must be
    ``"fedavg"`` (a relay forwards one weighted mean). ``emulator`` is the relays' end.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.aggregation != "fedavg":
            raise ValueError(
                f"aggregation at the relays needs aggregation 'fedavg', not "
                f"{self.aggregation!r}: a {self.aggregation} of relays' aggregates is not "
                f"the {self.aggregation} of the updates"
            )
        self.emulator = RelayEmulator(
            self.channel, self.run_id, self.seed, self._periods(), self.rules,
            self.weighting, self.bill, self.weighted_by_key, self.metricrecord_key,
        )
        # (round, category) -> UAV -> route; only the current round is kept.
        self._routes: dict[tuple[int, str], dict[str, Route]] = {}

    def routes(self, server_round: int, category: str = MessageType.TRAIN) -> dict[str, Route]:
        """The routes of the UAVs messaged for ``category`` in ``server_round``."""
        return self._routes.get((server_round, category), {})

    def _messages(
        self, node_ids: list[int], server_round: int, arrays: ArrayRecord, config: ConfigRecord,
        message_type: str,
    ) -> list[Message]:
        """Plan the drawn UAVs' routes (who meets at which relay), then make the messages."""
        links = self.links_for_round(server_round)
        if not isinstance(links, RoundLinks):
            raise TypeError("aggregation at the relays needs the topology's RoundLinks")
        uavs = sorted((self.uav_of_node[node] for node in node_ids),
                      key=lambda uav: self._uav_index.get(uav, len(self._uav_index)))
        usable = {uav: links[uav] for uav in uavs}
        routes = plan_routes({u: link for u, link in usable.items() if link is not None},
                             links.segment)
        self._routes = {
            **{key: value for key, value in self._routes.items() if key[0] == server_round},
            (server_round, message_category(message_type)): routes,
        }
        return super()._messages(node_ids, server_round, arrays, config, message_type)

    def encode_downlink(self, message: Message, server_round: int) -> Message | None:
        """A flat UAV's downlink as before; a grouped UAV's through its relay."""
        node_id = message.metadata.dst_node_id
        message_type = message.metadata.message_type
        category = message_category(message_type)
        route = self.routes(server_round, category).get(self.uav_of_node[node_id])
        if route is None or route.relay is None:
            return super().encode_downlink(message, server_round)
        arrays = message.content[self.arrayrecord_key]
        assert isinstance(arrays, ArrayRecord)  # FedAvg's configure_* put the model there
        report = self._report_for(server_round)
        report.relay_of_node[node_id] = route.relay
        report.link_fidelity[node_id] = route.link.end_to_end_fidelity
        try:
            envelope, link = self.emulator.downlink(
                arrays, route, message_type, server_round, node_id
            )
        except RelayRefused as refusal:
            reason = f"{category} downlink not sent: {refusal.reason}"
            if category == MessageType.TRAIN:
                report.not_sent[node_id] = reason
            log(WARNING, "Round %s: %s (%s) %s", server_round, route.link.uav_id, node_id,
                reason)
            return None
        return self.seal_for_link(message, server_round, envelope, link)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Updates meet at their relays, then relay aggregates and flat updates at the base
        station; skipped, as before, with fewer accepted updates than needed."""
        ordered = sorted(replies, key=lambda reply: self._uav_position(reply.metadata.src_node_id))
        valid, failed = split_replies(ordered, "train")
        report = self._report_for(server_round)
        for message in failed:
            report.failed[self._failed_node(message)] = one_line_reason(str(message.error.reason))
        self._record_missing(server_round, ordered, report)
        routes = self.routes(server_round)
        flat: list[tuple[int, Message, RecordDict, dict[str, np.ndarray], float]] = []
        for message in valid:
            node_id = message.metadata.src_node_id
            route = routes.get(self.uav_of_node.get(node_id, ""))
            try:
                if (route is not None and route.relay is not None
                        and (server_round, MessageType.TRAIN, node_id) in self._sent_links):
                    self.emulator.receive(message.content, route, message.metadata.message_type,
                                          server_round, node_id, self._specs)
                    continue
                content = self.decode_uplink(message, server_round)
                values, weight = decode_update(content, self._specs, self.weighted_by_key,
                                               self.arrayrecord_key, self.metricrecord_key)
            except UpdateRejected as rejection:
                self._reject(report, server_round, node_id, rejection.reason)
                continue
            flat.append((node_id, message, content, values, weight))
        flushed = self.emulator.flush(self._reference, self._specs, MessageType.TRAIN,
                                      server_round)
        kept_flat, kept_relayed = screen_at_base_station(
            self, report, server_round, flat, flushed, self._reference
        )
        report.clients_used = len(kept_flat) + sum(len(f.members) for f in kept_relayed)
        needed = max(self.min_train_nodes, 1)
        if report.clients_used < needed:
            if report.skipped is None:
                report.skipped = (f"{report.clients_used} update(s) accepted, {needed} needed "
                                  f"(min-train-nodes)")
            report.clients_used = 0
            log(WARNING, "Round %s skipped: %s; the global model is unchanged",
                server_round, report.skipped)
            self._log_aborted_keys(server_round, False)
            return None, None
        periods = self._periods()
        partials = [
            Partial.of_update(values, self.weigh_update(message, weight, server_round), periods)
            for _node, message, _content, values, weight in kept_flat
        ] + [f.partial for f in kept_relayed]
        arrays = self.server_step(server_round, finish(combine(partials), self._specs, periods))
        metrics = self.train_metrics_aggr_fn(
            [self._metrics_content(content, weight) for _n, _m, content, _v, weight in kept_flat]
            + [self._metrics_content(h.content, h.samples) for f in kept_relayed
               for h in f.members],
            self.weighted_by_key,
        )
        self._log_aborted_keys(server_round, True)
        return arrays, metrics


FlatEntry = tuple[int, Message, RecordDict, dict[str, np.ndarray], float]
"""A flat update at the base station: node, reply, plain content, arrays, sample weight."""


def screen_at_base_station(
    strategy: RelayStrategy, report: RelayRoundReport, server_round: int,
    flat: list[FlatEntry], flushed: Flushed, reference: Mapping[str, np.ndarray],
) -> tuple[list[FlatEntry], list[Forwarded]]:
    """Record the relays' rejections, then screen what reaches the base station: flat
    updates and relays' aggregates together, an aggregate's claimed weight taken per UAV
    it holds (else a busy relay would look like one UAV claiming many examples).

    Returns the flat updates and the relays' aggregates that passed.
    """
    for node_id, reason in sorted(flushed.rejected.items()):
        strategy._reject(report, server_round, node_id, reason)
    forwarded = flushed.forwarded
    screened = screen_updates(
        [values for *_rest, values, _w in flat] + [f.values for f in forwarded],
        [weight for *_rest, weight in flat]
        + [sum(h.samples for h in f.members) / len(f.members) for f in forwarded],
        reference, strategy._periods(), strategy.rules,
    )
    for index, reason in sorted(screened.items()):
        if index < len(flat):
            strategy._reject(report, server_round, flat[index][0], reason)
        else:
            relayed = forwarded[index - len(flat)]
            for held in relayed.members:
                strategy._reject(report, server_round, held.node_id,
                                 f"aggregate of relay {relayed.relay} rejected at the base "
                                 f"station: {reason}")
    kept_flat = [entry for index, entry in enumerate(flat) if index not in screened]
    kept_relayed = [f for index, f in enumerate(forwarded, len(flat)) if index not in screened]
    return kept_flat, kept_relayed
