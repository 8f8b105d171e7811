"""Load generators for ``inferq bench`` and ``inferq soak``, run as their own process. Torch-free.

    python -m inferq.producer.tools.loadgen burst  --model shapes --count 5000
    python -m inferq.producer.tools.loadgen steady --model shapes --rate 2000 --seconds 10

Inputs are random uint8 tensors already in the model's shape, so what is measured is inferq's
submit/serve/collect path, not image decoding. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np

from inferq.producer.client import runtime, submit_many
from inferq.producer.gather import gather
from inferq.shared import keys
from inferq.shared.inputs import sample_request


def _inputs(model: str, count: int, seed: int = 0) -> list[Any]:
    spec = runtime().specs.get(model)
    rng = np.random.default_rng(seed)
    pool: list[Any] = [
        sample_request(spec.inputs, rng)
        if spec.inputs
        else rng.integers(0, 256, size=spec.shape, dtype=np.uint8)
        for _ in range(min(count, 256))
    ]
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
    """Open-loop load: request i is due at i / rate seconds, whatever came back before.

    A sender thread submits what is due (several at once, in one round trip, when it fell
    behind); this thread polls the results of what is in flight with MGET every millisecond, so
    the measurement itself stays light next to the load it measures.
    """
    count = max(1, int(rate * seconds))
    inputs = _inputs(model, count)
    sent: list[tuple[str, float]] = []  # (task id, when submit_many returned), appended only
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.1
    sender = threading.Thread(target=_send, args=(model, inputs, rate, t0, sent, lock), daemon=True)
    sender.start()
    polled = _poll(sent, lock, count, timeout + seconds)
    sender.join()
    last = max(stamp for _, stamp in sent) if sent else t0
    latency = [waited for waited, _ in polled]
    lat = np.sort(np.array(latency)) * 1e3
    return {
        "count": count,
        "rate": rate,
        "achieved_rate": count / max(1e-9, last - t0),
        "completed": len(latency),
        "latency_ms": {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)}
        if len(lat)
        else {},
        "latency_sorted_ms": lat.tolist(),
        "slowest_1pct_timing_ms": _slowest_timing(polled, 0.01),
    }


TIMING_PARTS = ("queue_ms", "batch_wait_ms", "collate_ms", "infer_ms", "post_ms", "batch_size")


def _slowest_timing(polled: list[tuple[float, bytes | str]], share: float) -> dict[str, float]:
    """The mean of each part of the results' own ``timing`` over the slowest ``share`` of
    requests (by latency as measured here): where the tail spent its time."""
    slowest = sorted(polled, key=lambda p: p[0], reverse=True)[: max(1, int(len(polled) * share))]
    timings = []
    for _, raw in slowest:
        result = json.loads(raw).get("result")
        if isinstance(result, dict) and isinstance(result.get("timing"), dict):
            timings.append(result["timing"])
    return {p: float(np.mean([t[p] for t in timings])) for p in TIMING_PARTS} if timings else {}


def _send(
    model: str,
    inputs: list[np.ndarray],
    rate: float,
    t0: float,
    sent: list[tuple[str, float]],
    lock: threading.Lock,
) -> None:
    i = 0
    while i < len(inputs):
        now = time.perf_counter()
        due = min(len(inputs), int((now - t0) * rate) + 1)
        if due <= i:
            time.sleep(max(0.0, t0 + i / rate - now))
            continue
        results = submit_many(inputs[i:due], model=model)
        stamp = time.perf_counter()
        with lock:
            sent.extend((r.id, stamp) for r in results)
        i = due


def _poll(
    sent: list[tuple[str, float]], lock: threading.Lock, count: int, timeout: float
) -> list[tuple[float, bytes | str]]:
    """(seconds from send to seen stored, the stored result) for every request seen. Only
    what is in flight is read each round, so the poll's own CPU follows the load, not the run's
    length."""
    client = runtime().results
    flying: dict[str, tuple[bytes, float]] = {}  # task id -> (its result key, sent at)
    taken = 0
    latency: list[tuple[float, bytes | str]] = []
    deadline = time.perf_counter() + timeout
    while len(latency) < count and time.perf_counter() < deadline:
        with lock:
            new, taken = sent[taken:], len(sent)
        for task_id, stamp in new:
            flying[task_id] = (keys.result_key(task_id).encode(), stamp)
        if flying:
            ids = list(flying)
            values = client.mget([flying[k][0] for k in ids])
            now = time.perf_counter()
            for task_id, raw in zip(ids, values, strict=True):
                if raw is not None:
                    latency.append((now - flying.pop(task_id)[1], raw))
        time.sleep(0.001)
    return latency


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m inferq.producer.tools.loadgen")
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
