"""benchmarks.quantum_layer and benchmarks.quantum_methods: one report each, with a case
per width and depth."""

from __future__ import annotations

import json

import torch

from benchmarks import quantum_methods
from benchmarks.quantum_layer import GOALS, MODELS, case_goals, parse_args, run

TINY = ["--qubits", "2", "3", "--layers", "1", "--repeats", "1", "--slow-repeats", "1",
        "--repeat-seconds", "0.005", "--error-batch", "2"]


def test_the_report_has_a_case_per_width_and_depth_with_every_figure() -> None:
    threads = torch.get_num_threads()
    try:
        report = run(parse_args(TINY))
    finally:
        torch.set_num_threads(threads)  # run() measures with one thread
    json.dumps(report)  # one JSON object
    assert [(case["n_qubits"], case["n_layers"]) for case in report["cases"]] == [(2, 1), (3, 1)]
    for case in report["cases"]:
        for label in MODELS:
            assert case[f"{label}_samples_per_s"] > 0
            assert case["timing"][label]["repeats"] == 1
        assert case["max_abs_err"] <= GOALS["max_abs_err"]
        assert case["fast_method"] == "fused"
        assert set(case["goals"]) == {"max_abs_err", "fast_over_default_qubit",
                                      "fast_over_lightning"}
    assert report["machine"]["torch_threads"] == 1
    assert len(report["load_average"]["start"]) == 3


def test_the_four_qubit_goals_apply_at_four_qubits_only() -> None:
    case = {"n_qubits": 4, "max_abs_err": 1e-12, "fast_over_default_qubit": 9.0,
            "fast_over_lightning": 50.0, "fast_over_classical": 0.95}
    assert case_goals(case) == {
        "max_abs_err": True,
        "fast_over_default_qubit": True,
        "fast_over_lightning": True,
        "fast_over_default_qubit_at_4_qubits": False,
        "stretch_fast_over_classical_at_4_qubits": True,
    }
    assert set(case_goals({**case, "n_qubits": 8})) == {
        "max_abs_err", "fast_over_default_qubit", "fast_over_lightning"
    }


def test_the_method_report_times_every_variant_of_every_case() -> None:
    threads = torch.get_num_threads()
    try:
        report = quantum_methods.run(quantum_methods.parse_args(
            ["--qubits", "2", "3", "--layers", "1", "--group-sizes", "1", "2", "--repeats", "1",
             "--repeat-seconds", "0.002", "--max-fused", "2"]
        ))
    finally:
        torch.set_num_threads(threads)
    json.dumps(report)
    first, second = report["cases"]
    assert set(first["ms_per_pass"]) == {"fused", "stages_1", "stages_2"}
    assert set(second["ms_per_pass"]) == {"stages_1", "stages_2"}  # wider than --max-fused
    assert second["fastest"] == second["fastest_stages"]
    assert report["choices"]["MAX_FUSED_QUBITS"] >= 1
