"""SAGIN topology file, mobility and per-round UAV paths."""

from __future__ import annotations

import copy
import dataclasses
import heapq
import math
import shutil
import tomllib
from itertools import pairwise
from pathlib import Path

import pytest
from flwr.app import ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import physics
from relay.link import Hop, PathLink
from relay.swarm import write_swarm, write_topology
from relay.topology_file import _LINK_KEYS, _NODE_KEYS, _TOPOLOGY_KEYS, load_topology
from relay.topology_spec import MIN_PAIR_RATE_HZ

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
# Hops and routing against a pairwise reference
# --------------------------------------------------------------------------------------
# The straightforward implementation the vectorised one replaced: one pair and one
# scalar at a time, and a heap of (weight, hops, path) entries.


def _reference_hop(first, second, link_type):
    if "leo" in (first.layer, second.layer):
        satellite, observer = (first, second) if first.layer == "leo" else (second, first)
        azimuth = satellite.track_azimuth_rad
        along_km = observer.x_km * math.sin(azimuth) + observer.y_km * math.cos(azimuth)
        cross_km = observer.x_km * math.cos(azimuth) - observer.y_km * math.sin(azimuth)
        along = satellite.along_track_rad - along_km / physics.EARTH_RADIUS_KM
        cross = satellite.cross_track_rad - cross_km / physics.EARTH_RADIUS_KM
        central_angle = math.acos(max(-1.0, min(1.0, math.cos(along) * math.cos(cross))))
        distance, elevation = physics.satellite_range_and_elevation(
            central_angle, observer.altitude_km, satellite.altitude_km
        )
        distance, elevation = float(distance), float(elevation)
    else:
        height = abs(first.altitude_km - second.altitude_km)
        distance = math.sqrt(
            (first.x_km - second.x_km) ** 2 + (first.y_km - second.y_km) ** 2 + height**2
        )
        elevation = math.degrees(math.asin(height / distance)) if distance > 0.0 else 90.0
    if distance > link_type.max_range_km or elevation < link_type.min_elevation_deg:
        return None
    transmissivity = float(link_type.transmissivity(distance, elevation))
    success = float(physics.heralding_success_probability(transmissivity, link_type.heralding))
    pair_rate_hz = link_type.pair_rate_hz * success
    if pair_rate_hz < MIN_PAIR_RATE_HZ:
        return None
    routing_p = float(
        physics.werner_parameter(
            physics.memory_decoherence(
                link_type.raw_fidelity, 1.0 / pair_rate_hz, link_type.memory_coherence_time_s
            )
        )
    )
    if routing_p <= 0.0:
        return None
    return Hop(
        first=first.name,
        second=second.name,
        link_type=link_type,
        distance_km=distance,
        elevation_deg=elevation,
        transmissivity=transmissivity,
        success_probability=success,
        pair_rate_hz=pair_rate_hz,
        delay_s=float(physics.propagation_delay_s(distance, link_type.medium)),
        routing_weight=-math.log(routing_p),
    )


def _reference_hops(topology, server_round, seed):
    states = list(topology.node_states(server_round, seed).values())
    by_layers = {link_type.layers: link_type for link_type in topology.link_types}
    hops = []
    for index, first in enumerate(states):
        for second in states[index + 1 :]:
            link_type = by_layers.get(frozenset((first.layer, second.layer)))
            hop = None if link_type is None else _reference_hop(first, second, link_type)
            if hop is not None:
                hops.append(hop)
    return hops


def _reference_links(topology, server_round, seed):
    adjacency = {node.name: {} for node in topology.nodes}
    for hop in _reference_hops(topology, server_round, seed):
        adjacency[hop.first][hop.second] = adjacency[hop.second][hop.first] = hop
    best = {}
    queue = [(0.0, 0, (topology.base_station,))]
    while queue:
        weight, hop_count, path = heapq.heappop(queue)
        if path[-1] in best:
            continue
        best[path[-1]] = path
        for neighbour, hop in sorted(adjacency[path[-1]].items()):
            if neighbour not in best:
                entry = (weight + hop.routing_weight, hop_count + 1, path + (neighbour,))
                heapq.heappush(queue, entry)
    links = {}
    for uav_id in topology.uav_ids:
        if uav_id not in best:
            links[uav_id] = None
            continue
        path = tuple(reversed(best[uav_id]))
        hops = [adjacency[first][second] for first, second in pairwise(path)]
        link = topology._evaluate_path(uav_id, server_round, path, hops)
        good_enough = (
            link.end_to_end_fidelity >= topology.min_end_to_end_fidelity
            and link.pair_rate_hz >= MIN_PAIR_RATE_HZ
        )
        links[uav_id] = link if good_enough else None
    return links


def _assert_same_hops(actual, expected):
    assert [(hop.first, hop.second, hop.link_type) for hop in actual] == [
        (hop.first, hop.second, hop.link_type) for hop in expected
    ]
    for name in ("distance_km", "elevation_deg", "transmissivity", "success_probability",
                 "pair_rate_hz", "delay_s", "routing_weight"):
        assert [getattr(hop, name) for hop in actual] == pytest.approx(
            [getattr(hop, name) for hop in expected], rel=1e-12, abs=1e-14
        ), name


def _assert_same_links(actual, expected):
    assert list(actual) == list(expected)
    for uav_id, link in expected.items():
        if link is None:
            assert actual[uav_id] is None, uav_id
            continue
        got = actual[uav_id]
        assert got is not None, uav_id
        assert (got.path, got.hop_link_types) == (link.path, link.hop_link_types), uav_id
        assert got.hop_distances_km == pytest.approx(link.hop_distances_km, rel=1e-12)
        assert got.hop_fidelities == pytest.approx(link.hop_fidelities, rel=1e-12)
        for name in PathLink._FLOAT_FIELDS:
            assert getattr(got, name) == pytest.approx(getattr(link, name), rel=1e-12), name


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("server_round", [0, 1, 2, 7, 40])
def test_default_topology_hops_and_paths_equal_the_pairwise_reference(server_round, seed):
    topology = load_topology()
    _assert_same_hops(
        topology.hops_for_round(server_round, seed), _reference_hops(topology, server_round, seed)
    )
    _assert_same_links(
        topology.links_for_round(server_round, seed),
        _reference_links(topology, server_round, seed),
    )


# UAVs and a base station only: far UAVs need chains of uav-uav hops, or have no path.
MESH_TEMPLATE = """
[topology]
name = "mesh"

[[nodes]]
name = "bs"
layer = "ground"
base_station = true
x_km = 0.0
y_km = 0.0
altitude_km = 0.025

[[nodes]]
name = "uav-0"
layer = "uav"
x_km = 1.0
y_km = 0.0
altitude_km = 0.1
patrol_radius_km = 0.5
speed_km_s = 0.015

[[nodes]]
name = "uav-1"
layer = "uav"
x_km = 1.0
y_km = 0.0
altitude_km = 0.3
patrol_radius_km = 3.0
speed_km_s = 0.03

[links.uav-ground]
medium = "free-space"
max_range_km = 6.0
divergence_rad = 1.0e-4
aperture_radius_m = 0.1
atmosphere_db_per_km = 0.42
receiver_efficiency = 0.5
raw_fidelity = 0.985
pair_rate_hz = 2.0e4
memory_coherence_time_s = 0.5
classical_rate_bps = 5.0e7

[links.uav-uav]
medium = "free-space"
max_range_km = 5.0
divergence_rad = 1.0e-4
aperture_radius_m = 0.1
atmosphere_db_per_km = 0.42
receiver_efficiency = 0.5
raw_fidelity = 0.98
pair_rate_hz = 2.0e4
memory_coherence_time_s = 0.5
classical_rate_bps = 5.0e7
"""


@pytest.mark.parametrize(
    ("template", "n_uavs", "radius_km", "placement_seed"),
    [
        ("default", 5, 5.0, 0),
        ("default", 5, 40.0, 1),
        ("default", 23, 40.0, 3),
        ("default", 40, 5.0, 4),
        ("default", 60, 15.0, 5),
        ("mesh", 12, 8.0, 6),
        ("mesh", 30, 12.0, 7),
        ("mesh", 60, 25.0, 8),
    ],
)
def test_random_swarms_route_exactly_like_the_pairwise_reference(
    tmp_path, template, n_uavs, radius_km, placement_seed
):
    template_path = None if template == "default" else _write(tmp_path, MESH_TEMPLATE, "mesh.toml")
    topology = load_topology(
        write_swarm(
            tmp_path / "swarm.toml",
            n_uavs,
            radius_km,
            seed=placement_seed,
            **({"template": template_path} if template_path else {}),
        )
    )
    for server_round, seed in ((0, placement_seed), (3, 11)):
        expected = _reference_links(topology, server_round, seed)
        _assert_same_links(topology.links_for_round(server_round, seed), expected)
    _assert_same_hops(topology.hops_for_round(3, 11), _reference_hops(topology, 3, 11))


TIE_LINKS = """
[links.uav-ground]
medium = "free-space"
max_range_km = 1.2
divergence_rad = 1.0e-4
aperture_radius_m = 0.1
raw_fidelity = {fidelity}
pair_rate_hz = 1.0e4
memory_coherence_time_s = {coherence}
classical_rate_bps = 1.0e7

[links.uav-uav]
medium = "free-space"
max_range_km = 1.2
divergence_rad = 1.0e-4
aperture_radius_m = 0.1
raw_fidelity = {fidelity}
pair_rate_hz = 1.0e4
memory_coherence_time_s = {coherence}
classical_rate_bps = 1.0e7
"""

# A perfect 2-hop route through a HAP whose name sorts after every UAV's.
ZEPPELIN = """
[[nodes]]
name = "zeppelin"
layer = "hap"
x_km = 1.3
y_km = 0.0
altitude_km = 20.0

[links.uav-hap]
medium = "free-space"
max_range_km = 45.0
divergence_rad = 5.0e-5
aperture_radius_m = 0.2
raw_fidelity = 1.0
pair_rate_hz = 1.0e5
memory_coherence_time_s = inf
classical_rate_bps = 1.0e8

[links.hap-ground]
medium = "free-space"
max_range_km = 80.0
divergence_rad = 2.0e-5
aperture_radius_m = 0.2
raw_fidelity = 1.0
pair_rate_hz = 1.0e5
memory_coherence_time_s = inf
classical_rate_bps = 1.0e8
"""


def _tie_topology(tmp_path, uavs, fidelity="0.97", coherence="0.5", extra=""):
    """Static UAVs (name -> x, y) and the base station, all 100 m up, in file order."""
    nodes = ['[topology]\nname = "ties"']
    for name, (x_km, y_km) in uavs.items():
        layer = 'layer = "ground"\nbase_station = true' if name == "bs" else 'layer = "uav"'
        nodes.append(
            f'[[nodes]]\nname = "{name}"\n{layer}\nx_km = {x_km}\ny_km = {y_km}\n'
            "altitude_km = 0.1"
        )
    links = TIE_LINKS.format(fidelity=fidelity, coherence=coherence)
    return load_topology(_write(tmp_path, "\n\n".join(nodes) + "\n" + extra + links))


def _route_weight(topology, path):
    """Routing weight of a path, summed from the base station outwards like Dijkstra."""
    weights = {
        frozenset((hop.first, hop.second)): hop.routing_weight
        for hop in topology.hops_for_round(0)
    }
    total = 0.0
    for first, second in pairwise(path):
        total += weights[frozenset((first, second))]
    return total


# Two mirror-image routes to uav-4: bs-uav-2-uav-0-uav-4 and bs-uav-1-uav-3-uav-4. Names
# decide at the first node where the paths part (uav-1 < uav-2), not at the last relay
# (uav-0 < uav-3); file order is neither.
MIRROR = {
    "uav-4": (2.6, 0.0),
    "uav-2": (0.9, 0.7),
    "uav-0": (1.9, 0.7),
    "bs": (0.0, 0.0),
    "uav-3": (1.9, -0.7),
    "uav-1": (0.9, -0.7),
}


@pytest.mark.parametrize(
    ("fidelity", "coherence", "extra", "expected"),
    [
        ("0.97", "0.5", "", ("uav-4", "uav-3", "uav-1", "bs")),
        ("1.0", "inf", "", ("uav-4", "uav-3", "uav-1", "bs")),
        ("1.0", "inf", ZEPPELIN, ("uav-4", "zeppelin", "bs")),
    ],
    ids=["equal-weights", "zero-weights", "fewer-hops-beat-names"],
)
def test_exact_ties_go_to_fewer_hops_then_to_names(tmp_path, fidelity, coherence, extra, expected):
    topology = _tie_topology(tmp_path, MIRROR, fidelity, coherence, extra)
    # The premise: both mirror-image routes weigh exactly the same.
    assert _route_weight(topology, ("bs", "uav-2", "uav-0", "uav-4")) == _route_weight(
        topology, ("bs", "uav-1", "uav-3", "uav-4")
    )
    links = topology.links_for_round(0)
    assert links["uav-4"].path == expected
    _assert_same_links(links, _reference_links(topology, 0, 0))


def test_a_tie_found_after_the_first_route_still_goes_to_the_earlier_name(tmp_path):
    # A rectangle: bs-uav-2 (0.8 km) then uav-2-uav-3 (1 km), or bs-uav-1 (1 km) then
    # uav-1-uav-3 (0.8 km). The same two weights in the other order: equal sums, but
    # uav-2 is settled first, so the route through uav-1 is found second and must win.
    topology = _tie_topology(
        tmp_path, {"bs": (0.0, 0.0), "uav-2": (0.8, 0.0), "uav-3": (0.8, 1.0), "uav-1": (0.0, 1.0)}
    )
    first, second = ("bs", "uav-2", "uav-3"), ("bs", "uav-1", "uav-3")
    assert _route_weight(topology, first) == _route_weight(topology, second)
    assert _route_weight(topology, first[:2]) < _route_weight(topology, second[:2])
    links = topology.links_for_round(0)
    assert links["uav-3"].path == tuple(reversed(second))
    _assert_same_links(links, _reference_links(topology, 0, 0))


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
    # The UAVs become HAPs, at a HAP's altitude.
    text = (
        SMALL_TOPOLOGY.replace('layer = "uav"', 'layer = "hap"')
        .replace("altitude_km = 0.1", "altitude_km = 20.0")
        .replace("[links.uav-ground]", "[links.hap-hap]")
    )
    with pytest.raises(ValueError, match="at least one node with layer = 'uav'"):
        load_topology(_write(tmp_path, text))


def test_a_chain_of_more_than_twenty_hops_has_finite_figures(tmp_path):
    # 25 hovering UAVs in a line, each in range of its neighbours only: the far end's
    # path has 25 hops (more than 20 raised ValueError in the middle of a run).
    nodes = ['[topology]\nname = "chain"',
             '[[nodes]]\nname = "bs"\nlayer = "ground"\nbase_station = true\n'
             "x_km = 0.0\ny_km = 0.0\naltitude_km = 0.1"]
    nodes += [f'[[nodes]]\nname = "uav-{k}"\nlayer = "uav"\nx_km = {4.0 * k}\ny_km = 0.0\n'
              "altitude_km = 0.1" for k in range(1, 26)]
    links = TIE_LINKS.format(fidelity="0.999", coherence="inf").replace(
        "max_range_km = 1.2", "max_range_km = 4.5"
    )
    topology = load_topology(_write(tmp_path, "\n\n".join(nodes) + "\n" + links))
    link = topology.links_for_round(0)["uav-25"]
    assert link.hop_count == 25
    link.validate()
    assert math.isfinite(link.waiting_time_s) and math.isfinite(link.latency_s)


# --------------------------------------------------------------------------------------
# Extreme but finite values: refused at load, or every round's geometry is finite
# --------------------------------------------------------------------------------------

SHIPPED_TOPOLOGIES = sorted((Path(__file__).resolve().parents[1] / "relay" / "topologies").glob(
    "*.toml"
))


@pytest.mark.parametrize(
    ("old", "new", "key", "allowed"),
    [
        # The four values of issue 11, each of which crashed a run mid-way.
        ("speed_km_s = 0.015", "speed_km_s = 1e308", "'speed_km_s' = 1e+308", "from 0 to 0.35"),
        ("patrol_radius_km = 0.8", "patrol_radius_km = 1e-320", "'patrol_radius_km' = 1e-320",
         "0 or from 0.001 to 100"),
        ("round_duration_s = 60.0", "round_duration_s = 1e308", "'round_duration_s' = 1e+308",
         "from 1 to 86400"),
        ("altitude_km = 550.0", "altitude_km = 1e308", "'altitude_km' = 1e+308",
         "from 160 to 2000"),
        # Tiny, huge, negative zero, subnormal.
        ("round_duration_s = 60.0", "round_duration_s = -0.0", "'round_duration_s' = -0.0",
         "from 1 to 86400"),
        ("altitude_km = 550.0", "altitude_km = 5e-324", "'altitude_km' = 5e-324",
         "from 160 to 2000"),
        ("pair_rate_hz = 2.0e4", "pair_rate_hz = -0.0", "'pair_rate_hz' = -0.0",
         "from 0.001 to 1e+12"),
        ("pair_rate_hz = 2.0e4", "pair_rate_hz = 1.7976931348623157e308",
         "'pair_rate_hz' = 1.7976931348623157e+308", "from 0.001 to 1e+12"),
        ("memory_coherence_time_s = 0.5", "memory_coherence_time_s = 1e-320",
         "'memory_coherence_time_s' = 1e-320", "from 1e-06 to 1e+06, or inf"),
        ("classical_rate_bps = 5.0e7", "classical_rate_bps = 2.2e-308",
         "'classical_rate_bps' = 2.2e-308", "from 1 to 1e+12"),
        ("divergence_rad = 1.0e-4", "divergence_rad = 1e-300", "'divergence_rad' = 1e-300",
         "from 1e-07 to 0.1"),
        ("drift_km = 1.5", "drift_km = 1e308", "'drift_km' = 1e+308", "from 0 to 50"),
        ("altitude_km = 20.0", "altitude_km = 0.5", "'altitude_km' = 0.5", "from 15 to 30"),
        ("x_km = 36.0", "x_km = -1e300", "'x_km' = -1e+300", "from -10000 to 10000"),
        ("closest_approach_s = 120.0", "closest_approach_s = 1e308",
         "'closest_approach_s' = 1e+308", "from -1e+07 to 1e+07"),
        ("max_range_km = 6.0", "max_range_km = 1e-320", "'max_range_km' = 1e-320",
         "from 0.001 to 100000, or inf"),
        ("extra_loss_db = 3.0", "extra_loss_db = 1e308", "'extra_loss_db' = 1e+308",
         "from 0 to 100"),
        ("receiver_efficiency = 0.5", "receiver_efficiency = 5e-324",
         "'receiver_efficiency' = 5e-324", "from 0.001 to 1"),
        ("min_end_to_end_fidelity = 0.5", "min_end_to_end_fidelity = 0.25",
         "min_end_to_end_fidelity = 0.25", "outside (0.25, 1]"),
    ],
)
def test_extreme_finite_values_are_refused_naming_key_value_and_range(
    tmp_path, old, new, key, allowed
):
    text = SHIPPED_TOPOLOGIES[0].read_text()
    assert old in text
    path = _write(tmp_path, text.replace(old, new, 1), name="extreme.toml")
    with pytest.raises(ValueError) as error:
        load_topology(path)
    message = str(error.value)
    assert str(path) in message and key in message and allowed in message, message


def _numeric_keys(document):
    """Every number a topology file may set, as (path into the document, schema entry)."""
    keys = [(("topology", name), spec) for name, spec in _TOPOLOGY_KEYS.items()
            if spec.kind is float]
    for index, node in enumerate(document["nodes"]):
        keys += [(("nodes", index, name), spec) for name, spec in _NODE_KEYS[node["layer"]].items()
                 if spec.kind is float]
    for link_name, link in document["links"].items():
        keys += [(("links", link_name, name), spec)
                 for name, spec in _LINK_KEYS[link["medium"]].items() if spec.kind is float]
    return keys


EXTREMES = (0.0, -0.0, 5e-324, 1e-320, 2.2250738585072014e-308, 1e-300, 1e-12, 1e-3, 0.5,
            1.0, 1e3, 1e12, 1e100, 1e300, 1e308, 1.7976931348623157e308)
EXTREMES += tuple(-value for value in EXTREMES)


def _bounds(spec):
    """A key's own edges, and the values just inside and outside them."""
    values = []
    for edge in (spec.minimum, spec.maximum):
        if edge is not None:
            values += [edge, math.nextafter(edge, math.inf), math.nextafter(edge, -math.inf)]
    return tuple(values)


def _set(document, path, value):
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _assert_every_round_is_finite(topology, seed):
    """links_for_round works for rounds 0..20 and every path's figures are finite and valid."""
    for server_round in range(21):
        for link in topology.links_for_round(server_round, seed).values():
            if link is None:
                continue
            link.validate()
            figures = [*link.hop_distances_km, *link.hop_fidelities,
                       *(getattr(link, name) for name in PathLink._FLOAT_FIELDS)]
            assert all(math.isfinite(value) for value in figures), link


def _refused_or_finite(tmp_path, document, seed):
    try:
        topology = load_topology(write_topology(tmp_path / "fuzzed.toml", document))
    except ValueError as error:
        assert "topology file" in str(error)
        return False
    _assert_every_round_is_finite(topology, seed)
    return True


@pytest.mark.parametrize("source", SHIPPED_TOPOLOGIES, ids=lambda path: path.name)
@pytest.mark.parametrize("edge", ["minimum", "maximum"])
def test_every_number_at_its_edge_at_once_gives_finite_rounds(tmp_path, source, edge):
    document = tomllib.loads(source.read_text())
    for tle_file in source.parent.glob("*.tle"):  # named relative to the topology file
        shutil.copy(tle_file, tmp_path)
    for path, spec in _numeric_keys(document):
        value = getattr(spec, edge)
        if value is not None:
            # A strict minimum is itself refused: take the next number above it.
            inward = spec.strict and edge == "minimum"
            _set(document, path, math.nextafter(value, math.inf) if inward else value)
    for seed in (0, 3):
        assert _refused_or_finite(tmp_path, document, seed)


@st.composite
def _fuzzed_topology(draw):
    source = draw(st.sampled_from(SHIPPED_TOPOLOGIES))
    document = tomllib.loads(source.read_text())
    keys = _numeric_keys(document)
    for _ in range(draw(st.integers(1, 3))):
        path, spec = draw(st.sampled_from(keys))
        values = st.sampled_from(EXTREMES + _bounds(spec)) | st.floats(allow_nan=False)
        if spec.minimum is not None and spec.maximum is not None:
            # Most draws inside the range, so that most files load and run.
            inside = st.floats(spec.minimum, spec.maximum, exclude_min=spec.strict)
            values = st.one_of(values, inside, inside, inside)
        _set(document, path, draw(values))
    return document


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(document=_fuzzed_topology(), seed=st.integers(0, 2**31 - 1))
@pytest.mark.slow  # several seconds: left out of the quick tier
def test_fuzzed_topology_files_are_refused_or_give_finite_rounds(tmp_path, document, seed):
    _refused_or_finite(tmp_path, copy.deepcopy(document), seed)
