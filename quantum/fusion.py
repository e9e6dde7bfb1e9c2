"""The fused path of the statevector executor: the trainable part as one unitary.

Gates are scheduled into moments, sets of gates on disjoint wires, which commute. A
moment of rotations is ``W D W^H``: ``W`` is the tensor product of its gates'
eigenvectors and ``D`` is diagonal with phases ``exp(i sum_g t_g lambda_g)``, whose
exponents are linear in the angles. With the angle encoding as moment ``E`` and the
trainable moments ``0 .. M-1``,

    ``state = L D_{M-1} T_{M-1} ... D_1 T_1 D_0 T_0 D_E(x) psi_0``,

where ``T_m = W_m^H C W_{m-1}`` (``C``: gates without parameters in between), ``L`` and
``psi_0 = W_E^H |0>`` are constant and precomputed (:func:`build_fused_plan`). A forward
pass gets all phases from two matmuls, builds the data-independent unitary ``U`` (one
``2**n x 2**n`` matrix per moment, multiplied in circuit order), then
``state = (D_E(x) psi_0) @ U^T``, squares the amplitudes and maps them to ``probs`` or,
through a fixed ``+/-1`` sign matrix, to ``expval``. Its backward pass is written out
(adjoint method, :class:`FusedCircuit`), so a training step costs a few dozen small
tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from quantum.gates import GateRecord, embed_matrix, wire_embedding


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
                pending = _matmul(embed_matrix(gate.fixed_matrix(), gate.wires, n_qubits), pending)
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
class TrainableTensors:
    """The trainable moments of a fused plan, as tensors (see :class:`FusedTensors`)."""

    exponent_map: torch.Tensor
    exponent_map_t: torch.Tensor
    transfers: torch.Tensor
    unit_phases: torch.Tensor


@dataclass(frozen=True)
class FusedTensors:
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
    trainable: TrainableTensors | None
    left: torch.Tensor
    left_h: torch.Tensor
    identity: torch.Tensor
    readout: torch.Tensor
    readout_grad: torch.Tensor


def first_derivatives_only(function: str) -> None:
    """Refuse a backward pass that autograd would differentiate again (``create_graph``).

    The hand-written backward passes compute first derivatives only. torch's
    ``once_differentiable`` decorator says so too, but it made the quantum layer's
    backward pass at 4 qubits markedly slower on this project's machine (a third to a
    half of its time); autograd enables grad mode during a backward pass only to build
    a graph of it, so checking that mode is enough.

    Raises
    ------
    RuntimeError
        If grad mode is on.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{function} has a hand-written backward pass with first derivatives only; "
            "it cannot be differentiated twice (create_graph=True); use method='gates'"
        )


class FusedContext(Protocol):
    """What :class:`FusedCircuit` sets and reads on its autograd context.

    torch's ``FunctionCtx`` declares neither the attributes a Function stores on it nor
    ``saved_tensors``/``needs_input_grad``, and its ``save_for_backward`` rejects ``None``,
    which torch accepts (and hands back as ``None``).
    """

    tensors: FusedTensors
    weight_meta: list[tuple[torch.Size, torch.dtype]]
    saved_tensors: tuple[torch.Tensor | None, ...]
    needs_input_grad: tuple[bool, ...]

    def save_for_backward(self, *tensors: torch.Tensor | None) -> None: ...


class FusedCircuit(torch.autograd.Function):
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
        ctx: FusedContext,
        features: torch.Tensor,
        tensors: FusedTensors,
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
            # One matrix product per factor: at 4 qubits the products are tiny, and a
            # doubling scan (4 batched products and concatenations for 14 factors) was
            # slower on this machine than the 13 plain products.
            each = factors.unbind(0)
            partial = [tensors.identity[0], each[0]]
            for factor in each[1:]:
                partial.append(torch.mm(factor, partial[-1]))
            prefixes = torch.stack(partial)
            before_left = psi @ partial[-1]
        state = before_left @ tensors.left
        ctx.tensors = tensors
        ctx.weight_meta = [(w.shape, w.dtype) for w in weights]
        ctx.save_for_backward(psi, before_left, state, prefixes)
        squares = torch.view_as_real(state).square()
        return squares.view(len(state), -1) @ tensors.readout

    @staticmethod
    def backward(ctx: FusedContext, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        first_derivatives_only("FusedCircuit")
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
