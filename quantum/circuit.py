"""The ansatz as data: its gate list, weight shapes and read-out sizes, without PennyLane.

:mod:`quantum.ansatz` writes the circuit in PennyLane operations, for the PennyLane
devices; :func:`ansatz_gates` writes the same circuit as a list of gate records from
the gate table (:mod:`quantum.gates`), for the torch executors, so that building and
training a model on the ``"torch"`` backend never imports PennyLane (a Flower ClientApp
starts a fresh process per message). Tests check that the two agree gate by gate.
"""

from __future__ import annotations

from quantum.gates import GateRecord, table_gate
from quantum.names import DEFAULT_ENTANGLER, READOUTS, check_entangler


def weight_shapes(
    n_qubits: int, n_layers: int, entangler: str = DEFAULT_ENTANGLER
) -> dict[str, tuple[int, ...]]:
    """Return the shapes of the ansatz's trainable tensors, keyed by their names.

    Parameters
    ----------
    n_qubits : int
        Number of wires.
    n_layers : int
        Number of trainable layers.
    entangler : str
        One of :data:`quantum.names.ENTANGLERS`; ``"none"`` has no CRX ring and so no
        ``crx_weights``.

    Returns
    -------
    dict[str, tuple[int, ...]]
        ``{"rotation_weights": (n_layers, n_qubits, 3), "crx_weights": (n_layers, n_qubits)}``,
        without ``crx_weights`` for ``entangler="none"``.
    """
    check_entangler(entangler)
    shapes: dict[str, tuple[int, ...]] = {"rotation_weights": (n_layers, n_qubits, 3)}
    if entangler == "crx-ring":
        shapes["crx_weights"] = (n_layers, n_qubits)
    return shapes


def check_readout(readout: str) -> None:
    """Raise ``ValueError`` unless ``readout`` is one of :data:`quantum.names.READOUTS`.

    Parameters
    ----------
    readout : str
        The read-out name to check.
    """
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r} is not supported; allowed: {', '.join(READOUTS)}")


def readout_size(readout: str, n_qubits: int) -> int:
    """Return the number of outputs of a read-out.

    Parameters
    ----------
    readout : str
        One of :data:`quantum.names.READOUTS`.
    n_qubits : int
        Number of wires.

    Returns
    -------
    int
        ``n_qubits`` for ``"expval"``, ``2**n_qubits`` for ``"probs"``.
    """
    check_readout(readout)
    return n_qubits if readout == "expval" else 2**n_qubits


def ansatz_gates(
    n_qubits: int, n_layers: int, entangler: str = DEFAULT_ENTANGLER
) -> list[GateRecord]:
    """The gates of :func:`quantum.ansatz.ansatz` on wires ``0 .. n_qubits - 1``, in order.

    ``RY(features[i])`` on every wire ``i``; then per layer ``l`` RX, RY, RZ on every
    wire (angles ``rotation_weights[l, i, 0..2]``) and, for two or more wires, the ring
    ``CRX(crx_weights[l, i])`` from wire ``i`` to ``(i + 1) % n_qubits``. Weight indices
    are positions in the flat vector of ``rotation_weights`` followed by ``crx_weights``.
    With ``entangler="none"`` the ring is left out (and there are no ``crx_weights``).

    Parameters
    ----------
    n_qubits : int
        Number of wires.
    n_layers : int
        Number of trainable layers.
    entangler : str
        One of :data:`quantum.names.ENTANGLERS`.

    Returns
    -------
    list[GateRecord]
        As :func:`quantum.recording.record_gates` records the PennyLane ansatz.
    """
    check_entangler(entangler)
    gates = [table_gate("RY", (wire,), "feature", wire) for wire in range(n_qubits)]
    n_rotations = 3 * n_qubits * n_layers
    for layer in range(n_layers):
        for wire in range(n_qubits):
            for axis, name in enumerate(("RX", "RY", "RZ")):
                index = (layer * n_qubits + wire) * 3 + axis
                gates.append(table_gate(name, (wire,), "weight", index))
        if n_qubits == 1 or entangler == "none":
            continue
        for wire in range(n_qubits):
            index = n_rotations + layer * n_qubits + wire
            gates.append(table_gate("CRX", (wire, (wire + 1) % n_qubits), "weight", index))
    return gates
