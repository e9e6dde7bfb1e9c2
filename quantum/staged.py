"""The state-touching part of the staged path: :class:`StagedCircuit` and its kernels.

States are real: ``(sets, 2, 2, ..., 2, batch)``, the real and imaginary planes of a set
of batches of states with one axis per wire and the batch last. Every operation is a
complex ``d x d`` matrix ``A + iC`` on a few wires, applied where it is cheapest: the
state is permuted so that the operation's wires follow the planes axis, and then
``[[A, -C], [C, A]]`` maps ``(plane, wires)`` in one real matrix product,
``(2d x 2d) @ (2d x rest)``.

Measured on this project's 2-core machine with one torch thread (12 qubits, batch 32,
float32): that permutation copy and product take about 60 and 60-120 us, where the same
complex matrix on wires in the middle of the state cost 300-500 us as a batched product
(``bmm``; torch multiplies small complex matrices several times slower than real ones of
the same size) and its gradient's reduction 0.6-2.4 ms as an ``einsum``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

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
        The operation's matrix is ``matrices[source][row]`` of the circuit's inputs.
    size : int
        Number of wires it acts on.
    before, after : tuple[int, ...] or None
        Axis permutations of a state ``(sets, plane, wires..., batch)`` that bring the
        operation's wires to the front (applied before it), and that take the state back
        to the layout of the previous step (in the backward pass); ``None``: none needed.
    """

    source: int
    row: int
    size: int
    before: tuple[int, ...] | None
    after: tuple[int, ...] | None


def plan_steps(
    operations: list[tuple[int, int, tuple[int, ...]]], n_qubits: int
) -> tuple[tuple[Step, ...], tuple[int, ...]]:
    """Steps for ``(source, row, wires)`` operations and the final wire order.

    Each operation's wires, in the order of its matrix's bits, are moved to the front;
    the other wires keep their order.
    """
    order = list(range(n_qubits))
    steps = []
    for source, row, wires in operations:
        if tuple(order[: len(wires)]) == wires:
            steps.append(Step(source, row, len(wires), None, None))
            continue
        new_order = list(wires) + [wire for wire in order if wire not in wires]
        axes = [order.index(wire) for wire in new_order]
        before = (0, 1, *(2 + axis for axis in axes), n_qubits + 2)
        after = tuple(sorted(range(len(before)), key=before.__getitem__))
        steps.append(Step(source, row, len(wires), before, after))
        order = new_order
    return tuple(steps), tuple(order)


def _permute(states: torch.Tensor, axes: tuple[int, ...], n_qubits: int) -> torch.Tensor:
    shape = states.shape
    view = states.view(shape[0], 2, *([2] * n_qubits), shape[-1])
    return view.permute(axes).contiguous().view(shape)


def _apply_front(states: torch.Tensor, real: torch.Tensor, size: int) -> torch.Tensor:
    """A real block ``(2d x 2d)`` on the planes and the first ``size`` wires."""
    sets = states.shape[0]
    return torch.matmul(real, states.view(sets, 2 * 2**size, -1)).view(states.shape)


def _front_rho(both: torch.Tensor, size: int) -> torch.Tensor:
    """``sum g s^H`` over all but the first ``size`` wires; states ``both[0]``,
    cotangents ``both[1]``."""
    dim = 2**size
    gram = both[1].view(2 * dim, -1) @ both[0].view(2 * dim, -1).T
    gram = gram.view(2, dim, 2, dim)  # (plane of g, wires, plane of s, wires)
    return torch.complex(gram[0, :, 0] + gram[1, :, 1], gram[1, :, 0] - gram[0, :, 1])


class StagedContext(Protocol):
    """What :class:`StagedCircuit` sets and reads on its autograd context (torch's
    ``FunctionCtx`` declares neither; see :class:`quantum.fusion.FusedContext`)."""

    tensors: StageTensors
    saved_tensors: tuple[torch.Tensor, ...]

    def save_for_backward(self, *tensors: torch.Tensor) -> None: ...


class StagedCircuit(torch.autograd.Function):
    """Initial states -> operations -> read-out, with an adjoint backward pass.

    Inputs: ``initial`` ``(B, 2**n)`` complex, the :class:`quantum.stages.StageTensors`
    (its ``steps``, ``n_qubits`` and ``readout``), and the complex matrices the steps
    index (one ``(rows, d, d)`` tensor per source).

    Backward, in torch's convention (``g_z = dL/dRe z + i dL/dIm z``): the cotangent of
    the final state is ``2 s (g_out @ readout^T)``. Going back through the operations,
    with ``s`` and ``g`` the state and its cotangent after an operation ``A``,
    ``g_A = (sum g s^H) A`` (since the state before ``A`` is ``A^H s``), then
    ``s, g <- A^H s, A^H g``; what is left of ``g`` is the initial states' gradient.
    """

    @staticmethod
    def forward(
        ctx: StagedContext,
        initial: torch.Tensor,
        tensors: StageTensors,
        *matrices: torch.Tensor,
    ) -> torch.Tensor:
        steps, n_qubits = tensors.steps, tensors.n_qubits
        reals = [real_block(source) for source in matrices]
        states = torch.view_as_real(initial.T).permute(2, 0, 1).contiguous()[None]
        for step in steps:
            if step.before is not None:
                states = _permute(states, step.before, n_qubits)
            states = _apply_front(states, reals[step.source][step.row], step.size)
        ctx.tensors = tensors
        ctx.save_for_backward(states[0], *matrices)
        probabilities = states[0, 0].square() + states[0, 1].square()  # (D, B)
        if tensors.readout is None:
            return _canonical(probabilities, tensors.final_axes, n_qubits)
        return (tensors.readout.T @ probabilities).T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: StagedContext, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        tensors = ctx.tensors
        states, *matrices = ctx.saved_tensors
        n_qubits = tensors.n_qubits
        if tensors.readout is None:  # from wire order 0..n-1 to the final one
            batch = grad_output.shape[0]
            weights = grad_output.T.reshape(*([2] * n_qubits), batch)
            weights = weights.permute(*tensors.final_order, n_qubits).reshape(-1, batch)
        else:
            weights = tensors.readout @ grad_output.T
        both = torch.stack([states, states * (2 * weights)])  # state, cotangent
        adjoints = [real_block(source.mH) for source in matrices]
        found: list[dict[int, torch.Tensor]] = [{} for _ in matrices]
        for step in reversed(tensors.steps):
            rho = _front_rho(both, step.size)
            found[step.source][step.row] = rho @ matrices[step.source][step.row]
            both = _apply_front(both, adjoints[step.source][step.row], step.size)
            if step.after is not None:
                both = _permute(both, step.after, n_qubits)
        grads = [
            torch.stack([rows[row] for row in range(len(source))])
            if rows and len(rows) == len(source) else torch.zeros_like(source)
            for rows, source in zip(found, matrices, strict=True)
        ]
        grad_initial = torch.complex(both[1, 0], both[1, 1]).T
        return (grad_initial, None, *grads)


def _canonical(probabilities: torch.Tensor, axes: tuple[int, ...], n_qubits: int) -> torch.Tensor:
    """Probabilities ``(D, B)`` in the final wire order as ``(B, D)`` in wire order 0..n-1."""
    batch = probabilities.shape[-1]
    view = probabilities.view(*([2] * n_qubits), batch)
    return view.permute(n_qubits, *axes).reshape(batch, -1)
