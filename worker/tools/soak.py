"""``inferq soak``: minutes of mixed load with injected faults, then an exact count of outcomes.

It starts a private Redis (AOF on, as production should run it), two supervised workers and a
producer, then keeps submitting good and bad inputs while it kills workers (SIGKILL) and restarts
Redis. At the end every request must be in exactly one final state:

    submitted = succeeded + failed (by error type) + lost,   lost must be 0

"run twice" counts requests whose result was stored by more than one computation, from the
workers' task-succeeded events.
"""

from __future__ import annotations

import random
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from celery import Celery

from inferq.shared import codec, keys
from inferq.shared.errors import InferqError
from inferq.shared.redisconn import make_client
from inferq.shared.settings import Settings, get_settings, set_settings
from inferq.worker.events import events_in
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.tools.procs import WorkerProcess, start_worker

MODEL = "shapes"


@dataclass
class SoakReport:
    submitted: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    run_twice: int = 0
    faults: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def render(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        return "\n".join(
            [
                f"soak: {self.seconds:.0f} s, faults injected: {len(self.faults)}",
                *(f"  - {f}" for f in self.faults),
                f"submitted  {self.submitted}",
                f"succeeded  {self.succeeded}",
                f"failed     {sum(self.failed.values())} ({failed})",
                f"lost       {self.lost}",
                f"run twice  {self.run_twice}",
            ]
        )


class SucceededEvents:
    """Counts task-succeeded events per task id (one per stored computation)."""

    def __init__(self, url: str) -> None:
        self.counts: Counter[str] = Counter()
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = make_client(self._url).pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(keys.event_channel("*", "task.*"))
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg and msg["type"] == "pmessage":
                        for event in events_in(msg["data"]):
                            if event["type"] == "task-succeeded":
                                self.counts[event["uuid"]] += 1
            except Exception:
                time.sleep(0.5)  # Redis restarting: subscribe again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Soak:
    def __init__(self, repo: Path, minutes: float, rate: float, seed: int = 0) -> None:
        self.repo = repo
        self.duration = minutes * 60.0
        self.rate = rate
        self.rng = random.Random(seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="inferq-soak-"))
        self.redis = LocalRedis(appendfsync="always")
        self.report = SoakReport()
        self.pending: list[Any] = []
        self.workers: list[WorkerProcess] = []

    def env(self) -> dict[str, str]:
        return {
            "INFERQ_BROKER_URL": self.redis.url,
            "INFERQ_MODEL_REPOSITORY": str(self.repo),
            "INFERQ_METRICS_PORT": "0",
            "INFERQ_VISIBILITY_TIMEOUT_S": "10",
            "INFERQ_RESTORE_INTERVAL_S": "1",
            "INFERQ_LOG_FORMAT": "json",
        }

    def run(self, echo: Any = print) -> SoakReport:
        self.redis.start()
        previous = get_settings()
        set_settings(
            Settings(broker_url=self.redis.url, model_repository=self.repo, metrics_port=0)
        )
        from inferq.producer.client import reset_runtime

        reset_runtime()
        events = SucceededEvents(self.redis.url)
        try:
            for i in range(2):
                w = start_worker([MODEL], self.env(), log_path=self.tmp / f"worker-{i}.log")
                w.wait_ready(make_client(self.redis.url))
                self.workers.append(w)
            echo(
                f"soak: 2 workers up; {self.duration:.0f} s of load at {self.rate:.0f} req/s with faults"
            )
            self._load_with_faults(echo)
            self._settle(echo)
            time.sleep(2.0)
            self.report.run_twice = sum(1 for n in events.counts.values() if n > 1)
        finally:
            events.stop()
            for w in self.workers:
                w.terminate()
            self.redis.stop()
            set_settings(previous)
            reset_runtime()
        return self.report

    # -- load --------------------------------------------------------------------------------

    def _load_with_faults(self, echo: Any) -> None:
        from inferq.producer.tools.synth import make_images

        images, _ = make_images(200, seed=7, size=(80, 64))
        plain = Celery(broker=self.redis.url)  # results are collected by id with gather
        faults = self._fault_schedule()
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic() - started) < self.duration:
            if faults and now >= faults[0][0]:
                self._inject(faults.pop(0)[1], echo)
            self._submit_one(images, plain)
            sent += 1
            delay = started + sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.report.seconds = time.monotonic() - started

    def _fault_schedule(self) -> list[tuple[float, str]]:
        d = self.duration
        return sorted([(d * 0.2, "kill"), (d * 0.45, "redis"), (d * 0.7, "kill")])

    def _submit_one(self, images: list[Any], plain: Celery) -> None:
        from inferq.producer import submit_job

        self.report.submitted += 1
        roll = self.rng.random()
        try:
            if roll < 0.9:
                self.pending.append(submit_job.delay(self.rng.choice(images), model=MODEL))
            elif roll < 0.95:
                submit_job.delay(
                    b"\x89PNG\r\n\x1a\n" + bytes(self.rng.randrange(256) for _ in range(64)),
                    model=MODEL,
                )
            else:
                bad = codec.encode(
                    np.zeros((3, 16, 16), np.uint8)
                )  # wrong shape: refused by the worker
                sent = plain.send_task(
                    keys.TASK_NAME,
                    args=[bad],
                    kwargs={"model": MODEL},
                    queue=keys.queue_name(MODEL),
                )
                self.pending.append(sent.id)
        except InferqError as exc:
            self.report.failed[type(exc).__name__] += 1
        except Exception as exc:  # a plain Celery client during a Redis restart
            self.report.failed[f"submit:{type(exc).__name__}"] += 1

    def _inject(self, fault: str, echo: Any) -> None:
        if fault == "kill":
            w = self.rng.choice(self.workers)
            children = psutil.Process(w.process.pid).children()
            if children:
                children[0].send_signal(signal.SIGKILL)
                self.report.faults.append(f"SIGKILL worker {children[0].pid} under load")
        else:
            self.redis.stop()  # a clean restart: with AOF, nothing queued is lost
            time.sleep(1.0)
            self.redis.start()
            self.report.faults.append("Redis restarted under load (AOF)")
        echo(f"  fault: {self.report.faults[-1]}")

    # -- count -------------------------------------------------------------------------------

    def _settle(self, echo: Any) -> None:
        from inferq.producer.gather import gather

        echo(f"soak: collecting {len(self.pending)} results ...")
        try:
            values = gather(self.pending, timeout=120, return_exceptions=True)
        except TimeoutError:
            values = [self._value(r) for r in self.pending]
        for v in values:
            if isinstance(v, dict):
                self.report.succeeded += 1
            elif isinstance(v, Exception):
                self.report.failed[type(v).__name__] += 1
            else:
                self.report.lost += 1

    def _value(self, result: Any) -> Any:
        """After gather gave up: what is stored for ``result``, if anything."""
        from inferq.shared.results import value_from_meta

        task_id = result if isinstance(result, str) else result.id
        raw = make_client(self.redis.url).get(keys.result_key(task_id))
        if raw is None:
            return None
        try:
            return value_from_meta(raw)
        except InferqError as exc:
            return exc


def run_soak(repo: Path, minutes: float, rate: float, echo: Any = print) -> int:
    from inferq.worker.repository import ModelRepository

    if MODEL not in ModelRepository(repo).models():
        from inferq.worker.examples.build import build_examples

        build_examples(repo, [MODEL], log=echo)
    report = Soak(repo, minutes, rate).run(echo)
    echo(report.render())
    return 0 if report.lost == 0 and report.run_twice == 0 else 1
