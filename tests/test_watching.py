"""Watching a run: TensorBoard event files, MLflow tracking, the progress line and
``topology.png``, each read back from a real ServerApp run.

The runs are the real ServerApp ``main`` against ClientApps in this process
(``in_process.InProcessGrid``): 2 rounds of 3 UAVs on tiny data.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import sys
from pathlib import Path

import pytest
from flower_messages import RUN_ID, assign_message_id, over_the_wire, task_identity
from flwr.app import Context, RecordDict
from in_process import InProcessGrid, make_grid
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from relay.topology_file import load_topology
from server.app import main
from server.watch import (
    MLFLOW_EXPERIMENT,
    RUN_FOLDER_TAG,
    mlflow_key,
    progress_line,
    scalars,
)
from task.plots import plot_topology

pytestmark = pytest.mark.usefixtures("flower_run")

TINY = {"max-samples-per-client": 40, "test-samples": 100, "seed": 7, "num-server-rounds": 2,
        "min-train-nodes": 2}


def context() -> Context:
    return Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})


def run(overrides: dict, grid=None) -> None:
    settings = {**TINY, **overrides}
    main(grid or make_grid(settings), context(), settings)


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture
def mlflow_env(monkeypatch):
    """The variables the ServerApp sets for MLflow (os.environ.setdefault), unset before
    the test and removed after it."""
    names = ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
             "MLFLOW_HTTP_REQUEST_TIMEOUT")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    yield
    for name in names:
        os.environ.pop(name, None)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One default 2-round run, its folder and its log (made once)."""
    out = tmp_path_factory.mktemp("watch")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("flwr").addHandler(handler)
    try:
        with task_identity(RUN_ID):
            run({"output-dir": str(out), "run-name": "plain"})
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    return out / "plain", stream.getvalue()


# --- the flattening ------------------------------------------------------------------


def test_scalars_flattens_nested_rows_and_leaves_out_what_is_not_a_finite_number():
    row = {
        "round": 3, "accuracy": 0.5, "loss": float("nan"), "fidelity": None,
        "bell_pairs": 12, "latency_s": float("inf"), "staleness": [1, 2],
        "skipped": "no nodes", "flag": True,
        "hops": {"hap-0>bs": {"messages": 4, "bytes": 10.5, "kinds": ["a"]}, "x": None},
        "epsilon": 1.25,  # a key added later is logged without a change
    }
    assert scalars(row) == {
        "accuracy": 0.5, "bell_pairs": 12.0, "hops/hap-0>bs/messages": 4.0,
        "hops/hap-0>bs/bytes": 10.5, "epsilon": 1.25,
    }
    assert mlflow_key("hops/hap-0>bs/messages") == "hops/hap-0_to_bs/messages"


def test_progress_line_estimates_the_time_left_from_the_mean_round():
    rows = [{"round": 0, "accuracy": 0.1, "round_seconds": 0.0},
            {"round": 1, "accuracy": 0.5, "round_seconds": 3.0},
            {"round": 2, "accuracy": 0.6, "round_seconds": 5.0}]
    assert progress_line(rows, 10) == (
        "Progress: round 2/10, accuracy 0.6000, 5.0 s, about 32 s left"
    )
    assert progress_line(rows, 2).endswith("5.0 s, done")
    rows[-1]["round_seconds"] = 700.0
    assert progress_line(rows, 12).endswith("about 59 min left")  # 351.5 s x 10


# --- a default run --------------------------------------------------------------------


def test_event_files_hold_every_round_of_metrics_json(default_run):
    run_dir, _log = default_run
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert list(run_dir.glob("events.out.tfevents.*"))
    accumulator = events(run_dir)
    tags = set(accumulator.Tags()["scalars"])
    for key in ("accuracy", "loss", "bell_pairs", "bytes_up", "bytes_down", "round_seconds",
                "emulated_time_s", "clients_used", "fidelity"):
        assert key in tags, key
    assert any(tag.startswith("hops/") for tag in tags)
    for key in ("accuracy", "loss"):
        logged = [(event.step, event.value) for event in accumulator.Scalars(key)]
        assert [step for step, _ in logged] == [row["round"] for row in rows]
        assert [value for _, value in logged] == pytest.approx([row[key] for row in rows],
                                                               rel=1e-6)
    for tag in tags:  # every tag is some finite value of the rows
        assert all(math.isfinite(event.value) for event in accumulator.Scalars(tag))


def test_progress_line_per_round_with_the_time_left(default_run):
    _run_dir, text = default_run
    lines = [line for line in text.splitlines() if line.startswith("Progress: ")]
    assert len(lines) == 2
    assert lines[0].startswith("Progress: round 1/2, accuracy 0.")
    assert " s, about " in lines[0] and lines[0].endswith(" left")
    assert lines[1].startswith("Progress: round 2/2, ") and lines[1].endswith(", done")


def test_topology_png_is_a_picture_of_sensible_size(default_run):
    run_dir, _log = default_run
    data = (run_dir / "topology.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 3000 and 400 <= height <= 2000
    assert len(data) > 20_000


def test_event_writer_threads_end_with_the_run(default_run):
    import threading

    assert not [t for t in threading.enumerate() if "AsyncWriter" in type(t).__name__]


def test_topology_png_of_the_leo_topology_with_its_tle_satellites(tmp_path):
    topology = load_topology(Path(__file__).resolve().parents[1] / "relay" / "topologies"
                             / "sagin-leo-10.toml")
    links = topology.links_for_round(1, 42)
    plot_topology(topology, topology.positions(1, 42), links, tmp_path / "t.png", "leo")
    data = (tmp_path / "t.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_without_tensorboard_the_run_warns_once_and_writes_no_event_files(
    tmp_path, monkeypatch, flwr_log
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run({"output-dir": str(tmp_path), "run-name": "blind", "num-server-rounds": 1})
    run_dir = tmp_path / "blind"
    assert (run_dir / "final_model.pt").is_file()
    assert not list(run_dir.glob("events.out.tfevents.*"))
    assert flwr_log.getvalue().count("TensorBoard event files not written") == 1


class PushPullGrid(InProcessGrid):
    """The in-process ClientApps behind Flower's non-blocking calls (``mode='async'``)."""

    def __init__(self, settings, nodes=5) -> None:
        super().__init__(settings, {
            100 + part: {"partition-id": part, "num-partitions": 10} for part in range(nodes)
        })
        self.pending: dict[str, object] = {}

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message = assign_message_id(message)
            node = message.metadata.dst_node_id
            self.pending[message.metadata.message_id] = over_the_wire(
                self.client_app(over_the_wire(message), self.contexts[node]))
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.pending.pop(i) for i in list(message_ids) if i in self.pending]


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_async_runs_show_progress_per_version_and_log_events(tmp_path, flwr_log):
    settings = {**TINY, "mode": "async", "buffer-size": 2, "concurrency": 3,
                "output-dir": str(tmp_path), "run-name": "async"}
    main(PushPullGrid(settings), context(), settings)
    lines = [line for line in flwr_log.getvalue().splitlines() if line.startswith("Progress:")]
    assert [line.split(",")[0] for line in lines] == ["Progress: round 1/2",
                                                      "Progress: round 2/2"]
    assert "left" in lines[0] and lines[1].endswith("done")
    rows = json.loads((tmp_path / "async" / "metrics.json").read_text())
    logged = events(tmp_path / "async").Scalars("accuracy")
    assert [(e.step, e.value) for e in logged] == [
        (row["round"], pytest.approx(row["accuracy"])) for row in rows
    ]
    assert (tmp_path / "async" / "topology.png").is_file()


# --- MLflow ---------------------------------------------------------------------------


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_mlflow_gets_params_metrics_per_step_and_the_model(tmp_path, mlflow_env):
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    run({"output-dir": str(tmp_path / "out"), "run-name": "tracked", "tracking-uri": uri})
    run_dir = tmp_path / "out" / "tracked"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.tags[RUN_FOLDER_TAG] == str(run_dir)
    params = found.data.params
    assert params["num-server-rounds"] == "2" and params["seed"] == "7"
    assert params["tracking-uri"] == uri
    rows = json.loads((run_dir / "metrics.json").read_text())
    history = client.get_metric_history(found.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in history) == [
        (row["round"], pytest.approx(row["accuracy"])) for row in rows
    ]
    assert any(key.startswith("hops/") and ">" not in key for key in found.data.metrics)
    artifacts = {info.path for info in client.list_artifacts(found.info.run_id)}
    assert {"final_model.pt", "metrics.json"} <= artifacts


def test_tracking_uri_without_mlflow_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(SystemExit) as stop:
        run({"output-dir": str(tmp_path / "out"), "tracking-uri": "file:./mlruns"})
    assert "tracking-uri needs mlflow: pip install mlflow-skinny" in str(stop.value)
    assert str(stop.value).startswith("Run stopped before training: ")
    assert not (tmp_path / "out").exists()


def test_a_tracking_uri_mlflow_refuses_stops_before_training(tmp_path, mlflow_env):
    with pytest.raises(SystemExit) as stop:
        run({"output-dir": str(tmp_path / "out"), "tracking-uri": "fle:./mlruns"})
    assert "run config 'tracking-uri' = 'fle:./mlruns' is refused by mlflow" in str(stop.value)


def test_a_failing_tracking_server_warns_once_and_the_run_goes_on(
    tmp_path, monkeypatch, flwr_log, mlflow_env
):
    from mlflow.tracking import MlflowClient

    calls = []

    def broken(self, *args, **kwargs):
        calls.append(args)
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    uri = f"file:{tmp_path / 'mlruns'}"
    run({"output-dir": str(tmp_path / "out"), "run-name": "on", "tracking-uri": uri})
    assert (tmp_path / "out" / "on" / "final_model.pt").is_file()
    assert flwr_log.getvalue().count("the run goes on without MLflow") == 1
    assert len(calls) == 1


# --- resume ---------------------------------------------------------------------------


def crashing_grid(settings: dict):
    """A grid that dies when it is asked to send the training messages of round 2."""
    grid = make_grid(settings)
    deliver = grid.send_and_receive

    def send_and_receive(messages, *, timeout=None):
        messages = list(messages)
        config = messages[0].content.config_records.get("config") if messages else None
        if config is not None and config.get("server-round") == 2:
            raise KeyboardInterrupt("killed in round 2")
        return deliver(messages, timeout=timeout)

    grid.send_and_receive = send_and_receive
    return grid


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_resumed_run_has_each_step_once(tmp_path, mlflow_env):
    uri = f"file:{tmp_path / 'mlruns'}"
    settings = {**TINY, "output-dir": str(tmp_path / "out"), "run-name": "again",
                "num-server-rounds": 3, "tracking-uri": uri}
    with pytest.raises(KeyboardInterrupt):
        main(crashing_grid(settings), context(), settings)
    run_dir = tmp_path / "out" / "again"
    # A round the checkpoint did not keep, as a crash between the two would leave.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir)) as stale:
        stale.add_scalar("accuracy", 123.0, global_step=2)
    resumed = {**settings, "resume": "again", "run-name": ""}
    main(make_grid(resumed), context(), resumed)
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    accumulator = events(run_dir)
    for key in ("accuracy", "loss"):
        logged = [(event.step, event.value) for event in accumulator.Scalars(key)]
        assert [step for step, _ in logged] == [0, 1, 2, 3]
        assert [value for _, value in logged] == pytest.approx([row[key] for row in rows],
                                                               rel=1e-6)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name(MLFLOW_EXPERIMENT)
                                   .experiment_id])
    assert found.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "accuracy")]
    assert sorted(steps) == [0, 1, 2, 3]
