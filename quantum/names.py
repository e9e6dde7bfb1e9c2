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

ENTANGLERS: tuple[str, ...] = ("crx-ring", "none")
"""The trainable layers' entangling gates: ``crx-ring`` (a ring of CRX gates after each
layer's rotations) or ``none`` (the same circuit without them: a product state, for the
entanglement ablation; the layer then has no ``crx_weights``)."""

DEFAULT_ENTANGLER = "crx-ring"


def check_entangler(entangler: str) -> None:
    """Raise one clear ``ValueError`` unless ``entangler`` is one of :data:`ENTANGLERS`."""
    if entangler not in ENTANGLERS:
        raise ValueError(
            f"entangler={entangler!r} is not supported; allowed: {', '.join(ENTANGLERS)}"
        )

QUANTUM_BACKENDS: tuple[str, ...] = (TORCH_BACKEND, *PENNYLANE_DEVICES)

NOISY_BACKENDS: tuple[str, ...] = (TORCH_BACKEND, "default.mixed")
"""Backends that simulate mixed states, and so can apply gate noise."""

ADJOINT_ONLY_DEVICES: tuple[str, ...] = ("lightning.qubit",)
"""PennyLane devices that differentiate a batch of inputs only by the adjoint method.

Lightning has no backprop, and PennyLane's parameter shift and finite differences cannot
differentiate broadcast (batched) inputs; the adjoint method differentiates expectation
values only, so these devices can train an ``expval`` circuit but not one that reads out
probabilities (``readout = 'probs'``, or any read-out sampled with circuit shots)."""

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


def training_problem(backend: str, readout: str, shots: int = 0) -> str | None:
    """What stops ``backend`` from training the layer with this read-out (``None``: nothing).

    Worded to follow the setting's name: ``"quantum-backend 'lightning.qubit' " + problem``.
    """
    if backend not in ADJOINT_ONLY_DEVICES or (readout == "expval" and not shots):
        return None
    reading = f"readout {readout!r}" + (f" with {shots} circuit shots" if shots else "")
    return (
        f"cannot train {reading}: it differentiates a batch only by the adjoint method, "
        "which takes expectation values, not probabilities; use readout 'expval' without "
        f"circuit shots, or quantum-backend {TORCH_BACKEND!r} or 'default.qubit'"
    )


DEVICE_NAMES: tuple[str, ...] = (
    "fake_algiers", "fake_almaden", "fake_athens", "fake_auckland", "fake_belem",
    "fake_boeblingen", "fake_bogota", "fake_brisbane", "fake_brooklyn", "fake_burlington",
    "fake_cairo", "fake_cambridge", "fake_casablanca", "fake_cusco", "fake_essex",
    "fake_fez", "fake_geneva", "fake_guadalupe", "fake_hanoi", "fake_jakarta",
    "fake_johannesburg", "fake_kawasaki", "fake_kolkata", "fake_kyiv", "fake_kyoto",
    "fake_lagos", "fake_lima", "fake_london", "fake_manhattan", "fake_manila",
    "fake_marrakesh", "fake_melbourne", "fake_montreal", "fake_mumbai", "fake_nairobi",
    "fake_nighthawk", "fake_osaka", "fake_oslo", "fake_ourense", "fake_paris",
    "fake_peekskill", "fake_perth", "fake_poughkeepsie", "fake_prague", "fake_quebec",
    "fake_quito", "fake_rochester", "fake_rome", "fake_santiago", "fake_sherbrooke",
    "fake_singapore", "fake_sydney", "fake_torino", "fake_toronto", "fake_valencia",
    "fake_vigo", "fake_washington", "fake_yorktown",
)
"""Backends the run config may name as ``device``: qiskit-ibm-runtime's fake backends
(calibration snapshots of real IBM devices) without ``Fake``/``V2``, in lower snake case
(``FakeManilaV2`` -> ``fake_manila``), two-qubit devices and up (tests check the list
against the installed qiskit-ibm-runtime)."""


def device_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a device (``None``: nothing), worded to follow it."""
    if name in DEVICE_NAMES:
        return None
    close = [d for d in DEVICE_NAMES if name and name.replace("fake_", "") in d][:3]
    examples = close or ["fake_manila", "fake_lima", "fake_nairobi", "fake_sherbrooke"]
    return (
        "is not a known device; use a qiskit-ibm-runtime fake backend in lower snake case "
        f"without Fake/V2, such as {', '.join(repr(d) for d in examples)} "
        f"({len(DEVICE_NAMES)} in all, quantum.names.DEVICE_NAMES)"
    )
