"""Safe byte serialisation of an ``ArrayRecord`` (no pickle), for channels that encrypt.

Layout::

    b"QFLA" | version (1 byte) | header length (uint32, big endian) | header | data...

The header is UTF-8 JSON: a list of ``[name, dtype, shape, stype, n_bytes]``,
one per array in record order; ``data`` is each ``Array.data`` (``.npy`` bytes
for numpy arrays) back to back. Every field is kept as is, so the round trip is
exact for any ``Array``; reading never executes code.
"""

from __future__ import annotations

import json
import struct

from flwr.app import Array, ArrayRecord

_MAGIC = b"QFLA"
_VERSION = 1
_PREFIX = struct.Struct(">4sBI")


def serialize_array_record(arrays: ArrayRecord) -> bytes:
    """Serialise every array of ``arrays`` with its name, dtype, shape and stype."""
    entries = [
        [key, array.dtype, [int(size) for size in array.shape], array.stype, len(array.data)]
        for key, array in arrays.items()
    ]
    header = json.dumps(entries, separators=(",", ":")).encode()
    return b"".join(
        [_PREFIX.pack(_MAGIC, _VERSION, len(header)), header]
        + [array.data for array in arrays.values()]
    )


def deserialize_array_record(payload: bytes) -> ArrayRecord:
    """Rebuild the ``ArrayRecord`` written by :func:`serialize_array_record`.

    Raises
    ------
    ValueError
        Wrong magic or version, inconsistent lengths, or a malformed header.
    """
    if len(payload) < _PREFIX.size:
        raise ValueError("serialised record is too short")
    magic, version, header_length = _PREFIX.unpack_from(payload)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError(f"not a version-{_VERSION} serialised ArrayRecord")
    body_start = _PREFIX.size + header_length
    if body_start > len(payload):
        raise ValueError("serialised record header overruns the payload")
    entries = json.loads(payload[_PREFIX.size : body_start].decode())
    if not isinstance(entries, list):
        raise ValueError("serialised record header must be a list")
    arrays = ArrayRecord()
    offset = body_start
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 5):
            raise ValueError("each serialised array needs name, dtype, shape, stype, length")
        name, dtype, shape, stype, length = entry
        valid = (
            isinstance(name, str)
            and isinstance(dtype, str)
            and isinstance(stype, str)
            and isinstance(shape, list)
            and all(isinstance(size, int) and size >= 0 for size in shape)
            and isinstance(length, int)
            and 0 <= length <= len(payload) - offset
        )
        if not valid or name in arrays:
            raise ValueError(f"serialised array entry {entry!r} is invalid")
        arrays[name] = Array(
            dtype=dtype, shape=tuple(shape), stype=stype, data=payload[offset : offset + length]
        )
        offset += length
    if offset != len(payload):
        raise ValueError("serialised record has trailing bytes")
    return arrays
