"""The tree of best paths, deferred: a round of a large swarm computes what it looks up.

``tests/test_relay_topology.py`` checks the complete tree against a pairwise reference;
here the deferred tree must give every UAV the same path as the complete one, whether
its lookup was settled from the deferred batch alone or needed the search completed, and
a 10,000-UAV swarm's round must cost hops in proportion to the UAVs looked up.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from relay import path_tree, routing
from relay.path_tree import weight_floor
from relay.swarm import write_swarm
from relay.topology_file import load_topology


def path_of(tree, node: int, source: int) -> list[int]:
    path = [node]
    while path[-1] != source and path[-1] >= 0:
        path.append(tree.parent_of(path[-1]))
    return path


@pytest.mark.parametrize(
    ("n_uavs", "radius_km", "seed", "server_round"),
    [(200, 5.0, 0, 3), (300, 12.0, 1, 1), (150, 30.0, 2, 2), (400, 8.0, 3, 5)],
)
def test_deferred_lookups_give_the_paths_of_the_complete_tree(
    tmp_path, monkeypatch, n_uavs, radius_km, seed, server_round
):
    monkeypatch.setattr(path_tree, "LAZY_TARGETS", 10**9)  # never complete on count
    topology = load_topology(write_swarm(tmp_path / "swarm.toml", n_uavs, radius_km, seed=seed))
    positions = topology.positions(server_round, seed)
    complete = topology.path_tree(positions, pair_budget=None).parents()
    source = topology._source
    uavs = [int(index) for index in topology._layer_members["uav"]]
    random.Random(seed).shuffle(uavs)
    # Deferred once the base station's own hops are relaxed: the next batch waits.
    deferred = topology.path_tree(positions, pair_budget=2 * len(topology.nodes))
    assert not deferred.complete
    certified = 0  # open nodes whose path the deferred batch alone settled
    for uav in uavs:
        was_open = not deferred.complete and not deferred._search.settled[uav]
        assert path_of(deferred, uav, source) == path_of_array(complete, uav, source), uav
        certified += was_open and not deferred.complete
    assert certified > 0
    assert np.array_equal(deferred.parents(), complete)


def path_of_array(parents, node: int, source: int) -> list[int]:
    path = [node]
    while path[-1] != source and path[-1] >= 0:
        path.append(int(parents[path[-1]]))
    return path


def test_a_round_of_10000_uavs_computes_hops_for_the_uavs_it_looks_up(tmp_path, monkeypatch):
    computed = []

    def counting(link_type, positions, first, second):
        computed.append(len(first))
        return hop_physics(link_type, positions, first, second)

    hop_physics = routing.hop_physics
    monkeypatch.setattr(path_tree, "hop_physics", counting)
    topology = load_topology(write_swarm(tmp_path / "swarm.toml", 10_000, seed=0))
    links = topology.links_for_round(3, 0)
    drawn = random.Random(0).sample(topology.uav_ids, 20)
    found = {uav_id: links[uav_id] for uav_id in drawn}
    # Every UAV of the swarm needs the base station's hops; the others are a few per
    # UAV looked up: nowhere near the 5·10⁷ pairs of the swarm. (That deferred lookups
    # give the complete tree's paths is the test above.)
    assert sum(computed) < 10_000 + 20 * 10_000
    assert all(link is not None for link in found.values())
    assert not links._tree.complete  # the swarm's other relays were never computed


def test_no_hop_weighs_less_than_its_link_types_floor():
    topology = load_topology()
    floors = {link_type.name: weight_floor(link_type) for link_type in topology.link_types}
    hops = [hop for server_round in range(0, 40, 3)
            for hop in topology.hops_for_round(server_round, 1)]
    assert {hop.link_type.name for hop in hops} >= {"uav-ground", "uav-uav", "hap-ground"}
    assert all(hop.routing_weight >= floors[hop.link_type.name] for hop in hops)
