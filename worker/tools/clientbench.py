"""``inferq bench --client``: what the producer side costs per call, with no worker in the way.

Each row is CPU time of this process (``time.process_time``, every thread included: the result
listener's and the push coalescer's work counts) per request, and wall time per request, against a
private Redis. Results are stored by this process itself (the metas a worker would write), so the
figures are the client's alone:

    delay            submit_job.delay(img), one after another
    get (stored)     AsyncResult.get() on a result already stored
    submit+gather    submit_many(imgs) then gather(results), per request
    aio delay+get    inferq.aio.submit then await the result, results stored as they are pushed

    python -m inferq.worker.tools.clientbench --count 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferq.shared import keys
from inferq.shared.redisconn import make_client
from inferq.shared.results import success_meta
from inferq.shared.settings import Settings, get_settings, set_settings
from inferq.shared.spec import InputSpec
from inferq.worker.tools.localredis import LocalRedis

MODEL = "clientbench"
SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class Cost:
    """CPU and wall time per request of one client path."""

    name: str
    count: int
    cpu_us: float
    wall_us: float


@contextmanager
def private_redis() -> Iterator[str]:
    """A private Redis with a published spec; the producer pointed at it while in use."""
    from inferq.producer.client import reset_runtime

    server = LocalRedis().start()
    previous = get_settings()
    set_settings(Settings(broker_url=server.url, metrics_port=0))
    reset_runtime()
    spec = InputSpec(model=MODEL, version=1, shape=SHAPE, queue_limit=10_000_000)
    make_client(server.url).set(keys.model_spec_key(MODEL), spec.to_json())
    try:
        yield server.url
    finally:
        reset_runtime()
        set_settings(previous)
        server.stop()


def measure(name: str, count: int, step: Callable[[], Any]) -> Cost:
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Cost(name, count, cpu / count * 1e6, wall / count * 1e6)


def _store(url: str, ids: list[str]) -> None:
    """Write (and publish) the SUCCESS metas a worker would, in one round trip."""
    client = make_client(url)
    result = {"model": MODEL, "version": 1, "outputs": [], "timing": {}}
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        meta = success_meta(task_id, result)  # type: ignore[arg-type]
        pipe.set(keys.result_key(task_id), meta, ex=600)
        pipe.publish(keys.result_key(task_id), meta)
    pipe.execute()
    client.close()


def _drop_queue(url: str) -> None:
    make_client(url).delete(*keys.queue_keys(keys.queue_name(MODEL)))


def client_costs(count: int) -> list[Cost]:
    from inferq.producer.client import submit_job

    img = np.zeros(SHAPE, dtype=np.uint8)
    rows: list[Cost] = []
    with private_redis() as url:
        submit_job.delay(img, model=MODEL)  # warm: spec cache, scripts, connections
        results: list[Any] = []
        rows.append(
            measure(
                "delay",
                count,
                lambda: results.extend(submit_job.delay(img, model=MODEL) for _ in range(count)),
            )
        )
        _store(url, [r.id for r in results])
        rows.append(measure("get (stored)", count, lambda: [r.get(timeout=10) for r in results]))
        _drop_queue(url)
        rows.append(_many(url, img, count))
        _drop_queue(url)
        rows.append(measure("aio submit + await", count, lambda: _aio(url, img, count)))
        _drop_queue(url)
    return rows


def _many(url: str, img: np.ndarray, count: int) -> Cost:
    """submit_many, then gather once every result is stored; the storing is not counted."""
    from inferq.producer.client import submit_many
    from inferq.producer.gather import gather

    results: list[Any] = []
    submit = measure("", count, lambda: results.extend(submit_many([img] * count, model=MODEL)))
    _store(url, [r.id for r in results])
    collect = measure("", count, lambda: gather(results, timeout=30))
    return Cost(
        "submit_many + gather",
        count,
        submit.cpu_us + collect.cpu_us,
        submit.wall_us + collect.wall_us,
    )


def _aio(url: str, img: np.ndarray, count: int) -> None:
    from inferq import aio

    async def main() -> None:
        pending = [await aio.submit(img, model=MODEL) for _ in range(count)]
        threading.Thread(target=_store, args=(url, [p.id for p in pending])).start()
        await aio.gather(pending, timeout=30)

    asyncio.run(main())


def render(rows: list[Cost]) -> str:
    lines = ["| client path | CPU per request | wall per request |", "| --- | --- | --- |"]
    lines += [f"| {r.name} | {r.cpu_us:.0f} µs | {r.wall_us:.0f} µs |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    args = parser.parse_args(argv)
    rows = client_costs(args.count)
    print(json.dumps([r.__dict__ for r in rows]) if args.json else render(rows))


if __name__ == "__main__":
    main()
