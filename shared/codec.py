"""The wire codec: a versioned binary header followed by a tensor's raw bytes.

Layout (little endian)::

    magic  b"IQT"   3 bytes
    version         u8   (1)
    dtype code      u8   (1 uint8, 2 float16, 3 float32, 4 int32, 5 int64, 6 bool)
    ndim            u8   (1..8)
    reserved        u16  (0)
    dims            ndim x u32
    data            prod(dims) * itemsize bytes, C order

Decoding checks the header against the payload length and a size limit *before* allocating, and
every failure raises :class:`inferq.shared.errors.InvalidInput` (or ``PayloadTooLarge``) naming what was
expected and what came. No pickle is involved anywhere.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from inferq.shared.errors import InvalidInput, PayloadTooLarge

MAGIC = b"IQT"
VERSION = 1
MAX_NDIM = 8
_FIXED = struct.Struct("<3sBBBH")

DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype("<f2"),
    3: np.dtype("<f4"),
    # Beside images: token ids and masks on the way in, labels and masks in results.
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype(np.bool_),
}
_CODES = {dt: code for code, dt in DTYPES.items()}
#: By name ("uint8", "float16", "float32", ...), to compare with a spec's dtype without asking each
#: header's dtype for its name (numpy builds names in Python: 4 us a call).
BY_NAME: dict[str, np.dtype] = {dt.name: dt for dt in DTYPES.values()}


@dataclass(frozen=True)
class TensorHeader:
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def header_for(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The header alone: producers build it once per spec and prepend it to raw bytes."""
    code = _CODES.get(np.dtype(dtype).newbyteorder("<"))
    if code is None:
        names = ", ".join(dt.name for dt in DTYPES.values())
        raise InvalidInput(f"wire dtype must be one of {names}, got {dtype}")
    if not 1 <= len(shape) <= MAX_NDIM:
        raise InvalidInput(f"tensor must have 1..{MAX_NDIM} dimensions, got shape {shape}")
    return _FIXED.pack(MAGIC, VERSION, code, len(shape), 0) + struct.pack(f"<{len(shape)}I", *shape)


def encode(array: np.ndarray) -> bytes:
    """Header + raw C-order bytes of ``array``."""
    # Not np.ascontiguousarray: it returns at least 1-d, turning a 0-d scalar into shape (1,).
    array = np.asarray(array, order="C")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return header_for(little.dtype, tuple(array.shape)) + little.tobytes()


def read_header(payload: bytes | memoryview, max_bytes: int) -> TensorHeader:
    """Parse and check the header; raises before anything is allocated for the data."""
    size = len(payload)
    if size > max_bytes:
        raise PayloadTooLarge(f"payload must be at most {max_bytes} bytes, got {size}")
    if size < _FIXED.size:
        raise InvalidInput(
            f"payload must start with a {_FIXED.size}-byte tensor header, got {size} bytes"
        )
    magic, version, code, ndim, _ = _FIXED.unpack_from(payload)
    if magic != MAGIC:
        raise InvalidInput(f"payload must start with magic {MAGIC!r}, got {bytes(magic)!r}")
    if version != VERSION:
        raise InvalidInput(f"tensor header version must be {VERSION}, got {version}")
    if code not in DTYPES:
        raise InvalidInput(f"dtype code must be one of {sorted(DTYPES)}, got {code}")
    if not 1 <= ndim <= MAX_NDIM:
        raise InvalidInput(f"ndim must be 1..{MAX_NDIM}, got {ndim}")
    offset = _FIXED.size + 4 * ndim
    if size < offset:
        raise InvalidInput(
            f"header declares {ndim} dims ({offset} bytes), payload has {size} bytes"
        )
    shape = struct.unpack_from(f"<{ndim}I", payload, _FIXED.size)
    header = TensorHeader(DTYPES[code], tuple(shape), offset)
    if size - offset != header.nbytes:
        raise InvalidInput(
            f"header declares {header.dtype.name}{list(shape)} = {header.nbytes} data bytes, "
            f"payload carries {size - offset}"
        )
    return header


def decode(payload: bytes | memoryview, max_bytes: int = 64 * 1024 * 1024) -> np.ndarray:
    """The array in ``payload`` (a read-only view of it: no copy)."""
    return array_of(payload, read_header(payload, max_bytes))


def array_of(payload: bytes | memoryview, header: TensorHeader) -> np.ndarray:
    """The array ``header`` (already checked against ``payload``) describes: a view, no copy."""
    return np.frombuffer(payload, dtype=header.dtype, offset=header.offset).reshape(header.shape)
