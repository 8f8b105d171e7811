"""Faults injected into real processes; every request must end in exactly one final state.

Each test starts its own redis-server and real worker processes, injects the fault, then counts
outcomes with ``gather``: ``lost`` (no final state) must be 0.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pytest
from celery import Celery

from inferq.producer import gather, submit_job, submit_many
from inferq.shared import codec, keys
from inferq.shared.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    ModelUnavailable,
    QueueFull,
    WorkerCrashed,
)
from inferq.worker.events import events_in
from inferq.worker.tools.procs import WorkerProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def chw(value: int = 7, seed: int | None = None) -> np.ndarray:
    if seed is None:
        return np.full((3, 8, 8), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 200, size=(3, 8, 8), dtype=np.uint8)


def poisoned() -> np.ndarray:
    x = chw(seed=1)
    x[0, 0, 0] = 255
    return x


def outcome_counts(values: list[Any]) -> Counter[str]:
    return Counter("ok" if isinstance(v, dict) else type(v).__name__ for v in values)


def celery_child(w: WorkerProcess, not_pid: int | None = None) -> psutil.Process:
    """The live Celery worker process under an ``inferq worker`` supervisor (not ``not_pid``)."""

    def live_child() -> psutil.Process | None:
        for child in psutil.Process(w.process.pid).children():
            if child.pid != not_pid and child.status() != psutil.STATUS_ZOMBIE:
                return child
        return None

    return wait_until(live_child, 60, "a live worker child under the supervisor")


def unacked_count(client: Any) -> int:
    return int(client.hlen(keys.UNACKED))


def wait_for_held_messages(client: Any) -> None:
    """Until a worker holds messages it has not acknowledged: the load is in its hands."""
    wait_until(lambda: unacked_count(client) > 0, 60, "a worker holding unacked messages")


def results_stored(client: Any, results: Sequence[Any]) -> int:
    return int(client.exists(*(keys.result_key(r.id) for r in results)))


def done_at(client: Any, task_id: str) -> float:
    """When the worker stored this task's result (its ``date_done``), as a Unix time."""
    meta = orjson.loads(client.get(keys.result_key(task_id)))
    return datetime.fromisoformat(meta["date_done"]).timestamp()


@dataclass(frozen=True)
class Held:
    """A message a worker had taken and not acknowledged, and when it was recorded as taken."""

    task_id: str
    recorded_at: float


def held_messages(client: Any) -> list[Held]:
    """The unacked messages now: the bookkeeping a sweeper reads to redeliver them."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.UNACKED)
    pipe.zrange(keys.UNACKED_INDEX, 0, -1, withscores=True)
    entries, index = pipe.execute()
    recorded = dict(index)
    return [
        Held(orjson.loads(entry)[0]["headers"]["id"], float(recorded[tag]))
        for tag, entry in entries.items()
    ]


# After the expected events, how long to keep watching for extra ones (a second run, a run that
# must not happen). Not a wait for anything: the verdict is what arrives in this window.
QUIET_S = 0.5


class EventLog:
    """Counts task-succeeded events per task id (each computation sends exactly one)."""

    def __init__(self, client: Any) -> None:
        self.succeeded: Counter[str] = Counter()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("/0.celeryev/task.*")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.1)
            if msg and msg["type"] == "pmessage":
                for event in events_in(msg["data"]):
                    if event["type"] == "task-succeeded":
                        self.succeeded[event["uuid"]] += 1

    def settle(self, expected: Iterable[str], timeout: float = 30.0) -> None:
        """Until each expected task's success event has arrived, then watch a little longer,
        so that a second run of any task, or a run that must not happen, has time to show."""
        want = set(expected)
        wait_until(
            lambda: all(task_id in self.succeeded for task_id in want),
            timeout,
            f"task-succeeded events for {len(want)} tasks",
        )
        time.sleep(QUIET_S)  # part of the check: the window in which an extra event would show
        self._stop.set()
        self._thread.join()


# -- 1. a worker killed under load -------------------------------------------------------------


VISIBILITY_S = 4.0
SWEEP_S = 0.5
# Serving a message once it is back: it goes to the head of its queue (RPUSH on the end workers
# pop), behind only what the restarted worker already holds, INFERQ_PREFETCH_BATCHES batches at
# most. The worker's startup check refuses a visibility timeout below three times that held work
# (at warm-up speed), so it takes at most a third of VISIBILITY_S; three quarters allow a machine
# that slows down under load. Far short of a second timeout or a trip through the ~1400 queued.
SERVE_S = 0.75 * VISIBILITY_S


def test_sigkill_under_load_loses_nothing(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo, visibility_timeout_s=VISIBILITY_S, restore_interval_s=SWEEP_S)
    w = stack.worker("slow")
    results = submit_many([chw(seed=i) for i in range(1500)], model="slow")
    wait_for_held_messages(stack.client)  # mid-load: some held by the worker, most still queued
    child = celery_child(w)
    child.send_signal(signal.SIGKILL)
    killed_at = time.time()  # wall clock, to compare with the date_done the worker stores
    held = held_messages(stack.client)  # what the dead worker had in its hands
    assert held, "the kill must catch messages in the worker's hands"
    values = gather(results, timeout=120, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=1500)
    celery_child(w, not_pid=child.pid)  # the supervisor restarted it
    assert stack.client.hlen(keys.UNACKED) == 0
    # Each held message comes back (by this worker's sweeper or kombu's own: both read the same
    # bookkeeping) once its visibility timeout has passed, never before; and no later than the
    # first sweep after that, by a worker that is up, plus serving it. "Up" is when the restarted
    # worker stored its first result: a message that expired while it started is swept at start.
    held_ids = {h.task_id for h in held}
    later = [done_at(stack.client, r.id) for r in results if r.id not in held_ids]
    later = [t for t in later if t > killed_at]
    assert later, "the kill must leave queued work for the restarted worker"
    restarted_at = min(later)
    for h in held:
        expired_at = h.recorded_at + VISIBILITY_S
        served_at = done_at(stack.client, h.task_id)
        assert served_at >= expired_at, f"{h} was redelivered before its visibility timeout"
        latest = max(expired_at, restarted_at) + SWEEP_S + SERVE_S
        assert served_at <= latest, (
            f"{h} came back {served_at - killed_at:.1f} s after the kill; expected by "
            f"{latest - killed_at:.1f} s (restart took {restarted_at - killed_at:.1f} s)"
        )


def test_other_worker_serves_when_one_is_killed(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo, visibility_timeout_s=4.0, restore_interval_s=0.5)
    doomed = stack.worker("slow", supervised=False)
    stack.worker("slow", supervised=False)
    results = submit_many([chw(seed=i) for i in range(400)], model="slow")
    wait_for_held_messages(stack.client)
    doomed.process.send_signal(signal.SIGKILL)
    values = gather(results, timeout=90, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=400)


def test_a_fetch_cut_short_between_its_round_trips_is_served_after_the_timeout(
    stack_factory, test_repo: Path
) -> None:
    """A worker that died after taking messages into a hold, before recording them as unacked:
    another worker's sweeper puts them back and they are served, each once."""
    from inferq.worker.broker import Broker
    from inferq.worker.repository import ModelRepository

    stack = stack_factory(test_repo, visibility_timeout_s=4.0, restore_interval_s=0.5)
    mv = ModelRepository(test_repo).resolve("tiny")  # its spec, as a worker would publish it
    stack.client.set(keys.model_spec_key("tiny"), mv.config.input_spec(mv.version).to_json())
    results = submit_many([chw(seed=i) for i in range(40)], model="tiny")
    queue = keys.queue_name("tiny")
    dead = Broker(stack.client, stack.client, 60)
    counts, _ = dead._hold(keys.queue_keys(queue), f"{keys.HOLD_PREFIX}dead:0", queue, 25)
    assert sum(counts) == 25 and stack.client.zcard(keys.HOLDING) == 1
    taken_at = time.monotonic()
    stack.worker("tiny")
    values = gather(results, timeout=60, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=40)
    assert time.monotonic() - taken_at >= 4.0  # the held 25 waited for the visibility timeout
    assert stack.client.zcard(keys.HOLDING) == 0
    assert stack.client.keys(f"{keys.HOLD_PREFIX}*") == []
    assert stack.client.hlen(keys.UNACKED) == 0


def test_refuses_a_visibility_timeout_below_the_worst_batch_time(
    stack_factory, test_repo: Path
) -> None:
    stack = stack_factory(test_repo, visibility_timeout_s=0.01)
    w = stack.worker("slow", ready=False)
    code = w.process.wait(120)
    assert code != 0
    log = w.log_tail(200)
    assert "INFERQ_VISIBILITY_TIMEOUT_S" in log and "at least" in log


# -- 2. warm shutdown --------------------------------------------------------------------------


def test_sigterm_finishes_the_batch_in_hand_and_runs_nothing_twice(
    stack_factory, test_repo: Path
) -> None:
    stack = stack_factory(test_repo, visibility_timeout_s=30.0)
    events = EventLog(stack.client)
    w = stack.worker("slow")
    results = submit_many([chw(seed=i) for i in range(3000)], model="slow")
    wait_until(lambda: results_stored(stack.client, results), 60, "the first results")
    assert w.terminate(timeout=60) == 0
    assert stack.client.hlen(keys.UNACKED) == 0, "held messages must be handed back, not left"
    done_before = results_stored(stack.client, results)
    assert 0 < done_before < 3000
    stack.worker("slow")  # the rest is served by the next worker, without waiting for a timeout
    values = gather(results, timeout=90, return_exceptions=True)
    events.settle(r.id for r in results)
    assert outcome_counts(values) == Counter(ok=3000)
    assert max(events.succeeded.values()) == 1, "a request was computed twice"
    assert len(events.succeeded) == 3000


# -- 3. Redis restarted under load ------------------------------------------------------------


def test_redis_restart_under_load(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo, visibility_timeout_s=10.0, restore_interval_s=0.5)
    stack.worker("slow")
    before = submit_many([chw(seed=i) for i in range(3000)], model="slow")
    wait_for_held_messages(stack.client)
    stack.redis.restart(down_s=1.0)  # SIGKILL; nothing is kept on disk
    values = gather(before, timeout=120, return_exceptions=True)
    counts = outcome_counts(values)
    assert set(counts) <= {"ok", "RequestLost"}, counts
    assert sum(counts.values()) == 3000  # each ended: none hangs
    assert counts["ok"] > 0, "requests the worker held complete after the restart"
    assert counts["RequestLost"] > 0, "queued requests went with the restart and say so"
    # the worker republishes its spec and keeps serving; producers reconnect on their own
    wait_until(
        lambda: stack.client.exists(keys.model_spec_key("slow")), 30, "the worker's spec again"
    )
    after = submit_many([chw(seed=i) for i in range(100)], model="slow")
    assert outcome_counts(gather(after, timeout=60, return_exceptions=True)) == Counter(ok=100)


def test_redis_restart_with_aof_loses_nothing(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo, visibility_timeout_s=5.0, restore_interval_s=0.5)
    stack.redis.appendfsync = "always"
    stack.redis.restart()
    stack.worker("slow")
    results = submit_many([chw(seed=i) for i in range(3000)], model="slow")
    wait_for_held_messages(stack.client)
    stack.redis.restart(down_s=1.0)
    values = gather(results, timeout=120, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=3000)


# -- 4. one bad item fails only itself ----------------------------------------------------------


def test_a_poisoned_input_fails_alone(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("faulty")
    images = [chw(seed=i) for i in range(40)]
    bad = {3, 17, 31}
    for i in bad:
        images[i] = poisoned()
    values = gather(submit_many(images, model="faulty"), timeout=60, return_exceptions=True)
    for i, v in enumerate(values):
        if i in bad:
            assert isinstance(v, ModelError) and "poisoned input" in str(v)
        else:
            assert isinstance(v, dict), (i, v)
    assert max(v["timing"]["batch_size"] for v in values if isinstance(v, dict)) > 1


# -- 5. out of memory and device failure ---------------------------------------------------------


def test_oom_splits_the_batch_and_lowers_the_cap(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    w = stack.worker("oomy")
    values = gather(
        submit_many([chw(seed=i) for i in range(64)], model="oomy"),
        timeout=60,
        return_exceptions=True,
    )
    assert outcome_counts(values) == Counter(ok=64)
    assert max(v["timing"]["batch_size"] for v in values) > 4  # batches were split, not refused
    app = Celery(broker=stack.redis.url)
    stats = app.control.inspect(destination=[w.hostname], timeout=5)._request("inferq_stats")
    assert stats[w.hostname]["oomy"]["effective_max_batch_size"] <= 4


def test_device_failure_fails_the_batch_and_restarts_the_worker(
    stack_factory, test_repo: Path
) -> None:
    stack = stack_factory(test_repo)
    w = stack.worker("crashy")
    first = celery_child(w).pid
    marked = chw(seed=3)
    marked[0, 0, 1] = 255
    crash = submit_job.delay(marked, model="crashy")
    with pytest.raises(WorkerCrashed):
        crash.get(timeout=60)
    celery_child(w, not_pid=first)  # restarted by the supervisor
    after = submit_many([chw(seed=i) for i in range(30)], model="crashy")
    assert outcome_counts(gather(after, timeout=90, return_exceptions=True)) == Counter(ok=30)


# -- 6. deadlines, backpressure, priority ----------------------------------------------------------


def test_expired_requests_fail_without_running(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    w = stack.worker("tiny")
    w.terminate()  # the spec stays published for a while: producers can still submit
    events = EventLog(stack.client)
    late = submit_job.apply_async((chw(),), {"model": "tiny"}, expires=0.2)
    on_time = submit_job.apply_async((chw(),), {"model": "tiny"}, expires=300)
    time.sleep(0.5)  # the scenario: let the 0.2 s expiry pass while no worker is running
    stack.worker("tiny")
    with pytest.raises(DeadlineExceeded, match="not computed"):
        late.get(timeout=30)
    assert on_time.get(timeout=30)["model"] == "tiny"
    events.settle([on_time.id])
    assert late.id not in events.succeeded and events.succeeded[on_time.id] == 1


def test_model_default_deadline(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("deadlined").terminate()
    r = submit_job.delay(chw(), model="deadlined")  # default_deadline_ms = 1
    time.sleep(0.2)  # the scenario: let the 1 ms default deadline pass before a worker takes it
    stack.worker("deadlined")
    with pytest.raises(DeadlineExceeded):
        r.get(timeout=30)


def test_queue_limit_refuses_at_once(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("limited").terminate()  # queue_limit = 20, no worker draining
    accepted = [submit_job.delay(chw(), model="limited") for _ in range(20)]
    started = time.monotonic()
    with pytest.raises(QueueFull, match="limit of 20"):
        submit_job.delay(chw(), model="limited")
    assert time.monotonic() - started < 5
    with pytest.raises(QueueFull):
        submit_many([chw()] * 5, model="limited")
    stack.worker("limited")
    assert outcome_counts(gather(accepted, timeout=60, return_exceptions=True)) == Counter(ok=20)


def test_higher_priority_overtakes_a_backlog(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("slow").terminate()
    backlog = submit_many([chw(seed=i) for i in range(300)], model="slow")
    urgent = [
        submit_job.apply_async((chw(seed=i),), {"model": "slow"}, priority=0) for i in range(5)
    ]
    stack.worker("slow")
    gather(backlog + urgent, timeout=120)

    def done_at(r: Any) -> str:
        return str(orjson.loads(stack.client.get(keys.result_key(r.id)))["date_done"])

    backlog_done = sorted(done_at(r) for r in backlog)
    assert max(done_at(r) for r in urgent) <= backlog_done[len(backlog_done) // 10]


# -- 7. the bad input catalogue ------------------------------------------------------------------


def _plain_client(url: str, serializer: str = "msgpack") -> Celery:
    app = Celery(broker=url, backend=url)
    app.conf.update(
        task_serializer=serializer,
        accept_content=["msgpack", "json", "pickle"],
        result_serializer="json",
    )
    return app


def _unexpected_outcome(result: Any, error: type[Exception], pattern: str) -> str | None:
    """None when ``result`` failed with ``error`` matching ``pattern``; otherwise what it did."""
    try:
        value = result.get(timeout=30)
    except error as exc:
        if re.search(pattern, str(exc)):
            return None
        return f"{type(exc).__name__} not matching {pattern!r}: {exc}"
    except Exception as exc:  # reported with the case's name instead of stopping at the first
        return f"{type(exc).__name__} instead of {error.__name__}: {exc}"
    return f"succeeded instead of {error.__name__}: {value!r}"


def test_bad_input_catalogue_each_gets_a_typed_error(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.extra_env["INFERQ_MAX_PAYLOAD_BYTES"] = "65536"
    stack.worker("tiny", "floaty")
    client = _plain_client(stack.redis.url)

    def send(
        args: list[Any], model: str = "tiny", task: str = keys.TASK_NAME, app: Celery = client
    ) -> Any:
        return app.send_task(task, args=args, kwargs={"model": model}, queue=keys.queue_name(model))

    good = codec.encode(chw())
    nan = np.zeros((3, 8, 8), dtype=np.float32)
    nan[1, 2, 3] = np.nan
    inf = np.zeros((3, 8, 8), dtype=np.float32)
    inf[0, 0, 0] = np.inf
    worker_side = {
        "truncated tensor": (send([good[:-5]]), InvalidInput, "payload carries"),
        "wrong dtype": (send([codec.encode(chw().astype(np.float32))]), InvalidInput, "float32"),
        "wrong shape": (
            send([codec.encode(np.zeros((3, 4, 4), np.uint8))]),
            InvalidInput,
            r"uint8\[3, 4, 4\]",
        ),
        "NaN": (send([codec.encode(nan)], model="floaty"), InvalidInput, "finite"),
        "Inf": (send([codec.encode(inf)], model="floaty"), InvalidInput, "finite"),
        "0-byte payload": (send([b""]), InvalidInput, "header"),
        "oversized payload": (send([b"\x00" * 100_000]), InvalidInput, "at most"),
        "another task's message": (send([good], task="other.task"), InvalidInput, "inferq.infer"),
        "pickle": (
            send([good], app=_plain_client(stack.redis.url, "pickle")),
            InvalidInput,
            "pickle",
        ),
    }
    wrong = {
        name: outcome
        for name, (result, error, pattern) in worker_side.items()
        if (outcome := _unexpected_outcome(result, error, pattern)) is not None
    }
    assert wrong == {}, "cases that did not end in their typed error"
    # refused on the producer side, before anything is queued
    with pytest.raises(InvalidInput, match="decodable"):
        submit_job.delay(b"\x89PNG\r\n\x1a\n corrupt", model="tiny")
    with pytest.raises(InvalidInput, match="decompression bomb"):
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("1", (20_000, 20_000)).save(buf, format="PNG")
        submit_job.delay(buf.getvalue(), model="tiny")
    with pytest.raises(ModelUnavailable):
        submit_job.delay(chw(), model="unknown-model")
    stack.client.lpush(keys.priority_queue_key(keys.queue_name("tiny"), 5), b"not json at all")
    # ...and the worker still serves
    assert submit_job.delay(chw(), model="tiny").get(timeout=30)["model"] == "tiny"
    # the garbage was in the unversioned queue, served by another fetch thread than the request
    wait_until(lambda: stack.client.llen("inferq.deadletter"), 10, "the dead letter")
    assert stack.client.llen("inferq.deadletter") == 1


# -- found in review: scheduled messages, retries, Redis refusing writes, separate backends ----------


def test_countdown_beyond_the_visibility_timeout_runs_once(stack_factory, test_repo: Path) -> None:
    """A message waiting for its eta is parked in Redis, not held past the visibility timeout."""
    stack = stack_factory(test_repo, visibility_timeout_s=2.0, restore_interval_s=0.5)
    events = EventLog(stack.client)
    stack.worker("tiny")
    started = time.time()
    late = submit_job.apply_async((chw(),), {"model": "tiny"}, countdown=4.0)
    assert submit_job.delay(chw(1), model="tiny").get(timeout=30)["model"] == "tiny"
    assert late.get(timeout=30)["model"] == "tiny"
    assert time.time() - started >= 4.0
    events.settle([late.id])
    assert events.succeeded[late.id] == 1


def test_a_push_sent_again_after_a_lost_reply_pushes_once(stack_factory, test_repo: Path) -> None:
    from inferq.producer.pusher import PUSH

    stack = stack_factory(test_repo)
    queue = keys.queue_name("tiny")
    call = [*keys.queue_keys(queue), keys.EPOCH, keys.push_reply_key("call-1")]
    first = PUSH(stack.client, call, [100, 6, "epoch-a", b"m1", b"m2"])
    again = PUSH(stack.client, call, [100, 6, "epoch-a", b"m1", b"m2"])
    assert first == again
    assert stack.client.llen(keys.priority_queue_key(queue, 5)) == 2


def test_results_wait_while_redis_refuses_writes(stack_factory, test_repo: Path) -> None:
    """Out of memory (noeviction): the writer keeps the results and stores them once it can."""
    stack = stack_factory(test_repo)
    w = stack.worker("slow")
    results = submit_many([chw(seed=i) for i in range(6000)], model="slow")  # seconds of work
    results[0].get(timeout=30)  # the worker is busy: batches are held, run, and being stored
    # Far below what Redis holds, so that the acks of whatever gets through cannot bring it back
    # under the limit (with the limit at the memory in use, they could, and no write was refused).
    stack.client.config_set("maxmemory-policy", "noeviction")
    stack.client.config_set("maxmemory", 1)
    wait_until(  # keep refusing until the writer has met the refusal and said so
        lambda: "refused or unreachable while storing results" in w.log_tail(2000),
        60,
        "the worker to log that Redis refused its results",
    )
    stack.client.config_set("maxmemory", 0)
    values = gather(results, timeout=60, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=6000)
    assert submit_job.delay(chw(), model="slow").get(timeout=30)["model"] == "slow"


def test_gather_reads_a_separate_result_backend(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    backend = stack.redis.url.replace("/0", "/1")
    from inferq.producer.client import reset_runtime
    from inferq.shared.settings import set_settings

    stack.settings = stack.settings.replace(result_backend=backend)
    set_settings(stack.settings)
    reset_runtime()
    stack.worker("tiny")
    results = submit_many([chw(seed=i) for i in range(50)], model="tiny")
    assert outcome_counts(gather(results, timeout=60, return_exceptions=True)) == Counter(ok=50)
    assert results[0].get(timeout=10)["model"] == "tiny"
