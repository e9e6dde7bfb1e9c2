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
from functools import lru_cache
from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from client.config import RunConfig, RunConfigError, parse_run_config
from client.data import DatasetError, cache_root, check_node_setup, node_partition
from relay.channels import Channel, ChannelRejected, get_channel
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
from relay.shared_secret import SecretError, load_shared_secret
from relay.topology import PathLink, Topology, load_topology

WEIGHT_METRIC = "num-examples"
"""The reply metric the base station weights updates by (Flower's FedAvg default)."""


# --- shared with the ServerApp ---------------------------------------------------------
def load_run_topology(config: RunConfig) -> Topology:
    """The topology named by run config ``topology`` (empty: the shipped default).

    Raises
    ------
    RunConfigError
        The file cannot be read or breaks the topology schema.
    """
    try:
        return _load_topology(config.topology)
    except ValueError as error:
        raise RunConfigError(f"run config 'topology' = {config.topology!r}: {error}") from None


@lru_cache(maxsize=8)
def _load_topology(path: str) -> Topology:
    # Simulated clients share a process: read and validate the file once.
    return load_topology(path or None)


def channel_from_config(config: RunConfig) -> tuple[Channel, str | None]:
    """Build this end of the run's relay channel.

    Returns
    -------
    tuple
        The channel and, for ``qkd``, where the shared secret was read from (safe to
        log; the secret itself is never returned).

    Raises
    ------
    SecretError
        ``qkd`` and no usable shared secret (see :mod:`relay.shared_secret`).
    """
    options: dict[str, Any] = {}
    secret_source = None
    if config.relay == "teleport":
        options["shots"] = config.shots
    elif config.relay == "qkd":
        secret = load_shared_secret(cache_root())
        options.update(shared_secret=secret.value, eavesdropper=config.eavesdropper)
        secret_source = secret.source
    return get_channel(config.relay, **options), secret_source


def uav_id_of(node_config: Mapping[str, Any], topology: Topology) -> str:
    """Which UAV this node is: node config ``uav-id``, else ``uav_ids[partition-id]``.

    Raises
    ------
    ValueError
        The UAV is not in the topology, or the partition id has no UAV.
    """
    uav_ids = topology.uav_ids
    if UAV_ID_KEY in node_config:
        uav_id = str(node_config[UAV_ID_KEY])
        if uav_id not in uav_ids:
            raise ValueError(
                f"node config uav-id {uav_id!r} is not a UAV of topology {topology.name!r} "
                f"({', '.join(uav_ids)})"
            )
        return uav_id
    partition_id, _count = node_partition(node_config)
    if not 0 <= partition_id < len(uav_ids):
        raise ValueError(
            f"partition-id {partition_id} has no UAV: topology {topology.name!r} has "
            f"{len(uav_ids)} UAVs ({uav_ids[0]} .. {uav_ids[-1]}); use at most "
            f"{len(uav_ids)} SuperNodes, a topology with more UAVs, or node config 'uav-id'"
        )
    return uav_ids[partition_id]


# --- ClientApp side --------------------------------------------------------------------
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

