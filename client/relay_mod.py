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
The channel and topology helpers are shared with the ServerApp so both ends build them
from the run config the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from relay.channels import Channel, ChannelRejected
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
    bind_weight,
    message_category,
    message_header,
    message_rng,
    seal,
)
from relay.link import PathLink
from relay.shared_secret import SecretError
from task.config import RunConfig, RunConfigError, parse_run_config
from task.data import DatasetError, check_node_setup
from task.wiring import channel_from_config, load_run_topology, uav_id_of

WEIGHT_METRIC = "num-examples"
"""The reply metric the base station weights updates by (Flower's FedAvg default)."""


# --------------------------------------------------------------------
def answer_uav_query(msg: Message, context: Context, config: RunConfig) -> Message:
    """Reply to the base station's query with this node's UAV id (and partition id)."""
    try:
        uav_id = uav_id_of(context.node_config, load_run_topology(config))
        # Before the first round: a node that could never train says why now.
        check_node_setup(config.dataset, config.data_dir, context.node_config)
    except (ValueError, RunConfigError, DatasetError) as error:
        return _error_reply(msg, str(error))
    record = ConfigRecord({UAV_ID_KEY: uav_id})
    if PARTITION_ID_KEY in context.node_config:
        record[PARTITION_ID_KEY] = int(context.node_config[PARTITION_ID_KEY])
    return Message(RecordDict({UAV_RECORD: record}), reply_to=msg)


def _error_reply(msg: Message, reason: str) -> Message:
    log(WARNING, "Relay: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def build_relay_mod(overrides: Mapping[str, Any] | None = None) -> Mod:
    """The relay mod for a ClientApp.

    Parameters
    ----------
    overrides : Mapping[str, Any], optional
        The same run config overrides the ClientApp's handlers use (runs from Python), so
        the mod and the handlers see one merged run config.
    """
    # One channel per setting and process: a qkd channel remembers the envelopes it has
    # accepted (replay protection) and reads the shared secret once.
    channels: dict[tuple[str, int, float], Channel] = {}

    def relay_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        message_type = msg.metadata.message_type
        if message_category(message_type) not in RELAYED_CATEGORIES:
            return call_next(msg, context)
        try:
            config = parse_run_config(context.run_config, overrides)
            key = (config.relay, config.shots, config.eavesdropper)
            if key not in channels:
                channels[key], _source = channel_from_config(config)
            channel = channels[key]
            own_uav = uav_id_of(context.node_config, load_run_topology(config))
            settings = msg.content.config_records.get(CONFIG_KEY)
            if settings is None:
                raise ValueError(f"downlink has no {CONFIG_KEY!r} record")
            link = PathLink.from_config(settings, LINK_PREFIX)
            server_round = settings.get("server-round")
            if isinstance(server_round, bool) or not isinstance(server_round, int):
                raise ValueError(f"downlink config has no integer 'server-round': {server_round!r}")
        except (RunConfigError, SecretError, ValueError) as error:
            return _error_reply(msg, f"relay downlink unusable: {error}")
        if link.uav_id != own_uav:
            return _error_reply(
                msg, f"relay downlink misrouted: its link is for {link.uav_id}, this is {own_uav}"
            )
        node_id = msg.metadata.dst_node_id
        run_id = msg.metadata.run_id
        try:
            arrays, received = channel.decode(
                msg.content,
                link,
                message_header(run_id, message_type, server_round, node_id, "down"),
                message_rng(config.seed, message_type, server_round, own_uav, "down"),
            )
        except ChannelRejected as rejection:
            return _error_reply(
                msg, f"{channel.name} channel rejected the downlink: {rejection.reason}"
            )
        msg.content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: settings})

        reply = call_next(msg, context)

        if reply.has_error():
            return reply
        metrics = MetricRecord(
            {
                **(reply.content.metric_records.get(METRICS_KEY) or {}),
                **received.to_metrics(DOWNLINK_PREFIX),
            }
        )
        update = reply.content.array_records.get(ARRAYS_KEY)
        if update is None:  # evaluate replies carry metrics only
            reply.content = RecordDict({METRICS_KEY: metrics})
            return reply
        weight = metrics.get(WEIGHT_METRIC)
        try:
            payload = bind_weight(update, weight) if isinstance(weight, int | float) else update
            envelope, sent = channel.encode(
                payload,
                link,
                message_header(run_id, message_type, server_round, node_id, "up"),
                message_rng(config.seed, message_type, server_round, own_uav, "up"),
            )
        except ValueError as error:
            return _error_reply(msg, f"relay uplink cannot be encoded: {error}")
        metrics.update(sent.to_metrics(UPLINK_PREFIX))
        if sent.aborted:
            log(WARNING, "Relay: uplink key exchange aborted (%s); the update is not sent",
                sent.reason)
        reply.content = seal(envelope, {METRICS_KEY: metrics})
        return reply

    return relay_mod

