"""Untrusted arrays from the network: one decoder for channels and strategies alike.

Every array that arrives in a message (a channel's counts or ciphertext, the weight bound
into an update, the update itself) is decoded here: ``.npy`` data only, never a pickle,
and never an allocation larger than the bytes the message really carries.
"""

from __future__ import annotations

import io
import math

import numpy as np
from flwr.app import Array

NUMPY_STYPE = "numpy.ndarray"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 10_000  # numpy's own default limit for a trusted header


class DecodeError(ValueError):
    """An untrusted array that is not the expected ``.npy`` data."""


def decode_array(
    array: Array, shape: tuple[int, ...] | None = None, dtype: str | None = None
) -> np.ndarray:
    """Decode an untrusted ``Array`` as ``.npy`` data, never unpickling.

    The ``.npy`` header is read first and checked against ``shape`` and ``dtype`` when
    given; then its declared size must equal the bytes that follow it. The values are
    read from exactly those bytes, so a header that declares more than the message
    carries (a shape of ``(2, 10**15)``) is refused before anything is allocated.

    Raises
    ------
    DecodeError
        Wrong serialisation type, not ``.npy`` data, a header that does not parse, an
        object dtype, a dtype or shape other than the expected one, or a byte count that
        does not fit the header.
    """
    if not isinstance(array, Array) or array.stype != NUMPY_STYPE:
        stype = getattr(array, "stype", None)
        raise DecodeError(f"cannot be decoded: not a numpy array (stype {stype!r})")
    data = array.data
    if not isinstance(data, bytes) or not data.startswith(_NPY_MAGIC):
        raise DecodeError("cannot be decoded: data is not in .npy format")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream, _MAX_NPY_HEADER)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream, _MAX_NPY_HEADER)
        else:
            raise DecodeError(f"cannot be decoded: .npy version {version} is not supported")
    # numpy parses the header with ast and tokenize: untrusted bytes can raise
    # ValueError, SyntaxError, tokenize.TokenError, RecursionError...; all mean "reject".
    except Exception as error:  # noqa: BLE001
        if isinstance(error, DecodeError):
            raise
        raise DecodeError(
            f"cannot be decoded: .npy header does not parse ({type(error).__name__})"
        ) from None
    found_shape, fortran_order, found_dtype = header
    found_shape = tuple(found_shape)
    expected_dtype = str(found_dtype) if dtype is None else dtype
    expected_shape = found_shape if shape is None else tuple(shape)
    if (
        found_dtype.hasobject
        or str(found_dtype) != expected_dtype
        or found_shape != expected_shape
    ):
        raise DecodeError(
            f"is {found_dtype}{list(found_shape)}, expected {expected_dtype}{list(expected_shape)}"
        )
    offset = stream.tell()
    expected_bytes = math.prod(found_shape) * found_dtype.itemsize
    if len(data) - offset != expected_bytes:
        raise DecodeError(
            f"cannot be decoded: {len(data) - offset} bytes of values, expected {expected_bytes}"
        )
    values = np.frombuffer(data, dtype=found_dtype, count=math.prod(found_shape), offset=offset)
    return values.reshape(found_shape, order="F" if fortran_order else "C").copy()
