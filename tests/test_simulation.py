"""End to end: the ServerApp and ClientApp in Flower's Ray simulation, on tiny settings."""

import json

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.simulation import run_simulation

from client.app import build_client_app
from server.app import build_server_app, main

TINY = {
    "num-server-rounds": 2,
    "max-samples-per-client": 300,
    "test-samples": 1000,
    "min-train-nodes": 3,
    "fraction-evaluate": 1.0,
}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hybrid", "classical", "cnn"])
def test_simulated_federation_writes_a_complete_run_folder(model, tmp_path):
    overrides = {**TINY, "model": model, "output-dir": str(tmp_path), "run-name": "tiny"}
    run_simulation(
        server_app=build_server_app(overrides),
        client_app=build_client_app(overrides),
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    run_dir = tmp_path / "tiny"
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["clients_used"] == 3 and row["clients_rejected"] == 0
        assert row["round_seconds"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0 and row["loss"] > 0
    # Two short rounds on 810 images: the global model must already have learnt something.
    assert rows[-1]["loss"] < rows[0]["loss"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["model"] == model
    assert (config["angle_arrays"] != []) == (model == "hybrid")
    state = torch.load(run_dir / "final_model.pt")
    assert state and all(torch.isfinite(t).all() for t in state.values())
    assert (run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num-server-rounds": -1}, "'num-server-rounds' = -1 is not allowed"),
        ({"model": "hybird"}, "'model' = 'hybird' is not allowed; use one of 'hybrid'"),
        ({"mode": "async", "buffer-size": 0}, "'buffer-size' = 0 is not allowed"),
        ({"hierarchy": "relays", "aggregation": "median"},
         "'hierarchy' = 'relays' needs aggregation 'fedavg'"),
        ({"staleness-weighting": "linear"}, "'staleness-weighting' = 'linear' is not allowed"),
    ],
)
def test_bad_run_config_stops_before_anything_is_written(overrides, message, tmp_path):
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(SystemExit) as stop:
        main(grid=None, context=context, overrides={**overrides, "output-dir": str(tmp_path)})
    assert message in str(stop.value)
    assert list(tmp_path.iterdir()) == []
