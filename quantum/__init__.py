"""Circuits and models: the PennyLane ansatz, its fast torch executors, and the models.

- :mod:`quantum.names`: allowed names and ranges (no torch, no PennyLane).
- :mod:`quantum.ansatz`: the circuit in PennyLane operations (the PennyLane devices).
- :mod:`quantum.circuit`: the same circuit as data, its gate list (no PennyLane).
- :mod:`quantum.gates`: gate records and the gate table they are written from.
- :mod:`quantum.recording`: any PennyLane circuit function recorded into gate records.
- :mod:`quantum.executor`: a batched torch statevector executor for a gate list; it runs
  narrow circuits fused into one unitary (:mod:`quantum.fusion`) and wide ones in stages
  (:mod:`quantum.stages`, :mod:`quantum.staged`).
- :mod:`quantum.mixed`: the density-matrix executor for noisy circuits.
- :mod:`quantum.noise`: gate noise and finite-shot read-out.
- :mod:`quantum.layer`: :class:`quantum.layer.QuantumLayer`, one torch module for every backend.
- :mod:`quantum.models`: the ``hybrid``, ``classical`` and ``cnn`` models.

Import the submodule you need; this package imports nothing, so that importing
:mod:`quantum.names` stays light.
"""
