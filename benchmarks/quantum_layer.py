"""Training-step throughput of the hybrid model per backend and width, and executor accuracy.

Run ``python -m benchmarks.quantum_layer --qubits 4 8 12 --layers 2 8``; it prints one
JSON object. For every (``n_qubits``, ``n_layers``) case it measures samples per second
of a full training step (forward, cross-entropy backward, Adam step) on MNIST-shaped
random input with one torch thread, of the hybrid model on the fast torch executor
(``fast``), on PennyLane ``default.qubit`` with backprop and the whole batch broadcast
(``pennylane``) and on ``lightning.qubit`` with the adjoint method (``lightning``), and
of its classical twin (``classical``); and the largest difference of the fast executor's
outputs and gradients from ``default.qubit`` (float64, both read-outs). The models of a
case are timed in interleaved repeats; a model whose step takes longer than
``--slow-step`` seconds runs fewer repeats (``timing`` in each case says how many).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import pennylane as qml
import torch
from torch import nn

from quantum.layer import QuantumLayer
from quantum.models import build_model
from quantum.names import READOUTS

MODELS: dict[str, tuple[str, str]] = {
    "fast": ("hybrid", "torch"),
    "pennylane": ("hybrid", "default.qubit"),
    "lightning": ("hybrid", "lightning.qubit"),
    "classical": ("classical", "torch"),
}
"""Timed models by label: model name and quantum backend."""

GOALS = {
    "max_abs_err": 1e-6,
    "fast_over_default_qubit": 5.0,
    "fast_over_default_qubit_at_4_qubits": 10.0,
    "fast_over_lightning": 5.0,
    "stretch_fast_over_classical_at_4_qubits": 0.9,
}
"""Upper bound for the error, lower bounds for the ratios (the stretch goal is reported
but not required by ``goals_met``)."""


def make_training_step(model: nn.Module, batch_size: int, seed: int) -> Callable[[], None]:
    """A closure running one training step (forward, cross-entropy backward, Adam step).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(batch, 1, 28, 28)`` to logits over 10 classes.
    batch_size : int
        Samples per step.
    seed : int
        Seed of the random input batch and labels.

    Returns
    -------
    Callable[[], None]
        One call is one step on the same batch.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return step


def plan_repeats(
    step: Callable[[], None], args: argparse.Namespace
) -> tuple[int, int, int]:
    """Warm a step up and choose ``(warmup steps, steps per repeat, repeats)``.

    A step is first run until ``--repeat-seconds`` or 3 steps have passed, whichever is
    fewer (it builds the executor's tensors); its last duration sets how many steps a
    timed repeat holds (about ``--repeat-seconds``) and whether it is slow.
    """
    warmup, spent, seconds = 0, 0.0, 0.0
    while warmup < 3 and (warmup == 0 or spent < args.repeat_seconds):
        started = time.perf_counter()
        step()
        seconds = time.perf_counter() - started
        spent, warmup = spent + seconds, warmup + 1
    per_repeat = max(1, round(args.repeat_seconds / max(seconds, 1e-9)))
    repeats = args.slow_repeats if seconds > args.slow_step else args.repeats
    return warmup, per_repeat, repeats


def time_interleaved(
    steps: Mapping[str, Callable[[], None]], plans: Mapping[str, tuple[int, int, int]]
) -> dict[str, list[float]]:
    """Seconds per step of every timed repeat, by label.

    Repeat ``r`` times every model that has an ``r``-th repeat, one after the other, so a
    change in machine load during the run affects the models alike instead of biasing
    their ratios.
    """
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    for repeat in range(max(repeats for _, _, repeats in plans.values())):
        for label, step in steps.items():
            _, count, repeats = plans[label]
            if repeat >= repeats:
                continue
            started = time.perf_counter()
            for _ in range(count):
                step()
            seconds[label].append((time.perf_counter() - started) / count)
    return seconds


def layer_errors(n_qubits: int, n_layers: int, batch_size: int, seed: int) -> dict[str, float]:
    """Largest difference of the fast layer's outputs and gradients from ``default.qubit``.

    Both layers get the same angles and random features in [-pi, pi); the gradients are
    those of a random projection of the outputs, w.r.t. the features and both weight
    tensors. The reference runs in float64; the fast layer in float64 and in float32.

    Returns
    -------
    dict[str, float]
        ``max_abs_err`` (float64, both read-outs) and ``max_abs_err_float32``.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    features = (2 * torch.rand(batch_size, n_qubits, generator=generator) - 1) * torch.pi
    errors = {"float64": 0.0, "float32": 0.0}
    for readout in READOUTS:
        reference = QuantumLayer(
            n_qubits, n_layers, readout, backend="default.qubit", init_seed=seed
        ).double()
        expected = _outputs_and_gradients(reference, features.double(), seed)
        for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            fast = QuantumLayer(n_qubits, n_layers, readout, init_seed=seed).to(dtype)
            actual = _outputs_and_gradients(fast, features.to(dtype), seed)
            difference = max(
                float((mine.double() - theirs).abs().max())
                for mine, theirs in zip(actual, expected, strict=True)
            )
            errors[name] = max(errors[name], difference)
    return {"max_abs_err": errors["float64"], "max_abs_err_float32": errors["float32"]}


def _outputs_and_gradients(
    layer: QuantumLayer, features: torch.Tensor, seed: int
) -> list[torch.Tensor]:
    features = features.clone().requires_grad_()
    outputs = layer(features)
    generator = torch.Generator().manual_seed(seed + 2)
    cotangent = torch.randn(outputs.shape, generator=generator).to(outputs.dtype)
    tensors = [features, layer.rotation_weights, layer.crx_weights]
    gradients = torch.autograd.grad((outputs * cotangent).sum(), tensors)
    return [outputs.detach(), *gradients]


def measure_case(n_qubits: int, n_layers: int, args: argparse.Namespace) -> dict:
    """Throughput of every model, errors, ratios and goals of one case."""
    models = {
        label: build_model(
            name, n_qubits=n_qubits, n_layers=n_layers, backend=backend, seed=args.seed
        )
        for label, (name, backend) in MODELS.items()
    }
    steps = {
        label: make_training_step(model, args.batch_size, args.seed)
        for label, model in models.items()
    }
    plans = {label: plan_repeats(step, args) for label, step in steps.items()}
    seconds = time_interleaved(steps, plans)
    rate = {label: args.batch_size / statistics.median(values) for label, values in seconds.items()}
    case: dict = {
        "n_qubits": n_qubits,
        "n_layers": n_layers,
        "fast_method": _layer(models["fast"]).method,
        **{f"{label}_samples_per_s": round(rate[label], 1) for label in MODELS},
        **layer_errors(n_qubits, n_layers, args.error_batch, args.seed),
        "fast_over_default_qubit": round(rate["fast"] / rate["pennylane"], 2),
        "fast_over_lightning": round(rate["fast"] / rate["lightning"], 2),
        "fast_over_classical": round(rate["fast"] / rate["classical"], 3),
    }
    case["goals"] = case_goals(case)
    case["goals_met"] = all(met for name, met in case["goals"].items()
                            if not name.startswith("stretch"))
    case["timing"] = {
        label: {
            "warmup_steps": plans[label][0],
            "steps_per_repeat": plans[label][1],
            "repeats": plans[label][2],
            "ms_per_step_median": round(1e3 * statistics.median(values), 3),
            "ms_per_step_min": round(1e3 * min(values), 3),
        }
        for label, values in seconds.items()
    }
    return case


def _layer(model: nn.Module) -> QuantumLayer:
    """The quantum layer of a hybrid model."""
    layer = model.get_submodule("quantum")
    assert isinstance(layer, QuantumLayer)
    return layer


def case_goals(case: Mapping) -> dict[str, bool]:
    """Which of :data:`GOALS` a case meets (the 4-qubit ones only at 4 qubits)."""
    goals = {
        "max_abs_err": case["max_abs_err"] <= GOALS["max_abs_err"],
        "fast_over_default_qubit": (
            case["fast_over_default_qubit"] >= GOALS["fast_over_default_qubit"]
        ),
        "fast_over_lightning": case["fast_over_lightning"] >= GOALS["fast_over_lightning"],
    }
    if case["n_qubits"] == 4:
        goals["fast_over_default_qubit_at_4_qubits"] = (
            case["fast_over_default_qubit"] >= GOALS["fast_over_default_qubit_at_4_qubits"]
        )
        goals["stretch_fast_over_classical_at_4_qubits"] = (
            case["fast_over_classical"] >= GOALS["stretch_fast_over_classical_at_4_qubits"]
        )
    return goals


def machine() -> dict:
    """What the figures were measured on."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = (line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name"))
            model = next(names, model)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> dict:
    """Run every case and return the JSON-ready report."""
    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()
    cases = [
        measure_case(n_qubits, n_layers, args)
        for n_qubits in args.qubits
        for n_layers in args.layers
    ]
    return {
        "benchmark": "quantum_layer",
        "command": "python -m benchmarks.quantum_layer " + " ".join(sys.argv[1:]),
        "cases": cases,
        "goals_met": all(case["goals_met"] for case in cases),
        "goals": GOALS,
        "settings": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "slow_repeats": args.slow_repeats,
            "slow_step_seconds": args.slow_step,
            "repeat_seconds": args.repeat_seconds,
            "error_batch": args.error_batch,
            "readout": "expval",
            "input": "random 1x28x28, 10 classes",
            "step": "forward + cross-entropy backward + Adam",
            "timing": "models interleaved in each repeat; median over repeats",
            "seed": args.seed,
        },
        "machine": machine(),
        "load_average": {
            "start": [round(value, 2) for value in load_before],
            "end": [round(value, 2) for value in os.getloadavg()],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pennylane": qml.__version__,
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4], help="circuit widths")
    parser.add_argument("--layers", type=int, nargs="+", default=[2], help="circuit depths")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--slow-repeats", type=int, default=3,
                        help="timed repeats of a model whose step is slow")
    parser.add_argument("--slow-step", type=float, default=0.5,
                        help="seconds per step from which a model is slow")
    parser.add_argument("--repeat-seconds", type=float, default=0.25,
                        help="about how long one timed repeat of a model runs")
    parser.add_argument("--error-batch", type=int, default=8,
                        help="random inputs of the error measurement")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark report as one JSON object."""
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
