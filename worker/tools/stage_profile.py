"""Per-message Python cost of each worker stage, in-process: ``python -m inferq.worker.tools.stage_profile``.

What ``inferq bench`` cannot separate: how many microseconds of the worker's GIL-bound Python a
request costs in each stage, with the model call replaced by its precomputed output so that only
the code around it is timed. Real envelopes from the producer's own code path, in batches of the
bench size, through the same functions the worker runs; no Redis, no threads.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferq.producer.envelope import task_envelope
from inferq.shared import codec
from inferq.worker.celerystate import ActiveRequestsHook
from inferq.worker.handlers import load_handler
from inferq.worker.hooks import MetricsHook
from inferq.worker.intake import InferenceRequest, decode_message
from inferq.worker.metrics import Metrics
from inferq.worker.repository import ModelRepository
from inferq.worker.runner import Runner


def _per_message_us(fn: Callable[[], Any], batch: int, reps: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps / batch * 1e6


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


def measure(repo: Path, model: str, batch: int, reps: int = 200) -> dict[str, float]:
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
    return {name: _per_message_us(fn, batch, reps) for name, fn in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, us in measure(args.model_repository, args.model, args.batch_size).items():
        print(f"{name:55} {us:7.2f} us/message")


if __name__ == "__main__":
    main()
