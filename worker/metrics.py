"""Prometheus metrics of one worker process, and the endpoint that serves them."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.logs import get_logger

log = get_logger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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
        self.latency = Histogram(
            "inferq_request_latency_seconds",
            "From the producer's submit to the result handed to the backend",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "inferq_queue_wait_seconds",
            "Time in the Redis queue",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inferq_batch_size",
            "Requests per computed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "inferq_inference_seconds",
            "Device time per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
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
