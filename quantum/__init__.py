"""Circuits and models: the PennyLane ansatz, its fast torch executor, and the models.

- :mod:`quantum.ansatz`: the circuit, written once in PennyLane operations.
- :mod:`quantum.executor`: a batched torch statevector executor for that circuit.
- :mod:`quantum.layer`: :class:`QuantumLayer`, one torch module for every backend.
- :mod:`quantum.models`: the ``hybrid``, ``classical`` and ``cnn`` models.
"""

from quantum.ansatz import READOUTS, ansatz, encode, trainable_layers
from quantum.executor import TorchStatevectorExecutor
from quantum.layer import ANGLE_PERIODS, PENNYLANE_DEVICES, QuantumLayer
from quantum.models import (
    MODEL_NAMES,
    angle_parameter_names,
    angle_periods,
    build_model,
    count_parameters,
)

__all__ = [
    "ANGLE_PERIODS",
    "MODEL_NAMES",
    "PENNYLANE_DEVICES",
    "READOUTS",
    "QuantumLayer",
    "TorchStatevectorExecutor",
    "angle_parameter_names",
    "angle_periods",
    "ansatz",
    "build_model",
    "count_parameters",
    "encode",
    "trainable_layers",
]
