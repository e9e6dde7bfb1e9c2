"""The run config schema: every key the apps read, its type and what is allowed.

One source of truth for both apps. The ServerApp validates the whole run config before
any training starts; the ClientApp reads the same keys through :func:`parse_run_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from quantum.names import (
    DEFAULT_ENTANGLER,
    DEVICE_NAMES,
    ENTANGLERS,
    MAX_DEPOLARIZING,
    MAX_QUBITS,
    MODEL_NAMES,
    QUANTUM_BACKENDS,
    READOUTS,
    check_gate_noise,
    device_problem,
    noise_backend_problem,
    training_problem,
)
from relay.channels import CHANNEL_NAMES, channel_options
from relay.options import Option, OptionError, choice, integer, number, satisfies, text
from strategies.names import (
    AGGREGATIONS,
    ANGLE_AGGREGATIONS,
    DP_MODES,
    HIERARCHIES,
    MODES,
    SERVER_OPTIMIZERS,
    STALENESS_WEIGHTINGS,
    WEIGHTINGS,
)

DATASET_NAMES = ("mnist", "fashion-mnist")
PARTITIONINGS = ("iid", "dirichlet")
MAX_CIRCUIT_SHOTS = 10_000_000
FAILURE_MODES = ("error", "timeout")
ATTACKS = ("none", "scale", "sign-flip", "random", "inflate-examples")


class RunConfigError(OptionError):
    """A run config value is missing, of the wrong type, or outside what is allowed."""


def _channel(key: str, default: str) -> Option:
    # Checked against the live registry, so a channel registered after this module was
    # imported is accepted too; the description lists those known at import time.
    return Option(
        key, default,
        "a registered relay channel: " + ", ".join(repr(n) for n in CHANNEL_NAMES),
        lambda v: v in CHANNEL_NAMES,
    )


MAX_NAME_CHARS = 200
"""Longest run name: a folder name, well inside every filesystem's 255-byte limit."""


def _name(key: str) -> Option:
    return Option(
        key, "",
        f"empty (automatic) or a name of up to {MAX_NAME_CHARS} letters, digits, '-', '_' "
        "and '.'",
        lambda v: len(v) <= MAX_NAME_CHARS
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in v)
        and not v.startswith("."),
    )


def _ratio(key: str, default: float) -> Option:
    # A ratio below 1 would refuse updates smaller than the round's median.
    return Option(key, default, "0 (off) or a number from 1.0 to 1e6",
                  lambda v: v == 0.0 or 1.0 <= v <= 1e6)


def _fraction(key: str, default: float) -> Option:
    # A decay rate of 1 would never forget (and FedAdam's bias correction divides by 0).
    return Option(key, default, "a number in [0.0, 1.0)", lambda v: 0.0 <= v < 1.0)


# The core keys, in the order of pyproject.toml's [tool.flwr.app.config], which repeats
# the defaults for Flower (tests/test_config.py checks that the two agree). A relay
# channel's own keys come from its class (relay.channels.registry).
CORE_OPTIONS: tuple[Option, ...] = (
    integer("num-server-rounds", 5, 1, 100_000),
    number("fraction-train", 1.0, 0.0, 1.0, low_open=True),
    number("fraction-evaluate", 0.0, 0.0, 1.0),
    integer("min-train-nodes", 2, 1, 1_000_000),
    integer("local-epochs", 1, 1, 1000),
    integer("batch-size", 32, 1, 65_536),
    number("learning-rate", 0.001, 0.0, 10.0, low_open=True),
    choice("model", "hybrid", MODEL_NAMES),
    integer("n-qubits", 4, 1, MAX_QUBITS),
    integer("n-layers", 2, 1, 50),
    choice("readout", "expval", READOUTS),
    choice("quantum-backend", "torch", QUANTUM_BACKENDS),
    Option("gate-noise", 0.0, f"a number in [0.0, {MAX_DEPOLARIZING}]",
           satisfies(check_gate_noise)),
    integer("circuit-shots", 0, 0, MAX_CIRCUIT_SHOTS),
    # Device-realistic circuits (quantum/devices.py): one device for every UAV, and a
    # file mapping UAVs to devices (and circuit depths); task/devices.py reads it.
    Option("device", "",
           f"empty (noiseless) or one of the {len(DEVICE_NAMES)} qiskit-ibm-runtime fake "
           "backends in lower snake case, such as 'fake_manila', 'fake_lima', "
           "'fake_nairobi', 'fake_sherbrooke' (quantum.names.DEVICE_NAMES)",
           lambda v: v == "" or device_problem(v) is None),
    text("device-map", ""),
    choice("angle-aggregation", "circular", ANGLE_AGGREGATIONS),
    choice("dataset", "mnist", DATASET_NAMES),
    text("data-dir", ""),
    choice("partitioning", "dirichlet", PARTITIONINGS),
    number("dirichlet-alpha", 1.0, 0.0, 1e6, low_open=True),
    integer("max-samples-per-client", 0, 0, 10_000_000),
    # 0: one data partition per UAV (num-partitions); P: UAV i holds partition i mod P.
    integer("data-partitions", 0, 0, 1_000_000),
    number("val-fraction", 0.1, 0.0, 0.5),
    integer("test-samples", 0, 0, 10_000_000),
    integer("seed", 42, 0, 2**31 - 1),
    _name("run-name"),
    text("output-dir", "outputs"),
    _channel("relay", "ideal"),
    text("topology", ""),
    choice("weighting", "samples", WEIGHTINGS),
    # Reliability: round deadline, update screening, robust aggregation, and the
    # simulated failures and attacks used to test them (README: Reliability).
    number("round-timeout", 3600.0, 0.0, 1e6, low_open=True),
    choice("aggregation", "fedavg", AGGREGATIONS),
    # Trimming half from each tail would leave nothing to average.
    Option("trim-fraction", 0.2, "a number in [0.0, 0.5)", lambda v: 0.0 <= v < 0.5),
    _ratio("max-norm-ratio", 5.0),
    _ratio("max-weight-ratio", 10.0),
    number("failure-rate", 0.0, 0.0, 1.0),
    choice("failure-mode", "error", FAILURE_MODES),
    choice("attack", "none", ATTACKS),
    number("attack-fraction", 0.0, 0.0, 1.0),
    number("attack-scale", 10.0, 0.0, 1e6, low_open=True),
    # Crash and resume (server/checkpoint.py): the run folder to continue, or empty.
    _name("resume"),
    # SAGIN learning modes (README: SAGIN learning modes): aggregation at the relays, and
    # asynchronous rounds (FedBuff) over the UAVs' contact windows.
    choice("hierarchy", "none", HIERARCHIES),
    choice("mode", "sync", MODES),
    integer("buffer-size", 5, 1, 100_000),
    integer("max-staleness", 10, 0, 100_000),
    choice("staleness-weighting", "polynomial", STALENESS_WEIGHTINGS),
    number("staleness-exponent", 0.5, 0.0, 10.0),
    # 0: as many UAVs at once as a synchronous round trains.
    integer("concurrency", 0, 0, 1_000_000),
    # Differential privacy (README: Privacy): where updates are clipped and noised, the
    # noise over the clipping norm, the clipping norm, and the delta epsilon is given at.
    choice("dp", "none", DP_MODES),
    # Below 0.01 epsilon is in the millions (and at 0 the accountant divides by zero).
    number("dp-noise-multiplier", 1.0, 0.01, 1000.0),
    number("dp-clip-norm", 1.0, 0.0, 1e6, low_open=True),
    number("dp-delta", 1e-5, 0.0, 0.1, low_open=True),
    # Watching a run (server/watch.py): MLflow tracking URI, or empty (off).
    text("tracking-uri", ""),
    # The entanglement ablation: the quantum layer with or without its CRX ring.
    choice("entangler", DEFAULT_ENTANGLER, ENTANGLERS),
    # Non-IID data (README: Server optimizers): FedProx's proximal term on the UAV, and
    # the server's step towards the aggregate (strategies/server_optimizer.py).
    number("proximal-mu", 0.0, 0.0, 1000.0),
    choice("server-optimizer", "none", SERVER_OPTIMIZERS),
    number("server-learning-rate", 0.1, 0.0, 10.0, low_open=True),
    _fraction("server-momentum", 0.9),
    _fraction("server-beta2", 0.99),
    number("server-tau", 1e-9, 0.0, 1.0, low_open=True),
)

SERVER_OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "fedavgm": ("server-learning-rate", "server-momentum"),
    "fedadam": ("server-learning-rate", "server-momentum", "server-beta2", "server-tau"),
    "fedyogi": ("server-learning-rate", "server-momentum", "server-beta2", "server-tau"),
    "fedadagrad": ("server-learning-rate", "server-tau"),
}
"""The ``server-*`` keys each server optimizer reads; the others are ignored (and said so)."""


def schema() -> dict[str, Option]:
    """Every run-config key: the core keys, then each registered channel's options.

    Raises
    ------
    RunConfigError
        A channel declares a key that is a core key.
    """
    options = {option.key: option for option in CORE_OPTIONS}
    for key, (channel, option) in channel_options().items():
        if key in options:
            raise RunConfigError(
                f"relay channel {channel!r} declares run config key {key!r}, which is a "
                "core key; give its option another name"
            )
        options[key] = option
    return options


def defaults() -> dict[str, Any]:
    """Every run-config key's default (what ``pyproject.toml`` lists for Flower)."""
    return {key: option.default for key, option in schema().items()}


@dataclass(frozen=True)
class RunConfig:
    """The validated run config, with Python names (``num_server_rounds`` for
    ``num-server-rounds``); the relay channels' own keys are in :attr:`channel_values`."""

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
    device: str
    device_map: str
    angle_aggregation: str
    dataset: str
    data_dir: str
    partitioning: str
    dirichlet_alpha: float
    max_samples_per_client: int
    data_partitions: int
    val_fraction: float
    test_samples: int
    seed: int
    run_name: str
    output_dir: str
    relay: str
    topology: str
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
    hierarchy: str
    mode: str
    buffer_size: int
    max_staleness: int
    staleness_weighting: str
    staleness_exponent: float
    concurrency: int
    dp: str
    dp_noise_multiplier: float
    dp_clip_norm: float
    dp_delta: float
    tracking_uri: str
    entangler: str
    proximal_mu: float
    server_optimizer: str
    server_learning_rate: float
    server_momentum: float
    server_beta2: float
    server_tau: float
    channel_values: Mapping[str, Any] = field(default_factory=dict)
    """Values of every registered channel's run-config options, by key (``shots``)."""

    def as_dict(self) -> dict[str, Any]:
        """Return the config with its run-config (kebab-case) key names."""
        core = {option.key: getattr(self, option.argument) for option in CORE_OPTIONS}
        return {**core, **self.channel_values}

    def ignored_options(self) -> list[str]:
        """Warnings for channel options set away from their default on another channel, and
        for ``server-*`` keys the chosen server optimizer does not read."""
        options = channel_options()
        ignored = [
            f"run config '{key}' = {value!r} only acts on the {options[key][0]!r} relay; "
            f"it is ignored with relay {self.relay!r}"
            for key, value in self.channel_values.items()
            if options[key][0] != self.relay and value != options[key][1].default
        ]
        core = self.as_dict()
        used = SERVER_OPTIMIZER_KEYS[self.server_optimizer]
        return ignored + [
            f"run config '{option.key}' = {core[option.key]!r} is ignored with "
            f"server-optimizer {self.server_optimizer!r}"
            for option in CORE_OPTIONS
            if option.key in SERVER_OPTIMIZER_KEYS["fedadam"] and option.key not in used
            and core[option.key] != option.default
        ]


def parse_run_config(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Validate a Flower run config against :func:`schema`.

    Keys absent from ``run_config`` take their defaults (``flwr run`` always passes all
    of them; ``flwr.simulation.run_simulation`` passes none). Imports neither torch nor
    PennyLane.

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
    options = schema()
    default_values = {key: option.default for key, option in options.items()}
    merged = {**default_values, **run_config, **(overrides or {})}
    unknown = sorted(set(merged) - set(options))
    if unknown:
        raise RunConfigError(
            f"run config key '{unknown[0]}' is not known; known keys: {', '.join(options)}"
        )
    values = {}
    for key, option in options.items():
        try:
            values[key] = option.validate(merged[key])
        except OptionError as error:
            raise RunConfigError(str(error)) from None
    core = {option.argument: values.pop(option.key) for option in CORE_OPTIONS}
    config = RunConfig(**core, channel_values=MappingProxyType(values))
    _check_combination(config)
    return config


def _check_combination(config: RunConfig) -> None:
    """Refuse values that are allowed one by one but not together."""
    if config.hierarchy == "relays" and config.aggregation != "fedavg":
        raise RunConfigError(
            f"run config 'hierarchy' = 'relays' needs aggregation 'fedavg': a relay forwards "
            f"one weighted mean, and a {config.aggregation} of relays' aggregates is not the "
            f"{config.aggregation} of the updates; use hierarchy 'none' with "
            f"{config.aggregation!r}"
        )
    if config.mode == "async" and config.server_optimizer != "none":
        raise RunConfigError(
            f"run config 'server-optimizer' = {config.server_optimizer!r} needs mode 'sync': "
            "FedBuff moves each buffered update's step onto the current version and takes "
            "its own server step per version, with staleness weights a server optimizer's "
            "moments would mix across versions; use mode 'sync' or server-optimizer 'none'"
        )
    _check_privacy(config)
    noisy = [key for key, on in (("gate-noise", config.gate_noise),
                                 ("circuit-shots", config.circuit_shots)) if on]
    if noisy and config.model != "hybrid":
        raise RunConfigError(
            f"run config '{noisy[0]}' acts on the quantum layer, which model "
            f"{config.model!r} does not have; use model 'hybrid' or set it to 0"
        )
    _check_device(config)
    if config.entangler != DEFAULT_ENTANGLER and config.model != "hybrid":
        raise RunConfigError(
            f"run config 'entangler' = {config.entangler!r} acts on the quantum layer, which "
            f"model {config.model!r} does not have; use model 'hybrid' or entangler "
            f"{DEFAULT_ENTANGLER!r}"
        )
    if config.entangler != DEFAULT_ENTANGLER and (config.device or config.device_map):
        key = "device" if config.device else "device-map"
        raise RunConfigError(
            f"run config 'entangler' = {config.entangler!r} with '{key}': a device runs the "
            f"{DEFAULT_ENTANGLER!r} ansatz compiled to its native gates, and the ablation "
            "is not compiled yet; leave one of them at its default"
        )
    problem = noise_backend_problem(config.gate_noise, config.quantum_backend)
    if problem:
        raise RunConfigError(f"run config 'gate-noise' = {config.gate_noise} {problem}")
    problem = training_problem(config.quantum_backend, config.readout, config.circuit_shots)
    if problem and config.model == "hybrid":
        raise RunConfigError(
            f"run config 'quantum-backend' = {config.quantum_backend!r} {problem}"
        )


def _check_device(config: RunConfig) -> None:
    """Refuse a device with what cannot run its circuit: the torch density-matrix
    executor of the hybrid model's quantum layer, with no other gate noise."""
    if config.weighting == "calibration" and not (config.device or config.device_map):
        raise RunConfigError(
            "run config 'weighting' = 'calibration' weighs updates by their UAV's device; "
            "set 'device' or 'device-map'"
        )
    if config.weighting == "calibration" and config.hierarchy == "relays":
        raise RunConfigError(
            "run config 'weighting' = 'calibration' needs hierarchy 'none': the emulated "
            "relays weigh the updates they merge by samples or link fidelity only"
        )
    for key, value in (("device", config.device), ("device-map", config.device_map)):
        if not value:
            continue
        if config.model != "hybrid":
            raise RunConfigError(
                f"run config '{key}' = {value!r} acts on the quantum layer, which model "
                f"{config.model!r} does not have; use model 'hybrid'"
            )
        if config.quantum_backend != "torch":
            raise RunConfigError(
                f"run config '{key}' = {value!r} needs quantum-backend 'torch' (the density-"
                f"matrix executor applies the device's noise); got {config.quantum_backend!r}"
            )
        if config.gate_noise:
            raise RunConfigError(
                f"run config '{key}' = {value!r} brings the device's own gate noise; set "
                f"'gate-noise' to 0 (got {config.gate_noise})"
            )


def _check_privacy(config: RunConfig) -> None:
    """Refuse ``dp`` with what would void its guarantee or the screening it relies on."""
    if config.dp == "none":
        return
    if config.mode == "async":
        raise RunConfigError(
            f"run config 'dp' = {config.dp!r} needs mode 'sync': the accountant composes one "
            "sampled release per round, and an asynchronous version mixes updates of several "
            "versions with staleness weights, whose sensitivity it does not bound"
        )
    if config.hierarchy == "relays":
        raise RunConfigError(
            f"run config 'dp' = {config.dp!r} needs hierarchy 'none': with 'relays' the "
            "relays average updates before the base station can clip and count each one"
        )
    if config.aggregation != "fedavg" and config.dp == "local":
        raise RunConfigError(
            f"run config 'dp' = 'local' with aggregation {config.aggregation!r} is refused: "
            "the noise each UAV adds (dp-noise-multiplier x dp-clip-norm on every "
            "coordinate) swamps the spread a median or trimmed mean tells attackers apart "
            "by, and only a mean averages it out; use aggregation 'fedavg'"
        )
    if config.aggregation != "fedavg":
        raise RunConfigError(
            f"run config 'dp' = {config.dp!r} with aggregation {config.aggregation!r} is "
            "refused: the noise is calibrated to the mean's sensitivity (dp-clip-norm over "
            f"the UAVs sampled), and a coordinate-wise {config.aggregation} can move by up "
            "to twice dp-clip-norm when one UAV's data changes; use aggregation 'fedavg'"
        )
