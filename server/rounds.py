"""The ServerApp's round loop over Flower's public strategy hooks."""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.exchange import send_and_receive
from strategies.qfl import QFLStrategy


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
    # What a reply that misses the deadline is reported against.
    strategy.round_timeout = timeout
    for server_round in rounds:
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", server_round, rounds[-1])
        replies = send_and_receive(
            grid, strategy.configure_train(server_round, arrays, train_config, grid), timeout
        )
        aggregated, train_metrics = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        if train_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", train_metrics)
        replies = send_and_receive(
            grid, strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout,
        )
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        if evaluate_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", evaluate_metrics)
        end_of_round(server_round, arrays)
    return arrays
