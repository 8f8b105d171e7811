"""Prometheus metrics of one worker process, and the endpoint that serves them."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from inferq.shared.logs import get_logger

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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inferq_requests",
            "Requests that reached a final state",
            ["model", "outcome"],
            registry=r,
        )
        self.latency = BatchHistogram(
            "inferq_request_latency_seconds",
            "From the producer's submit to the result handed to the backend",
            ["model"],
            _LATENCY_BUCKETS,
            r,
        )
        self.queue_wait = BatchHistogram(
            "inferq_queue_wait_seconds", "Time in the Redis queue", ["model"], _LATENCY_BUCKETS, r
        )
        self.batch_size = BatchHistogram(
            "inferq_batch_size", "Requests per computed batch", ["model"], _BATCH_BUCKETS, r
        )
        self.inference = BatchHistogram(
            "inferq_inference_seconds", "Device time per batch", ["model"], _LATENCY_BUCKETS, r
        )
        self.queue_depth = Gauge(
            "inferq_queue_depth", "Messages waiting in Redis", ["model"], registry=r
        )
        self.batch_cap = Gauge(
            "inferq_effective_max_batch_size", "Batch cap after OOM back-off", ["model"], registry=r
        )
        self.gpu_memory = Gauge(
            "inferq_gpu_memory_used_bytes", "Device memory allocated", ["device"], registry=r
        )
        self.gpu_util = Gauge(
            "inferq_gpu_utilization_ratio", "Device utilisation (0..1)", ["device"], registry=r
        )
        self.up = Gauge("inferq_worker_up", "1 while the worker serves", registry=r)

    def serve(self, port: int, attempts: int = 16) -> int | None:
        """Start the endpoint on ``port`` or the next free one (several workers per host)."""
        for candidate in range(port, port + attempts):
            with contextlib.suppress(OSError):
                start_http_server(candidate, addr="0.0.0.0", registry=self.registry)
                log.info("metrics endpoint started", port=candidate)
                return candidate
        log.warning("metrics endpoint not started: no free port", first=port, attempts=attempts)
        return None
