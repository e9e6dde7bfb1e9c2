"""Rounds draw their nodes and ask a node which UAV it is when it is first drawn.

A federation of 10,000 nodes (``swarm_grid.SwarmGrid``: scripted answers, some nodes
never answering, some answering with an error) must train exactly the nodes a round
wants, every round, with a number of query messages that grows with the round's need and
not with the federation; a node that did not answer is asked again later, a node that
cannot join is never drawn again. The last test runs the real ServerApp on in-process
ClientApps: a node that cannot join, first drawn after the run started, is left out and
recorded, and the run goes on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flower_messages import RUN_ID
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from in_process import TINY, InProcessGrid
from swarm_grid import REFUSAL, SwarmGrid, SwarmTopology

from relay.channels import get_channel
from relay.swarm import write_swarm
from server.app import main
from strategies.discovery import QUERY_ATTEMPTS, NodeDirectory
from strategies.relay import RelayStrategy

pytestmark = pytest.mark.usefixtures("flower_run")

SWARM = 10_000
PER_ROUND = 10
ARRAYS = ArrayRecord({"w": Array(np.zeros(3, np.float32))})


def swarm_strategy(n: int, per_round: int = PER_ROUND, topology=None, **kwargs) -> RelayStrategy:
    """The base station's strategy as the scale study sets it: ``per_round`` of ``n``."""
    settings = {
        "fraction_train": per_round / n, "min_train_nodes": per_round,
        "min_available_nodes": per_round, "fraction_evaluate": 0.0, **kwargs,
    }
    return RelayStrategy(
        channel=get_channel("ideal"), topology=topology or SwarmTopology(n), run_id=RUN_ID,
        seed=3, **settings,
    )


def train_targets(strategy: RelayStrategy, grid, server_round: int) -> list[int]:
    messages = strategy.configure_train(server_round, ARRAYS, ConfigRecord(), grid)
    return [message.metadata.dst_node_id for message in messages]


def test_every_round_of_10000_nodes_trains_its_10_with_queries_for_10_not_10000():
    rng = np.random.default_rng(0)
    troubled = rng.choice(SWARM, 1_500, replace=False)
    silent, refusing, late = troubled[:500], troubled[500:1000], troubled[1000:]
    grid = SwarmGrid(SWARM, silent=set(silent), refusing=set(refusing), late=set(late))
    no_path = {(f"uav-{i}", r) for r in range(1, 31) for i in rng.choice(SWARM, 300)}
    strategy = swarm_strategy(SWARM, topology=SwarmTopology(SWARM, no_path))
    never = grid.silent | grid.refusing
    # No start-up fan-out: the first draw asks about what round 1 needs.
    strategy.first_draw(grid, 1)
    assert sum(grid.queries.values()) < 4 * PER_ROUND
    for server_round in range(1, 31):
        before = sum(grid.queries.values())
        targets = train_targets(strategy, grid, server_round)
        report = strategy.reports[-1]
        assert report.server_round == server_round and report.skipped is None
        assert len(targets) == len(set(targets)) == PER_ROUND  # exactly 10, none twice
        assert not set(targets) & never
        assert all((grid.uav_of[n], server_round) not in no_path for n in targets)
        assert all(strategy.uav_of_node[n] == grid.uav_of[n] for n in targets)
        # O(nodes needed): a tenth of the drawn nodes misbehave, so a few more are asked.
        queries = sum(grid.queries.values()) - before
        assert queries <= 4 * PER_ROUND
        assert report.uav_queries == queries + (server_round == 1) * before
    assert max(len(batch) for batch in grid.query_batches) <= PER_ROUND
    assert len(grid.queries) < SWARM // 10
    # A node that answered with an error is refused for good and never asked again.
    assert all(grid.queries[n] == 1 for n in strategy.unmapped)
    assert set(strategy.unmapped) <= grid.refusing
    assert set(strategy.unmapped.values()) == {REFUSAL}
    # Nodes that did not answer are not refused: they stay to be asked again.
    assert not (grid.silent | grid.late) & set(strategy.unmapped)


def test_a_node_that_did_not_answer_is_asked_again_when_next_drawn():
    late = set(range(0, 60, 3))
    grid = SwarmGrid(60, late=late, lost={1, 2})
    strategy = swarm_strategy(60)
    first_asked: dict[int, int] = {}
    for server_round in range(1, 26):
        seen = dict(grid.queries)
        assert len(train_targets(strategy, grid, server_round)) == PER_ROUND
        for node_id, count in grid.queries.items():
            if node_id not in seen and count == 1:
                first_asked[node_id] = server_round
    missed = {grid.node_ids[i] for i in late | {1, 2}} & set(first_asked)
    assert missed, "no late node was drawn"
    for node_id in missed:
        # Asked again in a later round (not re-asked in the round: it was not needed).
        assert grid.queries[node_id] == 2 and strategy.uav_of_node[node_id] == grid.uav_of[node_id]
    assert not strategy.unmapped


def test_a_round_is_skipped_only_when_too_few_nodes_can_be_found():
    # 30 nodes, 10 wanted: 21 never answer or refuse. The walk runs out with 9, asks the
    # silent ones once more, and skips the round only then.
    grid = SwarmGrid(30, silent=set(range(11)), refusing=set(range(11, 21)))
    strategy = swarm_strategy(30)
    assert train_targets(strategy, grid, 1) == []
    report = strategy.reports[-1]
    assert report.skipped.startswith("fewer than 10 UAVs with a relay path found (9 found;")
    assert "11 silent, 10 refused" in report.skipped
    assert all(grid.queries[grid.node_ids[i]] == QUERY_ATTEMPTS for i in range(11))
    assert report.refused == {grid.node_ids[i]: REFUSAL for i in range(11, 21)}


def test_silent_nodes_are_asked_again_before_a_round_would_be_skipped():
    grid = SwarmGrid(30, late=set(range(21)))
    strategy = swarm_strategy(30, per_round=20)
    targets = train_targets(strategy, grid, 1)
    assert len(targets) == 20 and strategy.reports[-1].skipped is None


def test_the_first_draw_is_the_first_rounds_draw():
    grid = SwarmGrid(SWARM)
    strategy = swarm_strategy(SWARM)
    draw = strategy.first_draw(grid, 1)
    asked = sum(grid.queries.values())
    assert len(draw.nodes) == PER_ROUND and asked == PER_ROUND
    assert train_targets(strategy, grid, 1) == draw.nodes
    assert sum(grid.queries.values()) == asked  # nothing new to ask
    assert strategy.reports[-1].uav_queries == PER_ROUND


def test_a_small_federation_is_asked_whole_and_drawn_by_uav_whatever_its_node_ids():
    drawn = []
    for seed in (1, 2):  # other node ids, as a restarted federation gets
        grid = SwarmGrid(12, seed=seed)
        strategy = swarm_strategy(12, per_round=6, min_train_nodes=2, min_available_nodes=2)
        strategy.fraction_train = 0.5
        targets = train_targets(strategy, grid, 4)
        assert len(grid.query_batches) == 1 and len(grid.query_batches[0]) == 12
        drawn.append(sorted(grid.uav_of[n] for n in targets))
    assert drawn[0] == drawn[1] and len(drawn[0]) == 6


def test_the_order_is_by_node_id_until_every_node_is_known():
    directory = NodeDirectory([f"uav-{i}" for i in range(4)], "t", "config", seed=0)
    nodes = [11, 12, 13, 14]
    by_id = directory.order(nodes, 1, "training")
    directory.uav_of_node = {11: "uav-3", 12: "uav-2", 13: "uav-1"}
    assert directory.order(nodes, 1, "training") == by_id
    directory.uav_of_node[14] = "uav-0"
    relabelled = NodeDirectory([f"uav-{i}" for i in range(4)], "t", "config", seed=0)
    relabelled.uav_of_node = {21: "uav-3", 22: "uav-2", 23: "uav-1", 24: "uav-0"}
    uav_order = [directory.uav_of_node[n] for n in directory.order(nodes, 1, "training")]
    assert uav_order == [relabelled.uav_of_node[n]
                         for n in relabelled.order([21, 22, 23, 24], 1, "training")]


def test_a_node_first_drawn_after_the_start_that_cannot_join_is_left_out(tmp_path):
    n = 30
    topology = write_swarm(tmp_path / "swarm.toml", n, seed=0)
    settings = {**TINY, "relay": "ideal", "topology": str(topology), "output-dir": str(tmp_path),
                "run-name": "lazy", "num-server-rounds": 2, "min-train-nodes": 3,
                "fraction-train": 0.1, "seed": 5}
    node_ids = list(range(1, n + 1))
    # The node the second round asks first that the first round did not ask.
    directory = NodeDirectory([f"uav-{i}" for i in range(n)], "t", "config", seed=5)
    first = directory.order(node_ids, 1, "training")[:3]
    bad = next(node for node in directory.order(node_ids, 2, "training") if node not in first)
    configs = {node: {"partition-id": node - 1, "num-partitions": n} for node in node_ids}
    configs[bad]["data-dir"] = str(tmp_path / "no-such-folder")
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    main(InProcessGrid(settings, configs), context, settings)
    rows = json.loads((tmp_path / "lazy" / "metrics.json").read_text())
    assert [row["clients_used"] for row in rows] == [0, 3, 3]
    assert list(rows[2]["refused_reasons"]) == [str(bad)]
    assert "the mnist archives" in rows[2]["refused_reasons"][str(bad)]
    assert rows[1]["uav_queries"] == 3 and rows[1]["refused_reasons"] == {}
    relay = json.loads((tmp_path / "lazy" / "config.json").read_text())["relay"]
    assert list(relay["nodes_refused"]) == [str(bad)]
    assert len(relay["uav_of_node"]) == rows[1]["uav_queries"] + rows[2]["uav_queries"] - 1
