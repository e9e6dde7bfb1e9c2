"""Central evaluation after every round, and the rows of ``metrics.json``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log

from strategies.asynchronous import AsyncRoundReport
from strategies.relay import RelayRoundReport, RelayStrategy
from task.config import RunConfig
from task.outputs import write_json
from task.plots import plot_metrics
from task.train import evaluate


class RunRecorder:
    """Central evaluation after every round, and the rows of ``metrics.json``.

    The ServerApp calls :meth:`evaluate` with round 0 (the initial model) and after each
    round (:func:`server.rounds.run_rounds`' ``end_of_round``), which is where the round
    is timed and recorded.
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
        report = reports[-1] if server_round and reports else None
        if not isinstance(report, RelayRoundReport) or report.server_round != server_round:
            report = RelayRoundReport(server_round)
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
            "uav_queries": report.uav_queries,
            "refused_reasons": {str(node): reason for node, reason in report.refused.items()},
            "skipped": report.skipped,
            "evaluate_rejected_reasons": {
                str(node): reason for node, reason in report.evaluate_rejected.items()
            },
            "round_seconds": round(round_seconds, 3) if server_round else 0.0,
            "emulated_time_s": self._emulated_time_s(server_round, report),
        }
        ledger = self.strategy.ledger
        if ledger is not None:
            row["epsilon"] = ledger.epsilon()
            row["dp_clipped"] = report.dp_clipped
        if self.config.mode == "async":
            asynchronous = report if isinstance(report, AsyncRoundReport) else None
            row.update({
                "versions_used": asynchronous.versions_used if asynchronous else [],
                "staleness": asynchronous.staleness if asynchronous else [],
                "in_flight": asynchronous.in_flight if asynchronous else 0,
                "jobs": asynchronous.jobs if asynchronous else {},
            })
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
        if ledger is not None:
            log(INFO, "Round %d privacy: epsilon %.4g at delta %g (dp %s)", server_round,
                row["epsilon"], self.config.dp_delta, self.config.dp)
        self._round_started = time.perf_counter()
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def _emulated_time_s(self, server_round: int, report: RelayRoundReport) -> float:
        """Mission time of the row. An asynchronous version: its aggregation's time. A
        synchronous round lasts one mobility step (``round_duration_s``), or as long as
        its slowest UAV's compute time (``train_s``) when that is longer (the topology is
        still sampled at the round's start). The channels' emulated message latency is
        reported (``latency_s``), not added: teleporting a model at today's pair rates
        takes hours, which would swamp every other time."""
        previous = float(self.rows[-1]["emulated_time_s"]) if self.rows else 0.0
        if isinstance(report, AsyncRoundReport) and server_round:
            return float(report.emulated_time_s)
        if self.config.mode == "async" or not server_round:
            return previous
        topology = self.strategy.topology
        uavs = {self.strategy.uav_of_node.get(node) for node in report.link_fidelity}
        slowest = max((topology.train_seconds(uav) for uav in uavs if uav is not None),
                      default=0.0)
        return previous + max(topology.round_duration_s, slowest)

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
