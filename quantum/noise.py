"""Hardware imperfections of the quantum layer: gate noise and finite measurement shots.

- :func:`depolarizing_noise_model`: a PennyLane noise model that follows every gate of the
  ansatz (encoding RY, trainable RX/RY/RZ, CRX) with a single-qubit depolarizing channel
  of probability ``p`` on each wire the gate acts on. It runs on ``default.mixed``.
- :func:`sample_probabilities`: finite-shot estimates of basis-state probabilities, drawn
  from the exact multinomial distribution of ``shots`` measurements; the value is the
  estimate, the gradient is that of the exact probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from quantum.names import check_gate_noise

if TYPE_CHECKING:  # PennyLane is imported only by the function that builds a noise model.
    import pennylane as qml

NOISY_GATES = ("RX", "RY", "RZ", "CRX")
"""The gates the ansatz uses (:mod:`quantum.ansatz`); each is followed by the noise."""

def depolarizing_noise_model(probability: float) -> qml.NoiseModel:
    """Depolarizing noise of ``probability`` after every gate, on each of its wires.

    ``DepolarizingChannel(p)`` maps rho to ``(1 - p) rho + p/3 (X rho X + Y rho Y + Z rho Z)``
    (Nielsen & Chuang, eq. 8.102, in PennyLane's convention). A two-qubit CRX is followed
    by an independent channel on its control and on its target.

    Parameters
    ----------
    probability : float
        Depolarizing probability per gate and wire, in [0, 3/4].
    """
    import pennylane as qml  # the default.mixed path only; the torch path never loads it

    check_gate_noise(probability)
    condition = qml.noise.op_in(list(NOISY_GATES))

    def depolarize(op: qml.operation.Operation, **_metadata) -> None:
        for wire in op.wires:
            qml.DepolarizingChannel(probability, wires=wire)

    return qml.NoiseModel({condition: depolarize})


def check_shots(shots: int) -> None:
    """Raise one clear ``ValueError`` unless ``shots`` is 0 (exact) or a positive int."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ValueError(
            f"shots={shots!r} is not allowed; use 0 (exact expectation values) or a "
            "positive number of measurements"
        )


def sample_probabilities(probabilities: torch.Tensor, shots: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Finite-shot estimates of ``probabilities`` (last axis: basis states).

    Each row is replaced by ``counts / shots`` with ``counts ~ Multinomial(shots, row)``,
    the statistics of measuring the circuit ``shots`` times in the computational basis.
    The gradient passes through unchanged (straight-through): it is the gradient of the
    exact probabilities, i.e. what a shot-based gradient estimate averages to.

    Parameters
    ----------
    probabilities : torch.Tensor
        Shape ``(..., 2**n)``, rows summing to 1.
    shots : int
        Measurements per row, >= 1.
    generator : torch.Generator, optional
        Source of the sampling randomness.
    """
    check_shots(shots)
    if shots == 0:
        raise ValueError("sample_probabilities needs shots >= 1")
    exact = probabilities.detach().to(torch.float64).clamp_min(0.0)
    flat = exact.reshape(-1, exact.shape[-1])
    flat = flat / flat.sum(-1, keepdim=True)
    # Conditional binomials draw the multinomial exactly at a cost independent of shots:
    # count_k ~ Binomial(shots left, p_k / probability mass left).
    counts = torch.zeros_like(flat)
    remaining = torch.full(flat.shape[:1], float(shots), dtype=flat.dtype)
    mass = torch.ones_like(remaining)
    for state in range(flat.shape[1] - 1):
        p = torch.where(mass > 0, (flat[:, state] / mass).clamp(0.0, 1.0), 0.0)
        counts[:, state] = torch.binomial(remaining, p, generator=generator)
        remaining = remaining - counts[:, state]
        mass = (mass - flat[:, state]).clamp_min(0.0)
    counts[:, -1] = remaining
    estimate = (counts / shots).reshape(exact.shape).to(probabilities.dtype)
    return probabilities + (estimate - probabilities).detach()


def expvals_from_probabilities(probabilities: torch.Tensor, n_qubits: int) -> torch.Tensor:
    """Pauli-Z expectation of every wire from basis-state probabilities (wire 0 most
    significant, as ``qml.probs``)."""
    states = torch.arange(2**n_qubits)
    bits = (states.unsqueeze(1) >> torch.arange(n_qubits - 1, -1, -1)) & 1
    signs = (1 - 2 * bits).to(probabilities.dtype)
    return probabilities @ signs
