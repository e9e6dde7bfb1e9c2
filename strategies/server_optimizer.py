"""Server optimizers (run config ``server-optimizer``): FedAvgM, FedAdam, FedYogi, FedAdagrad.

Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR; arXiv:2003.00295), treat the
round's aggregate minus the global model as a pseudo-gradient and step the global model
with a server optimizer instead of replacing it by the aggregate; FedAvgM (Hsu et al.
2019) adds server momentum to FedAvg. The formulas are those of Flower's own strategies
(``flwr.serverapp.strategy.FedAvgM``, ``FedAdam``, ``FedYogi``, ``FedAdagrad``), written
here over the strategy's aggregate so they compose with every rule this project has (the
circular mean, the robust rules, the noised mean of ``dp``). With the pseudo-gradient
``delta = aggregate - global``, ``m`` and ``v`` starting at zero and ``t`` the server round:

- ``fedavgm``: ``u = momentum * u - delta`` (``u = -delta`` the first time);
  ``global - learning_rate * u``.
- ``fedadam``: ``m = b1 m + (1 - b1) delta``, ``v = b2 v + (1 - b2) delta**2``;
  ``global + eta_t m / (sqrt(v) + tau)`` with Flower's bias correction
  ``eta_t = learning_rate * sqrt(1 - b2**(t + 1)) / (1 - b1**(t + 1))``.
- ``fedyogi``: ``m`` as Adam, ``v = v - (1 - b2) delta**2 sign(v - delta**2)``;
  ``global + learning_rate m / (sqrt(v) + tau)``.
- ``fedadagrad``: ``m = delta`` (Flower's FedAdagrad has no first moment),
  ``v = v + delta**2``; ``global + learning_rate m / (sqrt(v) + tau)``.

``b1`` is run config ``server-momentum``, ``b2`` ``server-beta2``. Rotation angles are
periodic: their ``delta`` is wrapped into half a period (the short way round, as the
robust rules measure it, :func:`strategies.robust.array_deltas`) and the stepped angle is
wrapped back into its period. Integer arrays take the aggregate's value unstepped. The
moments are computed in float64 and kept as strategy state, so a checkpoint carries them
(:meth:`ServerOptimizer.state`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from strategies.names import SERVER_OPTIMIZERS
from strategies.robust import array_deltas, wrap_angle


@dataclass(frozen=True)
class ServerOptimizerSettings:
    """A server optimizer and its hyperparameters (run config ``server-*``)."""

    name: str
    learning_rate: float = 0.1
    momentum: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-9

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS or self.name == "none":
            raise ValueError(f"server optimizer {self.name!r} is not known; use one of "
                             f"{', '.join(n for n in SERVER_OPTIMIZERS if n != 'none')}")
        checks = (("learning_rate", self.learning_rate > 0), ("tau", self.tau > 0),
                  ("momentum", 0 <= self.momentum < 1), ("beta2", 0 <= self.beta2 < 1))
        for name, ok in checks:
            value = getattr(self, name)
            if not (math.isfinite(value) and ok):
                raise ValueError(f"server optimizer {name} = {value!r} is out of range")


def _pack(arrays: Mapping[str, np.ndarray] | None) -> dict[str, Any] | None:
    """Moments as plain values a ``weights_only`` checkpoint holds, bit for bit."""
    if arrays is None:
        return None
    return {name: {"shape": list(a.shape), "data": a.astype(np.float64).tobytes()}
            for name, a in arrays.items()}


def _unpack(packed: Any) -> dict[str, np.ndarray] | None:
    if packed is None:
        return None
    return {
        str(name): np.frombuffer(entry["data"], dtype=np.float64)
        .reshape([int(n) for n in entry["shape"]]).copy()
        for name, entry in dict(packed).items()
    }


class ServerOptimizer:
    """The server's step from the global model towards the round's aggregate.

    Parameters
    ----------
    settings : ServerOptimizerSettings
        Which optimizer, and its hyperparameters.
    """

    def __init__(self, settings: ServerOptimizerSettings) -> None:
        self.settings = settings
        self.first: dict[str, np.ndarray] | None = None
        """FedAvgM's momentum buffer, or the adaptive optimizers' first moment ``m``."""
        self.second: dict[str, np.ndarray] | None = None
        """The adaptive optimizers' second moment ``v`` (``None`` for FedAvgM)."""
        self.steps = 0
        """Steps taken so far (a skipped round takes none)."""

    def describe(self) -> str:
        """One line of the optimizer and the hyperparameters it reads, for the log."""
        s = self.settings
        reads = {"fedavgm": f"momentum {s.momentum:g}",
                 "fedadagrad": f"tau {s.tau:g}"}.get(
            s.name, f"beta_1 {s.momentum:g}, beta_2 {s.beta2:g}, tau {s.tau:g}")
        return f"{s.name}, learning rate {s.learning_rate:g}, {reads}"

    def step(self, server_round: int, reference: Mapping[str, np.ndarray],
             aggregate: ArrayRecord, angle_periods: Mapping[str, float]) -> ArrayRecord:
        """The new global model: ``reference`` (this round's global model) stepped along
        the pseudo-gradient ``aggregate - reference``, angles wrapped.

        Parameters
        ----------
        server_round : int
            The round (Flower's FedAdam bias correction counts it).
        reference : Mapping[str, np.ndarray]
            The global model the round's updates started from.
        aggregate : ArrayRecord
            The round's aggregate, with the same names, shapes and dtypes.
        angle_periods : Mapping[str, float]
            The arrays that hold rotation angles, with their periods.
        """
        values = {name: array.numpy() for name, array in aggregate.items()}
        floats = [name for name, value in values.items() if value.dtype.kind == "f"]
        deltas = {name: array_deltas(values[name], reference[name], angle_periods.get(name))
                  for name in floats}
        moves = self._moves(server_round, deltas)
        self.steps += 1
        stepped: dict[str, Array] = {}
        for name, value in values.items():
            if name in moves:
                new = reference[name].astype(np.float64) + moves[name]
                if name in angle_periods:
                    new = wrap_angle(new, angle_periods[name])
                value = new.astype(value.dtype)
            stepped[name] = Array(np.ascontiguousarray(value))
        return ArrayRecord(stepped)

    def _moves(self, server_round: int, deltas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """How far each float array moves from the reference this step; updates moments."""
        s = self.settings
        if s.name == "fedavgm":
            previous = self.first
            self.first = {
                name: -d if previous is None else s.momentum * previous[name] - d
                for name, d in deltas.items()
            }
            return {name: -s.learning_rate * u for name, u in self.first.items()}
        beta1 = 0.0 if s.name == "fedadagrad" else s.momentum
        m0 = self.first or {name: np.zeros_like(d) for name, d in deltas.items()}
        v0 = self.second or {name: np.zeros_like(d) for name, d in deltas.items()}
        self.first = {name: beta1 * m0[name] + (1 - beta1) * d for name, d in deltas.items()}
        if s.name == "fedadam":
            self.second = {name: s.beta2 * v0[name] + (1 - s.beta2) * d**2
                           for name, d in deltas.items()}
            eta = (s.learning_rate * math.sqrt(1 - s.beta2 ** (server_round + 1))
                   / (1 - beta1 ** (server_round + 1)))
        elif s.name == "fedyogi":
            self.second = {name: v0[name] - (1 - s.beta2) * d**2 * np.sign(v0[name] - d**2)
                           for name, d in deltas.items()}
            eta = s.learning_rate
        else:  # fedadagrad
            self.second = {name: v0[name] + d**2 for name, d in deltas.items()}
            eta = s.learning_rate
        second = self.second
        return {name: eta * m / (np.sqrt(second[name]) + s.tau)
                for name, m in self.first.items()}

    # --- checkpoints ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The optimizer's name, its step count and its moments, as plain values."""
        return {"name": self.settings.name, "steps": self.steps,
                "first": _pack(self.first), "second": _pack(self.second)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned.

        Raises
        ------
        ValueError
            The state is another optimizer's, or malformed.
        """
        if not isinstance(state, Mapping) or set(state) != {"name", "steps", "first", "second"}:
            raise ValueError("the checkpoint's server optimizer state is malformed")
        if state["name"] != self.settings.name:
            raise ValueError(f"the checkpoint's server optimizer is {state['name']!r}, this "
                             f"run's {self.settings.name!r}")
        try:
            first, second = _unpack(state["first"]), _unpack(state["second"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"the checkpoint's server optimizer moments are malformed "
                             f"({type(err).__name__}: {err})") from None
        self.first, self.second, self.steps = first, second, int(state["steps"])
