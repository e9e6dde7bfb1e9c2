"""Automatic run-folder names: two runs with different settings never look alike."""

import json
import re

import pytest

from task.config import parse_run_config
from task.outputs import new_run_dir, settings_digest


def test_automatic_names_carry_model_relay_and_a_digest_of_the_settings(tmp_path):
    ideal = parse_run_config({})
    teleport = parse_run_config({"relay": "teleport"})
    more_shots = parse_run_config({"relay": "teleport", "shots": 4000})
    names = [
        new_run_dir(str(tmp_path), "", c.model, c.relay, c.as_dict()).name
        for c in (ideal, teleport, more_shots)
    ]
    assert re.fullmatch(r"\d{8}-\d{6}-hybrid-ideal-[0-9a-f]{6}", names[0])
    assert "-hybrid-teleport-" in names[1] and "-hybrid-teleport-" in names[2]
    assert len({name.rsplit("-", 1)[-1] for name in names}) == 3


def test_the_digest_ignores_where_a_run_goes_and_what_it_is_called():
    base = parse_run_config({}).as_dict()
    placed = parse_run_config({"run-name": "x", "output-dir": "/elsewhere"}).as_dict()
    assert settings_digest(base) == settings_digest(placed)
    assert settings_digest(base) != settings_digest({**base, "seed": base["seed"] + 1})


def test_two_runs_in_the_same_second_get_two_folders(tmp_path):
    config = parse_run_config({}).as_dict()
    first = new_run_dir(str(tmp_path), "", "hybrid", "ideal", config)
    second = new_run_dir(str(tmp_path), "", "hybrid", "ideal", config)
    assert first != second and first.is_dir() and second.is_dir()


ENVIRONMENT_KEYS = {
    "cpu_model", "cpu_count", "torch_cpu_capability", "torch_threads", "torch_interop_threads",
    "numpy_blas", "thread_variables", "versions", "platform", "machine",
}


def test_run_environment_names_what_decides_the_last_digits(monkeypatch):
    import torch

    from task.environment import run_environment

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    environment = run_environment()
    assert set(environment) == ENVIRONMENT_KEYS
    assert environment["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["torch_threads"] == torch.get_num_threads()
    assert environment["thread_variables"]["OMP_NUM_THREADS"] == "1"
    assert set(environment["versions"]) == {"python", "torch", "numpy", "pennylane", "flwr"}
    assert all(environment["versions"].values()) and environment["cpu_model"]


@pytest.mark.usefixtures("flower_run")
def test_config_json_records_the_environment(tmp_path):
    # A tiny in-process run on the bundled Fashion-MNIST (no data-dir) without the ring.
    from flower_messages import RUN_ID
    from flwr.app import Context, RecordDict
    from in_process import TINY, make_grid

    from server.app import main

    settings = {**TINY, "num-server-rounds": 1, "dataset": "fashion-mnist",
                "entangler": "none", "output-dir": str(tmp_path), "run-name": "env"}
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    main(make_grid(settings), context, settings)
    document = json.loads((tmp_path / "env" / "config.json").read_text())
    assert set(document["environment"]) == ENVIRONMENT_KEYS
    assert document["environment"]["torch_threads"] == 1  # the ServerApp runs one thread
    assert document["angle_arrays"] == ["quantum.rotation_weights"]
    rows = json.loads((tmp_path / "env" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1]  # round 0: the initial model
