"""``inferq.aio.gather`` against a real Redis, results stored by the test as a worker would: what
is stored already is read at once, what comes later is handed to the loop as it arrives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import redis

from inferq import aio
from inferq.producer.aio import READ_FIRST
from inferq.producer.client import submit_job
from inferq.shared import keys
from inferq.shared.errors import InvalidInput
from inferq.shared.results import failure_meta, success_meta
from inferq.shared.spec import InputSpec

pytestmark = pytest.mark.integration

SHAPE = (3, 4, 4)


@pytest.fixture
def producer(producer_with: Callable[[InputSpec], redis.Redis]) -> redis.Redis:
    return producer_with(InputSpec(model="m", version=1, shape=SHAPE, queue_limit=10_000))


def _store(
    client: redis.Redis, task_ids: list[str], fail: frozenset[int] = frozenset(), first: int = 0
) -> None:
    """Store and publish each result as a worker does, ``outputs`` its position from ``first``;
    those at ``fail`` as InvalidInput."""
    pipe = client.pipeline(transaction=False)
    for i, task_id in enumerate(task_ids, start=first):
        if i in fail:
            meta = failure_meta(task_id, InvalidInput(f"request {i} was bad"))
        else:
            meta = success_meta(task_id, {"model": "m", "version": 1, "outputs": [i], "timing": {}})  # type: ignore[typeddict-item]
        pipe.set(keys.result_key(task_id), meta)
        pipe.publish(keys.result_key(task_id), meta)
    pipe.execute()


def _submitted(n: int) -> list[aio.InferqResult]:
    img = np.zeros(SHAPE, dtype=np.uint8)
    return [submit_job.delay(img, model="m") for _ in range(n)]


def test_stored_and_later_results_come_back_in_order(producer) -> None:
    results = _submitted(40)
    ids = [r.id for r in results]
    _store(producer, ids[:25])  # stored before gather: read with one MGET

    def later() -> None:  # the rest while gather waits, in three bursts
        for first, end in ((25, 30), (30, 31), (31, 40)):
            time.sleep(0.05)
            _store(producer, ids[first:end], first=first)

    async def main() -> list[object]:
        threading.Thread(target=later).start()
        return await aio.gather(results, timeout=30)

    values = asyncio.run(main())
    assert [v["outputs"] for v in values] == [[i] for i in range(40)]  # type: ignore[index]
    assert all(r.ready() and r.result["outputs"] == [i] for i, r in enumerate(results))


def test_failures_stay_typed_and_in_place(producer) -> None:
    results = _submitted(10)
    _store(producer, [r.id for r in results], fail=frozenset({3, 7}))

    values = asyncio.run(aio.gather(results, timeout=10, return_exceptions=True))
    assert [type(v).__name__ for v in values] == [
        "InvalidInput" if i in (3, 7) else "dict" for i in range(10)
    ]
    assert "request 3 was bad" in str(values[3])
    with pytest.raises(InvalidInput, match="request 3 was bad"):
        asyncio.run(aio.gather(results, timeout=10))


def test_timeout_names_what_is_pending_and_keeps_what_came(producer) -> None:
    results = _submitted(12)
    _store(producer, [r.id for r in results[:9]])
    with pytest.raises(TimeoutError, match="gather: 3 of 12 results still pending"):
        asyncio.run(aio.gather(results, timeout=0.5))
    assert [r.ready() for r in results] == [True] * 9 + [False] * 3
    # nothing is left waiting: a later gather of the rest is served as they come
    _store(producer, [r.id for r in results[9:]], first=9)
    values = asyncio.run(aio.gather(results[9:], timeout=10))
    assert [v["outputs"] for v in values] == [[9], [10], [11]]  # type: ignore[index]


def test_a_few_results_wait_on_the_listener_alone(producer) -> None:
    """Under READ_FIRST results, no MGET first: the listener finds the stored ones itself."""
    results = _submitted(READ_FIRST - 1)
    _store(producer, [r.id for r in results[:2]])

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: _store(producer, [r.id for r in results[2:]], first=2))
        return await aio.gather(results, timeout=10)

    values = asyncio.run(main())
    assert [v["outputs"] for v in values] == [[i] for i in range(READ_FIRST - 1)]  # type: ignore[index]
