"""Per-round cost of the SAGIN topology (hops and UAV paths) as the swarm grows.

Run ``python -m benchmarks.topology``; it prints one JSON object. For each swarm size
``N`` (default 10, 100 and 1000 UAVs) it writes a swarm topology with
:func:`relay.swarm.write_swarm` (N UAVs in a disc around the base station of the shipped
default topology, whose HAP, LEO satellites and link types it keeps), then measures
``Topology.links_for_round``, the call RelayStrategy makes once per server round: wall
and CPU seconds per call over consecutive rounds, after one untimed call. Also reported:
the number of hops (links that exist) in the first timed round, and how many UAVs have
a path and how long the longest is.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from relay.swarm import DEFAULT_RADIUS_KM, write_swarm
from relay.topology_file import load_topology

TARGETS = {"max_cpu_s_per_round_1000_uavs": 1.0}
"""Acceptance target: median CPU seconds of ``links_for_round`` with 1000 UAVs (CPU, not
wall, time: on a shared machine the wall time mostly measures the other processes)."""


def measure(path: Path, rounds: int, seed: int) -> dict:
    """Time ``links_for_round`` on one topology file.

    Parameters
    ----------
    path : pathlib.Path
        Topology file.
    rounds : int
        Timed calls, one per server round ``1 .. rounds``.
    seed : int
        Mobility seed.

    Returns
    -------
    dict
        Sizes, hop count, path statistics and seconds per call.
    """
    topology = load_topology(path)
    topology.links_for_round(0, seed)  # untimed: first-call imports and caches
    wall, cpu = [], []
    links = {}
    for server_round in range(1, rounds + 1):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        links = topology.links_for_round(server_round, seed)
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
        if server_round == 1:
            first_round_links = links
    hop_counts = [link.hop_count for link in first_round_links.values() if link is not None]
    return {
        "n_uavs": len(topology.uav_ids),
        "nodes": len(topology.nodes),
        "hops": len(topology.hops_for_round(1, seed)),
        "uavs_with_a_path": len(hop_counts),
        "max_path_hops": max(hop_counts, default=0),
        "s_per_round": round(statistics.median(wall), 4),
        "s_per_round_min": round(min(wall), 4),
        "cpu_s_per_round": round(statistics.median(cpu), 4),
    }


def run(args: argparse.Namespace) -> dict:
    """Run all measurements and return the JSON-ready report."""
    results = []
    with tempfile.TemporaryDirectory(prefix="topology-benchmark-") as directory:
        for n_uavs in args.uavs:
            path = write_swarm(
                Path(directory) / f"swarm-{n_uavs}.toml", n_uavs, args.radius_km, args.seed
            )
            results.append(measure(path, args.rounds, args.seed))
    at_1000 = [result["cpu_s_per_round"] for result in results if result["n_uavs"] == 1000]
    return {
        "benchmark": "topology",
        "results": results,
        "settings": {
            "rounds": args.rounds,
            "radius_km": args.radius_km,
            "seed": args.seed,
            "template": "relay/topologies/default.toml",
            "timing": "links_for_round, rounds 1..rounds after one untimed call; median",
        },
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "targets": TARGETS,
        "targets_met": (
            at_1000[0] <= TARGETS["max_cpu_s_per_round_1000_uavs"] if at_1000 else None
        ),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--uavs", type=int, nargs="+", default=[10, 100, 1000], help="swarm sizes"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per size")
    parser.add_argument("--radius-km", type=float, default=DEFAULT_RADIUS_KM)
    parser.add_argument("--seed", type=int, default=0, help="placement and mobility seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark report as one JSON object."""
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
