"""Gates as data: recorded gates, the ansatz's gate table, and index maps into the state.

No PennyLane here. A circuit reaches the torch executors as a list of :class:`GateRecord`:
either recorded from PennyLane operations (:func:`quantum.recording.record_gates`) or
written from the small gate table below (:func:`quantum.circuit.ansatz_gates`), which
is how the models run without importing PennyLane. Tests check the table against
PennyLane (``qml.matrix`` and the recorded ansatz, gate by gate).

Conventions are PennyLane's: a parametric gate is ``exp(i t G)`` of its generator ``G``
(``RX(t) = exp(-i t X / 2)``), and the first of a gate's wires is the most significant
bit of its matrix, as wire 0 is of a basis-state index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

COMPLEX_DTYPES = {torch.float32: torch.complex64, torch.float64: torch.complex128}
"""The complex dtype of a state for real features of each precision."""

_PAULI_X = np.array([[0, 1], [1, 0]], dtype=np.complex128)
_PAULI_Y = np.array([[0, -1j], [1j, 0]], dtype=np.complex128)
_PAULI_Z = np.array([[1, 0], [0, -1]], dtype=np.complex128)
_ONE = np.array([[0, 0], [0, 1]], dtype=np.complex128)  # |1><1|, the control projector

GENERATORS: dict[str, np.ndarray] = {
    "RX": -0.5 * _PAULI_X,
    "RY": -0.5 * _PAULI_Y,
    "RZ": -0.5 * _PAULI_Z,
    "CRX": -0.5 * np.kron(_ONE, _PAULI_X),
}
"""PennyLane's generator of every gate the ansatz uses: ``qml.matrix(op) = exp(i t G)``."""


def check_features(features: torch.Tensor, n_qubits: int) -> torch.dtype:
    """Check a batch of circuit inputs and return the complex dtype it runs in.

    Raises
    ------
    ValueError
        Unless ``features`` is ``float32`` or ``float64`` of shape ``(batch, n_qubits)``.
    """
    if features.dtype not in COMPLEX_DTYPES:
        raise ValueError(
            f"features dtype {features.dtype} is not supported; use float32 or float64"
        )
    if features.ndim != 2 or features.shape[1] != n_qubits:
        raise ValueError(
            f"features must have shape (batch, {n_qubits}), got {tuple(features.shape)}"
        )
    return COMPLEX_DTYPES[features.dtype]


@dataclass(frozen=True)
class GateRecord:
    """One recorded gate of the circuit.

    Attributes
    ----------
    name : str
        PennyLane operation name, e.g. ``"CRX"``.
    wires : tuple[int, ...]
        Wire indices, first wire most significant in ``matrix``.
    source : str
        ``"feature"``, ``"weight"`` or ``"constant"``: where the angle comes from.
    index : int
        Feature column or flat weight position of the angle; ``-1`` for constant gates.
    eigvecs, eigvals : numpy.ndarray or None
        Spectral form of the generator: ``matrix(t) = V diag(exp(i t eigvals)) V^H``.
    matrix : numpy.ndarray or None
        The matrix of a gate without parameters.
    """

    name: str
    wires: tuple[int, ...]
    source: str
    index: int
    eigvecs: np.ndarray | None = None
    eigvals: np.ndarray | None = None
    matrix: np.ndarray | None = None

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """``(eigvecs, eigvals)`` of a parametric gate's generator."""
        if self.eigvecs is None or self.eigvals is None:
            raise ValueError(f"gate {self.name} has no parameter, so no generator spectrum")
        return self.eigvecs, self.eigvals

    def fixed_matrix(self) -> np.ndarray:
        """The matrix of a gate without parameters."""
        if self.matrix is None:
            raise ValueError(f"gate {self.name} has a parameter, so no fixed matrix")
        return self.matrix

    def matrix_at(self, angle: float) -> np.ndarray:
        """The gate's matrix at ``angle`` (a constant gate ignores it)."""
        if self.source == "constant":
            return self.fixed_matrix()
        eigvecs, eigvals = self.spectrum()
        return (eigvecs * np.exp(1j * angle * eigvals)) @ eigvecs.conj().T


def spectral_gate(generator: np.ndarray, name: str, wires: Sequence[int], source: str,
                  index: int) -> GateRecord:
    """A parametric gate ``exp(i t generator)`` as a record (its generator diagonalised).

    Parameters
    ----------
    generator : numpy.ndarray
        Hermitian, ``2**len(wires)`` square.
    name : str
        The gate's PennyLane name.
    wires : Sequence[int]
        Its wires, first most significant.
    source : str
        ``"feature"`` or ``"weight"``.
    index : int
        The feature column or flat weight position of its angle.
    """
    eigvals, eigvecs = np.linalg.eigh(generator)
    wires = tuple(int(wire) for wire in wires)
    return GateRecord(name, wires, source, index, eigvecs=eigvecs, eigvals=eigvals)


def table_gate(name: str, wires: Sequence[int], source: str, index: int) -> GateRecord:
    """A gate of :data:`GENERATORS` by name, as :func:`quantum.recording.record_gates`
    would record it.

    Raises
    ------
    ValueError
        For a gate the table does not hold, or the wrong number of wires.
    """
    if name not in GENERATORS:
        raise ValueError(f"gate {name!r} is not in the gate table; known: {', '.join(GENERATORS)}")
    generator = GENERATORS[name]
    if generator.shape[0] != 2 ** len(wires):
        raise ValueError(f"gate {name} acts on {generator.shape[0].bit_length() - 1} wires, "
                         f"got wires {list(wires)}")
    return spectral_gate(generator, name, wires, source, index)


def wire_embedding(wires: Sequence[int], n_qubits: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays that embed a gate on ``wires`` into the ``2**n_qubits`` state space.

    Parameters
    ----------
    wires : Sequence[int]
        The gate's wires, first wire most significant in the gate's matrix.
    n_qubits : int
        Number of wires of the circuit; wire 0 is the most significant bit.

    Returns
    -------
    sub : numpy.ndarray
        Shape ``(2**n_qubits,)``: the gate-local index of each basis state.
    partner : numpy.ndarray
        Shape ``(2**n_qubits, 2**len(wires))``: ``partner[r, j]`` is basis state ``r``
        with the gate's bits replaced by local index ``j``. Applying matrix ``m`` is then
        ``new[r] = sum_j m[sub[r], j] * state[partner[r, j]]``.
    """
    n_gate = len(wires)
    basis = np.arange(2**n_qubits)
    shifts = [n_qubits - 1 - wire for wire in wires]
    sub = np.zeros_like(basis)
    gate_mask = 0
    for position, shift in enumerate(shifts):
        sub |= ((basis >> shift) & 1) << (n_gate - 1 - position)
        gate_mask |= 1 << shift
    local = np.arange(2**n_gate)
    spread = np.zeros_like(local)
    for position, shift in enumerate(shifts):
        spread |= ((local >> (n_gate - 1 - position)) & 1) << shift
    partner = (basis & ~gate_mask)[:, None] | spread[None, :]
    return sub, partner


def embed_matrix(matrix: np.ndarray, wires: Sequence[int], n_qubits: int) -> np.ndarray:
    """Return the full-space matrix of a gate (identity on the other wires)."""
    sub, partner = wire_embedding(wires, n_qubits)
    same_rest = partner[:, :1] == partner[:, :1].T
    return matrix[sub[:, None], sub[None, :]] * same_rest


def circuit_gates(
    circuit: Callable[..., None] | Sequence[GateRecord],
    n_qubits: int,
    weight_shapes: Mapping[str, tuple[int, ...]],
) -> list[GateRecord]:
    """The gates of a circuit given as gate records, or as a PennyLane circuit function.

    Parameters
    ----------
    circuit : Callable or Sequence[GateRecord]
        Gate records (e.g. :func:`quantum.circuit.ansatz_gates`), used as they are, or a
        circuit function, recorded by :func:`quantum.recording.record_gates` (which
        imports PennyLane).
    n_qubits : int
        Number of wires.
    weight_shapes : Mapping[str, tuple[int, ...]]
        Shapes of the weight tensors, in the order the circuit takes them.

    Returns
    -------
    list[GateRecord]
        The gates in circuit order.

    Raises
    ------
    ValueError
        If a gate record names a wire outside ``0 .. n_qubits - 1``.
    """
    if callable(circuit):
        from quantum.recording import record_gates  # imports PennyLane: only when asked

        return record_gates(circuit, n_qubits, weight_shapes)
    gates = list(circuit)
    for gate in gates:
        if not all(0 <= wire < n_qubits for wire in gate.wires):
            raise ValueError(
                f"gate {gate.name} on wires {list(gate.wires)} is outside the "
                f"{n_qubits} wires 0..{n_qubits - 1}"
            )
    return gates
