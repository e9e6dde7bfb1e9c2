"""SAGIN topology file, mobility and per-round UAV paths."""

from __future__ import annotations

import dataclasses
import math

import pytest
from flwr.app import ConfigRecord

from relay import physics
from relay.topology import PathLink, load_topology

SMALL_TOPOLOGY = """
[topology]
name = "small"
round_duration_s = 10.0

[[nodes]]
name = "bs"
layer = "ground"
base_station = true
x_km = 0.0
y_km = 0.0
altitude_km = 0.02

[[nodes]]
name = "hap-0"
layer = "hap"
x_km = 0.0
y_km = 0.0
altitude_km = 20.0

[[nodes]]
name = "uav-0"
layer = "uav"
x_km = 2.0
y_km = 0.0
altitude_km = 0.1

[[nodes]]
name = "uav-far"
layer = "uav"
x_km = 500.0
y_km = 0.0
altitude_km = 0.1

[links.uav-ground]
medium = "free-space"
max_range_km = 5.0
divergence_rad = 1.0e-4
aperture_radius_m = 0.1
raw_fidelity = 0.80
pair_rate_hz = 1.0e4
memory_coherence_time_s = 1.0
classical_rate_bps = 1.0e7

[links.uav-hap]
medium = "free-space"
max_range_km = 40.0
divergence_rad = 5.0e-5
aperture_radius_m = 0.2
raw_fidelity = 0.99
pair_rate_hz = 1.0e5
memory_coherence_time_s = inf
classical_rate_bps = 1.0e8

[links.ground-hap]
medium = "fibre"
attenuation_db_per_km = 0.2
max_range_km = 100.0
raw_fidelity = 0.99
pair_rate_hz = 1.0e6
memory_coherence_time_s = inf
classical_rate_bps = 1.0e9
"""


def _write(tmp_path, text, name="topology.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# The shipped default
# --------------------------------------------------------------------------------------


def test_default_topology_has_the_agreed_nodes():
    topology = load_topology()
    layers = [node.layer for node in topology.nodes]
    assert topology.uav_ids == tuple(f"uav-{index}" for index in range(10))
    assert layers.count("hap") == 1
    assert layers.count("leo") == 2
    assert topology.base_station == "bs"
    assert load_topology(topology.source).nodes == topology.nodes


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_uav_has_a_path_to_the_base_station_in_round_zero(seed):
    topology = load_topology()
    links = topology.links_for_round(0, seed=seed)
    assert set(links) == set(topology.uav_ids)
    for uav_id, link in links.items():
        assert link is not None, uav_id
        assert link.path[0] == uav_id and link.path[-1] == "bs"
        assert link.hop_count == len(link.path) - 1 == len(link.hop_fidelities)
        assert link.end_to_end_fidelity == pytest.approx(
            physics.swap_chain_fidelity(link.hop_fidelities)
        )
        assert 0.5 < link.end_to_end_fidelity <= max(link.hop_fidelities)
        assert 0.0 < link.success_probability <= 1.0
        one_pair_s = max(1.0 / link.pair_rate_hz, 2.0 / link.classical_rate_bps)
        assert link.latency_s == pytest.approx(one_pair_s + link.propagation_delay_s)


def test_far_uav_is_reached_through_a_satellite_pass():
    link = load_topology().links_for_round(0, seed=0)["uav-9"]
    assert link.path[1].startswith("leo-")
    assert link.propagation_delay_s > 1e-3


def test_links_change_between_rounds():
    topology = load_topology()
    first = topology.links_for_round(0, seed=0)
    second = topology.links_for_round(1, seed=0)
    changed = [uav for uav in topology.uav_ids if first[uav] != second[uav]]
    assert len(changed) == len(topology.uav_ids)
    assert any(
        first[uav].latency_s != pytest.approx(second[uav].latency_s) for uav in topology.uav_ids
    )


def test_same_seed_gives_same_links_and_rounds_can_be_queried_in_any_order():
    topology = load_topology()
    later_first = topology.links_for_round(5, seed=42)
    topology.links_for_round(2, seed=42)
    assert topology.links_for_round(5, seed=42) == later_first
    assert load_topology().links_for_round(5, seed=42) == later_first
    assert topology.links_for_round(5, seed=43) != later_first


def test_uavs_start_at_their_file_position_and_then_move():
    topology = load_topology()
    spec = next(node for node in topology.nodes if node.name == "uav-3")
    start = topology.node_states(0, seed=9)["uav-3"]
    assert (start.x_km, start.y_km) == pytest.approx((spec.x_km, spec.y_km))
    later = topology.node_states(3, seed=9)["uav-3"]
    assert math.hypot(later.x_km - spec.x_km, later.y_km - spec.y_km) > 0.1


def test_satellites_pass_overhead_and_then_set():
    topology = load_topology()

    def satellite_hops(server_round):
        return [
            hop
            for hop in topology.hops_for_round(server_round, seed=0)
            if "leo-0" in (hop.first, hop.second)
        ]

    overhead = [hop for hop in satellite_hops(2) if "bs" in (hop.first, hop.second)]
    assert overhead and overhead[0].elevation_deg > 70.0
    assert satellite_hops(40) == []


def test_negative_round_or_seed_is_rejected():
    topology = load_topology()
    with pytest.raises(ValueError, match="server_round"):
        topology.links_for_round(-1)
    with pytest.raises(ValueError, match="seed"):
        topology.links_for_round(0, seed=-3)


# --------------------------------------------------------------------------------------
# Routing and "no path"
# --------------------------------------------------------------------------------------


def test_routing_prefers_the_higher_fidelity_two_hop_path(tmp_path):
    topology = load_topology(_write(tmp_path, SMALL_TOPOLOGY))
    link = topology.links_for_round(0)["uav-0"]
    # Direct uav-ground pairs are only 0.80; the HAP route keeps about 0.98.
    assert link.path == ("uav-0", "hap-0", "bs")
    assert link.hop_link_types == ("uav-hap", "ground-hap")
    assert link.end_to_end_fidelity > 0.95


def test_uav_out_of_every_range_has_no_path(tmp_path):
    topology = load_topology(_write(tmp_path, SMALL_TOPOLOGY))
    assert topology.links_for_round(0)["uav-far"] is None


def test_path_below_the_minimum_fidelity_counts_as_no_path(tmp_path):
    text = SMALL_TOPOLOGY.replace(
        "round_duration_s = 10.0", "round_duration_s = 10.0\nmin_end_to_end_fidelity = 0.99"
    )
    topology = load_topology(_write(tmp_path, text))
    assert topology.links_for_round(0)["uav-0"] is None


def test_path_link_round_trips_through_a_flower_config_record():
    link = load_topology().links_for_round(0, seed=0)["uav-9"]
    record = ConfigRecord(link.to_config())
    assert PathLink.from_config(record) == link
    broken = dict(record)
    del broken["link.end_to_end_fidelity"]
    with pytest.raises(ValueError, match="end_to_end_fidelity"):
        PathLink.from_config(broken)
    wrong = dict(record, **{"link.hop_fidelities": [0.9]})
    with pytest.raises(ValueError, match="hop_fidelities"):
        PathLink.from_config(wrong)
    with pytest.raises(ValueError, match="end_to_end_fidelity"):
        dataclasses.replace(link, end_to_end_fidelity=1.5).validate()


# --------------------------------------------------------------------------------------
# Validation of bad files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'layer = "hap"',
            'layer = "moon"',
            r"unknown layer 'moon'; allowed: ground, uav, hap, leo",
        ),
        (
            "base_station = true",
            "base_station = false",
            "exactly one ground node with base_station",
        ),
        ("altitude_km = 20.0", "altitude_km = -20.0", r"node 'hap-0' key 'altitude_km' = -20"),
        ("max_range_km = 40.0", "max_range_km = -1.0", r"\[links.uav-hap\] key 'max_range_km'"),
        ("raw_fidelity = 0.80", "raw_fidelity = 0.2", r"raw_fidelity = 0.2 is outside \(0.25, 1\]"),
        ("raw_fidelity = 0.80", "raw_fidelity = 1.5", r"raw_fidelity = 1.5 is outside \(0.25, 1\]"),
        ("[links.uav-hap]", "[links.uav-moon]", "unknown link type \\[links.uav-moon\\]; allowed"),
        ('medium = "fibre"', 'medium = "copper"', "unknown medium 'copper'; allowed"),
        ("pair_rate_hz = 1.0e5", "pair_rate_hz = 1.0e5\nwarp = 3", "unknown key 'warp'; allowed"),
        (
            "raw_fidelity = 0.99\npair_rate_hz = 1.0e6",
            "pair_rate_hz = 1.0e6",
            "missing required key 'raw_fidelity'",
        ),
        ('name = "uav-far"', 'name = "uav-0"', "node 'uav-0' is defined twice"),
        ("pair_rate_hz = 1.0e4", 'pair_rate_hz = "fast"', "'pair_rate_hz' must be a number"),
        ("[topology]", "[topology", "not valid TOML"),
        ("attenuation_db_per_km = 0.2", "divergence_rad = 1e-5", "key 'divergence_rad'; allowed"),
    ],
)
def test_bad_topology_files_raise_one_clear_error(tmp_path, old, new, message):
    assert old in SMALL_TOPOLOGY
    path = _write(tmp_path, SMALL_TOPOLOGY.replace(old, new, 1), name="bad.toml")
    with pytest.raises(ValueError, match=message) as error:
        load_topology(path)
    assert str(path) in str(error.value)


def test_missing_topology_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ValueError, match="nowhere.toml"):
        load_topology(missing)


def test_topology_without_uavs_is_rejected(tmp_path):
    text = SMALL_TOPOLOGY.replace('layer = "uav"', 'layer = "hap"').replace(
        "[links.uav-ground]", "[links.hap-hap]"
    )
    with pytest.raises(ValueError, match="at least one node with layer = 'uav'"):
        load_topology(_write(tmp_path, text))
