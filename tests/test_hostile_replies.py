"""What one hostile UAV can send, and what the base station does with it (issue 11, 1-4, 9).

Each test builds the reply a hostile client would send and checks that it is refused
with a reason, never allowed to stop the base station or steer the aggregate.
"""

import io
import math

import numpy as np
import pytest
from fake_replies import FakeReply
from flwr.app import Array, ArrayRecord, Error, MetricRecord, RecordDict
from relay_links import HEADER, SECRET, make_link

from relay.arrays import DecodeError, decode_array
from relay.channels import ChannelRejected, get_channel
from relay.channels.envelope import array_to_numpy
from relay.channels.qkd import CIPHERTEXT_RECORD
from relay.channels.teleport import COUNTS_RECORD
from relay.flower import WEIGHT_ARRAY, bind_weight, unbind_weight
from relay.shared_secret import Keyring
from strategies.qfl import QFLStrategy, array_specs, one_line_reason

HUGE_SHAPE = (2, 10**15)


def hostile_array(shape=HUGE_SHAPE, dtype="<u2", payload=b"\0" * 16) -> Array:
    """A .npy Array whose header declares ``shape`` but whose data is a few bytes."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return Array(
        dtype=np.dtype(dtype).name, shape=shape, stype="numpy.ndarray",
        data=buffer.getvalue() + payload,
    )


def test_a_header_declaring_petabytes_is_refused_before_allocation():
    with pytest.raises(DecodeError, match="bytes of values, expected 4000000000000000"):
        decode_array(hostile_array())
    with pytest.raises(ValueError, match="bytes of values"):
        array_to_numpy(hostile_array())


def test_teleport_refuses_hostile_counts_with_a_reason():
    channel = get_channel("teleport", shots=100)
    arrays = ArrayRecord({"w": Array(np.linspace(-1, 1, 6, dtype=np.float32))})
    rng = np.random.default_rng(0)
    envelope, _ = channel.encode(arrays, make_link(), HEADER, rng)
    envelope[COUNTS_RECORD] = ArrayRecord({"w": hostile_array()})
    with pytest.raises(ChannelRejected, match="bytes of values"):
        channel.decode(envelope, make_link(), HEADER, rng)


def test_qkd_refuses_a_hostile_ciphertext_header_with_a_reason():
    sender = get_channel("qkd", keyring=Keyring({"uav-0": SECRET}, holder="uav-0"))
    receiver = get_channel("qkd", keyring=Keyring({"uav-0": SECRET}))
    arrays = ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))})
    rng = np.random.default_rng(0)
    envelope, _ = sender.encode(arrays, make_link(), HEADER, rng)
    envelope[CIPHERTEXT_RECORD] = ArrayRecord({"ciphertext": hostile_array(dtype="|u1")})
    with pytest.raises(ChannelRejected, match="bytes of values"):
        receiver.decode(envelope, make_link(), HEADER, rng)


def test_a_hostile_bound_weight_header_is_refused_with_a_reason():
    payload = bind_weight(ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}), 10)
    payload[WEIGHT_ARRAY] = hostile_array(shape=(10**15,), dtype="|u1", payload=b"\0" * 8)
    with pytest.raises(ValueError, match="cannot be decoded"):
        unbind_weight(payload)


# --- evaluate replies are screened like train replies ---------------------------------


def _evaluate_reply(node_id: int, examples, accuracy: float) -> FakeReply:
    metrics = MetricRecord({"num-examples": examples, "eval-accuracy": accuracy})
    return FakeReply(node_id, RecordDict({"metrics": metrics}))


def test_an_evaluate_reply_claiming_1e15_examples_does_not_set_the_aggregate():
    strategy = QFLStrategy(max_weight_ratio=10.0, fraction_evaluate=1.0)
    honest = [_evaluate_reply(node, 100, 0.8) for node in (1, 2, 3)]
    liar = _evaluate_reply(4, 10**15, 0.0)
    metrics = strategy.aggregate_evaluate(1, [*honest, liar])
    assert metrics["eval-accuracy"] == pytest.approx(0.8)
    assert "claims 1e+15 examples" in strategy.reports[-1].evaluate_rejected[4]
    assert set(strategy.reports[-1].evaluate_rejected) == {4}


@pytest.mark.parametrize("examples", [0, -5, float("nan"), float("inf")])
def test_an_evaluate_reply_without_a_positive_finite_weight_is_left_out(examples):
    strategy = QFLStrategy(fraction_evaluate=1.0)
    metrics = strategy.aggregate_evaluate(
        1, [_evaluate_reply(1, 100, 0.5), _evaluate_reply(2, examples, 0.0)]
    )
    assert metrics["eval-accuracy"] == pytest.approx(0.5)
    assert "no positive 'num-examples'" in strategy.reports[-1].evaluate_rejected[2]


def test_non_finite_evaluate_metrics_are_left_out_of_the_aggregate():
    strategy = QFLStrategy(fraction_evaluate=1.0)
    metrics = strategy.aggregate_evaluate(
        1, [_evaluate_reply(1, 100, 0.5), _evaluate_reply(2, 100, float("nan"))]
    )
    assert math.isfinite(metrics["eval-accuracy"])


# --- train replies ------------------------------------------------------------------


def test_a_relay_reply_without_a_metrics_record_is_rejected_with_that_reason():
    from in_process import make_strategy

    from strategies.qfl import UpdateRejected

    strategy = make_strategy({})
    strategy._sent_links[(1, "train", 7)] = make_link()
    # What a hostile UAV can send: a valid-looking envelope and no metrics record.
    envelope, _ = strategy.channel.encode(
        ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}), make_link(), HEADER,
        np.random.default_rng(0),
    )
    reply = FakeReply(7, envelope)
    reply.metadata.message_type = "train"
    with pytest.raises(UpdateRejected, match="reply lacks the 'metrics' record"):
        strategy.decode_uplink(reply, 1)


# The error reason a simulated ClientApp's exception reaches the strategy with (Ray
# 2.55, Flower 1.41; shortened from a real run of tests/test_reliability.py).
_FRAME = (
    '  File "/x/flwr/client/mod/utils.py", line 27, in new_ffn\n'
    "    return _mod(message, context, _ffn)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
)
RAY_TRACEBACK = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor"
    ".run()\x1b[39m (pid=17884, ip=192.0.2.2, actor_id=1cd0, repr=<ClientAppActor>)\n"
    + _FRAME * 30
    + '  File "/x/client/faults.py", line 121, in failure_mod\n'
    "    raise InjectedFailureError(\n"
    "client.faults.InjectedFailureError: injected failure: partition 2 fails in round 1 "
    "(failure-rate 0.4)\n\nThe above exception was the direct cause of the following "
    "exception:\n\n\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=17884)\n"
    + _FRAME
    + "flwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: injected failure: partition 2 fails "
    "in round 1 (failure-rate 0.4)'>"
)


def test_a_traceback_reason_becomes_its_exception_line_without_colour_codes():
    assert len(RAY_TRACEBACK) > 2000
    assert one_line_reason(RAY_TRACEBACK) == (
        "ClientAppException: injected failure: partition 2 fails in round 1 (failure-rate 0.4)"
    )
    assert one_line_reason("\x1b[31mno route to the base station\x1b[0m") == (
        "no route to the base station"
    )
    assert one_line_reason("Traceback:\n  File x\nValueError: bad\n\n") == "ValueError: bad"
    assert one_line_reason("") == "(no reason given)"
    assert len(one_line_reason("x" * 5000)) == 300


def test_failed_reasons_keep_one_clean_line_per_node():
    strategy = QFLStrategy(min_train_nodes=1)
    global_model = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    strategy.set_round_model(global_model)
    good = FakeReply(1, RecordDict({
        "arrays": ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}),
        "metrics": MetricRecord({"num-examples": 5}),
    }))
    failed = FakeReply(2, error=Error(code=0, reason=RAY_TRACEBACK))
    strategy.aggregate_train(1, [good, failed])
    reason = strategy.reports[-1].failed[2]
    assert "\n" not in reason and "\x1b" not in reason
    assert reason.startswith("ClientAppException: injected failure")
    assert array_specs(global_model)
