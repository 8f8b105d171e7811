"""A model's queue sharded over a Redis Cluster: shard names, each shard's bookkeeping keys, and
the cluster client.

On a standalone Redis a queue is kombu's (one list per priority) and its bookkeeping is shared by
every queue (``unacked``, ``unacked_index``, holds, ...). On a Redis Cluster a script may only
touch keys of one hash slot, so a model's queue is split into ``shards`` shards, each in a hash
slot of its own, and every key a script touches together with a shard's lists carries the same
hash tag: shard ``s`` of model ``m`` is tagged ``{inferq.m:s}``, its lists are
``inferq.m{inferq.m:s}`` (each version's queue ``inferq.m@v{inferq.m:s}``, so a version's limit
still counts the unversioned queue in one script), and its unacked hash, index, holds, scheduled
set, dead letters, epoch and push replies are all named with that tag. The scripts in
``worker/broker_scripts.py`` and ``producer/pusher.py`` thus run unchanged, one shard at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from inferq.shared import keys


@dataclass(frozen=True)
class Book:
    """The names of one queue family's bookkeeping (all of them in one hash slot on a cluster)."""

    tag: str  # "" on a standalone Redis; "{inferq.m:s}" for a shard
    unacked: str
    unacked_index: str
    holding: str
    hold_prefix: str
    dead_letter: str
    scheduled: str
    epoch: str
    push_reply_prefix: str

    def queue(self, queue: str) -> str:
        """The name ``queue`` takes in this shard (itself on a standalone Redis)."""
        return f"{queue}{self.tag}" if self.tag and not queue.endswith(self.tag) else queue

    def hold_key(self, fetcher: str, n: int) -> str:
        return f"{self.hold_prefix}{fetcher}:{n}"

    def push_reply_key(self, call_id: str) -> str:
        return f"{self.push_reply_prefix}{call_id}"


#: The standalone layout: kombu's own names, shared by every queue of the Redis.
STANDALONE = Book(
    tag="",
    unacked=keys.UNACKED,
    unacked_index=keys.UNACKED_INDEX,
    holding=keys.HOLDING,
    hold_prefix=keys.HOLD_PREFIX,
    dead_letter=keys.DEAD_LETTER,
    scheduled=keys.SCHEDULED,
    epoch=keys.EPOCH,
    push_reply_prefix=keys.PUSH_REPLY_PREFIX,
)


def shard_tag(model: str, shard: int) -> str:
    """The hash tag of one shard of ``model``'s queues."""
    return "{" + f"{keys.queue_name(model)}:{shard}" + "}"


def shard_book(model: str, shard: int) -> Book:
    """Shard ``shard`` of ``model``: its bookkeeping, every key in the shard's hash slot."""
    tag = shard_tag(model, shard)
    return Book(
        tag=tag,
        unacked=f"{keys.UNACKED}{tag}",
        unacked_index=f"{keys.UNACKED_INDEX}{tag}",
        holding=f"{keys.HOLDING}{tag}",
        # The tag first, so that the hold lists' own suffixes (":<n>:<list>") cannot move them.
        hold_prefix=f"{keys.HOLD_PREFIX}{tag}",
        dead_letter=f"{keys.DEAD_LETTER}{tag}",
        scheduled=f"{keys.SCHEDULED}{tag}",
        epoch=f"{keys.EPOCH}{tag}",
        push_reply_prefix=f"{keys.PUSH_REPLY_PREFIX}{tag}",
    )


def shard_books(model: str, shards: int) -> list[Book]:
    return [shard_book(model, s) for s in range(shards)]


def make_cluster_client(
    url: str, *, retries: int = 6, socket_timeout: float | None = 30.0
) -> RedisCluster:
    """A RedisCluster client for ``url`` (any node; ``rediss://`` and passwords as for
    ``make_client``): it finds the other nodes and routes each command to its slot's master,
    following MOVED after a failover; dropped connections are retried with backoff (``retries``
    0: never, for a call that is not safe to send twice)."""
    options: dict[str, Any] = {
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        "socket_keepalive": True,
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout,
    }
    return RedisCluster.from_url(url, **options)


#: What a cluster raises while a master is down or unreachable: its slots are not served
#: (CLUSTERDOWN, no node for the slot), besides the usual dropped connections.
CLUSTER_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    RedisClusterException,
)
