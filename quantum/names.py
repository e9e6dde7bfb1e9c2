"""What the quantum layer accepts, by name and range: light enough to validate a run config.

No torch and no PennyLane here, so :mod:`task.config` can check a run config without
loading either; :mod:`quantum.layer`, :mod:`quantum.models` and :mod:`quantum.noise`
enforce the same rules from the same functions.
"""

from __future__ import annotations

import math

MODEL_NAMES: tuple[str, ...] = ("hybrid", "classical", "cnn")
"""``hybrid`` (CNN -> quantum layer -> head), ``classical`` (its parameter-matched twin),
``cnn`` (the same trunk and head without the bottleneck)."""

READOUTS: tuple[str, ...] = ("expval", "probs")
"""``expval``: <Z> per wire; ``probs``: the basis-state probabilities of all wires."""

TORCH_BACKEND = "torch"
"""The project's own batched torch executors (statevector, or density matrix with noise)."""

PENNYLANE_DEVICES: tuple[str, ...] = ("default.qubit", "default.mixed", "lightning.qubit")
"""PennyLane devices the run config may name as ``quantum-backend``."""

MAX_QUBITS = 12
"""Largest supported circuit width."""

QUANTUM_BACKENDS: tuple[str, ...] = (TORCH_BACKEND, *PENNYLANE_DEVICES)

NOISY_BACKENDS: tuple[str, ...] = (TORCH_BACKEND, "default.mixed")
"""Backends that simulate mixed states, and so can apply gate noise."""

MAX_DEPOLARIZING = 0.75
"""Largest single-qubit depolarizing probability: at 3/4 the channel outputs I/2."""


def check_gate_noise(probability: float) -> None:
    """Raise one clear ``ValueError`` for a depolarizing probability outside [0, 3/4]."""
    if isinstance(probability, bool) or not isinstance(probability, int | float) or not (
        math.isfinite(probability) and 0.0 <= probability <= MAX_DEPOLARIZING
    ):
        raise ValueError(
            f"gate noise {probability!r} is not allowed; use a depolarizing probability "
            f"in [0, {MAX_DEPOLARIZING}]"
        )


def noise_backend_problem(gate_noise: float, backend: str) -> str | None:
    """What is wrong with asking ``backend`` for gate noise (``None``: nothing).

    Worded to follow the setting's name: ``"gate-noise = 0.01 " + problem``.
    """
    if gate_noise and backend not in NOISY_BACKENDS:
        return (
            f"needs quantum-backend {TORCH_BACKEND!r} (density matrices) or "
            f"'default.mixed'; got {backend!r}"
        )
    return None
