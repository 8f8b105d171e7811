"""Fixtures for the in-process stage tests: one private Redis per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from inferq.shared.redisconn import make_client
from inferq.worker.tools.localredis import LocalRedis


@pytest.fixture
def local_redis() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(local_redis: LocalRedis) -> redis.Redis:
    return make_client(local_redis.url)
