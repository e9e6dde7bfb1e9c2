"""Our device-noise executor against qiskit-aer: speed and agreement, per backend.

Run ``python -m benchmarks.devices``; it prints one JSON object. For each backend the
4-qubit, 2-layer ansatz is compiled on the device (:func:`quantum.devices.compile_ansatz`)
and run on the same batch of random inputs by:

- ours: :class:`quantum.mixed.TorchDensityMatrixExecutor` with the device's noise (fused
  superoperators, float64, one thread), forward only, and forward plus backward (what a
  training step pays);
- aer: qiskit-aer's exact density-matrix simulator with ``NoiseModel.from_backend``, the
  batch as one job of circuits (:func:`quantum.aer_reference.aer_outputs`; building the
  noise model is not timed).

``max_abs_err`` is the largest difference between the two outputs' probabilities.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from quantum.aer_reference import aer_outputs, aer_simulator
from quantum.calibration import device_profile
from quantum.circuit import weight_shapes
from quantum.devices import circuit_fidelity, compile_ansatz
from quantum.mixed import TorchDensityMatrixExecutor

BACKENDS = ("fake_manila", "fake_lima", "fake_nairobi")
"""Small devices, so that aer's full-width density matrices stay cheap."""


def _best(seconds: list[float]) -> float:
    return min(seconds)


def measure(device: str, batch: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """One backend's row of the report."""
    profile = device_profile(device, 4)
    compiled = compile_ansatz(profile, 2)
    shapes = weight_shapes(4, 2)
    executor = TorchDensityMatrixExecutor(compiled.gates, 4, shapes, "probs", device=compiled)
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(batch, 4, generator=generator, dtype=torch.float64) * 6 - 3
    weights = torch.rand(32, generator=generator, dtype=torch.float64) * 6 - 3
    rotations = weights[:24].reshape(2, 4, 3).requires_grad_(True)
    crx = weights[24:].reshape(2, 4).requires_grad_(True)
    forward, training = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            ours = executor(features, rotations, crx)
        forward.append(time.perf_counter() - started)
        started = time.perf_counter()
        executor(features, rotations, crx).sum().backward()
        training.append(time.perf_counter() - started)
    simulator, backend = aer_simulator(device)
    aer_seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        reference = aer_outputs(device, profile, compiled, features.numpy(), weights.numpy(),
                                simulator, backend)
        aer_seconds.append(time.perf_counter() - started)
    return {
        "qubits": list(profile.qubits),
        "native_gates": len(compiled.gates),
        "expected_circuit_fidelity": round(circuit_fidelity(profile, 2), 6),
        "samples_per_s_ours": round(batch / _best(forward), 1),
        "samples_per_s_ours_forward_backward": round(batch / _best(training), 1),
        "samples_per_s_aer": round(batch / _best(aer_seconds), 1),
        "max_abs_err": float(abs(ours.numpy() - reference).max()),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the report as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = {
        "circuit": "4 qubits, 2 layers, readout probs",
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": 1,
        "backends": {device: measure(device, args.batch, args.repeats)
                     for device in args.backends},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
