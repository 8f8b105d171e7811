"""Per-message Python cost of each worker stage, in-process: ``python -m inferq.worker.tools.stage_profile``.

What ``inferq bench`` cannot separate: how many microseconds of the worker's GIL-bound Python a
request costs in each stage, with the model call replaced by its precomputed output so that only
the code around it is timed. Real envelopes from the producer's own code path, in batches of the
bench size, through the same functions the worker runs; no threads. Times are CPU time of the
process (``time.process_time``), which a busy shared machine disturbs less than wall time.

``--redis`` adds the broker's round trips against a private ``redis-server``: the fetch (hold
script and read), the record of the unacked entries, and the store-and-ack of the results,
with Redis's own CPU per message for all three.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferq.producer.envelope import task_envelope
from inferq.shared import codec
from inferq.shared.settings import get_settings
from inferq.worker.celerystate import ActiveRequestsHook
from inferq.worker.handlers import load_handler
from inferq.worker.hooks import MetricsHook
from inferq.worker.intake import InferenceRequest, decode_message
from inferq.worker.metrics import Metrics
from inferq.worker.repository import ModelRepository
from inferq.worker.runner import Runner
from inferq.worker.tuning import tune_allocator


def _per_message_us(fn: Callable[[], Any], batch: int, reps: int) -> float:
    fn()
    started = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - started) / reps / batch * 1e6


def _decode_fetch(raws: list[bytes], spec: Any, limit: int) -> list[Any]:
    """As the fetcher decodes one fetch: the clocks read once for all of it."""
    wall, now = time.time(), time.monotonic()
    return [
        decode_message(str(i), r, spec, max_bytes=limit, now=now, wall=wall)
        for i, r in enumerate(raws)
    ]


def _active_round(
    hook: ActiveRequestsHook, model: str, batch: list[InferenceRequest], outcomes: Any
) -> None:
    hook.before_batch(model, 1, batch)
    hook.after_batch(model, 1, batch, outcomes, 0.0)


def measure(
    repo: Path, model: str, batch: int, reps: int = 200
) -> tuple[dict[str, float], list[bytes], Any]:
    """CPU per message of each in-process stage, and the envelopes and write job it used."""
    from celery import Celery

    from inferq.worker.events import EventsHook
    from inferq.worker.inhand import InHand
    from inferq.worker.writer import WriteJob

    mv = ModelRepository(repo).resolve(model)
    spec = mv.config.input_spec(mv.version)
    device = torch.device("cpu")
    runner = Runner(load_handler(mv, device), mv.config, mv.version, device, "stages")
    rng = np.random.default_rng(0)
    kwargs = {"model": model, "submitted_at": time.time(), "preprocess_ms": 0.1}
    raws = [
        task_envelope(
            str(uuid.uuid4()),
            codec.encode(rng.integers(0, 256, spec.shape, dtype=np.uint8)),
            kwargs,
            spec,
            5,
            None,
            {},
        )
        for _ in range(batch)
    ]
    limit = 1 << 26
    requests = [decode_message(str(i), r, spec, max_bytes=limit) for i, r in enumerate(raws)]
    assert all(isinstance(r, InferenceRequest) for r in requests)
    live: list[InferenceRequest] = requests  # type: ignore[assignment]
    output = runner.handler.predict(torch.zeros((batch, *spec.shape)))
    runner.handler.predict = lambda *batch: output  # type: ignore[method-assign]
    runner._fused = None  # the model stubbed out: what is left is the Python around it
    outcomes = runner.execute(runner.prepare(live))
    app = Celery(broker="memory://")
    app.conf.worker_send_task_events = False  # built here, never sent
    events = EventsHook(app, "stages")
    metrics = MetricsHook(Metrics())
    active = ActiveRequestsHook("stages")
    job = WriteJob(model, 1, InHand(len(outcomes)), outcomes, ())
    stages: dict[str, Callable[[], Any]] = {
        "decode (envelope, base64, msgpack, checks)": lambda: _decode_fetch(raws, spec, limit),
        "prepare (deadlines, staging copy)": lambda: runner.prepare(live),
        "execute, model stubbed (normalise, top-k, outcomes)": lambda: runner.execute(
            runner.prepare(live)
        ),
        "result metas": job.writes,
        "metrics hook": lambda: metrics.after_store(model, 1, outcomes, (), 0.01),
        "inspect-active bookkeeping": lambda: _active_round(active, model, live, outcomes),
        "task events (built, enveloped)": lambda: events.messages_for(
            events.events_for(outcomes, ())
        ),
    }
    timed = {name: _per_message_us(fn, batch, reps) for name, fn in stages.items()}
    return timed, raws, job


_FETCH, _RECORD, _STORE = "fetch (hold script, read, sniff)", "record (unacked)", "store and ack"


def measure_redis(raws: list[bytes], model: str, job: Any, reps: int = 200) -> dict[str, float]:
    """CPU per message of the broker's round trips on this side (take, record, store-and-ack),
    and Redis's own for all three, against a private Redis: each round pushes the batch (not
    counted), then fetches, records, and stores the job's results acking what it fetched."""
    from inferq.shared import keys
    from inferq.shared.redisconn import make_client
    from inferq.worker.broker import Broker, Write
    from inferq.worker.tools.localredis import LocalRedis

    redis = LocalRedis().start()
    try:
        client = make_client(redis.url)
        broker = Broker(client, client, 60, make_client(redis.url, retries=0, large_values=True))
        queue = keys.queue_name(model)
        target = keys.priority_queue_key(queue, keys.DEFAULT_PRIORITY)
        metas = [w.meta for w in job.writes()]
        spent = dict.fromkeys((_FETCH, _RECORD, _STORE), 0.0)
        redis_s = 0.0
        for _ in range(reps):
            client.lpush(target, *raws)
            before = _redis_cpu(client)
            taken = _timed(spent, _FETCH, partial(broker.take, queue, len(raws)))
            _timed(spent, _RECORD, partial(broker.record, taken))
            writes = [Write(f.tag, f.tag, m) for f, m in zip(taken.fetched, metas, strict=True)]
            _timed(spent, _STORE, partial(broker.store_and_ack, writes))
            redis_s += _redis_cpu(client) - before
        n = reps * len(raws)
        us = {k: v / n * 1e6 for k, v in spent.items()}
        return {**us, "redis (its own CPU for the three)": redis_s / n * 1e6}
    finally:
        redis.stop()


def _timed(spent: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    started = time.process_time()
    out = fn()
    spent[name] += time.process_time() - started
    return out


def _redis_cpu(client: Any) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--redis", action="store_true", help="the broker's round trips too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_allocator(get_settings().malloc_mmap_threshold_mb)  # as the worker runs
    timed, raws, job = measure(args.model_repository, args.model, args.batch_size)
    if args.redis:
        timed.update(measure_redis(raws, args.model, job))
    for name, us in timed.items():
        print(f"{name:55} {us:7.2f} us/message")


if __name__ == "__main__":
    main()
