"""Which executor method, and which Kronecker group size, is fastest at each circuit width.

Run ``python -m benchmarks.quantum_methods``; it prints one JSON object. For every
(``n_qubits``, ``n_layers``) case it times the quantum layer's forward and backward pass
(batch 32, float32, one torch thread, the default ansatz with ``expval``) on the
``fused`` method and on the ``stages`` method with each ``--group-sizes`` value, in
interleaved repeats, and says which was fastest. The executor's choices
(:data:`quantum.executor.MAX_FUSED_QUBITS`, :data:`quantum.stages.GROUP_SIZE`) come
from this measurement; ``choices`` says whether this run agrees with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from quantum.circuit import ansatz_gates, weight_shapes
from quantum.executor import MAX_FUSED_QUBITS, TorchStatevectorExecutor
from quantum.stages import GROUP_SIZE


def layer_step(
    n_qubits: int, n_layers: int, batch_size: int, method: str, group_size: int
) -> Callable[[], None]:
    """One forward and backward pass of the ansatz on the executor, as a closure."""
    shapes = weight_shapes(n_qubits, n_layers)
    executor = TorchStatevectorExecutor(
        ansatz_gates(n_qubits, n_layers), n_qubits, shapes, method=method, group_size=group_size
    )
    generator = torch.Generator().manual_seed(n_qubits)
    weights = [torch.randn(shape, generator=generator, requires_grad=True)
               for shape in shapes.values()]
    features = torch.rand(batch_size, n_qubits, generator=generator, requires_grad=True)

    def step() -> None:
        executor(features, *weights).sum().backward()

    return step


def measure_case(n_qubits: int, n_layers: int, args: argparse.Namespace) -> dict:
    """Median milliseconds per pass of every variant of one case, and the fastest."""
    variants = {}
    if n_qubits <= args.max_fused:
        variants["fused"] = layer_step(n_qubits, n_layers, args.batch_size, "fused", GROUP_SIZE)
    for size in args.group_sizes:
        if size <= n_qubits:
            variants[f"stages_{size}"] = layer_step(
                n_qubits, n_layers, args.batch_size, "stages", size
            )
    counts = {}
    for label, step in variants.items():
        step()  # builds the executor's tensors
        started = time.perf_counter()
        step()
        seconds = time.perf_counter() - started
        counts[label] = max(1, round(args.repeat_seconds / max(seconds, 1e-9)))
    timings: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.repeats):
        for label, step in variants.items():
            started = time.perf_counter()
            for _ in range(counts[label]):
                step()
            timings[label].append(1e3 * (time.perf_counter() - started) / counts[label])
    ms = {label: round(statistics.median(values), 3) for label, values in timings.items()}
    stages = {label: value for label, value in ms.items() if label.startswith("stages")}
    return {
        "n_qubits": n_qubits,
        "n_layers": n_layers,
        "ms_per_pass": ms,
        "passes_per_repeat": counts,
        "fastest": min(ms, key=ms.__getitem__),
        "fastest_stages": min(stages, key=stages.__getitem__) if stages else None,
    }


def run(args: argparse.Namespace) -> dict:
    """Run every case and return the JSON-ready report."""
    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()
    cases = [measure_case(n, layers, args) for n in args.qubits for layers in args.layers]
    fused_fastest = [
        case["n_qubits"] for case in cases if case["fastest"] == "fused"
    ]
    return {
        "benchmark": "quantum_methods",
        "command": "python -m benchmarks.quantum_methods " + " ".join(sys.argv[1:]),
        "cases": cases,
        "choices": {
            "MAX_FUSED_QUBITS": MAX_FUSED_QUBITS,
            "GROUP_SIZE": GROUP_SIZE,
            "widest_fused_fastest": max(fused_fastest, default=None),
        },
        "settings": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "repeat_seconds": args.repeat_seconds,
            "pass": "forward + backward of sum(outputs), float32, expval",
            "timing": "variants interleaved in each repeat; median over repeats",
        },
        "torch_threads": torch.get_num_threads(),
        "load_average": {
            "start": [round(value, 2) for value in load_before],
            "end": [round(value, 2) for value in os.getloadavg()],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=list(range(4, 13)))
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--max-fused", type=int, default=8,
                        help="widest circuit timed on the fused method (it slows fast)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeat-seconds", type=float, default=0.2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print the report as one JSON object."""
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
