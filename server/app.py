"""ServerApp: validates the run, runs QFLStrategy rounds, evaluates centrally, writes outputs."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from client.config import RunConfig, RunConfigError, parse_run_config
from client.data import DatasetError, load_test_set
from client.task import evaluate, model_from_config
from quantum.models import angle_periods, count_parameters
from server.outputs import new_run_dir, plot_metrics, write_json
from strategies.qfl import QFLStrategy


class RunRecorder:
    """Central evaluation after every round, and the rows of ``metrics.json``.

    Its :meth:`evaluate` is the strategy's ``evaluate_fn``: Flower calls it with round 0
    (the initial model) and after each round, which is where the round is timed and
    recorded.
    """

    def __init__(
        self, config: RunConfig, run_dir: Path, strategy: QFLStrategy, model: torch.nn.Module
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.strategy = strategy
        self.model = model
        self.test_images, self.test_labels = load_test_set(
            config.dataset, config.data_dir, config.test_samples
        )
        self.rows: list[dict] = []
        self._round_started = time.perf_counter()

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate ``arrays`` on the test set and append the round's row."""
        round_seconds = time.perf_counter() - self._round_started
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(self.model, self.test_images, self.test_labels)
        report = self.strategy.reports[-1] if server_round and self.strategy.reports else None
        row = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "clients_sampled": report.clients_sampled if report else 0,
            "clients_used": report.clients_used if report else 0,
            "clients_rejected": report.clients_rejected if report else 0,
            "clients_failed": report.clients_failed if report else 0,
            "rejected_reasons": {str(k): v for k, v in report.rejected.items()} if report else {},
            "round_seconds": round(round_seconds, 3) if server_round else 0.0,
        }
        self.rows.append(row)
        write_json(self.run_dir / "metrics.json", self.rows)
        plot_metrics(self.rows, self.run_dir / "metrics.png", self._title())
        log(
            INFO,
            "Round %d/%d: test accuracy %.4f, loss %.4f (%d used, %d rejected, %d failed, %.1f s)",
            server_round, self.config.num_server_rounds, accuracy, loss, row["clients_used"],
            row["clients_rejected"], row["clients_failed"], row["round_seconds"],
        )
        self._round_started = time.perf_counter()
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def _title(self) -> str:
        c = self.config
        bottleneck = f", {c.n_qubits} qubits x {c.n_layers} layers" if c.model != "cnn" else ""
        return (
            f"{self.run_dir.name}: {c.model}{bottleneck}, {c.dataset}, {c.partitioning}"
            + (f" (alpha {c.dirichlet_alpha})" if c.partitioning == "dirichlet" else "")
        )


def _fail(message: str) -> None:
    """Stop the run before any training, with one clear line in the log."""
    log(ERROR, "Run stopped before training: %s", message)
    sys.exit(f"Run stopped before training: {message}")


def main(grid: Grid, context: Context, overrides: Mapping[str, Any] | None = None) -> None:
    """Run ``num-server-rounds`` rounds of QFL and write ``outputs/<run-name>/``."""
    try:
        config = parse_run_config(context.run_config, overrides)
    except RunConfigError as err:
        _fail(str(err))
    torch.set_num_threads(1)
    random.seed(config.seed)  # Flower samples nodes with the `random` module
    model = model_from_config(config)
    strategy = QFLStrategy(
        angle_periods=angle_periods(model),
        angle_aggregation=config.angle_aggregation,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=1,
        min_available_nodes=config.min_train_nodes,
    )
    try:
        run_dir = new_run_dir(config.output_dir, config.run_name, config.model)
        recorder = RunRecorder(config, run_dir, strategy, model_from_config(config))
    except (DatasetError, FileExistsError) as err:
        _fail(str(err))
    log(INFO, "Run %s: outputs in %s", run_dir.name, run_dir)
    write_json(
        run_dir / "config.json",
        {
            "run_config": config.as_dict(),
            "run_id": context.run_id,
            "parameters": count_parameters(model),
            "angle_arrays": sorted(strategy.angle_periods),
        },
    )
    initial = ArrayRecord(model.state_dict())
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.num_server_rounds,
        train_config=ConfigRecord({"learning-rate": config.learning_rate}),
        evaluate_fn=recorder.evaluate,
    )
    # Result.arrays stays empty when no round accepted an update.
    final_arrays = result.arrays if len(result.arrays) else initial
    model.load_state_dict(final_arrays.to_torch_state_dict())
    torch.save(model.state_dict(), run_dir / "final_model.pt")
    final = recorder.rows[-1]
    log(
        INFO,
        "Run %s finished: test accuracy %.4f, loss %.4f after %d rounds. Outputs in %s",
        run_dir.name, final["accuracy"], final["loss"], final["round"], run_dir,
    )


def build_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run config values (for runs from Python)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context, overrides)

    return server_app


app = build_server_app()
