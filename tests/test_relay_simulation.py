"""The relay end to end in Flower's Ray simulation: ideal, qkd, teleport and an eavesdropper.

Three supernodes (uav-0 .. uav-2), three rounds of three local epochs on 600 images each:
enough for the global model to reach about 70 % test accuracy, so "within 2 points" is a
comparison of trained models, not of noise around chance.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from flwr.simulation import run_simulation

from client.app import build_client_app
from relay.channels.replay import STATE_DIR_ENV_VAR
from relay.shared_secret import LEGACY_ENV_VAR, MASTER_ENV_VAR, SECRET_DIR_ENV_VAR
from server.app import build_server_app
from task.config import parse_run_config
from task.train import model_from_config

SECRET_HEX = "5eed" * 16
RUN = {
    "num-server-rounds": 3,
    "max-samples-per-client": 600,
    "local-epochs": 3,
    "test-samples": 2000,
    "min-train-nodes": 3,
    "fraction-evaluate": 1.0,
}
# Parameters of the default model, from the model itself rather than a copied number.
PARAMETERS = sum(p.numel() for p in model_from_config(parse_run_config({})).parameters())
CHANNEL_FIGURES = (
    "fidelity", "bell_pairs", "classical_bits", "latency_s", "qber", "key_bits", "bytes_up",
    "bytes_down",
    "rejected_reasons", "clients_no_path", "keys_aborted",
)


def simulate(output_dir, name: str, **settings) -> tuple[list[dict], dict, dict, str]:
    """Run the apps on 3 supernodes.

    Returns
    -------
    tuple
        metrics.json rows, config.json, the final model's state dict, and every log line
        of the run: the ServerApp's (Flower's logger) and every Ray worker's log file.
    """
    overrides = {**RUN, **settings, "output-dir": str(output_dir), "run-name": name}
    server_log = io.StringIO()
    handler = logging.StreamHandler(server_log)
    logging.getLogger("flwr").addHandler(handler)
    # Ray's session (with the ClientApps' logs) goes to a folder of this run alone; the
    # path is short because Ray puts unix sockets inside it.
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        run_simulation(
            server_app=build_server_app(overrides),
            client_app=build_client_app(overrides),
            num_supernodes=3,
            backend_config={
                "client_resources": {"num_cpus": 1},
                "init_args": {"_temp_dir": str(ray_dir)},
            },
        )
        worker_logs = sorted(ray_dir.glob("session_*/logs/worker-*"))
        assert worker_logs, "Ray wrote no worker logs"
        logs = server_log.getvalue() + "".join(
            path.read_text(errors="replace") for path in worker_logs
        )
    finally:
        logging.getLogger("flwr").removeHandler(handler)
        shutil.rmtree(ray_dir, ignore_errors=True)
    run_dir = output_dir / name
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == list(range(overrides["num-server-rounds"] + 1))
    for row in rows:
        assert set(CHANNEL_FIGURES) <= set(row), row
    config = json.loads((run_dir / "config.json").read_text())
    return rows, config, torch.load(run_dir / "final_model.pt"), logs


@pytest.fixture(scope="module")
def ideal(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("ideal"), "ideal", relay="ideal")


@pytest.fixture
def secret_in_environment(monkeypatch, tmp_path):
    # Ray's workers inherit the driver's environment: server and clients share the master
    # (each UAV derives its own secret from it), and the UAVs' replay memories go here.
    monkeypatch.setenv(MASTER_ENV_VAR, SECRET_HEX)
    monkeypatch.delenv(SECRET_DIR_ENV_VAR, raising=False)
    monkeypatch.delenv(LEGACY_ENV_VAR, raising=False)
    monkeypatch.setenv(STATE_DIR_ENV_VAR, str(tmp_path / "relay-state"))


@pytest.mark.slow
def test_ideal_run_learns_and_reports_bytes_and_latency(ideal):
    rows, config, _model, _logs = ideal
    assert rows[-1]["accuracy"] > 0.5  # chance is 0.1
    assert config["relay"]["channel"] == "ideal"
    assert sorted(config["relay"]["uav_of_node"].values()) == ["uav-0", "uav-1", "uav-2"]
    for row in rows[1:]:
        assert row["clients_used"] == 3 and row["rejected_reasons"] == {}
        # 3 float32 updates of every parameter go up; more (train + evaluate) comes down.
        assert row["bytes_up"] > 3 * 4 * PARAMETERS and row["bytes_down"] > row["bytes_up"]
        assert row["latency_s"] > 0 and row["bell_pairs"] == 0 and row["qber"] is None
        assert row["classical_bits"] == 0
        assert row["fidelity"] == pytest.approx(0.985, abs=0.01)


@pytest.mark.slow
def test_qkd_gives_exactly_the_ideal_model_and_never_logs_the_secret(
    ideal, tmp_path, secret_in_environment
):
    rows, config, model, logs = simulate(tmp_path, "qkd", relay="qkd")
    ideal_rows, _config, ideal_model, _logs = ideal
    assert [(r["accuracy"], r["loss"]) for r in rows] == [
        (r["accuracy"], r["loss"]) for r in ideal_rows
    ]
    assert all(torch.equal(model[name], ideal_model[name]) for name in ideal_model)
    for row in rows[1:]:
        assert row["clients_used"] == 3 and row["keys_aborted"] == 0
        assert 0.0 <= row["qber"] < 0.05 and row["key_bits"] >= 9 * 256
        assert row["bell_pairs"] == 9 * 16384  # 3 train down, 3 up, 3 evaluate down
    source = f"simulation only: derived from ${MASTER_ENV_VAR}"
    assert config["relay"]["qkd_secret_source"] == source
    assert f"qkd_secret_source: {source}" in logs  # the capture works...
    # Each UAV remembered the downlinks it accepted, across its ClientApp processes.
    assert sorted(p.name for p in (tmp_path / "relay-state").iterdir()
                  if not p.name.startswith(".")) == [
        "qkd-replay-uav-0.json", "qkd-replay-uav-1.json", "qkd-replay-uav-2.json"
    ]
    everything = logs + json.dumps(config) + json.dumps(rows)
    assert SECRET_HEX not in everything and SECRET_HEX.upper() not in everything


@pytest.mark.slow
def test_teleport_with_many_shots_stays_within_two_points_of_ideal(ideal, tmp_path):
    rows, _config, _model, _logs = simulate(
        tmp_path, "teleport", relay="teleport", shots=200_000
    )
    ideal_rows, _ideal_config, _ideal_model, _ideal_logs = ideal
    assert abs(rows[-1]["accuracy"] - ideal_rows[-1]["accuracy"]) <= 0.02
    for row in rows[1:]:
        assert row["clients_used"] == 3
        assert row["bell_pairs"] == 9 * PARAMETERS * 200_000
        # 2 bits per teleport and per swap: at least one hop per path.
        assert row["classical_bits"] >= 2 * row["bell_pairs"]
        assert row["fidelity"] == pytest.approx(0.985, abs=0.01) and row["qber"] is None


@pytest.mark.slow
def test_full_eavesdropper_aborts_every_key_and_the_model_stays_initial(
    tmp_path, secret_in_environment
):
    settings = {"relay": "qkd", "eavesdropper": 1.0, "num-server-rounds": 2}
    rows, _config, model, logs = simulate(tmp_path, "eve", **settings)
    initial = model_from_config(parse_run_config({}, {**RUN, **settings})).state_dict()
    assert all(torch.equal(model[name], initial[name]) for name in initial)
    for row in rows[1:]:
        assert row["clients_used"] == 0
        assert (row["accuracy"], row["loss"]) == (rows[0]["accuracy"], rows[0]["loss"])
        assert row["keys_aborted"] == 6 and row["key_bits"] == 0  # train and evaluate
        assert row["qber"] == pytest.approx(0.25, abs=0.03)
        reasons = list(row["rejected_reasons"].values())
        assert len(reasons) == 3
        assert all("exceeds the abort threshold 0.110" in reason for reason in reasons)
    assert "no update aggregated: 3 keys aborted (QBER 0.2" in logs
