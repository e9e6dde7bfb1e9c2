"""A device circuit fused into few steps for the density-matrix executor.

A compiled device circuit (:func:`quantum.devices.compile_ansatz`) is hundreds of native
gates and noise channels, nearly all constant: only the ``rz`` gates that carry an angle
from the features or the weights vary, and those are diagonal. :func:`fuse` turns it into
a short program of two kinds of step, which :class:`quantum.mixed.TorchDensityMatrixExecutor`
runs:

- :class:`Superop`: a run of constant gates and channels on at most two wires, multiplied
  into one superoperator (``4**k x 4**k`` for ``k`` wires) when the executor is built;
- :class:`Phase`: a parametric diagonal gate, ``rho[r, c] *= exp(i t (g[r] - g[c]))``.

A parametric gate on wires a run does not touch commutes with it, so it is applied
first and the run continues; a constant op that would take a run past two wires starts a
new one. Numpy only (no torch).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quantum.devices import Channel, Depolarizing, DeviceCircuit
from quantum.gates import GateRecord, embed_matrix

MAX_RUN_WIRES = 2
"""Widest run fused into one superoperator."""


@dataclass
class Superop:
    """A constant channel on ``wires``: ``matrix[(out_r, out_c), (in_r, in_c)]``, each
    index the wires' bits, first wire most significant (row-major vec of rho)."""

    wires: tuple[int, ...]
    matrix: np.ndarray


@dataclass
class Phase:
    """A parametric diagonal gate ``exp(i t G)``: ``generator_diagonal`` is ``G``'s
    diagonal on ``wires``; the angle is feature or weight ``index``."""

    wires: tuple[int, ...]
    source: str
    index: int
    generator_diagonal: np.ndarray


Step = Superop | Phase


def _unitary_superop(matrix: np.ndarray) -> np.ndarray:
    return np.kron(matrix, matrix.conj())


def _twirl_superop(k: int, wire: int) -> np.ndarray:
    """``rho -> I/2 (x) Tr_wire rho`` on ``k`` wires, as a superoperator."""
    dim = 2**k
    superop = np.zeros((dim * dim, dim * dim), dtype=np.complex128)
    for column in range(dim * dim):
        basis = np.zeros(dim * dim, dtype=np.complex128)
        basis[column] = 1.0
        rho = basis.reshape([2] * (2 * k))
        reduced = np.trace(rho, axis1=wire, axis2=k + wire)  # rows/cols without `wire`
        mixed = np.multiply.outer(reduced, np.eye(2) / 2)  # wire's axes last
        mixed = np.moveaxis(mixed, (-2, -1), (wire, k + wire))
        superop[:, column] = mixed.reshape(-1)
    return superop


def _channel_superop(channel: Channel, wires: tuple[int, ...]) -> np.ndarray:
    """A noise channel as a superoperator on the run's ``wires``."""
    k = len(wires)
    if isinstance(channel, Depolarizing):
        twirled = np.eye(4**k, dtype=np.complex128)
        for wire in channel.wires:
            twirled = _twirl_superop(k, wires.index(wire)) @ twirled
        return (1 - channel.p) * np.eye(4**k) + channel.p * twirled
    g, c = channel.damping, channel.coherence
    local = np.array([[1, 0, 0, g], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1 - g]],
                     dtype=np.complex128)
    return _embed_superop(local, wires.index(channel.wire), k)


def _embed_superop(local: np.ndarray, wire: int, k: int) -> np.ndarray:
    """A one-wire superoperator (``(out_r, out_c), (in_r, in_c)``) on wire ``wire`` of ``k``."""
    tensor = local.reshape(2, 2, 2, 2)
    letters = string.ascii_letters
    rows, cols = list(letters[:k]), list(letters[k : 2 * k])
    out_rows, out_cols = rows.copy(), cols.copy()
    out_rows[wire], out_cols[wire] = "W", "X"
    identity = np.eye(4**k, dtype=np.complex128).reshape([2] * (4 * k))
    # identity[out..., in...]; apply local on `wire` after it.
    ins = "".join(rows + cols)
    outs = "".join(out_rows + out_cols)
    mid = "".join(letters[2 * k : 4 * k])
    expression = f"WX{rows[wire]}{cols[wire]},{ins}{mid}->{outs}{mid}"
    return np.einsum(expression, tensor, identity).reshape(4**k, 4**k)


def _op_superop(gate: GateRecord, channels: Sequence[Channel], wires: tuple[int, ...]
                ) -> np.ndarray:
    local = [wires.index(w) for w in gate.wires]
    superop = _unitary_superop(embed_matrix(gate.fixed_matrix(), local, len(wires)))
    for channel in channels:
        superop = _channel_superop(channel, wires) @ superop
    return superop


def _widen(superop: np.ndarray, wires: tuple[int, ...], wider: tuple[int, ...]) -> np.ndarray:
    """A superoperator on ``wires`` as one on ``wider`` (a superset, in order)."""
    if wires == wider:
        return superop
    (wire,) = wires  # only a one-wire run is ever widened (to two wires)
    return _embed_superop(superop, wider.index(wire), len(wider))


def fuse(circuit: DeviceCircuit) -> list[Step]:
    """The circuit's gates and channels as fused :class:`Superop` and :class:`Phase` steps."""
    steps: list[Step] = []
    run: Superop | None = None
    for gate, channels in zip(circuit.gates, circuit.noise, strict=True):
        wires = tuple(gate.wires) + tuple(
            w for ch in channels for w in (ch.wires if isinstance(ch, Depolarizing)
                                           else (ch.wire,)) if w not in gate.wires)
        if gate.source != "constant":
            eigvecs, eigvals = gate.spectrum()
            generator = (eigvecs * eigvals) @ eigvecs.conj().T
            if not np.allclose(generator, np.diag(np.diag(generator))) or channels:
                raise ValueError(f"gate {gate.name}: only noiseless diagonal parametric "
                                 "gates can be fused")
            if run is not None and set(run.wires) & set(wires):
                steps.append(run)
                run = None
            steps.append(Phase(wires, gate.source, gate.index, np.diag(generator).real))
            continue
        union = tuple(sorted(set(wires) | set(run.wires if run else ())))
        if run is not None and len(union) > MAX_RUN_WIRES:
            steps.append(run)
            run, union = None, tuple(sorted(wires))
        ordered = tuple(sorted(wires))
        op = _op_superop(gate, channels, ordered)
        if run is None:
            run = Superop(ordered, op)
        else:
            run = Superop(union, _widen(op, ordered, union) @ _widen(run.matrix, run.wires,
                                                                     union))
    if run is not None:
        steps.append(run)
    return steps
