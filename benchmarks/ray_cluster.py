"""Scale out: the same short ``flwr run`` through a two-node Ray cluster and through the
Ray that Flower starts itself, on this machine, timed.

Run ``python -m benchmarks.ray_cluster``; it prints one JSON object (``--output`` also
writes it to a file). Each repeat makes, in turn:

- ``own-ray``: ``flwr run`` as usual, Flower's simulation starting a Ray of its own
  (all the machine's CPUs, one ClientApp per CPU);
- ``two-node-cluster``: a head and a second node started with ``ray start``, one CPU
  each (:class:`deploy.ray_cluster.LocalRayCluster`), then the same ``flwr run`` with
  ``RAY_ADDRESS`` naming the head (one ClientApp per node).

On a 2-core machine both get two ClientApps at a time. Both runs start a fresh local
SuperLink (own ``FLWR_HOME``, own ports), so the run's wall time (``flwr run --stream``
from start to exit) counts the same start-up in both; the cluster's own start and stop
are timed apart, since a cluster is started once for many runs. Each run's 1-minute load
average before and after is recorded: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.ports import copy_app
from deploy.processes import FederationError, processes_mentioning, stop_processes
from deploy.ray_cluster import LocalRayCluster, local_simulation_env

RUN_CONFIG = "max-samples-per-client=200 test-samples=500"
"""The tests' short run (``tests/test_ray_cluster.py``): 200 images per UAV."""
RAY_ADDRESS_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
"""Where ``ray start`` with the default temp dir leaves its address: a ``ray.init()``
without ``RAY_ADDRESS`` joins that cluster instead of starting its own."""


def timed_flwr_run(
    workdir: Path, name: str, ray_address: str | None, uavs: int, rounds: int
) -> dict[str, Any]:
    """One ``flwr run --stream`` from a fresh copy of the app and a fresh ``FLWR_HOME``,
    its local SuperLink stopped after; wall time, round seconds, load average."""
    app = copy_app(workdir / name / "app")
    home = workdir / name / "flwr-home"
    home.mkdir()
    out = workdir / name / "out"
    command = [
        "flwr", "run", ".", "--stream",
        "--federation-config", f"num-supernodes={uavs} client-resources-num-cpus=1",
        "--run-config",
        f"{RUN_CONFIG} num-server-rounds={rounds} output-dir='{out}' run-name='{name}'",
    ]
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=app, env=local_simulation_env(home, ray_address),
            capture_output=True, text=True, timeout=1800,
        )
        wall = time.monotonic() - start
    finally:
        left = stop_processes(processes_mentioning(str(home), "flwr-run"))
    (workdir / name / "flwr-run.log").write_text(done.stdout + done.stderr)
    metrics = out / name / "metrics.json"
    if done.returncode != 0 or not metrics.is_file() or left:
        raise FederationError(
            f"run {name} failed (exit {done.returncode}, processes left {left}); "
            f"see {workdir / name / 'flwr-run.log'}"
        )
    rows = json.loads(metrics.read_text())
    return {
        "wall_seconds": round(wall, 1),
        "round_seconds": [row["round_seconds"] for row in rows[1:]],
        "clients_used": [row["clients_used"] for row in rows[1:]],
        "final_accuracy": rows[-1]["accuracy"],
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
    }


def cluster_run(workdir: Path, name: str, uavs: int, rounds: int) -> dict[str, Any]:
    """A two-node cluster started, the run through it, the cluster stopped; all timed."""
    cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="qflray-", dir="/tmp")))
    start = time.monotonic()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        started = time.monotonic() - start
        result = timed_flwr_run(workdir, name, cluster.address, uavs, rounds)
        result["client_app_calls_per_node"] = cluster.client_app_calls()
    finally:
        stop_start = time.monotonic()
        left = cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
    if left:
        raise FederationError(f"Ray processes left running: {[ref.pid for ref in left]}")
    result["cluster_start_seconds"] = round(started, 1)
    result["cluster_stop_seconds"] = round(time.monotonic() - stop_start, 1)
    return result


def main() -> None:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_cluster")
    parser.add_argument("--uavs", type=int, default=4, help="simulated UAVs (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: temp)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if RAY_ADDRESS_FILE.exists():
        parser.exit(2, f"{RAY_ADDRESS_FILE} exists (a `ray start` on this machine): the "
                       "own-ray runs would join that cluster; measure elsewhere or later\n")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="qfl-ray-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for mode in ("own-ray", "two-node-cluster"):
            name = f"{mode}-{repeat}"
            result = (timed_flwr_run(workdir, name, None, args.uavs, args.rounds)
                      if mode == "own-ray" else cluster_run(workdir, name, args.uavs, args.rounds))
            runs.append({"mode": mode, "repeat": repeat, **result})
            print(json.dumps(runs[-1]), flush=True)
    summary = {
        mode: {"median_wall_seconds": statistics.median(
            run["wall_seconds"] for run in runs if run["mode"] == mode)}
        for mode in ("own-ray", "two-node-cluster")
    }
    report = {
        "command": "python -m benchmarks.ray_cluster "
                   f"--uavs {args.uavs} --rounds {args.rounds} --repeats {args.repeats}",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "run_config": f"{RUN_CONFIG} num-server-rounds={args.rounds}",
        "summary": summary,
        "runs": runs,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
