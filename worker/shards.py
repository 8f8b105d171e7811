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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from inferq.shared.cluster import CLUSTER_CONNECTION_ERRORS, Book, shard_books
from inferq.shared.logs import get_logger
from inferq.worker.broker import Broker, Fetched, Taken, Write

T = TypeVar("T")

log = get_logger(__name__)


class ShardedBroker:
    """One model's shards on a cluster, behind ``Broker``'s interface."""

    def __init__(
        self,
        cluster: RedisCluster,
        result_client: redis.Redis,
        result_ttl_s: int,
        model: str,
        shards: int,
        fetch_cluster: RedisCluster | None = None,
    ) -> None:
        self.client = cluster
        self.results = result_client
        self.result_ttl_s = result_ttl_s
        self.books: list[Book] = shard_books(model, shards)
        # As on a standalone Redis, the hold script goes through a client that never resends
        # it: a resent hold would overwrite the first one's lists (what a lost reply took comes
        # back after the visibility timeout instead).
        fetch: Any = fetch_cluster or cluster
        self.shards = [
            Broker(cluster, result_client, result_ttl_s, fetch, book)  # type: ignore[arg-type]
            for book in self.books
        ]
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._shard_of: dict[str, int] = {}  # delivery tag -> shard, from record to ack

    # -- fetching -----------------------------------------------------------------------------

    def take(self, queue: str, count: int) -> Taken | None:
        """Up to ``count`` messages from the first shard, in rotation, that has any. A shard
        whose master is down is passed over (the others keep being served); only if every
        shard failed does the error reach the fetch loop."""
        start = next(self._next)
        failed: Exception | None = None
        for i in range(len(self.shards)):
            s = (start + i) % len(self.shards)
            try:
                taken = self.shards[s].take(self.books[s].queue(queue), count)
            except CLUSTER_CONNECTION_ERRORS as exc:
                failed = exc
                continue
            if taken is not None:
                return taken
        if failed is not None:
            raise _as_connection_error(failed)
        return None

    def record(self, taken: Taken) -> None:
        s = self._shard_of_queue(taken.queue)
        with _unreachable_as_connection_error():
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
        with _unreachable_as_connection_error():
            return self.shards[s].wait(self.books[s].queue(queue), timeout_s / len(self.shards))

    # -- results and acks ---------------------------------------------------------------------

    def store_and_ack(self, writes: Sequence[Write]) -> None:
        """Each shard's writes: results on the result Redis first, then the shard's acks. Safe
        to repeat (``until_redis_takes``): tags are forgotten once every shard took its acks."""
        with _unreachable_as_connection_error():
            for s, part in self._by_shard([w.tag for w in writes], writes).items():
                self.shards[s].store_and_ack(part)
        self._forget([w.tag for w in writes])

    def schedule(self, tag: str, eta: float, queue: str, priority: int, raw: bytes) -> bool:
        s = self._shard(tag)
        with _unreachable_as_connection_error():
            parked = self.shards[s].schedule(tag, eta, self.books[s].queue(queue), priority, raw)
        self._forget([tag])
        return parked

    def restore(self, tags: Sequence[str]) -> int:
        restored = 0
        with _unreachable_as_connection_error():
            for s, part in self._by_shard(tags, tags).items():
                restored += self.shards[s].restore(part)
                self._forget(part)
        return restored

    # -- housekeeping -------------------------------------------------------------------------

    def promote_due(self, limit: int = 1000) -> int:
        return self._each(lambda b, _: b.promote_due(limit))

    def restore_expired(self, visibility_timeout_s: float, limit: int = 500) -> int:
        return self._each(lambda b, _: b.restore_expired(visibility_timeout_s, limit))

    def return_holds(self, older_than_s: float, limit: int = 100) -> int:
        return self._each(lambda b, _: b.return_holds(older_than_s, limit))

    def depth(self, queue: str) -> int:
        return self._each(lambda b, book: b.depth(book.queue(queue)))

    def _each(self, step: Callable[[Broker, Book], int]) -> int:
        """``step`` on every shard, summed; a shard whose master is down is skipped this time
        (its sweep runs at the next tick), so the others are kept."""
        total = 0
        for shard, book in zip(self.shards, self.books, strict=True):
            try:
                total += step(shard, book)
            except CLUSTER_CONNECTION_ERRORS as exc:
                log.warning(
                    "a shard's master is unreachable; skipped", shard=book.tag, error=str(exc)
                )
        return total

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


def _as_connection_error(exc: Exception) -> Exception:
    """A cluster's "slot not served" errors as redis-py's ConnectionError: what the fetch loop
    and ``until_redis_takes`` wait out (they are not all RedisError subclasses)."""
    if isinstance(exc, redis.RedisError | OSError):
        return exc
    return redis.ConnectionError(f"{type(exc).__name__}: {exc}")


@contextmanager
def _unreachable_as_connection_error() -> Iterator[None]:
    try:
        yield
    except CLUSTER_CONNECTION_ERRORS as exc:
        raise _as_connection_error(exc) from exc
