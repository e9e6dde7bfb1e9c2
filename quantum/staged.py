"""The state-touching part of the staged path: :class:`StagedCircuit` and its kernels.

A batch of states is real: ``(2, 2, ..., 2, batch)``, the real and imaginary planes,
one axis per wire, the batch last. Every operation is a complex ``d x d`` matrix
``A + iC`` on a few wires, applied where it is cheapest: the state is permuted so that
the operation's wires follow the planes axis, and then ``[[A, -C], [C, A]]`` maps
``(plane, wires)`` in one real matrix product, ``(2d x 2d) @ (2d x rest)``.

Why a permutation and a product at the front, rather than a batched product on wires in
the middle of the state: torch multiplies small complex matrices in batches (``bmm``)
several times slower than real ones of the same size, and the gradient's reduction over
the other wires would be an ``einsum`` that copies the state twice; measured on this
project's machine, the permutation copy and one real product were the cheaper pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from quantum.fusion import first_derivatives_only

if TYPE_CHECKING:  # quantum.stages imports this module
    from quantum.stages import StageTensors


def real_block(matrix: torch.Tensor) -> torch.Tensor:
    """``[[A, -C], [C, A]]`` of a complex ``A + iC`` (last two axes): its real form."""
    real, imag = matrix.real, matrix.imag
    return torch.cat([torch.cat([real, -imag], -1), torch.cat([imag, real], -1)], -2)


@dataclass(frozen=True)
class Step:
    """One operation of a :class:`StagedCircuit`.

    Attributes
    ----------
    source, row : int
        The operation's real block is ``blocks[source][row]`` of the circuit's inputs.
    rows : int
        ``2 * 2**size``: the rows of the state matrix it multiplies, planes and wires.
    before : tuple[int, ...] or None
        Axis permutation of a state ``(plane, wires..., batch)`` that brings the
        operation's wires to the front (applied before it); ``None``: not needed.
    after : tuple[int, ...] or None
        Axis permutation of a state and its cotangent ``(plane, labels..., batch)``,
        the labels being the wires with the set axis after the operation's wires, back
        to the previous step's layout (applied after undoing it, in the backward pass).
    """

    source: int
    row: int
    rows: int
    before: tuple[int, ...] | None
    after: tuple[int, ...] | None


def plan_steps(
    operations: list[tuple[int, int, tuple[int, ...]]], n_qubits: int
) -> tuple[tuple[Step, ...], tuple[int, ...]]:
    """Steps for ``(source, row, wires)`` operations and the final wire order.

    Each operation's wires, in the order of its matrix's bits, are moved to the front;
    the other wires keep their order. In the backward pass a state and its cotangent
    travel as one tensor whose *set* axis (state or cotangent) follows the front wires,
    so that one matrix product moves both and the two are contiguous column blocks.
    """
    set_axis = n_qubits  # the set axis's label among the wires'
    order = list(range(n_qubits))
    paired = [set_axis, *order]  # before the first operation
    steps = []
    for source, row, wires in operations:
        new_order = list(wires) + [wire for wire in order if wire not in wires]
        new_paired = list(wires) + [set_axis] + [wire for wire in order if wire not in wires]
        before = None
        if new_order != order:
            before = (0, *(1 + order.index(wire) for wire in new_order), n_qubits + 1)
        after = None
        if new_paired != paired:
            after = (0, *(1 + new_paired.index(label) for label in paired), n_qubits + 2)
        steps.append(Step(source, row, 2 * 2 ** len(wires), before, after))
        order, paired = new_order, new_paired
    return tuple(steps), tuple(order)


class StagedContext(Protocol):
    """What :class:`StagedCircuit` sets and reads on its autograd context (torch's
    ``FunctionCtx`` declares neither; see :class:`quantum.fusion.FusedContext`)."""

    tensors: StageTensors
    saved_tensors: tuple[torch.Tensor, ...]

    def save_for_backward(self, *tensors: torch.Tensor) -> None: ...


class StagedCircuit(torch.autograd.Function):
    """Product state -> operations -> read-out, with an adjoint backward pass.

    Inputs: ``vectors`` ``(B, n, 2)`` complex, one per wire, whose Kronecker product is
    the initial state; the :class:`quantum.stages.StageTensors` (its ``steps``,
    ``n_qubits`` and ``readout``); and the real blocks (:func:`real_block`) of the
    operations' complex matrices, one ``(rows, 2d, 2d)`` tensor per source.

    The state is a real matrix, ``(plane, wires...)`` by ``(batch)``: an operation
    ``X <- W X`` on its front rows. Backward: the cotangent of the final state is
    ``2 s (g_out @ readout^T)`` (``g_z = dL/dRe z + i dL/dIm z``, torch's convention).
    Going back through the operations, with ``X`` and ``G`` the state and its cotangent
    after an operation ``W``: ``g_W = G X^T W`` (the state before it is ``W^T X``, since
    the real block of a unitary is orthogonal), then ``X, G <- W^T X, W^T G``; what is
    left of ``G`` is the initial state's gradient, and :func:`_product_backward` takes
    it to the vectors.
    """

    @staticmethod
    def forward(
        ctx: StagedContext,
        vectors: torch.Tensor,
        tensors: StageTensors,
        *blocks: torch.Tensor,
    ) -> torch.Tensor:
        n_qubits, batch = tensors.n_qubits, len(vectors)
        shape = (2, *([2] * n_qubits), batch)
        rows = [list(source.unbind(0)) for source in blocks]
        initial = _prefix_products(vectors)[-1]
        states = torch.view_as_real(initial).permute(2, 0, 1).contiguous().view(2, -1)
        for step in tensors.steps:
            if step.before is not None:
                states = states.view(shape).permute(step.before).contiguous().view(2, -1)
            states = torch.mm(rows[step.source][step.row], states.view(step.rows, -1))
        states = states.view(2, -1, batch)
        ctx.tensors = tensors
        ctx.save_for_backward(vectors, states, *blocks)
        probabilities = states[0].square() + states[1].square()  # (D, B)
        if tensors.readout is None:
            return _canonical(probabilities, tensors.final_axes, n_qubits)
        return (tensors.readout.T @ probabilities).T

    @staticmethod
    def backward(
        ctx: StagedContext, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        first_derivatives_only("StagedCircuit")
        tensors = ctx.tensors
        vectors, states, *blocks = ctx.saved_tensors
        n_qubits, batch = tensors.n_qubits, len(vectors)
        both = _final_cotangent(states, grad_output, tensors)
        shape = (2, *([2] * (n_qubits + 1)), batch)
        adjoints = [list(source.mT.unbind(0)) for source in blocks]
        grams: list[dict[int, torch.Tensor]] = [{} for _ in blocks]
        for step in reversed(tensors.steps):
            both = both.view(step.rows, 2, -1)  # (plane and wires, set, the rest)
            grams[step.source][step.row] = torch.mm(both[:, 1], both[:, 0].T)
            both = torch.mm(adjoints[step.source][step.row], both.view(step.rows, -1))
            if step.after is not None:
                both = both.view(shape).permute(step.after).contiguous().view(step.rows, -1)
        grads = [
            torch.stack([found[row] for row in range(len(source))]) @ source
            if found else torch.zeros_like(source)
            for found, source in zip(grams, blocks, strict=True)
        ]
        both = both.view(2, 2, -1, batch)  # plane, set, basis state, sample
        grad_vectors = _product_backward(torch.complex(both[0, 1], both[1, 1]), vectors)
        return (grad_vectors, None, *grads)


def _final_cotangent(
    states: torch.Tensor, grad_output: torch.Tensor, tensors: StageTensors
) -> torch.Tensor:
    """The final states ``(2, D, B)`` and their cotangent ``2 s (g_out @ readout^T)`` as
    one matrix ``(plane and front wires, set and the rest)``, the set axis after the last
    operation's wires."""
    n_qubits, batch = tensors.n_qubits, states.shape[-1]
    if tensors.readout is None:  # from wire order 0..n-1 to the final one
        weights = grad_output.T.reshape(*([2] * n_qubits), batch)
        weights = weights.permute(*tensors.final_order, n_qubits).reshape(-1, batch)
    else:
        weights = tensors.readout @ grad_output.T
    rows = tensors.steps[-1].rows if tensors.steps else 2
    pair = [states.view(rows, -1), (states * (2 * weights)).view(rows, -1)]
    return torch.stack(pair, 1).view(rows, -1)


def _prefix_products(vectors: torch.Tensor) -> list[torch.Tensor]:
    """Kronecker products of the first ``1 .. n`` wires' vectors ``(B, n, 2)``, each
    ``(2**k, B)``, batch last."""
    batch = len(vectors)
    products = [vectors[:, 0].T]
    for wire in range(1, vectors.shape[1]):
        products.append((products[-1][:, None, :] * vectors[:, wire].T[None]).view(-1, batch))
    return products


def _product_backward(grad: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Gradient of the vectors ``(B, n, 2)`` from that of their product state ``(D, B)``.

    For ``y[l, a] = s[l] v[a]`` (per sample): ``g_v[a] = sum_l g_y[l, a] conj(s[l])`` and
    ``g_s[l] = sum_a g_y[l, a] conj(v[a])``, from the last wire to the first.
    """
    prefixes = _prefix_products(vectors)
    batch, n_qubits = vectors.shape[:2]
    conjugates = vectors.conj().transpose(0, 1).transpose(1, 2)  # (n, 2, B)
    grads = [grad.new_empty(0)] * n_qubits
    for wire in range(n_qubits - 1, 0, -1):
        grad = grad.view(-1, 2, batch)
        grads[wire] = (grad * prefixes[wire - 1].conj()[:, None, :]).sum(0)
        grad = grad[:, 0] * conjugates[wire, 0] + grad[:, 1] * conjugates[wire, 1]
    grads[0] = grad.view(2, batch)
    return torch.stack(grads).permute(2, 0, 1)


def _canonical(probabilities: torch.Tensor, axes: tuple[int, ...], n_qubits: int) -> torch.Tensor:
    """Probabilities ``(D, B)`` in the final wire order as ``(B, D)`` in wire order 0..n-1."""
    batch = probabilities.shape[-1]
    view = probabilities.view(*([2] * n_qubits), batch)
    return view.permute(n_qubits, *axes).reshape(batch, -1)
