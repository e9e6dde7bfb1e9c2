"""The SAGIN study (experiments.sagin): its grid, and its report built from synthetic cells."""

import csv
import os

import pytest

from experiments import sagin
from experiments.grid import CellResult
from experiments.sagin_data import by_group, hop_class, node_layers, targets
from experiments.sagin_report import write_sagin_report
from relay.shared_secret import MASTER_ENV_VAR

LEO_10 = sagin.TOPOLOGIES[10]


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_is_fair_in_updates_and_covers_every_combination():
    grid = sagin.cells(seeds=3)
    assert len(grid) == 2 * 4 * 3 * 3 and len({cell.name for cell in grid}) == len(grid)
    by_name = {cell.name: cell for cell in grid}
    sync = by_name["uavs100-relays-sync-teleport-seed2"].overrides
    assert sync["fraction-train"] == 0.1 and sync["hierarchy"] == "relays"
    assert sync["num-server-rounds"] == sagin.DEFAULT_ROUNDS and sync["mode"] == "sync"
    asyn = by_name["uavs10-flat-async-qkd-seed1"].overrides
    assert asyn["mode"] == "async" and asyn["hierarchy"] == "none"
    assert asyn["concurrency"] == 10 and asyn["buffer-size"] == 5
    # versions x buffer = rounds x UAVs per round: the same number of updates
    assert asyn["num-server-rounds"] * asyn["buffer-size"] == sagin.DEFAULT_ROUNDS * 10
    assert by_name["uavs10-flat-sync-ideal-seed1"].overrides["fraction-train"] == 1.0
    # seed by seed: a study stopped early has whole seeds
    assert {cell.labels["seed"] for cell in grid[:24]} == {1}
    with pytest.raises(ValueError, match="no SAGIN topology for \\[7\\] UAVs"):
        sagin.cells(uavs=[7])
    with pytest.raises(ValueError, match="mode 'fast-sync' is not one of"):
        sagin.mode_overrides("fast-sync", 10, 4)


def test_hop_classes_come_from_the_topologys_layers():
    layers = node_layers(LEO_10)
    assert hop_class("uav-3>hap-0", layers) == "uav>hap"
    assert hop_class("hap-0>bs", layers) == "hap>bs"
    assert hop_class("uav-7>WALKER-4", layers) == "uav>leo"
    assert hop_class("WALKER-4>bs", layers) == "leo>bs"


def test_study_secret_is_set_unless_one_was_given(monkeypatch):
    monkeypatch.delenv(MASTER_ENV_VAR, raising=False)
    monkeypatch.delenv("QFL_QKD_SECRET_DIR", raising=False)
    sagin.use_study_secret()
    assert os.environ[MASTER_ENV_VAR] == sagin.STUDY_MASTER_SECRET
    monkeypatch.setenv(MASTER_ENV_VAR, "ab" * 16)
    sagin.use_study_secret()
    assert os.environ[MASTER_ENV_VAR] == "ab" * 16


def _hops(mode, channel, updates):
    """A round's bill: flat messages cross their whole path, relays' meet at the HAP."""
    pairs = 1000 if channel == "teleport" else 0
    key = 256 if channel == "qkd" else 0

    def hop(messages):
        return {"messages": messages, "bell_pairs": pairs * messages,
                "classical_bits": 2 * pairs * messages, "key_bits": key * messages,
                "bytes": 100 * messages, "latency_s": 0.5 * messages}

    if mode.startswith("relays"):
        return {"uav-3>hap-0": hop(2 * updates), "hap-0>bs": hop(2), "uav-7>WALKER-4": hop(2),
                "WALKER-4>bs": hop(2)}
    return {"uav-3>hap-0": hop(2 * updates), "hap-0>bs": hop(2 * updates),
            "uav-7>WALKER-4": hop(2), "WALKER-4>bs": hop(2)}


def _synthetic(cell):
    mode, channel, seed = cell.labels["mode"], cell.labels["channel"], cell.labels["seed"]
    asynchronous = mode.endswith("async")
    last = cell.rounds
    rows = []
    for r in range(last + 1):
        # async: a version every 30 s of mission time and slightly lower accuracy
        accuracy = 0.1 + 0.8 * r / last - (0.1 if asynchronous else 0.0) + 0.01 * seed
        updates = (5 if asynchronous else 10) if r else 0
        hops = _hops(mode, channel, updates) if r else {}
        rows.append({
            "round": r, "accuracy": accuracy, "loss": 1.0 / (r + 1),
            "clients_used": updates,
            "emulated_time_s": r * (30.0 if asynchronous else 120.0),
            "bell_pairs": sum(h["bell_pairs"] for h in hops.values()) // 2,
            "classical_bits": sum(h["classical_bits"] for h in hops.values()) // 2,
            "key_bits": sum(h["key_bits"] for h in hops.values()) // 2,
            "bytes_up": 500, "bytes_down": 500, "space_messages": 4 if r else 0,
            "keys_aborted": 0, "hops": hops, "round_seconds": 0.5,
            **({"staleness": [0, 1, 2, 1, 0] if r else [], "versions_used": []}
               if asynchronous else {}),
        })
    return CellResult(cell, rows, 30.0, 2**30, {
        "load_average_start": [1.0, 1.0, 1.0], "machine": {"cores": 2, "cpu": "Test CPU"}})


def test_report_builds_from_synthetic_cells_and_states_its_findings(tmp_path):
    grid = sagin.cells(uavs=[10], seeds=2, rounds=4)
    results = [_synthetic(cell) for cell in grid]
    write_sagin_report(tmp_path, results, "python -m experiments.sagin --uavs 10 --seeds 2")
    report = (tmp_path / "report.md").read_text()
    assert "Reproduce: `python -m experiments.sagin --uavs 10 --seeds 2` (24 cells" in report
    # The 10-UAV topology's first round with a path through a satellite (seed 1) is 3.
    assert "**10 UAVs**, round 3:" in report
    for name in ("accuracy-uavs10.png", "bill.png", "staleness.png", "topology-uavs10.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in report
    assert report.count("Made by `python -m experiments.sagin --uavs 10 --seeds 2`.") == 3
    # flat: 2 x 10 updates x 4 rounds messages into bs over the HAP + 2 x 4 from the LEO
    assert "messages into the base station 16 vs 88 (−82%)" in report
    assert "Bell pairs (teleport) 52,000 vs 88,000 (−41%)" in report
    # the LEO downlink: relays forward one aggregate (2 messages a round) instead of 2
    assert "satellite-to-base-station hops 8 vs 8 (+0%)" in report
    assert "| 10 | relays-sync | 104 | 16 | 8 | 16 | 52,000 | 1,300 | 104,000 | 13,312 | 0.0 |" \
        in report
    # target: 0.8 x flat-sync's final mean (0.915) -> 0.73; async reaches it at
    # version 8 (240 s), sync at round 4 (480 s)
    assert targets(by_group(results)) == {10: 0.73}
    assert "mission time to accuracy 0.73 4.0 min (2/2 seeds reach it) vs 8.0 min (2/2)" \
        in report
    assert "(2.00x sooner)" in report
    assert "mean staleness 0.80 versions, 60% of updates stale" in report
    # at 4.0 min, async has its final accuracy, sync round 2's (0.5 + 0.015)
    assert "final accuracy 0.815 vs 0.915 (-0.100); at the same mission time (4.0 min) " \
        "0.815 vs 0.515" in report
    assert "flat-async at 10 UAVs ends below flat-sync by 0.100 over ideal (0.815 ± 0.007 " \
        "vs 0.915 ± 0.007); 0.100 over teleport" in report
    assert "| 10 | flat-sync | 0.915 ± 0.007 | 0.915 ± 0.007 | 0.915 ± 0.007 | 40 | 8.0 |" \
        in report
    summary = _rows(tmp_path / "summary.csv")
    assert len(summary) == 12 and {row["seeds"] for row in summary} == {"2"}
    hops = _rows(tmp_path / "hops.csv")
    assert {row["hop_class"] for row in hops} == {"uav>hap", "hap>bs", "uav>leo", "leo>bs"}
    stale = _rows(tmp_path / "staleness.csv")
    assert {(row["staleness"], row["updates"]) for row in stale
            if row["mode"] == "flat-async" and row["channel"] == "ideal"} == {
        ("0", "32"), ("1", "32"), ("2", "16")}


@pytest.mark.slow
def test_one_tiny_real_cell_runs_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_ENV_VAR, "cd" * 16)
    monkeypatch.setattr(sagin, "TEST_SAMPLES", 100)
    sagin.main(["--uavs", "10", "--seeds", "1", "--modes", "flat-async", "--channels", "qkd",
                "--rounds", "1", "--samples", "40", "--results-dir", str(tmp_path)])
    study = tmp_path / "sagin"
    cells = _rows(study / "cells.csv")
    assert [row["cell"] for row in cells] == ["uavs10-flat-async-qkd-seed1"]
    assert cells[0]["rounds"] == "2"  # two versions for one synchronous round
    report = (study / "report.md").read_text()
    assert "| 10 | flat-async | " in report
    summary = _rows(study / "summary.csv")
    assert float(summary[0]["key_bits"]) > 0 and summary[0]["staleness_mean"] != ""
