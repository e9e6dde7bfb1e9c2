"""The variational circuit, written once in PennyLane operations.

PennyLane devices run these functions through a QNode. The torch executors run the same
circuit from its gate list, :func:`quantum.circuit.ansatz_gates`, written without
PennyLane so that the ``"torch"`` backend never imports it; tests check that list against
the operations these functions queue. Change both together.

Conventions are PennyLane's: ``RX(t) = exp(-i t X / 2)`` and likewise for RY and RZ,
``CRX`` rotates the target when the control is 1, and wire 0 is the most significant
bit of a computational-basis index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pennylane as qml

# Re-exported: these lived here before the ansatz was also written as data.
from quantum.circuit import check_readout, readout_size, weight_shapes
from quantum.names import READOUTS

__all__ = [
    "READOUTS", "ansatz", "check_readout", "encode", "measurements", "readout_size",
    "trainable_layers", "weight_shapes",
]


def encode(features: Any, wires: Sequence[int]) -> None:
    """Angle-encode one feature per wire with ``RY(feature_i)`` on wire ``i``.

    Parameters
    ----------
    features : tensor_like
        Shape ``(..., len(wires))``. Leading dimensions are a batch, passed to PennyLane
        as parameter broadcasting.
    wires : Sequence[int]
        The wires, one per feature.
    """
    for index, wire in enumerate(wires):
        qml.RY(features[..., index], wires=wire)


def trainable_layers(
    rotation_weights: Any, crx_weights: Any | None, wires: Sequence[int]
) -> None:
    """Apply the trainable layers: RX, RY, RZ on every wire, then a ring of CRX gates.

    Parameters
    ----------
    rotation_weights : tensor_like
        Shape ``(n_layers, n_qubits, 3)``: the RX, RY and RZ angles of each wire.
    crx_weights : tensor_like or None
        Shape ``(n_layers, n_qubits)``: ``crx_weights[l, i]`` is the angle of
        ``CRX`` with control ``i`` and target ``(i + 1) % n_qubits``. The ring is skipped
        for one qubit; for two qubits it is the pair 0 -> 1, 1 -> 0. ``None``: no ring
        at all (``entangler="none"``).
    wires : Sequence[int]
        The circuit's wires.
    """
    n_qubits = len(wires)
    for layer in range(len(rotation_weights)):
        for index, wire in enumerate(wires):
            qml.RX(rotation_weights[layer, index, 0], wires=wire)
            qml.RY(rotation_weights[layer, index, 1], wires=wire)
            qml.RZ(rotation_weights[layer, index, 2], wires=wire)
        if n_qubits == 1 or crx_weights is None:
            continue
        for index in range(n_qubits):
            target = wires[(index + 1) % n_qubits]
            qml.CRX(crx_weights[layer, index], wires=[wires[index], target])


def ansatz(
    features: Any, rotation_weights: Any, crx_weights: Any | None, wires: Sequence[int]
) -> None:
    """Encode the features, then apply the trainable layers.

    Parameters
    ----------
    features : tensor_like
        Shape ``(..., n_qubits)``; see :func:`encode`.
    rotation_weights : tensor_like
        Shape ``(n_layers, n_qubits, 3)``; see :func:`trainable_layers`.
    crx_weights : tensor_like or None
        Shape ``(n_layers, n_qubits)``, or ``None`` for no CRX ring; see
        :func:`trainable_layers`.
    wires : Sequence[int]
        The circuit's wires.
    """
    encode(features, wires)
    trainable_layers(rotation_weights, crx_weights, wires)


def measurements(readout: str, wires: Sequence[int]) -> list[Any]:
    """Return the PennyLane measurement processes of a read-out.

    Parameters
    ----------
    readout : str
        ``"expval"`` gives one ``expval(PauliZ(w))`` per wire; ``"probs"`` gives
        ``probs(wires)`` with wire 0 as the most significant bit.
    wires : Sequence[int]
        The circuit's wires.

    Returns
    -------
    list
        The measurement processes, to be returned from a QNode.
    """
    check_readout(readout)
    if readout == "expval":
        return [qml.expval(qml.PauliZ(wire)) for wire in wires]
    return [qml.probs(wires=list(wires))]
