"""Concurrent .delay callers share round trips but keep their own outcomes: real Redis, no worker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from inferq.producer.client import reset_runtime, runtime, submit_job
from inferq.shared import keys
from inferq.shared.errors import BrokerUnavailable, InvalidInput, QueueFull
from inferq.shared.settings import Settings, set_settings
from inferq.shared.spec import InputSpec
from inferq.worker.tools.localredis import LocalRedis

SHAPE = (3, 4, 4)


@pytest.fixture
def producer(local_redis: LocalRedis, redis_client: redis.Redis) -> Iterator[redis.Redis]:
    set_settings(Settings(broker_url=local_redis.url, metrics_port=0))
    reset_runtime()
    spec = InputSpec(model="m", version=1, shape=SHAPE, queue_limit=40)
    redis_client.set(keys.model_spec_key("m"), spec.to_json())
    yield redis_client
    reset_runtime()
    set_settings(None)


def _queued(client: redis.Redis) -> list[bytes]:
    return [m for k in keys.queue_keys(keys.queue_name("m")) for m in client.lrange(k, 0, -1)]


def _race(callers: int, call: object) -> list[object]:
    """Run ``call(i)`` in ``callers`` threads released together; each one's result or error."""
    outcomes: list[object] = [None] * callers
    start = threading.Barrier(callers)

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = call(i)  # type: ignore[operator]
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_queue_full_is_raised_in_the_callers_over_the_limit(producer) -> None:
    img = np.zeros(SHAPE, dtype=np.uint8)
    outcomes = _race(64, lambda i: submit_job.delay(img, model="m").id)
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == Counter(str=40, QueueFull=24)
    queued = _queued(producer)
    accepted = [o for o in outcomes if isinstance(o, str)]
    assert len(queued) == 40 and len(set(queued)) == 40  # each accepted message once
    assert all(any(task_id.encode() in m for m in queued) for task_id in accepted)
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert all(e.queue == "inferq.m" and e.limit == 40 and e.submitted == 1 for e in refused)


def test_bad_input_fails_only_its_own_caller(producer) -> None:
    good = np.zeros(SHAPE, dtype=np.uint8)
    bad = np.zeros((3, 5, 4, 2), dtype=np.uint8)
    outcomes = _race(16, lambda i: submit_job.delay(bad if i % 4 == 0 else good, model="m").id)
    assert Counter(type(o).__name__ for o in outcomes) == Counter(str=12, InvalidInput=4)
    assert all(isinstance(o, InvalidInput) for i, o in enumerate(outcomes) if i % 4 == 0)
    assert len(_queued(producer)) == 12


def test_broker_unavailable_reaches_every_caller_of_the_trip(producer, local_redis) -> None:
    img = np.zeros(SHAPE, dtype=np.uint8)
    runtime().specs.route("m", None)  # spec cached: the push is the first thing to need Redis
    local_redis.stop()
    outcomes = _race(4, lambda i: submit_job.delay(img, model="m").id)
    assert all(isinstance(o, BrokerUnavailable) for o in outcomes)
    assert all("1 request(s) not queued" in str(o) for o in outcomes)
