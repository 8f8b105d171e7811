"""Pushing to a model's queue sharded over a Redis Cluster.

Each group of messages (one queue, one priority) goes to one shard, the shards taken in rotation
so that requests spread evenly; the push is the standalone PUSH script, run in the shard's hash
slot (its lists, its epoch key and its reply key all carry the shard's tag), so admission and
the push are still one atomic step and a push sent again after a lost reply still pushes once.

The model's queue limit is shared out over the shards (``ceil(limit / shards)`` each). A group a
full shard refuses is offered to the next shards in turn; ``QueueFull`` is raised only when every
shard refused it, with the waiting count summed over the shards that answered.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from typing import Any

from redis.cluster import RedisCluster

from inferq.producer.pusher import PUSH, Prepared, _groups, push_one_by_one
from inferq.shared import ids, keys
from inferq.shared.cluster import CLUSTER_CONNECTION_ERRORS, Book, shard_books
from inferq.shared.errors import BrokerUnavailable, QueueFull


class ShardPusher:
    def __init__(self, cluster: RedisCluster, model: str, shards: int, where: str) -> None:
        self.client = cluster
        self.books: list[Book] = shard_books(model, shards)
        self.where = where  # the cluster's URL, redacted, for error messages
        self._next = itertools.count()
        self._lock = threading.Lock()

    def push(self, prepared: Sequence[Prepared]) -> str:
        """Push every group to a shard with room; returns "" (a cluster keeps no epoch: run it
        with persistence, see the README). Raises QueueFull (``accepted``: the task ids that
        went in) or BrokerUnavailable."""
        accepted: list[str] = []
        for group in _groups(prepared):
            try:
                self._push_group(group)
            except QueueFull as exc:
                exc.accepted = (*accepted, *exc.accepted)
                raise
            except CLUSTER_CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(
                    f"Redis Cluster at {self.where} must serve the queue's shards to submit, got "
                    f"{type(exc).__name__}: {exc}; {len(prepared) - len(accepted)} request(s) "
                    "not queued"
                ) from None
            accepted += [p.task_id for p in group]
        return ""

    def push_each(self, calls: Sequence[Sequence[Prepared]]) -> list[str | BaseException]:
        """Each of ``calls`` pushed as by its own ``push`` (one at a time: each group goes to
        the shard its turn picks): per call, "" or its error."""
        return push_one_by_one(self.push, calls)

    def _push_group(self, group: list[Prepared]) -> None:
        first = group[0]
        share = math.ceil(first.limit / len(self.books))
        with self._lock:
            start = next(self._next)
        waiting = 0
        for i in range(len(self.books)):
            book = self.books[(start + i) % len(self.books)]
            depth = self._push_to(book, group, share)
            if depth >= 0:
                return
            waiting += -depth - 1
        raise QueueFull(
            queue=first.queue,
            limit=first.limit,
            waiting=waiting,
            submitted=len(group),
            accepted=[],
        )

    def _push_to(self, book: Book, group: list[Prepared], limit: int) -> int:
        """The shard's new depth, or -(depth + 1) if it refused the group."""
        first = group[0]
        counted = first.counted or (first.queue,)
        lists = [key for q in counted for key in keys.queue_keys(book.queue(q))]
        script_keys = [*lists, book.epoch, book.push_reply_key(ids.token())]
        args: list[Any] = [
            limit,
            first.priority + 1,
            ids.token(),
            *(p.envelope for p in group),
        ]
        depth, _epoch = PUSH(self.client, script_keys, args)  # type: ignore[arg-type]
        return int(depth)
