"""The deployment runtime as separate processes on 127.0.0.1: TLS, node authentication.

Every process here is started by the test (directly or through ``deploy.federation``)
on free ports away from the local-simulation SuperLink's 39091-39093, and every test
checks by PID, and by the ``FLWR_HOME`` its processes inherit, that none is left.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from deploy.federation import LocalFederation
from deploy.outputs import check_run_outputs
from deploy.ports import copy_app
from deploy.processes import FederationError, ManagedProcess, ProcessRef

ROOT = Path(__file__).resolve().parents[1]
SUPERNODE_CONNECTION_ERROR = "Exit Code: 305"
"""Flower's exit code for a SuperNode that cannot set up its connection to the SuperLink."""


def _processes_with_flwr_home(flwr_home: Path) -> list[int]:
    """PIDs of live processes that inherited this FLWR_HOME (SuperExecs, apps included)."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return pids


def _wait_exit(process: ManagedProcess, timeout: float = 60.0) -> int:
    try:
        return process.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{process.name} still runs after {timeout} s:\n{process.log_text()[-2000:]}")


@pytest.fixture
def federation(tmp_path):
    """A LocalFederation in tmp_path whose processes are all gone after the test."""
    made: list[LocalFederation] = []

    def make(**options) -> LocalFederation:
        fed = LocalFederation(tmp_path / "federation", **options)
        fed.prepare()
        made.append(fed)
        return fed

    yield make
    for fed in made:
        tree = [ref for p in fed.processes for ref in (p.ref, *p.ref.descendants())]
        assert fed.stop() == []
        assert [ref for ref in tree if ref.running()] == [], "processes left running"
        assert _processes_with_flwr_home(fed.flwr_home) == []


@pytest.mark.slow
def test_federation_command_runs_two_rounds_on_three_supernodes_over_tls(tmp_path):
    workdir, out = tmp_path / "federation", tmp_path / "out"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "deploy.federation", "up", "--supernodes", "3",
            "--rounds", "2", "--workdir", str(workdir), "--timeout", "300",
            "--run-config",
            f"max-samples-per-client=200 test-samples=1000 output-dir='{out}' run-name='deploy'",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "(TLS)" in log and "3 SuperNodes online" in log
    assert "finished:completed" in log and "Run deploy finished" in log
    # The SuperLink served HTTPS with the generated certificate, and ran deployment mode.
    superlink_log = (workdir / "logs" / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1:" in superlink_log
    assert "simulation" not in superlink_log.lower()
    # Each SuperNode ran under deploy.warm with its pull interval in effect, and its
    # ClientApps (a UAV query and two train messages each) started warm, none cold.
    for index in range(3):
        node_log = (workdir / "logs" / f"supernode-{index}.log").read_text()
        assert "deploy.warm: ClientApps start warm" in node_log
        assert "pull interval left at" not in node_log
        assert "no warm launcher" not in node_log
        assert node_log.count("Start `flwr-clientapp` process") >= 3

    rows = json.loads((out / "deploy" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert [row["clients_used"] for row in rows[1:]] == [3, 3]
    assert all(row["clients_failed"] == 0 for row in rows)

    # Nothing it started runs any more: neither the processes it recorded, by PID and
    # start time, nor anything that inherited the federation's FLWR_HOME.
    recorded = json.loads((workdir / "pids.json").read_text())
    assert {entry["name"] for entry in recorded} == {
        "superlink", "supernode-0", "supernode-1", "supernode-2",
    }
    assert not [
        e for e in recorded if ProcessRef(e["pid"], e["start_time"], e["name"]).running()
    ]
    assert _processes_with_flwr_home(workdir.resolve() / "flwr-home") == []
    assert time.monotonic() - started < 300


@pytest.mark.slow
def test_supernode_without_the_ca_certificate_is_refused(federation):
    fed = federation(tls=True)
    fed.start_superlink()
    trusted = fed.start_supernode(0, 2)
    fed.wait_online(1, timeout=60)

    untrusted = fed.start_supernode(1, 2, root_certificates=None, max_retries=1)
    assert _wait_exit(untrusted) == 1
    log = untrusted.log_text()
    assert SUPERNODE_CONNECTION_ERROR in log and "CERTIFICATE_VERIFY_FAILED" in log
    # The SuperLink knows only the SuperNode that had the CA certificate.
    nodes = fed.nodes()
    assert [node["status"] for node in nodes] == ["online"]
    assert trusted.exit_code() is None


@pytest.mark.slow
def test_supernode_with_an_unregistered_key_is_refused_when_auth_is_on(federation):
    fed = federation(tls=True, auth=True)
    registered, unregistered = fed.node_keys(2)
    fed.start_superlink()
    node_id = fed.register_supernode(registered.public_key)

    admitted = fed.start_supernode(0, 2, private_key=registered.private_key)
    fed.wait_online(1, timeout=60)
    intruder = fed.start_supernode(1, 2, private_key=unregistered.private_key, max_retries=1)
    assert _wait_exit(intruder) == 1
    log = intruder.log_text()
    assert SUPERNODE_CONNECTION_ERROR in log and "Failed to activate SuperNode" in log

    nodes = fed.nodes()
    assert [(int(node["node-id"]), node["status"]) for node in nodes] == [(node_id, "online")]
    assert admitted.exit_code() is None
    assert f"SuperNode ID: {node_id}" in admitted.log_text()


def test_auth_without_tls_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(FederationError, match="authentication needs TLS"):
        LocalFederation(tmp_path, tls=False, auth=True)


@pytest.mark.parametrize("command", ["federation", "certs"])
def test_server_alias_runs_the_deploy_command(command):
    """``python -m server.<command>`` (the older, public command) is ``deploy.<command>``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = {
        package: subprocess.run(
            [sys.executable, "-m", f"{package}.{command}", "--help"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        for package in ("deploy", "server")
    }
    for package, result in done.items():
        assert result.returncode == 0, f"{package}.{command}: {result.stderr[-2000:]}"
    assert f"usage: python -m deploy.{command}" in done["deploy"].stdout
    assert done["server"].stdout == done["deploy"].stdout


def test_deploy_imports_none_of_the_apps():
    """``server/`` may import ``deploy/``; ``deploy/`` never imports the apps' packages."""
    apps = {"server", "client", "task", "strategies", "quantum", "relay"}
    found = []
    for path in sorted((ROOT / "deploy").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] in apps]
    assert found == []


def test_app_copy_holds_every_package_the_apps_import(tmp_path):
    """``flwr run`` builds the app bundle from the copy: what the apps import must be in it."""
    app = copy_app(tmp_path / "app")
    project_packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    shipped = {path.name for path in app.iterdir()}
    aliases = {"server/federation.py", "server/certs.py"}  # commands, never app imports
    missing = set()
    for path in app.rglob("*.py"):
        if path.relative_to(app).as_posix() in aliases:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            top = {name.split(".")[0] for name in names}
            missing |= {f"{package} ({path.relative_to(app)})" for package in
                        (top & project_packages) - shipped}
    assert sorted(missing) == []


def test_client_install_needs_neither_ray_nor_matplotlib():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    client_requirements = [*project["dependencies"], *extras["client"]]
    # Nor the ServerApp's run watching (TensorBoard, MLflow: server/watch.py) or its
    # privacy accountant (dp-accounting).
    server_only = ("simulation", "matplotlib", "tensorboard", "mlflow", "dp-accounting")
    assert not [r for r in client_requirements if any(name in r for name in server_only)]
    # The ClientApp loads and trains with all of them made unimportable (PennyLane only
    # tries matplotlib for its drawer and carries on without it).
    script = (
        "import sys; sys.modules.update(ray=None, matplotlib=None, tensorboard=None, "
        "mlflow=None, dp_accounting=None)\n"
        "import torch, client.app\n"
        "from task.config import parse_run_config\n"
        "from task.train import model_from_config, train_local\n"
        "model = model_from_config(parse_run_config({}))\n"
        "images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))\n"
        "print(train_local(model, images, labels, 1, 4, 1e-3, 0)['train-loss'] > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
    # The developer install still brings the simulation (Ray) and the plots.
    assert "sagin-qfl[simulation]" in extras["dev"]
    assert {"sagin-qfl[server]", "flwr[simulation]==1.41.0"} <= set(extras["simulation"])
    assert extras["server"] == [
        "matplotlib==3.11.2", "tensorboard==2.21.0", "mlflow-skinny==3.17.2",
        "dp-accounting==0.6.0",
    ]


@pytest.mark.slow
def test_killed_supernode_is_recorded_as_failed_and_the_run_finishes(tmp_path):
    workdir, out = tmp_path / "federation", tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "deploy.federation", "up", "--supernodes", "3",
            "--rounds", "3", "--workdir", str(workdir), "--timeout", "400",
            "--kill-supernode", "2", "--kill-after-round", "1",
            "--run-config",
            f"min-train-nodes=2 max-samples-per-client=100 test-samples=500 "
            f"output-dir='{out}' run-name='survivors'",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "fault injection: killed supernode-2 after round 1" in log
    assert "finished:completed" in log and "Run survivors finished" in log

    rows = json.loads((out / "survivors" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert rows[1]["clients_used"] == 3 and rows[1]["clients_failed"] == 0
    # The killed node is either sampled once more (its message then times out on the
    # SuperLink's heartbeat check and comes back as a failure with Flower's reason) or
    # already known to be offline; every later round aggregates the two survivors.
    failures = {node: reason for row in rows[2:] for node, reason in row["failed_reasons"].items()}
    assert len(failures) <= 1
    assert all("Node Unavailable" in reason for reason in failures.values())
    assert [row["clients_used"] for row in rows[2:]] == [2, 2]
    assert check_run_outputs(out / "survivors") == []
    assert _processes_with_flwr_home(workdir.resolve() / "flwr-home") == []


def _run_folder(path: Path, rows: list[dict], rounds: int, final: bool = True) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"run_config": {"num-server-rounds": rounds}}))
    (path / "metrics.json").write_text(json.dumps(rows))
    if final:
        (path / "final_model.pt").write_bytes(b"")
    return path


def _row(server_round: int, sampled: int = 3, failed: int = 0, reason: str = "") -> dict:
    used = sampled - failed if server_round else 0
    return {
        "round": server_round, "clients_sampled": sampled, "clients_failed": failed,
        "clients_used": used, "clients_rejected": 0,
        "failed_reasons": {str(n): reason for n in range(failed)},
        "skipped": None if used or not server_round else f"0 update(s) accepted, {sampled} needed",
    }


def test_run_outputs_are_complete_only_with_every_round_and_a_live_round(tmp_path):
    ok = _run_folder(tmp_path / "ok", [_row(0, 0), _row(1), _row(2, failed=2, reason="x")], 2)
    assert check_run_outputs(ok) == []
    dead = _run_folder(tmp_path / "dead", [_row(0, 0), _row(1, failed=3, reason="boom")], 1)
    assert check_run_outputs(dead) == [
        "round 1: all 3 sampled nodes failed (boom)",
        "every round was skipped (1 of 1): no update was aggregated, the model is the initial "
        "one (0 update(s) accepted, 3 needed)",
    ]
    short = _run_folder(tmp_path / "short", [_row(0, 0), _row(1)], 3, final=False)
    assert check_run_outputs(short) == [
        "metrics.json has rounds [0, 1], expected 0..3", f"no final_model.pt in {short}",
    ]
    assert "cannot read the run's config.json and metrics.json" in check_run_outputs(
        tmp_path / "missing"
    )[0]


@pytest.mark.slow
def test_load_benchmark_runs_every_round_on_every_supernode(tmp_path):
    # The 20-SuperNode, 5-round run is the benchmark's (python -m benchmarks.load); here
    # 4 SuperNodes and 2 rounds check that it completes and reports what it promises.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--supernodes", "4", "--rounds", "2",
         "--workdir", str(tmp_path / "load")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    load = json.loads(done.stdout)["load"]
    assert "aborted" not in load, load
    assert load["status"] == "finished:completed"
    assert load["clients_used_per_round"] == [4, 4] and load["clients_failed_per_round"] == [0, 0]
    assert len(load["round_seconds"]) == 2 and all(s > 0 for s in load["round_seconds"])
    assert load["superlink_peak_rss_mib"] > 0 and load["supernode_trees_peak_rss_mib"] > 0
    assert _processes_with_flwr_home((tmp_path / "load" / "flwr-home").resolve()) == []


@pytest.mark.slow
def test_async_run_survives_a_killed_supernode_and_loses_no_update(tmp_path):
    """mode='async' over real SuperLink/SuperNode processes: a UAV killed mid-run fails
    its job (Flower's unavailable-node reply or the deadline), the others go on, and every
    job sent ends exactly once in metrics.json."""
    workdir, out = tmp_path / "federation", tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "deploy.federation", "up", "--supernodes", "3",
            "--rounds", "4", "--workdir", str(workdir), "--timeout", "500",
            "--kill-supernode", "2", "--kill-after-round", "1",
            "--run-config",
            f"mode='async' buffer-size=2 concurrency=3 round-timeout=120 "
            f"max-samples-per-client=100 test-samples=500 output-dir='{out}' "
            f"run-name='async-survivors'",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=700,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "fault injection: killed supernode-2 after round 1" in log
    rows = json.loads((out / "async-survivors" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2, 3, 4]
    sent = [job for row in rows[1:] for job in row["jobs"]["sent"]]
    ended = [job for row in rows[1:] for fate in ("used", "rejected", "failed")
             for job in row["jobs"][fate]] + rows[-1]["jobs"]["in_flight"]
    assert len(sent) == len(set(sent)) and sorted(ended) == sorted(sent)
    assert all(row["clients_used"] == 2 for row in rows[1:])
    assert all(row["emulated_time_s"] >= previous["emulated_time_s"]
               for previous, row in zip(rows, rows[1:], strict=False))
    assert check_run_outputs(out / "async-survivors") == []
    assert _processes_with_flwr_home(workdir.resolve() / "flwr-home") == []
