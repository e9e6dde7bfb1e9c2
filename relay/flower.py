"""Relay channels inside Flower messages: the conventions both ends of a link share.

The base station (:class:`strategies.relay.RelayStrategy`) and each UAV
(:func:`client.relay_mod.build_relay_mod`) must agree on how an envelope sits in a
Flower ``Message``, which header binds it, which random stream the emulated physics
draws from, and how the channel's cost is reported. Those conventions live here, once.

Message layout (all records are public; only what a channel puts in its envelope
crosses the link):

- downlink (train / evaluate): the channel's envelope records plus the ``config``
  ConfigRecord, which carries the round's settings and this UAV's link
  (:meth:`relay.link.PathLink.to_config` under ``link.``);
- uplink (train reply): the channel's envelope records plus the ``metrics``
  MetricRecord, which carries the training metrics and both directions' channel
  reports (``down-*`` as measured by the client, ``up-*`` as spent by it).

The weight used for aggregation (``num-examples``) also travels inside the payload
(:func:`bind_weight`), so a channel that authenticates its payload authenticates the
weight too, and a weight changed in transit is caught.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, MessageType, RecordDict

from relay.channels import ChannelReport, Header
from relay.channels.envelope import array_to_numpy

ARRAYS_KEY = "arrays"
"""Record of the plain arrays, as the train and evaluate handlers read and write them."""

CONFIG_KEY = "config"
"""Record of the round's settings and the link, sent with every downlink."""

METRICS_KEY = "metrics"
"""Record of the reply's metrics, sent with every uplink."""

WEIGHT_KEY = "num-examples"
"""The reply metric an update is weighted by (Flower's FedAvg default)."""

LINK_PREFIX = "link."
"""Prefix of the link's keys in the ``config`` record."""

DOWNLINK_PREFIX = "down-"
"""Prefix of the client-measured downlink report in the reply metrics."""

UPLINK_PREFIX = "up-"
"""Prefix of the client's uplink report in the reply metrics."""

WEIGHT_ARRAY = "relay.weight"
"""Name of the array that carries the aggregation weight inside the uplink payload."""

UAV_RECORD = "relay.uav"
"""ConfigRecord of a query reply: which UAV of the topology a node is."""

UAV_ID_KEY = "uav-id"
PARTITION_ID_KEY = "partition-id"

_MAX_WEIGHT_ARRAY_BYTES = 1024
"""More than an 8-value uint8 .npy array can need (its header is at most a few hundred)."""

RELAYED_CATEGORIES = (MessageType.TRAIN, MessageType.EVALUATE)
"""Message categories whose arrays cross the relay; queries are answered in the clear."""


def message_category(message_type: str) -> str:
    """``"train"`` for ``"train"`` and ``"train.custom"``: the part before the dot."""
    return message_type.split(".", 1)[0]


def message_header(
    run_id: int | str,
    message_type: str,
    server_round: int,
    node_id: int,
    direction: Literal["up", "down"],
) -> Header:
    """The header a channel binds to one message.

    The run field holds the Flower run id *and* the message category
    (``"<run_id>/train"``): a train and an evaluate downlink of the same round then get
    different keys (QKD) and cannot be swapped for one another in transit.

    Parameters
    ----------
    run_id : int or str
        Flower run id (the receiver uses its own, never the one a message claims).
    message_type : str
        Flower message type (``train``, ``evaluate``...).
    server_round : int
        Federated round.
    node_id : int
        Flower node id of the UAV end.
    direction : {"up", "down"}
        ``down``: base station to UAV; ``up``: UAV to base station.
    """
    return Header(
        run_id=f"{run_id}/{message_category(message_type)}",
        server_round=int(server_round),
        node_id=int(node_id),
        direction=direction,
    )


def message_rng(
    seed: int,
    message_type: str,
    server_round: int,
    uav_id: str,
    direction: Literal["up", "down"],
) -> np.random.Generator:
    """The random stream of one message's emulated physics.

    It depends on the run seed, the round, the UAV (not the Flower node id, which changes
    between runs) and the direction, so the same seed gives the same run.
    """
    category = message_category(message_type)
    label = f"qfl-relay/rng|{seed}|{category}|{server_round}|{uav_id}|{direction}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(label.encode()).digest()[:16]))


def seal(envelope: RecordDict, records: Mapping[str, Any]) -> RecordDict:
    """Message content: a channel's envelope plus the plain records that go with it.

    Raises
    ------
    ValueError
        The envelope uses one of the plain records' names.
    """
    clash = sorted(set(envelope) & set(records))
    if clash:
        raise ValueError(f"channel envelope uses reserved record names {clash}")
    content = RecordDict()
    for key, record in envelope.items():
        content[key] = record
    for key, record in records.items():
        content[key] = record
    return content


def bind_weight(arrays: ArrayRecord, weight: float) -> ArrayRecord:
    """A copy of ``arrays`` that also carries ``weight`` as :data:`WEIGHT_ARRAY`.

    The weight is stored as the 8 bytes of a little-endian float64 (a uint8 array), so a
    channel that perturbs floats (``teleport``) sends it classically and exactly.
    """
    if WEIGHT_ARRAY in arrays:
        raise ValueError(f"the update already has an array named {WEIGHT_ARRAY!r}")
    bound = ArrayRecord({key: array for key, array in arrays.items()})
    raw = np.frombuffer(np.array([weight], dtype="<f8").tobytes(), dtype=np.uint8).copy()
    bound[WEIGHT_ARRAY] = Array(raw)
    return bound


def unbind_weight(arrays: ArrayRecord) -> tuple[ArrayRecord, float]:
    """Split what :func:`bind_weight` joined: the model arrays and the bound weight.

    Raises
    ------
    ValueError
        The weight array is missing or malformed.
    """
    if WEIGHT_ARRAY not in arrays:
        raise ValueError(f"the payload carries no {WEIGHT_ARRAY!r} array")
    array = arrays[WEIGHT_ARRAY]
    # Untrusted: bound the bytes numpy parses, and turn whatever its .npy parser raises
    # (EOFError, SyntaxError, tokenize.TokenError, ValueError...) into a rejection.
    if len(array.data) > _MAX_WEIGHT_ARRAY_BYTES:
        raise ValueError(f"{WEIGHT_ARRAY!r} holds {len(array.data)} bytes; 8 values expected")
    try:
        raw = array_to_numpy(array)
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"{WEIGHT_ARRAY!r} cannot be decoded: {type(error).__name__}: {error}"
        ) from None
    if raw.dtype != np.uint8 or raw.shape != (8,):
        raise ValueError(f"{WEIGHT_ARRAY!r} must be 8 uint8 values, got {raw.dtype}{raw.shape}")
    weight = float(np.frombuffer(raw.tobytes(), dtype="<f8")[0])
    model = ArrayRecord({key: array for key, array in arrays.items() if key != WEIGHT_ARRAY})
    return model, weight


def report_from_metrics(
    metrics: Mapping[str, Any], prefix: str, channel: str
) -> ChannelReport | None:
    """Rebuild a :class:`ChannelReport` that :meth:`ChannelReport.to_metrics` flattened.

    The metrics come from the other end and are untrusted: anything missing, negative or
    non-finite gives ``None`` (the figures are then not counted) rather than an error.
    """

    def number(key: str) -> float:
        value = metrics.get(prefix + key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(key)
        if not math.isfinite(value) or value < 0:
            raise ValueError(key)
        return float(value)

    def optional_number(key: str) -> float | None:
        return None if metrics.get(prefix + key) is None else number(key)

    try:
        fidelity = optional_number("fidelity")
        qber = optional_number("qber")
        return ChannelReport(
            channel=channel,
            n_bytes=int(number("n_bytes")),
            latency_s=number("latency_s"),
            fidelity=fidelity,
            bell_pairs=int(number("bell_pairs")),
            classical_bits=int(number("classical_bits")),
            qber=qber,
            key_bits=int(number("key_bits")),
            aborted=bool(number("aborted")),
        )
    except ValueError:
        return None
