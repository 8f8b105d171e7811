"""The worker's side of placement: which Redis its models' queues live on, decided once at start.

A worker process serves models of one placement (``shared/placement.py``): the home Redis, one
standalone instance, or one model sharded over a Redis Cluster. Everything on the request path
(fetcher, writer, device loops, housekeeping's sweeps) takes the broker built here, so the hot
loop is the standalone one unless this worker's model is sharded: the choice is made once, not per
message. The registry, heartbeats and specs stay on the home Redis, where producers and
``inferq status`` read them.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from inferq.shared.cluster import CLUSTER_CONNECTION_ERRORS, make_cluster_client
from inferq.shared.errors import BrokerUnavailable, ConfigError
from inferq.shared.logs import get_logger
from inferq.shared.placement import Where, read_placement, resolve
from inferq.shared.redisconn import make_client
from inferq.shared.settings import Settings, redact_url
from inferq.worker.broker import Broker
from inferq.worker.shards import ShardedBroker

log = get_logger(__name__)

AnyBroker = Broker | ShardedBroker


def where_served(home: redis.Redis, settings: Settings, models: Sequence[str]) -> Where:
    """The one placement of ``models``; ConfigError if they live on different Redis."""
    placements = {m: read_placement(home, m) for m in models}
    wheres = {m: resolve(p, settings) for m, p in placements.items()}
    if len(set(wheres.values())) > 1:
        shown = {m: repr(w) for m, w in wheres.items()}
        raise ConfigError(
            f"a worker's models must share one placement (start a worker per Redis), got {shown}"
        )
    where = next(iter(wheres.values()))
    if where.cluster and len(models) > 1:
        raise ConfigError(
            f"a model sharded over a Redis Cluster must have a worker of its own, got {list(models)}"
        )
    return where


def make_broker(
    home: redis.Redis, settings: Settings, models: Sequence[str], where: Where
) -> AnyBroker:
    """The broker for ``where``: the home client's own Redis, another standalone one, or the
    model's shards on a cluster."""
    results = _results_client(home, settings, where)
    if where.cluster:
        log.info(
            "serving a sharded queue", cluster=redact_url(where.broker_url), shards=where.shards
        )
        try:
            cluster = make_cluster_client(where.broker_url)
            fetch = make_cluster_client(where.broker_url, retries=0)
        except CLUSTER_CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(
                f"Redis Cluster at {redact_url(where.broker_url)} must answer before a worker "
                f"loads its models, got {type(exc).__name__}: {exc}"
            ) from None
        return ShardedBroker(
            cluster, results, settings.result_ttl_s, models[0], where.shards, fetch
        )
    client = home if where.broker_url == settings.broker_url else make_client(where.broker_url)
    if client is not home:
        log.info("serving a placed model", redis=redact_url(where.broker_url))
    return Broker(
        client,
        client if where.results_url == where.broker_url else results,
        settings.result_ttl_s,
        make_client(where.broker_url, retries=0, large_values=True),
    )


def _results_client(home: redis.Redis, settings: Settings, where: Where) -> redis.Redis:
    if where.results_url == settings.broker_url:
        return home
    return make_client(where.results_url)
