"""Watching a run: TensorBoard event files, MLflow tracking and the progress line.

Every row the recorder appends to ``metrics.json`` is also written, as scalars at step =
round, to TensorBoard event files in the run folder (:class:`TensorBoardLog`) and, with
run config ``tracking-uri``, to an MLflow run (:class:`MlflowLog`); :func:`scalars`
decides which values of a row are scalars, so a key a later version adds to the rows is
logged without a change here. Both libraries are imported only here, and only when used:
the ClientApp never loads them, and a UAV never installs them.

Neither may stop a run once it trains: a missing TensorBoard skips the event files with
one warning, and a tracking server that fails mid-run is given up with one warning.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

MLFLOW_EXPERIMENT = "sagin-qfl"
"""The MLflow experiment every run is logged under."""
RUN_FOLDER_TAG = "sagin-qfl.run-folder"
"""The MLflow tag that holds a run's folder: a resumed run goes on in the same MLflow run."""
MLFLOW_INSTALL = "pip install mlflow-skinny (or the server extra: pip install -e '.[server]')"
FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
"""MLflow 3 refuses its file store (``file:`` URIs) unless this is ``true``."""
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""Defaults (unless set) that keep a dead tracking server from stalling a round for
minutes with MLflow's own retries (7 with exponential back-off, 120 s timeout)."""
MAX_MLFLOW_BATCH = 1000
"""Metrics per ``log_batch`` call (MLflow's limit); parameters go 100 at a time."""


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a ``metrics.json`` row, by tag.

    Nested mappings are flattened with ``/`` (``hops`` -> ``hops/hap-0>bs/messages``);
    lists, strings, ``None``, booleans and non-finite numbers are left out. The round
    number itself is the step, not a scalar.
    """
    found: dict[str, float] = {}
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.update(scalars(value, tag + "/"))
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        elif math.isfinite(value) and tag != "round":
            found[tag] = float(value)
    return found


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_line(rows: Sequence[Mapping[str, Any]], total: int) -> str:
    """``Progress: round 3/10, accuracy 0.8120, 4.1 s, about 29 s left``.

    The time left is the mean wall time of the rounds done so far (those of an earlier
    start of a resumed run included) times the rounds still to go; asynchronous runs
    count versions. ``rows`` ends with the round just recorded.
    """
    row = rows[-1]
    done = int(row["round"])
    times = [float(r["round_seconds"]) for r in rows if int(r["round"]) > 0]
    left = max(total - done, 0) * (sum(times) / len(times) if times else 0.0)
    accuracy = row.get("accuracy")
    accuracy_text = f"{accuracy:.4f}" if isinstance(accuracy, int | float) else "n/a"
    eta = f"about {_duration(left)} left" if done < total else "done"
    return (f"Progress: round {done}/{total}, accuracy {accuracy_text}, "
            f"{float(row['round_seconds']):.1f} s, {eta}")


class TensorBoardLog:
    """The run's scalars as TensorBoard event files in the run folder.

    A resumed run appends a new event file that starts with a purge of every step after
    the checkpoint's round (TensorBoard then shows each step once, even when the crashed
    start had logged a round its checkpoint did not keep). A run folder without event
    files (an older run) gets the checkpoint's rows first.
    """

    def __init__(self, run_dir: Path, history: Sequence[Mapping[str, Any]]) -> None:
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            log(WARNING, "TensorBoard event files not written: tensorboard cannot be "
                "imported (%s); pip install tensorboard", err)
            return
        earlier = sorted(run_dir.glob("events.out.tfevents.*"))
        purge = int(history[-1]["round"]) + 1 if history and earlier else None
        if earlier:
            _after_last_event_file(earlier)
        self._writer = SummaryWriter(str(run_dir), purge_step=purge)
        if not earlier:
            for row in history:
                self.log(row)

    def log(self, row: Mapping[str, Any]) -> None:
        """Write every scalar of ``row`` at step ``row['round']`` and flush."""
        if self._writer is None:
            return
        step, wall = int(row["round"]), time.time()
        for tag, value in scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=step, walltime=wall)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (its writer thread ends here)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _after_last_event_file(files: Sequence[Path]) -> None:
    """Wait, if need be, for the clock to pass the second in the newest event file's name.

    TensorBoard reads a folder's event files in name order, and a name starts with the
    second it was made in: a new file made in the same second as an earlier one of this
    process might sort before it, and the purge would come before what it purges.
    """
    seconds = []
    for path in files:
        stamp = path.name.split(".")[3]
        if stamp.isdigit():
            seconds.append(int(stamp))
    wait = max(seconds, default=0) + 1 - time.time()
    if wait > 0:
        time.sleep(wait)


class TrackingError(RuntimeError):
    """Run config ``tracking-uri`` cannot be used: no mlflow, or a URI it refuses."""


def open_tracking(uri: str) -> Any:
    """An ``mlflow.tracking.MlflowClient`` for ``uri``, checked before the run trains.

    Imports mlflow (only here). A ``file:`` URI sets ``MLFLOW_ALLOW_FILE_STORE=true``
    unless the environment says otherwise; see :data:`HTTP_LIMITS` for remote servers.

    Raises
    ------
    TrackingError
        mlflow is not installed, or it refuses ``uri`` (unknown scheme, a store it cannot
        open); the message names the URI.
    """
    try:
        import mlflow  # noqa: F401 - the clear message when it is missing
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError(
            f"run config 'tracking-uri' = {uri!r}: tracking-uri needs mlflow: {MLFLOW_INSTALL}"
        ) from None
    if uri.startswith("file:"):
        os.environ.setdefault(FILE_STORE_ENV, "true")
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as err:  # noqa: BLE001 - mlflow raises many kinds for a bad URI
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"run config 'tracking-uri' = {uri!r} is refused by mlflow: "
                            f"{first}") from None


def mlflow_key(tag: str) -> str:
    """A TensorBoard tag as an MLflow metric name (MLflow refuses ``>`` and the like:
    ``hops/hap-0>bs/messages`` becomes ``hops/hap-0_to_bs/messages``)."""
    return re.sub(r"[^\w/.\- :]", "_", tag.replace(">", "_to_"))


class MlflowLog:
    """The run in MLflow: its run config as params, its rows as metrics per step, and at
    the end the final model and ``metrics.json`` as artifacts.

    A resumed run goes on in the MLflow run tagged with its folder; a new MLflow run gets
    the rows the checkpoint holds. Any failure of the tracking server is logged once, as
    a warning, and MLflow is given up for the rest of the run.
    """

    def __init__(
        self, client: Any, uri: str, run_dir: Path, params: Mapping[str, Any],
        history: Sequence[Mapping[str, Any]],
    ) -> None:
        self._client: Any = client
        self._uri = uri
        self._run_id: str | None = None
        self._guard("start the MLflow run", lambda: self._start(run_dir, params, history))

    def _start(self, run_dir: Path, params: Mapping[str, Any],
               history: Sequence[Mapping[str, Any]]) -> None:
        from mlflow.entities import Param

        client = self._client
        experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(MLFLOW_EXPERIMENT))
        earlier = client.search_runs(
            [experiment_id], f"tags.`{RUN_FOLDER_TAG}` = '{run_dir}'", max_results=1
        ) if history else []
        if earlier:
            self._run_id = earlier[0].info.run_id
            client.update_run(self._run_id, status="RUNNING")
            log(INFO, "MLflow: run %s resumed at %s", self._run_id, self._uri)
            return
        run = client.create_run(experiment_id, run_name=run_dir.name,
                                tags={RUN_FOLDER_TAG: str(run_dir)})
        self._run_id = run.info.run_id
        values = [Param(key, str(value)) for key, value in sorted(params.items())]
        for start in range(0, len(values), 100):
            client.log_batch(self._run_id, params=values[start:start + 100])
        log(INFO, "MLflow: run %s (experiment %r) at %s", self._run_id, MLFLOW_EXPERIMENT,
            self._uri)
        self._log_rows(history)

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action`` unless MLflow was given up; give it up if ``action`` fails."""
        if self._client is None:
            return
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any failure of the server: go on
            log(WARNING, "MLflow: cannot %s at %s (%s: %s); the run goes on without MLflow",
                what, self._uri, type(err).__name__, str(err).strip()[:300])
            self._client = None

    def _log_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(mlflow_key(tag), value, now, int(row["round"]))
            for row in rows for tag, value in scalars(row).items()
        ]
        for start in range(0, len(metrics), MAX_MLFLOW_BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[start:start + MAX_MLFLOW_BATCH])

    def log(self, row: Mapping[str, Any]) -> None:
        """Log every scalar of ``row`` at step ``row['round']``."""
        self._guard(f"log round {row['round']}", lambda: self._log_rows([row]))

    def finish(self, artifacts: Sequence[Path]) -> None:
        """Upload ``artifacts`` (those that exist) and mark the MLflow run finished."""

        def upload() -> None:
            for path in artifacts:
                if path.is_file():
                    self._client.log_artifact(self._run_id, str(path))
            self._client.set_terminated(self._run_id, status="FINISHED")

        self._guard("upload the run's files", upload)
        self._client = None

    def close(self, status: str = "FAILED") -> None:
        """End the MLflow run (a run that stopped early: ``FAILED`` or ``KILLED``)."""
        self._guard("end the MLflow run",
                    lambda: self._client.set_terminated(self._run_id, status=status))
        self._client = None


class RunWatch:
    """What a run shows while it trains: the progress line, TensorBoard and MLflow.

    Parameters
    ----------
    run_dir : Path
        The run folder: the event files go here.
    num_rounds : int
        ``num-server-rounds`` (versions with ``mode='async'``).
    params : Mapping[str, Any]
        The run config, logged as MLflow params.
    history : Sequence[Mapping[str, Any]]
        The rows a resumed run's checkpoint holds (empty for a new run).
    tracking : Any
        An MLflow client from :func:`open_tracking`, or ``None`` (``tracking-uri`` empty).
    tracking_uri : str
        Where ``tracking`` logs, for the log lines.
    """

    def __init__(
        self, run_dir: Path, num_rounds: int, params: Mapping[str, Any],
        history: Sequence[Mapping[str, Any]], tracking: Any = None, tracking_uri: str = "",
    ) -> None:
        self.num_rounds = num_rounds
        self.tensorboard = TensorBoardLog(run_dir, history)
        self.mlflow = (MlflowLog(tracking, tracking_uri, run_dir, params, history)
                       if tracking is not None else None)

    def round_done(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Log the last of ``rows`` (just recorded) everywhere; a progress line after a
        trained round (round 0 is the initial model)."""
        row = rows[-1]
        self.tensorboard.log(row)
        if self.mlflow is not None:
            self.mlflow.log(row)
        if int(row["round"]) > 0:
            log(INFO, "%s", progress_line(rows, self.num_rounds))

    def finish(self, artifacts: Sequence[Path]) -> None:
        """The run ended well: close the event file, upload ``artifacts`` to MLflow."""
        self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.finish(artifacts)

    def close(self, status: str = "FAILED") -> None:
        """The run stopped early (an exception): close everything, mark it ``status``."""
        self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.close(status)
