"""`flwr run . --stream` as a newcomer types it: the local SuperLink path, end to end.

Flower 1.41 starts a detached local SuperLink and SuperExec that outlive the command.
The test gives them their own FLWR_HOME, finds them by that path, and stops exactly
those processes.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from deploy.ports import copy_app
from deploy.processes import processes_mentioning, stop_processes


@pytest.fixture
def project(tmp_path):
    app = copy_app(tmp_path / "app")
    flwr_home = tmp_path / "flwr-home"
    # The README's Run step: the apps use the installed packages, no `uv sync` per run.
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    yield app, env, flwr_home
    assert stop_processes(processes_mentioning(str(flwr_home), "flwr-run-test")) == []
    time.sleep(1)
    assert processes_mentioning(str(flwr_home)) == [], "processes left running"


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
    # flwr run --stream exits 0 even when the run failed: the log says why.
    assert (out / "smoke" / "metrics.json").is_file(), log[-6000:]
    rows = json.loads((out / "smoke" / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["clients_used"] == 10  # the default federation: 10 simulated UAVs
    assert f"outputs in {out / 'smoke'}" in log and "Run smoke finished" in log

    bad = _flwr_run(app, env, "num-server-rounds=-1")
    log = bad.stdout + bad.stderr
    assert "Run stopped before training: run config 'num-server-rounds' = -1" in log, log[-3000:]
    assert "[ROUND 1" not in log


@pytest.mark.parametrize("where", ["checkout", "app copy"])
def test_flwr_run_packs_the_apps_and_nothing_else_under_flower_s_size_cap(where, tmp_path):
    # `flwr run .` packs a FAB of the folder it is given; the committed studies (results/)
    # alone are over Flower's 10 MiB cap, which then refuses the run.
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.constant import FAB_MAX_SIZE

    root = Path(__file__).resolve().parents[1]
    folder = root if where == "checkout" else copy_app(tmp_path / "app")
    fab = build_fab_from_disk(folder)
    assert len(fab) < FAB_MAX_SIZE / 4
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {".info", "README.md", "pyproject.toml", "task", "client", "server",
                    "strategies", "quantum", "relay"}
    assert {"server/app.py", "client/app.py", "relay/topologies/default.toml"} <= set(names)
