"""The run config schema: every key the apps read, its type and what is allowed.

One source of truth for both apps. The ServerApp validates the whole run config before
any training starts; the ClientApp reads the same keys through :func:`parse_run_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quantum.layer import PENNYLANE_DEVICES
from quantum.models import MODEL_NAMES
from quantum.noise import MAX_DEPOLARIZING
from relay.channels import CHANNEL_NAMES
from relay.channels.teleport import DEFAULT_SHOTS

DATASET_NAMES = ("mnist", "fashion-mnist")
PARTITIONINGS = ("iid", "dirichlet")
READOUTS = ("expval", "probs")
QUANTUM_BACKENDS = ("torch", *PENNYLANE_DEVICES)
ANGLE_AGGREGATIONS = ("circular", "arithmetic")
WEIGHTINGS = ("samples", "samples-x-fidelity")
MAX_SHOTS = 10_000_000
AGGREGATIONS = ("fedavg", "trimmed-mean", "median")
FAILURE_MODES = ("error", "timeout")
ATTACKS = ("none", "scale", "sign-flip", "random", "inflate-examples")


class RunConfigError(ValueError):
    """A run config value is missing, of the wrong type, or outside what is allowed."""


@dataclass(frozen=True)
class Key:
    """One run config key: its Python type and a check with a human description."""

    kind: type
    allowed: str
    check: Callable[[Any], bool]


def _int(low: int, high: int) -> Key:
    return Key(int, f"an integer from {low} to {high}", lambda v: low <= v <= high)


def _float(low: float, high: float, low_open: bool = False) -> Key:
    bracket = "(" if low_open else "["
    return Key(
        float,
        f"a number in {bracket}{low}, {high}]",
        lambda v: math.isfinite(v) and (v > low if low_open else v >= low) and v <= high,
    )


def _choice(names: tuple[str, ...]) -> Key:
    return Key(str, "one of " + ", ".join(repr(n) for n in names), lambda v: v in names)


def _text() -> Key:
    return Key(str, "a string", lambda v: True)


def _channel() -> Key:
    # Checked against the live registry, so a channel registered after this module was
    # imported is accepted too; the description lists those known at import time.
    return Key(
        str,
        "a registered relay channel: " + ", ".join(repr(n) for n in CHANNEL_NAMES),
        lambda v: v in CHANNEL_NAMES,
    )


def _shots() -> Key:
    # Half the shots are measured in Z and half in X, so the count must be even.
    return Key(
        int,
        f"an even integer from 2 to {MAX_SHOTS}",
        lambda v: 2 <= v <= MAX_SHOTS and v % 2 == 0,
    )


def _name() -> Key:
    return Key(
        str,
        "empty (automatic) or a name of letters, digits, '-', '_' and '.'",
        lambda v: all(c.isalnum() or c in "-_." for c in v) and not v.startswith("."),
    )


def _ratio() -> Key:
    # A ratio below 1 would refuse updates smaller than the round's median.
    return Key(
        float,
        "0 (off) or a number from 1.0 to 1e6",
        lambda v: math.isfinite(v) and (v == 0.0 or 1.0 <= v <= 1e6),
    )


def _trim() -> Key:
    # Trimming half from each tail would leave nothing to average.
    return Key(float, "a number in [0.0, 0.5)", lambda v: math.isfinite(v) and 0.0 <= v < 0.5)


# Defaults live here; pyproject.toml's [tool.flwr.app.config] repeats them for Flower,
# and tests/test_config.py checks that the two agree.
SCHEMA: dict[str, tuple[Key, Any]] = {
    "num-server-rounds": (_int(1, 100_000), 5),
    "fraction-train": (_float(0.0, 1.0, low_open=True), 1.0),
    "fraction-evaluate": (_float(0.0, 1.0), 0.0),
    "min-train-nodes": (_int(1, 1_000_000), 2),
    "local-epochs": (_int(1, 1000), 1),
    "batch-size": (_int(1, 65_536), 32),
    "learning-rate": (_float(0.0, 10.0, low_open=True), 0.001),
    "model": (_choice(MODEL_NAMES), "hybrid"),
    "n-qubits": (_int(1, 12), 4),
    "n-layers": (_int(1, 50), 2),
    "readout": (_choice(READOUTS), "expval"),
    "quantum-backend": (_choice(QUANTUM_BACKENDS), "torch"),
    "gate-noise": (_float(0.0, MAX_DEPOLARIZING), 0.0),
    "circuit-shots": (_int(0, MAX_SHOTS), 0),
    "angle-aggregation": (_choice(ANGLE_AGGREGATIONS), "circular"),
    "dataset": (_choice(DATASET_NAMES), "mnist"),
    "data-dir": (_text(), ""),
    "partitioning": (_choice(PARTITIONINGS), "dirichlet"),
    "dirichlet-alpha": (_float(0.0, 1e6, low_open=True), 1.0),
    "max-samples-per-client": (_int(0, 10_000_000), 0),
    "val-fraction": (_float(0.0, 0.5), 0.1),
    "test-samples": (_int(0, 10_000_000), 0),
    "seed": (_int(0, 2**31 - 1), 42),
    "run-name": (_name(), ""),
    "output-dir": (_text(), "outputs"),
    "relay": (_channel(), "ideal"),
    "topology": (_text(), ""),
    "shots": (_shots(), DEFAULT_SHOTS),
    "eavesdropper": (_float(0.0, 1.0), 0.0),
    "weighting": (_choice(WEIGHTINGS), "samples"),
    # Reliability: round deadline, update screening, robust aggregation, and the
    # simulated failures and attacks used to test them (docs: RELIABILITY section).
    "round-timeout": (_float(0.0, 1e6, low_open=True), 3600.0),
    "aggregation": (_choice(AGGREGATIONS), "fedavg"),
    "trim-fraction": (_trim(), 0.2),
    "max-norm-ratio": (_ratio(), 5.0),
    "max-weight-ratio": (_ratio(), 10.0),
    "failure-rate": (_float(0.0, 1.0), 0.0),
    "failure-mode": (_choice(FAILURE_MODES), "error"),
    "attack": (_choice(ATTACKS), "none"),
    "attack-fraction": (_float(0.0, 1.0), 0.0),
    "attack-scale": (_float(0.0, 1e6, low_open=True), 10.0),
    # Crash and resume (server/checkpoint.py): the run folder to continue, or empty.
    "resume": (_name(), ""),
}
DEFAULTS: dict[str, Any] = {key: default for key, (_spec, default) in SCHEMA.items()}


@dataclass(frozen=True)
class RunConfig:
    """The validated run config, with Python names (``num_server_rounds`` for
    ``num-server-rounds``)."""

    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    model: str
    n_qubits: int
    n_layers: int
    readout: str
    quantum_backend: str
    gate_noise: float
    circuit_shots: int
    angle_aggregation: str
    dataset: str
    data_dir: str
    partitioning: str
    dirichlet_alpha: float
    max_samples_per_client: int
    val_fraction: float
    test_samples: int
    seed: int
    run_name: str
    output_dir: str
    relay: str
    topology: str
    shots: int
    eavesdropper: float
    weighting: str
    round_timeout: float
    aggregation: str
    trim_fraction: float
    max_norm_ratio: float
    max_weight_ratio: float
    failure_rate: float
    failure_mode: str
    attack: str
    attack_fraction: float
    attack_scale: float
    resume: str

    def as_dict(self) -> dict[str, Any]:
        """Return the config with its run-config (kebab-case) key names."""
        return {key: getattr(self, key.replace("-", "_")) for key in SCHEMA}


def _coerce(key: str, value: Any, spec: Key) -> Any:
    # TOML and --run-config give ints where a float is meant ("learning-rate=1").
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, spec.kind):
        raise RunConfigError(
            f"run config '{key}' = {value!r} has type {type(value).__name__}; "
            f"allowed: {spec.allowed}"
        )
    return value


def parse_run_config(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Validate a Flower run config against :data:`SCHEMA`.

    Keys absent from ``run_config`` take their defaults (``flwr run`` always passes all
    of them; ``flwr.simulation.run_simulation`` passes none).

    Parameters
    ----------
    run_config : Mapping[str, Any]
        ``context.run_config`` as Flower hands it to an app.
    overrides : Mapping[str, Any], optional
        Values that take precedence, for runs started from Python.

    Returns
    -------
    RunConfig
        The typed, checked values.

    Raises
    ------
    RunConfigError
        For the first unknown or out-of-range key, naming the key, the value and what
        is allowed.
    """
    merged = {**DEFAULTS, **run_config, **(overrides or {})}
    unknown = sorted(set(merged) - set(SCHEMA))
    if unknown:
        raise RunConfigError(
            f"run config key '{unknown[0]}' is not known; known keys: {', '.join(SCHEMA)}"
        )
    values = {}
    for key, (spec, _default) in SCHEMA.items():
        value = _coerce(key, merged[key], spec)
        if not spec.check(value):
            raise RunConfigError(
                f"run config '{key}' = {value!r} is not allowed; use {spec.allowed}"
            )
        values[key.replace("-", "_")] = value
    config = RunConfig(**values)
    _check_combination(config)
    return config


def _check_combination(config: RunConfig) -> None:
    """Refuse values that are allowed one by one but not together."""
    noisy = [key for key, on in (("gate-noise", config.gate_noise),
                                 ("circuit-shots", config.circuit_shots)) if on]
    if noisy and config.model != "hybrid":
        raise RunConfigError(
            f"run config '{noisy[0]}' acts on the quantum layer, which model "
            f"{config.model!r} does not have; use model 'hybrid' or set it to 0"
        )
    if config.gate_noise and config.quantum_backend not in ("torch", "default.mixed"):
        raise RunConfigError(
            f"run config 'gate-noise' = {config.gate_noise} needs quantum-backend 'torch' "
            f"(density matrices) or 'default.mixed'; got {config.quantum_backend!r}"
        )
