"""Redis clients that survive a Redis restart: retries with backoff, health checks, TLS, auth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import (
    HIREDIS_AVAILABLE,
    Encoder,
    HiredisRespSerializer,
    PythonRespSerializer,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

CONNECTION_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def make_client(
    url: str,
    *,
    retries: int = 6,
    socket_timeout: float | None = 30.0,
    large_values: bool = False,
) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` with TLS, ``redis://:password@``).

    Commands that hit a dropped connection are retried with exponential backoff (about 3 s in all
    with the defaults) and the connection is re-established, so a Redis restart costs latency,
    not errors, when it is short.

    ``large_values``: for a client whose commands carry whole messages (the fetcher's record of
    kombu's unacked entries): values of 64 KB and more are written without hiredis's copy.
    """
    extra: dict[str, Any] = {"command_packer": _LargeValuePacker()} if large_values else {}
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_keepalive=True,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
        **extra,
    )


_OWN_WRITE = 64 * 1024  # values at least this large go to the socket without a copy


class _LargeValuePacker:
    """RESP for commands that may carry whole messages: a command with a value of at least
    ``_OWN_WRITE`` bytes is written with those values as they are, between joined pieces of the
    rest; any other command is packed by redis-py's usual packer (hiredis's where installed,
    the faster one for values of a few KB). hiredis copies a 200 KB value at under 1 GB/s."""

    def __init__(self) -> None:
        # redis-py's encoding of values, for a client that does not decode responses.
        self._encode = Encoder("utf-8", "strict", False).encode
        self._usual: Any = (
            HiredisRespSerializer()
            if HIREDIS_AVAILABLE
            else PythonRespSerializer(6000, self._encode)
        )

    def pack(self, *args: Any) -> list[bytes]:
        if not any(isinstance(a, (bytes, memoryview)) and len(a) >= _OWN_WRITE for a in args):
            return list(self._usual.pack(*args))
        # A command name may hold literal arguments ("CONFIG GET"): Redis wants them apart.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        out: list[bytes] = []
        parts = [b"*%d\r\n" % len(args)]
        for value in map(self._encode, args):
            parts.append(b"$%d\r\n" % len(value))
            if len(value) >= _OWN_WRITE:
                out += (b"".join(parts), value)
                parts = [b"\r\n"]
            else:
                parts += (value, b"\r\n")
        out.append(b"".join(parts))
        return out


def raw_pipeline(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``commands`` written, and their replies read, on one pooled connection of ``client``
    without redis-py's per-command machinery (response callbacks, retry wrappers, the pipeline's
    bookkeeping), which costs more than the round trip itself on the hot paths. An error reply
    comes back as its exception, in its place; a connection error raises (the connection is
    dropped). Replies are as Redis sent them (bytes, ints, lists). A cluster client routes each
    command itself: its pipeline is used."""
    if not isinstance(client, redis.Redis):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        return [_read(conn) for _ in commands]
    except CONNECTION_ERRORS:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def raw_transaction(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``commands`` in one MULTI/EXEC through :func:`raw_pipeline`; their replies, or the first
    error (a command Redis refused to queue, such as a write over ``maxmemory``, or one that
    failed inside the transaction) raised."""
    if not isinstance(client, redis.Redis):
        pipe = client.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())
    replies = raw_pipeline(client, [("MULTI",), *commands, ("EXEC",)])
    done = replies[-1]
    for reply in [*replies[:-1], *(done if isinstance(done, list) else [done])]:
        if isinstance(reply, Exception):
            raise reply
    return list(done)


def _read(conn: Any) -> Any:
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


def as_text(value: bytes | str) -> str:
    """A reply from a client that does not decode responses, as text."""
    return value.decode() if isinstance(value, bytes) else value
