"""Redis clients that survive a Redis restart: retries with backoff, health checks, TLS, auth."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

CONNECTION_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def make_client(url: str, *, retries: int = 6, socket_timeout: float | None = 30.0) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` with TLS, ``redis://:password@``).

    Commands that hit a dropped connection are retried with exponential backoff (about 3 s in all
    with the defaults) and the connection is re-established, so a Redis restart costs latency,
    not errors, when it is short.
    """
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_keepalive=True,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
    )


def as_text(value: bytes | str) -> str:
    """A reply from a client that does not decode responses, as text."""
    return value.decode() if isinstance(value, bytes) else value
