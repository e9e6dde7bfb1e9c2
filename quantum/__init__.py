"""Circuits and models: the PennyLane ansatz, its fast torch executors, and the models.

- :mod:`quantum.names`: allowed names and ranges (no torch, no PennyLane).
- :mod:`quantum.ansatz`: the circuit, written once in PennyLane operations.
- :mod:`quantum.executor`: a batched torch statevector executor for that circuit.
- :mod:`quantum.mixed`: the density-matrix executor for noisy circuits.
- :mod:`quantum.noise`: gate noise and finite-shot read-out.
- :mod:`quantum.layer`: :class:`quantum.layer.QuantumLayer`, one torch module for every backend.
- :mod:`quantum.models`: the ``hybrid``, ``classical`` and ``cnn`` models.

Import the submodule you need; this package imports nothing, so that importing
:mod:`quantum.names` stays light.
"""
