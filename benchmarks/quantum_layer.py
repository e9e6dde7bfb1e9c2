"""Training-step throughput of the hybrid model on each backend, and executor accuracy.

Run ``python -m benchmarks.quantum_layer``; it prints one JSON object. Measured: samples
per second of a full training step (forward, backward, Adam step) on MNIST-shaped random
input with one torch thread, for the hybrid model on the torch executor
(``hybrid_fast``), the hybrid model on PennyLane ``default.qubit`` with backprop and the
whole batch broadcast (``hybrid_default_qubit``), and the classical-bottleneck model;
and the largest output difference between the torch executor and ``default.qubit``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import pennylane as qml
import torch
from torch import nn

from quantum.layer import QuantumLayer
from quantum.models import build_model

TARGETS = {"max_abs_err": 1e-6, "fast_over_default_qubit": 10.0, "fast_over_classical": 0.5}
"""Acceptance targets: upper bound for the error, lower bounds for the ratios."""


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


def time_steps(
    steps: Mapping[str, Callable[[], None]],
    steps_per_repeat: Mapping[str, int],
    repeats: int,
    warmup: int,
) -> dict[str, list[float]]:
    """Seconds per step of each training step, timed in interleaved repeats.

    Each repeat times every model once, one after the other, so a change in machine load
    during the run affects all models alike instead of biasing the ratios.

    Parameters
    ----------
    steps : Mapping[str, Callable[[], None]]
        Training-step closures by label.
    steps_per_repeat : Mapping[str, int]
        Steps per timed repeat, by label.
    repeats : int
        Number of timed repeats.
    warmup : int
        Untimed steps of each model first.

    Returns
    -------
    dict[str, list[float]]
        Seconds per step of every repeat, by label.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            count = steps_per_repeat[label]
            started = time.perf_counter()
            for _ in range(count):
                step()
            seconds[label].append((time.perf_counter() - started) / count)
    return seconds


def max_abs_error(
    n_qubits: int, n_layers: int, readout: str, batch_size: int, dtype: torch.dtype, seed: int
) -> float:
    """Largest output difference between the torch executor and ``default.qubit``.

    Both layers get the same random angles in [-pi, pi); the reference always runs in
    float64, the torch executor in ``dtype``.

    Parameters
    ----------
    n_qubits, n_layers, readout
        The quantum layer.
    batch_size : int
        Number of random inputs.
    dtype : torch.dtype
        ``torch.float32`` or ``torch.float64`` for the torch executor.
    seed : int
        Seed of the weights and inputs.

    Returns
    -------
    float
        ``max |fast - reference|`` over all inputs and outputs.
    """
    fast = QuantumLayer(n_qubits, n_layers, readout, init_seed=seed).to(dtype)
    reference = QuantumLayer(
        n_qubits, n_layers, readout, backend="default.qubit", init_seed=seed
    ).double()
    generator = torch.Generator().manual_seed(seed + 1)
    features = (2 * torch.rand(batch_size, n_qubits, generator=generator) - 1) * torch.pi
    with torch.no_grad():
        expected = reference(features.double())
        actual = fast(features.to(dtype)).double()
    return float((actual - expected).abs().max())


def measure_throughput(args: argparse.Namespace) -> dict[str, dict]:
    """Throughput of a training step of each model (hybrid on both backends, classical).

    Returns
    -------
    dict[str, dict]
        By model label: median samples per second and milliseconds per step, the fastest
        repeat's milliseconds per step, and the steps per timed repeat.
    """
    models = {
        "hybrid_fast": ("hybrid", "torch", args.steps),
        "hybrid_default_qubit": ("hybrid", "default.qubit", max(1, args.steps // 10)),
        "classical": ("classical", "torch", args.steps),
    }
    steps = {
        label: make_training_step(
            build_model(
                name,
                n_qubits=args.n_qubits,
                n_layers=args.n_layers,
                backend=backend,
                seed=args.seed,
            ),
            args.batch_size,
            args.seed,
        )
        for label, (name, backend, _) in models.items()
    }
    seconds = time_steps(
        steps,
        {label: count for label, (_, _, count) in models.items()},
        args.repeats,
        args.warmup,
    )
    return {
        label: {
            "samples_per_s": round(args.batch_size / statistics.median(values), 1),
            "ms_per_step": round(1e3 * statistics.median(values), 3),
            "ms_per_step_min": round(1e3 * min(values), 3),
            "steps_per_repeat": models[label][2],
        }
        for label, values in seconds.items()
    }


def run(args: argparse.Namespace) -> dict:
    """Run all measurements and return the JSON-ready report."""
    torch.set_num_threads(1)
    settings = {
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "warmup_steps": args.warmup,
        "n_qubits": args.n_qubits,
        "n_layers": args.n_layers,
        "readout": "expval",
        "torch_threads": torch.get_num_threads(),
        "input": "random 1x28x28, 10 classes",
        "step": "forward + cross-entropy backward + Adam",
        "timing": "models interleaved in each repeat; median over repeats",
    }
    throughput = measure_throughput(args)
    rate = {label: result["samples_per_s"] for label, result in throughput.items()}
    errors = {
        f"max_abs_err_{readout}_{name}": max_abs_error(
            args.n_qubits, args.n_layers, readout, 256, dtype, args.seed
        )
        for readout in ("expval", "probs")
        for name, dtype in (("float64", torch.float64), ("float32", torch.float32))
    }
    report = {
        "benchmark": "quantum_layer",
        "samples_per_s": rate,
        "fast_over_default_qubit": round(rate["hybrid_fast"] / rate["hybrid_default_qubit"], 2),
        "fast_over_classical": round(rate["hybrid_fast"] / rate["classical"], 3),
        "max_abs_err": errors["max_abs_err_expval_float64"],
        **errors,
        "steps": throughput,
        "settings": settings,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pennylane": qml.__version__,
        },
        "targets": TARGETS,
    }
    report["targets_met"] = (
        report["max_abs_err"] <= TARGETS["max_abs_err"]
        and report["fast_over_default_qubit"] >= TARGETS["fast_over_default_qubit"]
        and report["fast_over_classical"] >= TARGETS["fast_over_classical"]
    )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats (median)")
    parser.add_argument(
        "--steps",
        type=int,
        default=50,
        help="steps per timed repeat (default.qubit runs a tenth of them)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--n-qubits", type=int, default=4)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark report as one JSON object."""
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
