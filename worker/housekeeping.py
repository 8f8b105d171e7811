"""Housekeeping, on its own thread: what keeps the queues and the registry right while the
request path runs.

Every quarter second: scheduled messages that came due go back on their queues. Every second:
device and queue-depth gauges, and the specs again if Redis lost them (a restart without
persistence). On their own periods: the heartbeat (specs and this worker's entry under each
model), and the redelivery sweep (unacked messages and unrecorded holds past the visibility
timeout, left by workers that died).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

import orjson
import torch
from redis.client import Pipeline

from inferq.shared import keys
from inferq.shared.logs import get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.broker import QueueBroker
from inferq.worker.hooks import Hook

log = get_logger(__name__)

_TICK_S = 0.25
_GAUGES_S = 1.0


class Housekeeping:
    def __init__(
        self,
        broker: QueueBroker,
        settings: Settings,
        hooks: Hook,
        worker_name: str,
        device: torch.device,
        specs: Sequence[InputSpec],
    ) -> None:
        self.broker = broker
        #: Where specs and heartbeats go: the home Redis (the broker's own unless the served
        #: models are placed elsewhere; set by the service).
        self.home = broker.client
        self.settings = settings
        self.hooks = hooks
        self.worker_name = worker_name
        self.device = device
        self.specs = list(specs)
        self._due = {"beat": 0.0, "sweep": 0.0, "gauges": 0.0}
        # Called before every tick (liveness: worker/health.py).
        self.on_round: Callable[[], None] = lambda: None
        # Messages held per model, read with the gauges (the service owns the counts).
        self.in_hand: Callable[[], dict[str, int]] = dict
        # Whether the worker is ready (/ready), recorded with each heartbeat.
        self.ready: Callable[[], bool] = lambda: False
        #: Called at each heartbeat (the worker's version manager re-reads the serving policy).
        self.on_beat: Callable[[], None] = lambda: None

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(_TICK_S):
            self.on_round()
            try:
                self.tick(time.monotonic())
            except CONNECTION_ERRORS as exc:
                log.warning("redis unavailable for housekeeping", error=str(exc))
            except Exception:  # housekeeping must outlive any one bad reply or entry
                log.exception("housekeeping step failed; continuing")

    def tick(self, now: float) -> None:
        """Whatever is due at ``now`` (monotonic seconds)."""
        due = self._due
        self.broker.promote_due()
        if now >= due["gauges"]:
            self.measure_device()
            self.measure_in_hand()
            if self.measure_depths():  # a restarted Redis has lost our specs
                due["beat"] = 0.0
            due["gauges"] = now + _GAUGES_S
        if now >= due["beat"]:
            self.publish_specs()
            self.on_beat()
            due["beat"] = now + self.settings.heartbeat_s
        if now >= due["sweep"]:
            self.sweep()
            due["sweep"] = now + self.settings.restore_interval_s

    def sweep(self) -> int:
        """Redeliver what dead workers left: unacked messages and holds past the timeout."""
        timeout = self.settings.visibility_timeout_s
        restored = self.broker.restore_expired(timeout) + self.broker.return_holds(timeout)
        if restored:
            log.warning("redelivered messages past the visibility timeout", count=restored)
            self.hooks.on_redelivered(restored)
        return restored

    def publish_specs(self) -> None:
        ttl = max(3 * self.settings.heartbeat_s, 30.0)
        pipe = self.home.pipeline(transaction=False)
        for spec in self.specs:
            pipe.set(keys.model_spec_key(spec.model), spec.to_json(), ex=int(ttl))
            pipe.zadd(keys.model_workers_key(spec.model), {self.worker_name: time.time()})
        self._beat(pipe, ttl=max(1, round(keys.WORKER_TTL_BEATS * self.settings.heartbeat_s)))
        pipe.execute()

    def _beat(self, pipe: Pipeline, ttl: int) -> None:
        """This worker's own entry: what ``inferq status`` shows of it, gone after missed beats."""
        key = keys.worker_key(self.worker_name)
        # Every field each time (versions as one JSON field), so nothing stale lingers.
        pipe.hset(key, mapping=self.beat_fields(time.time()))  # type: ignore[arg-type]
        pipe.expire(key, ttl)

    def beat_fields(self, now: float) -> dict[str, str]:
        return {
            "host": socket.gethostname(),
            "device": str(self.device),
            "versions": orjson.dumps({s.model: s.version for s in self.specs}).decode(),
            "ready": "1" if self.ready() else "0",
            "heartbeat": repr(now),
        }

    def unpublish(self) -> None:
        """Take this worker off each model's list of workers (best effort: it is stopping)."""
        try:
            for spec in self.specs:
                self.home.zrem(keys.model_workers_key(spec.model), self.worker_name)
            self.home.delete(keys.worker_key(self.worker_name))
        except CONNECTION_ERRORS:
            pass

    def measure_device(self) -> None:
        if self.device.type != "cuda":
            return
        try:
            utilization: float | None = torch.cuda.utilization(self.device) / 100.0
        except Exception:  # needs NVML (pynvml); memory is still worth reporting without it
            utilization = None
        memory = torch.cuda.memory_allocated(self.device)
        self.hooks.on_device_stats(str(self.device), memory, utilization)

    def measure_in_hand(self) -> None:
        for model, count in self.in_hand().items():
            self.hooks.on_in_hand(model, count)

    def measure_depths(self) -> bool:
        """Report each queue's depth; True if any served model's spec is missing from Redis."""
        for spec in self.specs:
            self.hooks.on_queue_depth(spec.model, self.broker.depth(keys.queue_name(spec.model)))
        if not self.specs:
            return False
        return int(self.home.exists(*(keys.model_spec_key(s.model) for s in self.specs))) < len(
            self.specs
        )
