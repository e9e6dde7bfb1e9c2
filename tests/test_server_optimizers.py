"""Server optimizers (run config ``server-optimizer``) and FedProx (``proximal-mu``).

Each optimizer's step equals Reddi et al.'s formulas (as Flower writes them) computed here
by hand; angles step the short way round and stay in their period; the moments survive a
checkpoint and a resumed run equals the uninterrupted one; FedProx's term pulls angles
back the short way and keeps the trained model nearer the global one; bad values stop
the run before training; ``none`` and ``proximal-mu`` = 0 change nothing.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_messages import RUN_ID
from flwr.app import Array, ArrayRecord, Context, RecordDict
from in_process import TINY, CrashingGrid, InProcessGrid, ServerKilled

from server.app import main
from server.checkpoint import load_checkpoint, save_checkpoint
from strategies.qfl import QFLStrategy
from strategies.server_optimizer import ServerOptimizer, ServerOptimizerSettings
from task.config import RunConfigError, parse_run_config
from task.train import ProximalTerm, model_from_config, train_local

TWO_PI = 2 * math.pi
REF = {"w": np.array([0.5, -1.0, 2.0]), "n": np.array([3], dtype=np.int64)}
AGG1 = {"w": np.array([0.7, -1.5, 2.0]), "n": np.array([5], dtype=np.int64)}
AGG2 = {"w": np.array([0.2, -1.2, 2.1]), "n": np.array([6], dtype=np.int64)}


def record(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in values.items()})


def numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in arrays.items()}


def two_steps(settings: ServerOptimizerSettings, periods=None):
    """Step 1 from REF towards AGG1 (round 1), step 2 from its result towards AGG2 (round 2)."""
    optimizer = ServerOptimizer(settings)
    first = numpy(optimizer.step(1, REF, record(AGG1), periods or {}))
    second = numpy(optimizer.step(2, first, record(AGG2), periods or {}))
    return first, second


def by_hand(name: str, eta: float, b1: float, b2: float, tau: float):
    """Reddi et al. 2021 (Algorithm 2), with Flower's FedAdam bias correction and its
    FedAvgM momentum convention, for two rounds."""
    x0 = REF["w"]
    d1 = AGG1["w"] - x0
    if name == "fedavgm":
        u1 = -d1
        x1 = x0 - eta * u1
        u2 = b1 * u1 - (AGG2["w"] - x1)
        return x1, x1 - eta * u2
    b1 = 0.0 if name == "fedadagrad" else b1
    m1 = (1 - b1) * d1
    v1 = {"fedadam": (1 - b2) * d1**2, "fedyogi": 0 - (1 - b2) * d1**2 * np.sign(0 - d1**2),
          "fedadagrad": d1**2}[name]
    eta1 = eta * math.sqrt(1 - b2**2) / (1 - b1**2) if name == "fedadam" else eta
    x1 = x0 + eta1 * m1 / (np.sqrt(v1) + tau)
    d2 = AGG2["w"] - x1
    m2 = b1 * m1 + (1 - b1) * d2
    v2 = {"fedadam": b2 * v1 + (1 - b2) * d2**2,
          "fedyogi": v1 - (1 - b2) * d2**2 * np.sign(v1 - d2**2),
          "fedadagrad": v1 + d2**2}[name]
    eta2 = eta * math.sqrt(1 - b2**3) / (1 - b1**3) if name == "fedadam" else eta
    return x1, x1 + eta2 * m2 / (np.sqrt(v2) + tau)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_one_and_two_steps_equal_the_formulas_by_hand(name):
    settings = ServerOptimizerSettings(name, learning_rate=0.3, momentum=0.8, beta2=0.95,
                                       tau=1e-3)
    first, second = two_steps(settings)
    x1, x2 = by_hand(name, 0.3, 0.8, 0.95, 1e-3)
    np.testing.assert_allclose(first["w"], x1, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(second["w"], x2, rtol=1e-13, atol=1e-15)
    # Integer arrays take the aggregate's value, unstepped.
    assert first["n"].tolist() == [5] and second["n"].tolist() == [6]
    assert first["n"].dtype == np.int64 and first["w"].dtype == np.float64


def test_fedavgm_without_momentum_and_rate_one_takes_the_aggregate():
    first, second = two_steps(ServerOptimizerSettings("fedavgm", 1.0, 0.0))
    np.testing.assert_allclose(first["w"], AGG1["w"], atol=1e-15)
    np.testing.assert_allclose(second["w"], AGG2["w"], atol=1e-15)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
@pytest.mark.parametrize("period", [TWO_PI, 4 * math.pi])
def test_an_angle_crossing_the_boundary_steps_the_short_way_and_stays_in_range(name, period):
    half = period / 2
    ref = {"a": np.array([half - 0.04, -half + 0.04])}
    agg = {"a": np.array([-half + 0.04, half - 0.04])}   # 0.08 further, across the boundary
    optimizer = ServerOptimizer(ServerOptimizerSettings(name))   # the defaults
    new = optimizer.step(1, ref, record(agg), {"a": period})["a"].numpy()
    assert np.all(new > -half) and np.all(new <= half)
    moved = (new - ref["a"] + half) % period - half   # the step, measured on the circle
    assert moved[0] > 0 > moved[1]                      # towards the aggregate, the short way
    assert np.all(np.abs(moved) <= 0.1 + 1e-12)         # (the long way is 2 * half - 0.08)
    # The pseudo-gradient was 0.08, not the long way round.
    assert optimizer.first is not None
    assert np.all(np.abs(optimizer.first["a"]) < 0.081)


def test_state_round_trips_through_a_weights_only_checkpoint_bit_for_bit():
    settings = ServerOptimizerSettings("fedyogi", learning_rate=0.2)
    original = ServerOptimizer(settings)
    x1 = numpy(original.step(1, REF, record(AGG1), {}))
    body = io.BytesIO()
    torch.save(original.state(), body)
    restored = ServerOptimizer(settings)
    restored.load_state(torch.load(io.BytesIO(body.getvalue()), weights_only=True))
    a = original.step(2, x1, record(AGG2), {})["w"].numpy()
    b = restored.step(2, x1, record(AGG2), {})["w"].numpy()
    assert a.tobytes() == b.tobytes() and restored.steps == original.steps == 2
    with pytest.raises(ValueError, match="'fedyogi', this run's 'fedadam'"):
        ServerOptimizer(ServerOptimizerSettings("fedadam")).load_state(original.state())


def test_the_strategy_keeps_the_moments_in_its_state_and_refuses_a_state_without_them():
    strategy = QFLStrategy(server_optimizer=ServerOptimizerSettings("fedadam"))
    strategy.set_round_model(record(REF))
    strategy.server_step(1, record(AGG1))
    state = strategy.state()
    assert set(state) == {"server_optimizer"} and state["server_optimizer"]["steps"] == 1
    again = QFLStrategy(server_optimizer=ServerOptimizerSettings("fedadam"))
    again.load_state(state)
    assert again.optimizer is not None and again.optimizer.steps == 1
    with pytest.raises(ValueError, match="none of its moments"):
        QFLStrategy(server_optimizer=ServerOptimizerSettings("fedadam")).load_state({})
    # Without a server optimizer the strategy keeps no state, and the aggregate is the model.
    plain = QFLStrategy()
    assert plain.state() == {} and plain.server_step(1, record(AGG1)) is not None
    with pytest.raises(ValueError, match="keeps no state"):
        plain.load_state(state)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server-optimizer": "sgd"}, "'server-optimizer' = 'sgd' is not allowed"),
        ({"server-momentum": 1.0}, "'server-momentum' = 1.0 is not allowed; use a number in "
                                   "[0.0, 1.0)"),
        ({"server-beta2": -0.1}, "'server-beta2' = -0.1 is not allowed"),
        ({"server-tau": 0.0}, "'server-tau' = 0.0 is not allowed"),
        ({"server-learning-rate": 0.0}, "'server-learning-rate' = 0.0 is not allowed"),
        ({"proximal-mu": -1.0}, "'proximal-mu' = -1.0 is not allowed"),
        ({"proximal-mu": 1e4}, "'proximal-mu' = 10000.0 is not allowed"),
        ({"server-optimizer": "fedadam", "mode": "async"}, "needs mode 'sync'"),
    ],
)
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(RunConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        parse_run_config({}, overrides)


def test_keys_the_chosen_optimizer_does_not_read_are_named_as_ignored():
    config = parse_run_config({}, {"server-optimizer": "fedavgm", "server-tau": 0.001,
                                   "server-momentum": 0.5})
    assert config.ignored_options() == [
        "run config 'server-tau' = 0.001 is ignored with server-optimizer 'fedavgm'"
    ]
    assert parse_run_config({}, {"server-beta2": 0.9}).ignored_options() == [
        "run config 'server-beta2' = 0.9 is ignored with server-optimizer 'none'"
    ]


# --- FedProx on the UAV -----------------------------------------------------------------
def test_the_proximal_term_pulls_an_angle_back_across_the_boundary_the_short_way():
    model = model_from_config(parse_run_config({}))
    angles = model.quantum.rotation_weights
    with torch.no_grad():
        angles.fill_(-3.1)
    term = ProximalTerm(model, mu=2.0)
    with torch.no_grad():
        angles.fill_(3.1)
    value = term()
    value.backward()
    short = 3.1 - (-3.1) - TWO_PI                      # -0.083: 3.1 is just below -3.1 + 2 pi
    assert angles.grad is not None
    torch.testing.assert_close(angles.grad, torch.full_like(angles, 2.0 * short))
    # Descent raises the angle towards pi and across it, not down through 0 to -3.1.
    assert float(angles.grad.max()) < 0
    torch.testing.assert_close(value, torch.tensor(0.5 * 2.0 * short**2 * angles.numel(),
                                                   dtype=value.dtype))


def _train(mu: float | None):
    model = model_from_config(parse_run_config({"seed": 3}))
    start = {name: value.clone() for name, value in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(64, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    extra = {} if mu is None else {"proximal_mu": mu}
    train_local(model, images, labels, epochs=2, batch_size=16, learning_rate=0.05, seed=5,
                **extra)
    return model.state_dict(), start


def test_with_mu_the_trained_model_stays_nearer_the_global_one_and_mu_zero_changes_nothing():
    today, start = _train(None)
    off, _ = _train(0.0)
    on, _ = _train(5.0)
    assert all(torch.equal(today[name], off[name]) for name in today)
    periods = {"quantum.rotation_weights": TWO_PI, "quantum.crx_weights": 4 * math.pi}

    def distance(state):
        total = 0.0
        for name, value in state.items():
            if not value.is_floating_point():
                continue
            d = (value - start[name]).double()
            if name in periods:
                d = d - periods[name] * torch.round(d / periods[name])
            total += float((d**2).sum())
        return math.sqrt(total)

    assert distance(on) < 0.8 * distance(off)


# --- whole runs through the ServerApp ---------------------------------------------------
ROUNDS = {**TINY, "num-server-rounds": 3}


def _context() -> Context:
    return Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})


def _grid(node_ids, overrides, grid_class=InProcessGrid, **kwargs):
    return grid_class(overrides, {node: {"partition-id": index, "num-partitions": 4}
                                  for index, node in enumerate(node_ids)}, **kwargs)


def _run(out: Path, name: str, node_ids=(1, 2, 3, 4), **settings) -> list[dict]:
    overrides = {**ROUNDS, "output-dir": str(out), "run-name": name, **settings}
    main(_grid(list(node_ids), overrides), _context(), overrides)
    return json.loads((out / name / "metrics.json").read_text())


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final_model.pt")


def _same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[name], b[name]) for name in a)


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("round_seconds", "uav_queries")}
            for row in rows]


@pytest.mark.slow
@pytest.mark.usefixtures("flower_run")
@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_three_round_run_trains_with_each_optimizer(tmp_path, name):
    rows = _run(tmp_path, name, **{"server-optimizer": name, "proximal-mu": 0.01})
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = load_checkpoint(tmp_path / name).strategy_state["server_optimizer"]
    assert state["name"] == name and state["steps"] == 3


@pytest.mark.usefixtures("flower_run")
@pytest.mark.slow  # several seconds: left out of the quick tier
def test_none_is_today_s_behaviour_bit_for_bit(tmp_path):
    rows = _run(tmp_path, "without-keys", **{"num-server-rounds": 2})
    explicit = {"server-optimizer": "none", "proximal-mu": 0.0, "server-learning-rate": 0.1,
                "server-momentum": 0.9, "server-beta2": 0.99, "server-tau": 1e-9}
    rows_with = _run(tmp_path, "with-keys", **{"num-server-rounds": 2, **explicit})
    assert _without_timing(rows) == _without_timing(rows_with)
    assert _same_model(_final(tmp_path / "without-keys"), _final(tmp_path / "with-keys"))
    assert load_checkpoint(tmp_path / "with-keys").strategy_state == {}


@pytest.mark.usefixtures("flower_run")
@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    settings = {"server-optimizer": "fedadam", "proximal-mu": 0.01, "fraction-train": 0.75,
                "relay": "teleport"}
    full = _run(tmp_path, "full", **settings)
    crashed = {**ROUNDS, "output-dir": str(tmp_path), "run-name": "crashed", **settings}
    with pytest.raises(ServerKilled):
        main(_grid([21, 22, 23, 24], crashed, CrashingGrid, crash_round=3), _context(),
             crashed)
    assert load_checkpoint(tmp_path / "crashed").strategy_state["server_optimizer"]["steps"] == 2
    resumed = {**ROUNDS, "output-dir": str(tmp_path), "resume": "crashed", **settings}
    main(_grid([94, 93, 92, 91], resumed), _context(), resumed)
    rows = json.loads((tmp_path / "crashed" / "metrics.json").read_text())
    assert _without_timing(rows) == _without_timing(full)
    assert _same_model(_final(tmp_path / "crashed"), _final(tmp_path / "full"))


@pytest.mark.usefixtures("flower_run")
@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_checkpoint_from_before_the_keys_resumes_as_a_run_without_them(tmp_path):
    _run(tmp_path, "old", **{"num-server-rounds": 1})
    checkpoint = load_checkpoint(tmp_path / "old")
    new_keys = ("proximal-mu", "server-")
    older = {k: v for k, v in checkpoint.run_config.items() if not k.startswith(new_keys)}
    save_checkpoint(tmp_path / "old", dataclasses.replace(checkpoint, run_config=older))
    resumed = {**ROUNDS, "output-dir": str(tmp_path), "resume": "old", "num-server-rounds": 2}
    main(_grid([5, 6, 7, 8], resumed), _context(), resumed)
    rows = json.loads((tmp_path / "old" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    # Turning an optimizer on for the rest of a run is another computation: refused.
    again = {**resumed, "num-server-rounds": 3, "server-optimizer": "fedadam"}
    with pytest.raises(SystemExit, match="'server-optimizer' = 'fedadam' \\(the checkpoint "
                                         "has 'none'\\)"):
        main(_grid([9, 10, 11, 12], again), _context(), again)


@pytest.mark.usefixtures("flower_run")
def test_a_bad_value_stops_the_run_before_training(tmp_path):
    overrides = {**ROUNDS, "output-dir": str(tmp_path / "outputs"), "mode": "async",
                 "server-optimizer": "fedyogi"}
    with pytest.raises(SystemExit, match="Run stopped before training: run config "
                                         "'server-optimizer' = 'fedyogi' needs mode 'sync'"):
        main(None, _context(), overrides)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.usefixtures("flower_run")
def test_the_relays_hierarchy_takes_the_server_step_too(tmp_path):
    rows = _run(tmp_path, "relays", **{"server-optimizer": "fedavgm", "hierarchy": "relays",
                                       "num-server-rounds": 2})
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = load_checkpoint(tmp_path / "relays").strategy_state["server_optimizer"]
    assert state["steps"] == 2
