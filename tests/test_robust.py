"""Update screening, robust aggregation and strict decoding, on hand-made updates (no Ray)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from fake_replies import FakeReply
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from client.faults import attacked_update, fails_in_round, hostile_partitions
from relay.arrays import DecodeError, decode_array
from strategies.qfl import QFLStrategy, UpdateRejected, decode_update, scalar_metrics
from strategies.robust import (
    ScreeningRules,
    coordinate_median,
    robust_aggregate,
    screen_updates,
    trimmed_mean,
    update_distances,
    wrap_angle,
)

TWO_PI = 2 * math.pi


def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _array(data: bytes, dtype="float32", shape=(2, 3)) -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


# --------------------------------------------------------------------------------------
# Strict decoding
# --------------------------------------------------------------------------------------


def test_decode_array_returns_the_values_of_a_well_formed_array():
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(decode_array(Array(value), (2, 3), "float32"), value)
    fortran = np.asfortranarray(value)
    assert np.array_equal(decode_array(_array(_npy(fortran)), (2, 3), "float32"), value)


def test_decode_array_never_allocates_what_a_hostile_header_declares():
    # The header claims 2**40 float64 values: numpy's own loader would allocate 8 TiB
    # before noticing the data is short.
    huge = _npy(np.zeros(1)).replace(b"(1,)", b"(1099511627776,)")
    with pytest.raises(DecodeError, match=r"is float64\[1099511627776\], expected float32"):
        decode_array(_array(huge), (2, 3), "float32")


ZEROS = _npy(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    ("data", "stype", "message"),
    [
        (ZEROS + b"\0", "numpy.ndarray", "25 bytes of values, expected 24"),
        (ZEROS[:-1], "numpy.ndarray", "23 bytes of values, expected 24"),
        (_npy(np.zeros((2, 3), ">f4")), "numpy.ndarray", "is >f4[2, 3]"),
        (_npy(np.zeros((3, 2), np.float32)), "numpy.ndarray", "is float32[3, 2]"),
        (b"PK\x03\x04 a zip file", "numpy.ndarray", "not in .npy format"),
        (_npy(np.zeros((2, 3), np.float32)), "torch", "not a numpy array"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4'}  \n", "numpy.ndarray", "does not parse"),
        (b"\x93NUMPY\x09\x00", "numpy.ndarray", "version (9, 0)"),
    ],
)
def test_decode_array_rejects_with_a_reason(data, stype, message):
    array = Array(dtype="float32", shape=(2, 3), stype=stype, data=data)
    with pytest.raises(DecodeError) as error:
        decode_array(array, (2, 3), "float32")
    assert message in str(error.value)


def test_decode_array_refuses_object_arrays_without_unpickling():
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="is object"):
        decode_array(_array(buffer.getvalue(), "object", (2,)), (2,), "object")


def test_decode_update_returns_the_decoded_values_not_the_declared_fields():
    # The Array's own dtype/shape fields lie; only the checked data counts.
    good = _npy(np.ones((2, 3), np.float32))
    liar = Array(dtype="float64", shape=(9,), stype="numpy.ndarray", data=good)
    reply = RecordDict(
        {"arrays": ArrayRecord({"w": liar}), "metrics": MetricRecord({"num-examples": 3})}
    )
    values, weight = decode_update(reply, {"w": _spec((2, 3), "float32")}, "num-examples")
    assert values["w"].dtype == np.float32 and values["w"].shape == (2, 3)
    assert weight == 3.0


def _spec(shape, dtype):
    from strategies.qfl import ArraySpec

    return ArraySpec(shape, dtype)


# --------------------------------------------------------------------------------------
# Angles
# --------------------------------------------------------------------------------------


def test_wrap_angle_maps_into_the_half_open_period():
    values = np.array([math.pi, -math.pi, 3 * math.pi, 0.0, 7.0, -7.0])
    wrapped = wrap_angle(values, TWO_PI)
    assert np.allclose(wrapped, [math.pi, math.pi, math.pi, 0.0, 7.0 - TWO_PI, TWO_PI - 7.0])
    assert np.all((wrapped > -math.pi) & (wrapped <= math.pi))
    assert wrap_angle(np.array([2 * math.pi + 0.5]), 4 * math.pi)[0] == pytest.approx(
        -2 * math.pi + 0.5
    )


def test_median_of_angles_wraps_across_pi():
    # Global angle 3.0; clients moved it to 3.1, -3.1 (= 3.183) and 3.05: the deltas are
    # +0.1, +0.183 and +0.05, whose median is +0.1. A plain median of the values would
    # give 3.05, and a plain mean 1.0.
    reference = {"theta": np.array([3.0])}
    updates = [{"theta": np.array([v])} for v in (3.1, -3.1, 3.05)]
    out = robust_aggregate(updates, reference, {"theta": TWO_PI}, "median")
    assert out["theta"].numpy()[0] == pytest.approx(3.1)


def test_robust_result_wraps_back_into_the_period():
    # From 3.1 the clients step +0.1, +0.12 and -0.05: the median +0.1 lands past pi.
    reference = {"theta": np.array([3.1])}
    updates = [{"theta": wrap_angle(np.array([3.1 + d]), TWO_PI)} for d in (0.1, 0.12, -0.05)]
    for method in ("median", "trimmed-mean"):
        out = robust_aggregate(updates, reference, {"theta": TWO_PI}, method, 0.34)
        assert out["theta"].numpy()[0] == pytest.approx(3.2 - TWO_PI)


def test_update_distance_measures_angles_the_short_way_round():
    reference = {"theta": np.array([3.1]), "w": np.array([0.0, 0.0])}
    update = {"theta": np.array([-3.1]), "w": np.array([3.0, 4.0])}
    distance = update_distances([update], reference, {"theta": TWO_PI})[0]
    assert distance == pytest.approx(math.hypot(5.0, TWO_PI - 6.2))


# --------------------------------------------------------------------------------------
# Coordinate-wise rules
# --------------------------------------------------------------------------------------


def test_trimmed_mean_drops_each_tail():
    values = np.array([[1.0, -100.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0], [100.0, 5.0]])
    assert np.allclose(trimmed_mean(values, 0.2), [3.0, 3.0])
    assert np.allclose(trimmed_mean(values, 0.0), values.mean(0))
    assert np.allclose(trimmed_mean(values, 0.4), [3.0, 3.0])  # keeps the middle one


def test_coordinate_median_ignores_a_minority_of_outliers():
    values = np.array([[1.0], [2.0], [3.0], [1e9], [-1e9]])
    assert coordinate_median(values)[0] == 2.0


def test_robust_aggregate_keeps_dtypes_and_integer_arrays():
    reference = {"w": np.zeros(2, np.float32), "n": np.array([10], np.int64)}
    updates = [
        {"w": np.array([1.0, 1.0], np.float32), "n": np.array([11])},
        {"w": np.array([2.0, 1e6], np.float32), "n": np.array([12])},
        {"w": np.array([3.0, 1.0], np.float32), "n": np.array([99])},
    ]
    out = robust_aggregate(updates, reference, {}, "median")
    assert out["w"].numpy().dtype == np.float32 and np.allclose(out["w"].numpy(), [2.0, 1.0])
    assert out["n"].numpy().dtype == np.int64 and out["n"].numpy()[0] == 12


def test_unknown_robust_method_is_refused():
    with pytest.raises(ValueError, match="'mode' is not known"):
        robust_aggregate([], {}, {}, "mode")
    with pytest.raises(ValueError, match="aggregation 'krum' is not known"):
        QFLStrategy(aggregation="krum")


# --------------------------------------------------------------------------------------
# Screening rules
# --------------------------------------------------------------------------------------

REFERENCE = {"w": np.zeros(4), "theta": np.zeros(2)}
PERIODS = {"theta": TWO_PI}


def _updates(*scales):
    return [{"w": np.full(4, s), "theta": np.full(2, 0.1 * s)} for s in scales]


def test_norm_rule_rejects_an_update_far_from_the_rounds_median():
    updates = _updates(1.0, 1.2, 0.9, 30.0)
    rejected = screen_updates(updates, [10] * 4, REFERENCE, PERIODS, ScreeningRules(5.0, 0))
    assert list(rejected) == [3]
    assert "update norm" in rejected[3] and "the limit is 5 x" in rejected[3]
    assert "x the round's median" in rejected[3]


def test_norm_rule_keeps_honest_spread_and_is_off_at_zero():
    updates = _updates(1.0, 2.0, 3.0, 4.0)
    assert screen_updates(updates, [1] * 4, REFERENCE, PERIODS, ScreeningRules(5.0, 0)) == {}
    far = _updates(1.0, 1.0, 1e6)
    assert screen_updates(far, [1] * 3, REFERENCE, PERIODS, ScreeningRules(0, 0)) == {}


def test_norm_rule_cannot_act_on_two_updates():
    # With two updates neither is more than twice their median.
    rules = ScreeningRules(max_norm_ratio=2.0)
    assert screen_updates(_updates(1.0, 1e6), [1, 1], REFERENCE, PERIODS, rules) == {}


def test_weight_rule_rejects_an_absurd_num_examples():
    rules = ScreeningRules(max_weight_ratio=10.0)
    claims = [300, 280, 10**9, 310]
    rejected = screen_updates(_updates(1, 1, 1, 1), claims, REFERENCE, PERIODS, rules)
    assert rejected == {
        2: "claims 1e+09 examples, more than 10 x the round's median claim 305"
    }


def test_screening_ratios_below_one_are_refused():
    with pytest.raises(ValueError, match="max_norm_ratio = 0.5 must be 0"):
        ScreeningRules(max_norm_ratio=0.5)


# --------------------------------------------------------------------------------------
# The strategy: rejection, skip, metrics
# --------------------------------------------------------------------------------------


def _reply(values: dict, num_examples=10, **metrics):
    arrays = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in values.items()})
    record = MetricRecord({"num-examples": num_examples, "train-loss": 1.0, **metrics})
    return RecordDict({"arrays": arrays, "metrics": record})


GLOBAL = ArrayRecord({"w": Array(np.zeros(4, np.float32)), "theta": Array(np.zeros(2, np.float32))})


def _strategy(**kwargs) -> QFLStrategy:
    strategy = QFLStrategy(angle_periods=PERIODS, **kwargs)
    strategy.set_round_model(GLOBAL)
    return strategy


def _honest(node_id, step, n=10, **metrics):
    values = {"w": np.full(4, step), "theta": np.full(2, step)}
    return FakeReply(node_id, _reply(values, n, **metrics))


def test_strategy_rejects_a_scaled_update_by_the_norm_rule_and_averages_the_rest():
    strategy = _strategy(max_norm_ratio=5.0, min_train_nodes=2)
    replies = [_honest(1, 0.1), _honest(2, 0.2), _honest(3, 0.15), _honest(4, -50.0)]
    arrays, _metrics = strategy.aggregate_train(1, replies)
    report = strategy.reports[-1]
    assert report.clients_used == 3 and list(report.rejected) == [4]
    assert report.rejected[4].startswith("update norm")
    assert np.allclose(arrays["w"].numpy(), 0.15)


def test_strategy_rejects_an_absurd_num_examples_claim():
    strategy = _strategy(max_weight_ratio=10.0, min_train_nodes=2)
    replies = [_honest(1, 0.1), _honest(2, 0.2), _honest(3, 5.0, n=10**9)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert strategy.reports[-1].rejected == {
        3: "claims 1e+09 examples, more than 10 x the round's median claim 10"
    }
    assert np.allclose(arrays["w"].numpy(), 0.15)
    # Without the rule the lie takes the whole weight.
    unguarded = _strategy(min_train_nodes=2).aggregate_train(1, replies)[0]
    assert np.allclose(unguarded["w"].numpy(), 5.0, atol=1e-6)


def test_round_with_fewer_accepted_updates_than_the_minimum_is_skipped():
    strategy = _strategy(min_train_nodes=3)
    failed = FakeReply(3, error=type("E", (), {"reason": "ClientApp raised: injected failure"})())
    nan = FakeReply(2, _reply({"w": np.full(4, np.nan), "theta": np.zeros(2)}))
    arrays, metrics = strategy.aggregate_train(4, [_honest(1, 0.1), nan, failed])
    report = strategy.reports[-1]
    assert arrays is None and metrics is None
    assert report.skipped == "1 update(s) accepted, 3 needed (min-train-nodes)"
    assert report.failed == {3: "ClientApp raised: injected failure"}
    assert report.rejected == {2: "array 'w' has non-finite values"}
    assert report.clients_used == 0


def test_nodes_that_miss_the_deadline_are_recorded_as_failed():
    strategy = _strategy(min_train_nodes=2)
    strategy.round_timeout = 30.0
    strategy._awaited = {1, 2, 3}
    arrays, _ = strategy.aggregate_train(1, [_honest(1, 0.1), _honest(3, 0.3)])
    report = strategy.reports[-1]
    assert report.failed == {2: "no reply before the round deadline (30 s)"}
    assert report.clients_used == 2 and np.allclose(arrays["w"].numpy(), 0.2)


@pytest.mark.parametrize("method", ["median", "trimmed-mean"])
def test_strategy_robust_aggregation_ignores_a_minority_of_sign_flips(method):
    strategy = _strategy(aggregation=method, trim_fraction=0.4, min_train_nodes=2)
    replies = [_honest(1, 0.1), _honest(2, 0.2), _honest(3, 0.15),
               _honest(4, -2.0), _honest(5, -2.0)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), 0.1)
    fedavg = _strategy(min_train_nodes=2).aggregate_train(1, replies)[0]
    assert np.all(fedavg["w"].numpy() < -0.5)


def test_hostile_metrics_do_not_break_the_metric_average():
    # Flower's averaging raises when one reply has a list where another has a number.
    strategy = _strategy(min_train_nodes=2)
    replies = [_honest(1, 0.1, extra=[1.0, 2.0]), _honest(2, 0.2, extra=3.0),
               _honest(3, 0.2, extra=float("inf"))]
    _arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["extra"] == pytest.approx(3.0 / 3)
    assert metrics["train-loss"] == pytest.approx(1.0)
    assert scalar_metrics(MetricRecord({"a": [1], "b": 2, "c": float("nan")})) == {"b": 2}


def test_evaluate_replies_without_a_weight_are_left_out_not_fatal():
    strategy = _strategy()
    good = FakeReply(1, RecordDict({"metrics": MetricRecord({"num-examples": 10, "acc": 0.5})}))
    other = FakeReply(2, RecordDict({"metrics": MetricRecord({"num-examples": 30, "acc": 0.9,
                                                        "x": 1})}))
    bad = FakeReply(3, RecordDict({"metrics": MetricRecord({"acc": 1.0})}))
    metrics = strategy.aggregate_evaluate(2, [good, other, bad])
    assert metrics["acc"] == pytest.approx(0.8)
    assert "no positive 'num-examples'" in strategy.reports[-1].evaluate_rejected[3]


def test_decode_update_still_rejects_with_reasons():
    with pytest.raises(UpdateRejected, match="array 'w' cannot be decoded"):
        decode_update(
            RecordDict({"arrays": ArrayRecord({"w": _array(b"junk")}),
                        "metrics": MetricRecord({"num-examples": 1})}),
            {"w": _spec((2, 3), "float32")}, "num-examples",
        )


# --------------------------------------------------------------------------------------
# Injected failures and attacks (client side)
# --------------------------------------------------------------------------------------


def test_failures_are_a_reproducible_function_of_seed_round_and_partition():
    draws = [fails_in_round(7, r, p, 0.3) for r in range(1, 41) for p in range(10)]
    assert draws == [fails_in_round(7, r, p, 0.3) for r in range(1, 41) for p in range(10)]
    assert 0.2 < sum(draws) / len(draws) < 0.4
    assert not any(fails_in_round(7, r, 0, 0.0) for r in range(100))
    assert all(fails_in_round(7, r, 0, 1.0) for r in range(100))


def test_hostile_partitions_are_a_seeded_fraction():
    assert len(hostile_partitions(42, 5, 0.4)) == 2
    assert hostile_partitions(42, 5, 0.4) == hostile_partitions(42, 5, 0.4)
    assert hostile_partitions(42, 5, 0.0) == frozenset()
    assert hostile_partitions(42, 10, 1.0) == frozenset(range(10))


@pytest.mark.parametrize(
    ("attack", "expected"),
    [("scale", [0.0, 10.0]), ("sign-flip", [0.0, -10.0]), ("inflate-examples", [0.0, 1.0])],
)
def test_attacks_transform_the_delta(attack, expected):
    reference = ArrayRecord({"w": Array(np.array([0.0, 0.0], np.float32))})
    update = ArrayRecord({"w": Array(np.array([0.0, 1.0], np.float32))})
    out = attacked_update(update, reference, attack, 10.0, np.random.default_rng(0))
    assert np.allclose(out["w"].numpy(), expected) and out["w"].numpy().dtype == np.float32


def test_random_attack_has_the_scaled_norm_of_the_delta():
    reference = ArrayRecord({"w": Array(np.zeros(100, np.float32))})
    update = ArrayRecord({"w": Array(np.full(100, 0.1, np.float32))})
    out = attacked_update(update, reference, "random", 10.0, np.random.default_rng(0))
    assert np.linalg.norm(out["w"].numpy()) == pytest.approx(10.0 * 1.0, rel=1e-5)
