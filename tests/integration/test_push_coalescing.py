"""Concurrent .delay callers share round trips but keep their own outcomes: real Redis, no worker."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import redis

from inferq.producer.client import runtime, submit_job
from inferq.shared import keys
from inferq.shared.errors import BrokerUnavailable, InvalidInput, QueueFull
from inferq.shared.spec import InputSpec

SHAPE = (3, 4, 4)


@pytest.fixture
def producer(producer_with: Callable[[InputSpec], redis.Redis]) -> redis.Redis:
    return producer_with(InputSpec(model="m", version=1, shape=SHAPE, queue_limit=40))


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


# -- the asyncio client's submit thread: everything queued at once, one round trip, own outcomes


def _aio_race(submits: int, img_of: object) -> list[object]:
    """``submits`` concurrent ``inferq.aio.submit`` calls on one loop; each one's id or error."""
    from inferq import aio

    async def one(i: int) -> object:
        try:
            return (await aio.submit(img_of(i), model="m")).id  # type: ignore[operator]
        except Exception as exc:
            return exc

    async def main() -> list[object]:
        return list(await asyncio.gather(*(one(i) for i in range(submits))))

    return asyncio.run(main())


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands in each push round trip the producer makes."""
    from inferq.producer import pusher

    made: list[int] = []
    real = pusher.raw_pipeline

    def counted(client: redis.Redis, commands: list[tuple[object, ...]]) -> list[object]:
        made.append(len(commands))
        return real(client, commands)

    monkeypatch.setattr(pusher, "raw_pipeline", counted)
    return made


def test_aio_submits_share_round_trips_and_keep_their_own_errors(producer, trips) -> None:
    good = np.zeros(SHAPE, dtype=np.uint8)
    bad = np.zeros((3, 5, 4, 2), dtype=np.uint8)
    outcomes = _aio_race(60, lambda i: bad if i % 6 == 0 else good)
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == Counter(str=40, QueueFull=10, InvalidInput=10)  # 50 valid, limit 40
    assert all(isinstance(o, InvalidInput) for i, o in enumerate(outcomes) if i % 6 == 0)
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert all(e.submitted == 1 and e.accepted == () for e in refused)
    queued = _queued(producer)
    accepted = [o for o in outcomes if isinstance(o, str)]
    assert len(queued) == 40 and all(any(t.encode() in m for m in queued) for t in accepted)
    # 50 pushes (one script call each) in far fewer round trips than one per submit
    assert sum(trips) == 50 and len(trips) < 25, trips


def test_aio_submit_prepares_in_the_callers_context(producer, monkeypatch) -> None:
    """Trace context (OpenTelemetry's current span) lives in contextvars: the submit thread
    prepares each request in its caller's context."""
    from inferq.producer import aio

    seen: list[str] = []
    where = contextvars.ContextVar("where", default="the submit thread")
    real = aio.prepare_call

    def watching(*args: object) -> object:
        seen.append(where.get())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(aio, "prepare_call", watching)

    async def one(i: int) -> str:
        where.set(f"caller {i}")
        return (await aio.submit(np.zeros(SHAPE, dtype=np.uint8), model="m")).id

    async def main() -> list[str]:
        return list(await asyncio.gather(*(one(i) for i in range(5))))

    assert len(set(asyncio.run(main()))) == 5
    assert sorted(seen) == [f"caller {i}" for i in range(5)]


def test_aio_broker_unavailable_reaches_every_submit(producer, local_redis) -> None:
    runtime().specs.route("m", None)
    local_redis.stop()
    outcomes = _aio_race(4, lambda i: np.zeros(SHAPE, dtype=np.uint8))
    assert all(isinstance(o, BrokerUnavailable) for o in outcomes), outcomes
    assert all("1 request(s) not queued" in str(o) for o in outcomes)


def test_a_cancelled_submit_is_settled_quietly() -> None:
    from inferq.producer.aio import _settle

    async def main() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        cancelled, waiting = loop.create_future(), loop.create_future()
        cancelled.cancel()
        _settle([(cancelled, "ignored"), (waiting, 7)])  # no InvalidStateError
        return cancelled.cancelled(), await waiting

    assert asyncio.run(main()) == (True, 7)


def test_a_pusher_of_one_call_at_a_time_answers_each_submit(producer) -> None:
    """A sharded model's pusher (``ShardPusher``) pushes one call at a time
    (``push_one_by_one``): each submit still gets its own result or error."""
    from inferq.producer.client import prepare_call, pushed_each
    from inferq.producer.placed import Lane
    from inferq.producer.pusher import push_one_by_one

    class OneAtATime:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def push_each(self, calls: list[list[object]]) -> list[object]:
            return push_one_by_one(self.push, calls)  # type: ignore[arg-type]

        def push(self, prepared: list[object]) -> str:
            self.calls.append(len(prepared))
            if len(self.calls) == 2:
                raise QueueFull(queue="inferq.m", limit=1, waiting=1, submitted=1, accepted=[])
            return "epoch-1"

    img = np.zeros(SHAPE, dtype=np.uint8)
    made = [prepare_call((img,), {"model": "m"}, {}) for _ in range(3)]
    home = made[0][1]
    pusher = OneAtATime()
    lane = Lane(home.where, pusher, home.backend, home.broker, home.results)
    outcomes = pushed_each([p for p, _ in made], lane)
    assert pusher.calls == [1, 1, 1]
    assert isinstance(outcomes[1], QueueFull)
    assert [o.id for o in (outcomes[0], outcomes[2])] == [made[0][0].task_id, made[2][0].task_id]
    assert outcomes[0].inferq_epoch == "epoch-1"


def test_the_submit_thread_keeps_nothing_of_a_finished_round(producer) -> None:
    """Its loops, futures and results go once the round is settled (an idle thread held the
    last round's until the next submit)."""
    from inferq import aio

    async def main() -> weakref.ref[asyncio.AbstractEventLoop]:
        await asyncio.gather(
            *(aio.submit(np.zeros(SHAPE, dtype=np.uint8), model="m") for _ in range(5))
        )
        return weakref.ref(asyncio.get_running_loop())

    loop = asyncio.run(main())
    for _ in range(50):  # the thread drops the round right after waking the loop
        gc.collect()
        if loop() is None:
            break
        time.sleep(0.01)
    assert loop() is None
