"""The producer's side of placement: each model's lane (the pusher for its queues, the result
backend its results are read from), and which lane a task id's result is on.

A model's placement is read from the home Redis's registry (``shared/placement.py``) with its
record, by the spec cache (at most once per ``spec_cache_ttl_s``); lanes are built once per placement and shared by every
model placed the same way. The home lane is the runtime's own pusher and Celery backend, so a
model without a placement costs what it did before: one dict lookup per call.

``AsyncResult.get()`` needs the backend of the Redis the result is on. Results returned by
``submit_job.delay`` carry it; ``submit_job.AsyncResult(task_id)`` finds it through the lane
remembered for that id when this process submitted it (a bounded map, any thread), or through
``model=`` (``submit_job.AsyncResult(task_id, model="m")``) from any process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis

from inferq.producer.backend import ListenerBackend
from inferq.producer.pusher import Prepared, Pusher
from inferq.producer.shards import ShardPusher
from inferq.shared.cluster import CLUSTER_CONNECTION_ERRORS, make_cluster_client
from inferq.shared.errors import BrokerUnavailable
from inferq.shared.placement import Where, home, resolve
from inferq.shared.redisconn import make_client
from inferq.shared.settings import redact_url

if TYPE_CHECKING:
    from inferq.producer.client import Runtime

REMEMBERED = 200_000  # task ids whose lane this process remembers (about 30 MB at most)


class Pushes(Protocol):
    def push(self, prepared: Sequence[Prepared]) -> str: ...

    def push_each(self, calls: Sequence[Sequence[Prepared]]) -> list[str | BaseException]: ...


@dataclass(frozen=True, eq=False)
class Lane:
    """Where one placement's requests go and its results are read."""

    where: Where
    pusher: Pushes
    backend: Any  # the Celery result backend (ListenerBackend) for the results' Redis
    broker: Any  # the queues' client (redis.Redis, or RedisCluster for a sharded queue)
    results: redis.Redis


class Lanes:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._lock = threading.Lock()
        # Its backend: None, for the calling thread's own Celery backend (``app.backend``).
        self.home = Lane(home(rt.settings), rt.pusher, None, rt.client, rt.results)
        self._lanes: dict[tuple[Where, str], Lane] = {}
        self._by_task: OrderedDict[str, Lane] = OrderedDict()

    def lane(self, model: str) -> Lane:
        """The lane of ``model``'s requests now."""
        placement = self._rt.specs.placement(model)
        if placement is None:
            return self.home
        where = resolve(placement, self._rt.settings)
        key = (where, model if where.cluster else "")  # a cluster lane's shards are the model's
        with self._lock:
            found = self._lanes.get(key)
        if found is None:
            found = self._build(where, model)
            with self._lock:
                found = self._lanes.setdefault(key, found)
        return found

    def remember(self, task_ids: Sequence[str], lane: Lane) -> None:
        if lane is self.home:
            return
        with self._lock:
            for task_id in task_ids:
                self._by_task[task_id] = lane
            while len(self._by_task) > REMEMBERED:
                self._by_task.popitem(last=False)

    def lane_of(self, task_id: str, model: str | None = None) -> Lane:
        """The lane ``task_id``'s result is on: remembered, or ``model``'s, or home."""
        with self._lock:
            found = self._by_task.get(task_id)
        if found is not None:
            return found
        return self.lane(model) if model else self.home

    def _build(self, where: Where, model: str) -> Lane:
        rt = self._rt
        results = rt.results if where.results_url == rt.settings.result_backend else None
        results = results or make_client(where.results_url)
        backend = ListenerBackend(app=rt.app, url=where.results_url)
        if where.cluster:
            where_shown = redact_url(where.broker_url)
            try:
                cluster = make_cluster_client(where.broker_url)
            except CLUSTER_CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(
                    f"Redis Cluster at {where_shown} must be reachable to submit to {model!r}, "
                    f"got {type(exc).__name__}: {exc}"
                ) from None
            pusher: Pushes = ShardPusher(cluster, model, where.shards, where_shown)
            return Lane(where, pusher, backend, cluster, results)
        client = make_client(where.broker_url)
        return Lane(where, Pusher(client, redact_url(where.broker_url)), backend, client, results)
