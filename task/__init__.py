"""What the ClientApp and the ServerApp share: run config, data, training, wiring, outputs.

Both apps stand on this package and never import each other (``docs/architecture.md``):

- :mod:`task.config`: the run-config schema and :func:`task.config.parse_run_config`
  (imports neither torch nor PennyLane).
- :mod:`task.data`: the bundled datasets, partitions and the test set.
- :mod:`task.train`: the model named by the run config, local training and evaluation.
- :mod:`task.wiring`: record keys, the run's channel and topology, which UAV a node is.
- :mod:`task.outputs`: run folders, atomic JSON and model writes, figures.
"""
