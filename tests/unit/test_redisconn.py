"""The fetch client's packer writes what redis-py's usual packer writes, large values uncopied."""

from __future__ import annotations

from typing import Any

import pytest
from redis.connection import Encoder, PythonRespSerializer

from inferq.shared.redisconn import _OWN_WRITE, _LargeValuePacker

LARGE = b"v" * (_OWN_WRITE + 1)


def _usual(*args: Any) -> bytes:
    return b"".join(
        PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack(*args)
    )


@pytest.mark.parametrize(
    "args",
    [
        ("HSET", "unacked", "tag-1", b"x" * 5000, "tag-2", LARGE),
        ("ZADD", "index", 1.5, "tag-1", 2, memoryview(LARGE)),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", "fetch", LARGE),
        ("HSET", "unacked", "tag-1", b"x" * 5000),
    ],
)
def test_the_bytes_written_are_the_usual_packers(args: tuple[Any, ...]) -> None:
    assert b"".join(_LargeValuePacker().pack(*args)) == _usual(*args)


def test_a_large_value_goes_out_as_it_is() -> None:
    chunks = _LargeValuePacker().pack("HSET", "unacked", "tag-1", LARGE, "tag-2", b"small")
    assert any(chunk is LARGE for chunk in chunks)
    assert len(chunks) == 3  # the pieces before it, the value itself, the pieces after it
