"""Load generators for ``inferq bench`` and ``inferq soak``, run as their own process. Torch-free.

    python -m producer.loadgen burst  --model shapes --count 5000
    python -m producer.loadgen steady --model shapes --rate 2000 --seconds 10

Inputs are random uint8 tensors already in the model's shape, so what is measured is inferq's
submit/serve/collect path, not image decoding. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import numpy as np

from producer.client import gather, runtime, submit_job, submit_many


def _inputs(model: str, count: int, seed: int = 0) -> list[np.ndarray]:
    spec = runtime().specs.get(model)
    rng = np.random.default_rng(seed)
    pool = [rng.integers(0, 256, size=spec.shape, dtype=np.uint8) for _ in range(min(count, 256))]
    return [pool[i % len(pool)] for i in range(count)]


def burst(model: str, count: int, timeout: float) -> dict[str, Any]:
    inputs = _inputs(model, count)
    started = time.perf_counter()
    results = submit_many(inputs, model=model)
    submitted = time.perf_counter()
    values = gather(results, timeout=timeout, return_exceptions=True)
    done = time.perf_counter()
    ok = [v for v in values if isinstance(v, dict)]
    return {
        "count": count,
        "succeeded": len(ok),
        "submit_s": submitted - started,
        "total_s": done - started,
        "throughput": len(ok) / (done - started),
        "mean_batch": float(np.mean([v["timing"]["batch_size"] for v in ok])) if ok else 0.0,
    }


def steady(model: str, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
    """Open-loop load: request i is sent at i / rate seconds, whatever came back before."""
    count = max(1, int(rate * seconds))
    inputs = _inputs(model, count)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    sent = np.zeros(count)
    arrived = np.zeros(count)
    collector = threading.Thread(
        target=_collect, args=(ids, arrived, seconds + timeout), daemon=True
    )
    collector.start()
    time.sleep(0.2)  # let the collector subscribe before the first result can arrive
    t0 = time.perf_counter()
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[i] = time.perf_counter()
        submit_job.apply_async((inputs[i],), {"model": model}, task_id=ids[i])
    collector.join()
    latency_ms = (arrived - sent)[arrived > 0] * 1e3
    return {
        "count": count,
        "rate": rate,
        "achieved_rate": count / (sent[-1] - t0) if count > 1 else 0.0,
        "completed": int((arrived > 0).sum()),
        "latency_ms": {f"p{q}": float(np.percentile(latency_ms, q)) for q in (50, 95, 99)}
        if len(latency_ms)
        else {},
        "latency_sorted_ms": np.sort(latency_ms).tolist(),
    }


def _collect(ids: list[str], arrived: np.ndarray, timeout: float) -> None:
    def on_result(i: int) -> None:
        arrived[i] = time.perf_counter()

    gather(ids, timeout=timeout, return_exceptions=True, on_result=on_result, poll_s=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m producer.loadgen")
    parser.add_argument("mode", choices=("burst", "steady"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.mode == "burst":
        report = burst(args.model, args.count, args.timeout)
    else:
        report = steady(args.model, args.rate, args.seconds, args.timeout)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
