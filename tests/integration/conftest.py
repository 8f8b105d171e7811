"""Fixtures for the in-process stage tests: one private Redis per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from inferq.producer.client import reset_runtime
from inferq.shared import keys
from inferq.shared.redisconn import make_client
from inferq.shared.settings import Settings, set_settings
from inferq.shared.spec import InputSpec
from inferq.worker.tools.localcluster import LocalCluster, cluster_support
from inferq.worker.tools.localredis import LocalRedis


@pytest.fixture
def local_redis() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(local_redis: LocalRedis) -> redis.Redis:
    return make_client(local_redis.url)


@pytest.fixture
def producer_with(
    local_redis: LocalRedis, redis_client: redis.Redis
) -> Iterator[Callable[[InputSpec], redis.Redis]]:
    """``producer_with(spec)``: this process's producer pointed at the private Redis with
    ``spec`` published, and no worker; the client to inspect the Redis with."""

    def make(spec: InputSpec) -> redis.Redis:
        set_settings(Settings(broker_url=local_redis.url, metrics_port=0))
        reset_runtime()
        redis_client.set(keys.model_spec_key(spec.model), spec.to_json())
        return redis_client

    yield make
    reset_runtime()
    set_settings(None)


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[LocalCluster]:
    """A local 3-master Redis Cluster (AOF on), started once per session."""
    missing = cluster_support()
    if missing is not None:
        pytest.skip(f"a local Redis Cluster cannot start here: {missing}")
    cluster = LocalCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_session: LocalCluster) -> LocalCluster:
    """The session's cluster, all up and emptied for this test."""
    for node in redis_cluster_session.nodes:
        if node.process is None or node.process.poll() is not None:
            node.start()
    redis_cluster_session.wait_ok()
    redis_cluster_session.flush()
    return redis_cluster_session
