"""The executor's three methods (fused unitary, stages, gate by gate) agree with each other
and with default.qubit, in outputs and gradients, up to the widest allowed circuit."""

from __future__ import annotations

import math

import pennylane as qml
import pytest
import torch

from quantum.ansatz import READOUTS, encode, measurements, trainable_layers
from quantum.circuit import ansatz_gates, weight_shapes
from quantum.executor import MAX_FUSED_QUBITS, METHODS, TorchStatevectorExecutor
from quantum.layer import QuantumLayer
from quantum.names import MAX_QUBITS
from quantum.stages import choose_groups

FLOAT64_ATOL = 1e-10


def inputs(n_qubits: int, n_layers: int, batch: int, seed: int) -> list[torch.Tensor]:
    """Features in [-pi, pi) and weights, float64, requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    features = (2 * torch.rand(batch, n_qubits, generator=generator, dtype=torch.float64) - 1)
    weights = [
        torch.randn(shape, generator=generator, dtype=torch.float64)
        for shape in weight_shapes(n_qubits, n_layers).values()
    ]
    return [tensor.requires_grad_() for tensor in [math.pi * features, *weights]]


def outputs_and_gradients(run, tensors: list[torch.Tensor], seed: int = 7):
    outputs = run(*tensors)
    cotangent = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=outputs.dtype)
    return outputs.detach(), torch.autograd.grad((outputs * cotangent).sum(), tensors)


def assert_close(mine, theirs, atol: float) -> None:
    (out, grads), (ref_out, ref_grads) = mine, theirs
    assert out.shape == ref_out.shape
    assert (out - ref_out).abs().max() <= atol, "outputs"
    for name, grad, ref_grad in zip(["features", "rotations", "crx"], grads, ref_grads,
                                    strict=True):
        assert (grad - ref_grad).abs().max() <= atol, name


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize(("n_qubits", "n_layers"), [(8, 2), (8, 8), (MAX_QUBITS, 2)])
def test_wide_circuits_match_default_qubit(n_qubits: int, n_layers: int, readout: str) -> None:
    fast = QuantumLayer(n_qubits, n_layers, readout, init_seed=n_qubits).double()
    reference = QuantumLayer(
        n_qubits, n_layers, readout, backend="default.qubit", init_seed=n_qubits
    ).double()
    assert fast.method == "stages"
    features = inputs(n_qubits, n_layers, 3, seed=n_layers)[0]

    def run(layer):
        return lambda x, *_: layer(x)

    tensors = [features, fast.rotation_weights, fast.crx_weights]
    mine = outputs_and_gradients(run(fast), tensors)
    tensors = [features, reference.rotation_weights, reference.crx_weights]
    theirs = outputs_and_gradients(run(reference), tensors)
    assert_close(mine, theirs, FLOAT64_ATOL)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4, 5, 7, 9, 10, 11])
def test_the_stages_method_matches_the_gate_by_gate_one(n_qubits: int, readout: str) -> None:
    shapes, gates = weight_shapes(n_qubits, 3), ansatz_gates(n_qubits, 3)
    tensors = inputs(n_qubits, 3, 4, seed=n_qubits)
    results = [
        outputs_and_gradients(
            TorchStatevectorExecutor(gates, n_qubits, shapes, readout, method=method), tensors
        )
        for method in ("stages", "gates")
    ]
    assert_close(*results, FLOAT64_ATOL)


def test_float32_stages_stay_close_to_float64() -> None:
    layer = QuantumLayer(10, 4, init_seed=2)
    features = inputs(10, 4, 5, seed=1)[0].detach()
    outputs = layer(features.float())
    outputs.sum().backward()
    assert outputs.dtype == layer.rotation_weights.grad.dtype == torch.float32
    with torch.no_grad():
        expected = layer.double()(features)
    assert torch.allclose(outputs.detach().double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("readout", READOUTS)
def test_the_stages_backward_passes_gradcheck(readout: str) -> None:
    executor = TorchStatevectorExecutor(ansatz_gates(3, 2), 3, weight_shapes(3, 2), readout,
                                        method="stages")
    assert torch.autograd.gradcheck(executor, tuple(inputs(3, 2, 2, seed=0)))


def test_the_method_follows_the_width() -> None:
    def method(n_qubits: int) -> str:
        shapes = weight_shapes(n_qubits, 1)
        return TorchStatevectorExecutor(ansatz_gates(n_qubits, 1), n_qubits, shapes).method

    assert [method(n) for n in range(1, MAX_QUBITS + 1)] == [
        "fused" if n <= MAX_FUSED_QUBITS else "stages" for n in range(1, MAX_QUBITS + 1)
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 4, MAX_QUBITS])
@pytest.mark.parametrize("n_qubits", range(1, MAX_QUBITS + 1))
def test_kronecker_groups_cover_every_wire_once(n_qubits: int, size: int) -> None:
    groups = choose_groups(n_qubits, size)
    wires = [first + k for first, group in groups for k in range(group)]
    assert wires == list(range(n_qubits))
    assert all(group <= size for _, group in groups)


@pytest.mark.parametrize("group_size", [1, 2, 4, 7])
def test_every_kronecker_group_size_gives_the_same_circuit(group_size: int) -> None:
    shapes, gates = weight_shapes(7, 2), ansatz_gates(7, 2)
    tensors = inputs(7, 2, 3, seed=group_size)
    results = [
        outputs_and_gradients(TorchStatevectorExecutor(gates, 7, shapes, method="stages",
                                                       group_size=group_size), tensors),
        outputs_and_gradients(TorchStatevectorExecutor(gates, 7, shapes, method="gates"),
                              tensors),
    ]
    assert_close(*results, FLOAT64_ATOL)
    with pytest.raises(ValueError, match="group size 0 is not allowed"):
        TorchStatevectorExecutor(gates, 7, shapes, group_size=0)


def with_fixed_gates(features, rotation_weights, crx_weights, wires):
    encode(features, wires)
    qml.Hadamard(wires[0])
    qml.CNOT(wires=[wires[2], wires[0]])
    trainable_layers(rotation_weights, crx_weights, wires)
    qml.RX(0.3, wires=wires[1])
    qml.CZ(wires=[wires[1], wires[3]])
    qml.S(wires=wires[2])


@pytest.mark.parametrize("readout", READOUTS)
def test_fixed_and_reversed_controlled_gates_run_in_stages(readout: str) -> None:
    n_qubits, shapes = 4, weight_shapes(4, 2)
    executor = TorchStatevectorExecutor(with_fixed_gates, n_qubits, shapes, readout,
                                        method="stages")

    @qml.qnode(qml.device("default.qubit", wires=n_qubits), interface="torch")
    def reference(features, rotation_weights, crx_weights):
        with_fixed_gates(features, rotation_weights, crx_weights, wires=range(n_qubits))
        measured = measurements(readout, range(n_qubits))
        return tuple(measured) if readout == "expval" else measured[0]

    def stacked(*tensors):
        result = reference(*tensors)
        return torch.stack(list(result), -1) if readout == "expval" else result

    tensors = inputs(n_qubits, 2, 3, seed=4)
    assert_close(outputs_and_gradients(executor, tensors),
                 outputs_and_gradients(stacked, tensors), FLOAT64_ATOL)


def test_circuits_the_stages_cannot_run_fall_back_to_gates() -> None:
    def with_swap(features, rotation_weights, crx_weights, wires):
        encode(features, wires)
        trainable_layers(rotation_weights, crx_weights, wires)
        qml.SWAP(wires=[wires[0], wires[1]])

    shapes = weight_shapes(MAX_FUSED_QUBITS + 1, 1)
    executor = TorchStatevectorExecutor(with_swap, MAX_FUSED_QUBITS + 1, shapes)
    assert executor.method == "gates"
    with pytest.raises(ValueError, match="method='stages' needs"):
        TorchStatevectorExecutor(with_swap, 3, weight_shapes(3, 1), method="stages")
    with pytest.raises(ValueError, match="method='magic' is not known; allowed: "
                       + ", ".join(METHODS)):
        TorchStatevectorExecutor(with_swap, 3, weight_shapes(3, 1), method="magic")


@pytest.mark.parametrize("method", ["fused", "stages"])
def test_hand_written_backward_passes_refuse_a_second_derivative(method: str) -> None:
    executor = TorchStatevectorExecutor(ansatz_gates(3, 1), 3, weight_shapes(3, 1),
                                        method=method)
    features, *weights = inputs(3, 1, 2, seed=0)
    outputs = executor(features, *weights).sum()
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(outputs, features, create_graph=True)
    assert torch.isfinite(torch.autograd.grad(outputs, features)[0]).all()


@pytest.mark.parametrize("n_qubits", [7, MAX_QUBITS])
def test_a_batch_of_one_sample_runs_in_stages(n_qubits: int) -> None:
    # With one sample the batch axis has size 1, and permuted states can be views.
    shapes, gates = weight_shapes(n_qubits, 2), ansatz_gates(n_qubits, 2)
    tensors = inputs(n_qubits, 2, 1, seed=3)
    results = [
        outputs_and_gradients(
            TorchStatevectorExecutor(gates, n_qubits, shapes, "probs", method=method), tensors
        )
        for method in ("stages", "gates")
    ]
    assert_close(*results, FLOAT64_ATOL)
