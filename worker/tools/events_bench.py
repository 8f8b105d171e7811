"""Per-batch cost of sending a batch's task events: inferq's grouping (``worker/events.py``)
against Celery's own ``EventDispatcher`` with its ``task`` group buffered and flushed once.

    python -m inferq.worker.tools.events_bench [--batch 32] [--rounds 300]

Both publish to a private redis-server on loopback; the figure is wall time per batch, build
and publish included (the README's "Task events" table comes from this program).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from celery import Celery

from inferq.shared.celeryconf import make_celery
from inferq.shared.settings import Settings
from inferq.worker.events import EventsHook
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Outcome
from inferq.worker.tools.localredis import LocalRedis


def _outcomes(n: int) -> list[Outcome]:
    value = {"timing": {"collate_ms": 1.0, "infer_ms": 2.0, "post_ms": 1.0}}
    return [
        Outcome(
            InferenceRequest(
                f"id-{i}", f"tag-{i}", "m", np.zeros(1, np.uint8), 1.0, 0.0, 2.0, 3.0, None, None, 5
            ),
            value=value,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


def ours(app: Celery, outcomes: list[Outcome]) -> Callable[[], None]:
    hook = EventsHook(app, "bench@host")
    client = app.connection().default_channel.client

    def send() -> None:
        for message in hook.messages_for(hook.events_for(outcomes, ())):
            client.publish(hook._topic, message)

    return send


def celerys(app: Celery, outcomes: list[Outcome]) -> Callable[[], None]:
    dispatcher = app.events.Dispatcher(
        app.connection(), hostname="bench@host", buffer_group=["task"], buffer_limit=1 << 20
    )

    def send() -> None:
        for o in outcomes:
            r = o.request
            dispatcher.send(
                "task-received", uuid=r.task_id, name="inferq.infer", args="(<tensor>,)",
                kwargs="{'model': 'm'}", retries=0, eta=None, root_id=r.task_id, parent_id=None,
            )  # fmt: skip
            dispatcher.send("task-succeeded", uuid=r.task_id, result="{...}", runtime=0.004)
        dispatcher.flush()

    return send


def per_batch_ms(send: Callable[[], None], rounds: int) -> float:
    send()  # connect, warm caches
    started = time.perf_counter()
    for _ in range(rounds):
        send()
    return (time.perf_counter() - started) / rounds * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    redis = LocalRedis().start()
    try:
        app = make_celery(Settings(broker_url=redis.url))
        app.conf.worker_send_task_events = False  # EventsHook's own thread stays off
        outcomes = _outcomes(args.batch)
        for name, make in (("inferq (events.py)", ours), ("celery EventDispatcher", celerys)):
            ms = per_batch_ms(make(app, outcomes), args.rounds)
            print(
                f"{name:24s} batch {args.batch:4d}: {ms:7.3f} ms/batch  {ms / args.batch * 1e3:6.1f} us/request"
            )
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
