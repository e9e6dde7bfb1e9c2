"""Channel API of the relay layer: one small interface, a registry, and envelope helpers.

A channel turns the arrays of one message into an *envelope* for one link and
turns it back at the other end::

    envelope, sent = channel.encode(arrays, link, header, rng)    # sender
    arrays, received = channel.decode(envelope, link, header, rng)  # receiver

The envelope is a Flower :class:`~flwr.app.RecordDict` holding only public
content (what would cross the classical network), so it can travel inside a
``Message`` unchanged. ``decode`` raises :class:`ChannelRejected` for anything
that must not be aggregated; the caller logs the reason and counts it.

Adding a channel takes one file::

    from relay.channels import Channel, ChannelReport, register_channel

    @register_channel
    class MyChannel(Channel):
        name = "mine"

        def encode(self, arrays, link, header, rng): ...
        def decode(self, envelope, link, header, rng): ...

then ``get_channel("mine", **options)`` builds it by name (for example from the
``relay`` run-config key), as long as the module has been imported.
"""

from __future__ import annotations

import abc
import inspect
import io
import math
import re
import struct
import tokenize
from collections.abc import Iterator, KeysView
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from relay.link import PathLink

ENVELOPE_VERSION = 1
"""Version of the envelope layout; bumped when a channel's envelope changes shape."""

HEADER_RECORD = "relay.header"
"""Key of the ConfigRecord that names channel, run, round, node and direction."""

DIRECTIONS = ("up", "down")
"""``up``: UAV -> base station (updates); ``down``: base station -> UAV (global model)."""

_NUMPY_STYPE = "numpy.ndarray"
_NPY_MAGIC = b"\x93NUMPY"
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
    Options come in through ``__init__`` keyword arguments (see
    :func:`get_channel`). ``decode`` must raise :class:`ChannelRejected`, and
    nothing else, for any envelope it cannot accept.
    """

    name: ClassVar[str]

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
        link : relay.topology.PathLink
            This round's path between the UAV and the base station.
        header : Header
            Run, round, node and direction the message belongs to.
        rng : numpy.random.Generator
            Randomness of the emulated physics.

        Returns
        -------
        tuple
            ``(envelope, report)``.
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
        link : relay.topology.PathLink
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


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Channel]] = {}
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")

CHANNEL_NAMES: KeysView[str] = _REGISTRY.keys()
"""Names of the registered channels (a live view: it grows as channels register)."""


def register_channel(cls: type[Channel]) -> type[Channel]:
    """Class decorator: make a channel available to :func:`get_channel` under ``cls.name``.

    Raises
    ------
    TypeError
        ``cls`` is not a concrete :class:`Channel` subclass.
    ValueError
        The name is invalid or already taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Channel)) or inspect.isabstract(cls):
        raise TypeError(f"register_channel expects a concrete Channel subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"channel class {cls.__qualname__} needs a class attribute `name` of lowercase "
            f"letters, digits, '-' or '_', got {name!r}"
        )
    registered = _REGISTRY.get(name)
    same_class = registered is not None and (
        (registered.__module__, registered.__qualname__) == (cls.__module__, cls.__qualname__)
    )
    if registered is not None and not same_class:
        raise ValueError(
            f"channel name {name!r} is already registered by {registered.__qualname__}"
        )
    _REGISTRY[name] = cls
    return cls


def get_channel(name: str, **options: Any) -> Channel:
    """Build a registered channel by name.

    Parameters
    ----------
    name : str
        Registered name (see :data:`CHANNEL_NAMES`).
    **options
        Keyword arguments of the channel's constructor.

    Returns
    -------
    Channel

    Raises
    ------
    ValueError
        Unknown name (the message lists the allowed ones) or options the channel
        does not accept.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown relay channel {name!r}; allowed: {', '.join(sorted(_REGISTRY))}")
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = ", ".join(signature.parameters) or "none"
        raise ValueError(
            f"relay channel {name!r}: {error}; accepted options: {accepted}"
        ) from error
    return cls(**options)


# --------------------------------------------------------------------------------------
# Envelope helpers for channel authors
# --------------------------------------------------------------------------------------


def new_envelope(channel_name: str, header: Header) -> RecordDict:
    """An envelope holding only the public header record."""
    envelope = RecordDict()
    envelope[HEADER_RECORD] = ConfigRecord(
        {
            "channel": channel_name,
            "version": ENVELOPE_VERSION,
            "run_id": header.run_id,
            "server_round": int(header.server_round),
            # Flower node ids use all 64 bits; ConfigRecord ints are signed.
            "node_id": str(int(header.node_id)),
            "direction": header.direction,
        }
    )
    return envelope


def check_envelope_header(envelope: Any, channel_name: str, header: Header) -> None:
    """Reject an envelope whose public header does not match what the receiver expects.

    This catches misrouted and replayed envelopes early with a clear reason; it
    is not authentication (an attacker can rewrite it), which is the job of
    channels that bind the header cryptographically.

    Raises
    ------
    ChannelRejected
        Not a RecordDict, no header, or a field differs.
    """
    if not isinstance(envelope, RecordDict):
        raise ChannelRejected(f"envelope is a {type(envelope).__name__}, not a RecordDict")
    record = envelope.get(HEADER_RECORD)
    if not isinstance(record, ConfigRecord):
        raise ChannelRejected(f"envelope has no {HEADER_RECORD!r} ConfigRecord")
    expected: dict[str, Any] = {
        "channel": channel_name,
        "version": ENVELOPE_VERSION,
        "run_id": header.run_id,
        "server_round": int(header.server_round),
        "node_id": str(int(header.node_id)),
        "direction": header.direction,
    }
    hints = {
        "channel": "encoded by another channel",
        "version": "unsupported envelope version",
        "run_id": "belongs to another run",
        "server_round": "replayed from another round?",
        "node_id": "misrouted: meant for another node?",
        "direction": "wrong direction",
    }
    for key, value in expected.items():
        if key not in record:
            raise ChannelRejected(f"envelope header is missing {key!r}")
        found = record[key]
        if type(found) is not type(value) or found != value:
            raise ChannelRejected(
                f"envelope header {key} is {found!r}, expected {value!r} ({hints[key]})"
            )


@contextmanager
def rejecting_malformed(channel_name: str) -> Iterator[None]:
    """Turn any parsing error inside the block into :class:`ChannelRejected`.

    The envelope is untrusted input: a wrong type, a missing key or an
    undecodable array means "reject", never a crash of the round.
    """
    try:
        yield
    except ChannelRejected:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        ArithmeticError,
        EOFError,
        RecursionError,
        SyntaxError,  # numpy parses .npy headers with ast/tokenize
        tokenize.TokenError,
        struct.error,
    ) as error:
        raise ChannelRejected(
            f"malformed {channel_name} envelope: {type(error).__name__}: {error}"
        ) from error


def get_record(envelope: RecordDict, key: str, kind: type) -> Any:
    """Fetch a record of the given type from an envelope or reject the envelope."""
    record = envelope.get(key)
    if not isinstance(record, kind):
        raise ChannelRejected(f"envelope has no {kind.__name__} {key!r}")
    return record


def array_to_numpy(array: Array) -> np.ndarray:
    """Decode an untrusted ``Array`` as ``.npy`` data, never unpickling.

    Raises
    ------
    ValueError
        Not ``.npy`` data, object dtype, or dtype/shape differ from the declared ones.
    """
    if not isinstance(array, Array) or array.stype != _NUMPY_STYPE:
        raise ValueError("array is not a numpy-serialised Array")
    if not isinstance(array.data, bytes) or not array.data.startswith(_NPY_MAGIC):
        raise ValueError("array data is not in .npy format")
    values = np.lib.format.read_array(io.BytesIO(array.data), allow_pickle=False)
    if not isinstance(values, np.ndarray) or values.dtype.hasobject:
        raise ValueError("array data holds objects")
    if str(values.dtype) != array.dtype or tuple(values.shape) != tuple(array.shape):
        raise ValueError(
            f"array data is {values.dtype}{values.shape}, declared {array.dtype}{array.shape}"
        )
    return values


def copy_array(array: Array) -> Array:
    """A new ``Array`` with the same fields (the bytes are shared: they are immutable)."""
    return Array(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data)


def copy_array_record(arrays: ArrayRecord) -> ArrayRecord:
    """A new ``ArrayRecord`` holding copies of the same arrays."""
    return ArrayRecord({key: copy_array(array) for key, array in arrays.items()})


def array_record_nbytes(arrays: ArrayRecord) -> int:
    """Bytes of serialised array data in a record."""
    return sum(len(array.data) for array in arrays.values())


def config_record_nbytes(record: ConfigRecord) -> int:
    """Approximate wire size of a ConfigRecord: 8 bytes per number, raw length of text/bytes."""

    def size(value: Any) -> int:
        if isinstance(value, list):
            return sum(size(item) for item in value)
        if isinstance(value, str):
            return len(value.encode())
        if isinstance(value, bytes):
            return len(value)
        return 8

    return sum(len(key.encode()) + size(value) for key, value in record.items())


def is_finite_number(value: Any) -> bool:
    """True for a real int/float (not bool) that is finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
