"""`flwr run . --stream` as a newcomer types it: the local SuperLink path, end to end.

Flower 1.41 starts a detached local SuperLink and SuperExec that outlive the command.
The test gives them their own FLWR_HOME, finds them by that path, and stops exactly
those processes.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP_FILES = ["pyproject.toml", "README.md", "server", "client", "strategies", "quantum", "relay"]


def _processes_under(flwr_home: Path) -> list[int]:
    """PIDs of processes whose command line names this FLWR_HOME (SuperLink, SuperExec,
    and the Ray processes they start)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(flwr_home) in cmdline or f"FLWR_HOME={flwr_home}".encode() in environ:
            pids.append(int(entry.name))
    return [pid for pid in pids if pid != os.getpid()]


def _stop(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    for name in APP_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, app / name)
    flwr_home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(flwr_home)}
    yield app, env, flwr_home
    _stop(_processes_under(flwr_home))
    time.sleep(1)
    assert _processes_under(flwr_home) == [], "processes left running"


def _flwr_run(app: Path, env: dict, run_config: str, timeout: int = 600):
    return subprocess.run(
        ["flwr", "run", ".", "--stream", "--run-config", run_config],
        cwd=app, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.slow
def test_flwr_run_stream_trains_ten_uavs_and_refuses_bad_config(project, tmp_path):
    app, env, _ = project
    out = tmp_path / "out"
    done = _flwr_run(
        app, env,
        f"num-server-rounds=1 max-samples-per-client=200 test-samples=1000 "
        f"output-dir='{out}' run-name='smoke'",
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    rows = json.loads((out / "smoke" / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["clients_used"] == 10  # the default federation: 10 simulated UAVs
    assert f"outputs in {out / 'smoke'}" in log and "Run smoke finished" in log

    bad = _flwr_run(app, env, "num-server-rounds=-1")
    log = bad.stdout + bad.stderr
    assert "Run stopped before training: run config 'num-server-rounds' = -1" in log, log[-3000:]
    assert "[ROUND 1" not in log
