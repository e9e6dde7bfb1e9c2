"""Envelope helpers for channel authors: the public header, untrusted records and arrays.

An envelope is a Flower :class:`~flwr.app.RecordDict` holding only public content. The
helpers here build its header record, check it on arrival, turn any parsing error of
untrusted content into :class:`~relay.channels.base.ChannelRejected`, and decode arrays
without unpickling.
"""

from __future__ import annotations

import math
import struct
import tokenize
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from relay.arrays import decode_array
from relay.channels.base import ChannelRejected, Header

ENVELOPE_VERSION = 1
"""Version of the envelope layout; bumped when a channel's envelope changes shape."""

HEADER_RECORD = "relay.header"
"""Key of the ConfigRecord that names channel, run, round, node and direction."""



def _header_fields(channel_name: str, header: Header) -> dict[str, Any]:
    """The public header record's fields, as written and as expected on arrival."""
    return {
        "channel": channel_name,
        "version": ENVELOPE_VERSION,
        "run_id": header.run_id,
        "server_round": int(header.server_round),
        # Flower node ids use all 64 bits; ConfigRecord ints are signed.
        "node_id": str(int(header.node_id)),
        "direction": header.direction,
    }


def new_envelope(channel_name: str, header: Header) -> RecordDict:
    """An envelope holding only the public header record."""
    envelope = RecordDict()
    envelope[HEADER_RECORD] = ConfigRecord(_header_fields(channel_name, header))
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
    expected = _header_fields(channel_name, header)
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
    """Decode an untrusted ``Array`` (:func:`relay.arrays.decode_array`) that must also be
    what its own ``dtype`` and ``shape`` fields declare.

    Raises
    ------
    ValueError
        Not ``.npy`` data, object dtype, a header that declares more (or less) than the
        bytes carry, or dtype/shape other than the declared ones.
    """
    if not isinstance(array, Array):
        raise ValueError("array is not a numpy-serialised Array")
    try:
        declared = (tuple(int(n) for n in array.shape), str(array.dtype))
    except (TypeError, ValueError):
        raise ValueError("array declares no usable shape and dtype") from None
    values = decode_array(array)
    if (tuple(values.shape), str(values.dtype)) != declared:
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
