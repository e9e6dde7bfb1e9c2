"""Run config ``entangler``: the quantum layer without its CRX ring (issue 16, part 1).

``entangler='none'`` is the same circuit without the CRX ring, on every backend: the torch
statevector executor (fused and staged paths), the density-matrix executor with gate noise,
and the PennyLane devices, all checked against ``default.qubit`` (``default.mixed`` for
noise). Without entangling gates the state stays a product state, so each ``expval``
output depends on its own wire's input only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flower_messages import RUN_ID
from flwr.app import Context, RecordDict

from quantum.ansatz import ansatz
from quantum.circuit import ansatz_gates, weight_shapes
from quantum.executor import MAX_FUSED_QUBITS
from quantum.layer import QuantumLayer
from quantum.models import angle_periods, build_model, count_parameters
from quantum.recording import record_gates
from task.config import RunConfigError, parse_run_config

FLOAT64_ATOL = 1e-10
ANGLES = (-2.7, -0.4, 0.0, 1.1, 3.0)


def features_for(batch: int, n_qubits: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(batch, n_qubits, generator=generator, dtype=torch.float64) - 1) * math.pi


def outputs_and_gradients(layer: QuantumLayer, features: torch.Tensor):
    """Outputs, and the gradients of a fixed random projection of them with respect to the
    features and every weight tensor."""
    layer.zero_grad()
    features = features.detach().clone().requires_grad_()
    outputs = layer(features)
    cotangent = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(7),
                            dtype=outputs.dtype)
    (outputs * cotangent).sum().backward()
    tensors = [features, *(getattr(layer, name) for name in layer.weight_names)]
    return outputs.detach(), [t.grad.clone() for t in tensors]


def assert_same_layer_outputs(layer, reference, features, atol=FLOAT64_ATOL) -> None:
    out, grads = outputs_and_gradients(layer, features)
    ref_out, ref_grads = outputs_and_gradients(reference, features)
    assert torch.allclose(out, ref_out, atol=atol, rtol=0)
    for name, grad, ref_grad in zip(["features", *layer.weight_names], grads, ref_grads,
                                    strict=True):
        assert torch.allclose(grad, ref_grad, atol=atol, rtol=0), name


def test_none_has_no_crx_weights_and_fewer_parameters() -> None:
    ring, none = QuantumLayer(4, 2), QuantumLayer(4, 2, entangler="none")
    assert [name for name, _ in none.named_parameters()] == ["rotation_weights"]
    assert count_parameters(ring) - count_parameters(none) == 2 * 4
    assert weight_shapes(4, 2, "none") == {"rotation_weights": (2, 4, 3)}
    assert not any(gate.name == "CRX" for gate in ansatz_gates(4, 2, "none"))
    hybrid = build_model("hybrid", seed=0, entangler="none")
    assert angle_periods(hybrid) == {"quantum.rotation_weights": 2 * math.pi}
    # The classical twin stays matched to the crx-ring layer (quantum.models.matched_depth).
    assert count_parameters(build_model("hybrid", seed=0)) - count_parameters(hybrid) == 8


@pytest.mark.parametrize("n_qubits", [1, 2, 3, 5, 8])
def test_the_data_gates_are_the_recorded_pennylane_ansatz_without_a_ring(n_qubits) -> None:
    def no_ring(features, rotation_weights, wires):
        ansatz(features, rotation_weights, None, wires)

    recorded = record_gates(no_ring, n_qubits, weight_shapes(n_qubits, 2, "none"))
    written = ansatz_gates(n_qubits, 2, "none")
    assert [(g.name, g.wires, g.source, g.index) for g in written] == [
        (g.name, g.wires, g.source, g.index) for g in recorded
    ]
    for mine, theirs in zip(written, recorded, strict=True):
        for angle in ANGLES:
            assert np.allclose(mine.matrix_at(angle), theirs.matrix_at(angle), atol=1e-13)


@pytest.mark.parametrize("readout", ["expval", "probs"])
@pytest.mark.parametrize("n_qubits", [1, 2, 4, MAX_FUSED_QUBITS + 1])
def test_torch_executor_matches_default_qubit(n_qubits: int, readout: str) -> None:
    fast = QuantumLayer(n_qubits, 2, readout, init_seed=n_qubits, entangler="none").double()
    reference = QuantumLayer(n_qubits, 2, readout, backend="default.qubit", init_seed=n_qubits,
                             entangler="none").double()
    assert fast.method == ("fused" if n_qubits <= MAX_FUSED_QUBITS else "stages")
    assert_same_layer_outputs(fast, reference, features_for(5, n_qubits, seed=n_qubits))


@pytest.mark.parametrize("backend", ["default.mixed", "lightning.qubit"])
@pytest.mark.parametrize("n_qubits", [2, 3])
def test_other_pennylane_devices_match_default_qubit(backend: str, n_qubits: int) -> None:
    # default.mixed and lightning.qubit agree with default.qubit to about 1e-7 (as in
    # tests/test_quantum_layer.py and tests/test_noise.py): hence the tolerance.
    layer = QuantumLayer(n_qubits, 2, backend=backend, init_seed=3, entangler="none").double()
    reference = QuantumLayer(n_qubits, 2, backend="default.qubit", init_seed=3,
                             entangler="none").double()
    assert_same_layer_outputs(layer, reference, features_for(4, n_qubits, seed=1), atol=1e-6)


@pytest.mark.parametrize("readout", ["expval", "probs"])
def test_density_matrices_with_gate_noise_match_default_mixed(readout: str) -> None:
    noisy = QuantumLayer(3, 2, readout, init_seed=5, gate_noise=0.05, entangler="none").double()
    reference = QuantumLayer(3, 2, readout, backend="default.mixed", init_seed=5,
                             gate_noise=0.05, entangler="none").double()
    assert noisy.method == "density_matrix"
    assert_same_layer_outputs(noisy, reference, features_for(4, 3, seed=2), atol=1e-6)


@pytest.mark.parametrize("n_qubits", [2, 4, MAX_FUSED_QUBITS + 2])
def test_without_an_entangler_each_output_depends_on_its_own_wire_only(n_qubits) -> None:
    layer = QuantumLayer(n_qubits, 3, init_seed=11, entangler="none").double()
    features = features_for(1, n_qubits, seed=4).repeat(n_qubits, 1)
    base = layer(features[:1]).detach()
    changed = features.clone()
    changed[range(n_qubits), range(n_qubits)] += 1.3  # row i moves wire i's input only
    moved = (layer(changed).detach() - base).abs() > 1e-12
    assert torch.equal(moved, torch.eye(n_qubits, dtype=torch.bool))
    # With the ring the outputs mix: the same check fails.
    ring = QuantumLayer(n_qubits, 3, init_seed=11).double()
    assert ((ring(changed) - ring(features[:1])).abs() > 1e-12).sum() > n_qubits


def test_without_an_entangler_probabilities_are_a_product_of_marginals() -> None:
    layer = QuantumLayer(3, 2, "probs", init_seed=1, entangler="none").double()
    single = QuantumLayer(3, 2, init_seed=1, entangler="none").double()
    features = features_for(2, 3, seed=9)
    expvals = single(features).detach()
    ones = (1 - expvals) / 2  # probability of 1 on each wire
    marginals = torch.stack([1 - ones, ones], dim=-1)  # (batch, wire, bit)
    product = torch.einsum("ba,bc,bd->bacd", marginals[:, 0], marginals[:, 1], marginals[:, 2])
    assert torch.allclose(layer(features).detach(), product.reshape(2, 8), atol=1e-12, rtol=0)


def test_the_hybrid_model_trains_with_no_entangler() -> None:
    model = build_model("hybrid", seed=0, entangler="none")
    model(torch.randn(4, 1, 28, 28)).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_run_config_entangler() -> None:
    assert parse_run_config({}).entangler == "crx-ring"
    assert parse_run_config({"entangler": "none"}).entangler == "none"
    with pytest.raises(RunConfigError, match="'entangler' = 'cz' is not allowed; use one of"):
        parse_run_config({"entangler": "cz"})
    for model in ("classical", "cnn"):
        with pytest.raises(RunConfigError, match=(
            f"run config 'entangler' = 'none' acts on the quantum layer, which model "
            f"'{model}' does not have; use model 'hybrid' or entangler 'crx-ring'"
        )):
            parse_run_config({"entangler": "none", "model": model})
        parse_run_config({"entangler": "crx-ring", "model": model})
    with pytest.raises(ValueError, match="entangler act on the quantum layer"):
        build_model("classical", entangler="none")


@pytest.mark.usefixtures("flower_run")
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"entangler": "cz"}, "Run stopped before training: run config 'entangler' = 'cz' "
                              "is not allowed"),
        ({"entangler": "none", "model": "cnn"}, "Run stopped before training: run config "
                                                "'entangler' = 'none' acts on the quantum"),
    ],
)
def test_a_bad_entangler_stops_the_run_before_training(tmp_path, overrides, message) -> None:
    from server.app import main

    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    with pytest.raises(SystemExit) as stop:
        main(None, context, {**overrides, "output-dir": str(tmp_path / "outputs")})
    assert str(stop.value).startswith(message)
    assert not (tmp_path / "outputs").exists()


def test_the_ablation_on_a_device_is_refused_with_the_reason():
    with pytest.raises(RunConfigError, match="the ablation is not compiled yet"):
        parse_run_config({}, {"entangler": "none", "device": "fake_manila"})
