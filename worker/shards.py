"""A model's queue sharded over a Redis Cluster, seen by the worker as one broker.

``ShardedBroker`` has the interface of ``worker/broker.py``'s ``Broker`` (the fetcher, writer,
device loops and housekeeping take either) and holds one ``Broker`` per shard, each with the
shard's bookkeeping names (``shared/cluster.py``), all over one ``RedisCluster`` client that routes
each call to its shard's master. Every guarantee is the standalone one, shard by shard: a fetch
takes from one shard into a hold in that shard's slot and records it in that shard's unacked
hash; results are stored on the (standalone) result Redis, then acknowledged in the shard they
came from; each shard's sweeper redelivers its own expired messages. Fetches start at a rotating
shard, so every shard is drained, and within a shard the highest priority goes first.

Which shard a held message came from is remembered from fetch to ack (a dict keyed by delivery
tag): acks, restores and parking for an eta go to that shard.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import TypeVar

import redis
from redis.cluster import RedisCluster

from inferq.shared.cluster import Book, shard_books
from inferq.worker.broker import Broker, Fetched, Taken, Write

T = TypeVar("T")


class ShardedBroker:
    """One model's shards on a cluster, behind ``Broker``'s interface."""

    def __init__(
        self,
        cluster: RedisCluster,
        result_client: redis.Redis,
        result_ttl_s: int,
        model: str,
        shards: int,
    ) -> None:
        self.client = cluster
        self.results = result_client
        self.result_ttl_s = result_ttl_s
        self.books: list[Book] = shard_books(model, shards)
        self.shards = [
            Broker(cluster, result_client, result_ttl_s, book=book)  # type: ignore[arg-type]
            for book in self.books
        ]
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._shard_of: dict[str, int] = {}  # delivery tag -> shard, from record to ack

    # -- fetching -----------------------------------------------------------------------------

    def take(self, queue: str, count: int) -> Taken | None:
        """Up to ``count`` messages from the first shard, in rotation, that has any."""
        start = next(self._next)
        for i in range(len(self.shards)):
            s = (start + i) % len(self.shards)
            taken = self.shards[s].take(self.books[s].queue(queue), count)
            if taken is not None:
                return taken
        return None

    def record(self, taken: Taken) -> None:
        s = self._shard_of_queue(taken.queue)
        self.shards[s].record(taken)
        with self._lock:
            for f in taken.fetched:
                self._shard_of[f.tag] = s

    def fetch(self, queue: str, count: int) -> list[Fetched]:
        taken = self.take(queue, count)
        if taken is None:
            return []
        self.record(taken)
        return list(taken.fetched)

    def wait(self, queue: str, timeout_s: float) -> bool:
        """Block on one shard (in rotation) for a share of ``timeout_s``: a cluster cannot block
        on lists of several slots in one command."""
        s = next(self._next) % len(self.shards)
        return self.shards[s].wait(self.books[s].queue(queue), timeout_s / len(self.shards))

    # -- results and acks ---------------------------------------------------------------------

    def store_and_ack(self, writes: Sequence[Write]) -> None:
        """Each shard's writes: results on the result Redis first, then the shard's acks. Safe
        to repeat (``until_redis_takes``): a tag is forgotten only once its shard took the ack."""
        for s, part in self._by_shard([w.tag for w in writes], writes).items():
            self.shards[s].store_and_ack(part)
            self._forget([w.tag for w in part])

    def schedule(self, tag: str, eta: float, queue: str, priority: int, raw: bytes) -> bool:
        s = self._shard(tag)
        parked = self.shards[s].schedule(tag, eta, self.books[s].queue(queue), priority, raw)
        self._forget([tag])
        return parked

    def restore(self, tags: Sequence[str]) -> int:
        restored = 0
        for s, part in self._by_shard(tags, tags).items():
            restored += self.shards[s].restore(part)
            self._forget(part)
        return restored

    # -- housekeeping -------------------------------------------------------------------------

    def promote_due(self, limit: int = 1000) -> int:
        return sum(b.promote_due(limit) for b in self.shards)

    def restore_expired(self, visibility_timeout_s: float, limit: int = 500) -> int:
        return sum(b.restore_expired(visibility_timeout_s, limit) for b in self.shards)

    def return_holds(self, older_than_s: float, limit: int = 100) -> int:
        return sum(b.return_holds(older_than_s, limit) for b in self.shards)

    def depth(self, queue: str) -> int:
        return sum(
            b.depth(book.queue(queue)) for b, book in zip(self.shards, self.books, strict=True)
        )

    # -- which shard --------------------------------------------------------------------------

    def _shard_of_queue(self, queue: str) -> int:
        for s, book in enumerate(self.books):
            if queue.endswith(book.tag):
                return s
        raise ValueError(f"queue must be a shard of this model's, got {queue!r}")

    def _shard(self, tag: str) -> int:
        with self._lock:
            s = self._shard_of.get(tag)
        if s is None:
            raise KeyError(f"delivery tag must be one this worker fetched, got {tag!r}")
        return s

    def _by_shard(self, tags: Sequence[str], items: Sequence[T]) -> dict[int, list[T]]:
        out: dict[int, list[T]] = {}
        for tag, item in zip(tags, items, strict=True):
            out.setdefault(self._shard(tag), []).append(item)
        return out

    def _forget(self, tags: Sequence[str]) -> None:
        with self._lock:
            for tag in tags:
                self._shard_of.pop(tag, None)
