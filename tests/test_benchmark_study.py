"""The fair-baseline benchmark (experiments/benchmark.py) and the grid's parallel runs."""

import csv
import json
import math
import threading
import time

import numpy as np
import pytest
from scipy import stats

from experiments import benchmark, benchmark_report, grid, report
from experiments.grid import Cell, CellError, CellResult, run_grid
from task.config import parse_run_config
from task.devices import device_plan


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -------------------------------------------------------------------------------- the grid
def test_the_grid_covers_every_model_dataset_family_device_and_weighting(tmp_path):
    device_map = benchmark.write_device_map(tmp_path / "device-map.toml")
    cells = benchmark.cells(device_map=device_map)
    names = [cell.name for cell in cells]
    assert len(names) == len(set(names))
    per_seed = (len(benchmark.DATASETS) * (len(benchmark.FAMILIES) * len(benchmark.MODELS)
                                          + len(benchmark.DEVICES))
                + len(benchmark.WEIGHTINGS))
    assert len(cells) == 5 * per_seed == 155
    models = [c for c in cells if c.labels["set"] == "models"]
    assert {(c.labels["dataset"], c.labels["family"], c.labels["model"], c.labels["seed"])
            for c in models} == {
        (d, f, m, s) for d in benchmark.DATASETS for f in benchmark.FAMILIES
        for m in benchmark.MODELS for s in benchmark.SEEDS}
    # Seed by seed: an interrupted benchmark has whole seeds done.
    assert [c.labels["seed"] for c in cells] == sorted(c.labels["seed"] for c in cells)
    # Every cell's run config is valid: nothing would stop before training.
    for cell in cells:
        config = parse_run_config({}, cell.overrides)
        assert config.seed == cell.labels["seed"]
    # The pairs differ only in what is compared.
    by_name = {c.name: c.overrides for c in cells}
    hybrid, classical = (by_name[f"mnist-skew-{m}-seed3"] for m in ("hybrid", "classical"))
    assert {k for k in hybrid.keys() | classical.keys()
            if hybrid.get(k) != classical.get(k)} == {"model"}
    flat = by_name["fashion-mnist-small-hybrid-no-entangler-seed2"]
    assert flat["entangler"] == "none" and flat["max-samples-per-client"] == 100
    device = by_name["mnist-standard-hybrid-fake_lima-seed1"]
    assert device["device"] == "fake_lima"
    assert device["num-server-rounds"] == benchmark.DEVICE_ROUNDS


def test_the_mixed_federations_device_map_puts_half_the_uavs_on_the_device(tmp_path):
    path = benchmark.write_device_map(tmp_path / "map.toml")
    config = parse_run_config({}, {"device-map": path, "weighting": "calibration"})
    plan = device_plan(config, [f"uav-{i}" for i in range(10)])
    on_device = sorted(uav for uav, entry in plan.items() if entry.device)
    assert on_device == list(benchmark.MIXED_UAVS)
    assert all(plan[uav].device == benchmark.MIXED_DEVICE for uav in on_device)
    # Writing it again leaves the file as it is (its path is in the cells' settings).
    before = (tmp_path / "map.toml").stat().st_mtime_ns
    benchmark.write_device_map(tmp_path / "map.toml")
    assert (tmp_path / "map.toml").stat().st_mtime_ns == before


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "2"], "at least 3"),
    (["--rounds", "5", "--device-rounds", "6"], "at most --rounds"),
    (["--jobs", "0"], "not an integer >= 1"),
    (["--report-only"], "no finished runs"),
])
def test_bad_options_stop_with_the_reason(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--results-dir", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- statistics
def test_holm_adjusts_step_down_and_keeps_order():
    adjusted = report.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert report.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert report.holm([]) == []


def test_paired_statistics_match_scipy_and_the_closed_forms():
    diffs = [0.01, 0.02, 0.03, 0.04, 0.05]
    c = benchmark.Comparison("models", "?", "standard", "mnist", "a", "b", diffs, 0.8, 0.77)
    c.p = report.t_test_p(diffs)
    assert c.p == pytest.approx(stats.ttest_rel(np.array(diffs) + 1, np.ones(5)).pvalue)
    sd = np.std(diffs, ddof=1)
    assert c.effect_size == pytest.approx(0.03 / sd)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert c.interval == pytest.approx((0.03 - half, 0.03 + half))
    # Identical differences: no spread, and p says so.
    assert report.t_test_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(report.t_test_p([0.02, 0.02]))
    assert math.isnan(report.t_test_p([0.1]))


@pytest.mark.parametrize("diffs, p_holm, verdict", [
    ([0.05, 0.06, 0.04, 0.05, 0.055], 0.001, "helps"),
    ([-0.05, -0.06, -0.04, -0.05, -0.055], 0.001, "hurts"),
    # Significant but below MIN_EFFECT: floating-point scale, not called.
    ([0.004, 0.005, 0.004, 0.005, 0.0045], 1e-6, "no difference"),
    # Large but not significant after correction.
    ([0.2, -0.1, 0.15, 0.0, 0.1], 0.4, "no difference"),
    ([0.05, 0.06, 0.04, 0.05, 0.055], math.nan, "no difference"),
])
def test_a_verdict_needs_both_significance_and_size(diffs, p_holm, verdict):
    c = benchmark.Comparison("models", "?", "r", "mnist", "a", "b", diffs, 0.0, 0.0)
    c.p_holm = p_holm
    assert c.verdict == verdict


def _result(name, labels, accuracies, clients=10, bytes_each=80_000, wall=20.0):
    rows = [{"round": i, "accuracy": a, "loss": 1.0 - a, "round_seconds": 0.5 if i else 0.0,
             "clients_used": clients if i else 0, "bytes_up": bytes_each * clients if i else 0,
             "bytes_down": bytes_each * clients if i else 0}
            for i, a in enumerate(accuracies)]
    return CellResult(Cell(name, {}, labels), rows, wall, 2**31,
                      {"load_average_start": [1.0, 1.0, 1.0]})


def test_rounds_to_target_count_the_floats_and_bell_pairs_up_to_that_round():
    result = _result("x", {}, [0.1, 0.5, 0.7, 0.9])
    reached = benchmark.to_target(result, 0.7, parameters=1000)
    assert reached == {"rounds": 2, "floats": 2 * 2 * 1000 * 10,
                       "bytes": 2 * 2 * 80_000 * 10,
                       "bell_pairs": 2 * 2 * 1000 * 10 * benchmark.TELEPORT_SHOTS}
    assert benchmark.to_target(result, 0.95, parameters=1000) is None
    # Round 0 is the initial model: reaching the target takes at least one round.
    assert benchmark.to_target(result, 0.05, parameters=1000)["rounds"] == 1


def test_accuracy_at_a_round_of_a_longer_run():
    result = _result("x", {}, [0.1, 0.5, 0.7, 0.9])
    assert benchmark.accuracy_at(result, 2) == 0.7
    assert benchmark.accuracy_at(result) == 0.9
    with pytest.raises(KeyError, match="no round 7"):
        benchmark.accuracy_at(result, 7)


def _synthetic(tmp_path, seeds=(1, 2, 3, 4, 5), rounds=6, device_rounds=4):
    """A benchmark's results where, by construction, the hybrid beats its classical twin
    by 0.05 on Fashion-MNIST's label skew, the device costs 0.1, and nothing else differs
    beyond a seed's own noise of 0.002."""
    rng = np.random.default_rng(0)
    runs_dir = tmp_path / "runs"
    results = []

    def add(name, labels, final, length, parameters):
        curve = list(np.linspace(0.1, final, length + 1))
        results.append(_result(name, labels, curve))
        (runs_dir / name).mkdir(parents=True)
        (runs_dir / name / "config.json").write_text(json.dumps({
            "parameters": parameters,
            "environment": {"cpu_model": "Test CPU", "torch_cpu_capability": "AVX2",
                            "torch_threads": 1, "versions": {"torch": "2.14.1"}}}))

    for seed in seeds:
        seed_shift = 0.01 * seed
        for dataset in benchmark.DATASETS:
            for family in benchmark.FAMILIES:
                for model in benchmark.MODELS:
                    final = 0.8 + seed_shift + rng.normal(0, 0.002)
                    if (dataset, family, model) == ("fashion-mnist", "skew", "hybrid"):
                        final += 0.05
                    add(f"{dataset}-{family}-{model}-seed{seed}",
                        {"set": "models", "dataset": dataset, "family": family,
                         "model": model, "device": "", "weighting": "samples", "seed": seed},
                        final, rounds, 19_478 if model != "cnn" else 120_000)
            for device in benchmark.DEVICES:
                final_at = 0.1 + (0.8 + seed_shift - 0.1) * device_rounds / rounds - 0.1
                add(f"{dataset}-standard-hybrid-{device}-seed{seed}",
                    {"set": "devices", "dataset": dataset, "family": "standard",
                     "model": "hybrid", "device": device, "weighting": "samples",
                     "seed": seed}, final_at + rng.normal(0, 0.002), device_rounds, 19_478)
        for weighting in benchmark.WEIGHTINGS:
            add(f"mnist-standard-hybrid-mixed-{weighting}-seed{seed}",
                {"set": "mixed", "dataset": "mnist", "family": "standard", "model": "hybrid",
                 "device": "mixed", "weighting": weighting, "seed": seed},
                0.6 + seed_shift + rng.normal(0, 0.002), device_rounds, 19_478)
    return results


def test_the_report_finds_exactly_the_differences_built_into_the_data(tmp_path):
    results = _synthetic(tmp_path)
    found = benchmark.comparisons(results, device_rounds=4)
    called = {(c.dataset, c.regime, c.first, c.second, c.verdict)
              for c in found if c.verdict != "no difference"}
    assert called == {
        ("fashion-mnist", "label skew (Dirichlet 0.1)", "hybrid", "classical", "helps"),
        ("fashion-mnist", "label skew (Dirichlet 0.1)", "hybrid", "hybrid-no-entangler",
         "helps"),
        ("fashion-mnist", "label skew (Dirichlet 0.1)", "hybrid", "cnn", "helps"),
        *{(d, "4 rounds", f"hybrid on {device}", f"{m} (noiseless)", "hurts")
          for d in benchmark.DATASETS for device in benchmark.DEVICES
          for m in ("hybrid", "classical")},
    }
    # 24 model comparisons, 8 device ones, 2 weighting ones; Holm over all 34.
    assert len(found) == 34
    ps = sorted(c.p for c in found)
    assert min(c.p_holm for c in found) == pytest.approx(min(1.0, ps[0] * 34))
    by = {(c.dataset, c.regime, c.first, c.second): c for c in found}
    skew = by[("fashion-mnist", "label skew (Dirichlet 0.1)", "hybrid", "classical")]
    assert skew.mean == pytest.approx(0.05, abs=0.005)
    assert 0 < skew.interval[1] - skew.interval[0] < 0.02
    # The few-rounds regime reads round 3, not the last one.
    few = by[("mnist", "few rounds", "hybrid", "classical")]
    hybrid = [r for r in results if r.cell.name == "mnist-standard-hybrid-seed1"][0]
    assert few.first_mean != pytest.approx(benchmark.accuracy_at(hybrid))

    study = tmp_path
    benchmark_report.write_benchmark_report(study, results, expected=len(results), rounds=6,
                                     device_rounds=4)
    report = (study / "report.md").read_text()
    assert "Partial" not in report
    assert ("hybrid scores higher in 1, lower in 0 and no different in 7 of the 8 "
            "dataset-regime cells") in report
    assert "Higher: fashion-mnist label skew (Dirichlet 0.1)" in report
    assert ("fashion-mnist, label skew (Dirichlet 0.1): hybrid scores 0.04" in report
            and "above classical (+0.04" in report)
    assert "Test CPU, torch kernels AVX2, torch threads 1, torch 2.14.1 (155 runs)" in report
    for figure in ("differences.png", "curves.png", "devices.png"):
        assert (study / figure).read_bytes()[:4] == b"\x89PNG"
        assert f"]({figure})" in report
    table = _rows(study / "comparisons.csv")
    assert len(table) == 34
    assert {row["verdict"] for row in table} == {"helps", "hurts", "no difference"}
    # Rounds to target: the cnn moves its 120,000 parameters each time.
    assert "| mnist | standard |" in report and "120,000" in report


def test_a_partial_benchmark_says_so_and_still_reports(tmp_path):
    results = _synthetic(tmp_path, seeds=(1, 2))
    benchmark_report.write_benchmark_report(tmp_path, results, expected=155, rounds=6,
                                     device_rounds=4)
    report = (tmp_path / "report.md").read_text()
    assert f"Partial: {len(results)} of 155 runs done" in report


def test_a_single_seed_gives_no_interval_and_no_verdict(tmp_path):
    results = _synthetic(tmp_path, seeds=(1,))
    found = benchmark.comparisons(results, device_rounds=4)
    assert all(c.verdict == "no difference" and math.isnan(c.p) for c in found)
    benchmark_report.write_benchmark_report(tmp_path, results, expected=155, rounds=6,
                                     device_rounds=4)
    assert "n/a" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------- parallel grid runner
def _fake_runner(behaviour, started, stopped):
    def run_cell(cell, runs_dir, log_dir, progress, stop=None):
        started.append(cell.name)
        action = behaviour[cell.name]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                stopped.append(cell.name)
                raise grid.CellStoppedError(cell.name)
            if action == "fail" and time.monotonic() > deadline - 9.8:
                raise CellError(f"cell {cell.name} failed")
            if action == "ok" and time.monotonic() > deadline - 9.9:
                rows = [{"round": 0, "accuracy": 0.1, "loss": 2.0, "round_seconds": 0.0},
                        {"round": 1, "accuracy": 0.5, "loss": 1.0, "round_seconds": 0.1}]
                return CellResult(cell, rows, 0.1, 1)
            time.sleep(0.01)
        raise AssertionError(f"{cell.name} was never stopped")
    return run_cell


def test_parallel_cells_all_finish_in_grid_order(tmp_path, monkeypatch):
    started, stopped = [], []
    cells = [Cell(f"c{i}", {"num-server-rounds": 1}, {"i": i}) for i in range(5)]
    monkeypatch.setattr(grid, "run_cell", _fake_runner(
        {c.name: "ok" for c in cells}, started, stopped))
    results = run_grid("s", cells, tmp_path, jobs=2)
    assert [r.cell.name for r in results] == [c.name for c in cells]
    assert sorted(started) == [c.name for c in cells] and not stopped
    assert [row["cell"] for row in _rows(tmp_path / "s" / "cells.csv")] == [
        c.name for c in cells]


def test_a_failing_parallel_cell_stops_the_running_one_and_starts_no_more(tmp_path,
                                                                        monkeypatch):
    started, stopped = [], []
    cells = [Cell(n, {"num-server-rounds": 1}) for n in ("slow", "bad", "never", "never2")]
    monkeypatch.setattr(grid, "run_cell", _fake_runner(
        {"slow": "hang", "bad": "fail", "never": "ok", "never2": "ok"}, started, stopped))
    with pytest.raises(CellError, match="cell bad failed"):
        run_grid("s", cells, tmp_path, jobs=2)
    assert sorted(started) == ["bad", "slow"]
    assert stopped == ["slow"]
    assert threading.active_count() == 1 or all(
        not t.name.startswith("cell") for t in threading.enumerate())


def test_jobs_below_one_are_refused(tmp_path):
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_grid("s", [Cell("a", {})], tmp_path, jobs=0)


@pytest.mark.slow
def test_two_real_cells_at_once_match_the_same_cells_one_after_the_other(tmp_path):
    tiny = {"num-server-rounds": 2, "max-samples-per-client": 60, "test-samples": 100,
            "min-train-nodes": 2}
    cells = [Cell("h", {**tiny, "model": "hybrid"}, num_supernodes=2),
             Cell("c", {**tiny, "model": "classical"}, num_supernodes=2)]
    together = run_grid("together", cells, tmp_path, jobs=2)
    apart = run_grid("apart", cells, tmp_path, jobs=1)
    assert [r.rows[-1]["accuracy"] for r in together] == [
        r.rows[-1]["accuracy"] for r in apart]
    assert [[row["loss"] for row in r.rows] for r in together] == [
        [row["loss"] for row in r.rows] for r in apart]


# ------------------------------------------------------------- the committed benchmark
COMMITTED = benchmark.PROJECT_ROOT / "results" / "benchmark"


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_the_committed_report_is_what_the_committed_runs_give(tmp_path):
    """Every figure of results/benchmark/report.md and comparisons.csv comes from the
    committed runs: rebuilt from their metrics.json, the report is the same text."""
    grid_cells = benchmark.cells(device_map="results/benchmark/device-map.toml")
    results = benchmark.done_results(COMMITTED, grid_cells)
    assert len(results) == len(grid_cells) == 155, "the committed benchmark is incomplete"
    benchmark_report.write_benchmark_report(tmp_path, results, len(grid_cells), benchmark.ROUNDS,
                                     benchmark.DEVICE_ROUNDS, runs_dir=COMMITTED / "runs")
    assert (tmp_path / "report.md").read_text() == (COMMITTED / "report.md").read_text()
    assert _rows(tmp_path / "comparisons.csv") == _rows(COMMITTED / "comparisons.csv")
    for figure in ("differences.png", "curves.png", "devices.png"):
        assert (COMMITTED / figure).read_bytes()[:4] == b"\x89PNG"
    # Every run made all its rounds on the code the report names, with its environment.
    for result in results:
        assert len(result.rows) == result.cell.rounds + 1
        # Every round trained: none skipped for want of UAVs with a relay path.
        assert all(row["skipped"] is None and row["clients_used"] >= 9
                   for row in result.rows[1:]), result.cell.name
        assert result.record["code_version"] and "dirty" not in result.record["code_version"]
