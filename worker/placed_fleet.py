"""The backlog of models placed on another Redis or sharded over a cluster, for ``inferq status``
and the ``inferq backlog-exporter`` that KEDA scales on: read where each model lives (its
placement in the home registry, resolved through this process's ``INFERQ_REDIS_INSTANCES``)."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import redis

from inferq.shared.cluster import make_cluster_client, shard_books
from inferq.shared.placement import Where, read_placement, resolve
from inferq.shared.redisconn import make_client
from inferq.shared.settings import get_settings
from inferq.worker.fleet import Backlog, _backlog, _in_hand_by_queue, _scheduled_by_queue


def placed_backlogs(home: redis.Redis, queues: Mapping[str, list[str]]) -> dict[str, Backlog]:
    """``{model: backlog}`` for the models of ``queues`` that have a placement."""
    settings = get_settings()
    out: dict[str, Backlog] = {}
    for model, names in queues.items():
        placement = read_placement(home, model)
        if placement is None:
            continue
        where = resolve(placement, settings)
        out[model] = _sharded(where, model, names) if where.cluster else _standalone(where, names)
    return out


@functools.cache
def _client(url: str, cluster: bool) -> redis.Redis:
    """One client per Redis for the life of the process (the exporter scrapes again and again)."""
    if cluster:
        return make_cluster_client(url, socket_timeout=10.0)  # type: ignore[return-value]
    return make_client(url, retries=2, socket_timeout=10.0)


def _standalone(where: Where, names: list[str]) -> Backlog:
    client = _client(where.broker_url, False)
    return _backlog(client, names, _scheduled_by_queue(client), _in_hand_by_queue(client))


def _sharded(where: Where, model: str, names: list[str]) -> Backlog:
    """Each shard's backlog (its queues' lists, scheduled set and unacked hash), summed."""
    client = _client(where.broker_url, True)
    parts: list[Backlog] = []
    for book in shard_books(model, where.shards):
        scheduled = _scheduled_by_queue(client, book)
        # Unacked entries name the queue a producer routed to (the model's), holds the shard's.
        in_hand: dict[str, int] = {}
        for queue, n in _in_hand_by_queue(client, book).items():
            in_hand[book.queue(queue)] = in_hand.get(book.queue(queue), 0) + n
        backlog = _backlog(client, [book.queue(q) for q in names], scheduled, in_hand)
        parts.append(_untagged(backlog, book.tag))
    return Backlog(
        by_priority={p: sum(b.by_priority[p] for b in parts) for p in parts[0].by_priority},
        by_queue={q: sum(b.by_queue.get(q, 0) for b in parts) for q in names},
        scheduled=sum(b.scheduled for b in parts),
        in_hand=sum(b.in_hand for b in parts),
    )


def _untagged(backlog: Backlog, tag: str) -> Backlog:
    by_queue = {q.removesuffix(tag): n for q, n in backlog.by_queue.items()}
    return Backlog(backlog.by_priority, by_queue, backlog.scheduled, backlog.in_hand)
