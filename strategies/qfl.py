"""QFLStrategy: FedAvg that checks every update and averages rotation angles as angles.

The strategy keeps Flower's sampling and message construction and overrides two hooks:
``configure_train`` (to give each node's message a per-node encoding step) and
``aggregate_train`` (decode, validate, weight, aggregate). The relay channel layer plugs
in by overriding :meth:`QFLStrategy.encode_downlink`, :meth:`QFLStrategy.decode_uplink`
and :meth:`QFLStrategy.weigh_update` (see :mod:`strategies.relay`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"


class UpdateRejected(Exception):  # noqa: N818 - reads as the event, like ChannelRejected
    """A client's reply that must not be aggregated; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RoundReport:
    """What happened to the replies of one training round."""

    server_round: int
    clients_sampled: int = 0
    clients_used: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def clients_rejected(self) -> int:
        """Number of replies that arrived but were refused."""
        return len(self.rejected)

    @property
    def clients_failed(self) -> int:
        """Number of nodes that replied with an error instead of an update."""
        return len(self.failed)


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype an incoming array must have."""

    shape: tuple[int, ...]
    dtype: str


def array_specs(arrays: ArrayRecord) -> dict[str, ArraySpec]:
    """The shape and dtype of every array in ``arrays``, by name."""
    return {name: ArraySpec(tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def circular_mean(
    angles: np.ndarray, weights: np.ndarray, period: float = 2 * math.pi
) -> np.ndarray:
    """Weighted mean of periodic values along axis 0, in ``(-period/2, period/2]``.

    Each value is mapped to a point on the unit circle, the points are averaged with
    the weights, and the mean's direction is mapped back (Mardia & Jupp, *Directional
    Statistics*, 2000, sec. 2.2.1). The mean of 3.1 and -3.1 (period 2 pi) is pi,
    not 0. Where the points cancel exactly the direction is undefined and 0 is returned.

    Parameters
    ----------
    angles : np.ndarray
        Stacked values, one row per client.
    weights : np.ndarray
        One non-negative weight per row.
    period : float
        The period: 2 pi for a rotation angle that acts up to a global phase, 4 pi for
        a controlled rotation, whose relative phase only repeats after 4 pi.
    """
    scale = 2 * math.pi / period
    shape = (-1,) + (1,) * (angles.ndim - 1)
    w = np.asarray(weights, dtype=np.float64).reshape(shape)
    phase = np.asarray(angles, dtype=np.float64) * scale
    mean = np.arctan2((w * np.sin(phase)).sum(0), (w * np.cos(phase)).sum(0))
    # arctan2 returns [-pi, pi]; fold -pi onto pi so the range is half-open.
    mean = np.where(mean <= -math.pi + 1e-15, math.pi, mean)
    return mean / scale


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted arithmetic mean along axis 0 (float64 accumulation)."""
    shape = (-1,) + (1,) * (values.ndim - 1)
    w = np.asarray(weights, dtype=np.float64).reshape(shape)
    return (w * values.astype(np.float64)).sum(0) / w.sum()


def aggregate_arrays(
    updates: list[ArrayRecord], weights: list[float], angle_periods: Mapping[str, float]
) -> ArrayRecord:
    """Aggregate checked updates: circular mean for angle arrays, weighted mean otherwise.

    Parameters
    ----------
    updates : list[ArrayRecord]
        Validated updates, all with the same names, shapes and dtypes.
    weights : list[float]
        One positive weight per update.
    angle_periods : Mapping[str, float]
        Names of the arrays that hold rotation angles, with the period of each.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    aggregated = {}
    for name, first in updates[0].items():
        stacked = np.stack([update[name].numpy() for update in updates])
        if name in angle_periods:
            mean = circular_mean(stacked, w, angle_periods[name])
        else:
            mean = weighted_mean(stacked, w)
        dtype = np.dtype(first.dtype)
        if np.issubdtype(dtype, np.integer):
            mean = np.rint(mean)
        aggregated[name] = Array(np.ascontiguousarray(mean.astype(dtype)))
    return ArrayRecord(aggregated)


def check_update(
    content: RecordDict, specs: Mapping[str, ArraySpec], weight_key: str
) -> tuple[ArrayRecord, float]:
    """Validate one training reply and return its arrays and weight.

    Raises
    ------
    UpdateRejected
        If the reply lacks arrays or a usable weight, or any array has the wrong name,
        shape or dtype, or a non-finite value.
    """
    arrays = content.array_records.get(ARRAYS_KEY)
    metrics = content.metric_records.get(METRICS_KEY)
    if arrays is None or metrics is None:
        raise UpdateRejected(f"reply lacks the '{ARRAYS_KEY}' or '{METRICS_KEY}' record")
    weight = metrics.get(weight_key)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise UpdateRejected(f"metric '{weight_key}' is missing or not a number: {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise UpdateRejected(f"metric '{weight_key}' = {weight!r} is not a positive number")
    if set(arrays) != set(specs):
        missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
        raise UpdateRejected(f"array names differ: missing {missing}, unexpected {extra}")
    for name, spec in specs.items():
        try:
            value = arrays[name].numpy()
        # Untrusted bytes: numpy's .npy parser can raise many kinds of error
        # (ValueError, SyntaxError, tokenize.TokenError, EOFError...); all mean "reject".
        except Exception as err:  # noqa: BLE001
            raise UpdateRejected(f"array '{name}' cannot be decoded: {err}") from None
        if value.shape != spec.shape or str(value.dtype) != spec.dtype:
            raise UpdateRejected(
                f"array '{name}' is {value.dtype}{list(value.shape)}, "
                f"expected {spec.dtype}{list(spec.shape)}"
            )
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise UpdateRejected(f"array '{name}' has non-finite values")
    return arrays, float(weight)


class QFLStrategy(FedAvg):
    """Federated averaging for hybrid quantum-classical models.

    Parameters
    ----------
    angle_periods : Mapping[str, float]
        Names of the arrays holding rotation angles, with the period of each; these are
        aggregated by :func:`circular_mean`.
    angle_aggregation : str
        ``"circular"`` (default) or ``"arithmetic"`` (plain weighted mean of the
        angles too, for comparison).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    report_type: type[RoundReport] = RoundReport
    """What :attr:`reports` holds; a subclass that records more extends it."""

    def __init__(
        self,
        angle_periods: Mapping[str, float] | None = None,
        angle_aggregation: str = "circular",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if angle_aggregation not in ("circular", "arithmetic"):
            raise ValueError(
                f"angle_aggregation {angle_aggregation!r} is not known; "
                "use 'circular' or 'arithmetic'"
            )
        self.angle_periods = dict(angle_periods or {})
        self.angle_aggregation = angle_aggregation
        self.reports: list[RoundReport] = []
        self._specs: dict[str, ArraySpec] = {}
        self._sent_messages: list[Message] = []

    def summary(self) -> None:
        """Log the FedAvg summary plus how angles are aggregated."""
        super().summary()
        log(
            INFO,
            "\t└──> Angles: %s mean over %s",
            self.angle_aggregation,
            ", ".join(self.angle_periods) or "(none)",
        )

    # --- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What the strategy carries from one round to the next, for a checkpoint.

        FedAvg and this class carry nothing beyond the global arrays (the reports are
        per round and already in ``metrics.json``), so this is empty. A subclass that
        keeps cross-round state (reputations, server optimiser moments...) returns it
        here as plain Python values and numbers, and restores it in :meth:`load_state`.
        """
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (see :mod:`server.checkpoint`)."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no state between rounds; the checkpoint has "
                f"{sorted(state)}"
            )

    # --- hooks for the relay channel layer -----------------------------------------
    def encode_downlink(self, message: Message, server_round: int) -> Message | None:
        """Prepare one node's training message for its link (identity here).

        Return ``None`` when the message cannot be sent over the link this round; the
        node is then left out of the round.
        """
        return message

    def decode_uplink(self, message: Message, server_round: int) -> RecordDict:
        """Recover the plain reply content from one node's message (identity here).

        Raise :class:`UpdateRejected` for a reply that must not be aggregated.
        """
        return message.content

    def weigh_update(self, message: Message, weight: float, server_round: int) -> float:
        """Aggregation weight of one accepted update (its sample count here)."""
        return weight

    # --- Flower hooks ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does, then pass each message through the downlink."""
        self._specs = array_specs(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.reports.append(self.report_type(server_round, clients_sampled=len(messages)))
        encoded = (self.encode_downlink(message, server_round) for message in messages)
        # Kept so a failure can be traced to its node: the grid gives these very objects
        # their message ids when it sends them.
        self._sent_messages = [message for message in encoded if message is not None]
        return self._sent_messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode and check every reply, then aggregate the accepted ones."""
        replies = list(replies)
        valid, failed = self._check_and_log_replies(replies, is_train=True, validate=False)
        report = self._report_for(server_round)
        report.failed.update(
            {self._failed_node(message): message.error.reason for message in failed}
        )
        accepted: list[RecordDict] = []
        updates, weights = [], []
        for message in valid:
            node_id = message.metadata.src_node_id
            try:
                content = self.decode_uplink(message, server_round)
                update, weight = check_update(content, self._specs, self.weighted_by_key)
            except UpdateRejected as rejection:
                report.rejected[node_id] = rejection.reason
                log(WARNING, "Round %s: update from node %s rejected: %s",
                    server_round, node_id, rejection.reason)
                continue
            accepted.append(content)
            updates.append(update)
            weights.append(self.weigh_update(message, weight, server_round))
        report.clients_used = len(updates)
        if not updates:
            log(WARNING, "Round %s: no update accepted; the global model is unchanged",
                server_round)
            return None, None
        periods = self.angle_periods if self.angle_aggregation == "circular" else {}
        arrays = aggregate_arrays(updates, weights, periods)
        metrics = self.train_metrics_aggr_fn(accepted, self.weighted_by_key)
        return arrays, metrics

    def _failed_node(self, reply: Message) -> int:
        """The node an error reply is about.

        The SuperLink writes its own id as the sender of the errors it makes up for a
        node (unavailable after missed heartbeats, upload expired), so those are traced
        back through the message they answer.
        """
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent_messages}
        return sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def _report_for(self, server_round: int) -> RoundReport:
        if not self.reports or self.reports[-1].server_round != server_round:
            self.reports.append(self.report_type(server_round))
        return self.reports[-1]
