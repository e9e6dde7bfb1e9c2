"""Differential privacy (run config ``dp``): the accountant against published values and
closed forms, clipping on the circle, the noise's size and secrecy, the UAV-side mods,
hostile UAVs, the ledger across a resume, and the combinations refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from flwr.app import ConfigRecord
from in_process import TINY, global_arrays, make_grid, make_strategy

from relay.flower import ARRAYS_KEY
from strategies.privacy import (
    PrivacyLedger,
    PrivacySettings,
    clip_step,
    nearest_angles,
    noisy_mean,
)
from task.config import RunConfigError, parse_run_config

pytestmark = pytest.mark.usefixtures("flower_run")

TWO_PI = 2 * math.pi


def settings(mode="central", z=1.0, clip=1.0, delta=1e-5) -> PrivacySettings:
    return PrivacySettings(mode, z, clip, delta)


# --- the accountant -------------------------------------------------------------------
# TensorFlow Privacy's MNIST DP-SGD tutorial (tutorials/README.md, "Select Parameters"):
# 60,000 examples, Poisson-sampled batches of 256, delta 1e-5, RDP accountant with the
# 2018 orders and the classic RDP-to-DP conversion eps = min_a rdp(a) + ln(1/delta)/(a-1).
TF_PRIVACY_TABLE = [(1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20)]
TF_PRIVACY_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@pytest.mark.parametrize(("noise", "epochs", "published"), TF_PRIVACY_TABLE)
def test_the_rdp_accountant_reproduces_tensorflow_privacy_s_published_epsilons(
    noise, epochs, published
):
    accountant = RdpAccountant(orders=TF_PRIVACY_ORDERS)
    steps = math.ceil(epochs * 60_000 / 256)
    event = dp_event.PoissonSampledDpEvent(256 / 60_000, dp_event.GaussianDpEvent(noise))
    accountant.compose(event, steps)
    # The accountant's own curve (private attribute: the library has no public getter).
    rdp, orders = np.asarray(accountant._rdp), np.asarray(accountant._orders)
    classic = float(np.min(rdp + math.log(1 / 1e-5) / (orders - 1)))
    assert classic == pytest.approx(published, abs=0.025)
    # What the project reports: the same curve, the tighter conversion; never above.
    assert accountant.get_epsilon(1e-5) <= classic


def _closed_form_epsilon(rdp_per_order, delta: float) -> float:
    """The conversion dp-accounting uses (Canonne, Kamath, Steinke 2020, Prop. 12) on
    a fine grid of orders: eps = min_a rdp(a) + ln((a-1)/a) - (ln delta + ln a)/(a-1)."""
    orders = np.concatenate([np.linspace(1.01, 20, 4000), np.linspace(20, 512, 4000)])
    rdp = rdp_per_order(orders)
    eps = rdp + np.log1p(-1 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    return float(max(eps.min(), 0.0))


@pytest.mark.parametrize("z", [0.7, 1.0, 2.5])
def test_a_round_that_trains_every_uav_costs_a_gaussian_of_sensitivity_two_c(z):
    # Replace-one, all UAVs sampled: one Gaussian mechanism whose noise is z C on a sum
    # that moves by 2 C, so RDP(a) = a / (2 (z/2)^2) per round (Mironov 2017, Prop. 7).
    ledger = PrivacyLedger(settings(z=z))
    for _ in range(5):
        ledger.release(population=10, sampled=10)
    expected = _closed_form_epsilon(lambda a: 5 * a / (2 * (z / 2) ** 2), 1e-5)
    assert ledger.epsilon() == pytest.approx(expected, rel=2e-3)


def test_epsilon_rises_with_rounds_and_sampling_fewer_uavs_costs_less():
    full, tenth = PrivacyLedger(settings()), PrivacyLedger(settings())
    eps_full, eps_tenth = [], []
    for _ in range(4):
        full.release(100, 100)
        tenth.release(100, 10)
        eps_full.append(full.epsilon())
        eps_tenth.append(tenth.epsilon())
    assert eps_full == sorted(eps_full) and len(set(eps_full)) == 4
    assert eps_tenth == sorted(eps_tenth) and len(set(eps_tenth)) == 4
    assert all(t < f for t, f in zip(eps_tenth, eps_full, strict=True))
    # The same events through dp-accounting directly: sampled without replacement.
    direct = RdpAccountant(
        neighboring_relation=__import__(
            "dp_accounting.privacy_accountant", fromlist=["NeighboringRelation"]
        ).NeighboringRelation.REPLACE_ONE
    )
    event = dp_event.SampledWithoutReplacementDpEvent(100, 10, dp_event.GaussianDpEvent(0.5))
    direct.compose(event, 4)
    assert eps_tenth[-1] == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_local_mode_charges_the_uav_that_sent_the_most():
    ledger = PrivacyLedger(settings("local", z=2.0))
    assert ledger.epsilon() == 0.0
    ledger.participate(["uav-1", "uav-2", "uav-3"])
    ledger.participate(["uav-1"])
    ledger.participate(["uav-1", "uav-2"])
    expected = _closed_form_epsilon(lambda a: 3 * a / (2 * (2.0 / 2) ** 2), 1e-5)
    assert ledger.epsilon() == pytest.approx(expected, rel=2e-3)


def test_the_ledger_survives_a_resume_and_refuses_a_damaged_one():
    ledger = PrivacyLedger(settings())
    ledger.release(10, 4)
    ledger.release(10, 4)
    restored = PrivacyLedger(settings())
    restored.load_state(ledger.state())
    assert restored.epsilon() == ledger.epsilon() > 0
    for bad in ({}, {"releases": [[3, 4]], "participation": {}},
                {"releases": "x", "participation": {}},
                {"releases": [], "participation": {"uav-5": 0}}):
        with pytest.raises(ValueError, match="privacy ledger"):
            PrivacyLedger(settings()).load_state(bad)
    with pytest.raises(ValueError, match="cannot be accounted"):
        ledger.release(3, 4)


# --- clipping and noise ---------------------------------------------------------------
def test_clipping_measures_an_angle_s_step_on_the_circle():
    reference = {"quantum.rotation_weights": np.array([3.1], dtype=np.float32),
                 "fc.weight": np.array([0.0, 0.0], dtype=np.float32)}
    update = {"quantum.rotation_weights": np.array([-3.1], dtype=np.float32),
              "fc.weight": np.array([0.3, 0.4], dtype=np.float32)}
    periods = {"quantum.rotation_weights": TWO_PI}
    moved = nearest_angles(update, reference, periods)
    assert moved["quantum.rotation_weights"][0] == pytest.approx(-3.1 + TWO_PI, abs=1e-6)
    clipped, norm = clip_step(update, reference, periods, clip_norm=10.0)
    step = 2 * math.pi - 6.2
    assert norm == pytest.approx(math.hypot(step, 0.5), abs=1e-6)  # not 6.2
    clipped, norm = clip_step(update, reference, periods, clip_norm=0.25)
    deltas = [clipped[n] - reference[n].astype(np.float64) for n in reference]
    assert math.sqrt(sum(float((d**2).sum()) for d in deltas)) == pytest.approx(0.25)


def test_the_noised_mean_divides_by_the_uavs_sampled_and_has_the_calibrated_spread():
    reference = {"w": np.zeros(40_000, dtype=np.float32), "count": np.array([7])}
    step = {"w": np.full(40_000, 0.001, dtype=np.float32), "count": np.array([9])}
    rng = np.random.default_rng(0)
    s = settings(z=1.5, clip=2.0)
    mean = noisy_mean([step, step], reference, {}, s, sampled=4, rng=rng)
    # Two of four sampled UAVs arrived: the step is halved, not averaged over two.
    assert float(mean["w"].mean()) == pytest.approx(0.0005, abs=3e-3)
    assert float(mean["w"].std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.02)
    assert mean["w"].dtype == np.float32 and mean["count"].tolist() == [7]


def test_noised_angles_stay_in_their_period():
    reference = {"a": np.array([3.0] * 1000, dtype=np.float32)}
    mean = noisy_mean([reference], reference, {"a": TWO_PI}, settings(z=5.0, clip=1.0), 1,
                      np.random.default_rng(1))
    assert (np.abs(mean["a"]) <= math.pi + 1e-6).all()


# --- a federation of real ClientApps in this process ---------------------------------
def _round(mode: str, extra=None, z=1.0, clip=1.0, **strategy_kwargs):
    # The strategy's settings may use a z below the run config's range, so that the
    # server's noise is negligible and a bound can be checked; the UAVs' z is used by
    # dp='local' only.
    overrides = {**TINY, "relay": "ideal", "dp": mode, "dp-noise-multiplier": max(z, 0.01),
                 "dp-clip-norm": clip, **(extra or {})}
    strategy = make_strategy(overrides, privacy=settings(mode, z, clip), **strategy_kwargs)
    grid = make_grid(overrides)
    arrays = global_arrays(overrides)
    messages = strategy.configure_train(1, arrays, ConfigRecord({"learning-rate": 0.01}), grid)
    replies = grid.send_and_receive(messages)
    plain = [strategy.decode_uplink(reply, 1) for reply in replies]
    aggregated, _metrics = strategy.aggregate_train(1, replies)
    return strategy, arrays, plain, aggregated


def _step_norm(arrays, reference) -> float:
    total = 0.0
    for name, array in arrays.items():
        ref = reference[name].numpy()
        if ref.dtype.kind == "f":
            total += float(((array.numpy().astype(np.float64) - ref) ** 2).sum())
    return math.sqrt(total)


def test_client_mode_uavs_clip_their_own_step_and_the_base_station_adds_the_noise():
    strategy, arrays, replies, aggregated = _round("client", clip=0.05, z=1e-9)
    for reply in replies:
        assert _step_norm(reply[ARRAYS_KEY], arrays) <= 0.05 * (1 + 1e-5)
    report = strategy.reports[-1]
    assert report.dp_sampled == 3 and report.clients_used == 3 and report.dp_clipped == 0
    assert _step_norm(aggregated, arrays) <= 0.05 * (1 + 1e-4)
    assert strategy.ledger.epsilon() > 0


def test_a_hostile_uav_that_skips_the_clip_moves_the_model_no_more_than_an_honest_one():
    extra = {"attack": "scale", "attack-fraction": 1.0, "attack-scale": 1000.0}
    strategy, arrays, replies, aggregated = _round("client", extra, clip=0.05, z=1e-9)
    assert all(_step_norm(r[ARRAYS_KEY], arrays) > 1.0 for r in replies)
    report = strategy.reports[-1]
    assert report.dp_clipped == 3 and report.clients_used == 3
    assert _step_norm(aggregated, arrays) <= 0.05 * (1 + 1e-4)


def test_a_uav_claiming_a_huge_sample_count_buys_no_weight_under_dp():
    extra = {"attack": "inflate-examples", "attack-fraction": 0.34, "attack-scale": 1e6}
    strategy, arrays, replies, aggregated = _round("central", extra, clip=10.0, z=1e-9)
    honest = _round("central", clip=10.0, z=1e-9)[3]
    # The claim is accepted as a number but every update weighs the same: the model is
    # the one the honest claims give (up to the 1e-9 x C noise).
    assert strategy.reports[-1].clients_used == 3
    for name in arrays:
        np.testing.assert_allclose(aggregated[name].numpy(), honest[name].numpy(), atol=1e-6)


@pytest.mark.parametrize(("z", "delta"), [(1000.0, 0.1), (0.01, 1e-300)])
def test_epsilon_stays_a_finite_number_at_the_edges_of_the_ranges(z, delta):
    for mode in ("central", "local"):
        ledger = PrivacyLedger(settings(mode, z=z, delta=delta))
        for _ in range(100):
            ledger.release(10, 3)
            ledger.release(10, 10)
            ledger.participate(["uav-1", "uav-2"])
        epsilon = ledger.epsilon()
        assert math.isfinite(epsilon) and epsilon >= 0
        assert (epsilon < 1e-1) if z == 1000.0 else (epsilon > 1e3)


def test_sampling_never_costs_more_than_training_every_uav():
    # At small z the bound for sampling without replacement alone exceeds the plain one.
    for z in (0.1, 0.3, 1.0, 3.0):
        sampled, everyone = PrivacyLedger(settings(z=z)), PrivacyLedger(settings(z=z))
        for _ in range(20):
            sampled.release(10, 3)
            everyone.release(10, 10)
        assert sampled.epsilon() <= everyone.epsilon()


def test_local_mode_noises_each_update_on_the_uav_with_z_times_c():
    _strategy, arrays, replies, _aggregated = _round("local", z=0.5, clip=0.05)
    size = sum(a.numpy().size for a in arrays.values() if a.numpy().dtype.kind == "f")
    for reply in replies:
        # Clipped to 0.05, then N(0, 0.025^2) on every coordinate: the noise dominates.
        norm = _step_norm(reply[ARRAYS_KEY], arrays)
        assert norm == pytest.approx(0.025 * math.sqrt(size), rel=0.15)


def test_the_noise_does_not_come_from_the_run_seed():
    first = _round("central")[3]
    second = _round("central")[3]
    name = next(iter(first))
    assert not np.array_equal(first[name].numpy(), second[name].numpy())
    third = _round("local")[2][0][ARRAYS_KEY]
    fourth = _round("local")[2][0][ARRAYS_KEY]
    assert not np.array_equal(third[name].numpy(), fourth[name].numpy())


def test_with_dp_the_draw_of_uavs_is_secret_and_without_it_follows_the_seed():
    overrides = {**TINY, "relay": "ideal"}
    nodes = list(range(1, 41))
    orders = [make_strategy(overrides, **extra).directory.order(nodes, 1, "training")
              for extra in ({}, {}, {"privacy": settings()}, {"privacy": settings()})]
    assert orders[0] == orders[1]
    assert orders[2] != orders[3] and orders[2] != orders[0]


def test_central_mode_replaces_the_screening_by_the_clip():
    # A scaled update the norm rule would reject is clipped and used instead.
    extra = {"attack": "scale", "attack-fraction": 0.34, "attack-scale": 1000.0}
    strategy, _arrays, _replies, _aggregated = _round("central", extra, clip=0.05,
                                                       max_norm_ratio=5.0)
    report = strategy.reports[-1]
    assert report.rejected == {} and report.clients_used == 3 and report.dp_clipped >= 1


# --- what the run config refuses ------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dp": "local", "aggregation": "median"}, "swamps the spread a median"),
        ({"dp": "central", "aggregation": "trimmed-mean"}, "mean's sensitivity"),
        ({"dp": "client", "aggregation": "median"}, "mean's sensitivity"),
        ({"dp": "central", "mode": "async"}, "needs mode 'sync'"),
        ({"dp": "local", "hierarchy": "relays"}, "needs hierarchy 'none'"),
        ({"dp": "central", "dp-noise-multiplier": 0.0}, "'dp-noise-multiplier' = 0.0"),
        ({"dp": "local", "dp-noise-multiplier": 0.009}, "use a number in \\[0.01, 1000.0\\]"),
        ({"dp": "central", "dp-clip-norm": -1.0}, "'dp-clip-norm' = -1.0"),
        ({"dp": "central", "dp-delta": 0.5}, "'dp-delta' = 0.5"),
        ({"dp": "gaussian"}, "'dp' = 'gaussian' is not allowed"),
    ],
)
def test_combinations_that_break_the_guarantee_are_refused(overrides, message):
    with pytest.raises(RunConfigError, match=message):
        parse_run_config({}, overrides)


# --- a whole run through the ServerApp, and its resume ---------------------------------
def _context():
    from flower_messages import RUN_ID
    from flwr.app import Context, RecordDict

    return Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})


def _grid(node_ids, overrides):
    from in_process import InProcessGrid

    return InProcessGrid(overrides, {node: {"partition-id": index, "num-partitions": 4}
                                     for index, node in enumerate(node_ids)})


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_run_records_a_rising_epsilon_and_a_resume_goes_on_spending(tmp_path):
    import json

    from server.app import main

    base = {**TINY, "output-dir": str(tmp_path), "dp": "central", "fraction-train": 0.5,
            "min-train-nodes": 2}
    two = {**base, "run-name": "dp", "num-server-rounds": 2}
    main(_grid([1, 2, 3, 4], two), _context(), two)
    rows = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    assert [row["epsilon"] for row in rows][0] == 0.0
    assert rows[1]["epsilon"] < rows[2]["epsilon"]
    # Two of four UAVs drawn without replacement per round, z = 1 (sensitivity 2 C).
    direct = PrivacyLedger(settings())
    direct.release(4, 2)
    direct.release(4, 2)
    assert rows[2]["epsilon"] == pytest.approx(direct.epsilon(), rel=1e-12)
    assert all(row["clients_rejected"] == 0 and "dp_clipped" in row for row in rows)
    resumed = {**base, "resume": "dp", "num-server-rounds": 3}
    main(_grid([5, 6, 7, 8], resumed), _context(), resumed)
    rows = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    direct.release(4, 2)
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert rows[3]["epsilon"] == pytest.approx(direct.epsilon(), rel=1e-12)


def test_dp_without_the_accountant_installed_stops_before_training(tmp_path, monkeypatch):
    import importlib.util

    from server.app import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dp_accounting" else real(name, *a))
    overrides = {**TINY, "output-dir": str(tmp_path), "dp": "local"}
    with pytest.raises(SystemExit, match="pip install dp-accounting"):
        main(_grid([1, 2, 3], overrides), _context(), overrides)
    assert list(tmp_path.iterdir()) == []


# --- the study's report -----------------------------------------------------------------
def test_the_privacy_report_pairs_the_models_and_plots_accuracy_against_epsilon(tmp_path):
    from experiments import privacy
    from experiments.grid import Cell, CellResult

    results = []
    for model, offset in (("hybrid", 0.0), ("classical", 0.02)):
        for noise in (0.0, *privacy.NOISE_MULTIPLIERS):
            for seed in (1, 2, 3):
                final = 0.8 - 0.1 * noise + offset + 0.001 * seed
                rows = [{"round": 0, "accuracy": 0.1, "loss": 2.3, "clients_used": 0,
                         **({"epsilon": 0.0, "dp_clipped": 0} if noise else {})}]
                for r in (1, 2):
                    row = {"round": r, "accuracy": 0.5 if r == 1 else final, "loss": 1.0,
                           "clients_used": 50}
                    if noise:
                        row |= {"epsilon": r * 4.0 / noise, "dp_clipped": 25}
                    rows.append(row)
                labels = {"model": model, "noise": noise, "seed": seed,
                          "setting": privacy.setting_label(noise)}
                results.append(CellResult(Cell(f"{model}-{noise}-{seed}", {}, labels, 500),
                                          rows, 60.0, 2**30, {}))
    privacy.write_privacy_report(tmp_path, results, rounds=2)
    report = (tmp_path / "report.md").read_text()
    assert "| hybrid | dp central, z = 2 | 0.602 ± 0.001 |" in report
    assert "| classical | no dp | 0.822 ± 0.001 | 1.000 ± 0.000 | ∞ (no dp) | - |" in report
    assert "| hybrid | dp central, z = 4 | 0.402 ± 0.001 | 1.000 ± 0.000 | 2.00 | 50% |" \
        in report
    # The same -0.02 every seed: the paired difference has no spread.
    assert "| no dp | -0.020 [-0.020, -0.020] | nan | nan |" in report
    assert "**hybrid** ends at 0.802 without dp; with dp z = 1 (epsilon 8.0): 0.702 (-0.100)" \
        in report
    assert (tmp_path / "privacy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_checkpoint_from_before_the_dp_keys_resumes_as_a_run_without_dp(tmp_path):
    import dataclasses
    import json

    from server.app import main
    from server.checkpoint import load_checkpoint, save_checkpoint

    one = {**TINY, "output-dir": str(tmp_path), "run-name": "old", "num-server-rounds": 1}
    main(_grid([1, 2, 3], one), _context(), one)
    run_dir = tmp_path / "old"
    checkpoint = load_checkpoint(run_dir)
    older = {k: v for k, v in checkpoint.run_config.items() if not k.startswith("dp")}
    save_checkpoint(run_dir, dataclasses.replace(checkpoint, run_config=older))
    resumed = {**TINY, "output-dir": str(tmp_path), "resume": "old", "num-server-rounds": 2}
    main(_grid([4, 5, 6], resumed), _context(), resumed)
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2] and "epsilon" not in rows[-1]
    # Asking for dp on a run that had none is a different computation: refused.
    with pytest.raises(SystemExit, match="'dp' = 'central' \\(the checkpoint has 'none'\\)"):
        again = {**resumed, "num-server-rounds": 3, "dp": "central"}
        main(_grid([7, 8, 9], again), _context(), again)


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_local_mode_counts_a_uav_s_updates_across_a_resume_with_new_node_ids(tmp_path):
    import json

    from server.app import main

    base = {**TINY, "output-dir": str(tmp_path), "dp": "local", "dp-noise-multiplier": 2.0,
            "min-train-nodes": 3}
    two = {**base, "run-name": "local", "num-server-rounds": 2}
    main(_grid([1, 2, 3], two), _context(), two)
    resumed = {**base, "resume": "local", "num-server-rounds": 3}
    main(_grid([7, 8, 9], resumed), _context(), resumed)
    rows = json.loads((tmp_path / "local" / "metrics.json").read_text())
    # Every UAV sent 3 updates, under two sets of node ids: epsilon is 3 rounds' worth.
    three = PrivacyLedger(settings("local", z=2.0))
    three.participate(["uav-0"])
    three.participate(["uav-0"])
    assert rows[2]["epsilon"] == pytest.approx(three.epsilon(), rel=1e-12)
    three.participate(["uav-0"])
    assert rows[3]["epsilon"] == pytest.approx(three.epsilon(), rel=1e-12)
