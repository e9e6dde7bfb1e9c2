"""QFLStrategy: FedAvg that checks every update and averages rotation angles as angles.

The strategy keeps Flower's sampling and message construction and overrides three hooks:
``configure_train`` (to give each node's message a per-node encoding step),
``aggregate_train`` (decode, validate, screen, weight, aggregate) and
``aggregate_evaluate`` (leave out replies without a usable weight instead of stopping).
The relay channel layer plugs in by overriding :meth:`QFLStrategy.encode_downlink`,
:meth:`QFLStrategy.decode_uplink` and :meth:`QFLStrategy.weigh_update` (see
:mod:`strategies.relay`). The ServerApp drives the hooks round by round
(:func:`server.rounds.run_rounds`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from relay.arrays import DecodeError, decode_array
from strategies.means import weighted_aggregate
from strategies.names import AGGREGATIONS, ANGLE_AGGREGATIONS
from strategies.privacy import PrivacyLedger, PrivacySettings, noise_generator, private_mean
from strategies.robust import ScreeningRules, robust_aggregate, screen_updates, screen_weights
from strategies.server_optimizer import ServerOptimizer, ServerOptimizerSettings


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
    skipped: str | None = None
    evaluate_rejected: dict[int, str] = field(default_factory=dict)
    dp_sampled: int = 0
    """UAVs sampled for a noised round (the mean's fixed denominator); 0 without dp."""
    dp_clipped: int = 0
    """Updates whose step was longer than ``dp-clip-norm`` and was clipped."""

    @property
    def clients_rejected(self) -> int:
        """Number of replies that arrived but were refused."""
        return len(self.rejected)

    @property
    def clients_failed(self) -> int:
        """Number of sampled nodes that replied with an error, or not before the deadline."""
        return len(self.failed)


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype an incoming array must have."""

    shape: tuple[int, ...]
    dtype: str


def array_specs(arrays: ArrayRecord) -> dict[str, ArraySpec]:
    """The shape and dtype of every array in ``arrays``, by name."""
    return {name: ArraySpec(tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def decode_update(
    content: RecordDict,
    specs: Mapping[str, ArraySpec],
    weight_key: str,
    arrays_key: str = "arrays",
    metrics_key: str = "metrics",
) -> tuple[dict[str, np.ndarray], float]:
    """Validate one training reply and return its decoded arrays and weight.

    ``arrays_key``, ``metrics_key`` and ``weight_key`` name the reply's ArrayRecord, its
    MetricRecord and the metric it is weighted by (the strategy's own attributes).

    Raises
    ------
    UpdateRejected
        If the reply lacks arrays or a usable weight, or any array has the wrong name,
        shape or dtype, cannot be decoded, or has a non-finite value.
    """
    arrays = content.array_records.get(arrays_key)
    metrics = content.metric_records.get(metrics_key)
    if arrays is None or metrics is None:
        raise UpdateRejected(f"reply lacks the '{arrays_key}' or '{metrics_key}' record")
    weight = metrics.get(weight_key)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise UpdateRejected(f"metric '{weight_key}' is missing or not a number: {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise UpdateRejected(f"metric '{weight_key}' = {weight!r} is not a positive number")
    if set(arrays) != set(specs):
        missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
        raise UpdateRejected(f"array names differ: missing {missing}, unexpected {extra}")
    values = {}
    for name, spec in specs.items():
        try:
            value = decode_array(arrays[name], spec.shape, spec.dtype)
        except DecodeError as error:
            raise UpdateRejected(f"array '{name}' {error}") from None
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise UpdateRejected(f"array '{name}' has non-finite values")
        values[name] = value
    return values, float(weight)


def scalar_metrics(metrics: MetricRecord) -> MetricRecord:
    """The finite scalar entries of an untrusted MetricRecord.

    Flower's metric averaging mixes lists and scalars by key and crashes when two
    replies disagree; a reply's lists and non-finite numbers are left out instead.
    """
    return MetricRecord(
        {
            key: value
            for key, value in metrics.items()
            if not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
        }
    )


@dataclass(frozen=True)
class _CheckedUpdate:
    """A reply that passed the checks: its node, plain content, decoded arrays, weight."""

    node_id: int
    content: RecordDict
    values: dict[str, np.ndarray]
    weight: float
    message: Message


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_MAX_REASON_CHARS = 300
_RAY_EXCEPTION = re.compile(r"Exception (\w+) occurred\. Message: (.*)")


def one_line_reason(reason: str) -> str:
    """One clean line of a node's error reason, for ``metrics.json``.

    Ray and Flower hand back whole tracebacks with terminal colour codes; what an
    operator needs per node is the exception's own line, which is a traceback's last one
    (Ray's ends ``Exception ClientAppException occurred. Message: <reason>'>``, read as
    ``ClientAppException: <reason>``). A one-line reason is kept as it is. The full text
    stays in the log.
    """
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", reason).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "(no reason given)"
    line = lines[-1].removesuffix("'>").strip() if len(lines) > 1 else lines[0]
    wrapped = _RAY_EXCEPTION.fullmatch(line)
    if wrapped:
        line = f"{wrapped.group(1)}: {wrapped.group(2)}"
    if len(line) > _MAX_REASON_CHARS:
        line = line[: _MAX_REASON_CHARS - 3] + "..."
    return line


def split_replies(
    replies: Iterable[Message], stage: Literal["train", "evaluate"]
) -> tuple[list[Message], list[Message]]:
    """Replies with content and error replies, logged as Flower's FedAvg logs them."""
    valid: list[Message] = []
    failed: list[Message] = []
    for message in replies:
        (failed if message.has_error() else valid).append(message)
    log(INFO, "aggregate_%s: Received %s results and %s failures", stage, len(valid), len(failed))
    for message in failed:
        log(INFO, "\t> Received error in reply from node %d: %s",
            message.metadata.src_node_id, message.error.reason)
    return valid, failed


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
    aggregation : str
        ``"fedavg"`` (weighted mean), ``"trimmed-mean"`` or ``"median"``
        (coordinate-wise, unweighted; see :func:`strategies.robust.robust_aggregate`).
    trim_fraction : float
        Fraction dropped from each tail by ``"trimmed-mean"``.
    max_norm_ratio, max_weight_ratio : float
        Screening rules (see :func:`strategies.robust.screen_updates`); 0 turns one off.
    metricrecord_key : str
        Key of the MetricRecord in replies, beside FedAvg's ``arrayrecord_key``,
        ``configrecord_key`` and ``weighted_by_key``.
    privacy : strategies.privacy.PrivacySettings, optional
        Differential privacy (run config ``dp``). Central and client modes replace the
        screening and the weighted mean by a clipped, unweighted, noised mean over the
        UAVs sampled (:func:`strategies.privacy.noisy_mean`); client mode also tells
        each UAV the clipping norm; local mode only counts who sent what. Every mode
        keeps a :class:`~strategies.privacy.PrivacyLedger` (:attr:`ledger`).
    server_optimizer : strategies.server_optimizer.ServerOptimizerSettings, optional
        Step the global model towards each round's aggregate (FedAvgM, FedAdam...) instead
        of taking the aggregate as it is (run config ``server-optimizer``).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`. ``min_train_nodes`` is also
        the number of accepted updates a round needs: with fewer, the round is skipped
        and the global model stays as it was.
    """

    report_type: type[RoundReport] = RoundReport
    """What :attr:`reports` holds; a subclass that records more extends it."""

    def __init__(
        self,
        angle_periods: Mapping[str, float] | None = None,
        angle_aggregation: str = "circular",
        aggregation: str = "fedavg",
        trim_fraction: float = 0.2,
        max_norm_ratio: float = 0.0,
        max_weight_ratio: float = 0.0,
        metricrecord_key: str = "metrics",
        privacy: PrivacySettings | None = None,
        server_optimizer: ServerOptimizerSettings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.optimizer = ServerOptimizer(server_optimizer) if server_optimizer else None
        self.metricrecord_key = metricrecord_key
        self.privacy = privacy
        self.ledger = PrivacyLedger(privacy) if privacy is not None else None
        self._noise = noise_generator() if privacy is not None else None
        if angle_aggregation not in ANGLE_AGGREGATIONS:
            raise ValueError(
                f"angle_aggregation {angle_aggregation!r} is not known; "
                f"use one of {', '.join(ANGLE_AGGREGATIONS)}"
            )
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation {aggregation!r} is not known; use one of {', '.join(AGGREGATIONS)}"
            )
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction = {trim_fraction!r} must be in [0, 0.5)")
        self.angle_periods = dict(angle_periods or {})
        self.angle_aggregation = angle_aggregation
        self.aggregation = aggregation
        self.trim_fraction = trim_fraction
        self.rules = ScreeningRules(max_norm_ratio, max_weight_ratio)
        self.round_timeout: float | None = None
        self.reports: list[RoundReport] = []
        self._specs: dict[str, ArraySpec] = {}
        self._reference: dict[str, np.ndarray] = {}
        self._awaited: set[int] = set()
        self._sent_messages: list[Message] = []

    def summary(self) -> None:
        """Log the FedAvg summary plus how angles are aggregated and updates screened."""
        super().summary()
        log(
            INFO,
            "\t└──> Angles: %s mean over %s",
            self.angle_aggregation,
            ", ".join(self.angle_periods) or "(none)",
        )
        robust = self.aggregation + (
            f" (trim {self.trim_fraction:g})" if self.aggregation == "trimmed-mean" else ""
        )
        log(
            INFO,
            "\t└──> Aggregation: %s; reject norm > %s x median, examples > %s x median",
            robust,
            f"{self.rules.max_norm_ratio:g}" if self.rules.max_norm_ratio else "(off)",
            f"{self.rules.max_weight_ratio:g}" if self.rules.max_weight_ratio else "(off)",
        )
        if self.privacy is not None:
            p = self.privacy
            log(INFO, "\t└──> Differential privacy: %s, noise multiplier %g, clipping norm %g, "
                "epsilon at delta %g%s", p.mode, p.noise_multiplier, p.clip_norm, p.delta,
                "; the screening rules give way to clipping, every update weighs the same"
                if p.noise_at_server else "")
        if self.optimizer is not None:
            log(INFO, "\t└──> Server optimizer: %s", self.optimizer.describe())

    def set_round_model(self, arrays: ArrayRecord) -> None:
        """Remember the global model sent this round: the expected layout of every
        update, and the reference its distance and deltas are measured from."""
        self._specs = array_specs(arrays)
        self._reference = {name: array.numpy() for name, array in arrays.items()}

    # --- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What the strategy carries from one round to the next, for a checkpoint.

        FedAvg and this class carry nothing beyond the global arrays (the reports are
        per round and already in ``metrics.json``), so this is empty. A subclass that
        keeps cross-round state (reputations, server optimiser moments...) returns it
        here as plain Python values and numbers, and restores it in :meth:`load_state`.
        With differential privacy the accountant's ledger is kept (``privacy``), with a
        server optimizer its moments (``server_optimizer``).
        """
        state: dict[str, Any] = {} if self.ledger is None else {"privacy": self.ledger.state()}
        if self.optimizer is not None:
            state["server_optimizer"] = self.optimizer.state()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (see :mod:`server.checkpoint`)."""
        state = dict(state)
        if self.ledger is not None:
            if "privacy" not in state:
                raise ValueError("this run uses dp, and the checkpoint has no privacy ledger")
            self.ledger.load_state(state.pop("privacy"))
        if self.optimizer is not None:
            if "server_optimizer" not in state:
                raise ValueError("this run uses a server optimizer, and the checkpoint has "
                                 "none of its moments")
            self.optimizer.load_state(state.pop("server_optimizer"))
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

    def sender_id(self, node_id: int) -> str:
        """Who a node is, for the privacy ledger: its id here; a subclass that knows which
        UAV a node is says so (a UAV keeps its id when its node gets a new one)."""
        return f"node-{node_id}"

    def weigh_update(self, message: Message, weight: float, server_round: int) -> float:
        """Aggregation weight of one accepted update (its sample count here)."""
        return weight

    def update_depth(self, message: Message) -> int | None:
        """Circuit layers the update's sender ran (``None``: all; see ``weighted_aggregate``)."""
        return None

    # --- Flower hooks ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does, then pass each message through the downlink."""
        self.set_round_model(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        return self.dispatch_train(server_round, messages, len(list(grid.get_node_ids())))

    def dispatch_train(
        self, server_round: int, messages: list[Message], population: int | None = None
    ) -> list[Message]:
        """Open the round's report, pass each training message through the downlink and
        remember what was sent (a subclass that samples its own way calls this).

        ``population`` is how many nodes the sample was drawn from (default: as many as
        were sampled), for the privacy accountant.
        """
        report = self.report_type(server_round, clients_sampled=len(messages))
        self.reports.append(report)
        if self.privacy is not None and self.privacy.mode == "client":
            for message in messages:
                message.content.config_records[self.configrecord_key][KEY_CLIPPING_NORM] = (
                    self.privacy.clip_norm
                )
        encoded = (self.encode_downlink(message, server_round) for message in messages)
        sent = [message for message in encoded if message is not None]
        if self.ledger is not None and sent:
            if self.ledger.settings.noise_at_server:
                report.dp_sampled = len(messages)
                self.ledger.release(max(population or 0, len(messages)), len(messages))
            else:
                self.ledger.participate([self.sender_id(message.metadata.dst_node_id)
                                         for message in sent])
        # Kept so a failure can be traced to its node: the grid gives these very objects
        # their message ids when it sends them.
        self._sent_messages = sent
        self._awaited = {message.metadata.dst_node_id for message in sent}
        return sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode, check and screen every reply, then aggregate the accepted ones.

        Nodes that were sent a message but whose reply did not arrive before the
        round's deadline count as failed. With fewer accepted updates than
        ``min_train_nodes`` the round is skipped: the global model stays as it was.
        """
        replies = list(replies)
        valid, failed = split_replies(replies, "train")
        report = self._report_for(server_round)
        for message in failed:
            report.failed[self._failed_node(message)] = one_line_reason(str(message.error.reason))
        self._record_missing(server_round, replies, report)
        noised = self.privacy is not None and self.privacy.noise_at_server
        accepted = self._accepted_updates(server_round, valid, report, screen=not noised)
        report.clients_used = len(accepted)
        needed = max(self.min_train_nodes, 1)
        if len(accepted) < needed:
            report.clients_used = 0
            if report.skipped is None:
                report.skipped = (
                    f"{len(accepted)} update(s) accepted, {needed} needed (min-train-nodes)"
                )
            log(WARNING, "Round %s skipped: %s; the global model is unchanged",
                server_round, report.skipped)
            return None, None
        updates = [update.values for update in accepted]
        if noised:
            arrays = self._private_mean(updates, report)
        elif self.aggregation == "fedavg":
            weights = [
                self.weigh_update(update.message, update.weight, server_round)
                for update in accepted
            ]
            depths = [self.update_depth(update.message) for update in accepted]
            arrays = weighted_aggregate(updates, weights, self._periods(), depths,
                                        self.angle_periods)
        else:
            arrays = robust_aggregate(
                updates, self._reference, self._periods(), self.aggregation, self.trim_fraction
            )
        arrays = self.server_step(server_round, arrays)
        metrics = self.train_metrics_aggr_fn(
            [self._metrics_content(update.content, update.weight) for update in accepted],
            self.weighted_by_key,
        )
        return arrays, metrics

    def server_step(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """The new global model from the round's aggregate: the aggregate itself, or the
        server optimizer's step towards it from the round's model (angles on the circle)."""
        if self.optimizer is None:
            return arrays
        return self.optimizer.step(server_round, self._reference, arrays, self._periods())

    def _private_mean(self, updates: list[dict[str, np.ndarray]], report: RoundReport
                      ) -> ArrayRecord:
        """The clipped, noised mean over the UAVs sampled (dp central or client)."""
        assert self.privacy is not None and self._noise is not None
        sampled = max(report.dp_sampled, len(updates))
        arrays, report.dp_clipped = private_mean(
            updates, self._reference, self._periods(), self.privacy, sampled, self._noise
        )
        log(INFO, "Round %s: dp %s: %d of %d update(s) clipped to %g; Gaussian noise of "
            "std %.4g added to the mean over %d sampled", report.server_round,
            self.privacy.mode, report.dp_clipped, len(updates), self.privacy.clip_norm,
            self.privacy.noise_multiplier * self.privacy.clip_norm / sampled, sampled)
        return arrays

    def _accepted_updates(
        self, server_round: int, valid: list[Message], report: RoundReport, screen: bool = True
    ) -> list[_CheckedUpdate]:
        """Decode and check each reply, screen them together (unless ``screen`` is off);
        reject the rest in ``report``."""
        checked: list[_CheckedUpdate] = []
        for message in valid:
            node_id = message.metadata.src_node_id
            try:
                content = self.decode_uplink(message, server_round)
                values, weight = decode_update(
                    content, self._specs, self.weighted_by_key, self.arrayrecord_key,
                    self.metricrecord_key,
                )
            except UpdateRejected as rejection:
                self._reject(report, server_round, node_id, rejection.reason)
                continue
            checked.append(_CheckedUpdate(node_id, content, values, weight, message))
        if not screen:
            return checked
        screened = screen_updates(
            [update.values for update in checked],
            [update.weight for update in checked],
            self._reference,
            self._periods(),
            self.rules,
        )
        for index in sorted(screened):
            self._reject(report, server_round, checked[index].node_id, screened[index])
        return [update for index, update in enumerate(checked) if index not in screened]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average the evaluate replies that pass the train replies' weight rules.

        A reply needs a positive finite weight, and a weight above ``max_weight_ratio``
        x the round's median claim is rejected as it is for training (one node claiming
        10**15 examples would otherwise set the aggregate alone); non-finite metrics are
        left out. FedAvg's own version raises, and so stops the run, when one reply's
        metrics differ from the others'; here such a reply is left out with its reason.
        Rejections are in ``evaluate_rejected_reasons`` of ``metrics.json``.
        """
        valid, _failed = split_replies(replies, "evaluate")
        report = self._report_for(server_round)
        weighed: list[tuple[int, float, RecordDict]] = []
        for message in valid:
            node_id = message.metadata.src_node_id
            metrics = message.content.metric_records.get(self.metricrecord_key)
            weight = metrics.get(self.weighted_by_key) if metrics is not None else None
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
                or weight <= 0
            ):
                self._reject_evaluation(
                    report, server_round, node_id,
                    f"evaluate reply has no positive '{self.weighted_by_key}' in its "
                    f"'{self.metricrecord_key}' record: {weight!r}",
                )
                continue
            weighed.append((node_id, float(weight), message.content))
        screened = screen_weights([w for _n, w, _c in weighed], self.rules.max_weight_ratio)
        for index in sorted(screened):
            self._reject_evaluation(report, server_round, weighed[index][0], screened[index])
        contents = [
            self._metrics_content(content, weight)
            for index, (_n, weight, content) in enumerate(weighed)
            if index not in screened
        ]
        if not contents:
            return None
        return self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key)

    def _reject_evaluation(
        self, report: RoundReport, server_round: int, node_id: int, reason: str
    ) -> None:
        report.evaluate_rejected[node_id] = reason
        log(WARNING, "Round %s: evaluate reply from node %s rejected: %s",
            server_round, node_id, reason)

    # --- helpers --------------------------------------------------------------------
    def _periods(self) -> dict[str, float]:
        return self.angle_periods if self.angle_aggregation == "circular" else {}

    def _metrics_content(self, content: RecordDict, weight: float) -> RecordDict:
        record = content.metric_records.get(self.metricrecord_key) or MetricRecord()
        metrics = scalar_metrics(record)
        metrics[self.weighted_by_key] = weight
        return RecordDict({self.metricrecord_key: metrics})

    def _reject(self, report: RoundReport, server_round: int, node_id: int, reason: str) -> None:
        report.rejected[node_id] = reason
        log(WARNING, "Round %s: update from node %s rejected: %s", server_round, node_id, reason)

    def _record_missing(
        self, server_round: int, replies: list[Message], report: RoundReport
    ) -> None:
        replied = {self._failed_node(message) for message in replies}
        deadline = "" if self.round_timeout is None else f" ({self.round_timeout:g} s)"
        for node_id in sorted(self._awaited - replied):
            reason = f"no reply before the round deadline{deadline}"
            report.failed[node_id] = reason
            log(WARNING, "Round %s: node %s failed: %s", server_round, node_id, reason)
        self._awaited = set()

    def _failed_node(self, reply: Message) -> int:
        """The node a reply is about (its sender, unless the SuperLink wrote it).

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
