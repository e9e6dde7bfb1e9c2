"""Crash and resume: per-round checkpoints, the same computation after a resume, and
checkpoints that do not fit refused before anything is written.

The in-process tests run the real ServerApp ``main`` against ClientApps in this process
(``in_process.InProcessGrid``); the slow test kills a Ray simulation with
SIGKILL and resumes it in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flower_messages import RUN_ID, task_identity
from flwr.app import Context, RecordDict
from in_process import CrashingGrid, InProcessGrid, ServerKilled

from deploy.processes import ProcessRef
from server.app import main
from server.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("flower_run")

ROOT = Path(__file__).resolve().parents[1]
# Teleport noise and mobility depend on the round, fraction-train < 1 makes Flower's
# sampling draw from `random`: a resume that got either wrong would differ.
SETTINGS = {
    "max-samples-per-client": 40, "test-samples": 100, "seed": 11, "relay": "teleport",
    "fraction-train": 0.75, "min-train-nodes": 2, "num-server-rounds": 4,
}


def nodes(node_ids, grid_class=InProcessGrid, overrides=None, **kwargs):
    """Four UAV nodes with the given (Flower-assigned, arbitrary) node ids."""
    configs = {
        node_id: {"partition-id": partition, "num-partitions": 4}
        for partition, node_id in enumerate(node_ids)
    }
    return grid_class(overrides or {}, configs, **kwargs)


def context() -> Context:
    return Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})


# What a resumed run spends differently: time, and the UAV queries of its first round (a
# resumed run is a new start: it asks the nodes it draws which UAV they are again).
COSTS = ("round_seconds", "uav_queries")


def rows_without_timing(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in COSTS} for row in rows]


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    """Equal means equal: every metric and every parameter bit for bit."""
    assert rows_without_timing(resumed) == rows_without_timing(uninterrupted)
    final = torch.load(resumed / "final_model.pt")
    reference = torch.load(uninterrupted / "final_model.pt")
    assert list(final) == list(reference)
    assert all(torch.equal(final[name], reference[name]) for name in reference)


@pytest.fixture(scope="module")
def runs_made_once(tmp_path_factory):
    """An uninterrupted 4-round run and the same run crashed in round 3 (made once)."""
    out = tmp_path_factory.mktemp("runs")
    with task_identity(RUN_ID):  # flower_run is per test, this fixture per module
        settings = {**SETTINGS, "output-dir": str(out)}
        full = {**settings, "run-name": "full"}
        main(nodes([11, 12, 13, 14], overrides=full), context(), full)
        crashed = {**settings, "run-name": "crashed"}
        grid = nodes([21, 22, 23, 24], CrashingGrid, crashed, crash_round=3)
        with pytest.raises(ServerKilled):
            main(grid, context(), crashed)
    return out


@pytest.fixture
def finished_and_crashed(runs_made_once, tmp_path):
    """A private copy of both run folders, and the settings that made them."""
    out = tmp_path / "outputs"
    shutil.copytree(runs_made_once, out)
    return out, {**SETTINGS, "output-dir": str(out)}


def test_checkpoint_holds_the_last_complete_round(finished_and_crashed):
    out, _settings = finished_and_crashed
    checkpoint = load_checkpoint(out / "crashed")
    assert checkpoint.server_round == 2
    assert [row["round"] for row in checkpoint.rows] == [0, 1, 2]
    assert checkpoint.run_config["seed"] == 11 and checkpoint.strategy_state == {}
    assert not (out / "crashed" / "final_model.pt").exists()
    assert not list(out.glob("*/*.tmp"))
    # The uninterrupted run's last checkpoint is its final model.
    assert load_checkpoint(out / "full").server_round == 4


def test_resumed_run_equals_the_uninterrupted_run_exactly(finished_and_crashed):
    out, settings = finished_and_crashed
    # New node ids in another order: a restarted federation gives its nodes new ids.
    resumed = {**settings, "resume": "crashed"}
    main(nodes([94, 93, 92, 91], overrides=resumed), context(), resumed)
    assert_same_run(out / "crashed", out / "full")
    starts = json.loads((out / "crashed" / "config.json").read_text())["starts"]
    assert [s["after_round"] for s in starts] == [0, 2]
    # Each round sampled 3 of the 4 UAVs: the sampling was part of what was restored.
    assert {row["clients_sampled"] for row in rows_without_timing(out / "full")[1:]} == {3}


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_finished_run_can_be_extended_by_more_rounds(finished_and_crashed):
    out, settings = finished_and_crashed
    # A finished 2-round run extended to the 4 rounds of the uninterrupted run "full".
    for node_ids, overrides in (
        ([5, 6, 7, 8], {**settings, "run-name": "two", "num-server-rounds": 2}),
        ([9, 10, 11, 12], {**settings, "resume": "two", "num-server-rounds": 4}),
    ):
        main(nodes(node_ids, overrides=overrides), context(), overrides)
    assert_same_run(out / "two", out / "full")


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resume": "nonesuch"},
         "'resume' = 'nonesuch': {out}/nonesuch does not exist; runs that can be resumed in "
         "{out}: crashed, full"),
        ({"model": "cnn"},
         "cannot resume run 'crashed': its checkpoint was made with another run config: "
         "'model' = 'cnn' (the checkpoint has 'hybrid')"),
        ({"n-qubits": 3}, "'n-qubits' = 3 (the checkpoint has 4)"),
        ({"seed": 12, "relay": "ideal"},
         "'relay' = 'ideal' (the checkpoint has 'teleport'); 'seed' = 12 (the checkpoint has 11)"),
        ({"num-server-rounds": 1},
         "'num-server-rounds' = 1: run 'crashed' has already completed 2 rounds; use 2 or more"),
        ({"run-name": "other"}, "leave run-name empty or equal to resume"),
    ],
)
def test_resume_that_does_not_fit_stops_before_anything_is_written(
    finished_and_crashed, change, message
):
    out, settings = finished_and_crashed
    before = _folder_state(out)
    with pytest.raises(SystemExit) as stop:
        overrides = {**settings, "resume": "crashed", **change}
        main(nodes([1, 2, 3, 4], overrides=overrides), context(), overrides)
    assert str(stop.value).startswith("Run stopped before training: ")
    assert message.format(out=out) in str(stop.value)
    assert _folder_state(out) == before


def test_checkpoint_whose_arrays_do_not_fit_the_model_is_refused(finished_and_crashed):
    out, settings = finished_and_crashed
    checkpoint = load_checkpoint(out / "crashed")
    arrays = checkpoint.arrays
    name = next(iter(arrays))
    wrong = arrays[name].numpy()[..., :1].copy()
    arrays[name] = type(arrays[name])(wrong)
    save_checkpoint(out / "crashed", checkpoint)
    before = _folder_state(out)
    with pytest.raises(SystemExit) as stop:
        main(nodes([1, 2, 3, 4], overrides=settings), context(), {**settings, "resume": "crashed"})
    assert "the checkpoint's arrays do not fit the model ('hybrid')" in str(stop.value)
    assert f"changed {name}: float32{list(wrong.shape)} in the checkpoint" in str(stop.value)
    assert _folder_state(out) == before


def test_damaged_checkpoint_is_named_and_refused(finished_and_crashed):
    out, settings = finished_and_crashed
    path = out / "crashed" / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SystemExit) as stop:
        main(nodes([1, 2, 3, 4], overrides=settings), context(), {**settings, "resume": "crashed"})
    assert f"{path} cannot be read" in str(stop.value)


# --------------------------------------------------------------------------------------
# The real thing: SIGKILL a Ray simulation mid-run, resume it in a fresh process
# --------------------------------------------------------------------------------------

SIMULATION = """
import sys
from flwr.simulation import run_simulation
from client.app import build_client_app
from server.app import build_server_app
overrides = dict(arg.split("=", 1) for arg in sys.argv[1:])
overrides = {k: int(v) if v.isdigit() else v for k, v in overrides.items()}
run_simulation(
    server_app=build_server_app(overrides), client_app=build_client_app(overrides),
    num_supernodes=3, backend_config={"client_resources": {"num_cpus": 1}},
)
"""
KILL_TEST = {
    "num-server-rounds": 3, "max-samples-per-client": 200, "test-samples": 500,
    "min-train-nodes": 3, "seed": 5,
}


def _simulate(overrides: dict, **popen) -> subprocess.Popen:
    args = [f"{key}={value}" for key, value in overrides.items()]
    return subprocess.Popen(
        [sys.executable, "-c", SIMULATION, *args], cwd=ROOT, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


def _checkpoint_round(run_dir: Path) -> int:
    try:
        return load_checkpoint(run_dir).server_round
    except Exception:  # noqa: BLE001 - not written yet
        return -1


@pytest.mark.slow
def test_simulation_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    settings = {**KILL_TEST, "output-dir": str(tmp_path)}
    victim = _simulate({**settings, "run-name": "killed"})
    tree: set[ProcessRef] = set()
    deadline = time.monotonic() + 300
    try:
        while _checkpoint_round(tmp_path / "killed") < 1:
            assert victim.poll() is None, victim.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint of round 1 within 300 s"
            root = ProcessRef.of(victim.pid, "simulation")
            tree |= {root, *root.descendants()} if root else set()
            time.sleep(0.2)
        root = ProcessRef.of(victim.pid, "simulation")
        tree |= {root, *root.descendants()}
        os.killpg(victim.pid, signal.SIGKILL)
    finally:
        # Ray's raylet, GCS and workers: whatever the run started, by PID, wherever it is.
        for ref in tree:
            ref.signal(signal.SIGKILL)
        victim.wait(timeout=30)
        victim.stdout.close()
    deadline = time.monotonic() + 30
    while any(ref.running() for ref in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [ref for ref in tree if ref.running()] == []
    killed_at = _checkpoint_round(tmp_path / "killed")
    assert 1 <= killed_at < 3 and not (tmp_path / "killed" / "final_model.pt").exists()

    logs = {}
    for name, overrides in (("resumed", {**settings, "resume": "killed"}),
                            ("whole", {**settings, "run-name": "whole"})):
        run = _simulate(overrides)
        logs[name], _ = run.communicate(timeout=600)
        assert run.returncode == 0, logs[name][-3000:]
    assert f"Run killed: resumed after round {killed_at} of 3" in logs["resumed"]
    assert_same_run(tmp_path / "killed", tmp_path / "whole")


# --- a damaged checkpoint never resumes (issue 11, item 5) ------------------------------


def _resume_refused(out: Path, settings: dict, message: str) -> None:
    """Resuming 'crashed' stops before training naming the file; nothing is written."""
    run_dir = out / "crashed"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    resume = {**settings, "resume": "crashed"}
    with pytest.raises(SystemExit) as stop:
        main(nodes([31, 32, 33, 34], overrides=resume), context(), resume)
    text = str(stop.value)
    assert text.startswith("Run stopped before training:") and message in text
    assert str(run_dir / CHECKPOINT_FILE) in text
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_checkpoint_with_one_flipped_byte_never_resumes_with_other_content(
    finished_and_crashed,
):
    out, _settings = finished_and_crashed
    path = out / "crashed" / CHECKPOINT_FILE
    original = path.read_bytes()
    reference = load_checkpoint(out / "crashed")
    step = max(1, len(original) // 400)
    refused = 0
    for position in range(0, len(original), step):
        damaged = bytearray(original)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            checkpoint = load_checkpoint(out / "crashed")
        except Exception as error:  # noqa: BLE001 - must be the one clear kind
            assert type(error).__name__ == "CheckpointError", (position, error)
            refused += 1
            continue
        # Only bytes that carry nothing (zip padding, unused header fields) may be flipped
        # without notice, and then the content is exactly the original.
        assert checkpoint.rows == reference.rows and checkpoint.server_round == 2
        assert checkpoint.run_config == reference.run_config
        for name, array in reference.arrays.items():
            assert checkpoint.arrays[name].numpy().tobytes() == array.numpy().tobytes()
    assert refused > 0.9 * len(range(0, len(original), step))


def test_a_flipped_byte_in_the_tensor_data_stops_the_resume_naming_the_file(
    finished_and_crashed,
):
    out, settings = finished_and_crashed
    path = out / "crashed" / CHECKPOINT_FILE
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    _resume_refused(out, settings, "fails its integrity check")


def test_a_checkpoint_with_nan_arrays_is_refused(finished_and_crashed):
    out, settings = finished_and_crashed
    checkpoint = load_checkpoint(out / "crashed")
    name = next(iter(checkpoint.arrays))
    values = checkpoint.arrays[name].numpy().copy()
    values.flat[0] = float("nan")
    from flwr.app import Array

    checkpoint.arrays[name] = Array(values)
    save_checkpoint(out / "crashed", checkpoint)
    _resume_refused(out, settings, f"array {name!r} holds non-finite values")


@pytest.mark.parametrize(
    "rng_state",
    [{"python": "junk", "numpy": [], "torch": None}, {}, {"python": (3, (1, 2), None)}],
)
def test_a_malformed_generator_state_is_refused_before_config_json_changes(
    finished_and_crashed, rng_state
):
    out, settings = finished_and_crashed
    checkpoint = load_checkpoint(out / "crashed")
    checkpoint.rng_state = rng_state
    save_checkpoint(out / "crashed", checkpoint)
    _resume_refused(out, settings, "random generator state does not restore")


def test_rows_that_do_not_match_the_round_are_refused(finished_and_crashed):
    out, settings = finished_and_crashed
    checkpoint = load_checkpoint(out / "crashed")
    checkpoint.rows = checkpoint.rows[:-1]
    save_checkpoint(out / "crashed", checkpoint)
    _resume_refused(out, settings, "metrics rows are for rounds [0, 1]")
