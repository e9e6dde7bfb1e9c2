"""Load: one SuperLink and many SuperNodes on this machine, a few rounds, timed and weighed.

Run ``python -m benchmarks.load --supernodes 20 --rounds 5``; it prints one JSON object:
the run's status, each round's seconds (``round_seconds`` from ``metrics.json``, as the
ServerApp timed them), the whole run's wall time, the SuperLink process's peak RSS
(``VmHWM`` from ``/proc/<pid>/status``, read just before it is stopped), and the peak
summed RSS, sampled every 0.5 s, of the SuperLink's process tree (with the SuperExec and
ServerApp it starts) and of all SuperNode trees (with their ClientApp processes).

Deployment runtime, TLS on, all processes on 127.0.0.1 via :mod:`deploy.federation`.
Each ClientApp process imports torch, so the run is kept small: ``classical`` model,
100 images per UAV, 500 test images (``--run-config`` adds or overrides keys). The
default topology has 10 UAVs; for more SuperNodes the benchmark writes a copy with more
(:func:`topology_for`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from benchmarks.edge_client import _status_kib
from deploy.federation import LocalFederation
from deploy.processes import FederationError, ProcessRef
from relay.topology_file import DEFAULT_TOPOLOGY_PATH

SMALL_RUN = (
    "model='classical' max-samples-per-client=100 test-samples=500 val-fraction=0.0 "
    "partitioning='iid'"
)


def mem_available_mib() -> float:
    """``MemAvailable`` of the machine, in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from one pass over ``/proc`` (cheap enough at 2 Hz)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


class GroupSampler(threading.Thread):
    """Peak summed RSS of groups of process trees, sampled until stopped.

    A guard too: when the machine's available memory falls below ``min_available_mib``
    it stops ``guarded`` (the SuperLink), which ends the run with an error, before the
    kernel's OOM killer picks a victim among other people's processes.
    """

    def __init__(
        self,
        groups: dict[str, list[ProcessRef]],
        guarded: ProcessRef,
        min_available_mib: float,
        interval: float = 0.5,
    ) -> None:
        super().__init__(daemon=True)
        self.groups, self.interval = groups, interval
        self.guarded, self.min_available_mib = guarded, min_available_mib
        self.peak_kib = dict.fromkeys(groups, 0)
        self.min_seen_available_mib = mem_available_mib()
        self.aborted: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop` (the thread's body)."""
        while not self._stop_event.is_set():
            available = mem_available_mib()
            self.min_seen_available_mib = min(self.min_seen_available_mib, available)
            if available < self.min_available_mib and self.aborted is None:
                self.aborted = (
                    f"stopped: {available:.0f} MiB available, below --min-available-mib "
                    f"{self.min_available_mib:.0f}"
                )
                self.guarded.signal(signal.SIGTERM)
            children = _children_by_parent()
            for name, roots in self.groups.items():
                pids = [root.pid for root in roots if root.running()]
                total = 0
                while pids:
                    pid = pids.pop()
                    total += _status_kib(pid, "VmRSS")
                    pids.extend(children.get(pid, ()))
                self.peak_kib[name] = max(self.peak_kib[name], total)
            time.sleep(self.interval)

    def stop(self) -> None:
        """End sampling."""
        self._stop_event.set()
        self.join(timeout=10)


def topology_for(supernodes: int, workdir: Path) -> str:
    """A topology file with at least ``supernodes`` UAVs ("": the default, up to 10).

    Beyond 10, copies of the default UAVs 300 m east of the originals are added to a copy
    of the default topology in ``workdir`` (``uav-10``, ``uav-11``, ...), so each
    SuperNode is a UAV with a path of the same kind as its original's.
    """
    text = DEFAULT_TOPOLOGY_PATH.read_text()
    uavs = [n for n in tomllib.loads(text)["nodes"] if n["layer"] == "uav"]
    if supernodes <= len(uavs):
        return ""
    blocks = []
    for index in range(len(uavs), supernodes):
        original = uavs[index % len(uavs)]
        fields = {**original, "name": f"uav-{index}", "x_km": original["x_km"] + 0.3}
        lines = [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
        blocks.append("[[nodes]]\n" + "\n".join(lines) + "\n")
    # Array-of-tables entries must come before the [links.*] tables that follow them.
    cut = text.index("[links.")
    path = workdir / f"load-sagin-{supernodes}.toml"
    path.write_text(text[:cut] + "\n".join(blocks) + "\n" + text[cut:])
    return str(path)


def measure(
    workdir: Path, supernodes: int, rounds: int, run_config: str, min_available_mib: float
) -> dict[str, Any]:
    """Run ``rounds`` rounds on ``supernodes`` SuperNodes; times and memory.

    Returns
    -------
    dict
        Status, per-round seconds, wall times, SuperLink peak RSS and group peaks in MiB.
    """
    out = workdir / "outputs"
    workdir.mkdir(parents=True, exist_ok=True)
    topology = topology_for(supernodes, workdir)
    config = (
        f"{SMALL_RUN} num-server-rounds={rounds} min-train-nodes={supernodes} "
        f"output-dir='{out}' run-name='load' "
        + (f"topology='{topology}' " if topology else "") + run_config
    ).strip()
    started = time.perf_counter()
    with LocalFederation(workdir) as federation:
        federation.prepare()
        superlink = federation.start_superlink()
        nodes = [federation.start_supernode(i, supernodes) for i in range(supernodes)]
        federation.wait_online(supernodes, timeout=300)
        online = time.perf_counter()
        sampler = GroupSampler(
            {"superlink_tree": [superlink.ref], "supernode_trees": [n.ref for n in nodes]},
            superlink.ref, min_available_mib,
        )
        sampler.start()
        try:
            run_id, status = federation.run(config, timeout=3600)
        except FederationError as err:
            sampler.stop()
            return {"aborted": sampler.aborted or str(err), "run_config": config,
                    "min_available_mib_seen": round(sampler.min_seen_available_mib)}
        finished = time.perf_counter()
        sampler.stop()
        superlink_hwm_kib = _status_kib(superlink.ref.pid, "VmHWM")
    rows = json.loads((out / "load" / "metrics.json").read_text())
    return {
        "status": status,
        "run_id": run_id,
        "supernodes": supernodes,
        "rounds": rounds,
        "run_config": config,
        "clients_used_per_round": [row["clients_used"] for row in rows[1:]],
        "clients_failed_per_round": [row["clients_failed"] for row in rows[1:]],
        "round_seconds": [row["round_seconds"] for row in rows[1:]],
        "start_to_online_seconds": round(online - started, 1),
        "run_wall_seconds": round(finished - online, 1),
        "total_wall_seconds": round(time.perf_counter() - started, 1),
        "superlink_peak_rss_mib": round(superlink_hwm_kib / 1024, 1),
        "superlink_tree_peak_rss_mib": round(sampler.peak_kib["superlink_tree"] / 1024, 1),
        "supernode_trees_peak_rss_mib": round(sampler.peak_kib["supernode_trees"] / 1024, 1),
        "machine_min_available_mib_seen": round(sampler.min_seen_available_mib),
        "final_accuracy": rows[-1]["accuracy"],
    }


def main() -> None:
    """Print the measurements as one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load")
    parser.add_argument("--supernodes", type=int, default=20, help="SuperNodes (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--run-config", default="", help='extra run config, "k1=v1 k2=v2"')
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: temp)")
    parser.add_argument(
        "--min-available-mib", type=float, default=3000.0,
        help="stop the run when the machine has less memory available (default 3000)",
    )
    args = parser.parse_args()
    if args.supernodes < 1 or args.rounds < 1:
        parser.error("--supernodes and --rounds must be 1 or more")
    result: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "load_average_1min_at_start": os.getloadavg()[0],
        },
    }
    if args.workdir:
        result["load"] = measure(
            args.workdir, args.supernodes, args.rounds, args.run_config, args.min_available_mib
        )
    else:
        with tempfile.TemporaryDirectory(prefix="qfl-load-") as workdir:
            result["load"] = measure(
                Path(workdir), args.supernodes, args.rounds, args.run_config,
                args.min_available_mib,
            )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
