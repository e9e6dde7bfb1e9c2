"""A batched torch statevector executor for circuits written in PennyLane operations.

The executor holds no copy of the circuit. It records the operations the circuit function
queues (``qml.tape.make_qscript``), with probe values in place of the inputs, and so
learns every gate's wires and which feature or weight entry is its angle. A parametric
gate is applied through the spectral form of its PennyLane generator,

    ``qml.matrix(op)(t) = exp(i t G) = V diag(exp(i t lambda)) V^H``,  ``G = op.generator()``,

checked against ``qml.matrix(op)`` when the gate is recorded; gates without parameters
use ``qml.matrix(op)`` itself.

Fused path (the default when the data gates come first). Gates are scheduled into
moments, sets of gates on disjoint wires, which commute. A moment of rotations is
``W D W^H``: ``W`` is the tensor product of its gates' eigenvectors and ``D`` is diagonal
with phases ``exp(i sum_g t_g lambda_g)``, whose exponents are linear in the angles. With
the angle encoding as moment ``E`` and the trainable moments ``0 .. M-1``,

    ``state = L D_{M-1} T_{M-1} ... D_1 T_1 D_0 T_0 D_E(x) psi_0``,

where ``T_m = W_m^H C W_{m-1}`` (``C``: gates without parameters in between), ``L`` and
``psi_0 = W_E^H |0>`` are constant and precomputed. A forward pass gets all phases from
two matmuls, builds the data-independent unitary ``U`` (one ``2**n x 2**n`` matrix per
moment, multiplied in circuit order), then ``state = (D_E(x) psi_0) @ U^T``, squares the
amplitudes and maps them to ``probs`` or, through a fixed ``+/-1`` sign matrix, to
``expval``. Its backward pass is written out (adjoint method, see ``_FusedCircuit``), so
a training step costs a few dozen small tensor operations.

For more than :data:`MAX_FUSED_QUBITS` qubits, or when data gates follow trainable ones
(re-uploading), gates are applied one by one to the batch of states instead, through
precomputed index tensors that embed a gate into the full space, and autograd
differentiates.

Every recorded gate must be unitary (all PennyLane gates are); noise channels are for
the ``default.mixed`` device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Protocol

import numpy as np
import pennylane as qml
import torch

from quantum.ansatz import check_readout, readout_size

MAX_FUSED_QUBITS = 6
"""Largest width for which the trainable part is fused into one unitary by default."""

_COMPLEX_DTYPES = {torch.float32: torch.complex64, torch.float64: torch.complex128}
# Two affine probe encodings of the input positions; a gate angle that is not exactly one
# input entry (for example ``2 * x`` or ``x + 1``) cannot match both.
_PROBES = ((1.0, 0.5), (3.0, 7.25))
_GENERATOR_CHECK_ANGLES = (0.37, -2.1)


def check_features(features: torch.Tensor, n_qubits: int) -> torch.dtype:
    """Check a batch of circuit inputs and return the complex dtype it runs in.

    Raises
    ------
    ValueError
        Unless ``features`` is ``float32`` or ``float64`` of shape ``(batch, n_qubits)``.
    """
    if features.dtype not in _COMPLEX_DTYPES:
        raise ValueError(
            f"features dtype {features.dtype} is not supported; use float32 or float64"
        )
    if features.ndim != 2 or features.shape[1] != n_qubits:
        raise ValueError(
            f"features must have shape (batch, {n_qubits}), got {tuple(features.shape)}"
        )
    return _COMPLEX_DTYPES[features.dtype]


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


def _embed_matrix(matrix: np.ndarray, wires: Sequence[int], n_qubits: int) -> np.ndarray:
    """Return the full-space matrix of a gate (identity on the other wires)."""
    sub, partner = wire_embedding(wires, n_qubits)
    same_rest = partner[:, :1] == partner[:, :1].T
    return matrix[sub[:, None], sub[None, :]] * same_rest


def schedule_moments(gates: Sequence[GateRecord]) -> list[list[int]]:
    """Group gates into moments: sets of gates on disjoint wires, in a valid circuit order.

    Each gate goes to the first moment after the last one that touches any of its wires
    (gates on disjoint wires commute, so this keeps the circuit's unitary). Moments hold
    either only parametric gates or only gates without parameters.

    Parameters
    ----------
    gates : Sequence[GateRecord]
        Gates in circuit order.

    Returns
    -------
    list[list[int]]
        Gate positions per moment, moments in circuit order.
    """
    moments: list[list[int]] = []
    kinds: list[bool] = []
    last_moment: dict[int, int] = {}
    for position, gate in enumerate(gates):
        parametric = gate.source != "constant"
        slot = 1 + max((last_moment.get(wire, -1) for wire in gate.wires), default=-1)
        while slot < len(moments) and kinds[slot] != parametric:
            slot += 1
        if slot == len(moments):
            moments.append([])
            kinds.append(parametric)
        moments[slot].append(position)
        for wire in gate.wires:
            last_moment[wire] = slot
    return moments


@dataclass(frozen=True)
class FusedPlan:
    """Precomputed factors of the fused circuit (see the module docstring).

    Attributes
    ----------
    feature_map : numpy.ndarray
        Shape ``(n_features, 2**n)``: the encoding phases are ``exp(i features @ map)``.
    initial : numpy.ndarray
        Shape ``(2**n,)``: ``psi_0``, the all-zero state in the encoding's eigenbasis.
    exponent_map : numpy.ndarray or None
        Shape ``(n_weights, n_moments * 2**n)``: the phase exponents of all trainable
        moments are ``flat_weights @ exponent_map``; ``None`` without trainable gates.
    transfers : numpy.ndarray or None
        Shape ``(n_moments, 2**n, 2**n)``: the constant matrices ``T_m``.
    left : numpy.ndarray
        Shape ``(2**n, 2**n)``: the last moment's eigenvectors, times any trailing gates
        without parameters.
    """

    feature_map: np.ndarray
    initial: np.ndarray
    exponent_map: np.ndarray | None
    transfers: np.ndarray | None
    left: np.ndarray


def _moment_spectrum(
    gates: Sequence[GateRecord], n_qubits: int, exponents: np.ndarray
) -> np.ndarray:
    """Eigenbasis of a moment of rotations on disjoint wires; adds each gate's eigenvalues
    to ``exponents[gate.index]`` (the coefficient of its angle in the phase exponents).

    The basis is the tensor product of the gates' eigenvectors (identity elsewhere), built
    entry by entry rather than by matrix products.
    """
    dim = 2**n_qubits
    basis = np.ones((dim, dim), dtype=np.complex128)
    touched = 0
    for gate in gates:
        sub, _ = wire_embedding(gate.wires, n_qubits)
        eigvecs, eigvals = gate.spectrum()
        basis *= eigvecs[sub[:, None], sub[None, :]]
        exponents[gate.index] += eigvals[sub]
        for wire in gate.wires:
            touched |= 1 << (n_qubits - 1 - wire)
    untouched = np.arange(dim) & ~touched
    return basis * (untouched[:, None] == untouched[None, :])


def _matmul(*matrices: np.ndarray) -> np.ndarray:
    """Product of complex matrices, as real matrix products.

    NumPy's bundled OpenBLAS runs complex products of this size multi-threaded; on a busy
    2-core machine one 64x64 complex product took 20 ms, its four real products 0.06 ms.
    """
    product = matrices[0]
    for matrix in matrices[1:]:
        real = product.real @ matrix.real - product.imag @ matrix.imag
        imag = product.real @ matrix.imag + product.imag @ matrix.real
        product = real + 1j * imag
    return product


def build_fused_plan(
    encoding: Sequence[GateRecord],
    gates: Sequence[GateRecord],
    n_qubits: int,
    n_features: int,
    n_weights: int,
) -> FusedPlan:
    """Precompute the fused form of an encoding moment followed by data-free gates.

    Parameters
    ----------
    encoding : Sequence[GateRecord]
        Data gates on pairwise disjoint wires, applied first to ``|0...0>``.
    gates : Sequence[GateRecord]
        The following gates in circuit order, all with source ``"weight"`` or
        ``"constant"``.
    n_qubits : int
        Number of wires.
    n_features, n_weights : int
        Number of feature columns and length of the flattened weight vector.

    Returns
    -------
    FusedPlan
        The factors of the circuit; see :class:`FusedPlan`.
    """
    dim = 2**n_qubits
    identity = np.eye(dim, dtype=np.complex128)
    feature_map = np.zeros((n_features, dim))
    previous_basis = _moment_spectrum(encoding, n_qubits, feature_map)
    initial = previous_basis[0].conj()

    moments = schedule_moments(gates)
    n_parametric = sum(gates[moment[0]].source == "weight" for moment in moments)
    exponent_map = np.zeros((n_weights, n_parametric, dim))
    transfers: list[np.ndarray] = []
    pending = identity  # product of the gates without parameters since the last moment
    for moment in moments:
        if gates[moment[0]].source == "constant":
            for position in moment:
                gate = gates[position]
                pending = _matmul(_embed_matrix(gate.fixed_matrix(), gate.wires, n_qubits), pending)
            continue
        slot = exponent_map[:, len(transfers)]
        basis = _moment_spectrum([gates[position] for position in moment], n_qubits, slot)
        transfers.append(_matmul(basis.conj().T, pending, previous_basis))
        pending, previous_basis = identity, basis
    left = _matmul(pending, previous_basis)
    if not transfers:
        return FusedPlan(feature_map, initial, None, None, left)
    return FusedPlan(
        feature_map, initial, exponent_map.reshape(n_weights, -1), np.stack(transfers), left
    )


@dataclass(frozen=True)
class _TrainableTensors:
    """The trainable moments of a fused plan, as tensors (see :class:`_FusedTensors`)."""

    exponent_map: torch.Tensor
    exponent_map_t: torch.Tensor
    transfers: torch.Tensor
    unit_phases: torch.Tensor


@dataclass(frozen=True)
class _FusedTensors:
    """The fused plan as tensors on one device, in one complex dtype.

    ``trainable.transfers`` hold ``S_k = T_{K-1-k}^T`` (transposed, reverse circuit
    order) and ``left`` holds ``L^T``, so that ``U^T = F_{K-1} ... F_0 @ left`` with
    ``F_k = S_k diag(phases_k)``; ``readout`` maps ``|s|^2``, laid out as
    ``(Re s_0^2, Im s_0^2, Re s_1^2, ...)``, to the outputs. ``trainable`` is ``None``
    for a circuit without trainable gates.
    """

    feature_map: torch.Tensor
    feature_map_t: torch.Tensor
    initial_angle: torch.Tensor
    initial_abs: torch.Tensor
    trainable: _TrainableTensors | None
    left: torch.Tensor
    left_h: torch.Tensor
    identity: torch.Tensor
    readout: torch.Tensor
    readout_grad: torch.Tensor


@dataclass(frozen=True)
class _GateTensors:
    """Per-gate tensors (index arrays, spectra, fixed matrices) and the read-out map."""

    gates: list[dict[str, torch.Tensor]]
    readout: torch.Tensor


class _FusedContext(Protocol):
    """What :class:`_FusedCircuit` sets and reads on its autograd context.

    torch's ``FunctionCtx`` declares neither the attributes a Function stores on it nor
    ``saved_tensors``/``needs_input_grad``, and its ``save_for_backward`` rejects ``None``,
    which torch accepts (and hands back as ``None``).
    """

    tensors: _FusedTensors
    weight_meta: list[tuple[torch.Size, torch.dtype]]
    saved_tensors: tuple[torch.Tensor | None, ...]
    needs_input_grad: tuple[bool, ...]

    def save_for_backward(self, *tensors: torch.Tensor | None) -> None: ...


class _FusedCircuit(torch.autograd.Function):
    """Read-out of the fused circuit, with a hand-written (adjoint) backward pass.

    Forward, with ``e = flat_weights @ exponent_map``, ``F_k = S_k diag(exp(i e_k))``, the
    prefix products ``P_k = F_{k-1} ... F_0`` and ``a = features @ feature_map +
    arg(psi_0)``::

        psi = |psi_0| exp(i a),   q = psi @ P_K,   s = q @ left,   out = |s|^2 @ readout.

    Backward, in torch's convention for complex gradients (``g_z = dL/dRe z + i dL/dIm z``;
    for ``y = A @ B``: ``g_A = g_y B^H``, ``g_B = A^H g_y``)::

        g_s = 2 s (g_out @ readout^T),   g_psi = g_s (P_K left)^H,   g_a = Im(g_psi conj(psi)),
        H = q^H (g_s left^H),   g_e_k = Im diag(P_k H P_k^H).

    The last line is the adjoint method. The gradient of factor ``k`` is
    ``(F_{K-1} ... F_{k+1})^H P_K^H G P_k^H`` with ``G = psi^H g_s left^H``; every factor
    is unitary, so ``(F_{K-1} ... F_{k+1})^H = P_{k+1} P_K^H`` and the gradient is
    ``F_k P_k H P_k^H`` with ``H = P_K^H G``. Its phase gradient contracts it with
    ``conj(S_k)`` over rows, and ``S_k^H S_k = I`` leaves ``exp(i e_k) diag(P_k H P_k^H)``;
    through ``exp(i e)`` that gives the line above. So the backward pass needs no second
    chain of matmuls: the forward pass's prefix products, one batched matmul and a sum.
    Then ``g_features = g_a @ feature_map^T`` and ``g_weights = g_e @ exponent_map^T``.
    """

    @staticmethod
    def forward(
        ctx: _FusedContext,
        features: torch.Tensor,
        tensors: _FusedTensors,
        *weights: torch.Tensor,
    ) -> torch.Tensor:
        angles = torch.addmm(tensors.initial_angle, features, tensors.feature_map)
        psi = torch.polar(tensors.initial_abs.expand_as(angles), angles)
        prefixes = None
        trainable = tensors.trainable
        if trainable is None:
            before_left = psi
        else:
            flat_weights = torch.cat([w.reshape(-1) for w in weights])
            if flat_weights.dtype != features.dtype:
                flat_weights = flat_weights.to(features.dtype)
            exponents = (flat_weights @ trainable.exponent_map).view_as(trainable.unit_phases)
            factors = trainable.transfers * torch.polar(trainable.unit_phases, exponents)
            partial = [tensors.identity[0], factors[0]]
            for factor in factors[1:]:
                partial.append(factor @ partial[-1])
            prefixes = torch.stack(partial)
            before_left = psi @ partial[-1]
        state = before_left @ tensors.left
        ctx.tensors = tensors
        ctx.weight_meta = [(w.shape, w.dtype) for w in weights]
        ctx.save_for_backward(psi, before_left, state, prefixes)
        squares = torch.view_as_real(state).square()
        return squares.view(len(state), -1) @ tensors.readout

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: _FusedContext, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        tensors = ctx.tensors
        psi, before_left, state, prefixes = ctx.saved_tensors
        # Only prefixes is None (without trainable gates); forward saved the others.
        assert psi is not None and before_left is not None and state is not None
        # d|s|^2 / d(Re s, Im s) = 2 (Re s, Im s); the 2 is folded into readout_grad.
        grad_squares = (grad_output @ tensors.readout_grad).view(*state.shape, 2)
        grad_state = torch.view_as_complex(grad_squares * torch.view_as_real(state))
        grad_before_left = grad_state @ tensors.left_h
        grad_features = None
        if ctx.needs_input_grad[0]:
            grad_psi = grad_before_left if prefixes is None else grad_before_left @ prefixes[-1].mH
            grad_angles = (grad_psi * psi.conj()).imag
            grad_features = grad_angles @ tensors.feature_map_t
        grad_weights: list[torch.Tensor | None] = [None] * len(ctx.weight_meta)
        if any(ctx.needs_input_grad[2:]) and prefixes is not None:
            assert tensors.trainable is not None  # prefixes are saved only with it
            adjoint = before_left.mH @ grad_before_left
            before = prefixes[:-1]
            grad_exponents = ((before @ adjoint) * before.conj()).sum(-1).imag
            grad_flat = grad_exponents.view(-1) @ tensors.trainable.exponent_map_t
            sizes = [shape.numel() for shape, _ in ctx.weight_meta]
            for index, chunk in enumerate(grad_flat.split(sizes)):
                shape, dtype = ctx.weight_meta[index]
                chunk = chunk.view(shape)
                grad_weights[index] = chunk if chunk.dtype == dtype else chunk.to(dtype)
        return (grad_features, None, *grad_weights)


class TorchStatevectorExecutor:
    """Run a PennyLane circuit function on a batch of inputs with torch statevectors.

    Parameters
    ----------
    circuit : Callable
        The circuit function, called as ``circuit(features, *weights, wires=...)``, e.g.
        :func:`quantum.ansatz.ansatz`. Gate angles must be single input entries.
    n_qubits : int
        Number of wires; ``features`` has ``n_qubits`` columns.
    weight_shapes : Mapping[str, tuple[int, ...]]
        Shapes of the weight tensors, in the order the circuit takes them.
    readout : str
        ``"expval"`` (Pauli-Z per wire) or ``"probs"`` (wire 0 most significant).
    fuse : bool or None
        Fuse the data-independent gates into one unitary. ``None`` fuses when the data
        gates form the first moment and ``n_qubits <= MAX_FUSED_QUBITS``.

    Notes
    -----
    Input ``float32`` runs in ``complex64`` and ``float64`` in ``complex128``; weights are
    cast to the input's dtype and the output has it. The fused path's backward pass is
    written out and gives first derivatives only; ``fuse=False`` runs under autograd
    and supports higher derivatives.
    """

    def __init__(
        self,
        circuit: Callable[..., None],
        n_qubits: int,
        weight_shapes: Mapping[str, tuple[int, ...]],
        readout: str = "expval",
        fuse: bool | None = None,
    ) -> None:
        check_readout(readout)
        self.n_qubits = n_qubits
        self.readout = readout
        self.out_features = readout_size(readout, n_qubits)
        self.weight_shapes = dict(weight_shapes)
        self.gates = record_gates(circuit, n_qubits, weight_shapes)

        n_leading = 0
        while n_leading < len(self.gates) and self.gates[n_leading].source == "feature":
            n_leading += 1
        encoding, body = self.gates[:n_leading], self.gates[n_leading:]
        encoding_wires = [wire for gate in encoding for wire in gate.wires]
        fusable = len(set(encoding_wires)) == len(encoding_wires) and all(
            gate.source != "feature" for gate in body
        )
        if fuse is None:
            fuse = fusable and n_qubits <= MAX_FUSED_QUBITS
        elif fuse and not fusable:
            raise ValueError(
                "fuse=True needs the data gates first, on distinct wires (no re-uploading)"
            )
        self.fused = bool(fuse)
        n_weights = sum(prod(shape) for shape in self.weight_shapes.values())
        self._plan = (
            build_fused_plan(encoding, body, n_qubits, n_qubits, n_weights) if fuse else None
        )
        self._tensors: dict[tuple[torch.device, torch.dtype], _FusedTensors | _GateTensors] = {}

    def _device_tensors(
        self, device: torch.device, dtype: torch.dtype
    ) -> _FusedTensors | _GateTensors:
        key = (device, dtype)
        if key not in self._tensors:
            build = self._build_fused_tensors if self.fused else self._build_gate_tensors
            self._tensors[key] = build(device, dtype)
        return self._tensors[key]

    def _readout_matrix(self) -> np.ndarray:
        """Map from ``(Re s_0^2, Im s_0^2, Re s_1^2, ...)`` to the read-out."""
        n_qubits = self.n_qubits
        basis = np.arange(2**n_qubits)
        if self.readout == "probs":
            per_state: np.ndarray = np.eye(2**n_qubits)
        else:
            bits = (basis[:, None] >> (n_qubits - 1 - np.arange(n_qubits))[None, :]) & 1
            per_state = 1.0 - 2.0 * bits
        return np.repeat(per_state, 2, axis=0)

    def _build_fused_tensors(self, device: torch.device, dtype: torch.dtype) -> _FusedTensors:
        real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32

        def as_tensor(array: np.ndarray, tensor_dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=tensor_dtype, device=device)

        plan, dim = self._plan, 2**self.n_qubits
        if plan is None:
            raise RuntimeError("this executor is not fused; it has no fused plan")
        trainable = None
        # FusedPlan sets both or neither.
        if plan.transfers is not None and plan.exponent_map is not None:
            # Transposed factors (D_m T_m)^T = T_m^T D_m, in reverse circuit order, so that
            # the running product F_k @ ... @ F_0 is U^T.
            n_weights = plan.exponent_map.shape[0]
            reordered = plan.exponent_map.reshape(n_weights, -1, dim)[:, ::-1]
            exponent_map = as_tensor(reordered.reshape(n_weights, -1), real_dtype)
            transfers = as_tensor(plan.transfers.transpose(0, 2, 1)[::-1], dtype)
            trainable = _TrainableTensors(
                exponent_map=exponent_map,
                exponent_map_t=exponent_map.T.contiguous(),
                transfers=transfers,
                unit_phases=torch.ones(len(transfers), 1, dim, dtype=real_dtype, device=device),
            )
        return _FusedTensors(
            feature_map=as_tensor(plan.feature_map, real_dtype),
            feature_map_t=as_tensor(plan.feature_map.T, real_dtype),
            initial_angle=as_tensor(np.angle(plan.initial), real_dtype),
            initial_abs=as_tensor(np.abs(plan.initial), real_dtype),
            trainable=trainable,
            left=as_tensor(plan.left.T, dtype),
            left_h=as_tensor(plan.left.conj(), dtype),
            identity=as_tensor(np.eye(dim)[None], dtype),
            readout=as_tensor(self._readout_matrix(), real_dtype),
            readout_grad=as_tensor(2 * self._readout_matrix().T, real_dtype),
        )

    def _build_gate_tensors(self, device: torch.device, dtype: torch.dtype) -> _GateTensors:
        real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32

        def as_tensor(array: np.ndarray, tensor_dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=tensor_dtype, device=device)

        gate_tensors = []
        for gate in self.gates:
            sub, partner = wire_embedding(gate.wires, self.n_qubits)
            tensors = {"sub": as_tensor(sub, torch.long), "partner": as_tensor(partner, torch.long)}
            if gate.source == "constant":
                tensors["matrix"] = as_tensor(gate.fixed_matrix(), dtype)
            else:
                eigvecs, eigvals = gate.spectrum()
                tensors["eigvals"] = as_tensor(eigvals, real_dtype)
                tensors["eigvecs"] = as_tensor(eigvecs, dtype)
                tensors["eigvecs_h"] = as_tensor(eigvecs.conj().T, dtype)
            gate_tensors.append(tensors)
        return _GateTensors(gate_tensors, as_tensor(self._readout_matrix(), real_dtype))

    def __call__(self, features: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """Run the circuit on a batch.

        Parameters
        ----------
        features : torch.Tensor
            Shape ``(batch, n_qubits)``, ``float32`` or ``float64``.
        *weights : torch.Tensor
            The weight tensors, shapes as in ``weight_shapes``.

        Returns
        -------
        torch.Tensor
            Shape ``(batch, out_features)``, same dtype as ``features``.
        """
        complex_dtype = check_features(features, self.n_qubits)
        tensors = self._device_tensors(features.device, complex_dtype)
        if isinstance(tensors, _FusedTensors):  # built when self.fused
            return _FusedCircuit.apply(features, tensors, *weights)
        flat_weights = torch.cat([w.reshape(-1) for w in weights]).to(features.dtype)
        state = self._run_gates(features, flat_weights, tensors.gates)
        squares = torch.view_as_real(state).square()
        return squares.view(len(state), -1) @ tensors.readout

    def _run_gates(
        self,
        features: torch.Tensor,
        flat_weights: torch.Tensor,
        gate_tensors: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """Final states, applying the gates one at a time to the batch of states."""
        dim = 2**self.n_qubits
        state = torch.zeros(
            features.shape[0], dim, dtype=_COMPLEX_DTYPES[features.dtype], device=features.device
        )
        state[:, 0] = 1.0
        for gate, tensors in zip(self.gates, gate_tensors, strict=True):
            if gate.source == "constant":
                matrix = tensors["matrix"]
            else:
                angle = (
                    features[:, gate.index]
                    if gate.source == "feature"
                    else flat_weights[gate.index]
                )
                phases = torch.exp(1j * angle[..., None] * tensors["eigvals"])
                matrix = (tensors["eigvecs"] * phases[..., None, :]) @ tensors["eigvecs_h"]
            rows = matrix[..., tensors["sub"], :]
            state = (state[:, tensors["partner"]] * rows).sum(-1)
        return state
