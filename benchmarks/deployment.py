"""A round in deployment against the same round in simulation, and what a ClientApp costs.

Run ``python -m benchmarks.deployment --supernodes 3 --rounds 3``; it prints one JSON
object. The same small federation runs twice, one after the other:

- in deployment: ``flower-superlink`` and ``--supernodes`` ``flower-supernode`` processes
  (TLS on) from :mod:`deploy.federation`, the app submitted with ``flwr run``; the
  SuperNodes run under :mod:`deploy.warm`, which forks each message's ClientApp with
  its imports done (``--cold``: Flower's own fresh ``flwr-clientapp`` process per
  message), and their process trees are sampled every 0.1 s;
- in simulation: the same apps and run config in Flower's Ray simulation
  (``flwr.simulation.run_simulation``, one CPU per UAV), in a child process.

``deployment_round_s`` and ``simulation_round_s`` are the means of the ServerApp's own
``round_seconds`` (``metrics.json``) over the rounds. ``clientapp_import_s`` is the
median, over three fresh interpreters, of ``import client.app`` (what a cold
``flwr-clientapp`` process pays before it can read its message),
``clientapp_import_warm_s`` the same import in a child forked from a process that has
imported what :mod:`deploy.warm` preloads (what a warm ClientApp pays), and
``clientapp_exit_s`` the median time the fresh interpreters took to exit after their
last line. Memory, from the sampled trees: ``clientapp_peak_rss_mib`` is the largest
``VmHWM`` of any ClientApp process (a warm one counts the launcher's pages it touches,
shared or not), ``clientapp_peak_private_mib`` the largest memory a ClientApp held that
no other process shared (what each message adds), ``launcher_peak_rss_mib`` the warm
launcher's own ``VmHWM`` (held for the SuperNode's lifetime), and
``supernode_tree_peak_pss_mib`` the largest proportional set size of a SuperNode's whole
process tree (every page counted once: the memory the UAV needs).
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

BEFORE_CLIENTAPP_RSS_MIB = 1090.7
"""``clientapp_peak_rss_mib`` before issue 14 (commit 6a08eed, ``results/speed/``)."""
TARGETS = {
    "deployment_over_simulation": 3.0,
    "clientapp_peak_rss_mib": round(BEFORE_CLIENTAPP_RSS_MIB * 2 / 3, 1),
}
"""Upper bounds (issue 14): the ratio of the mean round times, and the ClientApp's peak
RSS a third below what it was."""
WARM_IMPORT_PROBE = (
    "import importlib, os, sys, time\n"
    "from deploy.warm import DEFAULT_PRELOAD, RUNTIME_MODULE\n"
    "for name in (*DEFAULT_PRELOAD, RUNTIME_MODULE): importlib.import_module(name)\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    started = time.perf_counter(); import client.app\n"
    "    print(time.perf_counter() - started, flush=True); os._exit(0)\n"
    "os.waitpid(pid, 0)\n"
)
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


def measure_deployment(
    workdir: Path, supernodes: int, overrides: dict[str, Any], *, warm: bool = True
) -> dict:
    """The federation as processes: round seconds and the ClientApps' peak memory."""
    output_dir = workdir / "outputs"
    run_config = " ".join(
        f"{key}={_flwr_value(value)}"
        for key, value in {**overrides, "output-dir": str(output_dir)}.items()
    )
    with LocalFederation(workdir, warm=warm) as federation:
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
    def peak(values: Sequence[int]) -> float:
        return round(max(values) / 1024, 1)

    return {
        "clientapps": "warm" if warm else "cold",
        "round_seconds": _round_seconds(_run_dir(output_dir)),
        "run_wall_s": round(wall, 1),
        "clientapp_peak_rss_mib": peak([s.peak_by_program.get("flwr-clientapp", 0)
                                        for s in samplers]),
        "clientapp_peak_private_mib": peak([s.peak_private_by_program.get("flwr-clientapp", 0)
                                            for s in samplers]),
        "launcher_peak_rss_mib": peak([s.peak_by_program.get("deploy.warm", 0)
                                       for s in samplers]),
        "supernode_tree_peak_pss_mib": peak([s.peak_pss_total_kib for s in samplers]),
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


def clientapp_import_warm_seconds(repeats: int = 3) -> float:
    """Median over three launchers of ``import client.app`` in a forked warm child."""
    seconds = [
        float(subprocess.run([sys.executable, "-c", WARM_IMPORT_PROBE], cwd=PROJECT_ROOT,
                             check=True, capture_output=True, text=True).stdout)
        for _ in range(repeats)
    ]
    return round(statistics.median(seconds), 2)


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
    parser.add_argument("--cold", action="store_true",
                        help="Flower's own fresh flwr-clientapp per message (no deploy.warm)")
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
        deployment = measure_deployment(
            Path(workdir) / "deployment", args.supernodes, overrides, warm=not args.cold
        )
        simulation = measure_simulation(Path(workdir) / "simulation", args.supernodes, overrides)
    import_s, exit_s = clientapp_import_and_exit_seconds()
    ratio = _mean(deployment["round_seconds"]) / _mean(simulation["round_seconds"])
    met = {
        "deployment_over_simulation": ratio <= TARGETS["deployment_over_simulation"],
        "clientapp_peak_rss_mib":
            deployment["clientapp_peak_rss_mib"] <= TARGETS["clientapp_peak_rss_mib"],
    }
    result = {
        "supernodes": args.supernodes,
        "rounds": args.rounds,
        "run_config": overrides,
        "deployment_round_s": _mean(deployment["round_seconds"]),
        "simulation_round_s": _mean(simulation["round_seconds"]),
        "deployment_over_simulation": round(ratio, 2),
        "clientapps": deployment["clientapps"],
        "clientapp_import_s": import_s,
        "clientapp_import_warm_s": clientapp_import_warm_seconds(),
        "clientapp_exit_s": exit_s,
        **{key: deployment[key] for key in (
            "clientapp_peak_rss_mib", "clientapp_peak_private_mib", "launcher_peak_rss_mib",
            "supernode_tree_peak_pss_mib")},
        "deployment": deployment,
        "simulation": simulation,
        "targets": TARGETS,
        "targets_met": met,
        "target_met": all(met.values()),
        "machine": machine_record(load_at_start),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
