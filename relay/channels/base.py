"""Channel API of the relay layer: one small interface, a registry, and envelope helpers.

A channel turns the arrays of one message into an *envelope* for one link and
turns it back at the other end::

    envelope, sent = channel.encode(arrays, link, header, rng)    # sender
    arrays, received = channel.decode(envelope, link, header, rng)  # receiver

The envelope is a Flower :class:`~flwr.app.RecordDict` holding only public
content (what would cross the classical network), so it can travel inside a
``Message`` unchanged. ``decode`` raises :class:`ChannelRejected` for anything
that must not be aggregated; the caller logs the reason and counts it.

Adding a channel takes one file plus one registration line (CONTRIBUTING.md)::

    from relay.channels.base import Channel, ChannelReport
    from relay.channels.registry import register_channel
    from relay.options import integer

    @register_channel
    class MyChannel(Channel):
        name = "mine"
        options = (integer("mine-repeats", 3, 1, 100, help="copies sent per message"),)

        def __init__(self, mine_repeats: int = 3) -> None: ...
        def encode(self, arrays, link, header, rng): ...
        def decode(self, envelope, link, header, rng): ...

and ``from relay.channels import mine`` in :mod:`relay.channels` (the registration line).
Then ``relay='mine' mine-repeats=5`` works as run config: the option joins the run-config
schema with its range and help, both apps build the channel from it
(:func:`relay.channels.registry.build_channel`), and the README's relay table lists it.
Envelope helpers for channel authors are in :mod:`relay.channels.envelope`.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from relay.link import PathLink
from relay.options import Option

DIRECTIONS = ("up", "down")
"""``up``: UAV -> base station (updates); ``down``: base station -> UAV (global model)."""

_MAX_REASON_CHARS = 300


class ChannelRejected(Exception):  # noqa: N818 - the agreed API name
    """An envelope that must not be aggregated (malformed, unauthenticated, aborted key...).

    Parameters
    ----------
    reason : str
        Why, in words fit for a log line; never contains decrypted content.
    """

    def __init__(self, reason: str) -> None:
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 3] + "..."
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """Who a message belongs to; channels bind it to the envelope.

    Parameters
    ----------
    run_id : str
        Flower run id (as text).
    server_round : int
        Federated round, >= 0.
    node_id : int
        Flower node id of the UAV end, in [0, 2**64).
    direction : {"up", "down"}
        ``up`` for client updates, ``down`` for the global model.
    """

    run_id: str
    server_round: int
    node_id: int
    direction: Literal["up", "down"]

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or len(self.run_id.encode()) > 1024:
            raise ValueError(f"run_id must be a string of at most 1024 bytes, got {self.run_id!r}")
        for name, value in (("server_round", self.server_round), ("node_id", self.node_id)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if not 0 <= value < 2**64:
                raise ValueError(f"{name} must lie in [0, 2**64), got {value}")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"
            )

    def associated_data(self) -> bytes:
        """Canonical bytes of the header, for binding into MACs and key derivation."""
        run_id = self.run_id.encode()
        return (
            b"qfl-relay/v1|"
            + struct.pack(">H", len(run_id))
            + run_id
            + struct.pack(">QQ", int(self.server_round), int(self.node_id))
            + self.direction.encode()
        )


@dataclass(frozen=True)
class ChannelEnd:
    """Which end of the relay a channel is built for, and where that end keeps its files.

    Attributes
    ----------
    uav_id : str or None
        ``None`` at the base station (it encodes and decodes for every UAV); else the
        UAV this end is, which may encode and decode for its own link only.
    secret_folder : pathlib.Path
        Where out-of-band material is read (the cache folder).
    state_folder : pathlib.Path
        Where state that must outlive one process is kept (Flower starts a new ClientApp
        process for every message).
    """

    uav_id: str | None
    secret_folder: Path
    state_folder: Path

    @property
    def is_base_station(self) -> bool:
        """True at the base station's end."""
        return self.uav_id is None


@dataclass(frozen=True)
class ChannelReport:
    """What one encode or decode cost; figures a channel does not have stay 0 / None.

    Attributes
    ----------
    channel : str
        Channel name.
    n_bytes : int
        Bytes of the classical message that carries the payload (arrays,
        public metadata, ciphertext).
    latency_s : float
        Emulated time for the message to be usable at the receiver.
    fidelity : float or None
        End-to-end fidelity of the link's entangled resource, if used.
    bell_pairs : int
        End-to-end Bell pairs consumed.
    classical_bits : int
        Classical bits the quantum protocol needs besides the payload
        (teleport corrections, swap outcomes, BB84 public discussion).
    qber : float or None
        Estimated quantum bit error rate of the key exchange.
    key_bits : int
        Secret key bits established.
    aborted : bool
        True when the channel could not carry the payload (key exchange aborted).
    reason : str or None
        Why it aborted.
    """

    channel: str
    n_bytes: int = 0
    latency_s: float = 0.0
    fidelity: float | None = None
    bell_pairs: int = 0
    classical_bits: int = 0
    qber: float | None = None
    key_bits: int = 0
    aborted: bool = False
    reason: str | None = None

    def to_metrics(self, prefix: str = "") -> dict[str, int | float]:
        """Numeric figures for a Flower ``MetricRecord`` (``None`` values are left out)."""
        metrics: dict[str, int | float] = {
            "n_bytes": int(self.n_bytes),
            "latency_s": float(self.latency_s),
            "bell_pairs": int(self.bell_pairs),
            "classical_bits": int(self.classical_bits),
            "key_bits": int(self.key_bits),
            "aborted": int(self.aborted),
        }
        if self.fidelity is not None:
            metrics["fidelity"] = float(self.fidelity)
        if self.qber is not None:
            metrics["qber"] = float(self.qber)
        return {prefix + key: value for key, value in metrics.items()}


class Channel(abc.ABC):
    """A way to carry an ``ArrayRecord`` over one relay link, with its cost.

    Subclasses set ``name`` and implement :meth:`encode` and :meth:`decode`.
    ``decode`` must raise :class:`ChannelRejected`, and nothing else, for any envelope
    it cannot accept. A channel's settings are run-config keys it declares in
    :attr:`options`; each reaches ``__init__`` as the keyword argument
    :attr:`relay.options.Option.argument` (``mine-repeats`` -> ``mine_repeats``).
    """

    name: ClassVar[str]

    options: ClassVar[tuple[Option, ...]] = ()
    """The run-config keys this channel reads (their values reach ``__init__``)."""

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any], end: ChannelEnd) -> Channel:
        """Build this channel from the values of its :attr:`options`, by run-config key.

        ``end`` says which end of the relay this is (the base station, or one UAV) and
        where its local files are; a channel that needs out-of-band material (``qkd``'s
        pre-shared per-UAV secrets, :mod:`relay.shared_secret`) or state that outlives a
        process (``qkd``'s replay memory) overrides this. Others ignore it.
        """
        return cls(**{option.argument: values[option.key] for option in cls.options})

    def provenance(self) -> dict[str, str]:
        """Where this end's out-of-band material came from, safe to log and record.

        Never a secret itself; empty for channels that need none.
        """
        return {}

    @abc.abstractmethod
    def encode(
        self,
        arrays: ArrayRecord,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[RecordDict, ChannelReport]:
        """Build the envelope that carries ``arrays`` over ``link``.

        Parameters
        ----------
        arrays : flwr.app.ArrayRecord
            Payload (global model or update).
        link : relay.link.PathLink
            This round's path between the UAV and the base station.
        header : Header
            Run, round, node and direction the message belongs to.
        rng : numpy.random.Generator
            Randomness of the emulated physics.

        Returns
        -------
        tuple
            ``(envelope, report)``.

        Raises
        ------
        ChannelRejected
            This end cannot send on ``link`` at all (``qkd``: it holds no secret for the
            link's UAV); the message must not be sent.
        ValueError
            ``arrays`` cannot be carried (for example non-finite values for ``teleport``).
        """

    @abc.abstractmethod
    def decode(
        self,
        envelope: RecordDict,
        link: PathLink,
        header: Header,
        rng: np.random.Generator,
    ) -> tuple[ArrayRecord, ChannelReport]:
        """Recover the arrays from an envelope, or reject it.

        Parameters
        ----------
        envelope : flwr.app.RecordDict
            As received; untrusted.
        link : relay.link.PathLink
            This round's path, as known to the receiver.
        header : Header
            What the receiver expects: its run, round, node and direction.
        rng : numpy.random.Generator
            Randomness of the emulated physics.

        Returns
        -------
        tuple
            ``(arrays, report)``.

        Raises
        ------
        ChannelRejected
            The envelope must not be used; ``reason`` says why.
        """
