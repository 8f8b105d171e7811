"""The process-wide result listener behind AsyncResult: real Redis, results written as a worker does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import ResultSet

from inferq.producer.client import reset_runtime, submit_job
from inferq.producer.listener import listener_for
from inferq.shared import keys
from inferq.shared.errors import DeadlineExceeded
from inferq.shared.results import InferenceResult, failure_meta, success_meta
from inferq.shared.settings import Settings, set_settings
from inferq.worker.tools.localredis import LocalRedis
from tests.waiting import wait_until


def _value(n: int) -> InferenceResult:
    return {"model": "m", "version": 1, "outputs": [n], "timing": {}}  # type: ignore[typeddict-item]


@pytest.fixture
def producer(local_redis: LocalRedis) -> Iterator[str]:
    set_settings(Settings(broker_url=local_redis.url, metrics_port=0))
    reset_runtime()
    yield local_redis.url
    reset_runtime()
    set_settings(None)


def _store(client: redis.Redis, task_id: str, meta: bytes) -> None:
    """What a worker's writer does: SET the meta, then PUBLISH it on the same name."""
    client.set(keys.result_key(task_id), meta, ex=60)
    client.publish(keys.result_key(task_id), meta)


def test_a_result_stored_before_the_wait_is_read_at_once(producer, redis_client) -> None:
    _store(redis_client, "early", success_meta("early", _value(1)))
    result = submit_job.AsyncResult("early")
    assert result.ready() and result.state == "SUCCESS"
    assert result.get(timeout=1)["outputs"] == [1]


def test_a_result_published_before_the_subscription_is_not_missed(producer, redis_client) -> None:
    """The publication comes before the listener subscribes (nobody is listening): the read that
    follows each confirmed subscription finds the stored result at once."""
    listener = listener_for(producer)
    got: list[dict] = []
    with listener._lock:  # the listener cannot subscribe anything until the result is out
        _store(redis_client, "gap", success_meta("gap", _value(2)))
        waiter = threading.Thread(target=lambda: got.append(listener.wait("gap", timeout=10)))
        waiter.start()
    waiter.join(10)
    assert got and got[0]["result"]["outputs"] == [2]


def test_many_threads_wait_on_one_listener(producer, redis_client) -> None:
    ids = [f"t{i}" for i in range(200)]
    for task_id in ids[:50]:  # some stored before anyone waits
        _store(redis_client, task_id, success_meta(task_id, _value(int(task_id[1:]))))

    def wait(task_id: str) -> object:
        return submit_job.AsyncResult(task_id).get(timeout=20)["outputs"]

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(wait, task_id) for task_id in ids]
        for task_id in ids[50:]:
            _store(redis_client, task_id, success_meta(task_id, _value(int(task_id[1:]))))
        assert [f.result() for f in futures] == [[i] for i in range(200)]
    listener = listener_for(producer)
    assert wait_until(lambda: not listener._waiters, 5, "every waiter released")


def test_a_failure_is_raised_as_its_typed_error(producer, redis_client) -> None:
    waiting = submit_job.AsyncResult("late-fail")
    threading.Timer(
        0.2,
        _store,
        (redis_client, "late-fail", failure_meta("late-fail", DeadlineExceeded("too late"))),
    ).start()
    with pytest.raises(DeadlineExceeded, match="too late"):
        waiting.get(timeout=10)
    assert waiting.state == "FAILURE" and waiting.ready()


def test_timeout_raises_celerys_error_and_lets_go(producer) -> None:
    with pytest.raises(CeleryTimeoutError):
        submit_job.AsyncResult("never").get(timeout=0.2)
    listener = listener_for(producer)
    assert wait_until(lambda: not listener._waiters, 5, "the waiter released")
    assert submit_job.AsyncResult("never").state == "PENDING"


def test_result_set_joins_natively(producer, redis_client) -> None:
    ids = [f"s{i}" for i in range(20)]
    _store(redis_client, ids[0], success_meta(ids[0], _value(0)))
    results = ResultSet([submit_job.AsyncResult(i) for i in ids])
    assert not results.ready()
    for n, task_id in enumerate(ids[1:], start=1):
        threading.Timer(
            0.01 * n, _store, (redis_client, task_id, success_meta(task_id, _value(n)))
        ).start()
    assert [v["outputs"] for v in results.get(timeout=10)] == [[i] for i in range(20)]
    assert results.ready() and results.completed_count() == 20


def test_callbacks_run_once_and_cancel(producer, redis_client) -> None:
    listener = listener_for(producer)
    seen: list[str] = []
    cancel = listener.notify("cb-gone", lambda meta: seen.append("gone"))
    listener.notify("cb", lambda meta: seen.append(meta["status"]))
    cancel()
    _store(redis_client, "cb", success_meta("cb", _value(3)))
    _store(redis_client, "cb-gone", success_meta("cb-gone", _value(4)))
    wait_until(lambda: seen, 5, "the callback")
    listener.notify("cb", lambda meta: seen.append("again"))  # already stored: at once
    assert wait_until(lambda: len(seen) == 2, 5, "the second callback")
    assert seen == ["SUCCESS", "again"]


def test_a_result_has_what_celerys_own_has_and_its_promise_on_first_use(producer) -> None:
    """InferqResult skips the promise Celery's AsyncResult makes for every result: the rest of
    what Celery's __init__ sets is there, and ``on_ready`` appears when asked for."""
    from celery.result import AsyncResult

    ours = submit_job.AsyncResult("attrs")
    theirs = AsyncResult("attrs", app=ours.app)
    assert "on_ready" not in vars(ours)
    assert set(vars(theirs)) - set(vars(ours)) == {"on_ready"}
    assert ours.on_ready is ours.on_ready and not ours.on_ready.ready
    with pytest.raises(AttributeError, match="no_such_thing"):
        ours.no_such_thing  # noqa: B018


def test_a_callback_chained_with_then_runs_when_the_result_is_read(producer, redis_client) -> None:
    got: list[object] = []
    result = submit_job.AsyncResult("chained")
    result.then(lambda r: got.append(r.id))
    _store(redis_client, "chained", success_meta("chained", _value(3)))
    assert result.get(timeout=5)["outputs"] == [3]
    assert got == ["chained"]


def test_then_on_a_result_already_read_runs_at_once(producer, redis_client) -> None:
    """As with Celery's own promise, fulfilled when the result came in: a late ``then`` runs."""
    _store(redis_client, "late-then", success_meta("late-then", _value(5)))
    result = submit_job.AsyncResult("late-then")
    assert result.get(timeout=5)["outputs"] == [5]
    got: list[object] = []
    result.then(lambda r: got.append(r.id))
    assert got == ["late-then"]


def test_a_result_read_and_dropped_leaves_no_reference_cycle(producer, redis_client) -> None:
    """Freed by reference counting: cycles per result would pile up for the collector's full
    passes, a pause of tens of ms in every process holding thousands of results."""
    import gc
    import weakref

    _store(redis_client, "no-cycle", success_meta("no-cycle", _value(6)))
    result = submit_job.AsyncResult("no-cycle")
    assert result.get(timeout=5)["outputs"] == [6]
    gone = weakref.ref(result)
    gc.disable()
    try:
        del result
        assert gone() is None
    finally:
        gc.enable()
