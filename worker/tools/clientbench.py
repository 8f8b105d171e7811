"""``inferq bench --client``: what the producer side costs per call, with no worker in the way.

Each row is CPU time of this process (``time.process_time``, every thread included: the result
listener's and the push coalescer's work counts) per request, and wall time per request, against a
private Redis. Results are stored by this process itself (the metas a worker would write), so the
figures are the client's alone:

    delay            submit_job.delay(img), one after another
    get (stored)     AsyncResult.get() on a result already stored
    submit+gather    submit_many(imgs) then gather(results), per request
    aio submit+await inferq.aio.submit awaited one after another, then aio.gather of the results
                     once stored
    aio concurrent   the same submits all awaited at once (asyncio.gather), as a busy service's
                     handlers make them, then aio.gather

    paced            N threads each doing .delay(img).get(), requests due at a fixed rate, against
                     a real worker: client latency from each request's scheduled arrival beside
                     the results' own timing.total_ms

    python -m inferq.worker.tools.clientbench --count 3000
    inferq bench --client --model shapes --threads 32 --rate 300
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
        results.clear()  # each row starts from the same heap: none holds the one before's
        _drop_queue(url)
        gc.collect()
        rows.append(_many(url, img, count))
        _drop_queue(url)
        gc.collect()
        rows.append(_aio(url, img, count))
        _drop_queue(url)
        gc.collect()
        rows.append(_aio(url, img, count, at_once=True))
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


def _aio(url: str, img: np.ndarray, count: int, at_once: bool = False) -> Cost:
    """inferq.aio's submits, then its gather once every result is stored (the storing is not
    counted, as for submit_many + gather)."""
    from inferq import aio

    async def submits() -> list[Any]:
        if at_once:
            return list(await asyncio.gather(*(aio.submit(img, model=MODEL) for _ in range(count))))
        return [await aio.submit(img, model=MODEL) for _ in range(count)]

    pending: list[Any] = []
    submit = measure("", count, lambda: pending.extend(asyncio.run(submits())))
    _store(url, [p.id for p in pending])
    collect = measure("", count, lambda: asyncio.run(aio.gather(pending, timeout=30)))
    name = "aio concurrent + gather" if at_once else "aio submit + await"
    return Cost(name, count, submit.cpu_us + collect.cpu_us, submit.wall_us + collect.wall_us)


@dataclass(frozen=True)
class Paced:
    """``threads`` callers each doing ``.delay(img).get()``, requests due at ``rate`` per second."""

    threads: int
    rate: float
    count: int
    failed: int
    client_ms: dict[str, float]  # from each request's scheduled arrival to its result in hand
    server_ms: dict[str, float]  # the results' own timing.total_ms
    achieved_rate: float


def paced(model: str, threads: int, rate: float, seconds: float) -> Paced:
    """Open loop: request i is due at ``i / rate`` s; a free thread takes the next one when it is
    due (late, if all were busy: that wait counts, as in open-loop load tools)."""
    from inferq.producer.client import runtime, submit_job

    spec = runtime().specs.get(model)
    img = np.random.default_rng(0).integers(0, 256, size=spec.shape, dtype=np.uint8)
    for _ in range(20):  # warm: connections, the worker's first batches
        submit_job.delay(img, model=model).get(timeout=60)
    count = max(1, int(rate * seconds))
    client_ms: list[float] = []
    server_ms: list[float] = []
    failed = [0]
    lock = threading.Lock()
    taken = iter(range(count))
    start = time.perf_counter() + 0.05

    def caller() -> None:
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                return
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            try:
                value = submit_job.delay(img, model=model).get(timeout=60)
            except Exception:
                with lock:
                    failed[0] += 1
                continue
            took = (time.perf_counter() - due) * 1000
            with lock:
                client_ms.append(took)
                server_ms.append(float(value["timing"]["total_ms"]))

    pool = [threading.Thread(target=caller) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return Paced(
        threads,
        rate,
        count,
        failed[0],
        _percentiles(client_ms),
        _percentiles(server_ms),
        len(client_ms) / elapsed,
    )


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "max": max(values)}


def paced_against_worker(
    repo: Path, model: str, threads: int, rate: float, seconds: float, device: str = "cpu"
) -> Paced:
    """:func:`paced` against a real worker (events off, as ``inferq worker`` runs by default)."""
    from inferq.producer.client import reset_runtime
    from inferq.worker.repository import ModelRepository
    from inferq.worker.tools.procs import start_worker

    server = LocalRedis().start()
    previous = get_settings()
    set_settings(Settings(broker_url=server.url, model_repository=repo, metrics_port=0))
    reset_runtime()
    env = {
        "INFERQ_BROKER_URL": server.url,
        "INFERQ_MODEL_REPOSITORY": str(repo),
        "INFERQ_METRICS_PORT": "0",
        "INFERQ_LOG_LEVEL": "WARNING",
    }
    mv = ModelRepository(repo).resolve(model)
    client = make_client(server.url)
    client.set(keys.model_spec_key(model), mv.config.input_spec(mv.version).to_json())
    worker = start_worker([model], env, device=device, supervised=False, events=False)
    try:
        _wait_served(client, model, worker)
        return paced(model, threads, rate, seconds)
    finally:
        worker.terminate()
        reset_runtime()
        set_settings(previous)
        server.stop()


def _wait_served(client: Any, model: str, worker: Any) -> None:
    deadline = time.monotonic() + 300
    while client.zscore(keys.model_workers_key(model), worker.hostname) is None:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
        time.sleep(0.01)


def render_paced(p: Paced) -> str:
    def row(name: str, d: dict[str, float]) -> str:
        return (
            f"| {name} | "
            + " | ".join(f"{d.get(k, 0):.1f}" for k in ("p50", "p90", "p99", "max"))
            + " |"
        )

    return "\n".join(
        [
            f"{p.threads} threads, .delay(img).get(), due at {p.rate:g}/s: {p.count} requests, "
            f"{p.failed} failed, {p.achieved_rate:.0f}/s completed",
            "| ms | p50 | p90 | p99 | max |",
            "| --- | --- | --- | --- | --- |",
            row("client, from the scheduled arrival", p.client_ms),
            row("server, timing.total_ms", p.server_ms),
        ]
    )


def render(rows: list[Cost]) -> str:
    lines = ["| client path | CPU per request | wall per request |", "| --- | --- | --- |"]
    lines += [f"| {r.name} | {r.cpu_us:.0f} µs | {r.wall_us:.0f} µs |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--paced-model", help="also run the paced mode against this model")
    parser.add_argument("--repo", type=Path, help="model repository for --paced-model")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead")
    args = parser.parse_args(argv)
    rows = client_costs(args.count)
    print(json.dumps([r.__dict__ for r in rows]) if args.json else render(rows))
    if args.paced_model:
        repo = args.repo or get_settings().model_repository
        p = paced_against_worker(repo, args.paced_model, args.threads, args.rate, args.seconds)
        print(json.dumps(p.__dict__) if args.json else render_paced(p))


if __name__ == "__main__":
    main()
