"""The worker's Redis side: bulk fetch, pipelined store-and-ack, redelivery of expired messages.

It speaks kombu's Redis transport format exactly, so the queues stay ordinary Celery queues: any
Celery client can publish to them, and a message taken here but never acknowledged is restored by
this sweeper or by any kombu consumer after the visibility timeout.

* ``fetch``: a script moves up to N messages, highest priority list first, into hold lists that
  are registered with the time they were taken; a second round trip records them in
  ``unacked``/``unacked_index`` and drops the hold, in one transaction. At every moment each
  message is in a queue, a hold or unacked (kombu's own consumer pops, then records in a second
  round trip, so a crash between the two loses the message); holds left by a dead worker go
  back after the visibility timeout. Messages that are not kombu envelopes go to a dead-letter
  list instead.
* ``store_and_ack``: results (SET + PUBLISH, as Celery's Redis backend does), then the acks, in
  one pipelined round trip. Results are written before acks: a crash in between means the
  request is computed again and the same result written again (at-least-once, idempotent).
* ``until_redis_takes``: the retry policy for the calls that must not give up (recording a
  fetch, storing results): back off while Redis refuses writes or cannot be reached.

The Lua scripts these run are in ``worker/broker_scripts.py``.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson
import redis
from redis.exceptions import NoScriptError

from inferq.shared import keys
from inferq.shared.cluster import STANDALONE, Book
from inferq.shared.logs import get_logger
from inferq.shared.lua import execute_with_scripts
from inferq.shared.redisconn import as_text, raw_pipeline, raw_transaction
from inferq.worker.broker_scripts import (
    HOLD,
    PROMOTE,
    RESTORE,
    RETURN_HOLD,
    SCHEDULE,
    STORE_AND_ACK,
    STORE_CHUNK,
)
from inferq.worker.delivery import Delivery, read_redelivery, sniff_delivery

log = get_logger(__name__)

_DEFAULT_LIST = keys.priority_list_index(keys.DEFAULT_PRIORITY)


#: A fetched message: its delivery tag, the envelope, and kombu's unacked entry for it.
Fetched = Delivery


@dataclass(frozen=True)
class Taken:
    """What one fetch moved into its hold: kombu envelopes in delivery order, and the rest."""

    hold: str
    queue: str
    counts: tuple[int, ...]  # messages taken from each of the queue's lists
    fetched: tuple[Fetched, ...]
    dead: tuple[bytes, ...]


class Write(NamedTuple):
    """One result to store (``meta`` None: nothing to store, only the ack). A named tuple: one
    is made per request on the writer thread (see ``Outcome``)."""

    tag: str
    task_id: str | None
    meta: bytes | None


class QueueBroker(Protocol):
    """What the request path asks of a broker: ``Broker`` on a standalone Redis,
    ``worker/shards.py``'s ``ShardedBroker`` for a queue sharded over a Redis Cluster."""

    client: Any

    def take(self, queue: str, count: int) -> Taken | None: ...
    def record(self, taken: Taken) -> None: ...
    def wait(self, queue: str, timeout_s: float) -> bool: ...
    def depth(self, queue: str) -> int: ...
    def store_and_ack(self, writes: Sequence[Write]) -> None: ...
    def schedule(self, tag: str, eta: float, queue: str, priority: int, raw: bytes) -> bool: ...
    def promote_due(self, limit: int = 1000) -> int: ...
    def restore(self, tags: Sequence[str]) -> int: ...
    def restore_expired(self, visibility_timeout_s: float, limit: int = 500) -> int: ...
    def return_holds(self, older_than_s: float, limit: int = 100) -> int: ...


class Broker:
    def __init__(
        self,
        client: redis.Redis,
        result_client: redis.Redis,
        result_ttl_s: int,
        fetch_client: redis.Redis | None = None,
        book: Book = STANDALONE,
    ) -> None:
        self.client = client
        self.results = result_client
        # HOLD is not safe to send twice: a repeat after a lost reply would take more messages
        # while the first ones wait unseen in a hold. Its client does not retry; the fetch loop
        # does, and what a lost reply took comes back after the visibility timeout.
        self.fetch_client = fetch_client or client
        self.result_ttl_s = result_ttl_s
        # The bookkeeping's names: kombu's on a standalone Redis, a shard's on a cluster
        # (shared/cluster.py), so that every script's keys share the queue's hash slot.
        self.book = book
        self._same = result_client is client
        fetcher = uuid.uuid4().hex
        self._holds = (book.hold_key(fetcher, n) for n in itertools.count())

    def fetch(self, queue: str, count: int) -> list[Fetched]:
        """``take`` then ``record``: messages taken and recorded as unacked."""
        taken = self.take(queue, count)
        if taken is None:
            return []
        self.record(taken)
        return list(taken.fetched)

    def take(self, queue: str, count: int) -> Taken | None:
        """Up to ``count`` messages, highest priority first, oldest first, moved into a hold
        (one round trip: the hold script and reads of what it took); None when the queue is
        empty. Not safe to send twice, so never retried here: a lost reply leaves a hold that
        ``return_holds`` puts back."""
        hold = next(self._holds)
        counts, held = self._hold(keys.queue_keys(queue), hold, queue, count)
        if not any(counts):
            return None
        fetched, dead = _sort_out(held, queue)
        return Taken(hold, queue, tuple(counts), tuple(fetched), tuple(dead))

    def record(self, taken: Taken) -> None:
        """Record a hold's messages in kombu's unacked bookkeeping and drop the hold, in one
        transaction. Safe to repeat (after a lost reply, or while Redis refuses writes); a
        worker must not start on the messages before this returns."""
        commands: list[tuple[Any, ...]] = []
        if taken.fetched:
            # The score as text: hiredis turns each float into text again, 1 us a member.
            now = repr(time.time())
            commands += [
                (
                    "HSET",
                    self.book.unacked,
                    *[x for f in taken.fetched for x in (f.tag, f.unacked)],
                ),
                (
                    "ZADD",
                    self.book.unacked_index,
                    *[x for f in taken.fetched for x in (now, f.tag)],
                ),
            ]
        if taken.dead:  # not kombu envelopes: set aside, never retried forever
            commands += [
                ("LPUSH", self.book.dead_letter, *taken.dead),
                ("LTRIM", self.book.dead_letter, 0, keys.DEAD_LETTER_MAX - 1),
            ]
        held = keys.hold_lists(taken.hold)
        commands += [
            ("DEL", *(held[i] for i, n in enumerate(taken.counts) if n)),
            ("ZREM", self.book.holding, keys.holding_member(taken.hold, taken.queue)),
        ]
        raw_transaction(self.fetch_client, commands)

    def _hold(
        self, lists: Sequence[str], hold: str, queue: str, count: int
    ) -> tuple[list[int], list[list[bytes]]]:
        """The hold script and a read of the default-priority list's hold, pipelined: one round
        trip, and a second only when other priorities had messages too."""
        held = keys.hold_lists(hold)
        args = [count, repr(time.time()), keys.holding_member(hold, queue)]
        script = HOLD.command([*lists, *held, self.book.holding], args)
        for attempt in (1, 2):
            counts, default = raw_pipeline(
                self.fetch_client, [script, ("LRANGE", held[_DEFAULT_LIST], 0, -1)]
            )
            if isinstance(counts, NoScriptError) and attempt == 1:
                # A restarted Redis lost its scripts; the script did not run, nothing was taken.
                self.fetch_client.script_load(HOLD.source)
                continue
            if isinstance(counts, Exception):
                raise counts
            return [int(n) for n in counts], self._read_holds(hold, counts, default)
        raise AssertionError("unreachable")

    def _read_holds(
        self, hold: str, counts: Sequence[int], default: list[bytes]
    ) -> list[list[bytes]]:
        """Each list's hold, in the queue's list order (what the first round trip read, and the
        others' reads)."""
        others = [i for i, n in enumerate(counts) if n and i != _DEFAULT_LIST]
        read: dict[int, list[bytes]] = {_DEFAULT_LIST: default}
        if others:
            held = keys.hold_lists(hold)
            lists = raw_pipeline(self.fetch_client, [("LRANGE", held[i], 0, -1) for i in others])
            for i, part in zip(others, lists, strict=True):
                if isinstance(part, Exception):
                    raise part
                read[i] = part
        return [read.get(i, []) for i in range(len(counts))]

    def wait(self, queue: str, timeout_s: float) -> bool:
        """Block until the queue's default-priority list has a message (or timeout); takes nothing.

        ``BLMOVE q q RIGHT RIGHT`` pops the tail and pushes it back at the tail: a wake-up that
        leaves the list as it was.
        """
        key = keys.priority_queue_key(queue, keys.DEFAULT_PRIORITY)
        return self.client.blmove(key, key, timeout_s, "RIGHT", "RIGHT") is not None  # type: ignore[arg-type]

    def depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (all its priority lists), one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys.queue_keys(queue):
            pipe.llen(key)
        return sum(pipe.execute())

    def store_and_ack(self, writes: Sequence[Write]) -> None:
        """Results, then acks: one script call (one round trip, atomic) per chunk when results
        live in the broker's Redis; with a separate result Redis, results are stored first."""
        for i in range(0, len(writes), STORE_CHUNK):
            self._store_chunk(writes[i : i + STORE_CHUNK])

    def _store_chunk(self, writes: Sequence[Write]) -> None:
        results: list[str | bytes] = []
        for w in writes:
            if w.meta is not None and w.task_id is not None:
                results += (keys.RESULT_PREFIX + w.task_id, w.meta)
        tags = [w.tag for w in writes]
        unacked = [self.book.unacked, self.book.unacked_index]
        # Without redis-py's retries: the writer repeats the whole call until Redis takes it.
        if self._same:
            STORE_AND_ACK.call_raw(
                self.client, unacked, [self.result_ttl_s, len(results) // 2, *results, *tags]
            )
            return
        STORE_AND_ACK.call_raw(
            self.results, unacked, [self.result_ttl_s, len(results) // 2, *results]
        )
        STORE_AND_ACK.call_raw(self.client, unacked, [self.result_ttl_s, 0, *tags])

    def schedule(self, tag: str, eta: float, queue: str, priority: int, raw: bytes) -> bool:
        """Park a message until ``eta`` (seconds since the epoch); False if no longer held."""
        member = orjson.dumps([keys.priority_queue_key(queue, priority), raw.decode()])
        return bool(
            SCHEDULE(
                self.client,
                [self.book.unacked, self.book.unacked_index, self.book.scheduled],
                [tag, repr(eta), member],
            )
        )

    def promote_due(self, limit: int = 1000) -> int:
        """Put scheduled messages whose eta has come back on their queues."""
        return int(PROMOTE(self.client, [self.book.scheduled], [repr(time.time()), limit]))

    def restore(self, tags: Sequence[str]) -> int:
        """Put these unacked messages back on their queues now (warm shutdown, device failure)."""
        if not tags:
            return 0
        payloads: list[bytes | None] = self.client.hmget(self.book.unacked, list(tags))  # type: ignore[assignment]
        return self._restore_pairs([(t, p) for t, p in zip(tags, payloads, strict=True) if p])

    def restore_expired(self, visibility_timeout_s: float, limit: int = 500) -> int:
        """Redeliver messages unacked for longer than the visibility timeout (dead workers')."""
        ceiling = time.time() - visibility_timeout_s
        found: list[bytes] = self.client.zrangebyscore(
            self.book.unacked_index, "-inf", ceiling, 0, limit
        )  # type: ignore[assignment]
        tags = [as_text(t) for t in found]
        if not tags:
            return 0
        payloads: list[bytes | None] = self.client.hmget(self.book.unacked, tags)  # type: ignore[assignment]
        stale = [t for t, p in zip(tags, payloads, strict=True) if p is None]
        if stale:  # index entries whose message was acked between the two reads
            self.client.zrem(self.book.unacked_index, *stale)
        return self._restore_pairs([(t, p) for t, p in zip(tags, payloads, strict=True) if p])

    def return_holds(self, older_than_s: float, limit: int = 100) -> int:
        """Put back the holds of fetches that were never recorded as unacked (a worker died
        between its two fetch round trips); each goes back once, whoever sweeps first."""
        ceiling = time.time() - older_than_s
        members: list[bytes] = self.client.zrangebyscore(
            self.book.holding, "-inf", ceiling, 0, limit
        )  # type: ignore[assignment]
        moved = 0
        for member in members:
            hold, queue = keys.parse_holding_member(as_text(member))
            lists = [self.book.holding, *keys.queue_keys(queue), *keys.hold_lists(hold)]
            moved += int(RETURN_HOLD(self.client, lists, [member]))
        return moved

    def _restore_pairs(self, pairs: Sequence[tuple[str, bytes]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for tag, payload in pairs:
            try:
                back = read_redelivery(payload)
            except (ValueError, TypeError, KeyError, AttributeError):
                # not kombu's [message, exchange, routing_key]: set aside, never retried forever
                pipe.lpush(self.book.dead_letter, payload)
                pipe.hdel(self.book.unacked, tag)
                pipe.zrem(self.book.unacked_index, tag)
                continue
            queue = self.book.queue(self._lookup(back.exchange, back.routing_key))
            target = keys.priority_queue_key(queue, back.priority)
            RESTORE.queue(
                pipe,
                [self.book.unacked, self.book.unacked_index, target],
                [tag, back.message, payload],
            )
        replies = execute_with_scripts(pipe, self.client, [RESTORE])
        return sum(int(r) for r in replies if isinstance(r, int)) if pairs else 0

    def _lookup(self, exchange: str, routing_key: str) -> str:
        """kombu's direct-exchange lookup: the default exchange routes by queue name."""
        if not exchange:
            return routing_key
        for member in self.client.smembers(keys.binding_key(exchange)):
            parts = as_text(member).split(keys.PRIORITY_SEP)  # routing key, pattern, queue
            if len(parts) == 3 and parts[0] == routing_key:
                return parts[2]
        return routing_key


def until_redis_takes(
    action: Callable[[], object],
    what: str,
    *,
    stop: threading.Event | None = None,
    **fields: Any,
) -> bool:
    """Run ``action`` (a broker call safe to repeat) until Redis takes it, backing off from
    50 ms to 2 s while Redis refuses (out of memory, loading) or is unreachable; False if
    ``stop`` is set first. Without ``stop`` it never gives up: what it carries has nowhere
    else to wait."""
    delay = 0.05
    while True:
        try:
            action()
            return True
        except (redis.RedisError, OSError) as exc:
            if stop is not None and stop.is_set():
                return False
            log.warning(
                f"redis refused or unreachable while {what}; retrying", error=str(exc), **fields
            )
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _sort_out(held: Sequence[Sequence[bytes]], queue: str) -> tuple[list[Fetched], list[bytes]]:
    """The kombu envelopes among what a hold read back, in delivery order, and the rest."""
    fetched: list[Fetched] = []
    dead: list[bytes] = []
    for part in held:
        for raw in reversed(part):  # the oldest message of each list is the rightmost
            delivery = sniff_delivery(raw, queue)
            if delivery is None:
                dead.append(raw)
            else:
                fetched.append(delivery)
    return fetched, dead
