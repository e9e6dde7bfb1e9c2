"""A batched torch density-matrix executor: the ansatz under depolarizing gate noise.

PennyLane's ``default.mixed`` with :func:`quantum.noise.depolarizing_noise_model` is the
reference; it simulates one broadcast batch through generic channels and is too slow to
train a federation on (README, Results: Noise). This executor runs the same circuit (its
gate records, :func:`quantum.gates.circuit_gates`) and evolves a batch of
``2**n x 2**n`` density matrices with torch:

- a gate ``U`` (angle from the features or the weights, built from its generator's
  spectrum) maps ``rho -> U rho U^H``;
- after every gate, each of its wires goes through the single-qubit depolarizing channel
  ``rho -> (1 - p) rho + p/3 (X rho X + Y rho Y + Z rho Z)``, computed as
  ``(1 - 4p/3) rho + (2p/3) I_w (x) Tr_w(rho)`` (the Pauli twirl identity
  ``sum_{P in I,X,Y,Z} P rho P = 2 I_w (x) Tr_w rho``);
- the read-out is the diagonal (``probs``) or its Pauli-Z signs (``expval``).

With a device's noise instead (``noise``, ``readout_flips``: a
:class:`quantum.devices.DeviceCircuit`), each gate is followed by its own channels:
depolarizing on its wires (``(1 - p) rho + p I/2^k (x) Tr rho``, the ``k``-wire twirl
being the single-wire one applied on each wire in turn) and thermal relaxation per wire,
and the measured bits are flipped with the calibrated read-out errors.

Autograd differentiates it. Tests compare outputs and gradients with ``default.mixed``.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from math import prod

import numpy as np
import torch

from quantum.circuit import check_readout, readout_size
from quantum.devices import Channel, Depolarizing, DeviceCircuit
from quantum.gates import GateRecord, check_features, circuit_gates, wire_embedding
from quantum.noise import check_gate_noise, expvals_from_probabilities
from quantum.superops import Phase, Step, fuse


class TorchDensityMatrixExecutor:
    """Run a PennyLane circuit function on a batch with depolarizing noise after each gate.

    Parameters
    ----------
    circuit : Callable or Sequence[GateRecord]
        The circuit, as for :class:`quantum.executor.TorchStatevectorExecutor`.
    n_qubits : int
        Number of wires.
    weight_shapes : Mapping[str, tuple[int, ...]]
        Shapes of the weight tensors, in the order the circuit takes them.
    readout : str
        ``"expval"`` or ``"probs"``.
    depolarizing : float
        Depolarizing probability after every gate, on each of its wires, in [0, 3/4].
    device : DeviceCircuit, optional
        A device's noise instead of ``depolarizing``: its ``gates`` replace ``circuit``,
        each followed by its ``noise`` channels, and its ``readout`` flips the bits.
    fused : bool
        With ``device``, run it fused (:func:`quantum.superops.fuse`, the default and
        much faster) or gate by gate (to check the fusion).
    """

    def __init__(
        self,
        circuit: Callable[..., None] | Sequence[GateRecord],
        n_qubits: int,
        weight_shapes: Mapping[str, tuple[int, ...]],
        readout: str = "expval",
        depolarizing: float = 0.0,
        device: DeviceCircuit | None = None,
        fused: bool = True,
    ) -> None:
        check_readout(readout)
        check_gate_noise(depolarizing)
        if device is not None and depolarizing:
            raise ValueError("give depolarizing or a device's noise, not both")
        if device is not None:
            circuit = device.gates
        self.noise: list[tuple[Channel, ...]] | None = (
            None if device is None else list(device.noise))
        self.readout_flips = None if device is None else tuple(device.readout)
        self.n_qubits = n_qubits
        self.readout = readout
        self.depolarizing = float(depolarizing)
        self.out_features = readout_size(readout, n_qubits)
        self.weight_shapes = dict(weight_shapes)
        self.gates = circuit_gates(circuit, n_qubits, weight_shapes)
        self._embeddings = []
        for gate in self.gates:
            sub, partner = wire_embedding(gate.wires, n_qubits)
            same_rest = partner[:, :1] == partner[:, :1].T
            self._embeddings.append((torch.as_tensor(sub), torch.as_tensor(same_rest)))
        self._n_weights = sum(prod(shape) for shape in self.weight_shapes.values())
        self._program = (None if device is None or not fused
                         else [_compiled_step(step, n_qubits) for step in fuse(device)])

    def __call__(self, features: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """Run the noisy circuit on a batch.

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
        flat_weights = torch.cat([w.reshape(-1) for w in weights]).to(features.dtype)
        if flat_weights.numel() != self._n_weights:
            raise ValueError(
                f"expected {self._n_weights} weights in all, got {flat_weights.numel()}"
            )
        dim = 2**self.n_qubits
        rho = torch.zeros(features.shape[0], dim, dim, dtype=complex_dtype)
        rho[:, 0, 0] = 1.0
        if self._program is not None:
            return self._read_out(self._run_program(rho, features, flat_weights))
        for position, (gate, (sub, same_rest)) in enumerate(
                zip(self.gates, self._embeddings, strict=True)):
            if gate.source == "constant":
                matrix = torch.as_tensor(gate.matrix, dtype=complex_dtype)
            else:
                angle = (
                    features[:, gate.index] if gate.source == "feature"
                    else flat_weights[gate.index]
                )
                eigvecs = torch.as_tensor(gate.eigvecs, dtype=complex_dtype)
                eigvals = torch.as_tensor(gate.eigvals, dtype=features.dtype)
                phases = torch.exp(1j * angle[..., None] * eigvals)
                matrix = (eigvecs * phases[..., None, :]) @ eigvecs.conj().T
            full = matrix[..., sub[:, None], sub[None, :]] * same_rest
            rho = full @ rho @ full.conj().transpose(-1, -2)
            if self.depolarizing:
                for wire in gate.wires:
                    rho = self._depolarize(rho, wire)
            if self.noise is not None:
                rho = self._apply_channels(rho, self.noise[position])
        return self._read_out(rho)

    def _run_program(self, rho: torch.Tensor, features: torch.Tensor,
                     flat_weights: torch.Tensor) -> torch.Tensor:
        """The fused device circuit: superoperators and parametric phases."""
        assert self._program is not None
        n, batch = self.n_qubits, rho.shape[0]
        shape = (batch,) + (2,) * (2 * n)
        for kind, expression_or_source, tensor, index in self._program:
            if kind == "superop":
                operator = tensor.to(rho.dtype)
                rho = torch.einsum(expression_or_source, operator, rho.reshape(shape))
                rho = rho.reshape(batch, 2**n, 2**n)
                continue
            angle = (features[:, index] if expression_or_source == "feature"
                     else flat_weights[index])
            phases = torch.exp(1j * angle[..., None, None].to(tensor.dtype) * tensor)
            rho = rho * phases.to(rho.dtype)
        return rho

    def _read_out(self, rho: torch.Tensor) -> torch.Tensor:
        """The measured distribution (read-out errors applied), or its Pauli-Z signs."""
        probabilities = torch.diagonal(rho, dim1=-2, dim2=-1).real
        if self.readout_flips is not None:
            probabilities = self._flip_bits(probabilities)
        if self.readout == "probs":
            return probabilities
        return expvals_from_probabilities(probabilities, self.n_qubits)

    def _depolarize(self, rho: torch.Tensor, wire: int) -> torch.Tensor:
        """Single-qubit depolarizing channel on ``wire`` of a batch of density matrices."""
        p = self.depolarizing
        return (1 - 4 * p / 3) * rho + (4 * p / 3) * self._twirl(rho, wire)

    def _twirl(self, rho: torch.Tensor, wire: int) -> torch.Tensor:
        """The fully depolarizing channel on ``wire``: ``I/2 (x) Tr_wire rho``."""
        batch, n = rho.shape[0], self.n_qubits
        before, after = 2**wire, 2 ** (n - wire - 1)
        blocks = rho.reshape(batch, before, 2, after, before, 2, after)
        reduced = blocks[:, :, 0, :, :, 0, :] + blocks[:, :, 1, :, :, 1, :]
        identity = torch.eye(2, dtype=rho.dtype)
        mixed = reduced[:, :, None, :, :, None, :] * identity[None, None, :, None, None, :, None]
        return 0.5 * mixed.reshape(rho.shape)

    def _apply_channels(self, rho: torch.Tensor, channels: tuple[Channel, ...]) -> torch.Tensor:
        """A native gate's noise: depolarizing on its wires, then relaxation per wire."""
        for channel in channels:
            if isinstance(channel, Depolarizing):
                mixed = rho
                for wire in channel.wires:
                    mixed = self._twirl(mixed, wire)
                rho = (1 - channel.p) * rho + channel.p * mixed
                continue
            batch, n, wire = rho.shape[0], self.n_qubits, channel.wire
            before, after = 2**wire, 2 ** (n - wire - 1)
            blocks = rho.reshape(batch, before, 2, after, before, 2, after)
            g, c = channel.damping, channel.coherence
            row0 = torch.stack((blocks[:, :, 0, :, :, 0, :] + g * blocks[:, :, 1, :, :, 1, :],
                                c * blocks[:, :, 0, :, :, 1, :]), dim=4)
            row1 = torch.stack((c * blocks[:, :, 1, :, :, 0, :],
                                (1 - g) * blocks[:, :, 1, :, :, 1, :]), dim=4)
            rho = torch.stack((row0, row1), dim=2).reshape(rho.shape)
        return rho

    def _flip_bits(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Read-out errors: each wire's measured bit flips with ``P(1|0)`` or ``P(0|1)``."""
        assert self.readout_flips is not None
        n = self.n_qubits
        shaped = probabilities.reshape(-1, *([2] * n))
        for wire, (p10, p01) in enumerate(self.readout_flips):
            # confusion[prepared, measured]
            confusion = torch.tensor([[1 - p10, p10], [p01, 1 - p01]], dtype=shaped.dtype)
            moved = shaped.movedim(wire + 1, -1) @ confusion
            shaped = moved.movedim(-1, wire + 1)
        return shaped.reshape(probabilities.shape)


def _compiled_step(step: Step, n: int) -> tuple[str, str, torch.Tensor, int]:
    """A fused step ready to run: ``("superop", einsum expression, tensor, -1)`` or
    ``("phase", source, generator differences over the full space, index)``."""
    if isinstance(step, Phase):
        diagonal = np.zeros(2**n)
        bits = (np.arange(2**n)[:, None] >> (n - 1 - np.array(step.wires))) & 1
        local = (bits * (1 << np.arange(len(step.wires) - 1, -1, -1))).sum(1)
        diagonal = step.generator_diagonal[local]
        differences = diagonal[:, None] - diagonal[None, :]
        return "phase", step.source, torch.as_tensor(differences), step.index
    k = len(step.wires)
    letters = string.ascii_letters
    rows, cols = list(letters[:n]), list(letters[n : 2 * n])
    new_rows, new_cols = rows.copy(), cols.copy()
    fresh = iter(letters[2 * n :])
    for wire in step.wires:
        new_rows[wire], new_cols[wire] = next(fresh), next(fresh)
    out = [new_rows[w] for w in step.wires] + [new_cols[w] for w in step.wires]
    into = [rows[w] for w in step.wires] + [cols[w] for w in step.wires]
    expression = (f"{''.join(out + into)},Z{''.join(rows + cols)}"
                  f"->Z{''.join(new_rows + new_cols)}")
    tensor = torch.as_tensor(step.matrix.reshape((2,) * (4 * k)))
    return "superop", expression, tensor, -1
