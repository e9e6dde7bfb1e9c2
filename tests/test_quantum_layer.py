"""The torch executor runs the same circuit as PennyLane: outputs and gradients agree."""

from __future__ import annotations

import math
from itertools import product

import pennylane as qml
import pytest
import torch

from quantum.ansatz import (
    READOUTS,
    ansatz,
    encode,
    measurements,
    trainable_layers,
    weight_shapes,
)
from quantum.executor import MAX_FUSED_QUBITS, TorchStatevectorExecutor
from quantum.layer import ANGLE_PERIODS, MAX_QUBITS, QuantumLayer
from quantum.names import QUANTUM_BACKENDS, training_problem
from quantum.recording import record_gates

FLOAT64_ATOL = 1e-10


def random_features(batch: int, n_qubits: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Angles in [-pi, pi), requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    features = (2 * torch.rand(batch, n_qubits, generator=generator, dtype=dtype) - 1) * math.pi
    return features.requires_grad_()


def outputs_and_gradients(
    layer: QuantumLayer, features: torch.Tensor, cotangent_seed: int = 7
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Layer outputs and the gradients of a random projection of them w.r.t. the features
    and both weight tensors (zeros where PennyLane reports an unused tensor as None)."""
    layer.zero_grad()
    features = features.detach().clone().requires_grad_()
    outputs = layer(features)
    generator = torch.Generator().manual_seed(cotangent_seed)
    cotangent = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype)
    (outputs * cotangent).sum().backward()
    tensors = [features, layer.rotation_weights, layer.crx_weights]
    gradients = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
    return outputs.detach(), gradients


def test_default_layer_matches_the_brief() -> None:
    layer = QuantumLayer()
    assert layer.rotation_weights.shape == (2, 4, 3)
    assert layer.crx_weights.shape == (2, 4)
    assert layer.out_features == 4
    assert QuantumLayer(readout="probs").out_features == 16
    assert set(ANGLE_PERIODS) == {name for name, _ in layer.named_parameters()}


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4, 5])
def test_torch_executor_matches_default_qubit(n_qubits: int, n_layers: int, readout: str) -> None:
    fast = QuantumLayer(n_qubits, n_layers, readout, init_seed=n_qubits * 10 + n_layers).double()
    reference = QuantumLayer(
        n_qubits, n_layers, readout, backend="default.qubit", init_seed=n_qubits * 10 + n_layers
    ).double()
    features = random_features(6, n_qubits, seed=n_layers)

    fast_out, fast_grads = outputs_and_gradients(fast, features)
    ref_out, ref_grads = outputs_and_gradients(reference, features)

    assert fast_out.shape == (6, fast.out_features)
    assert torch.allclose(fast_out, ref_out, atol=FLOAT64_ATOL, rtol=0)
    names = ["features", "rotation_weights", "crx_weights"]
    for name, fast_grad, ref_grad in zip(names, fast_grads, ref_grads, strict=True):
        assert torch.allclose(fast_grad, ref_grad, atol=FLOAT64_ATOL, rtol=0), name


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4, 5])
def test_gate_by_gate_path_matches_fused_path(n_qubits: int, readout: str) -> None:
    shapes = weight_shapes(n_qubits, 2)
    fused = TorchStatevectorExecutor(ansatz, n_qubits, shapes, readout, fuse=True)
    gate_by_gate = TorchStatevectorExecutor(ansatz, n_qubits, shapes, readout, fuse=False)
    assert fused.fused and not gate_by_gate.fused
    generator = torch.Generator().manual_seed(n_qubits)
    weights = [
        torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in shapes.values()
    ]
    features = random_features(5, n_qubits, seed=3)

    results = []
    for executor in (fused, gate_by_gate):
        outputs = executor(features, *weights)
        results.append((outputs, torch.autograd.grad(outputs.square().sum(), [features, *weights])))
    (fused_out, fused_grads), (gate_out, gate_grads) = results

    assert torch.allclose(fused_out, gate_out, atol=FLOAT64_ATOL, rtol=0)
    for fused_grad, gate_grad in zip(fused_grads, gate_grads, strict=True):
        assert torch.allclose(fused_grad, gate_grad, atol=FLOAT64_ATOL, rtol=0)


@pytest.mark.parametrize("readout", READOUTS)
def test_fused_backward_passes_gradcheck(readout: str) -> None:
    shapes = weight_shapes(3, 2)
    executor = TorchStatevectorExecutor(ansatz, 3, shapes, readout)
    generator = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in shapes.values()
    ]
    features = random_features(3, 3, seed=1)
    assert torch.autograd.gradcheck(executor, (features, *weights))


def test_wide_circuits_leave_the_fused_path_for_the_stages() -> None:
    narrow = TorchStatevectorExecutor(ansatz, MAX_FUSED_QUBITS, weight_shapes(MAX_FUSED_QUBITS, 1))
    wide = TorchStatevectorExecutor(
        ansatz, MAX_FUSED_QUBITS + 1, weight_shapes(MAX_FUSED_QUBITS + 1, 1)
    )
    assert narrow.fused and not wide.fused
    assert (narrow.method, wide.method) == ("fused", "stages")


def test_data_reuploading_circuit_runs_gate_by_gate_and_matches_default_qubit() -> None:
    def reuploading(features, rotation_weights, crx_weights, wires):
        ansatz(features, rotation_weights, crx_weights, wires)
        ansatz(features, rotation_weights, crx_weights, wires)

    n_qubits, shapes = 3, weight_shapes(3, 1)
    executor = TorchStatevectorExecutor(reuploading, n_qubits, shapes, "expval")
    assert not executor.fused
    with pytest.raises(ValueError, match="no re-uploading"):
        TorchStatevectorExecutor(reuploading, n_qubits, shapes, "expval", fuse=True)

    @qml.qnode(qml.device("default.qubit", wires=n_qubits), interface="torch")
    def reference(features, rotation_weights, crx_weights):
        reuploading(features, rotation_weights, crx_weights, wires=range(n_qubits))
        return measurements("expval", range(n_qubits))

    generator = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes.values()]
    features = random_features(4, n_qubits, seed=2).detach()
    expected = torch.stack(list(reference(features, *weights)), dim=-1)
    assert torch.allclose(executor(features, *weights), expected, atol=FLOAT64_ATOL, rtol=0)


def test_fixed_gates_are_folded_into_the_fused_circuit() -> None:
    def with_fixed_gates(features, rotation_weights, crx_weights, wires):
        encode(features, wires)
        qml.Hadamard(wires[0])
        qml.CNOT(wires=[wires[0], wires[1]])
        trainable_layers(rotation_weights, crx_weights, wires)
        qml.RX(0.3, wires=wires[1])
        qml.CZ(wires=[wires[1], wires[2]])

    n_qubits, shapes = 3, weight_shapes(3, 2)
    executor = TorchStatevectorExecutor(with_fixed_gates, n_qubits, shapes, "probs")
    assert executor.fused
    assert [gate.source for gate in executor.gates].count("constant") == 4

    @qml.qnode(qml.device("default.qubit", wires=n_qubits), interface="torch")
    def reference(features, rotation_weights, crx_weights):
        with_fixed_gates(features, rotation_weights, crx_weights, wires=range(n_qubits))
        return measurements("probs", range(n_qubits))[0]

    generator = torch.Generator().manual_seed(9)
    weights = [
        torch.randn(s, generator=generator, dtype=torch.float64, requires_grad=True)
        for s in shapes.values()
    ]
    features = random_features(4, n_qubits, seed=4)
    actual, expected = executor(features, *weights), reference(features, *weights)
    assert torch.allclose(actual, expected, atol=FLOAT64_ATOL, rtol=0)
    inputs = [features, *weights]
    actual_grads = torch.autograd.grad(actual[:, ::3].sum(), inputs)
    expected_grads = torch.autograd.grad(expected[:, ::3].sum(), inputs)
    for actual_grad, expected_grad in zip(actual_grads, expected_grads, strict=True):
        assert torch.allclose(actual_grad, expected_grad, atol=FLOAT64_ATOL, rtol=0)


def test_executor_rejects_angles_that_are_not_input_entries() -> None:
    def scaled_encoding(features, rotation_weights, crx_weights, wires):
        for index, wire in enumerate(wires):
            qml.RY(2 * features[..., index], wires=wire)

    with pytest.raises(ValueError, match="not a single entry"):
        record_gates(scaled_encoding, 2, weight_shapes(2, 1))


def test_recorded_gates_are_the_ansatz_operations() -> None:
    gates = record_gates(ansatz, 3, weight_shapes(3, 1))
    names = [gate.name for gate in gates]
    assert names == ["RY"] * 3 + ["RX", "RY", "RZ"] * 3 + ["CRX"] * 3
    assert [gate.wires for gate in gates[-3:]] == [(0, 1), (1, 2), (2, 0)]
    assert [gate.source for gate in gates[:3]] == ["feature"] * 3
    # Flat weight order: rotation_weights (1, 3, 3) first, then crx_weights (1, 3).
    assert [gate.index for gate in gates[3:6]] == [0, 1, 2]
    assert [gate.index for gate in gates[-3:]] == [9, 10, 11]


# Every backend x read-out a run config accepts (quantum.names.training_problem is the rule
# both the config and the layer apply).
TRAINABLE = [
    (backend, readout)
    for backend in QUANTUM_BACKENDS
    for readout in READOUTS
    if training_problem(backend, readout) is None
]


@pytest.mark.parametrize(("backend", "readout"), TRAINABLE)
def test_every_accepted_backend_matches_default_qubit_in_outputs_and_gradients(
    backend: str, readout: str
) -> None:
    layer = QuantumLayer(3, 2, readout, backend=backend, init_seed=4).double()
    reference = QuantumLayer(3, 2, readout, backend="default.qubit", init_seed=4).double()
    features = random_features(4, 3, seed=6)

    outputs, gradients = outputs_and_gradients(layer, features)
    ref_outputs, ref_gradients = outputs_and_gradients(reference, features)

    # default.mixed and lightning.qubit agree to about 1e-7 (they do not keep every
    # intermediate in float64); a wrong gradient is off by the gradient's own size, ~1.
    assert torch.allclose(outputs, ref_outputs, atol=1e-6, rtol=0)
    names = ["features", "rotation_weights", "crx_weights"]
    for name, gradient, ref_gradient in zip(names, gradients, ref_gradients, strict=True):
        assert ref_gradient.abs().max() > 0.1, name  # a gradient worth comparing
        assert torch.allclose(gradient, ref_gradient, atol=1e-6, rtol=0), name


def test_every_backend_trains_expval_and_only_lightning_is_refused_something() -> None:
    assert {backend for backend, _ in TRAINABLE} == set(QUANTUM_BACKENDS)
    refused = set(product(QUANTUM_BACKENDS, READOUTS)) - set(TRAINABLE)
    assert refused == {("lightning.qubit", "probs")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"readout": "probs"}, "backend='lightning.qubit' cannot train readout 'probs'"),
        ({"shots": 100}, "cannot train readout 'expval' with 100 circuit shots"),
    ],
)
def test_lightning_refuses_what_it_cannot_differentiate(kwargs: dict, message: str) -> None:
    # Before, these built and then raised NotImplementedError on the first backward pass.
    with pytest.raises(ValueError, match=message) as error:
        QuantumLayer(2, 1, backend="lightning.qubit", **kwargs)
    assert "use readout 'expval' without circuit shots" in str(error.value)


@pytest.mark.parametrize("readout", READOUTS)
def test_float32_runs_in_float32_and_stays_close_to_float64(readout: str) -> None:
    layer64 = QuantumLayer(4, 2, readout, init_seed=1).double()
    layer32 = QuantumLayer(4, 2, readout, init_seed=1)
    features = random_features(8, 4, seed=2, dtype=torch.float32)
    outputs = layer32(features)
    outputs.sum().backward()
    assert outputs.dtype == torch.float32
    assert features.grad.dtype == torch.float32
    assert layer32.rotation_weights.grad.dtype == torch.float32
    assert torch.isfinite(layer32.crx_weights.grad).all()
    with torch.no_grad():
        expected = layer64(features.detach().double())
    assert torch.allclose(outputs.detach().double(), expected, atol=1e-5, rtol=0)


def test_expval_and_probs_readouts_are_consistent() -> None:
    expval = QuantumLayer(3, 2, "expval", init_seed=3).double()
    probs = QuantumLayer(3, 2, "probs", init_seed=3).double()
    features = random_features(5, 3, seed=4).detach()
    with torch.no_grad():
        probabilities = probs(features)
        z_values = expval(features)
    assert torch.allclose(probabilities.sum(-1), torch.ones(5, dtype=torch.float64))
    # <Z_w> = P(bit w = 0) - P(bit w = 1), wire 0 the most significant bit.
    bits = (torch.arange(8)[:, None] >> torch.tensor([2, 1, 0])) & 1
    assert torch.allclose(probabilities @ (1.0 - 2.0 * bits.double()), z_values, atol=1e-12)


def test_any_batch_shape_is_accepted() -> None:
    layer = QuantumLayer(4, 1, init_seed=0)
    single = torch.rand(4)
    assert layer(single).shape == (4,)
    nested = torch.rand(2, 3, 4)
    assert layer(nested).shape == (2, 3, 4)
    assert torch.allclose(layer(nested)[1, 2], layer(nested[1, 2]))


def test_angles_act_with_the_declared_periods() -> None:
    layer = QuantumLayer(3, 2, init_seed=2).double()
    features = random_features(4, 3, seed=8).detach()
    with torch.no_grad():
        original = layer(features)
        layer.rotation_weights += ANGLE_PERIODS["rotation_weights"]
        assert torch.allclose(layer(features), original, atol=1e-12)
        layer.crx_weights += ANGLE_PERIODS["crx_weights"]
        assert torch.allclose(layer(features), original, atol=1e-12)
        # Half a CRX period (2 pi) flips the sign of the control-1 block: a visible change.
        layer.crx_weights += ANGLE_PERIODS["crx_weights"] / 2
        assert not torch.allclose(layer(features), original, atol=1e-3)


def test_initial_angles_are_seeded_and_in_range() -> None:
    first, second = QuantumLayer(init_seed=11), QuantumLayer(init_seed=11)
    for name in ANGLE_PERIODS:
        values = getattr(first, name)
        assert torch.equal(values, getattr(second, name))
        assert values.min() >= -math.pi and values.max() < math.pi
    assert not torch.equal(first.rotation_weights, QuantumLayer(init_seed=12).rotation_weights)


def test_noise_model_hook_changes_default_mixed_outputs() -> None:
    def depolarize_target(op, **metadata):
        qml.DepolarizingChannel(0.2, wires=op.wires[1])

    noise = qml.NoiseModel({qml.noise.op_eq("CRX"): depolarize_target})
    ideal = QuantumLayer(2, 1, backend="default.mixed", init_seed=1).double()
    noisy = QuantumLayer(2, 1, backend="default.mixed", init_seed=1, noise_model=noise).double()
    features = random_features(3, 2, seed=1).detach()
    with torch.no_grad():
        ideal_out, noisy_out = ideal(features), noisy(features)
    assert noisy_out.abs().max() <= 1.0
    assert not torch.allclose(ideal_out, noisy_out, atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"readout": "sample"}, "readout='sample' is not supported; allowed: expval, probs"),
        ({"n_qubits": 0}, f"n_qubits=0 is not supported; allowed: 1..{MAX_QUBITS}"),
        ({"n_qubits": MAX_QUBITS + 1}, f"allowed: 1..{MAX_QUBITS}"),
        ({"n_layers": 0}, "n_layers=0 is not supported"),
        ({"backend": "qiskit.nowhere"}, "backend='qiskit.nowhere' is not available"),
        ({"noise_model": qml.NoiseModel({})}, "noise_model needs backend='default.mixed'"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        QuantumLayer(**kwargs)


def test_unknown_backend_error_lists_the_known_devices() -> None:
    with pytest.raises(ValueError, match="default.qubit, default.mixed, lightning.qubit"):
        QuantumLayer(backend="no.such.device")


def test_wrong_feature_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="4 columns"):
        QuantumLayer(4, 1)(torch.zeros(2, 3))
