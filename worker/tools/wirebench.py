"""``inferq bench --null-model``: the path's own ceiling for each wire, at 3x32x32 and 3x224x224.

For each input size (the ``null32``/``null224`` example models, which compute nothing) and each
wire (``raw``, ``jpeg``, ``png``), on a private Redis:

1. the producer preprocesses and encodes N natural images (crops of a photograph) and pushes
   them (``submit_many``): producer CPU per message, and Redis CPU for the pushes;
2. the bytes each message takes in the queue, read back from Redis;
3. one worker process drains the queue (fetch, decode, batch, null forward, result store, ack):
   requests/s, the worker's CPU per message, and Redis CPU per message for all of it.

Redis CPU comes from ``INFO cpu`` deltas (user + system: commands, network reads and writes)
around each phase, less what the bench's own polls cost (measured by polling again after);
``INFO commandstats`` deltas are kept in the JSON output (they count a script's inner commands
and the script itself, so they are no total). The most messages a
second one Redis carries on this path is then ``1e6 / (Redis CPU us per message)``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferq.shared import keys
from inferq.shared.redisconn import make_client
from inferq.shared.settings import Settings, get_settings, set_settings
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.tools.procs import start_worker
from inferq.worker.tools.threadcpu import thread_cpu

WIRES = ("raw", "jpeg", "png")
MODELS = {32: "null32", 224: "null224"}


@dataclass(frozen=True)
class RedisCpu:
    """Redis's own CPU seconds so far: the process's and the time spent inside commands."""

    process_s: float
    commands_s: float
    calls: int

    @classmethod
    def read(cls, client: Any) -> RedisCpu:
        cpu = client.info("cpu")
        stats = client.info("commandstats")
        return cls(
            cpu["used_cpu_user"] + cpu["used_cpu_sys"],
            sum(v["usec"] for v in stats.values()) / 1e6,
            sum(v["calls"] for v in stats.values()),
        )

    def minus(self, other: RedisCpu, per: int) -> dict[str, float]:
        return {
            "process_us": (self.process_s - other.process_s) / per * 1e6,
            "commands_us": (self.commands_s - other.commands_s) / per * 1e6,
            "calls": (self.calls - other.calls) / per,
        }


@dataclass(frozen=True)
class Case:
    size: int
    wire: str
    count: int
    payload_bytes: float  # the request's tensor or image, as the producer made it
    message_bytes: float  # the whole envelope, as it sits in the queue
    producer_us: float  # producer CPU per message: preprocess, encode, envelope, push
    push: dict[str, float]  # Redis CPU per message while the producer pushed
    drain: dict[str, float]  # Redis CPU per message while one worker drained the queue
    drain_per_s: float
    worker_us: float  # the worker process's CPU per message in the drain

    @property
    def redis_us(self) -> float:
        return self.push["process_us"] + self.drain["process_us"]

    @property
    def redis_ceiling(self) -> float:
        """Messages a second one Redis carries on this path, at one core's worth of its CPU."""
        return 1e6 / self.redis_us


def images(size: int, n: int) -> list[np.ndarray]:
    """``n`` natural images at the model's input size (HWC): crops of a photograph."""
    from PIL import Image

    from inferq.worker.tools.wire_accuracy import photo_crops

    return [
        np.asarray(c.resize((size, size), Image.Resampling.BILINEAR)) for c in photo_crops(n, 7)
    ]


def null_repo(root: Path, size: int, wire: str) -> Path:
    """A repository holding the null model of ``size`` with its ``[input] wire`` set."""
    from inferq.worker.examples.build import build_examples

    model = MODELS[size]
    repo = root / f"{model}-{wire}"
    source = root / "built"
    if not (source / model).is_dir():
        build_examples(source, [model], log=lambda _: None)
    shutil.copytree(source / model, repo / model)
    config = repo / model / "config.toml"
    text = re.sub(r"(?m)^queue_limit\s*=.*$", "queue_limit = 1000000", config.read_text())
    config.write_text(text.replace("[input]\n", f'[input]\nwire = "{wire}"\n', 1))
    return repo


def run_case(
    root: Path, size: int, wire: str, count: int, pool: Sequence[np.ndarray], device: str = "cpu"
) -> Case:
    from inferq.producer.client import reset_runtime, submit_many
    from inferq.worker.repository import ModelRepository

    model, repo = MODELS[size], null_repo(root, size, wire)
    redis = LocalRedis().start()
    previous = get_settings()
    set_settings(Settings(broker_url=redis.url, model_repository=repo, metrics_port=0))
    reset_runtime()
    client = make_client(redis.url)
    worker = None
    try:
        mv = ModelRepository(repo).resolve(model)
        spec = mv.config.input_spec(mv.version)
        client.set(keys.model_spec_key(model), spec.to_json())
        before, cpu0 = RedisCpu.read(client), time.process_time()
        submit_many((pool[i % len(pool)] for i in range(count)), model=model, chunk=256)
        producer_us = (time.process_time() - cpu0) / count * 1e6
        pushed = RedisCpu.read(client)
        queue = keys.priority_queue_key(keys.queue_name(model), keys.DEFAULT_PRIORITY)
        message, payload = _sizes(client, queue, spec, pool)
        env = {
            "INFERQ_BROKER_URL": redis.url,
            "INFERQ_MODEL_REPOSITORY": str(repo),
            "INFERQ_METRICS_PORT": "0",
            "INFERQ_LOG_LEVEL": "WARNING",
        }
        # The worker starts on an empty queue; the messages come back in one RENAME once it
        # is up, so that neither its start-up nor the bench's waiting is counted in the drain.
        parked = f"{queue}:parked"
        client.rename(queue, parked)
        log = root / "worker.log"
        worker = start_worker(
            [model], env, device=device, supervised=False, events=False, log_path=log
        )
        _wait_listed(client, model, worker)
        start, wcpu0 = RedisCpu.read(client), _cpu(worker.process.pid)
        began = time.perf_counter()
        client.rename(parked, queue)
        polls = 0
        while client.llen(queue) + client.hlen(keys.UNACKED):
            time.sleep(0.02)
            polls += 1
        elapsed = time.perf_counter() - began
        worker_s = _cpu(worker.process.pid) - wcpu0
        drained = _without_polls(client, queue, polls)
        return Case(
            size,
            wire,
            count,
            payload,
            message,
            producer_us,
            pushed.minus(before, count),
            drained.minus(start, count),
            count / elapsed,
            worker_s / count * 1e6,
        )
    finally:
        if worker is not None:
            worker.terminate()
        redis.stop()
        set_settings(previous)
        reset_runtime()


def _sizes(client: Any, queue: str, spec: Any, pool: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean bytes of a queued message, and of the payload inside it (as the producer encodes)."""
    from inferq.producer.preprocess import to_tensor
    from inferq.shared.wire import encode_image

    sample = client.lrange(queue, 0, 199)
    tensors = [to_tensor(a, spec, 10**9) for a in pool]
    if spec.wire == "raw":
        payloads = [spec.nbytes + 8 + 4 * len(spec.shape)] * len(tensors)
    else:
        payloads = [len(encode_image(t, spec.wire, spec.jpeg_quality)) for t in tensors]
    return float(np.mean([len(m) for m in sample])), float(np.mean(payloads))


def _wait_listed(client: Any, model: str, worker: Any) -> None:
    deadline = time.monotonic() + 300
    while client.zscore(keys.model_workers_key(model), worker.hostname) is None:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
        time.sleep(0.05)
    time.sleep(1.0)  # its first idle polls and heartbeat are behind it


def _without_polls(client: Any, queue: str, polls: int) -> RedisCpu:
    """Redis's CPU now, less what the bench's own polls cost it (measured by polling again)."""
    now = RedisCpu.read(client)
    for _ in range(polls):
        client.llen(queue) + client.hlen(keys.UNACKED)
    again = RedisCpu.read(client)
    return RedisCpu(
        2 * now.process_s - again.process_s,
        2 * now.commands_s - again.commands_s,
        2 * now.calls - again.calls,
    )


def _cpu(pid: int) -> float:
    return sum(thread_cpu(pid).values())


def run(
    counts: dict[int, int],
    wires: Sequence[str] = WIRES,
    echo: Callable[[str], Any] = print,
    device: str = "cpu",
) -> list[Case]:
    root = Path(tempfile.mkdtemp(prefix="inferq-wirebench-"))
    cases = []
    for size, count in counts.items():
        pool = images(size, 64)
        for wire in wires:
            echo(f"{MODELS[size]} ({size}x{size}), wire {wire}: {count} requests ...")
            cases.append(run_case(root, size, wire, count, pool, device))
    shutil.rmtree(root, ignore_errors=True)
    echo(render(cases))
    return cases


def render(cases: Sequence[Case]) -> str:
    head = (
        "| input | wire | payload B | message B | producer CPU us/msg | Redis CPU us/msg "
        "(push + drain) | one Redis carries msg/s | one worker drains req/s "
        "| worker CPU us/msg |"
    )
    lines = [head, "| --- " * 9 + "|"]
    for c in cases:
        lines.append(
            f"| 3x{c.size}x{c.size} | {c.wire} | {c.payload_bytes:,.0f} | {c.message_bytes:,.0f} "
            f"| {c.producer_us:.0f} | {c.redis_us:.1f} ({c.push['process_us']:.1f} + "
            f"{c.drain['process_us']:.1f}) "
            f"| {c.redis_ceiling:,.0f} | {c.drain_per_s:,.0f} | {c.worker_us:.0f} |"
        )
    lines += _ratios(cases)
    return "\n".join(lines)


def _ratios(cases: Sequence[Case]) -> list[str]:
    out = []
    by = {(c.size, c.wire): c for c in cases}
    for (size, wire), c in by.items():
        raw = by.get((size, "raw"))
        if wire == "raw" or raw is None:
            continue
        out.append(
            f"3x{size}x{size} {wire} against raw: bytes per message "
            f"{c.message_bytes / raw.message_bytes:.3f}, Redis CPU per message "
            f"{c.redis_us / raw.redis_us:.3f}"
        )
    return out


def as_dicts(cases: Sequence[Case]) -> list[dict[str, Any]]:
    return [{**asdict(c), "redis_us": c.redis_us, "redis_ceiling": c.redis_ceiling} for c in cases]
