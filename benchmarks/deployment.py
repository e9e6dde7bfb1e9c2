"""A round in deployment against the same round in simulation, and what a ClientApp costs.

Run ``python -m benchmarks.deployment --supernodes 3 --rounds 3``; it prints one JSON
object. The same small federation runs twice, one after the other:

- in deployment: ``flower-superlink`` and ``--supernodes`` ``flower-supernode`` processes
  (TLS on) from :mod:`deploy.federation`, the app submitted with ``flwr run``; Flower
  starts a fresh ``flwr-clientapp`` process for every message, and the SuperNodes'
  process trees are sampled every 0.1 s (``VmHWM`` of each ``flwr-clientapp``);
- in simulation: the same apps and run config in Flower's Ray simulation
  (``flwr.simulation.run_simulation``, one CPU per UAV), in a child process.

``deployment_round_s`` and ``simulation_round_s`` are the means of the ServerApp's own
``round_seconds`` (``metrics.json``) over the rounds; ``clientapp_import_s`` is the
median, over three fresh interpreters, of ``import client.app`` (what every
``flwr-clientapp`` process pays before it can read its message), ``clientapp_exit_s``
the median time those interpreters took to exit after their last line, and
``clientapp_peak_rss_mib`` the largest ``VmHWM`` of any ``flwr-clientapp`` process seen.
The run config is the project's defaults (every UAV trains on its whole partition) with
``--rounds`` rounds, central evaluation on 1,000 test images, and ``--run-config``
overrides on top.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from benchmarks.edge_client import TreeSampler
from benchmarks.machine import machine_record
from deploy.federation import LocalFederation
from deploy.ports import PROJECT_ROOT
from task.config import parse_run_config

TARGETS = {"deployment_over_simulation": 3.0}
"""Upper bound of the ratio of the mean round times (issue 14)."""
IMPORT_PROBE = (
    "import time; started = time.perf_counter(); import client.app; "
    "print(time.perf_counter() - started, time.time(), flush=True)"
)


def _overrides(rounds: int, supernodes: int, extra: str) -> dict[str, Any]:
    """The run config both runs use (typed values, checked by the project's schema)."""
    overrides: dict[str, Any] = {
        "num-server-rounds": rounds, "min-train-nodes": supernodes, "test-samples": 1000,
    }
    overrides.update(parse_config_args([extra]) if extra.strip() else {})
    parse_run_config(overrides)  # a bad override stops here, with the schema's message
    return overrides


def _flwr_value(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value)


def _round_seconds(run_dir: Path) -> list[float]:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [float(row["round_seconds"]) for row in rows if int(row["round"]) > 0]


def _run_dir(output_dir: Path) -> Path:
    found = sorted(p for p in output_dir.iterdir() if (p / "metrics.json").is_file())
    if len(found) != 1:
        raise RuntimeError(f"expected one finished run in {output_dir}, found {found}")
    return found[0]


def measure_deployment(workdir: Path, supernodes: int, overrides: dict[str, Any]) -> dict:
    """The federation as processes: round seconds and the ClientApps' peak memory."""
    output_dir = workdir / "outputs"
    run_config = " ".join(
        f"{key}={_flwr_value(value)}"
        for key, value in {**overrides, "output-dir": str(output_dir)}.items()
    )
    with LocalFederation(workdir) as federation:
        federation.prepare()
        federation.start_superlink()
        nodes = [federation.start_supernode(i, supernodes) for i in range(supernodes)]
        federation.wait_online(supernodes)
        samplers = [TreeSampler(node.ref) for node in nodes]
        for sampler in samplers:
            sampler.start()
        started = time.perf_counter()
        _run_id, status = federation.run(run_config)
        wall = time.perf_counter() - started
        for sampler in samplers:
            sampler.stop()
    if status != "finished:completed":
        raise RuntimeError(f"the deployment run ended {status}; logs in {workdir / 'logs'}")
    peaks = [s.peak_by_program.get("flwr-clientapp", 0) for s in samplers]
    return {
        "round_seconds": _round_seconds(_run_dir(output_dir)),
        "run_wall_s": round(wall, 1),
        "clientapp_peak_rss_mib": round(max(peaks) / 1024, 1),
    }


def measure_simulation(workdir: Path, supernodes: int, overrides: dict[str, Any]) -> dict:
    """The same federation in Flower's Ray simulation, in a child process."""
    output_dir = workdir / "outputs"
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {"overrides": {**overrides, "output-dir": str(output_dir)},
            "num_supernodes": supernodes}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "benchmarks.deployment", "--simulate", json.dumps(spec)],
        cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL,
        stderr=(workdir / "simulation.log").open("w"),
    )
    return {
        "round_seconds": _round_seconds(_run_dir(output_dir)),
        "run_wall_s": round(time.perf_counter() - started, 1),
    }


def clientapp_import_and_exit_seconds(repeats: int = 3) -> tuple[float, float]:
    """Medians over fresh interpreters: seconds of ``import client.app``, and seconds
    from the last line run to the end of the process (interpreter shutdown)."""
    imports, exits = [], []
    for _ in range(repeats):
        with subprocess.Popen([sys.executable, "-c", IMPORT_PROBE], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True) as probe:
            assert probe.stdout is not None  # started with stdout=PIPE
            seconds, last_line_at = map(float, probe.stdout.readline().split())
            probe.wait()
            exited_at = time.time()
        imports.append(seconds)
        exits.append(exited_at - last_line_at)
    return round(statistics.median(imports), 2), round(statistics.median(exits), 2)


def simulate(spec_json: str) -> None:
    """Body of the ``--simulate`` child: one Ray simulation of the project's apps."""
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from server.app import build_server_app

    spec = json.loads(spec_json)
    run_simulation(
        server_app=build_server_app(spec["overrides"]),
        client_app=build_client_app(spec["overrides"]),
        num_supernodes=int(spec["num_supernodes"]),
        backend_config={"client_resources": {"num_cpus": 1}},
    )


def _mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 2)


def main(argv: Sequence[str] | None = None) -> None:
    """Run both federations and print the JSON object."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deployment")
    parser.add_argument("--supernodes", type=int, default=3, help="UAVs (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="server rounds (default 3)")
    parser.add_argument("--run-config", default="", help="overrides, \"k1=v1 k2='text'\"")
    parser.add_argument("--simulate", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulate:
        simulate(args.simulate)
        return
    if args.supernodes < 1 or args.rounds < 1:
        parser.error("--supernodes and --rounds must be at least 1")
    overrides = _overrides(args.rounds, args.supernodes, args.run_config)
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qfl-bench-deploy-") as workdir:
        deployment = measure_deployment(Path(workdir) / "deployment", args.supernodes, overrides)
        simulation = measure_simulation(Path(workdir) / "simulation", args.supernodes, overrides)
    import_s, exit_s = clientapp_import_and_exit_seconds()
    ratio = _mean(deployment["round_seconds"]) / _mean(simulation["round_seconds"])
    result = {
        "supernodes": args.supernodes,
        "rounds": args.rounds,
        "run_config": overrides,
        "deployment_round_s": _mean(deployment["round_seconds"]),
        "simulation_round_s": _mean(simulation["round_seconds"]),
        "deployment_over_simulation": round(ratio, 2),
        "clientapp_import_s": import_s,
        "clientapp_exit_s": exit_s,
        "clientapp_peak_rss_mib": deployment["clientapp_peak_rss_mib"],
        "deployment": deployment,
        "simulation": simulation,
        "targets": TARGETS,
        "target_met": ratio <= TARGETS["deployment_over_simulation"],
        "machine": machine_record(load_at_start),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
