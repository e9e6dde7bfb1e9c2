"""The field's reference for device noise: qiskit-aer with ``NoiseModel.from_backend``.

:func:`aer_outputs` runs the compiled ansatz (:func:`quantum.devices.compile_ansatz`, the
same native gates on the same physical qubits) on the fake backend's full width with
qiskit-aer's exact density-matrix simulator (``method='density_matrix'``, probabilities
saved without shots) and the backend's noise model, then applies aer's read-out errors
(``basic_device_readout_errors``, the model's ``ReadoutError`` matrices) to the saved
probabilities, since aer applies those only to sampled bits. Tests and
``python -m benchmarks.devices`` compare :class:`quantum.mixed.TorchDensityMatrixExecutor`
with it. Imports qiskit and qiskit-aer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantum.calibration import load_backend
from quantum.devices import DeviceCircuit, DeviceProfile

_STANDARD = {"sx": "sx", "x": "x", "cx": "cx", "cz": "cz", "ecr": "ecr"}


def aer_simulator(device: str) -> tuple[Any, Any]:
    """``(AerSimulator, backend)``: exact density matrices under the backend's noise."""
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel

    backend = load_backend(device)
    model = NoiseModel.from_backend(backend)
    return AerSimulator(method="density_matrix", noise_model=model), backend


def _circuit(profile: DeviceProfile, compiled: DeviceCircuit, width: int,
             features: np.ndarray, weights: np.ndarray) -> Any:
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(width)
    physical = profile.qubits
    for gate in compiled.gates:
        qubits = [physical[w] for w in gate.wires]
        if gate.name in _STANDARD:
            getattr(circuit, _STANDARD[gate.name])(*qubits)
            continue
        if gate.source == "constant":
            matrix = gate.fixed_matrix()
        else:
            angle = features[gate.index] if gate.source == "feature" else weights[gate.index]
            matrix = gate.matrix_at(float(angle))
        circuit.rz(float(np.angle(matrix[1, 1] / matrix[0, 0])), qubits[0])
    circuit.save_probabilities(qubits=list(reversed(physical)))
    return circuit


def aer_outputs(device: str, profile: DeviceProfile, compiled: DeviceCircuit,
                features: np.ndarray, weights: np.ndarray, simulator: Any = None,
                backend: Any = None) -> np.ndarray:
    """Basis-state probabilities (wire 0 most significant) of each row of ``features``.

    Parameters
    ----------
    device : str
        The fake backend, e.g. ``"fake_manila"``.
    profile, compiled
        The device's profile and the ansatz compiled on it.
    features : numpy.ndarray
        Shape ``(batch, n_qubits)``.
    weights : numpy.ndarray
        The flat weight vector (rotation weights, then CRX weights).
    simulator, backend : optional
        From :func:`aer_simulator`, to reuse.
    """
    from qiskit_aer.noise.device import basic_device_readout_errors

    if simulator is None or backend is None:
        simulator, backend = aer_simulator(device)
    circuits = [_circuit(profile, compiled, backend.num_qubits, row, weights)
                for row in np.asarray(features, dtype=float)]
    result = simulator.run(circuits, shots=1).result()
    probabilities = np.array([result.data(i)["probabilities"] for i in range(len(circuits))])
    confusions = {qubits[0]: np.asarray(error.probabilities)
                  for qubits, error in basic_device_readout_errors(target=backend.target)}
    n = profile.n_qubits
    shaped = probabilities.reshape(-1, *([2] * n))
    for wire, qubit in enumerate(profile.qubits):
        if qubit in confusions:
            shaped = np.moveaxis(np.moveaxis(shaped, wire + 1, -1) @ confusions[qubit], -1,
                                 wire + 1)
    return shaped.reshape(len(circuits), 2**n)
