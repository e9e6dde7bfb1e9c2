"""Aggregation at the relays (issue 12, section 1): grouping, segment links, the relays'
emulation through the real strategy, and what each hop is billed.

The UAVs here are fakes that do what ``client.relay_mod`` does (decode the downlink on
the link they are told, bind their weight, encode the update on the same link), so a
round runs through :class:`~strategies.relay_hierarchy.HierarchicalRelayStrategy`'s
real hooks without training anything.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flower_messages import RUN_ID, assign_message_id
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from in_process import TINY, make_grid

from relay.channels import get_channel
from relay.flower import LINK_PREFIX, bind_weight, message_header, message_rng, seal
from relay.link import PathLink
from relay.shared_secret import Keyring
from relay.topology_file import load_topology
from server.app import main
from strategies.hierarchy import RelayEmulator, group_by_relay
from strategies.relay import RelayStrategy
from strategies.relay_hierarchy import HierarchicalRelayStrategy

pytestmark = pytest.mark.usefixtures("flower_run")

SEED = 7
ROUND = 1
PERIODS = {"theta": 2 * math.pi, "crx": 4 * math.pi}
NODES = {1000 + index: f"uav-{index}" for index in range(10)}  # every UAV of default.toml
SECRETS = {uav: bytes([index + 1]) * 32 for index, uav in enumerate(NODES.values())}


# --------------------------------------------------------------------------------------
# Grouping
# --------------------------------------------------------------------------------------


def test_uavs_meet_at_the_first_node_they_share():
    paths = {
        "a": ("a", "x", "hap", "bs"),
        "b": ("b", "x", "hap", "bs"),
        "c": ("c", "hap", "bs"),
        "d": ("d", "hap", "bs"),
        "e": ("e", "bs"),
    }
    # a and b meet at x first; c and d at the HAP (a and b go on through it aggregated).
    assert group_by_relay(paths) == {"a": "x", "b": "x", "c": "hap", "d": "hap"}


def test_a_relay_left_with_one_uav_and_a_uav_on_the_way_do_not_aggregate():
    paths = {
        "a": ("a", "x", "hap", "bs"),
        "b": ("b", "x", "hap", "bs"),
        "c": ("c", "hap", "bs"),  # the HAP would hold c alone: a and b met earlier
        "d": ("d", "a", "bs"),  # a is where a's update starts, not a relay of d's
        "e": ("e", "leo", "bs"),
    }
    assert group_by_relay(paths) == {"a": "x", "b": "x"}
    assert group_by_relay({}) == {}


def test_groups_form_on_the_default_topology():
    links = load_topology().links_for_round(ROUND, SEED)
    groups = group_by_relay({uav: link.path for uav, link in links.items() if link})
    assert groups == {f"uav-{index}": "hap-0" for index in range(4, 9)}


# --------------------------------------------------------------------------------------
# Segment links
# --------------------------------------------------------------------------------------


def test_segments_are_the_topology_figures_of_their_chain_of_hops():
    topology = load_topology()
    links = topology.links_for_round(ROUND, SEED)
    whole = links["uav-5"]
    assert whole.path == ("uav-5", "hap-0", "bs")
    assert links.segment("uav-5", "uav-5", "bs") == whole
    lower = links.segment("uav-5", "uav-5", "hap-0")
    upper = links.segment("uav-5", "hap-0", "bs", owner="uav-4")
    assert lower.path == ("uav-5", "hap-0") and upper.path == ("hap-0", "bs")
    assert (lower.uav_id, upper.uav_id) == ("uav-5", "uav-4")
    assert lower.hop_link_types + upper.hop_link_types == whole.hop_link_types
    assert lower.hop_distances_km + upper.hop_distances_km == whole.hop_distances_km
    assert lower.propagation_delay_s + upper.propagation_delay_s == pytest.approx(
        whole.propagation_delay_s
    )
    # One hop: no swap and no waiting in memory for another hop.
    hop_types = {link.name: link for link in topology.link_types}
    assert lower.end_to_end_fidelity == hop_types[lower.hop_link_types[0]].raw_fidelity
    assert lower.end_to_end_fidelity > whole.end_to_end_fidelity
    assert lower.pair_rate_hz > whole.pair_rate_hz
    with pytest.raises(ValueError, match="is not a segment"):
        links.segment("uav-5", "bs", "hap-0")


# --------------------------------------------------------------------------------------
# Rounds through the real strategy, with fake UAVs
# --------------------------------------------------------------------------------------


class NodesOnly:
    """The grid a round's draw reads when every node is already known."""

    def get_node_ids(self):
        return list(NODES)


def global_model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({
        "w": Array(rng.normal(size=(3, 4)).astype(np.float32)),
        # Near the seam: the UAVs' angles straddle +-pi, where arithmetic means fail.
        "theta": Array(np.array([3.1, -3.1, 3.14, 0.2, -3.14159], dtype=np.float32)),
        "crx": Array(np.array([6.2, -6.2, 0.1], dtype=np.float32)),
    })


def update_of(arrays: ArrayRecord, index: int) -> ArrayRecord:
    """UAV ``index``'s trained update: a small deterministic step from the global model."""
    rng = np.random.default_rng(100 + index)
    out = {}
    for name, array in arrays.items():
        value = array.numpy().astype(np.float64) + rng.normal(0, 0.08, array.numpy().shape)
        if name in PERIODS:  # wrap, as a trained angle may leave its range
            half = PERIODS[name] / 2
            value = (value + half) % PERIODS[name] - half
        out[name] = Array(value.astype(np.float32))
    return ArrayRecord(out)


def make(hierarchy: str, relay: str = "ideal", **kwargs):
    channel = (get_channel("qkd", keyring=Keyring(SECRETS)) if relay == "qkd"
               else get_channel(relay, shots=20_000) if relay == "teleport"
               else get_channel(relay))
    strategy_class = HierarchicalRelayStrategy if hierarchy == "relays" else RelayStrategy
    strategy = strategy_class(
        channel=channel, topology=load_topology(), run_id=RUN_ID, seed=SEED,
        angle_periods=PERIODS, min_train_nodes=2, min_available_nodes=2,
        fraction_evaluate=0.0, **kwargs,
    )
    strategy.uav_of_node = dict(NODES)
    return strategy


def uav_channel(relay: str, uav: str):
    if relay == "qkd":
        return get_channel("qkd", keyring=Keyring({uav: SECRETS[uav]}, holder=uav))
    return get_channel(relay, shots=20_000) if relay == "teleport" else get_channel(relay)


def uav_reply(message, relay: str, tamper=None) -> Message:
    """What a UAV's relay mod answers: the update, encoded on the link it was told."""
    node_id = message.metadata.dst_node_id
    config = message.content["config"]
    link = PathLink.from_config(config, LINK_PREFIX)
    channel = uav_channel(relay, link.uav_id)
    down = message_header(RUN_ID, "train", ROUND, node_id, "down")
    arrays, _ = channel.decode(message.content, link, down,
                               message_rng(SEED, "train", ROUND, link.uav_id, "down"))
    index = int(link.uav_id.split("-")[1])
    update = update_of(arrays, index)
    if tamper is not None:
        update = tamper(index, update)
    weight = 10 + 7 * index
    envelope, _ = channel.encode(
        bind_weight(update, weight), link,
        message_header(RUN_ID, "train", ROUND, node_id, "up"),
        message_rng(SEED, "train", ROUND, link.uav_id, "up"),
    )
    content = seal(envelope, {"metrics": MetricRecord({"num-examples": weight})})
    return Message(content, reply_to=message)


def configure(strategy):
    """The round's training messages, given ids as the grid gives them when it sends."""
    messages = strategy.configure_train(
        ROUND, global_model(), ConfigRecord({"learning-rate": 0.01}), NodesOnly()
    )
    return [assign_message_id(message) for message in messages]


def run_round(strategy, relay: str = "ideal", tamper=None):
    messages = configure(strategy)
    replies = [uav_reply(message, relay, tamper) for message in messages]
    return messages, strategy.aggregate_train(ROUND, replies)


def test_ideal_relays_give_the_flat_global_model_to_float_tolerance():
    _, (flat, flat_metrics) = run_round(make("none"))
    strategy = make("relays")
    messages, (relayed, metrics) = run_round(strategy)
    routes = strategy.routes(ROUND)
    assert {uav for uav, route in routes.items() if route.relay} == {
        f"uav-{index}" for index in range(4, 9)
    }
    # A grouped UAV is told its lower segment, and cannot tell.
    told = {PathLink.from_config(m.content["config"], LINK_PREFIX).path for m in messages}
    assert ("uav-5", "hap-0") in told and ("uav-9", "leo-0", "bs") in told
    report = strategy.reports[-1]
    assert report.clients_used == 10 and not report.rejected
    assert set(relayed) == set(flat)
    for name in flat:
        np.testing.assert_allclose(relayed[name].numpy(), flat[name].numpy(), rtol=0, atol=2e-6)
    # Angles near the seam stay on it (an arithmetic mean of 3.1 and -3.1 would be ~0).
    assert abs(abs(float(relayed["theta"].numpy()[0])) - math.pi) < 0.2
    assert dict(metrics) == pytest.approx(dict(flat_metrics))


def test_fidelity_weighting_through_relays_stays_close_to_flat():
    _, (flat, _m) = run_round(make("none", weighting="samples-x-fidelity"))
    _, (relayed, _m) = run_round(make("relays", weighting="samples-x-fidelity"))
    for name in flat:
        np.testing.assert_allclose(relayed[name].numpy(), flat[name].numpy(), atol=1e-3)


def test_each_hop_is_billed_for_what_crosses_it():
    flat_strategy = make("none")
    run_round(flat_strategy)
    flat_hops = flat_strategy.reports[-1].channel_figures()["hops"]
    strategy = make("relays")
    run_round(strategy)
    figures = strategy.reports[-1].channel_figures()
    hops = figures["hops"]
    # Flat: each of the 5 HAP UAVs' 2 messages crosses hap-0>bs; with the relay, one
    # model down and one aggregate up.
    assert flat_hops["hap-0>bs"]["messages"] == 10
    assert hops["hap-0>bs"]["messages"] == 2
    for index in range(4, 9):
        assert hops[f"uav-{index}>hap-0"]["messages"] == 2
        assert hops[f"uav-{index}>hap-0"] == flat_hops[f"uav-{index}>hap-0"] | {
            "latency_s": hops[f"uav-{index}>hap-0"]["latency_s"]
        }
    assert hops["uav-9>leo-0"]["messages"] == 2 and figures["space_messages"] == 2
    # Totals keep their meaning: every message's bytes, the relays' included.
    report = strategy.reports[-1]
    assert len(report.relay_reports) == 2 and len(report.channel_reports) == 20
    assert figures["bytes_up"] + figures["bytes_down"] == sum(
        r.n_bytes for r in report.all_reports()
    )
    assert set(report.relay_of_node.values()) == {"hap-0"}
    assert figures["latency_s"] > 0


def test_teleport_noise_of_the_upper_hop_is_applied_once_to_the_aggregate(monkeypatch):
    strategy = make("relays", relay="teleport")
    calls = []
    for method in ("encode", "decode"):
        original = getattr(strategy.channel, method)

        def spy(arrays, link, header, rng, _original=original, _method=method):
            calls.append((_method, link.path, header.direction))
            return _original(arrays, link, header, rng)

        monkeypatch.setattr(strategy.channel, method, spy)
    _, (relayed, _metrics) = run_round(strategy, relay="teleport")
    upper = [call for call in calls if call[1] == ("hap-0", "bs")]
    # Down: encoded once at the base station, decoded once at the relay; up the same.
    assert sorted(upper) == sorted([("encode", ("hap-0", "bs"), "down"),
                                    ("decode", ("hap-0", "bs"), "down"),
                                    ("encode", ("hap-0", "bs"), "up"),
                                    ("decode", ("hap-0", "bs"), "up")])
    lower = [call for call in calls if call[1] == ("uav-5", "hap-0")]
    assert sorted(lower) == [("decode", ("uav-5", "hap-0"), "up"),
                             ("encode", ("uav-5", "hap-0"), "down")]
    report = strategy.reports[-1]
    assert report.clients_used == 10
    _, (flat, _m) = run_round(make("none", relay="ideal"))
    for name in flat:  # noisy, but the same model
        assert np.max(np.abs(relayed[name].numpy() - flat[name].numpy())) < 0.3


def test_a_hostile_update_is_rejected_at_its_relay_and_does_not_poison_the_aggregate():
    def poison(index, update):
        if index == 6:
            return ArrayRecord({name: Array(array.numpy() * 0 + 50.0) if name == "w"
                                else array for name, array in update.items()})
        return update

    strategy = make("relays", max_norm_ratio=5.0)
    _, (relayed, _metrics) = run_round(strategy, tamper=poison)
    report = strategy.reports[-1]
    hostile = next(node for node, uav in NODES.items() if uav == "uav-6")
    assert set(report.rejected) == {hostile}
    assert report.rejected[hostile].startswith("at relay hap-0: update norm")
    assert report.clients_used == 9
    assert np.max(np.abs(relayed["w"].numpy() - global_model()["w"].numpy())) < 1.0


def test_a_tampered_uplink_is_rejected_by_the_channel_at_the_relay():
    strategy = make("relays", relay="qkd")
    messages = configure(strategy)
    replies = [uav_reply(message, "qkd") for message in messages]
    target = next(node for node, uav in NODES.items() if uav == "uav-7")
    reply = next(r for r in replies if r.metadata.src_node_id == target)
    reply.content["metrics"]["num-examples"] = 10**6
    strategy.aggregate_train(ROUND, replies)
    reason = strategy.reports[-1].rejected[target]
    assert reason.startswith("at relay hap-0: metric 'num-examples'")


def test_qkd_relays_aggregate_the_ideal_model_with_no_replay_rejection():
    _, (ideal, _m) = run_round(make("relays"))
    strategy = make("relays", relay="qkd")
    _, (relayed, _m) = run_round(strategy, relay="qkd")
    report = strategy.reports[-1]
    assert report.clients_used == 10 and not report.rejected and not report.not_sent
    for name in ideal:
        assert relayed[name].data == ideal[name].data
    figures = report.channel_figures()
    assert figures["keys_aborted"] == 0 and figures["hops"]["hap-0>bs"]["key_bits"] > 0


def test_the_emulator_serves_messages_one_by_one():
    """The per-message steps an asynchronous buffer calls: (a), (b) per UAV, (c) at flush."""
    strategy = make("relays")
    messages = configure(strategy)
    emulator = strategy.emulator
    assert isinstance(emulator, RelayEmulator)
    routes = strategy.routes(ROUND)
    grouped = [m for m in messages if routes[NODES[m.metadata.dst_node_id]].relay]
    for message in grouped[:3]:
        node_id = message.metadata.dst_node_id
        emulator.receive(uav_reply(message, "ideal").content, routes[NODES[node_id]], "train",
                         ROUND, node_id, strategy._specs)
    assert emulator.held() == {"hap-0": [m.metadata.dst_node_id for m in grouped[:3]]}
    flushed = emulator.flush(strategy._reference, strategy._specs, "train", ROUND)
    assert emulator.held() == {} and not flushed.rejected
    (forwarded,) = flushed.forwarded
    assert forwarded.relay == "hap-0" and len(forwarded.members) == 3
    assert forwarded.partial.weight == sum(h.samples for h in forwarded.members)


# --------------------------------------------------------------------------------------
# The real apps in process: ClientApps that train, the ServerApp's main, metrics.json
# --------------------------------------------------------------------------------------


def run_apps(tmp_path, hierarchy: str) -> tuple[list[dict], dict]:
    overrides = {**TINY, "relay": "ideal", "hierarchy": hierarchy, "num-server-rounds": 1,
                 "min-train-nodes": 4, "fraction-evaluate": 0.0,
                 "output-dir": str(tmp_path), "run-name": hierarchy}
    # uav-0 flies straight to the base station; uav-4, -5 and -6 meet at hap-0.
    grid = make_grid(overrides, nodes={101: 0, 202: 4, 303: 5, 404: 6}, num_partitions=10)
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    main(grid, context, overrides)
    rows = json.loads((tmp_path / hierarchy / "metrics.json").read_text())
    return rows, torch.load(tmp_path / hierarchy / "final_model.pt")


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_the_apps_train_through_a_relay_to_the_flat_model(tmp_path):
    flat_rows, flat = run_apps(tmp_path, "none")
    rows, relayed = run_apps(tmp_path, "relays")
    for name, tensor in flat.items():
        torch.testing.assert_close(relayed[name], tensor, rtol=0, atol=2e-6)
    row = rows[-1]
    assert row["clients_used"] == 4 and row["rejected_reasons"] == {}
    assert row["hops"]["hap-0>bs"]["messages"] == 2
    assert flat_rows[-1]["hops"]["hap-0>bs"]["messages"] == 6
    assert row["hops"]["uav-0>bs"] == flat_rows[-1]["hops"]["uav-0>bs"]
    assert row["space_messages"] == 0
    # Mission time: the slowest of uav-0, -4, -5, -6 trains 55 s, inside one 60 s step.
    assert [r["emulated_time_s"] for r in rows] == [0.0, 60.0]
