"""The staged path of the statevector executor: wide circuits, fused where they can be.

A circuit of one- and two-qubit gates, its data gates first on distinct wires, runs as

    ``product state -> [stage | controlled gate] ... -> read-out``:

- the encoding is a product state: one 2-vector per wire, ``v_w = exp(i x G_w) |0>``,
  whose Kronecker product is the batch of initial states;
- a *stage* is every single-qubit gate queued since the last two-qubit gate, multiplied
  into one ``2 x 2`` matrix per wire (gates on other wires commute with a two-qubit gate,
  so they may wait). Its wires are split into groups of :data:`GROUP_SIZE`, and a
  group's matrices are multiplied into their Kronecker product, one operation on the
  state. The first stage is folded into the product state's vectors;
- a two-qubit gate must be controlled (identity when its control wire is 0: CRX, CNOT,
  CZ, ...); it is one ``4 x 4`` operation, control first.

The small matrices (rotations from the weights, per-wire products, Kronecker products,
the product state's vectors) are built here by a few batched torch operations under
autograd; :class:`quantum.staged.StagedCircuit` applies the operations to the states,
with a hand-written adjoint backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from quantum.gates import GateRecord
from quantum.staged import StagedCircuit, Step, plan_steps, real_block

GROUP_SIZE = 3
"""Wires per Kronecker group of a stage by default (see :func:`choose_groups`)."""


def choose_groups(n_qubits: int, size: int = GROUP_SIZE) -> tuple[tuple[int, int], ...]:
    """Contiguous ``(first wire, size)`` groups of a stage's Kronecker products.

    A group of ``k`` wires costs one permutation and one matrix product over the state
    with ``2**(k + 1)``-row real blocks: larger groups mean fewer passes over the state
    and more arithmetic per pass. :data:`GROUP_SIZE` was chosen by measurement
    (``python -m benchmarks.quantum_methods``, groups of 2, 3, 4 and 6 wires at 4 to 12
    qubits, 2 and 8 layers): no size was fastest everywhere; 3 was never far from the
    fastest, where 2, 4 and 6 each fell well behind it in some case.

    Parameters
    ----------
    n_qubits : int
        Number of wires.
    size : int
        Wires per group, at least 1.

    Returns
    -------
    tuple[tuple[int, int], ...]
        Groups covering the wires in order, the last one possibly smaller.
    """
    if size < 1:
        raise ValueError(f"group size {size} is not allowed; use at least 1 wire")
    return tuple((start, min(size, n_qubits - start)) for start in range(0, n_qubits, size))


@dataclass(frozen=True)
class StagePlan:
    """A circuit as stages and controlled gates (see the module docstring), in numpy.

    Attributes
    ----------
    n_qubits : int
        Number of wires.
    encoding_columns : numpy.ndarray
        Shape ``(n,)``: the feature column each wire's data gate takes (0 for a wire
        without one, whose eigenvalues are then 0).
    encoding_eigvals : numpy.ndarray
        Shape ``(n, 2)``: the eigenvalues of each wire's data-gate generator.
    encoding_coefficients : numpy.ndarray
        Shape ``(n, 2, 2)``: ``v_w = encoding_coefficients[w] @ exp(i x eigvals[w])``.
    weight_index : numpy.ndarray
        Shape ``(P,)``: flat weight position of each parametric ``2 x 2`` matrix.
    eigvecs, eigvals : numpy.ndarray
        Shapes ``(P, 2, 2)`` and ``(P, 2)``: their generators' spectra.
    constants : numpy.ndarray
        Shape ``(C + 1, 2, 2)``: the fixed ``2 x 2`` matrices, then the identity. The
        table of all small matrices is the parametric ones followed by these.
    stage_index : numpy.ndarray
        Shape ``(S, n, K)``: table rows of each stage's gates per wire, in circuit order,
        padded with the identity.
    controlled : numpy.ndarray
        Shape ``(N, 3)``: control wire, target wire and table row of each controlled gate.
    operations : tuple[tuple[str, int], ...]
        ``("stage", s)`` and ``("controlled", j)`` in circuit order; stage 0 comes first
        and is folded into the product state.
    """

    n_qubits: int
    encoding_columns: np.ndarray
    encoding_eigvals: np.ndarray
    encoding_coefficients: np.ndarray
    weight_index: np.ndarray
    eigvecs: np.ndarray
    eigvals: np.ndarray
    constants: np.ndarray
    stage_index: np.ndarray
    controlled: np.ndarray
    operations: tuple[tuple[str, int], ...]


def _controlled_block(gate: GateRecord) -> tuple[int, int, GateRecord] | None:
    """``(control, target, target block)`` of a controlled two-qubit gate, else ``None``.

    The block is a one-wire record of the gate's action on the target when the control
    is 1: the generator's (or the fixed matrix's) control-1 block.
    """
    if gate.source == "constant":
        full = gate.fixed_matrix()
        reference = np.eye(4)
    else:
        eigvecs, eigvals = gate.spectrum()
        full = (eigvecs * eigvals) @ eigvecs.conj().T
        reference = np.zeros((4, 4))
    for position in (0, 1):
        # Basis indices with this position's bit 0 and 1 (first wire most significant).
        off, on = ([0, 1], [2, 3]) if position == 0 else ([0, 2], [1, 3])
        if np.allclose(full[off][:, off], reference[:2, :2], atol=1e-12) and np.allclose(
            full[off][:, on], 0, atol=1e-12
        ) and np.allclose(full[on][:, off], 0, atol=1e-12):
            block = full[on][:, on]
            target = gate.wires[1 - position]
            if gate.source == "constant":
                record = GateRecord(gate.name, (target,), "constant", -1, matrix=block)
            else:
                values, vectors = np.linalg.eigh(block)
                record = GateRecord(gate.name, (target,), gate.source, gate.index, vectors, values)
            return gate.wires[position], target, record
    return None


class _Table:
    """The ``2 x 2`` matrices of a plan: parametric ones first, then fixed ones."""

    def __init__(self) -> None:
        self.parametric: list[GateRecord] = []
        self.fixed: list[np.ndarray] = []

    def add(self, gate: GateRecord) -> tuple[str, int]:
        if gate.source == "constant":
            self.fixed.append(gate.fixed_matrix())
            return "fixed", len(self.fixed) - 1
        self.parametric.append(gate)
        return "parametric", len(self.parametric) - 1

    def row(self, entry: tuple[str, int]) -> int:
        kind, position = entry
        return position if kind == "parametric" else len(self.parametric) + position


def _encoding_arrays(
    encoding: Sequence[GateRecord], n_qubits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-wire columns, eigenvalues and coefficients of a product-state encoding."""
    columns = np.zeros(n_qubits, dtype=np.int64)
    eigvals = np.zeros((n_qubits, 2))
    coefficients = np.zeros((n_qubits, 2, 2), dtype=np.complex128)
    coefficients[:, 0, 0] = 1.0  # |0> on a wire without a data gate
    seen: set[int] = set()
    for gate in encoding:
        if len(gate.wires) != 1 or gate.wires[0] in seen:
            return None
        (wire,) = gate.wires
        seen.add(wire)
        vectors, values = gate.spectrum()
        columns[wire], eigvals[wire] = gate.index, values
        # exp(i x G)|0> = sum_j V[:, j] exp(i x lambda_j) conj(V[0, j])
        coefficients[wire] = vectors * vectors[0].conj()[None, :]
    return columns, eigvals, coefficients


def build_stage_plan(
    encoding: Sequence[GateRecord], gates: Sequence[GateRecord], n_qubits: int
) -> StagePlan | None:
    """Plan a circuit as stages and controlled gates, or ``None`` if it does not fit.

    Parameters
    ----------
    encoding : Sequence[GateRecord]
        The leading data gates; they must act on one wire each, no wire twice.
    gates : Sequence[GateRecord]
        The rest, in circuit order: one-qubit gates, and controlled two-qubit gates,
        none with a data angle.
    n_qubits : int
        Number of wires.

    Returns
    -------
    StagePlan or None
        ``None`` for re-uploading, gates on three or more wires, or two-qubit gates that
        are not controlled.
    """
    encoded = _encoding_arrays(encoding, n_qubits)
    table = _Table()
    scheduled = _schedule(gates, n_qubits, table)
    if encoded is None or scheduled is None:
        return None
    stages, controlled, operations = scheduled
    spectra = [gate.spectrum() for gate in table.parametric]
    return StagePlan(
        n_qubits=n_qubits,
        encoding_columns=encoded[0],
        encoding_eigvals=encoded[1],
        encoding_coefficients=encoded[2],
        weight_index=np.array([gate.index for gate in table.parametric], dtype=np.int64),
        eigvecs=np.array([vectors for vectors, _ in spectra]).reshape(-1, 2, 2),
        eigvals=np.array([values for _, values in spectra]).reshape(-1, 2),
        constants=np.array([*table.fixed, np.eye(2)]).reshape(-1, 2, 2),
        stage_index=_stage_index(stages, table, n_qubits),
        controlled=np.array(
            [(c, t, table.row(entry)) for c, t, entry in controlled], dtype=np.int64
        ).reshape(-1, 3),
        operations=tuple(operations),
    )


_Entry = tuple[str, int]  # a _Table entry


def _schedule(
    gates: Sequence[GateRecord], n_qubits: int, table: _Table
) -> tuple[list[list[list[_Entry]]], list[tuple[int, int, _Entry]], list[tuple[str, int]]] | None:
    """Stages (per wire, the table entries of its gates), controlled gates and the order
    of both; stage 0, folded into the product state, holds the gates before the first
    two-qubit gate. ``None`` for a gate the staged path cannot run."""
    pending: list[list[_Entry]] = [[] for _ in range(n_qubits)]
    stages: list[list[list[_Entry]]] = [[[] for _ in range(n_qubits)]]
    controlled: list[tuple[int, int, _Entry]] = []
    operations: list[tuple[str, int]] = [("stage", 0)]

    def flush() -> None:
        if not controlled:
            stages[0] = pending
        elif any(pending):
            operations.append(("stage", len(stages)))
            stages.append(pending)

    for gate in gates:
        if gate.source == "feature" or len(gate.wires) > 2:
            return None
        if len(gate.wires) == 1:
            pending[gate.wires[0]].append(table.add(gate))
            continue
        block = _controlled_block(gate)
        if block is None:
            return None
        flush()
        pending = [[] for _ in range(n_qubits)]
        control, target, record = block
        operations.append(("controlled", len(controlled)))
        controlled.append((control, target, table.add(record)))
    flush()
    return stages, controlled, operations


def _stage_index(stages: list[list[list[_Entry]]], table: _Table, n_qubits: int) -> np.ndarray:
    """``(S, n, K)`` table rows of every stage's gates per wire, padded with the identity."""
    identity_row = len(table.parametric) + len(table.fixed)
    depth = max(1, max(len(wire) for stage in stages for wire in stage))
    index = np.full((len(stages), n_qubits, depth), identity_row, dtype=np.int64)
    for s, stage in enumerate(stages):
        for wire, entries in enumerate(stage):
            index[s, wire, : len(entries)] = [table.row(entry) for entry in entries]
    return index


_CONTROLLED_SLOTS = (10, 11, 14, 15)
"""Flat positions of the target block in a controlled gate's ``4 x 4`` (control first)."""


@dataclass(frozen=True)
class StageTensors:
    """A :class:`StagePlan` as tensors on one device, in one precision.

    The operations are :class:`quantum.staged.Step` s: source 0 is the controlled gates
    (``4 x 4``, control first), source ``1 + g`` Kronecker group ``g`` of every stage
    but the folded first. ``final_order`` is the wire order of the final state's axes;
    ``readout`` maps its probabilities ``|s|^2`` to the outputs (``None``: the
    probabilities are the outputs).
    """

    n_qubits: int
    encoding_columns: torch.Tensor
    encoding_eigvals: torch.Tensor
    encoding_coefficients: torch.Tensor
    weight_index: torch.Tensor
    eigvecs: torch.Tensor
    eigvecs_h: torch.Tensor
    eigvals: torch.Tensor
    constants: torch.Tensor
    stage_index: torch.Tensor
    controlled_rows: torch.Tensor
    controlled_slots: torch.Tensor
    controlled_base: torch.Tensor
    groups: tuple[tuple[int, int], ...]
    steps: tuple[Step, ...]
    final_order: tuple[int, ...]
    final_axes: tuple[int, ...]
    readout: torch.Tensor | None

    @classmethod
    def from_plan(
        cls,
        plan: StagePlan,
        readout: np.ndarray | None,
        device: torch.device,
        dtype: torch.dtype,
        group_size: int = GROUP_SIZE,
    ) -> StageTensors:
        """The plan's arrays on ``device``, complex ones in ``dtype``.

        ``readout`` maps probabilities in wire order 0..n-1 to the outputs, or is ``None``;
        ``group_size`` is the stages' Kronecker group size (:func:`choose_groups`).
        """
        real = torch.float64 if dtype == torch.complex128 else torch.float32

        def tensor(array: np.ndarray, tensor_dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=tensor_dtype, device=device)

        n_qubits, groups = plan.n_qubits, choose_groups(plan.n_qubits, group_size)
        steps, final_order = plan_steps(_operations(plan, groups), n_qubits)
        if readout is not None:
            readout = readout[_canonical_rows(final_order)]
        base = np.zeros((len(plan.controlled), 4, 4))
        base[:, [0, 1], [0, 1]] = 1.0
        return cls(
            n_qubits=n_qubits,
            encoding_columns=tensor(plan.encoding_columns, torch.long),
            encoding_eigvals=tensor(plan.encoding_eigvals, real),
            encoding_coefficients=tensor(plan.encoding_coefficients, dtype),
            weight_index=tensor(plan.weight_index, torch.long),
            eigvecs=tensor(plan.eigvecs, dtype),
            eigvecs_h=tensor(plan.eigvecs.conj().transpose(0, 2, 1), dtype),
            eigvals=tensor(plan.eigvals, real),
            constants=tensor(plan.constants, dtype),
            stage_index=tensor(plan.stage_index, torch.long),
            controlled_rows=tensor(plan.controlled[:, 2], torch.long),
            controlled_slots=tensor(
                np.tile(_CONTROLLED_SLOTS, (len(plan.controlled), 1)), torch.long
            ),
            controlled_base=tensor(base, dtype),
            groups=groups,
            steps=steps,
            final_order=final_order,
            final_axes=tuple(final_order.index(wire) for wire in range(n_qubits)),
            readout=None if readout is None else tensor(readout, real),
        )


def _operations(
    plan: StagePlan, groups: tuple[tuple[int, int], ...]
) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(source, row, wires)`` of every operation after the folded first stage: source
    0 the controlled gates, ``1 + g`` Kronecker group ``g`` of the stages."""
    operations = []
    for kind, index in plan.operations[1:]:
        if kind == "stage":
            for g, (first, size) in enumerate(groups):
                operations.append((1 + g, index - 1, tuple(range(first, first + size))))
        else:
            control, target, _ = plan.controlled[index]
            operations.append((0, index, (int(control), int(target))))
    return operations


def _canonical_rows(order: Sequence[int]) -> np.ndarray:
    """For each basis state of wires in ``order`` (first most significant), its index in
    wire order 0..n-1."""
    n_qubits = len(order)
    bits = (np.arange(2**n_qubits)[:, None] >> np.arange(n_qubits - 1, -1, -1)) & 1
    return (bits << (n_qubits - 1 - np.array(order))).sum(1)


def _kron(matrices: torch.Tensor) -> torch.Tensor:
    """Kronecker product over axis 1 of ``(S, k, 2, 2)``, first matrix most significant.

    Each step is an outer product as a batched matrix product and a reshape: a
    broadcast product would have autograd sum complex numbers over axes of size 2, which
    torch does slowly.
    """
    product = matrices[:, 0]
    for position in range(1, matrices.shape[1]):
        count, dim = len(product), product.shape[-1]
        outer = product.reshape(count, dim * dim, 1) @ matrices[:, position].reshape(count, 1, 4)
        product = outer.view(count, dim, dim, 2, 2).transpose(2, 3).reshape(
            count, 2 * dim, 2 * dim
        )
    return product


def run_stages(
    features: torch.Tensor, weights: Sequence[torch.Tensor], tensors: StageTensors
) -> torch.Tensor:
    """The circuit's read-out for a batch: small matrices under autograd, then
    :class:`StagedCircuit`.

    Parameters
    ----------
    features : torch.Tensor
        Shape ``(batch, n_features)``, real.
    weights : Sequence[torch.Tensor]
        The weight tensors, flattened and concatenated in order.
    tensors : StageTensors
        The plan, in the features' precision.

    Returns
    -------
    torch.Tensor
        Shape ``(batch, out_features)``, the features' dtype.
    """
    flat = torch.cat([w.reshape(-1) for w in weights])
    if flat.dtype != features.dtype:
        flat = flat.to(features.dtype)
    table, per_wire = _small_matrices(flat, tensors)
    encoded = features[:, tensors.encoding_columns, None] * tensors.encoding_eigvals
    encoded = torch.polar(torch.ones_like(encoded), encoded)  # (B, n, 2)
    # The first stage folded into the encoding: v_w = M_w C_w exp(i x lambda_w).
    coefficients = per_wire[0] @ tensors.encoding_coefficients
    vectors = (coefficients @ encoded[..., None]).squeeze(-1)
    groups = [_kron(per_wire[1:, first : first + size]) for first, size in tensors.groups]
    targets = table[tensors.controlled_rows].reshape(-1, 4)
    gates = tensors.controlled_base.reshape(-1, 16).scatter(1, tensors.controlled_slots, targets)
    blocks = [real_block(matrices) for matrices in (gates.view(-1, 4, 4), *groups)]
    return StagedCircuit.apply(vectors, tensors, *blocks)


def _small_matrices(
    flat_weights: torch.Tensor, tensors: StageTensors
) -> tuple[torch.Tensor, torch.Tensor]:
    """The table of ``2 x 2`` matrices (parametric, fixed, identity) and every stage's
    per-wire product ``(S, n, 2, 2)``."""
    angles = flat_weights[tensors.weight_index]
    phases = torch.polar(torch.ones_like(tensors.eigvals), angles[:, None] * tensors.eigvals)
    parametric = (tensors.eigvecs * phases[:, None, :]) @ tensors.eigvecs_h
    table = torch.cat([parametric, tensors.constants])
    per_gate = table[tensors.stage_index]  # (S, n, K, 2, 2), in circuit order along K
    per_wire = per_gate[:, :, 0]
    for position in range(1, per_gate.shape[2]):
        per_wire = per_gate[:, :, position] @ per_wire
    return table, per_wire
