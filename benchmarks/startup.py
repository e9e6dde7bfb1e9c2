"""Where the default run's time goes before its first round, read from its own log.

Run ``python -m benchmarks.startup``; it prints one JSON object. It runs the README's
``flwr run . --stream`` (runtime dependency installation off, as the README says) on a
copy of the app with a fresh ``FLWR_HOME``, timestamps every line of the streamed log as
it arrives, and splits the run at lines that mark the end of each phase:

===========================  ==================================================  =========
phase                        ends with the line                                  whose
===========================  ==================================================  =========
``cli_s``                    ``Starting local SuperLink``                        Flower's
``superlink_s``              ``Using SuperLink``                                 Flower's
``submit_s``                 ``Successfully started run``                        Flower's
``simulation_process_s``     ``Starting Flower Simulation``                      Flower's
``serverapp_prepare_s``      ``Relay: ... channel over topology`` (imports, run  ours
                             config, topology, test set)
``join_s``                   ``outputs in`` (Ray's start, then the ServerApp's   both
                             first contact with the nodes)
``initial_evaluation_s``     ``Round 0/``                                        ours
===========================  ==================================================  =========

``startup_s`` is the time to the ``[ROUND 1/`` line, ``rounds_s`` the rest up to the
last round's line, and ``round_seconds`` the ServerApp's own figures from
``metrics.json``. The local SuperLink it started is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_record
from deploy.ports import copy_app
from deploy.processes import ProcessRef, stop_processes

PHASES: tuple[tuple[str, str], ...] = (
    ("cli_s", r"Starting local SuperLink"),
    ("superlink_s", r"Using SuperLink"),
    ("submit_s", r"Successfully started run"),
    ("simulation_process_s", r"Starting Flower Simulation"),
    ("serverapp_prepare_s", r"Relay: \S+ channel over topology"),
    ("join_s", r"outputs in "),
    ("initial_evaluation_s", r"Round 0/"),
    ("first_round_starts", r"\[ROUND 1/"),
)


def timed_lines(command: list[str], cwd: Path, env: dict[str, str]) -> list[tuple[float, str]]:
    """Run ``command``; every line of its output with the seconds since the start."""
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None  # started with stdout=PIPE
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
    lines.append((time.perf_counter() - started, "<exit>"))
    return lines


def phases(lines: Sequence[tuple[float, str]]) -> dict[str, float | None]:
    """Seconds of each phase of :data:`PHASES` (None when its end line never came)."""
    result: dict[str, float | None] = {}
    previous, position = 0.0, 0
    for name, pattern in PHASES:
        found = next((i for i in range(position, len(lines))
                      if re.search(pattern, lines[i][1])), None)
        if found is None:
            result[name] = None
            continue
        result[name] = round(lines[found][0] - previous, 2)
        previous, position = lines[found][0], found
    result["startup_s"] = round(previous, 2) if result["first_round_starts"] is not None else None
    result.pop("first_round_starts")
    return result


def _stop_superlink(flwr_home: Path) -> None:
    pids = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"],
                          capture_output=True, text=True).stdout.split()
    refs = [ProcessRef.of(int(pid), "local-superlink") for pid in pids]
    stop_processes([ref for ref in refs if ref])


def measure(workdir: Path, run_config: str) -> dict[str, Any]:
    """One ``flwr run . --stream`` in ``workdir``: its phases and round times."""
    app = copy_app(workdir / "app")
    flwr_home, output_dir = workdir / "flwr-home", workdir / "outputs"
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    command = ["flwr", "run", ".", "--stream", "--run-config",
               f"{run_config} output-dir='{output_dir}'".strip()]
    try:
        lines = timed_lines(command, app, env)
    finally:
        _stop_superlink(flwr_home)
    (workdir / "run.log").write_text("".join(f"{t:8.2f} {line}\n" for t, line in lines))
    runs = sorted(output_dir.glob("*/metrics.json"))
    if not runs:
        raise RuntimeError(f"the run left no metrics.json; its log: {workdir / 'run.log'}")
    rows = json.loads(runs[-1].read_text())
    result: dict[str, Any] = phases(lines)
    result["total_s"] = round(lines[-1][0], 2)
    result["round_seconds"] = [row["round_seconds"] for row in rows if row["round"] > 0]
    result["final_accuracy"] = rows[-1]["accuracy"]
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Measure one run and print the JSON object."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    parser.add_argument("--run-config", default="", help="overrides (default: none)")
    parser.add_argument("--keep", type=Path, help="keep the work folder here (log, outputs)")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = measure(args.keep, args.run_config)
    else:
        with tempfile.TemporaryDirectory(prefix="qfl-startup-") as workdir:
            result = measure(Path(workdir), args.run_config)
    result["machine"] = machine_record(load_at_start)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
