"""Bad input at the ServerApp's boundary stops the run before its first file is written.

Run config, topology file, a SuperNode's node config and data folder, the server's own
dataset: each is refused with one message that names the bad thing and what is allowed,
and the output folder stays empty. (Checkpoints that do not fit: ``test_resume.py``.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from flower_messages import RUN_ID
from flwr.app import Context, RecordDict
from in_process import make_grid

from relay.topology_file import DEFAULT_TOPOLOGY_PATH
from server.app import main
from task.outputs import write_json

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


# --- unusable output locations (issue 11, item 8) ----------------------------------------


def _stopped_before_nodes_join(overrides: dict) -> str:
    """The run must stop in the set-up, before it asks any node anything (grid None)."""
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    with pytest.raises(SystemExit) as stop:
        main(None, context, {**TINY, **overrides})
    return str(stop.value)


def test_output_dir_under_proc_is_refused_in_one_line():
    text = _stopped_before_nodes_join({"output-dir": "/proc/qfl-outputs"})
    assert text.startswith("Run stopped before training: run config 'output-dir' = ")
    assert "cannot write in /proc" in text and "\n" not in text


def test_output_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    in_the_way = tmp_path / "outputs"
    in_the_way.write_text("not a folder")
    for output_dir in (in_the_way, in_the_way / "deeper"):
        text = _stopped_before_nodes_join({"output-dir": str(output_dir)})
        assert f"{in_the_way} is a file, not a folder" in text
    assert in_the_way.read_text() == "not a folder"


def test_output_dir_on_a_read_only_folder_is_refused(tmp_path):
    if os.geteuid() == 0:
        # root writes through permission bits: a read-only bind mount shows it instead.
        read_only = tmp_path / "ro"
        read_only.mkdir()
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(read_only), str(read_only)],
                                 capture_output=True)
        if mounted.returncode:
            pytest.skip(f"cannot make a read-only mount here: {mounted.stderr.decode()}")
        try:
            text = _stopped_before_nodes_join({"output-dir": str(read_only / "out")})
        finally:
            subprocess.run(["umount", str(read_only)], check=True)
    else:
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
        text = _stopped_before_nodes_join({"output-dir": str(read_only / "out")})
    assert f"cannot write in {read_only}" in text
    assert not (read_only / "out").exists()


def test_a_300_character_run_name_is_refused_at_validation(tmp_path):
    text = stop_message(None, {"run-name": "r" * 300}, tmp_path)
    assert "'run-name' = 'rrrr" in text and "up to 200 letters" in text


# --- metrics.json is strict JSON (issue 11, item 6) --------------------------------------


def test_write_json_spells_nan_and_infinity_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, [{"loss": float("nan"), "nested": {"x": [1.0, float("inf")]}, "n": 3}])

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == [
        {"loss": None, "nested": {"x": [1.0, None]}, "n": 3}
    ]
