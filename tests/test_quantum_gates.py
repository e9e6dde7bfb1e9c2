"""The ansatz as data (no PennyLane) is the PennyLane ansatz, gate by gate and matrix by matrix;
the torch backend builds, runs and trains without importing PennyLane or matplotlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pennylane as qml
import pytest
import torch

from quantum.ansatz import ansatz, weight_shapes
from quantum.circuit import ansatz_gates
from quantum.executor import TorchStatevectorExecutor
from quantum.gates import GENERATORS, circuit_gates, table_gate
from quantum.names import MAX_QUBITS
from quantum.recording import record_gates

ROOT = Path(__file__).resolve().parents[1]
ANGLES = (0.0, 0.37, -2.1, np.pi, 5.5)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_the_gate_table_is_pennylanes_gates(name: str) -> None:
    operation = getattr(qml, name)
    n_wires = operation.num_wires
    gate = table_gate(name, tuple(range(n_wires)), "weight", 0)
    for angle in ANGLES:
        expected = qml.matrix(operation(angle, wires=list(range(n_wires))))
        assert np.allclose(gate.matrix_at(angle), expected, atol=1e-14, rtol=0), angle


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4, 8, MAX_QUBITS])
def test_the_ansatz_as_data_is_the_recorded_pennylane_ansatz(n_qubits: int, n_layers: int) -> None:
    recorded = record_gates(ansatz, n_qubits, weight_shapes(n_qubits, n_layers))
    written = ansatz_gates(n_qubits, n_layers)
    assert len(written) == len(recorded)
    for position, (mine, theirs) in enumerate(zip(written, recorded, strict=True)):
        where = f"gate {position}: {theirs.name} on {theirs.wires}"
        assert (mine.name, mine.wires, mine.source, mine.index) == (
            theirs.name, theirs.wires, theirs.source, theirs.index
        ), where
        for angle in ANGLES:
            # The eigenvectors of a degenerate generator may differ; the matrices may not.
            assert np.allclose(mine.matrix_at(angle), theirs.matrix_at(angle), atol=1e-13), where


def test_the_data_gates_run_like_the_recorded_circuit() -> None:
    shapes = weight_shapes(3, 2)
    generator = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes.values()
    ]
    features = torch.rand(5, 3, generator=generator, dtype=torch.float64)
    from_data = TorchStatevectorExecutor(ansatz_gates(3, 2), 3, shapes, "probs")
    from_pennylane = TorchStatevectorExecutor(ansatz, 3, shapes, "probs")
    assert torch.allclose(from_data(features, *weights), from_pennylane(features, *weights),
                          atol=1e-13, rtol=0)


def test_gate_records_outside_the_wires_are_refused() -> None:
    with pytest.raises(ValueError, match=r"gate RY on wires \[2\] is outside the 2 wires 0\.\.1"):
        circuit_gates(ansatz_gates(3, 1), 2, weight_shapes(2, 1))


def test_an_unknown_table_gate_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'SWAP' is not in the gate table; known: RX, RY"):
        table_gate("SWAP", (0, 1), "weight", 0)


FRESH_PROCESS = """
import sys
import torch
from quantum.models import build_model

for name, options in (("hybrid", {}), ("classical", {}), ("hybrid", {"entangler": "none"})):
    model = build_model(name, seed=0, **options)
    loss = model(torch.randn(4, 1, 28, 28)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters()), name
print(sorted({m.split(".")[0] for m in sys.modules} & {"pennylane", "matplotlib"}))
"""


def test_the_torch_backend_imports_neither_pennylane_nor_matplotlib() -> None:
    # A Flower ClientApp process starts fresh for every message: PennyLane (and matplotlib
    # through it) would be a third of its import time, for nothing on this backend.
    loaded = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]"
