"""Prometheus metrics of one worker process, and the endpoint that serves them."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from inferq.shared.errors import (
    DeadlineExceeded,
    InvalidInput,
    PayloadTooLarge,
    QueueFull,
    Revoked,
)
from inferq.shared.logs import get_logger
from inferq.worker.health import Health, start_endpoint

log = get_logger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BatchHistogram:
    """A labelled Prometheus histogram that takes a whole batch of observations in one call.

    ``prometheus_client.Histogram`` costs a lock and a bucket search per observation, several
    microseconds a request at tens of thousands of requests a second; here a batch is binned by
    numpy and added under one lock. Exported through the client's custom-collector interface,
    with the same samples (``_bucket``/``_sum``/``_count``) as a ``Histogram``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._bounds = np.array([*sorted(buckets), math.inf], dtype=np.float64)
        self._counts: dict[tuple[str, ...], np.ndarray] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: Sequence[str], values: Sequence[float] | np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return
        # Prometheus buckets count observations <= their upper bound ("le").
        binned = np.bincount(
            np.searchsorted(self._bounds, x, side="left"), minlength=len(self._bounds)
        )
        key = tuple(labels)
        total = float(x.sum())
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                self._counts[key] = binned
                self._sums[key] = total
            else:
                counts += binned
                self._sums[key] += total

    def observe(self, labels: Sequence[str], value: float) -> None:
        self.observe_many(labels, [value])

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(k, v.copy(), self._sums[k]) for k, v in self._counts.items()]
        for labels, counts, total in snapshot:
            cumulative = np.cumsum(counts)
            family.add_metric(
                list(labels),
                [
                    (floatToGoString(b), float(c))
                    for b, c in zip(self._bounds, cumulative, strict=True)
                ],
                total,
            )
        yield family


#: Failures the caller caused: the server-error alert leaves them out, so that a client sending
#: bad inputs or short deadlines, or a full queue refusing work, does not page the operator.
CLIENT_ERROR_REASONS = frozenset(
    e.reason for e in (InvalidInput, PayloadTooLarge, DeadlineExceeded, QueueFull, Revoked)
)


@dataclass(frozen=True)
class DeviceMemory:
    """One reading of an accelerator's memory, in bytes."""

    total: int  # the device's capacity (cudaMemGetInfo)
    reserved: int  # held by torch's caching allocator, in use or cached
    allocated: int  # in live tensors

    @classmethod
    def read(cls, device: str) -> DeviceMemory | None:
        """The reading for a ``cuda:N`` device whose context this process already holds, else None.

        Never initialises CUDA: a process that has not touched the device (the supervisor, a CPU
        worker) must not create a context just to be measured.
        """
        torch = sys.modules.get("torch")
        if torch is None or not device.startswith("cuda") or not torch.cuda.is_initialized():
            return None
        _free, total = torch.cuda.mem_get_info(device)
        return cls(
            total=int(total),
            reserved=int(torch.cuda.memory_reserved(device)),
            allocated=int(torch.cuda.memory_allocated(device)),
        )


class Metrics:
    """Every metric a worker exports: the names deploy/prometheus/rules.yml and the dashboard use."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests(self.registry)
        self._queues(self.registry)
        self._device(self.registry)
        self.model_info = Gauge(
            "inferq_model_info",
            "1 for the version of each model this worker serves",
            ["model", "version", "platform", "precision"],
            registry=self.registry,
        )
        self.up = Gauge("inferq_worker_up", "1 while the worker serves", registry=self.registry)
        self._lock = threading.Lock()
        self._depth: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._info: dict[tuple[str, str], tuple[str, str]] = {}

    def _requests(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "inferq_requests",
            "Requests that reached a final state, by outcome (success or the error's reason), "
            "and the version that computed them (or whose queue they came from)",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.latency = BatchHistogram(
            "inferq_request_latency_seconds",
            "From the producer's submit to the result handed to the backend",
            ["model", "version"],
            _LATENCY_BUCKETS,
            r,
        )
        self.queue_wait = BatchHistogram(
            "inferq_queue_wait_seconds",
            "Time in the Redis queue",
            ["model", "version"],
            _LATENCY_BUCKETS,
            r,
        )
        self.batch_size = BatchHistogram(
            "inferq_batch_size",
            "Requests per computed batch",
            ["model", "version"],
            _BATCH_BUCKETS,
            r,
        )
        self.inference = BatchHistogram(
            "inferq_inference_seconds",
            "Device time per batch",
            ["model", "version"],
            _LATENCY_BUCKETS,
            r,
        )
        self.redeliveries = Counter(
            "inferq_redeliveries",
            "Messages that reached a final state here after an earlier delivery (a worker died, "
            "a batch outlived the visibility timeout, or a shutdown gave them back)",
            ["model", "version"],
            registry=r,
        )
        self.dead_letters = Counter(
            "inferq_dead_letters",
            "Messages on a model's queue that were not inferq requests, set aside unread in "
            "inferq.deadletter",
            ["model"],
            registry=r,
        )
        self.restored = Counter(
            "inferq_restored",
            "Messages this worker's sweep put back on their queues: unacknowledged past the "
            "visibility timeout, or held by a fetch never recorded (left by workers that died)",
            registry=r,
        )

    def _queues(self, r: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "inferq_queue_depth", "Messages waiting in Redis, every priority", ["model"], registry=r
        )
        self.in_hand = Gauge(
            "inferq_in_hand",
            "Messages this worker holds: fetched, not yet acknowledged or given back",
            ["model"],
            registry=r,
        )
        self.backlog = Gauge(
            "inferq_backlog",
            "Work waiting for the model as this worker sees it: queue depth plus messages in hand",
            ["model"],
            registry=r,
        )
        self.batch_cap = Gauge(
            "inferq_effective_max_batch_size",
            "Batch cap after OOM back-off",
            ["model", "version"],
            registry=r,
        )

    def _device(self, r: CollectorRegistry) -> None:
        self.memory_total = Gauge(
            "inferq_device_memory_total_bytes",
            "The device's memory capacity",
            ["device"],
            registry=r,
        )
        self.memory_reserved = Gauge(
            "inferq_device_memory_reserved_bytes",
            "Device memory held by torch's caching allocator (in use or cached)",
            ["device"],
            registry=r,
        )
        self.memory_allocated = Gauge(
            "inferq_device_memory_allocated_bytes",
            "Device memory in live tensors",
            ["device"],
            registry=r,
        )
        self.gpu_util = Gauge(
            "inferq_gpu_utilization_ratio",
            "Share of the last sample period the device was busy (0..1; needs nvidia-ml-py)",
            ["device"],
            registry=r,
        )

    def exported(self) -> dict[str, str]:
        """Each exported metric as PromQL names it (counters with ``_total``), with its type."""
        return {
            family.name + ("_total" if family.type == "counter" else ""): family.type
            for family in self.registry.collect()
        }

    def set_device_memory(self, device: str, memory: DeviceMemory) -> None:
        self.memory_total.labels(device).set(memory.total)
        self.memory_reserved.labels(device).set(memory.reserved)
        self.memory_allocated.labels(device).set(memory.allocated)

    def set_queue_depth(self, model: str, depth: int) -> None:
        with self._lock:
            self._depth[model] = depth
            self._set_backlog(model)
        self.queue_depth.labels(model).set(depth)

    def set_in_hand(self, model: str, count: int) -> None:
        with self._lock:
            self._held[model] = count
            self._set_backlog(model)
        self.in_hand.labels(model).set(count)

    def _set_backlog(self, model: str) -> None:
        self.backlog.labels(model).set(self._depth.get(model, 0) + self._held.get(model, 0))

    def set_model_info(self, model: str, version: str, platform: str, precision: str) -> None:
        """Label a version this worker serves (during a canary, two of one model)."""
        # The version's counters start at 0, so increase() sees their first event (a series that
        # appears at 1 has no earlier sample to grow from, and an alert on it would never fire).
        self.redeliveries.labels(model, version)
        self.dead_letters.labels(model)
        with self._lock:
            self._info[(model, version)] = (platform, precision)
            self.model_info.labels(model, version, platform, precision).set(1)

    def remove_model_info(self, model: str, version: str) -> None:
        """A version this worker no longer serves (released after a rollout) leaves the info."""
        with self._lock:
            labels = self._info.pop((model, version), None)
            if labels is not None:
                self.model_info.remove(model, version, *labels)

    def serve(self, port: int, attempts: int = 16, health: Health | None = None) -> int | None:
        """Start the endpoint (``/metrics``, and ``/ready`` and ``/live`` from ``health``) on
        ``port`` or the next free one (several workers per host)."""
        for candidate in range(port, port + attempts):
            with contextlib.suppress(OSError):
                start_endpoint(candidate, self.registry, health)
                log.info("metrics endpoint started", port=candidate)
                return candidate
        log.warning("metrics endpoint not started: no free port", first=port, attempts=attempts)
        return None
