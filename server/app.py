"""ServerApp: validates the run, runs QFL rounds over the relay, evaluates, writes outputs."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Mapping
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, NoReturn

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from quantum.models import angle_periods, count_parameters
from relay.shared_secret import SecretError
from server.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    check_compatible,
    find_run,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from strategies.qfl import QFLStrategy
from strategies.relay import RelayRoundReport, RelayStrategy
from task.config import RunConfig, RunConfigError, parse_run_config
from task.data import DatasetError, load_test_set
from task.outputs import new_run_dir, plot_metrics, save_model, write_json
from task.train import evaluate, model_from_config
from task.wiring import channel_from_config, load_run_topology


class RunRecorder:
    """Central evaluation after every round, and the rows of ``metrics.json``.

    Its :meth:`evaluate` is the strategy's ``evaluate_fn``: Flower calls it with round 0
    (the initial model) and after each round, which is where the round is timed and
    recorded.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        strategy: RelayStrategy,
        model: torch.nn.Module,
        test_set: tuple[torch.Tensor, torch.Tensor],
        rows: list[dict] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.strategy = strategy
        self.model = model
        self.test_images, self.test_labels = test_set
        self.rows: list[dict] = list(rows or [])
        self._round_started = time.perf_counter()

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate ``arrays`` on the test set and append the round's row."""
        round_seconds = time.perf_counter() - self._round_started
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(
            self.model, self.test_images, self.test_labels, seed=self.config.seed + server_round
        )
        reports = self.strategy.reports
        report = (
            reports[-1] if server_round and reports and reports[-1].server_round == server_round
            else RelayRoundReport(server_round)
        )
        # Replies refused at the base station and training downlinks never sent (aborted
        # key) are both updates the channel kept out of the model.
        rejected = {**report.rejected, **report.not_sent}
        row = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "clients_sampled": report.clients_sampled,
            "clients_used": report.clients_used,
            "clients_rejected": report.clients_rejected,
            "clients_failed": report.clients_failed,
            **report.channel_figures(),
            "rejected_reasons": {str(node): reason for node, reason in rejected.items()},
            "failed_reasons": {str(node): reason for node, reason in report.failed.items()},
            "skipped": report.skipped,
            "evaluate_rejected_reasons": {
                str(node): reason for node, reason in report.evaluate_rejected.items()
            },
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
        if server_round:
            log(INFO, "Round %d relay (%s): %s", server_round, self.config.relay,
                _figures_text(row))
        self._round_started = time.perf_counter()
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def _title(self) -> str:
        c = self.config
        bottleneck = f", {c.n_qubits} qubits x {c.n_layers} layers" if c.model != "cnn" else ""
        return (
            f"{self.run_dir.name}: {c.model}{bottleneck}, {c.dataset}, {c.partitioning}"
            + (f" (alpha {c.dirichlet_alpha})" if c.partitioning == "dirichlet" else "")
        )


def _figures_text(row: Mapping[str, Any]) -> str:
    """One log line of a round's channel figures."""
    fidelity = "n/a" if row["fidelity"] is None else f"{row['fidelity']:.4f}"
    qber = "n/a" if row["qber"] is None else f"{row['qber']:.4f}"
    return (
        f"fidelity {fidelity}, {row['bell_pairs']:,} Bell pairs, latency {row['latency_s']:.4g} s, "
        f"QBER {qber}, {row['key_bits']:,} key bits, {row['bytes_up']:,} B up, "
        f"{row['bytes_down']:,} B down, {row['keys_aborted']} keys aborted, "
        f"{row['clients_no_path']} UAVs without a path"
    )


def _fail(message: str) -> NoReturn:
    """Stop the run before any training, with one clear line in the log."""
    log(ERROR, "Run stopped before training: %s", message)
    sys.exit(f"Run stopped before training: {message}")


def run_rounds(
    strategy: QFLStrategy,
    grid: Grid,
    arrays: ArrayRecord,
    rounds: range,
    train_config: ConfigRecord,
    end_of_round: Callable[[int, ArrayRecord], None],
    timeout: float = 3600.0,
) -> ArrayRecord:
    """Run ``rounds`` of training (and federated evaluation) and return the global arrays.

    The same hook calls as :meth:`flwr.serverapp.strategy.Strategy.start`, round by
    round, but over any range of round numbers: ``start`` always counts from 1, and a
    resumed run must go on with the true numbers, which seed the clients' training and
    the relay's mobility and channel noise. ``end_of_round(server_round, arrays)``
    evaluates, records and checkpoints each round.
    """
    evaluate_config = ConfigRecord()
    # What a reply that misses the deadline is reported against (QFLStrategy.start sets
    # it too, for runs through Flower's own loop).
    strategy.round_timeout = timeout
    for server_round in rounds:
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", server_round, rounds[-1])
        replies = grid.send_and_receive(
            strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout
        )
        aggregated, train_metrics = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        if train_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", train_metrics)
        replies = grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout,
        )
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        if evaluate_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", evaluate_metrics)
        end_of_round(server_round, arrays)
    return arrays


def _resume_point(config: RunConfig, model: torch.nn.Module) -> tuple[Path, Checkpoint]:
    """The run folder and checkpoint ``resume`` names, checked against this run config."""
    run_dir = find_run(config.output_dir, config.resume)
    checkpoint = load_checkpoint(run_dir)
    check_compatible(checkpoint, config.as_dict(), ArrayRecord(model.state_dict()))
    return run_dir, checkpoint


def main(grid: Grid, context: Context, overrides: Mapping[str, Any] | None = None) -> None:
    """Run ``num-server-rounds`` rounds of QFL and write ``outputs/<run-name>/``.

    With run config ``resume``, continue that run from its last checkpoint instead.
    Everything the run config, the topology, the dataset or a checkpoint could get wrong
    is checked before the first file is written.
    """
    try:
        config = parse_run_config(context.run_config, overrides)
    except RunConfigError as err:
        _fail(str(err))
    try:
        topology = load_run_topology(config)
        channel, secret_source = channel_from_config(config)
    except (RunConfigError, SecretError) as err:
        _fail(str(err))
    if config.eavesdropper and config.relay != "qkd":
        log(WARNING, "run config 'eavesdropper' = %s only acts on the 'qkd' relay; it is "
            "ignored with relay '%s'", config.eavesdropper, config.relay)
    torch.set_num_threads(1)
    random.seed(config.seed)  # Flower samples nodes with the `random` module
    model = model_from_config(config)
    checkpoint = None
    if config.resume:
        try:
            run_dir, checkpoint = _resume_point(config, model)
        except CheckpointError as err:
            _fail(str(err))
    try:
        test_set = load_test_set(config.dataset, config.data_dir, config.test_samples)
    except DatasetError as err:
        _fail(str(err))
    strategy = RelayStrategy(
        channel=channel,
        topology=topology,
        run_id=context.run_id,
        seed=config.seed,
        weighting=config.weighting,
        angle_periods=angle_periods(model),
        angle_aggregation=config.angle_aggregation,
        aggregation=config.aggregation,
        trim_fraction=config.trim_fraction,
        max_norm_ratio=config.max_norm_ratio,
        max_weight_ratio=config.max_weight_ratio,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=1,
        min_available_nodes=config.min_train_nodes,
    )
    if checkpoint is not None:
        try:
            strategy.load_state(checkpoint.strategy_state)
        except ValueError as err:
            _fail(f"cannot resume run {config.resume!r}: {err}")
    log(INFO, "Relay: %s channel over topology %r (%s, %d UAVs)%s", channel.name, topology.name,
        topology.source, len(topology.uav_ids),
        f"; QKD shared secret from {secret_source}" if secret_source else "")
    # Each node says which UAV it is before anything is written: a node that cannot
    # (say, more SuperNodes than UAVs, or a bad node config) stops the run here.
    strategy.map_nodes(grid, wait=True)
    if strategy.unmapped:
        node_id, reason = next(iter(sorted(strategy.unmapped.items())))
        _fail(f"node {node_id} cannot join the relay: {reason}")
    if checkpoint is None:
        try:
            run_dir = new_run_dir(config.output_dir, config.run_name, config.model)
        except FileExistsError as err:
            _fail(str(err))
    recorder = RunRecorder(
        config, run_dir, strategy, model_from_config(config), test_set,
        rows=checkpoint.rows if checkpoint else None,
    )
    _write_config(run_dir, config, context, model, strategy, secret_source, checkpoint)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        recorder.evaluate(server_round, arrays)
        save_checkpoint(run_dir, Checkpoint(
            server_round, arrays, strategy.state(), capture_rng_state(), recorder.rows,
            config.as_dict(),
        ))

    strategy.summary()
    if checkpoint is None:
        log(INFO, "Run %s: outputs in %s", run_dir.name, run_dir)
        arrays = ArrayRecord(model.state_dict())
        end_of_round(0, arrays)
        first_round = 1
    else:
        log(INFO, "Run %s: resumed after round %d of %d; outputs in %s", run_dir.name,
            checkpoint.server_round, config.num_server_rounds, run_dir)
        arrays = checkpoint.arrays
        restore_rng_state(checkpoint.rng_state)
        first_round = checkpoint.server_round + 1
    arrays = run_rounds(
        strategy, grid, arrays, range(first_round, config.num_server_rounds + 1),
        ConfigRecord({"learning-rate": config.learning_rate}), end_of_round,
        timeout=config.round_timeout,
    )
    model.load_state_dict(arrays.to_torch_state_dict())
    save_model(model, run_dir / "final_model.pt")
    final = recorder.rows[-1]
    log(
        INFO,
        "Run %s finished: test accuracy %.4f, loss %.4f after %d rounds. Outputs in %s",
        run_dir.name, final["accuracy"], final["loss"], final["round"], run_dir,
    )


def _write_config(
    run_dir: Path,
    config: RunConfig,
    context: Context,
    model: torch.nn.Module,
    strategy: RelayStrategy,
    secret_source: str | None,
    checkpoint: Checkpoint | None,
) -> None:
    """Write ``config.json``; a resumed run adds itself to the list of its starts."""
    starts = []
    previous = run_dir / "config.json"
    if checkpoint is not None and previous.is_file():
        starts = json.loads(previous.read_text()).get("starts", [])
    starts.append({
        "run_id": context.run_id,
        "after_round": checkpoint.server_round if checkpoint else 0,
        "num_server_rounds": config.num_server_rounds,
    })
    write_json(
        previous,
        {
            "run_config": config.as_dict(),
            "run_id": context.run_id,
            "starts": starts,
            "parameters": count_parameters(model),
            "angle_arrays": sorted(strategy.angle_periods),
            "relay": {
                "channel": strategy.channel.name,
                "topology": strategy.topology.name,
                "topology_file": strategy.topology.source,
                "uav_of_node": {str(n): u for n, u in sorted(strategy.uav_of_node.items())},
                "qkd_secret_source": secret_source,
            },
        },
    )


def build_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` replace run config values (for runs from Python)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context, overrides)

    return server_app


app = build_server_app()
