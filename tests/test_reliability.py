"""Whole runs with failing, late and hostile clients: the run finishes, metrics.json says why.

The Ray runs use Flower's ``run_simulation`` on tiny settings (5 clients of 300 samples,
the small CNN, 3 rounds); the deadline run uses the real ServerApp ``main`` and ClientApp
in this process, with a grid that honours the round's deadline, since a simulated
straggler would hold one of the machine's two Ray workers for the whole deadline.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
import torch
from flower_messages import assign_message_id, over_the_wire, task_identity
from flwr.app import Context, Message, RecordDict
from flwr.simulation import run_simulation

from client.app import build_client_app
from client.faults import fails_in_round, hostile_partitions
from server.app import build_server_app, main

NUM_CLIENTS = 5
SMALL = {
    "num-server-rounds": 3,
    "max-samples-per-client": 300,
    "test-samples": 1000,
    "model": "cnn",
    "learning-rate": 0.01,
    "min-train-nodes": 3,
    "seed": 42,
    # The coordinate-wise rules assume honest updates that agree; on non-IID partitions
    # the median also slows honest learning, which is not what these tests measure.
    "partitioning": "iid",
}
ROBUST_MARGIN = 0.15
"""How far below the clean run's final accuracy a robust run under attack may end."""


def simulate(tmp_path, name: str, **overrides) -> list[dict]:
    """Run the app in Ray simulation and return the rows of its metrics.json."""
    config = {**SMALL, **overrides, "output-dir": str(tmp_path), "run-name": name}
    run_simulation(
        server_app=build_server_app(config),
        client_app=build_client_app(config),
        num_supernodes=NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    run_dir = tmp_path / name
    assert (run_dir / "final_model.pt").exists()  # the run finished
    return json.loads((run_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------------------
# Dropouts: failing clients and rounds below the minimum
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_failing_clients_are_recorded_and_a_round_below_the_minimum_is_skipped(tmp_path):
    rate = 0.4
    rows = simulate(tmp_path, "failures", **{"failure-rate": rate})
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    expected_failures = [
        sum(fails_in_round(42, r, p, rate) for p in range(NUM_CLIENTS)) for r in (1, 2, 3)
    ]
    assert expected_failures == [1, 3, 0]  # seed 42: round 2 keeps only 2 of the 3 needed
    for row, failures in zip(rows[1:], expected_failures, strict=True):
        assert row["clients_failed"] == failures
        assert all("injected failure" in reason for reason in row["failed_reasons"].values())
        if NUM_CLIENTS - failures < SMALL["min-train-nodes"]:
            assert row["clients_used"] == 0
            assert row["skipped"] == "2 update(s) accepted, 3 needed (min-train-nodes)"
        else:
            assert row["clients_used"] == NUM_CLIENTS - failures and row["skipped"] is None
    # The skipped round left the global model as it was.
    assert rows[2]["accuracy"] == rows[1]["accuracy"] and rows[2]["loss"] == rows[1]["loss"]
    assert rows[3]["loss"] < rows[0]["loss"]


class DeadlineGrid:
    """A Grid whose nodes are ClientApps on threads of this process.

    Like Flower's grids, ``send_and_receive`` returns the replies that arrived before
    ``timeout``; a late reply is never returned.
    """

    def __init__(self, overrides, num_nodes: int) -> None:
        self.client_app = build_client_app(overrides)
        self.contexts = {
            1000 + index: Context(
                run_id=7, node_id=1000 + index, state=RecordDict(), run_config={},
                node_config={"partition-id": index, "num-partitions": num_nodes},
            )
            for index in range(num_nodes)
        }
        self.pool = ThreadPoolExecutor(max_workers=num_nodes * 2)
        self.lock = threading.Lock()

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def _deliver(self, message: Message) -> Message:
        received = over_the_wire(message)
        reply = self.client_app(received, self.contexts[message.metadata.dst_node_id])
        return over_the_wire(reply)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        futures = []
        for message in messages:
            futures.append(self.pool.submit(self._deliver, assign_message_id(message)))
        done, _late = wait(futures, timeout=timeout)
        return [future.result() for future in futures if future in done]


@pytest.mark.slow
def test_a_node_that_misses_the_round_deadline_is_recorded_and_the_round_goes_on(tmp_path):
    # Seed 43 at failure-rate 0.3: partition 2 of 3 straggles in round 1, nobody in round 2.
    overrides = {
        **SMALL, "seed": 43, "num-server-rounds": 2, "max-samples-per-client": 60,
        "test-samples": 200, "min-train-nodes": 2, "failure-rate": 0.3,
        "failure-mode": "timeout", "round-timeout": 15.0, "output-dir": str(tmp_path),
        "run-name": "deadline",
    }
    assert [[p for p in range(3) if fails_in_round(43, r, p, 0.3)] for r in (1, 2)] == [[2], []]
    grid = DeadlineGrid(overrides, num_nodes=3)
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with task_identity(7):  # messages need a run and task identity outside a SuperLink
        main(grid, context, overrides)
    grid.pool.shutdown(wait=False, cancel_futures=True)
    rows = json.loads((tmp_path / "deadline" / "metrics.json").read_text())
    assert rows[1]["failed_reasons"] == {"1002": "no reply before the round deadline (15 s)"}
    assert (rows[1]["clients_used"], rows[1]["skipped"]) == (2, None)
    assert (rows[2]["clients_used"], rows[2]["clients_failed"]) == (3, 0)
    assert (tmp_path / "deadline" / "final_model.pt").exists()


# --------------------------------------------------------------------------------------
# Hostile clients: fedavg collapses, the robust options hold
# --------------------------------------------------------------------------------------

ONE_HOSTILE = {"attack-fraction": 0.2, "attack-scale": 10.0}


@pytest.fixture(scope="module")
def clean_accuracy(tmp_path_factory) -> float:
    rows = simulate(tmp_path_factory.mktemp("clean"), "clean")
    assert all(row["clients_rejected"] == 0 for row in rows)  # no honest update refused
    return rows[-1]["accuracy"]


def test_one_of_five_partitions_is_hostile():
    assert len(hostile_partitions(42, NUM_CLIENTS, ONE_HOSTILE["attack-fraction"])) == 1


@pytest.mark.slow
def test_sign_flipping_client_wrecks_plain_fedavg(tmp_path, clean_accuracy):
    rows = simulate(tmp_path, "fedavg", attack="sign-flip", **ONE_HOSTILE,
                    **{"max-norm-ratio": 0.0})
    assert all(row["clients_rejected"] == 0 for row in rows)  # nothing stopped it
    assert rows[-1]["accuracy"] < 0.3 and clean_accuracy > 0.7


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attack", "aggregation"),
    [("sign-flip", "median"), ("sign-flip", "trimmed-mean"), ("random", "median")],
)
def test_robust_aggregation_holds_against_a_hostile_client(
    tmp_path, clean_accuracy, attack, aggregation
):
    rows = simulate(tmp_path, aggregation, attack=attack, aggregation=aggregation,
                    **ONE_HOSTILE, **{"max-norm-ratio": 0.0})
    assert rows[-1]["accuracy"] > clean_accuracy - ROBUST_MARGIN


@pytest.mark.slow
def test_norm_rule_rejects_a_scaling_client_and_fedavg_holds(tmp_path, clean_accuracy):
    rows = simulate(tmp_path, "norm-rule", attack="scale", **ONE_HOSTILE)  # default ratio 5
    for row in rows[1:]:
        assert row["clients_rejected"] == 1 and row["clients_used"] == NUM_CLIENTS - 1
        (reason,) = row["rejected_reasons"].values()
        assert reason.startswith("update norm") and "the limit is 5 x" in reason
    assert rows[-1]["accuracy"] > clean_accuracy - ROBUST_MARGIN
    state = torch.load(tmp_path / "norm-rule" / "final_model.pt")
    assert all(torch.isfinite(tensor).all() for tensor in state.values())
