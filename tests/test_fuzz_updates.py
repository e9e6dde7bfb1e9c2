"""Fuzz the server's decoding of client replies: nothing crashes it, nothing gets in unchecked.

Hypothesis feeds random and mutated replies into

- :func:`strategies.qfl.decode_update` (the arrays and weight of a plain reply),
- :meth:`strategies.qfl.QFLStrategy.aggregate_train` (whole rounds of honest and garbled
  replies, plain),
- :meth:`strategies.relay.RelayStrategy.aggregate_train` over each built-in channel (valid
  uplink envelopes with records deleted, replaced or garbled, the bound weight and the
  metrics included),
- the relay helpers of :mod:`relay.flower` that read what the other end sent.

The only allowed outcomes are a clean rejection (``UpdateRejected``, ``ValueError`` for the
helpers, which document it) or a value that passes the checks; and a round's report
accounts for every reply. The channel decoders themselves are fuzzed in
``test_relay_channels.py``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from fake_replies import FakeReply
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.channels import get_channel
from relay.flower import (
    METRICS_KEY,
    WEIGHT_ARRAY,
    bind_weight,
    message_header,
    message_rng,
    report_from_metrics,
    seal,
    unbind_weight,
)
from relay.link import PathLink
from relay.shared_secret import Keyring
from strategies.qfl import QFLStrategy, UpdateRejected, array_specs, decode_update
from strategies.relay import RelayStrategy

FUZZ = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

GLOBAL = ArrayRecord(
    {
        "w": Array(np.zeros((2, 3), np.float32)),
        "quantum.rotation_weights": Array(np.zeros(4, np.float32)),
        "n": Array(np.array([3], np.int64)),
    }
)
SPECS = array_specs(GLOBAL)
PERIODS = {"quantum.rotation_weights": 2 * math.pi}


def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _pickled() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "a"], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def honest_arrays(step: float = 0.1) -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.full((2, 3), step, np.float32)),
            "quantum.rotation_weights": Array(np.full(4, 3.1, np.float32)),
            "n": Array(np.array([4], np.int64)),
        }
    )


# --- building blocks ----------------------------------------------------------------------

npy_blobs = st.sampled_from(
    [
        _npy(np.zeros((2, 3), np.float32)),
        _npy(np.full((2, 3), np.nan, np.float32)),
        _npy(np.zeros((3, 2), np.float32)),
        _npy(np.zeros(4, np.float64)),
        _npy(np.zeros((2, 3), ">f4")),
        _npy(np.asfortranarray(np.ones((2, 3), np.float32))),
        _npy(np.array([4], np.int64)),
        _npy(np.zeros(8, np.uint8)),
        _pickled(),
        b"\x93NUMPY",
        b"PK\x03\x04",
    ]
)


@st.composite
def mutated_bytes(draw, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["flip", "cut", "append"]))
        if action == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif action == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data += draw(st.binary(max_size=16))
    return bytes(data)


arrays = st.builds(
    Array,
    dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "object", "?"]),
    shape=st.lists(st.integers(0, 6), max_size=3).map(tuple),
    stype=st.sampled_from(["numpy.ndarray", "numpy.ndarray", "torch", ""]),
    data=st.one_of(st.binary(max_size=120), mutated_bytes(npy_blobs)),
)
names = st.sampled_from(["w", "quantum.rotation_weights", "n", WEIGHT_ARRAY, "x"])
array_records = st.dictionaries(names, arrays, max_size=4).map(ArrayRecord)
metric_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True), max_size=3),
    st.lists(st.integers(-5, 5), max_size=3),
)
metric_records = st.dictionaries(
    st.sampled_from(["num-examples", "train-loss", "x", "up-n_bytes", "up-latency_s"]),
    metric_values,
    max_size=4,
).map(MetricRecord)


@st.composite
def garbled_replies(draw) -> RecordDict:
    """A plain reply with its arrays or metrics replaced, changed or garbled."""
    content = RecordDict(
        {"arrays": honest_arrays(), "metrics": MetricRecord({"num-examples": 10})}
    )
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["arrays", "metrics", "array", "weight", "drop", "extra"]))
        if action == "arrays":
            content["arrays"] = draw(array_records)
        elif action == "metrics":
            content["metrics"] = draw(metric_records)
        elif action == "array" and len(content.array_records.get("arrays", {})):
            record = content["arrays"]
            record[draw(st.sampled_from(sorted(record)))] = draw(arrays)
        elif action == "weight":
            content["metrics"] = MetricRecord({"num-examples": draw(metric_values)})
        elif action == "drop":
            content.pop(draw(st.sampled_from(["arrays", "metrics"])), None)
        else:
            content[draw(st.sampled_from(["extra", "metrics2"]))] = draw(metric_records)
    return content


class _Reply(FakeReply):
    """A train reply as the base station receives it: through Flower's wire format."""

    def __init__(self, node_id: int, content: RecordDict) -> None:
        super().__init__(node_id, recorddict_from_proto(recorddict_to_proto(content)))
        self.metadata.message_type = "train"


def assert_passes_the_checks(arrays: ArrayRecord) -> None:
    assert set(arrays) == set(SPECS)
    for name, spec in SPECS.items():
        value = arrays[name].numpy()
        assert value.shape == spec.shape and str(value.dtype) == spec.dtype
        assert np.isfinite(value).all()


# --- decode_update ------------------------------------------------------------------------


@FUZZ
@given(content=garbled_replies())
def test_decode_update_rejects_or_returns_a_checked_update(content):
    content = recorddict_from_proto(recorddict_to_proto(content))
    try:
        values, weight = decode_update(content, SPECS, "num-examples")
    except UpdateRejected as rejection:
        assert rejection.reason
    else:
        assert_passes_the_checks(ArrayRecord({n: Array(v) for n, v in values.items()}))
        assert math.isfinite(weight) and weight > 0


# --- a whole round, plain -----------------------------------------------------------------


@FUZZ
@given(
    garbled=st.lists(garbled_replies(), min_size=1, max_size=3),
    aggregation=st.sampled_from(["fedavg", "median", "trimmed-mean"]),
)
def test_a_round_with_garbled_replies_never_crashes_and_accounts_for_each(garbled, aggregation):
    strategy = QFLStrategy(
        angle_periods=PERIODS, aggregation=aggregation, max_norm_ratio=5.0,
        max_weight_ratio=10.0, min_train_nodes=1,
    )
    strategy.set_round_model(GLOBAL)
    honest = [_Reply(node, RecordDict({"arrays": honest_arrays(0.1 * node),
                                       "metrics": MetricRecord({"num-examples": 10})}))
              for node in (1, 2, 3)]
    hostile = [_Reply(100 + index, content) for index, content in enumerate(garbled)]
    aggregated, metrics = strategy.aggregate_train(1, honest + hostile)
    report = strategy.reports[-1]
    assert report.clients_used + report.clients_rejected == len(honest) + len(hostile)
    for node_id in report.rejected:
        assert report.rejected[node_id]
    # Whatever a garbled reply did, each one that was used passed decode_update.
    for reply in hostile:
        if reply.metadata.src_node_id not in report.rejected:
            decode_update(reply.content, SPECS, "num-examples")
    assert aggregated is not None
    assert_passes_the_checks(aggregated)
    assert all(isinstance(value, int | float) for value in metrics.values())


# --- a whole round over the relay ---------------------------------------------------------

RUN_ID = 99
SECRET = bytes.fromhex("7e11" * 16)
CHANNELS = {
    "ideal": {},
    "teleport": {"shots": 200},
    # One master derives every UAV's own secret; each end holds what it would in a run.
    "qkd": {"keyring": Keyring(master=SECRET), "raw_bits": 2048, "reject_replays": False},
}


def _link(uav_id: str) -> PathLink:
    return PathLink(
        uav_id=uav_id,
        server_round=1,
        path=(uav_id, "bs"),
        hop_link_types=("uav-ground",),
        hop_distances_km=(10.0,),
        hop_fidelities=(0.99,),
        end_to_end_fidelity=0.99,
        success_probability=0.1,
        pair_rate_hz=1e4,
        waiting_time_s=1e-3,
        propagation_delay_s=1e-4,
        latency_s=1e-3,
        classical_rate_bps=1e8,
    )


class _Topology:
    name = "fuzz"
    uav_ids = ["uav-1", "uav-2", "uav-3", "uav-4"]
    nodes = ()  # no satellites: nothing crosses the space segment


def _relay_strategy(name: str) -> RelayStrategy:
    strategy = RelayStrategy(
        channel=get_channel(name, **CHANNELS[name]),
        topology=_Topology(),
        run_id=RUN_ID,
        angle_periods=PERIODS,
        max_norm_ratio=5.0,
        max_weight_ratio=10.0,
        min_train_nodes=1,
    )
    strategy.set_round_model(GLOBAL)
    strategy._report_for(1)
    for node_id, uav_id in zip((1, 2, 3, 4), _Topology.uav_ids, strict=True):
        strategy.uav_of_node[node_id] = uav_id
        strategy._sent_links[(1, "train", node_id)] = _link(uav_id)
    return strategy


def _uplink(name: str, node_id: int, step: float, weight: float = 10) -> RecordDict:
    """What a UAV's relay mod sends for an honest update."""
    uav_id = _Topology.uav_ids[node_id - 1]
    options = dict(CHANNELS[name])
    if "keyring" in options:  # the UAV holds its own secret only
        options["keyring"] = options["keyring"].for_uav(uav_id)
    channel = get_channel(name, **options)
    envelope, _report = channel.encode(
        bind_weight(honest_arrays(step), weight),
        _link(uav_id),
        message_header(RUN_ID, "train", 1, node_id, "up"),
        message_rng(0, "train", 1, uav_id, "up"),
    )
    return seal(envelope, {METRICS_KEY: MetricRecord({"num-examples": weight})})


VALID_UPLINKS = {name: recorddict_to_proto(_uplink(name, 4, 0.2)) for name in CHANNELS}


@st.composite
def garbled_uplinks(draw, name: str) -> RecordDict:
    """A valid uplink envelope from node 4 with records deleted, replaced or garbled."""
    envelope = recorddict_from_proto(VALID_UPLINKS[name])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(envelope) + ["extra"]))
        action = draw(
            st.sampled_from(["delete", "arrays", "metrics", "config", "edit", "weight"])
        )
        if action == "weight":
            # The bound weight travels in the clear over `ideal`: garble it there.
            for record in envelope.array_records.values():
                if WEIGHT_ARRAY in record:
                    record[WEIGHT_ARRAY] = draw(arrays)
            continue
        if action != "edit":
            envelope.pop(key, None)
        if action == "arrays":
            envelope[key] = draw(array_records)
        elif action == "metrics":
            envelope[key] = draw(metric_records)
        elif action == "config":
            envelope[key] = ConfigRecord(
                draw(st.dictionaries(st.text(max_size=8), st.integers(-3, 3), max_size=3))
            )
        elif isinstance(envelope.get(key), ArrayRecord) and len(envelope[key]):
            record = envelope[key]
            field = draw(st.sampled_from(sorted(record)))
            record[field] = draw(arrays)
        elif isinstance(envelope.get(key), MetricRecord):
            envelope[key][draw(st.sampled_from(["num-examples", "up-n_bytes"]))] = draw(
                metric_values
            )
    return envelope


@pytest.mark.parametrize("name", sorted(CHANNELS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbled_uplinks_over_each_channel_never_crash_the_round(name, data):
    strategy = _relay_strategy(name)
    honest = [_Reply(node, _uplink(name, node, 0.1 * node)) for node in (1, 2, 3)]
    garbled = _Reply(4, data.draw(garbled_uplinks(name)))
    aggregated, _metrics = strategy.aggregate_train(1, [*honest, garbled])
    report = strategy.reports[-1]
    assert report.clients_used + report.clients_rejected == 4
    assert set(report.rejected) <= {4}
    assert aggregated is not None
    assert_passes_the_checks(aggregated)


# --- relay helpers that read the other end's data -----------------------------------------


@FUZZ
@given(record=array_records)
def test_unbind_weight_returns_a_float_or_raises_value_error(record):
    record = ArrayRecord(dict(record))
    try:
        model, weight = unbind_weight(record)
    except ValueError as error:
        assert str(error)
    else:
        assert isinstance(weight, float) and WEIGHT_ARRAY not in model


@FUZZ
@given(metrics=metric_records)
def test_report_from_metrics_is_a_report_or_none(metrics):
    report = report_from_metrics(metrics, "up-", "ideal")
    assert report is None or (report.n_bytes >= 0 and report.latency_s >= 0)
