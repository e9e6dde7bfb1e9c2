"""What the strategies accept, by name: light enough to validate a run config.

:mod:`task.config` offers these as the allowed values of ``aggregation``, ``weighting``,
``angle-aggregation``, ``hierarchy``, ``mode``, ``staleness-weighting`` and
``server-optimizer``; the strategies refuse anything else with the same lists.
"""

AGGREGATIONS: tuple[str, ...] = ("fedavg", "trimmed-mean", "median")
"""``fedavg``: weighted mean; ``trimmed-mean`` and ``median``: coordinate-wise robust rules."""

ANGLE_AGGREGATIONS: tuple[str, ...] = ("circular", "arithmetic")
"""How rotation angles are averaged: on the circle, or as plain numbers (for comparison)."""

WEIGHTINGS: tuple[str, ...] = ("samples", "samples-x-fidelity", "calibration")
"""An update's weight: its sample count, or that times its path's end-to-end fidelity,
or that times its UAV's device's expected circuit fidelity (``device``, ``device-map``)."""

HIERARCHIES: tuple[str, ...] = ("none", "relays")
"""``none``: every update crosses its whole path to the base station; ``relays``: a relay
shared by several UAVs' paths aggregates their updates and forwards one."""

MODES: tuple[str, ...] = ("sync", "async")
"""``sync``: rounds wait for every sampled UAV; ``async``: the global model advances each
time ``buffer-size`` updates have arrived (FedBuff), whatever their age."""

STALENESS_WEIGHTINGS: tuple[str, ...] = ("constant", "polynomial")
"""An async update's weight factor: 1, or ``(1 + staleness) ** -staleness-exponent``."""

DP_MODES: tuple[str, ...] = ("none", "central", "client", "local")
"""Differential privacy: none; ``central``: the base station clips each update and adds
Gaussian noise to the mean; ``client``: each UAV clips its own update, the base station
adds the noise; ``local``: each UAV clips and noises its own update."""

SERVER_OPTIMIZERS: tuple[str, ...] = ("none", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
"""How the global model follows the round's aggregate: ``none`` takes it as the new model;
the others step towards it with server momentum (FedAvgM) or an adaptive optimizer
(Reddi et al. 2021: FedAdam, FedYogi, FedAdagrad), see :mod:`strategies.server_optimizer`."""
