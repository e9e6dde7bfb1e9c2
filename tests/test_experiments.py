"""Experiment studies: the resumable grid runner, the reports, and the study inputs."""

import csv
import json
import math

import pytest

from experiments import case_study, channel, scale
from experiments.grid import Cell, CellError, CellResult, run_grid
from relay.swarm import swarm_document, write_swarm
from relay.topology_file import load_topology

TINY = {
    "num-server-rounds": 2,
    "max-samples-per-client": 100,
    "test-samples": 200,
    "min-train-nodes": 2,
}


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_grid_runs_each_cell_once_reruns_interrupted_ones_and_writes_the_csvs(
    tmp_path, monkeypatch
):
    cells = [
        Cell("a", {**TINY, "model": "classical"}, {"model": "classical"}, num_supernodes=2),
        Cell("b", {**TINY, "model": "cnn"}, {"model": "cnn"}, num_supernodes=2),
    ]
    # An earlier attempt at "b" died half-way: its folder has no cell.json.
    (tmp_path / "study" / "runs" / "b").mkdir(parents=True)
    (tmp_path / "study" / "runs" / "b" / "metrics.json").write_text("[]")
    results = run_grid("study", cells, tmp_path)
    assert [len(r.rows) for r in results] == [3, 3]
    rounds = _rows(tmp_path / "study" / "rounds.csv")
    assert [(row["cell"], row["model"], row["round"]) for row in rounds] == [
        ("a", "classical", "0"), ("a", "classical", "1"), ("a", "classical", "2"),
        ("b", "cnn", "0"), ("b", "cnn", "1"), ("b", "cnn", "2"),
    ]
    summary = _rows(tmp_path / "study" / "cells.csv")
    assert [row["cell"] for row in summary] == ["a", "b"]
    assert all(float(row["peak_rss_mib"]) > 100 and float(row["wall_seconds"]) > 0
               for row in summary)
    done = json.loads((tmp_path / "study" / "runs" / "a" / "cell.json").read_text())
    assert done["overrides"]["model"] == "classical" and done["code_version"]

    # A second call finds both cells done and starts nothing.
    def no_run(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr("experiments.grid.run_cell", no_run)
    again = run_grid("study", cells, tmp_path)
    assert [r.rows for r in again] == [r.rows for r in results]

    # The same cell name with other settings is refused, not silently reused.
    changed = [Cell("a", {**TINY, "model": "hybrid"}, {"model": "hybrid"}, num_supernodes=2)]
    with pytest.raises(CellError, match="was run with other settings"):
        run_grid("study", changed, tmp_path)


@pytest.mark.slow
def test_a_failing_cell_stops_the_grid_with_the_log_tail(tmp_path):
    bad = Cell("bad", {**TINY, "topology": str(tmp_path / "no-such.toml")}, num_supernodes=2)
    with pytest.raises(CellError, match="cell bad failed") as failure:
        run_grid("study", [bad], tmp_path)
    assert "no-such.toml" in str(failure.value)
    assert not (tmp_path / "study" / "runs" / "bad" / "cell.json").exists()


def _fake_result(name, labels, accuracies, losses, seconds=10.0):
    rows = [
        {"round": i, "accuracy": a, "loss": loss, "round_seconds": seconds if i else 0.0}
        for i, (a, loss) in enumerate(zip(accuracies, losses, strict=True))
    ]
    return CellResult(Cell(name, {}, labels), rows, 60.0, 3 * 2**30)


def test_case_study_report_states_the_paired_difference_and_the_paper_figures(tmp_path):
    results = []
    for seed in (1, 2, 3):
        for model, final in (("hybrid", 0.90), ("classical", 0.91), ("cnn", 0.97)):
            final += seed * 0.001
            results.append(_fake_result(f"{model}-seed{seed}", {"model": model, "seed": seed},
                                        [0.1, 0.86, final], [2.3, 0.5, 0.3]))
            (tmp_path / "runs" / f"{model}-seed{seed}").mkdir(parents=True)
            (tmp_path / "runs" / f"{model}-seed{seed}" / "config.json").write_text(
                json.dumps({"parameters": 19_478}))
    case_study.write_case_report(tmp_path, results, rounds=2, uavs=10, alpha=1.0)
    report = (tmp_path / "report.md").read_text()
    assert "| hybrid (QFL, 4 qubits) | 19,478 | 0.902 ± 0.001 |" in report
    assert "0.85 / 0.6" in report and "0.70 / 0.7" in report
    # Same offset every seed: the difference is exactly -0.01 with no spread.
    assert "paired by seed: -0.0100 ± 0.0000" in report
    assert "not reproduced" in report
    assert (tmp_path / "accuracy_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_scale_report_fits_growth_and_checks_the_targets(tmp_path):
    record = {"load_average_start": [1.5, 1.0, 0.9], "load_average_end": [2.25, 1.1, 1.0],
              "machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 23.4},
              "code_version": "abc1234"}
    results = [
        CellResult(Cell(f"uavs-{n}", {}, {"uavs": n, "trained_per_round": 10}, n),
                   [{"round": 0, "accuracy": 0.1, "loss": 2.3, "round_seconds": 0.0}]
                   + [{"round": i, "accuracy": 0.5, "loss": 1.0, "round_seconds": 1.0 * n,
                       "clients_used": 10 if (n, i) != (1000, 2) else 9, "uav_queries": 12}
                      for i in (1, 2, 3)],
                   100.0, int(2**30 * math.sqrt(n)), record)
        for n in (10, 100, 1000)
    ]
    scale.write_scale_report(tmp_path, results, rounds=3, samples=50,
                             command="python -m experiments.scale --uavs 10 100 1000")
    report = (tmp_path / "report.md").read_text()
    assert "round time ~ N^1.00, peak memory ~ N^0.50" in report
    assert "Reproduce: `python -m experiments.scale --uavs 10 100 1000`" in report
    assert "Test CPU, 2 cores, 23.4 GiB" in report and "| 1.5 → 2.2 |" in report
    assert "1,000 UAVs over 10: 1000.00 / 10.00 = 100.00 (target at most 1.5): **not met**" \
        in report
    assert "31.62 GiB at most (target under 8 GiB): **not met**" in report
    assert "**not met** (1000 UAVs round 2: 9)" in report
    assert "| 12 / 12 / 12 |" in report
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"


def test_swarm_topology_places_every_uav_with_a_path():
    document = swarm_document(40, radius_km=3.0, seed=5)
    uavs = [node for node in document["nodes"] if node["layer"] == "uav"]
    assert [node["name"] for node in uavs] == [f"uav-{i}" for i in range(40)]
    assert all(math.hypot(node["x_km"], node["y_km"]) <= 3.0 + 1e-9 for node in uavs)


def test_written_swarm_loads_and_connects(tmp_path):
    topology = load_topology(write_swarm(tmp_path / "swarm.toml", 25, seed=1))
    assert len(topology.uav_ids) == 25
    assert all(link is not None for link in topology.links_for_round(1, 0).values())


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_swarm_refuses_a_bad_number_of_uavs(bad, tmp_path):
    with pytest.raises(ValueError, match="n_uavs must be an integer >= 1"):
        write_swarm(tmp_path / "swarm.toml", bad)
    assert not list(tmp_path.iterdir())


def test_qkd_grid_aborts_on_noisy_paths_and_under_eavesdropping():
    rows = {(r["fidelity"], r["eavesdropper"]): r for r in channel.qkd_grid(
        fidelities=(1.0, 0.8), eavesdropping=(0.0, 1.0), sessions=4)}
    assert rows[(1.0, 0.0)]["abort_rate"] == 0.0 and rows[(1.0, 0.0)]["key_bits_mean"] > 5000
    assert rows[(0.8, 0.0)]["abort_rate"] == 1.0
    assert rows[(1.0, 1.0)]["abort_rate"] == 1.0  # full intercept-resend: QBER 25 %
    assert abs(rows[(1.0, 1.0)]["qber_mean"] - 0.25) < 0.03


def test_degraded_topology_scales_every_links_infidelity(tmp_path):
    topology = load_topology(channel.degraded_topology(tmp_path / "t.toml", 3.0))
    default = load_topology()
    for ours, theirs in zip(topology.link_types, default.link_types, strict=True):
        assert ours.raw_fidelity == pytest.approx(1 - 3 * (1 - theirs.raw_fidelity))
