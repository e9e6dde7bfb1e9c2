"""Aggregation at the relays (``hierarchy='relays'``), emulated inside the ServerApp.

Flower has no relay nodes: a HAP or a LEO satellite that aggregates is emulated here,
in the ServerApp's process, from the round's topology. Everything a relay does is in
:class:`RelayEmulator`, so a deployment of real relay processes can replace this one
class (its per-message steps are the messages such a process would handle).

Which UAVs meet at which relay (:func:`group_by_relay`, a pure function of the sampled
UAVs' paths): a UAV's relay is the first intermediate node of its path (not itself,
not the base station) that is also an intermediate node of another sampled UAV's path;
one level of relays, and a relay that would hold one UAV only (the others met earlier)
is not used. :func:`plan_routes` turns that into a :class:`Route` per UAV: its whole
link, and for a grouped UAV the lower segment UAV -> relay and the upper segment
relay -> base station (:meth:`relay.topology.RoundLinks.segment`).

The emulator's API, per message (what an asynchronous buffer calls one by one too):

``RelayEmulator(channel, run_id, seed, angle_periods, rules, weighting, bill, ...)``
    ``bill(server_round, sender, direction, path, report)`` receives every message's
    channel report (``sender``: a UAV's node id, or a relay's name).
``downlink(arrays, route, message_type, server_round, node_id) -> (envelope, link)``
    (a) The envelope for one UAV, and the link to put in its ConfigRecord. Through a
    relay, the base station encodes ``arrays`` once per ``(server_round, category,
    relay)`` over the upper segment, the relay decodes it and encodes it for the UAV
    over the lower segment; the UAV is told the lower segment and cannot tell.
    Raises :class:`RelayRefused` when nothing may be sent (aborted key, no secret).
``receive(content, route, message_type, server_round, node_id, specs)``
    (b) One UAV's uplink, decoded at its relay over the lower segment, its bound
    weight and arrays checked as the base station checks them, then held.
    Raises :class:`~strategies.qfl.UpdateRejected` with ``"at relay <name>: ..."``.
``flush(reference, specs, message_type, server_round) -> Flushed``
    (c) Every relay screens what it holds (the base station's rules), aggregates the
    rest with weights (angle arrays on the circle), binds the total weight and
    forwards one aggregate over the upper segment; the base station decodes it. The
    returned :class:`Forwarded` partial aggregates combine with flat UAVs' updates
    through :func:`combine` exactly as the flat mean would (weighted means are
    associative; an angle aggregate also carries its resultant length).

Headers and random streams of the relay hops never collide with a UAV's: their run
field is ``"<run_id>/relay/<relay>"`` (so ``qkd``'s replay memory, keyed by header, sees
an aggregate as a new message). A relay hop is keyed with the pre-shared secret of the
first UAV of its group, the route's ``upper.uav_id``: the emulated relay reads it from
the base station's keyring; a deployed relay would hold a secret of its own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from relay.channels import Channel, ChannelRejected, ChannelReport
from relay.flower import (
    UPLINK_PREFIX,
    bind_weight,
    message_category,
    message_header,
    message_rng,
    report_from_metrics,
    unbind_weight,
)
from relay.link import PathLink
from strategies.qfl import ArraySpec, UpdateRejected, decode_update
from strategies.robust import ScreeningRules, screen_updates

RESULTANT_PREFIX = "relay.resultant/"
"""Forwarded with an angle array's circular mean: each coordinate's mean resultant length."""

MEAN_PREFIX = "relay.mean/"
"""Forwarded with an integer array's rounded mean: the unrounded mean, as float64."""

Sink = Callable[[int, int | str, str, tuple[str, ...], ChannelReport], None]
"""``bill(server_round, sender, direction, path, report)``."""


class RelayRefused(Exception):  # noqa: N818 - reads as the event, like ChannelRejected
    """A downlink that cannot be sent through its relay; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def group_by_relay(paths: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The relay each sampled UAV's update meets others' at; UAVs left out stay flat.

    Parameters
    ----------
    paths : Mapping[str, Sequence[str]]
        Each sampled UAV's path, ``(uav, n1, ..., base_station)``.

    Returns
    -------
    dict[str, str]
        UAV -> relay, for the UAVs whose relay aggregates at least two of them.
    """
    # Intermediate nodes only: a UAV's own node is where its update starts, not a relay.
    shared = Counter(node for path in paths.values() for node in set(path[1:-1]))
    first = {}
    for uav, path in paths.items():
        relay = next((node for node in path[1:-1] if shared[node] >= 2), None)
        if relay is not None:
            first[uav] = relay
    members = Counter(first.values())
    return {uav: relay for uav, relay in first.items() if members[relay] >= 2}


@dataclass(frozen=True)
class Route:
    """How one UAV's messages travel this round.

    Attributes
    ----------
    link : PathLink
        The UAV's whole path (its figures weigh and report the UAV as before).
    relay : str or None
        The relay that aggregates its update, ``None`` for a flat UAV.
    lower : PathLink
        The link the UAV is told: UAV -> relay, or its whole path when flat.
    upper : PathLink or None
        Relay -> base station, keyed as its group's first UAV (``upper.uav_id``).
    """

    link: PathLink
    relay: str | None = None
    lower: PathLink | None = None
    upper: PathLink | None = None

    @property
    def uav_link(self) -> PathLink:
        """The link the UAV encodes and decodes on."""
        return self.lower if self.lower is not None else self.link


def plan_routes(
    links: Mapping[str, PathLink],
    segment: Callable[[str, str, str, str], PathLink],
) -> dict[str, Route]:
    """Each sampled UAV's :class:`Route` (``links`` in the order groups are keyed by).

    ``segment(uav, start, end, owner)`` is :meth:`relay.topology.RoundLinks.segment`.
    """
    relay_of = group_by_relay({uav: link.path for uav, link in links.items()})
    routes: dict[str, Route] = {}
    uppers: dict[str, PathLink] = {}
    for uav, link in links.items():
        relay = relay_of.get(uav)
        if relay is None:
            routes[uav] = Route(link)
            continue
        if relay not in uppers:
            uppers[relay] = segment(uav, relay, link.path[-1], uav)
        upper = uppers[relay]
        # Paths come from a tree of best paths: all that meet at a relay go on together.
        if link.path[link.path.index(relay):] != upper.path:
            raise ValueError(
                f"{uav}'s path {' > '.join(link.path)} leaves relay {relay} along another "
                f"route than {' > '.join(upper.path)}"
            )
        routes[uav] = Route(link, relay, segment(uav, uav, relay, uav), upper)
    return routes


@dataclass
class Partial:
    """A weighted mean that can be merged: float64 means, complex mean resultants for
    angle arrays (``exp(i 2 pi x / period)``), and the total weight."""

    weight: float
    means: dict[str, np.ndarray]

    @classmethod
    def of_update(
        cls, values: Mapping[str, np.ndarray], weight: float, periods: Mapping[str, float]
    ) -> Partial:
        """One update as a partial aggregate of weight ``weight``."""
        return cls(weight, {
            name: (np.exp(1j * _scale(periods[name]) * value.astype(np.float64))
                   if name in periods else value.astype(np.float64))
            for name, value in values.items()
        })


def combine(partials: Sequence[Partial]) -> Partial:
    """The weighted mean of partial aggregates (that of all the updates they hold)."""
    total = sum(part.weight for part in partials)
    names = partials[0].means
    means = {}
    for name in names:
        mean = partials[0].weight / total * partials[0].means[name]
        for part in partials[1:]:
            mean = mean + part.weight / total * part.means[name]
        means[name] = mean
    return Partial(total, means)


def finish(partial: Partial, specs: Mapping[str, ArraySpec], periods: Mapping[str, float],
           extras: bool = False) -> ArrayRecord:
    """The model arrays of a partial aggregate (``extras``: plus what merging it needs).

    Angle arrays get the direction of their mean resultant, in ``(-period/2, period/2]``
    as :func:`strategies.qfl.circular_mean` gives it, integer arrays the rounded mean.
    """
    arrays = {}
    for name, spec in specs.items():
        mean = partial.means[name]
        if name in periods:
            angle = np.angle(mean)
            angle = np.where(angle <= -math.pi + 1e-15, math.pi, angle) / _scale(periods[name])
            if extras:
                arrays[RESULTANT_PREFIX + name] = Array(np.ascontiguousarray(np.abs(mean)))
            mean = angle
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            if extras:
                arrays[MEAN_PREFIX + name] = Array(np.ascontiguousarray(mean))
            mean = np.rint(mean)
        arrays[name] = Array(np.ascontiguousarray(np.asarray(mean).astype(spec.dtype)))
    return ArrayRecord(arrays)


def _forwarded_partial(
    values: Mapping[str, np.ndarray], weight: float, periods: Mapping[str, float]
) -> Partial:
    """Rebuild what :func:`finish` with ``extras`` sent (values already checked)."""
    means = {}
    for name, value in values.items():
        if name.startswith((RESULTANT_PREFIX, MEAN_PREFIX)):
            continue
        if name in periods:
            length = values[RESULTANT_PREFIX + name]
            means[name] = length * np.exp(1j * _scale(periods[name]) * value.astype(np.float64))
        elif MEAN_PREFIX + name in values:
            means[name] = values[MEAN_PREFIX + name]
        else:
            means[name] = value.astype(np.float64)
    return Partial(weight, means)


def forwarded_specs(specs: Mapping[str, ArraySpec], periods: Mapping[str, float]
                    ) -> dict[str, ArraySpec]:
    """The arrays a relay's aggregate must hold: the model's plus the extras."""
    extra = {RESULTANT_PREFIX + name: ArraySpec(spec.shape, "float64")
             for name, spec in specs.items() if name in periods}
    extra.update({MEAN_PREFIX + name: ArraySpec(spec.shape, "float64")
                  for name, spec in specs.items()
                  if name not in periods and np.issubdtype(np.dtype(spec.dtype), np.integer)})
    return {**specs, **extra}


def _scale(period: float) -> float:
    return 2 * math.pi / period


@dataclass(frozen=True)
class Held:
    """A UAV's update accepted at its relay, waiting to be aggregated there."""

    node_id: int
    route: Route
    content: RecordDict
    values: dict[str, np.ndarray]
    samples: float
    weight: float


@dataclass(frozen=True)
class Forwarded:
    """A relay's aggregate as the base station decoded it, and whose updates it holds."""

    relay: str
    members: tuple[Held, ...]
    partial: Partial
    values: dict[str, np.ndarray]


@dataclass
class Flushed:
    """What :meth:`RelayEmulator.flush` gives the base station."""

    forwarded: list[Forwarded] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)


class RelayEmulator:
    """The aggregating relays of a run, emulated in the ServerApp (see the module doc).

    Parameters
    ----------
    channel : relay.channels.Channel
        The base station's end of the channel, used for the relays' ends too.
    run_id : int or str
        Flower run id, bound into the headers.
    seed : int
        Run seed of the channels' emulated physics.
    angle_periods : Mapping[str, float]
        Angle arrays and their periods (empty for arithmetic means of angles).
    rules : strategies.robust.ScreeningRules
        Screening applied at each relay to the updates it holds.
    weighting : {"samples", "samples-x-fidelity"}
        ``samples-x-fidelity``: a relay weighs each update by its lower segment's
        fidelity, and the base station an aggregate by its upper segment's.
    bill : callable
        ``bill(server_round, sender, direction, path, report)`` for every message.
    weight_key, metrics_key : str
        The reply metric an update is weighted by, and the reply's MetricRecord key.
    """

    def __init__(
        self, channel: Channel, run_id: int | str, seed: int, angle_periods: Mapping[str, float],
        rules: ScreeningRules, weighting: str, bill: Sink, weight_key: str = "num-examples",
        metrics_key: str = "metrics",
    ) -> None:
        self.channel = channel
        self.run_id = run_id
        self.seed = seed
        self.angle_periods = dict(angle_periods)
        self.rules = rules
        self.weighting = weighting
        self.bill = bill
        self.weight_key = weight_key
        self.metrics_key = metrics_key
        self._relay_copies: dict[tuple[int, str, str], ArrayRecord | str] = {}
        self._held: dict[str, list[Held]] = {}

    # --- headers of the relay hops ----------------------------------------------------
    def _relay_end(self, relay: str, message_type: str, server_round: int,
                   direction: Literal["up", "down"]) -> tuple:
        return (
            message_header(f"{self.run_id}/relay/{relay}", message_type, server_round, 0,
                           direction),
            message_rng(self.seed, message_type, server_round, f"relay/{relay}", direction),
        )

    # --- (a) downlink -----------------------------------------------------------------
    def downlink(
        self, arrays: ArrayRecord, route: Route, message_type: str, server_round: int,
        node_id: int, copy_round: int | None = None,
    ) -> tuple[RecordDict, PathLink]:
        """The envelope for one UAV and the link to tell it (see the module doc).

        ``copy_round`` keys the relay's copy of the model when it is not the message's
        round (the asynchronous mode: one copy per global version, one message per job).

        Raises
        ------
        RelayRefused
            A key exchange aborted, or no secret for a link's UAV.
        ValueError
            The channel cannot carry ``arrays``.
        """
        link = route.uav_link
        if route.relay is not None:
            arrays = self._relay_copy(arrays, route, message_type,
                                      server_round if copy_round is None else copy_round)
        try:
            envelope, sent = self.channel.encode(
                arrays, link,
                message_header(self.run_id, message_type, server_round, node_id, "down"),
                message_rng(self.seed, message_type, server_round, link.uav_id, "down"),
            )
        except ChannelRejected as refusal:
            raise RelayRefused(refusal.reason) from None
        self.bill(server_round, node_id, "down", link.path, sent)
        if sent.aborted:
            raise RelayRefused(sent.reason or "key exchange aborted")
        return envelope, link

    def _relay_copy(self, arrays: ArrayRecord, route: Route, message_type: str,
                    server_round: int) -> ArrayRecord:
        """The relay's copy of the global model: sent once over the upper segment."""
        assert route.relay is not None and route.upper is not None
        key = (server_round, message_category(message_type), route.relay)
        if key not in self._relay_copies:
            self._relay_copies = {
                k: v for k, v in self._relay_copies.items() if k[0] == server_round
            }
            header, rng = self._relay_end(route.relay, message_type, server_round, "down")
            try:
                envelope, sent = self.channel.encode(arrays, route.upper, header, rng)
                self.bill(server_round, route.relay, "down", route.upper.path, sent)
                if sent.aborted:
                    raise ChannelRejected(sent.reason or "key exchange aborted")
                copy, _received = self.channel.decode(
                    envelope, route.upper, header,
                    self._relay_end(route.relay, message_type, server_round, "down")[1],
                )
                self._relay_copies[key] = copy
            except ChannelRejected as refusal:
                self._relay_copies[key] = (
                    f"the model did not reach relay {route.relay}: {refusal.reason}"
                )
        copy_or_reason = self._relay_copies[key]
        if isinstance(copy_or_reason, str):
            raise RelayRefused(copy_or_reason)
        return copy_or_reason

    # --- (b) one uplink, at its relay -------------------------------------------------
    def receive(
        self, content: RecordDict, route: Route, message_type: str, server_round: int,
        node_id: int, specs: Mapping[str, ArraySpec],
    ) -> Held:
        """Decode one UAV's uplink at its relay, check it and hold it there.

        Raises
        ------
        UpdateRejected
            ``"at relay <name>: ..."``: the channel rejected it, or its weight or
            arrays fail the base station's checks.
        """
        assert route.relay is not None and route.lower is not None
        relay, link = route.relay, route.lower
        metrics = content.metric_records.get(self.metrics_key)
        if metrics is None:
            raise UpdateRejected(f"at relay {relay}: reply lacks the '{self.metrics_key}' record")
        try:
            arrays, received = self.channel.decode(
                content, link,
                message_header(self.run_id, message_type, server_round, node_id, "up"),
                message_rng(self.seed, message_type, server_round, link.uav_id, "up"),
            )
        except ChannelRejected as rejection:
            sender = report_from_metrics(metrics, UPLINK_PREFIX, self.channel.name)
            if sender is not None:
                self.bill(server_round, node_id, "up", link.path, sender)
            raise UpdateRejected(
                f"at relay {relay}: {self.channel.name} channel rejected the uplink: "
                f"{rejection.reason}"
            ) from None
        self.bill(server_round, node_id, "up", link.path, received)
        try:
            model, bound = unbind_weight(arrays)
        except ValueError as error:
            raise UpdateRejected(f"at relay {relay}: {error}") from None
        claimed = metrics.get(self.weight_key)
        if claimed is not None and claimed != bound:
            raise UpdateRejected(
                f"at relay {relay}: metric '{self.weight_key}' = {claimed!r} differs from the "
                f"value bound to the payload ({bound:g}): changed in transit?"
            )
        plain = RecordDict({"arrays": model, self.metrics_key: metrics})
        try:
            values, samples = decode_update(plain, specs, self.weight_key, "arrays",
                                            self.metrics_key)
        except UpdateRejected as rejection:
            raise UpdateRejected(f"at relay {relay}: {rejection.reason}") from None
        weight = samples * (link.end_to_end_fidelity
                            if self.weighting == "samples-x-fidelity" else 1.0)
        held = Held(node_id, route, plain, values, samples, weight)
        self._held.setdefault(relay, []).append(held)
        return held

    def held(self) -> dict[str, list[int]]:
        """Node ids of the updates each relay holds, by relay."""
        return {relay: [h.node_id for h in updates] for relay, updates in self._held.items()}

    # --- (c) forward every relay's aggregate ------------------------------------------
    def flush(
        self, reference: Mapping[str, np.ndarray], specs: Mapping[str, ArraySpec],
        message_type: str, server_round: int, prepare: Callable[[Held], Held] | None = None,
    ) -> Flushed:
        """Screen, aggregate and forward what each relay holds; the base station decodes.

        ``reference`` is the global model the held updates started from (screening
        measures distances from it), ``specs`` its arrays' layout. ``prepare`` may
        change each held update first (the asynchronous mode moves a stale update's step
        onto ``reference`` and scales its weight by its staleness).
        """
        flushed = Flushed()
        held, self._held = self._held, {}
        for relay, updates in held.items():
            if prepare is not None:
                updates = [prepare(update) for update in updates]
            screened = screen_updates(
                [h.values for h in updates], [h.samples for h in updates], reference,
                self.angle_periods, self.rules,
            )
            for index, reason in sorted(screened.items()):
                flushed.rejected[updates[index].node_id] = f"at relay {relay}: {reason}"
            kept = tuple(h for index, h in enumerate(updates) if index not in screened)
            if kept:
                forwarded = self._forward(relay, kept, specs, message_type, server_round)
                if isinstance(forwarded, str):
                    flushed.rejected.update({h.node_id: forwarded for h in kept})
                else:
                    flushed.forwarded.append(forwarded)
        return flushed

    def _forward(
        self, relay: str, kept: tuple[Held, ...], specs: Mapping[str, ArraySpec],
        message_type: str, server_round: int,
    ) -> Forwarded | str:
        """One relay's aggregate over the upper segment, opened at the base station (or
        why it was not)."""
        upper = kept[0].route.upper
        assert upper is not None
        partial = combine([Partial.of_update(h.values, h.weight, self.angle_periods)
                           for h in kept])
        payload = bind_weight(finish(partial, specs, self.angle_periods, extras=True),
                              partial.weight)
        header, rng = self._relay_end(relay, message_type, server_round, "up")
        lost = f"aggregate of relay {relay} lost on its way to the base station"
        try:
            envelope, sent = self.channel.encode(payload, upper, header, rng)
        except (ChannelRejected, ValueError) as error:
            return f"{lost}: {error}"
        self.bill(server_round, relay, "up", upper.path, sent)
        if sent.aborted:
            return f"{lost}: {sent.reason}"
        # --- the base station's end ---
        try:
            arrays, received = self.channel.decode(
                envelope, upper, header,
                self._relay_end(relay, message_type, server_round, "up")[1],
            )
            model, total = unbind_weight(arrays)
        except ChannelRejected as rejection:
            return f"{lost}: {self.channel.name} channel rejected it: {rejection.reason}"
        except ValueError as error:
            return f"{lost}: {error}"
        if not (math.isfinite(total) and total > 0):
            return f"{lost}: its total weight {total!r} is not a positive number"
        check = RecordDict({"arrays": model, "metrics": MetricRecord({self.weight_key: total})})
        try:
            values, _total = decode_update(check, forwarded_specs(specs, self.angle_periods),
                                           self.weight_key)
        except UpdateRejected as rejection:
            return f"{lost}: {rejection.reason}"
        weight = total * (upper.end_to_end_fidelity
                          if self.weighting == "samples-x-fidelity" else 1.0)
        return Forwarded(relay, kept, _forwarded_partial(values, weight, self.angle_periods),
                         {name: values[name] for name in specs})

