"""shared/codec.py: the versioned binary tensor codec."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferq.shared import codec
from inferq.shared.errors import InvalidInput, PayloadTooLarge

WIRE_DTYPES = [np.uint8, np.float16, np.float32, np.int32, np.int64, np.bool_]
SHAPES = [(1,), (7,), (3, 4), (3, 32, 32), (2, 3, 4, 5), (1,) * 8, (0,), (4, 0)]


def _header(
    magic: bytes = b"IQT", version: int = 1, code: int = 1, dims: tuple[int, ...] = (2, 3)
) -> bytes:
    fixed = struct.pack("<3sBBBH", magic, version, code, len(dims), 0)
    return fixed + struct.pack(f"<{len(dims)}I", *dims)


def _sample(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-(2**31), 2**31, size=shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(size=shape).astype(dtype)


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_keeps_dtype_shape_and_values(shape: tuple[int, ...], dtype: type) -> None:
    array = _sample(shape, dtype)
    decoded = codec.decode(codec.encode(array))
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_encoded_layout_is_header_then_c_order_bytes() -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    payload = codec.encode(array)
    assert payload == _header(code=1, dims=(2, 3)) + bytes(range(6))


def test_header_for_matches_encode_prefix() -> None:
    array = _sample((3, 8, 8), np.float32)
    header = codec.header_for(np.dtype(np.float32), (3, 8, 8))
    assert codec.encode(array) == header + array.tobytes()


def test_big_endian_and_non_contiguous_inputs_round_trip_as_little_endian_c_order() -> None:
    big = np.arange(12, dtype=">f4").reshape(3, 4)
    decoded = codec.decode(codec.encode(big))
    assert decoded.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(decoded, big)
    strided = np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(codec.decode(codec.encode(strided)), strided)


@pytest.mark.parametrize("dtype", [np.float64, np.int8, np.uint16, np.complex64])
def test_encode_refuses_dtypes_outside_the_wire_set(dtype: type) -> None:
    with pytest.raises(InvalidInput, match=r"uint8, float16, float32, int32, int64, bool, got"):
        codec.encode(np.zeros((2, 2), dtype=dtype))


def test_encode_refuses_more_than_eight_dims() -> None:
    with pytest.raises(InvalidInput, match=r"1\.\.8 dimensions, got shape"):
        codec.encode(np.zeros((1,) * 9, dtype=np.uint8))


def test_encode_refuses_zero_dim_arrays() -> None:
    with pytest.raises(InvalidInput, match=r"1\.\.8 dimensions, got shape \(\)"):
        codec.encode(np.array(7, dtype=np.uint8))
    with pytest.raises(InvalidInput, match=r"got shape \(\)"):
        codec.encode(np.float32(1.5))  # type: ignore[arg-type]


# -- no copy -----------------------------------------------------------------------------------


def test_decode_returns_a_view_of_the_payload() -> None:
    buffer = bytearray(codec.encode(np.arange(12, dtype=np.float32).reshape(3, 4)))
    decoded = codec.decode(buffer)
    payload_view = np.frombuffer(buffer, dtype=np.uint8)
    assert np.shares_memory(decoded, payload_view)
    # writing through the buffer shows in the array: it really is the same memory
    offset = len(buffer) - 12 * 4
    buffer[offset : offset + 4] = struct.pack("<f", 42.0)
    assert decoded[0, 0] == 42.0


def test_decode_of_bytes_is_a_read_only_view() -> None:
    payload = codec.encode(np.arange(8, dtype=np.uint8))
    decoded = codec.decode(payload)
    assert decoded.base is not None
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable


def test_decode_accepts_a_memoryview_without_copying() -> None:
    buffer = bytearray(codec.encode(np.arange(10, dtype=np.uint8)))
    decoded = codec.decode(memoryview(buffer))
    assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8))
    np.testing.assert_array_equal(decoded, np.arange(10, dtype=np.uint8))


# -- malformed input ---------------------------------------------------------------------------


def test_empty_payload() -> None:
    with pytest.raises(InvalidInput, match=r"must start with a 8-byte tensor header, got 0 bytes"):
        codec.decode(b"")


def test_truncated_fixed_header() -> None:
    with pytest.raises(InvalidInput, match=r"8-byte tensor header, got 5 bytes"):
        codec.decode(_header()[:5])


def test_truncated_dims() -> None:
    # fixed part says 2 dims (8 more bytes) but only one dim's 4 bytes follow
    with pytest.raises(InvalidInput, match=r"declares 2 dims \(16 bytes\), payload has 12 bytes"):
        codec.decode(_header(dims=(2, 3))[:12])


def test_bad_magic() -> None:
    with pytest.raises(InvalidInput, match=r"magic b'IQT', got b'XYZ'"):
        codec.decode(_header(magic=b"XYZ") + bytes(6))


def test_bad_version() -> None:
    with pytest.raises(InvalidInput, match=r"version must be 1, got 2"):
        codec.decode(_header(version=2) + bytes(6))


@pytest.mark.parametrize("code", [0, 7, 255])
def test_bad_dtype_code(code: int) -> None:
    with pytest.raises(
        InvalidInput, match=rf"dtype code must be one of \[1, 2, 3, 4, 5, 6\], got {code}"
    ):
        codec.decode(_header(code=code) + bytes(6))


def test_ndim_zero() -> None:
    with pytest.raises(InvalidInput, match=r"ndim must be 1\.\.8, got 0"):
        codec.decode(_header(dims=()))


def test_ndim_nine() -> None:
    with pytest.raises(InvalidInput, match=r"ndim must be 1\.\.8, got 9"):
        codec.decode(_header(dims=(1,) * 9) + b"\x00")


def test_data_shorter_than_header_declares() -> None:
    payload = codec.encode(np.zeros((2, 3), dtype=np.float32))[:-1]
    with pytest.raises(
        InvalidInput, match=r"declares float32\[2, 3\] = 24 data bytes, payload carries 23"
    ):
        codec.decode(payload)


def test_data_longer_than_header_declares() -> None:
    payload = codec.encode(np.zeros((2, 3), dtype=np.uint8)) + b"\x00"
    with pytest.raises(
        InvalidInput, match=r"declares uint8\[2, 3\] = 6 data bytes, payload carries 7"
    ):
        codec.decode(payload)


def test_huge_declared_shape_is_refused_without_allocating() -> None:
    payload = _header(code=3, dims=(2**32 - 1,) * 8)
    with pytest.raises(InvalidInput, match=r"payload carries 0"):
        codec.decode(payload)


def test_payload_over_max_bytes() -> None:
    payload = codec.encode(np.zeros(1000, dtype=np.uint8))
    with pytest.raises(PayloadTooLarge, match=rf"at most 1000 bytes, got {len(payload)}"):
        codec.decode(payload, max_bytes=1000)
    # exactly at the limit is fine
    assert codec.decode(payload, max_bytes=len(payload)).shape == (1000,)


def test_payload_too_large_is_an_invalid_input() -> None:
    assert issubclass(PayloadTooLarge, InvalidInput)


def test_read_header_reports_offset_and_nbytes() -> None:
    header = codec.read_header(codec.encode(np.zeros((3, 5), dtype=np.float16)), max_bytes=1 << 20)
    assert header.dtype == np.dtype("<f2")
    assert header.shape == (3, 5)
    assert header.offset == 8 + 2 * 4
    assert header.nbytes == 30


# -- properties --------------------------------------------------------------------------------

_VALID_PREFIXES = st.sampled_from(
    [b"", b"IQT", b"IQT\x01", b"IQT\x01\x01", b"IQT\x01\x03\x02\x00\x00"]
)


@settings(max_examples=400, deadline=None)
@given(prefix=_VALID_PREFIXES, tail=st.binary(max_size=96), max_bytes=st.integers(0, 200))
def test_decode_of_arbitrary_bytes_returns_a_consistent_array_or_raises_invalid_input(
    prefix: bytes, tail: bytes, max_bytes: int
) -> None:
    payload = prefix + tail
    try:
        array = codec.decode(payload, max_bytes=max_bytes)
    except InvalidInput:
        return
    header = codec.read_header(payload, max_bytes)
    assert array.nbytes == len(payload) - header.offset
    assert array.shape == header.shape


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(WIRE_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=8, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype=dtype, shape=shape))


@settings(max_examples=200, deadline=None)
@given(array=_arrays())
def test_round_trip_property(array: np.ndarray) -> None:
    payload = codec.encode(array)
    decoded = codec.decode(payload)
    assert decoded.dtype == array.dtype.newbyteorder("<")
    assert decoded.shape == array.shape
    # compare bit patterns so NaN payloads and -0.0 count as equal only when identical
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()
    assert len(payload) == codec.read_header(payload, len(payload)).offset + array.nbytes
