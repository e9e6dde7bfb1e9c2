"""Recording a circuit written in PennyLane operations, for the torch executors.

The executors hold no copy of the circuit. :func:`record_gates` records the operations
the circuit function queues (``qml.tape.make_qscript``), with probe values in place of
the inputs, and so learns every gate's wires and which feature or weight entry is its
angle. A parametric gate is applied through the spectral form of its PennyLane generator,

    ``qml.matrix(op)(t) = exp(i t G) = V diag(exp(i t lambda)) V^H``,  ``G = op.generator()``,

checked against ``qml.matrix(op)`` when the gate is recorded; gates without parameters
use ``qml.matrix(op)`` itself. Every recorded gate must be unitary (all PennyLane gates
are); noise channels are for the ``default.mixed`` device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import prod

import numpy as np
import pennylane as qml
import torch

# Re-exported: these lived here before the gates were also written as data.
from quantum.gates import (
    COMPLEX_DTYPES,
    GateRecord,
    check_features,
    embed_matrix,
    wire_embedding,
)

__all__ = [
    "COMPLEX_DTYPES", "GateRecord", "check_features", "embed_matrix", "record_gates",
    "wire_embedding",
]

# Two affine probe encodings of the input positions; a gate angle that is not exactly one
# input entry (for example ``2 * x`` or ``x + 1``) cannot match both.
_PROBES = ((1.0, 0.5), (3.0, 7.25))
_GENERATOR_CHECK_ANGLES = (0.37, -2.1)


def record_gates(
    circuit: Callable[..., None],
    n_qubits: int,
    weight_shapes: Mapping[str, tuple[int, ...]],
) -> list[GateRecord]:
    """Record the gates a circuit function queues and where each gate's angle comes from.

    Parameters
    ----------
    circuit : Callable
        Called as ``circuit(features, *weights, wires=range(n_qubits))``; it must queue
        PennyLane gates whose parameters are fixed numbers, or a single entry of
        ``features`` (shape ``(n_qubits,)``) or of a weight tensor, passed unchanged.
    n_qubits : int
        Number of wires.
    weight_shapes : Mapping[str, tuple[int, ...]]
        Shapes of the weight tensors, in the order the circuit takes them.

    Returns
    -------
    list[GateRecord]
        One record per gate, in circuit order.

    Raises
    ------
    ValueError
        If a gate's angle is not an input entry or a fixed number, a gate with input
        angles takes more than one parameter, or its matrix is not ``exp(i t G)`` of its
        generator.
    """
    sizes = [n_qubits] + [prod(shape) for shape in weight_shapes.values()]
    shapes = [(n_qubits,)] + list(weight_shapes.values())
    recordings = []
    for scale, offset in _PROBES:
        inputs, start = [], 0
        for size, shape in zip(sizes, shapes, strict=True):
            ids = torch.arange(start, start + size, dtype=torch.float64)
            inputs.append((scale * ids + offset).reshape(shape))
            start += size
        tape = qml.tape.make_qscript(circuit)(*inputs, wires=range(n_qubits))
        recordings.append(tape.operations)

    first, second = recordings
    if [(op.name, op.wires.tolist()) for op in first] != [
        (op.name, op.wires.tolist()) for op in second
    ]:
        raise ValueError("the circuit's gates depend on its input values; cannot record it")
    return [
        _record_gate(op, other, n_features=sizes[0], n_inputs=sum(sizes))
        for op, other in zip(first, second, strict=True)
    ]


def _record_gate(
    op: qml.operation.Operator, other: qml.operation.Operator, n_features: int, n_inputs: int
) -> GateRecord:
    """Record one gate from its two probe recordings ``op`` and ``other``."""
    wires = tuple(int(wire) for wire in op.wires)
    if all(float(mine) == float(theirs) for mine, theirs in zip(op.data, other.data, strict=True)):
        # No parameters, or fixed ones (e.g. RX(0.3)): the same matrix for every input.
        return GateRecord(op.name, wires, "constant", -1, matrix=qml.matrix(op))
    if op.num_params > 1:
        raise ValueError(
            f"gate {op.name} has {op.num_params} parameters; the torch executor supports "
            "gates with one angle (RX, RY, RZ, CRX, ...) or none"
        )
    (scale_a, offset_a), (scale_b, offset_b) = _PROBES
    position = (float(op.data[0]) - offset_a) / scale_a
    index = round(position)
    expected_other = scale_b * index + offset_b
    if (
        abs(position - index) > 1e-9
        or abs(float(other.data[0]) - expected_other) > 1e-9
        or not 0 <= index < n_inputs
    ):
        raise ValueError(
            f"the angle of gate {op.name} on wires {list(wires)} is not a single entry of "
            "the features or weights; the torch executor needs angles passed unchanged"
        )
    source = "feature" if index < n_features else "weight"
    index = index if source == "feature" else index - n_features

    generator = qml.matrix(op.generator(), wire_order=op.wires)
    eigvals, eigvecs = np.linalg.eigh(generator)
    for angle in _GENERATOR_CHECK_ANGLES:
        spectral = (eigvecs * np.exp(1j * angle * eigvals)) @ eigvecs.conj().T
        reference = qml.matrix(qml.ops.functions.bind_new_parameters(op, [angle]))
        if not np.allclose(spectral, reference, atol=1e-12, rtol=0.0):
            raise ValueError(
                f"gate {op.name}'s matrix is not exp(i t G) of its generator; "
                "the torch executor cannot run it"
            )
    return GateRecord(op.name, wires, source, index, eigvecs=eigvecs, eigvals=eigvals)
