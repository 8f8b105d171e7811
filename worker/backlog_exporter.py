"""``inferq backlog-exporter``: the ``inferq_backlog{model}`` gauge that KEDA scales workers on.

It runs apart from the workers, so the metric exists while a model has zero of them (a worker's
own gauges vanish with its last pod). Each scrape reads the backlog from Redis: the lists of every
queue of the model, its scheduled messages and the messages in workers' hands (see
``worker/fleet.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from inferq.shared.logs import get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS
from inferq.shared.registry import Registry
from inferq.worker.fleet import fleet_status, known_models

log = get_logger(__name__)

PARTS = ("waiting", "scheduled", "in_hand")


class BacklogCollector:
    """A custom collector: nothing is cached, a scrape sees Redis as it is."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._registry = Registry(client)

    def describe(self) -> list[Metric]:
        return []  # values come from Redis at scrape time; no samples to describe up front

    def collect(self) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            "inferq_backlog",
            "Requests a model owes: waiting in any of its queues, scheduled, and in workers' hands",
            labels=["model"],
        )
        parts = GaugeMetricFamily(
            "inferq_backlog_part", "inferq_backlog by part", labels=["model", "part"]
        )
        try:
            status = fleet_status(
                self._client, self._registry, known_models(self._client, self._registry)
            )
        except CONNECTION_ERRORS as exc:
            # No samples rather than zeros: KEDA must not read "no backlog" from an outage.
            log.warning("redis unavailable; backlog not exported this scrape", error=str(exc))
            return
        for m in status.models:
            total.add_metric([m.model], m.backlog.total)
            for part in PARTS:
                parts.add_metric([m.model, part], getattr(m.backlog, part))
        yield total
        yield parts


def serve(client: redis.Redis, port: int, address: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BacklogCollector(client))
    start_http_server(port, addr=address, registry=registry)
    return registry
