"""QFLStrategy: checks on incoming updates, weighting, and circular means of angles."""

import math

import numpy as np
import pytest
from fake_replies import FakeReply
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from strategies.means import circular_mean, weighted_aggregate
from strategies.qfl import (
    QFLStrategy,
    UpdateRejected,
    array_specs,
    decode_update,
)


def _record(**arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _reply(arrays, num_examples=10, loss=1.0):
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": loss})
    return RecordDict({"arrays": arrays, "metrics": metrics})


GLOBAL = _record(w=np.zeros((2, 3), np.float32), theta=np.zeros(4, np.float32))
SPECS = array_specs(GLOBAL)


def test_circular_mean_wraps_across_pi():
    mean = circular_mean(np.array([3.1, -3.1]), np.array([0.5, 0.5]))
    assert mean == pytest.approx(math.pi, abs=1e-12)
    assert float(np.mean([3.1, -3.1])) == 0.0  # what a plain average would give


def test_circular_mean_is_the_plain_mean_for_close_angles():
    angles = np.array([[0.1, -0.2], [0.3, -0.1], [0.2, 0.0]])
    weights = np.array([1.0, 2.0, 1.0])
    expected = (angles * weights[:, None]).sum(0) / weights.sum()
    assert np.allclose(circular_mean(angles, weights), expected, atol=2e-3)


def test_circular_mean_respects_a_4pi_period():
    # A controlled rotation only repeats after 4 pi: 2pi - 0.1 and -2pi + 0.1 are 0.2 apart.
    mean = circular_mean(np.array([2 * math.pi - 0.1, -2 * math.pi + 0.1]), np.ones(2), 4 * math.pi)
    assert mean == pytest.approx(2 * math.pi, abs=1e-12)


def test_circular_mean_follows_the_weights():
    mean = circular_mean(np.array([0.0, math.pi / 2]), np.array([3.0, 1.0]))
    assert mean == pytest.approx(math.atan2(1.0, 3.0), abs=1e-12)


def test_weighted_aggregate_weights_plain_arrays_and_wraps_angles():
    a = {"w": np.full((2, 3), 1.0, np.float32), "theta": np.full(4, 3.1, np.float32)}
    b = {"w": np.full((2, 3), 4.0, np.float32), "theta": np.full(4, -3.1, np.float32)}
    out = weighted_aggregate([a, b], [1.0, 2.0], {"theta": 2 * math.pi})
    assert np.allclose(out["w"].numpy(), 3.0)
    assert out["w"].numpy().dtype == np.float32
    # 3.1 and -3.1 lie 0.0416 either side of pi; weighted 1:2 the mean is pi + 0.0139,
    # which wraps to -pi + 0.0139 (a plain average would give -1.03).
    offset = math.pi - 3.1
    assert np.allclose(out["theta"].numpy(), -math.pi + offset / 3, atol=1e-5)


def test_decode_update_accepts_a_good_reply():
    arrays, weight = decode_update(_reply(GLOBAL, 25), SPECS, "num-examples")
    assert weight == 25.0 and set(arrays) == {"w", "theta"}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (_reply(_record(w=np.zeros((3, 2), np.float32), theta=np.zeros(4, np.float32))),
         "array 'w' is float32[3, 2], expected float32[2, 3]"),
        (_reply(_record(w=np.zeros((2, 3), np.float64), theta=np.zeros(4, np.float32))),
         "array 'w' is float64[2, 3], expected float32[2, 3]"),
        (_reply(_record(w=np.full((2, 3), np.nan, np.float32), theta=np.zeros(4, np.float32))),
         "array 'w' has non-finite values"),
        (_reply(_record(w=np.zeros((2, 3), np.float32), theta=np.full(4, np.inf, np.float32))),
         "array 'theta' has non-finite values"),
        (_reply(_record(w=np.zeros((2, 3), np.float32))), "missing ['theta']"),
        (_reply(_record(w=np.zeros((2, 3), np.float32), theta=np.zeros(4, np.float32),
                        extra=np.zeros(1, np.float32))), "unexpected ['extra']"),
        (_reply(GLOBAL, 0), "'num-examples' = 0 is not a positive number"),
        (_reply(GLOBAL, -5), "'num-examples' = -5 is not a positive number"),
        (_reply(GLOBAL, float("nan")), "is not a positive number"),
        (RecordDict({"arrays": GLOBAL, "metrics": MetricRecord({})}),
         "'num-examples' is missing or not a number"),
        (RecordDict({"metrics": MetricRecord({"num-examples": 1})}), "reply lacks"),
    ],
)
def test_decode_update_rejects_with_a_reason(reply, reason):
    with pytest.raises(UpdateRejected) as err:
        decode_update(reply, SPECS, "num-examples")
    assert reason in err.value.reason


def test_aggregate_train_drops_bad_replies_and_reports_them():
    strategy = QFLStrategy(angle_periods={"theta": 2 * math.pi})
    strategy._specs = SPECS
    good_a = _record(w=np.full((2, 3), 2.0, np.float32), theta=np.full(4, 0.5, np.float32))
    good_b = _record(w=np.full((2, 3), 4.0, np.float32), theta=np.full(4, 0.5, np.float32))
    poisoned = _record(w=np.full((2, 3), np.nan, np.float32), theta=np.zeros(4, np.float32))
    replies = [
        FakeReply(1, _reply(good_a, 10, loss=1.0)),
        FakeReply(2, _reply(poisoned, 10, loss=100.0)),
        FakeReply(3, _reply(good_b, 30, loss=2.0)),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), 3.5)
    assert np.allclose(arrays["theta"].numpy(), 0.5, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx((1.0 * 10 + 2.0 * 30) / 40)
    report = strategy.reports[-1]
    assert (report.clients_used, report.clients_rejected) == (2, 1)
    assert report.rejected == {2: "array 'w' has non-finite values"}


def test_aggregate_train_with_nothing_acceptable_keeps_the_model():
    strategy = QFLStrategy()
    strategy._specs = SPECS
    arrays, metrics = strategy.aggregate_train(1, [FakeReply(5, _reply(GLOBAL, 0))])
    assert arrays is None and metrics is None
    assert strategy.reports[-1].clients_rejected == 1


def test_unknown_angle_aggregation_is_refused():
    with pytest.raises(ValueError, match="angle_aggregation 'median' is not known"):
        QFLStrategy(angle_aggregation="median")


def test_decode_update_rejects_an_array_whose_npy_header_does_not_parse():
    # An unterminated header makes numpy raise tokenize.TokenError, not ValueError.
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3"
    header += b" " * (64 - 10 - len(header) - 1) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 24
    garbled = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=data)
    arrays = ArrayRecord({"w": garbled, "theta": Array(np.zeros(4, np.float32))})
    with pytest.raises(UpdateRejected, match="array 'w' cannot be decoded"):
        decode_update(_reply(arrays), SPECS, "num-examples")
