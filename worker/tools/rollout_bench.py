"""p99 latency during a hot rollout against the steady p99, at a share of measured capacity.

    python -m inferq.worker.tools.rollout_bench [--load 0.5] [--seconds 10]

Starts a private redis-server and one CPU worker serving a small scripted model (v1), measures
its capacity with a burst, then submits open-loop at ``--load`` of it: first steady, then while
``v2`` is rolled out (loaded, warmed up, validated and switched to beside v1). Prints both p99s
(end-to-end ``timing.total_ms``) and the outcome counts of each phase.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inferq.producer import gather, submit_job, submit_many
from inferq.producer.client import reset_runtime
from inferq.shared.redisconn import make_client
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings, set_settings
from inferq.worker.models_cli import notify_workers
from inferq.worker.repository import ModelRepository, published_version, record_sha256
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.tools.procs import start_worker

MODEL = "bench"
CONFIG = """platform = "torchscript"
[input]
shape = [3, 32, 32]
[preprocess]
resize = "stretch"
[output]
top_k = 1
[batching]
max_batch_size = 32
max_wait_ms = 2.0
"""


def write_version(root: Path, version: int) -> None:
    torch.manual_seed(version)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    ).eval()
    path = root / MODEL / str(version) / "model.pt"
    path.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.script(net), str(path))
    record_sha256(path)
    (root / MODEL / "config.toml").write_text(CONFIG)


def capacity(n: int = 2000) -> float:
    x = np.zeros((32, 32, 3), np.uint8)
    started = time.perf_counter()
    gather(submit_many([x] * n, model=MODEL), timeout=300)
    return n / (time.perf_counter() - started)


def open_loop(rate: float, seconds: float, during: Any = None) -> tuple[float, Counter[str]]:
    x = np.zeros((32, 32, 3), np.uint8)
    results = []
    if during is not None:
        threading.Timer(1.0, during).start()
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        results.append(submit_job.delay(x, model=MODEL))
    values = gather(results, timeout=300, return_exceptions=True)
    ok = [v["timing"]["total_ms"] for v in values if isinstance(v, dict)]
    counts = Counter("ok" if isinstance(v, dict) else type(v).__name__ for v in values)
    return float(np.percentile(ok, 99)), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=float, default=0.5, help="share of measured capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_version(root, 1)
        redis_server = LocalRedis().start()
        settings = Settings(
            broker_url=redis_server.url, model_repository=root, spec_cache_ttl_s=1.0
        )
        set_settings(settings)
        reset_runtime()
        env = {
            "INFERQ_BROKER_URL": redis_server.url,
            "INFERQ_MODEL_REPOSITORY": str(root),
            "INFERQ_METRICS_PORT": "0",
            "INFERQ_SPEC_CACHE_TTL_S": "1.0",
        }
        worker = start_worker([MODEL], env)
        try:
            worker.wait_ready(make_client(redis_server.url))
            rate = capacity() * args.load
            steady, steady_counts = open_loop(rate, args.seconds)
            write_version(root, 2)
            registry = Registry(make_client(redis_server.url))
            registry.publish([published_version(ModelRepository(root).resolve(MODEL, 2))])

            def roll() -> None:
                registry.rollout(MODEL, 2)
                notify_workers(MODEL)

            during, during_counts = open_loop(rate, args.seconds, roll)
            print(
                f"rate {rate:.0f} req/s ({args.load:.0%} of capacity), {args.seconds:g} s a phase"
            )
            print(f"steady  p99 {steady:7.1f} ms  {dict(steady_counts)}")
            print(f"rollout p99 {during:7.1f} ms  {dict(during_counts)}  ({during / steady:.2f}x)")
        finally:
            worker.terminate(timeout=20)
            redis_server.stop()


if __name__ == "__main__":
    main()
