"""The relay wired into Flower, without Ray: RelayStrategy, the client mod and the UAV query.

Messages travel between the strategy and real ClientApps in this process through
Flower's wire format (protobuf), so what the other end sees is what a SuperLink would
deliver; an optional hook changes a message in transit (``in_process.InProcessGrid``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flower_messages import RUN_ID, SECRET, assign_message_id, over_the_wire
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_from_proto, message_to_proto
from in_process import NODES, TINY, global_arrays, make_grid, make_strategy

from client.app import build_client_app
from deploy.certs import generate_qkd_secrets
from relay.channels import get_channel
from relay.channels.qkd import CIPHERTEXT_RECORD
from relay.channels.teleport import COUNTS_RECORD
from relay.flower import (
    CONFIG_KEY,
    LINK_PREFIX,
    METRICS_KEY,
    bind_weight,
    message_header,
    message_rng,
    seal,
)
from relay.link import PathLink
from relay.shared_secret import SECRET_DIR_ENV_VAR, Keyring
from relay.topology_file import DEFAULT_TOPOLOGY_PATH, load_topology
from server.app import main

pytestmark = pytest.mark.usefixtures("flower_run")


def train_round(strategy, grid, server_round, arrays):
    messages = strategy.configure_train(
        server_round, arrays, ConfigRecord({"learning-rate": 0.001}), grid
    )
    replies = grid.send_and_receive(messages)
    return strategy.aggregate_train(server_round, replies), replies


# --------------------------------------------------------------------------------------
# Which node is which UAV
# --------------------------------------------------------------------------------------


def test_query_maps_each_node_to_the_uav_of_its_partition():
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides)
    mapped = strategy.map_nodes(make_grid(overrides))
    assert mapped == {101: "uav-0", 202: "uav-1", 303: "uav-2"}
    assert strategy.uav_of_node == mapped and strategy.unmapped == {}


def test_node_config_uav_id_overrides_the_partition():
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides)
    grid = make_grid(overrides, nodes={101: 0}, **{"uav-id": "uav-7"})
    assert strategy.map_nodes(grid) == {101: "uav-7"}


def test_partition_without_a_uav_and_a_duplicate_claim_are_refused():
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides)
    grid = make_grid(overrides, nodes={101: 3, 202: 3, 303: 12}, num_partitions=13)
    strategy.map_nodes(grid)
    assert strategy.uav_of_node == {101: "uav-3"}
    assert "claims uav-3, which node 101 already is" in strategy.unmapped[202]
    assert "partition-id 12 has no UAV" in strategy.unmapped[303]
    assert "10 UAVs" in strategy.unmapped[303]


def test_server_stops_before_training_when_a_node_has_no_uav(tmp_path):
    overrides = {**TINY, "relay": "ideal", "output-dir": str(tmp_path)}
    grid = make_grid(overrides, nodes={101: 0, 202: 10}, num_partitions=11)
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    with pytest.raises(SystemExit) as stop:
        main(grid, context, overrides)
    assert "node 202 cannot join the relay: partition-id 10 has no UAV" in str(stop.value)
    assert list(tmp_path.iterdir()) == []


def test_unloadable_topology_stops_the_run_with_one_clear_error(tmp_path):
    overrides = {**TINY, "topology": str(tmp_path / "missing.toml"), "output-dir": str(tmp_path)}
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    with pytest.raises(SystemExit) as stop:
        main(None, context, overrides)
    message = str(stop.value)
    assert message.startswith("Run stopped before training: run config 'topology' = ")
    assert "missing.toml" in message and "cannot be read" in message


# --------------------------------------------------------------------------------------
# A round over each channel
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("relay", ["ideal", "teleport", "qkd"])
def test_one_round_over_each_channel_aggregates_every_update_and_reports_its_cost(relay):
    overrides = {**TINY, "relay": relay, "shots": 20_000}
    strategy = make_strategy(overrides, fraction_evaluate=1.0, min_evaluate_nodes=1)
    grid = make_grid(overrides)
    strategy.map_nodes(grid)
    arrays = global_arrays(overrides)
    (aggregated, metrics), replies = train_round(strategy, grid, 1, arrays)
    report = strategy.reports[-1]
    assert (report.clients_used, report.clients_rejected, report.clients_failed) == (3, 0, 0)
    assert set(aggregated) == set(arrays)
    # The reply metrics carry both directions as the client saw them.
    assert metrics["down-n_bytes"] > 0 and metrics["up-n_bytes"] > 0
    evaluate = strategy.configure_evaluate(1, aggregated, ConfigRecord(), grid)
    evaluated = strategy.aggregate_evaluate(1, grid.send_and_receive(evaluate))
    assert 0.0 <= evaluated["eval-accuracy"] <= 1.0 and "down-latency_s" in evaluated
    figures = report.channel_figures()
    link_fidelities = [
        strategy.links_for_round(1)[uav].end_to_end_fidelity for uav in ("uav-0", "uav-1", "uav-2")
    ]
    assert figures["fidelity"] == pytest.approx(np.mean(link_fidelities))
    assert figures["bytes_up"] > 0 and figures["bytes_down"] > 0 and figures["latency_s"] > 0
    assert figures["keys_aborted"] == 0 and figures["clients_no_path"] == 0
    # 3 train downlinks, 3 uplinks, 3 evaluate downlinks.
    assert len(report.channel_reports) == 9
    if relay == "ideal":
        assert figures["bell_pairs"] == 0 and figures["qber"] is None
    if relay == "teleport":
        parameters = sum(a.numpy().size for a in arrays.values())
        assert figures["bell_pairs"] == 9 * parameters * 20_000
        assert all(COUNTS_RECORD in reply.content for reply in replies)
    if relay == "qkd":
        assert figures["qber"] < 0.05 and figures["key_bits"] >= 9 * 256
        assert figures["bell_pairs"] == 9 * 16384
        assert all(CIPHERTEXT_RECORD in reply.content for reply in replies)
        assert all("arrays" not in reply.content for reply in replies)


def test_qkd_and_ideal_aggregate_exactly_the_same_model():
    results = {}
    for relay in ("ideal", "qkd"):
        overrides = {**TINY, "relay": relay}
        strategy = make_strategy(overrides)
        grid = make_grid(overrides)
        strategy.map_nodes(grid)
        (aggregated, _metrics), _ = train_round(strategy, grid, 1, global_arrays(overrides))
        results[relay] = aggregated
    for name, array in results["ideal"].items():
        assert results["qkd"][name].data == array.data


# --------------------------------------------------------------------------------------
# Attacks on the uplink: rejected with the channel's reason, counted, never aggregated
# --------------------------------------------------------------------------------------


def qkd_setup(**kwargs):
    overrides = {**TINY, "relay": "qkd", **kwargs}
    strategy = make_strategy(overrides)
    grid = make_grid(overrides)
    strategy.map_nodes(grid)
    return strategy, grid, global_arrays(overrides)


def flip_ciphertext_bit(reply: Message) -> Message:
    ciphertext = reply.content[CIPHERTEXT_RECORD]["ciphertext"].numpy().copy()
    ciphertext[len(ciphertext) // 3] ^= 0x10
    reply.content[CIPHERTEXT_RECORD]["ciphertext"] = Array(ciphertext)
    return reply


def test_tampered_uplink_ciphertext_is_rejected_and_the_round_goes_on():
    strategy, grid, arrays = qkd_setup()
    grid.tamper_up = lambda r: flip_ciphertext_bit(r) if r.metadata.src_node_id == 202 else r
    (aggregated, _metrics), _ = train_round(strategy, grid, 1, arrays)
    report = strategy.reports[-1]
    assert aggregated is not None and report.clients_used == 2
    assert set(report.rejected) == {202}
    assert "qkd channel rejected the uplink: qkd authentication failed" in report.rejected[202]


def test_uplink_replayed_from_an_earlier_round_is_rejected():
    strategy, grid, arrays = qkd_setup()
    (round_one, _metrics), replies = train_round(strategy, grid, 1, arrays)
    old_reply = next(r for r in replies if r.metadata.src_node_id == 303)

    def replay(reply: Message) -> Message:
        if reply.metadata.src_node_id != 303:
            return reply
        return Message(old_reply.content, reply_to=_instruction_for(reply))

    grid.tamper_up = replay
    train_round(strategy, grid, 2, round_one)
    assert "server_round is 1, expected 2 (replayed from another round?)" in (
        strategy.reports[-1].rejected[303]
    )

    # Rewriting the public round number does not help: the key and the tag are bound to it.
    def replay_rewritten(reply: Message) -> Message:
        reply = replay(reply)
        if reply.metadata.src_node_id == 303:
            reply.content["relay.header"]["server_round"] = 3
        return reply

    grid.tamper_up = replay_rewritten
    train_round(strategy, grid, 3, round_one)
    assert "qkd key verification failed" in strategy.reports[-1].rejected[303] or (
        "qkd authentication failed" in strategy.reports[-1].rejected[303]
    )
    assert strategy.reports[-1].clients_used == 2


def _instruction_for(reply: Message) -> Message:
    """A stand-in for the instruction ``reply`` answers (for building a forged reply)."""
    instruction = Message(RecordDict(), dst_node_id=reply.metadata.src_node_id,
                          message_type=reply.metadata.message_type)
    return assign_message_id(instruction, reply.metadata.reply_to_message_id)


def test_the_same_uplink_delivered_twice_is_accepted_once():
    strategy, grid, arrays = qkd_setup()
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    replies = grid.send_and_receive(messages)
    duplicate = over_the_wire(next(r for r in replies if r.metadata.src_node_id == 101))
    strategy.aggregate_train(1, [*replies, duplicate])
    report = strategy.reports[-1]
    assert report.clients_used == 3
    assert "qkd replay: this envelope was already accepted once" in report.rejected[101]


def test_uplink_sent_for_another_node_is_rejected_as_misrouted():
    strategy, grid, arrays = qkd_setup()
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages)}
    # Node 202's envelope arrives as node 101's reply.
    forged = Message(replies[202].content, reply_to=_instruction_for(replies[101]))
    strategy.aggregate_train(1, [forged, replies[202], replies[303]])
    report = strategy.reports[-1]
    assert "misrouted: meant for another node?" in report.rejected[101]
    assert report.clients_used == 2


def test_weight_changed_in_transit_is_rejected():
    strategy, grid, arrays = qkd_setup()

    def inflate(reply: Message) -> Message:
        if reply.metadata.src_node_id == 101:
            reply.content[METRICS_KEY]["num-examples"] = 10**6
        return reply

    grid.tamper_up = inflate
    train_round(strategy, grid, 1, arrays)
    assert "metric 'num-examples' = 1000000 differs from the value bound to the payload" in (
        strategy.reports[-1].rejected[101]
    )


# --------------------------------------------------------------------------------------
# The downlink: a client refuses what it cannot authenticate
# --------------------------------------------------------------------------------------


def test_tampered_downlink_makes_the_client_reply_with_an_error_and_counts_as_failed():
    strategy, grid, arrays = qkd_setup()
    grid.tamper_down = lambda m: (
        flip_ciphertext_bit(m) if m.metadata.dst_node_id == 303 else m
    )
    (aggregated, _metrics), _ = train_round(strategy, grid, 1, arrays)
    report = strategy.reports[-1]
    assert aggregated is not None and report.clients_used == 2
    assert report.clients_failed == 1
    assert "qkd channel rejected the downlink: qkd authentication failed" in report.failed[303]


def test_downlink_delivered_to_the_wrong_node_is_refused():
    strategy, grid, arrays = qkd_setup()
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    meant_for_101 = next(m for m in messages if m.metadata.dst_node_id == 101)
    reply = grid.client_app(over_the_wire(assign_message_id(meant_for_101)), grid.contexts[202])
    assert reply.has_error()
    assert "misrouted: its link is for uav-0, this is uav-1" in reply.error.reason


def test_a_downlink_replayed_to_a_fresh_clientapp_process_is_refused():
    # Flower starts a new ClientApp process for every message: a new app stands for it.
    strategy, grid, arrays = qkd_setup()
    messages = strategy.configure_train(1, arrays, ConfigRecord({"learning-rate": 0.001}), grid)
    recorded = message_to_proto(assign_message_id(
        next(m for m in messages if m.metadata.dst_node_id == 101)
    ))  # what an attacker on the path keeps
    overrides = {**TINY, "relay": "qkd"}
    first = build_client_app(overrides)(message_from_proto(recorded), grid.contexts[101])
    assert not first.has_error()
    replayed = build_client_app(overrides)(message_from_proto(recorded), grid.contexts[101])
    assert replayed.has_error()
    assert ("qkd channel rejected the downlink: qkd replay: round 1 of "
            f"{RUN_ID}/train (downlink) is not newer than round 1") in replayed.error.reason


def test_deployed_secret_files_each_uav_its_own_and_a_uav_without_one_is_not_sent_to(
    tmp_path, monkeypatch
):
    folder = tmp_path / "secrets"
    generate_qkd_secrets(folder, ["uav-0", "uav-1"])  # none for uav-2
    monkeypatch.setenv(SECRET_DIR_ENV_VAR, str(folder))
    strategy, grid, arrays = qkd_setup()
    assert strategy.channel.provenance() == {
        "qkd_secret_source": f"files qkd-secret-<uav-id> in {folder}"
    }
    (aggregated, _metrics), _ = train_round(strategy, grid, 1, arrays)
    report = strategy.reports[-1]
    assert aggregated is not None and report.clients_used == 2
    assert report.not_sent[303] == (
        "train downlink not sent: qkd: no pre-shared secret for uav-2 here (files "
        f"qkd-secret-<uav-id> in {folder}); give this end and uav-2 the same file "
        "qkd-secret-uav-2 (python -m deploy.certs)"
    )


# --------------------------------------------------------------------------------------
# Aborted keys: nothing is sent in the clear, nothing aggregated, and the log says why
# --------------------------------------------------------------------------------------


def test_full_eavesdropper_aborts_every_key_and_nothing_is_aggregated(flwr_log):
    strategy, grid, arrays = qkd_setup(eavesdropper=1.0)
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    assert messages == []  # no downlink goes out without a key
    aggregated, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert aggregated is None and metrics is None
    report = strategy.reports[-1]
    figures = report.channel_figures()
    assert figures["keys_aborted"] == 3 and figures["key_bits"] == 0
    assert figures["qber"] == pytest.approx(0.25, abs=0.03)
    assert set(report.not_sent) == set(NODES)
    assert all("exceeds the abort threshold" in reason for reason in report.not_sent.values())
    assert "no update aggregated: 3 keys aborted (QBER 0.2" in flwr_log.getvalue()


def test_uplink_key_abort_at_the_client_is_counted_and_not_aggregated():
    strategy, grid, arrays = qkd_setup()
    # Every UAV's own secret, as the simulation derives it from the master.
    client_channel = get_channel("qkd", keyring=Keyring(master=SECRET), eavesdropper=1.0)

    def reencode_with_an_aborted_key(reply: Message) -> Message:
        # The UAV's uplink runs into an eavesdropper the downlink did not meet.
        node_id = reply.metadata.src_node_id
        link = strategy._sent_links[(1, "train", node_id)]
        header = message_header(RUN_ID, "train", 1, node_id, "up")
        envelope, sent = client_channel.encode(
            bind_weight(arrays, 40), link, header, np.random.default_rng(0)
        )
        metrics = MetricRecord({"num-examples": 40, **sent.to_metrics("up-")})
        return Message(seal(envelope, {METRICS_KEY: metrics}), reply_to=_instruction_for(reply))

    grid.tamper_up = reencode_with_an_aborted_key
    (aggregated, _metrics), _ = train_round(strategy, grid, 1, arrays)
    report = strategy.reports[-1]
    assert aggregated is None and report.clients_rejected == 3
    assert all("aborted at the sender" in reason for reason in report.rejected.values())
    assert report.channel_figures()["keys_aborted"] == 3


# --------------------------------------------------------------------------------------
# Weighting and sampling
# --------------------------------------------------------------------------------------


class ListedGrid:
    """Just a list of connected nodes (for rounds whose replies a test builds itself)."""

    def __init__(self, node_ids) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def crafted_reply(strategy, message: Message, arrays: ArrayRecord, num_examples: int) -> Message:
    """What an honest UAV would send back over the ideal channel."""
    node_id = message.metadata.dst_node_id
    link = PathLink.from_config(message.content[CONFIG_KEY], LINK_PREFIX)
    header = message_header(RUN_ID, "train", 1, node_id, "up")
    envelope, _sent = strategy.channel.encode(
        bind_weight(arrays, num_examples), link, header,
        message_rng(0, "train", 1, link.uav_id, "up"),
    )
    metrics = MetricRecord({"num-examples": num_examples})
    return Message(seal(envelope, {METRICS_KEY: metrics}), reply_to=assign_message_id(message))


@pytest.mark.parametrize("weighting", ["samples", "samples-x-fidelity"])
def test_weighting_multiplies_sample_counts_by_link_fidelity(weighting):
    strategy = make_strategy({"relay": "ideal", "weighting": weighting})
    # uav-0 is one hop from the base station in round 1; uav-5 two hops (lower fidelity).
    strategy.uav_of_node = {11: "uav-0", 55: "uav-5"}
    fidelity = {n: strategy.links_for_round(1)[u].end_to_end_fidelity
                for n, u in strategy.uav_of_node.items()}
    assert fidelity[11] > fidelity[55] + 0.02
    base = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    messages = strategy.configure_train(1, base, ConfigRecord(), ListedGrid([11, 55]))
    value = {11: 1.0, 55: 5.0}
    count = {11: 30, 55: 10}
    replies = [
        crafted_reply(
            strategy, m,
            ArrayRecord({"w": Array(np.full(3, value[m.metadata.dst_node_id], np.float32))}),
            count[m.metadata.dst_node_id],
        )
        for m in messages
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    weights = {n: count[n] * (fidelity[n] if weighting == "samples-x-fidelity" else 1.0)
               for n in count}
    expected = sum(weights[n] * value[n] for n in count) / sum(weights.values())
    assert np.allclose(aggregated["w"].numpy(), expected, atol=1e-6)
    plain = (30 * 1.0 + 10 * 5.0) / 40
    assert (not math.isclose(expected, plain)) == (weighting == "samples-x-fidelity")


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting 'fidelity' is not known"):
        make_strategy({"relay": "ideal"}, weighting="fidelity")


@pytest.fixture
def topology_with_a_lost_uav(tmp_path):
    """The default topology with uav-2 moved thousands of km away from every relay."""
    text = DEFAULT_TOPOLOGY_PATH.read_text()
    text = text.replace('x_km = 0.5\ny_km = -3.0', 'x_km = 0.5\ny_km = -6000.0')
    path = tmp_path / "lost-uav.toml"
    path.write_text(text)
    topology = load_topology(path)
    assert topology.links_for_round(1, 7)["uav-2"] is None
    assert topology.links_for_round(1, 7)["uav-0"] is not None
    return topology


def test_nodes_whose_uav_has_no_path_are_not_sampled(topology_with_a_lost_uav, flwr_log):
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides, topology=topology_with_a_lost_uav, min_train_nodes=2)
    grid = make_grid(overrides)
    messages = list(strategy.configure_train(1, global_arrays(overrides), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [101, 202]
    report = strategy.reports[-1]
    assert report.clients_sampled == 2 and report.clients_no_path == 1
    assert report.channel_figures()["clients_no_path"] == 1
    assert "no relay path for uav-2 (node 303): not sampled" in flwr_log.getvalue()


def test_round_is_skipped_when_fewer_uavs_than_needed_have_a_path(topology_with_a_lost_uav):
    overrides = {**TINY, "relay": "ideal"}
    strategy = make_strategy(overrides, topology=topology_with_a_lost_uav, min_train_nodes=3,
                             min_available_nodes=3)
    grid = make_grid(overrides)
    # FedAvg would wait for a third reachable node forever; the round is skipped instead.
    assert strategy.configure_train(1, global_arrays(overrides), ConfigRecord(), grid) == []
    assert strategy.reports[-1].clients_no_path == 1


def test_link_parameters_reach_the_client_in_its_config_record():
    overrides = {**TINY, "relay": "teleport"}
    strategy = make_strategy(overrides, min_train_nodes=1, min_available_nodes=1)
    strategy.uav_of_node = {11: "uav-3"}
    (message,) = strategy.configure_train(
        2, global_arrays(overrides), ConfigRecord({"learning-rate": 0.01}), ListedGrid([11])
    )
    config = message.content[CONFIG_KEY]
    assert PathLink.from_config(config, LINK_PREFIX) == strategy.links_for_round(2)["uav-3"]
    assert config["server-round"] == 2 and config["learning-rate"] == 0.01
    assert "arrays" not in message.content  # only the channel's envelope carries the model


# --------------------------------------------------------------------------------------
# Nothing secret or decrypted in the logs
# --------------------------------------------------------------------------------------


def test_qkd_round_logs_neither_the_secret_nor_decrypted_content(flwr_log, caplog):
    caplog.set_level(logging.DEBUG)
    strategy, grid, arrays = qkd_setup()
    strategy.min_train_nodes = 1  # aggregate the one update left, so its values are checked too
    grid.tamper_up = lambda r: flip_ciphertext_bit(r) if r.metadata.src_node_id == 202 else r
    grid.tamper_down = lambda m: flip_ciphertext_bit(m) if m.metadata.dst_node_id == 303 else m
    (aggregated, _metrics), replies = train_round(strategy, grid, 1, arrays)
    text = flwr_log.getvalue() + caplog.text
    assert "rejected" in text  # the attacks were logged...
    assert SECRET.hex() not in text and SECRET.hex().upper() not in text
    assert repr(SECRET) not in text and SECRET.hex() not in repr(strategy.channel)
    # ...and no parameter of either model, plain, appears in them.
    for record in (arrays, aggregated):
        for array in record.values():
            values = array.numpy().ravel()[:3]
            assert all(f"{value:.6f}" not in text for value in values if abs(value) > 1e-3)
    for reply in replies:
        assert SECRET not in message_to_proto(reply).SerializeToString()


def test_query_messages_pass_the_mod_untouched():
    overrides = {**TINY, "relay": "qkd"}
    grid = make_grid(overrides, nodes={101: 4}, num_partitions=10)
    query = Message(RecordDict({CONFIG_KEY: ConfigRecord({"query": "uav-id"})}),
                    dst_node_id=101, message_type=MessageType.QUERY)
    (reply,) = grid.send_and_receive([query])
    assert reply.content["relay.uav"]["uav-id"] == "uav-4"
    assert reply.content["relay.uav"]["partition-id"] == 4
