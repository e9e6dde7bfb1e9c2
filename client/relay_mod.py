"""The UAV's end of the relay: a Flower mod around the train and evaluate handlers.

:func:`build_relay_mod` returns a mod (``mod(msg, context, call_next)``, see
``flwr/clientapp/mod``) that

- before the handler, decodes the downlink envelope with the run's channel into the
  plain ``arrays`` record the handler expects (train and evaluate alike);
- after a train handler, binds the sample count to the update, encodes it for the
  uplink, and adds both directions' channel reports to the reply's metrics
  (``down-*`` as received here, ``up-*`` as sent);
- answers with a Flower error reply, never a crash, when the downlink is rejected
  (tampered, replayed, misrouted, aborted key) or the uplink cannot be encoded: the
  base station counts the node as failed with that reason.

:func:`answer_uav_query` tells the base station which UAV of the topology this node is.
Both read the run config that :mod:`client.run_config` parsed for the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING
from typing import Any, Literal

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.logger import log

from client.run_config import current_config, error_reply
from relay.channels import Channel, ChannelRejected, ChannelReport, Header, channel_class
from relay.flower import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DOWNLINK_PREFIX,
    LINK_PREFIX,
    METRICS_KEY,
    PARTITION_ID_KEY,
    RELAYED_CATEGORIES,
    UAV_ID_KEY,
    UAV_RECORD,
    UPLINK_PREFIX,
    WEIGHT_KEY,
    bind_weight,
    message_category,
    message_header,
    message_rng,
    seal,
)
from relay.link import PathLink
from relay.shared_secret import SecretError
from task.config import RunConfig, RunConfigError
from task.data import DatasetError, check_node_setup
from task.wiring import channel_from_config, load_run_topology, uav_id_of


def answer_uav_query(msg: Message, context: Context) -> Message:
    """Reply to the base station's query with this node's UAV id (and partition id)."""
    config = current_config()
    try:
        uav_id = uav_id_of(context.node_config, load_run_topology(config))
        # When first drawn (for a small federation, before the first round): a node
        # that could never train says why now, and is never drawn again.
        check_node_setup(config.dataset, config.data_dir, context.node_config,
                         config.data_partitions)
    except (ValueError, RunConfigError, DatasetError) as error:
        return error_reply(msg, str(error))
    record = ConfigRecord({UAV_ID_KEY: uav_id})
    if PARTITION_ID_KEY in context.node_config:
        record[PARTITION_ID_KEY] = int(context.node_config[PARTITION_ID_KEY])
    return Message(RecordDict({UAV_RECORD: record}), reply_to=msg)


@dataclass(frozen=True)
class _Downlink:
    """A decoded downlink: what the reply's uplink needs to know of it."""

    channel: Channel
    link: PathLink
    server_round: int
    uav_id: str
    received: ChannelReport


class RelayMod:
    """The relay mod (a Flower mod: ``mod(msg, context, call_next)``); see the module doc.

    One channel per UAV, setting and process (simulated UAVs share a process): a qkd
    channel reads its UAV's own secret once, and keeps its replay memory in a file, since
    Flower starts a new ClientApp process for every message.
    """

    def __init__(self) -> None:
        self._channels: dict[tuple[Any, ...], Channel] = {}

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if message_category(msg.metadata.message_type) not in RELAYED_CATEGORIES:
            return call_next(msg, context)
        config = current_config()
        downlink = self._decode_downlink(msg, context, config)
        if isinstance(downlink, Message):  # an error reply
            return downlink
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        return self._encode_uplink(msg, reply, config, downlink)

    def _channel_for(self, config: RunConfig, uav_id: str) -> Channel:
        options = channel_class(config.relay).options
        key = (uav_id, config.relay, *(config.channel_values[o.key] for o in options))
        if key not in self._channels:
            self._channels[key] = channel_from_config(config, uav_id)
        return self._channels[key]

    def _decode_downlink(
        self, msg: Message, context: Context, config: RunConfig
    ) -> _Downlink | Message:
        """Replace ``msg``'s envelope by the plain arrays, or return the error reply."""
        try:
            own_uav = uav_id_of(context.node_config, load_run_topology(config))
            channel = self._channel_for(config, own_uav)
            settings = msg.content.config_records.get(CONFIG_KEY)
            if settings is None:
                raise ValueError(f"downlink has no {CONFIG_KEY!r} record")
            link = PathLink.from_config(settings, LINK_PREFIX)
            server_round = settings.get("server-round")
            if isinstance(server_round, bool) or not isinstance(server_round, int):
                raise ValueError(f"downlink config has no integer 'server-round': {server_round!r}")
        except (RunConfigError, SecretError, ValueError) as error:
            return error_reply(msg, f"relay downlink unusable: {error}")
        if link.uav_id != own_uav:
            return error_reply(
                msg, f"relay downlink misrouted: its link is for {link.uav_id}, this is {own_uav}"
            )
        try:
            arrays, received = channel.decode(
                msg.content, link, *_header_and_rng(msg, config, server_round, own_uav, "down")
            )
        except ChannelRejected as rejection:
            return error_reply(
                msg, f"{channel.name} channel rejected the downlink: {rejection.reason}"
            )
        msg.content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: settings})
        return _Downlink(channel, link, server_round, own_uav, received)

    def _encode_uplink(
        self, msg: Message, reply: Message, config: RunConfig, downlink: _Downlink
    ) -> Message:
        """Add both directions' channel reports to the reply and encode its update."""
        metrics = MetricRecord(
            {
                **(reply.content.metric_records.get(METRICS_KEY) or {}),
                **downlink.received.to_metrics(DOWNLINK_PREFIX),
            }
        )
        update = reply.content.array_records.get(ARRAYS_KEY)
        if update is None:  # evaluate replies carry metrics only
            reply.content = RecordDict({METRICS_KEY: metrics})
            return reply
        weight = metrics.get(WEIGHT_KEY)
        try:
            payload = bind_weight(update, weight) if isinstance(weight, int | float) else update
            envelope, sent = downlink.channel.encode(
                payload,
                downlink.link,
                *_header_and_rng(msg, config, downlink.server_round, downlink.uav_id, "up"),
            )
        except (ValueError, ChannelRejected) as error:
            return error_reply(msg, f"relay uplink cannot be encoded: {error}")
        metrics.update(sent.to_metrics(UPLINK_PREFIX))
        if sent.aborted:
            log(WARNING, "Relay: uplink key exchange aborted (%s); the update is not sent",
                sent.reason)
        reply.content = seal(envelope, {METRICS_KEY: metrics})
        return reply


def _header_and_rng(
    msg: Message,
    config: RunConfig,
    server_round: int,
    uav_id: str,
    direction: Literal["up", "down"],
) -> tuple[Header, np.random.Generator]:
    """The header a message of this node and round binds, and its physics' random stream."""
    message_type = msg.metadata.message_type
    return (
        message_header(msg.metadata.run_id, message_type, server_round,
                       msg.metadata.dst_node_id, direction),
        message_rng(config.seed, message_type, server_round, uav_id, direction),
    )


def build_relay_mod() -> Mod:
    """The relay mod for a ClientApp (after :func:`client.run_config.build_config_mod`)."""
    return RelayMod()
