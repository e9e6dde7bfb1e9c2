"""Bad input at the ServerApp's boundary stops the run before its first file is written.

Run config, topology file, a SuperNode's node config and data folder, the server's own
dataset: each is refused with one message that names the bad thing and what is allowed,
and the output folder stays empty. (Checkpoints that do not fit: ``test_resume.py``.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flower_messages import RUN_ID
from flwr.app import Context, RecordDict
from in_process import make_grid

from relay.topology_file import DEFAULT_TOPOLOGY_PATH
from server.app import main

pytestmark = pytest.mark.usefixtures("flower_run")

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "MNIST" / "raw"
TINY = {"max-samples-per-client": 40, "test-samples": 100, "num-server-rounds": 1}


def stop_message(grid, overrides, out: Path) -> str:
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    with pytest.raises(SystemExit) as stop:
        main(grid, context, {**TINY, **overrides, "output-dir": str(out / "outputs")})
    assert not (out / "outputs").exists(), "a run folder was left behind"
    return str(stop.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resume": "../elsewhere"}, "'resume' = '../elsewhere' is not allowed; use empty"),
        ({"min-train-nodes": 0}, "'min-train-nodes' = 0 is not allowed; use an integer from 1"),
        ({"relay": "carrier-pigeon"}, "'relay' = 'carrier-pigeon' is not allowed; use a "
                                      "registered relay channel: 'ideal'"),
        ({"num-server-round": 3}, "run config key 'num-server-round' is not known; known keys: "
                                  "num-server-rounds,"),
    ],
)
def test_bad_run_config(tmp_path, overrides, message):
    assert message in stop_message(None, overrides, tmp_path)


def test_topology_file_with_a_bad_value(tmp_path):
    topology = tmp_path / "bad.toml"
    topology.write_text("this is = not [valid toml\n")
    message = stop_message(None, {"topology": str(topology)}, tmp_path)
    assert message.startswith(f"Run stopped before training: run config 'topology' = "
                              f"'{topology}'")


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("speed_km_s = 0.015", "speed_km_s = 1e308", "node 'uav-0' key 'speed_km_s' = 1e+308"),
        ("altitude_km = 550.0", "altitude_km = 1e308", "node 'leo-0' key 'altitude_km' = 1e+308"),
    ],
)
def test_topology_file_with_an_extreme_value_stops_before_any_run_folder(
    tmp_path, old, new, named
):
    # Such values passed validation and crashed the run mid-way, leaving a half-written
    # run folder (issue 11, item 7).
    topology = tmp_path / "extreme.toml"
    topology.write_text(DEFAULT_TOPOLOGY_PATH.read_text().replace(old, new, 1))
    message = stop_message(None, {"topology": str(topology)}, tmp_path)
    assert message.startswith(f"Run stopped before training: run config 'topology' = "
                              f"'{topology}'")
    assert named in message and "is not allowed; must be from" in message


def test_servers_own_dataset_missing(tmp_path):
    grid = make_grid(TINY)
    message = stop_message(grid, {"data-dir": str(tmp_path / "nowhere")}, tmp_path)
    assert f"run config 'data-dir' = '{tmp_path / 'nowhere'}': the mnist archives" in message


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"num-partitions": "three"}, "'num-partitions' = 'three' is not an integer"),
        ({"data-dir": "/no/such/folder"},
         "node config 'data-dir' = '/no/such/folder': the mnist archives"),
    ],
)
def test_one_nodes_bad_node_config_stops_the_run_naming_the_node(
    tmp_path, node_config, message
):
    grid = make_grid(TINY)
    grid.contexts[202].node_config.update(node_config)
    text = stop_message(grid, {}, tmp_path)
    assert text.startswith("Run stopped before training: node 202 cannot join the relay: ")
    assert message in text


def test_one_nodes_corrupt_archive_stops_the_run_naming_file_and_md5(tmp_path):
    shutil.copytree(BUNDLED, tmp_path / "node-data" / "raw")
    archive = tmp_path / "node-data" / "raw" / "train-labels-idx1-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-10])
    grid = make_grid(TINY)
    grid.contexts[303].node_config["data-dir"] = str(tmp_path / "node-data")
    text = stop_message(grid, {}, tmp_path)
    assert "node 303 cannot join the relay: " in text
    assert f"{archive} is corrupt or not the original file" in text
    assert "expected d53e105ee54ea40749a09fcbcd1e9432" in text
