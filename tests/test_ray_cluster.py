"""`flwr run` on a Ray cluster that runs before it: the README's "Scale out" recipe.

A head (`ray start --head`) and a second node (`ray start --address=<head>`) are started
on this machine as separate processes, one CPU and one custom resource each, each with
its own temp dir (`deploy.ray_cluster.LocalRayCluster`). `flwr run` with `RAY_ADDRESS`
naming the head runs a short simulation through them; Ray's timeline and each node's
worker logs show which node ran the ClientApps. Then the SuperLink (found by its own
FLWR_HOME) and every process of both nodes are stopped by PID, and none may be left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from deploy.ports import copy_app
from deploy.processes import command_line, processes_mentioning, stop_processes
from deploy.ray_cluster import LocalRayCluster, local_simulation_env

UAVS = 4
ROUNDS = 2


@pytest.fixture
def cluster():
    # Not tmp_path: Ray's socket paths under a pytest tmp_path exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="qflray-", dir="/tmp"))
    cluster = LocalRayCluster(root)
    try:
        yield cluster
    finally:
        left = cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert left == [], [command_line(ref.pid)[:120] for ref in left]


@pytest.fixture
def flwr_home(tmp_path):
    """A FLWR_HOME of the test's own; its local SuperLink and SuperExec are stopped after."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    yield home
    assert stop_processes(processes_mentioning(str(home), "flwr-run")) == []
    assert processes_mentioning(str(home)) == [], "processes left running"


@pytest.mark.slow
def test_flwr_run_joins_a_running_two_node_ray_cluster_and_runs_client_apps_on_both(
    cluster, flwr_home, tmp_path
):
    # Teardown runs in reverse: the SuperLink (and the Ray driver under it) stops first.
    cluster.start_head(num_cpus=1)
    cluster.add_node(num_cpus=1)
    nodes = cluster.alive_nodes()
    assert sorted(nodes) == ["head", "node1"], nodes
    assert all(nodes[name]["CPU"] == 1 and nodes[name][f"qfl_{name}"] == 1 for name in nodes)

    app = copy_app(tmp_path / "app")
    out = tmp_path / "out"
    # RAY_ADDRESS acts through the local SuperLink that `flwr run` starts with it.
    env = local_simulation_env(flwr_home, cluster.address)
    done = subprocess.run(
        ["flwr", "run", ".", "--stream",
         "--federation-config", f"num-supernodes={UAVS} client-resources-num-cpus=1",
         "--run-config",
         f"num-server-rounds={ROUNDS} max-samples-per-client=200 test-samples=500 "
         f"output-dir='{out}' run-name='cluster'"],
        cwd=app, env=env, capture_output=True, text=True, timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    # flwr run --stream exits 0 even when the run failed: the log says why.
    assert (out / "cluster" / "metrics.json").is_file(), log[-6000:]
    rows = json.loads((out / "cluster" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == list(range(ROUNDS + 1))
    assert [row["clients_used"] for row in rows[1:]] == [UAVS] * ROUNDS

    calls = cluster.client_app_calls()
    # Every ClientApp call of the run (a query per UAV, then a train per UAV and round)
    # ran in this cluster, so Flower started no Ray of its own; and both nodes ran some.
    assert sum(calls.values()) >= UAVS * (1 + ROUNDS), calls
    assert calls["head"] > 0 and calls["node1"] > 0, calls
