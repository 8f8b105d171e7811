"""The worker's Redis side: bulk fetch, pipelined store-and-ack, redelivery of expired messages.

It speaks kombu's Redis transport format exactly, so the queues stay ordinary Celery queues: any
Celery client can publish to them, and a message taken here but never acknowledged is restored by
this sweeper or by any kombu consumer after the visibility timeout.

* ``fetch``: one script call pops up to N messages, highest priority list first, and records each
  in ``unacked``/``unacked_index`` in the same atomic step (kombu's own consumer pops, then records
  in a second round trip, so a crash between the two loses the message; here nothing can fall
  between). Messages that are not kombu envelopes go to a dead-letter list instead.
* ``store_and_ack``: results (SET + PUBLISH, as Celery's Redis backend does), then the acks, in
  one pipelined round trip. Results are written before acks: a crash in between means the
  request is computed again and the same result written again (at-least-once, idempotent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis

from shared import keys
from shared.lua import LuaScript, execute_with_scripts

DEAD_LETTER = "inferq.deadletter"
SCHEDULED = "inferq:scheduled"  # messages whose eta is further than ETA_HORIZON_S away
DEAD_LETTER_MAX = 10_000

# KEYS: the queue's lists (highest priority first), unacked hash, unacked index, dead-letter list.
# ARGV: max messages, now (seconds), the queue name (routing key when a message lacks one).
# Returns a flat list: tag1, raw1, tag2, raw2, ...
FETCH = LuaScript(
    """
local nq = #KEYS - 3
local unacked, index, dead = KEYS[nq + 1], KEYS[nq + 2], KEYS[nq + 3]
local want, now = tonumber(ARGV[1]), ARGV[2]
local out = {}
for i = 1, nq do
  local left = want - #out / 2
  if left <= 0 then break end
  local got = redis.call('RPOP', KEYS[i], left)
  if got then
    for _, raw in ipairs(got) do
      -- A full cjson.decode of every message costs Redis more than everything else here together;
      -- the three fields needed are found by pattern, with the decoder as the fallback.
      local at = string.find(raw, '"properties"', 1, true) or 1
      local tag = string.match(raw, '"delivery_tag"%s*:%s*"([^"\\]+)"', at)
      local ex = string.match(raw, '"exchange"%s*:%s*"([^"\\]*)"', at)
      local rk = string.match(raw, '"routing_key"%s*:%s*"([^"\\]*)"', at)
      if not tag or string.sub(raw, 1, 1) ~= '{' then
        local ok, msg = pcall(cjson.decode, raw)
        local props = ok and type(msg) == 'table' and msg.properties
        tag = type(props) == 'table' and props.delivery_tag
        local info = type(props) == 'table' and type(props.delivery_info) == 'table' and props.delivery_info or {}
        ex = type(info.exchange) == 'string' and info.exchange or nil
        rk = type(info.routing_key) == 'string' and info.routing_key or nil
      end
      if type(tag) == 'string' and tag ~= '' then
        ex = cjson.encode(ex or '')
        rk = cjson.encode(rk or ARGV[3])
        redis.call('HSET', unacked, tag, '[' .. raw .. ',' .. ex .. ',' .. rk .. ']')
        redis.call('ZADD', index, now, tag)
        out[#out + 1] = tag
        out[#out + 1] = raw
      else
        redis.call('LPUSH', dead, raw)
        redis.call('LTRIM', dead, 0, tonumber(ARGV[4]) - 1)
      end
    end
  end
end
return out
"""
)

# Put one unacked message back on its list, unless someone acked or restored it first, or it was
# restored and fetched again in between (then the entry is a new delivery's and stays).
# KEYS: unacked, unacked index, target list. ARGV: tag, message, the entry as it was read.
RESTORE = LuaScript(
    """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""
)


# Store results the way Celery's Redis backend does (SET with expiry + PUBLISH on the key), then
# acknowledge, atomically. KEYS: unacked, unacked index.
# ARGV: ttl, n, then n (result key, meta) pairs, then the delivery tags to ack.
STORE_AND_ACK = LuaScript(
    """
local ttl, n = ARGV[1], tonumber(ARGV[2])
for i = 0, n - 1 do
  local key, meta = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  redis.call('SET', key, meta, 'EX', ttl)
  redis.call('PUBLISH', key, meta)
end
local first = 3 + 2 * n
if #ARGV >= first then
  redis.call('HDEL', KEYS[1], unpack(ARGV, first))
  redis.call('ZREM', KEYS[2], unpack(ARGV, first))
end
return n
"""
)
_STORE_CHUNK = 2000  # Lua's unpack() takes a few thousand values at most

# Park a fetched message until its eta: out of the unacked bookkeeping (so no visibility timeout
# redelivers it while it waits) and into a sorted set scored by eta, in one atomic step.
# KEYS: unacked, unacked index, scheduled. ARGV: tag, eta, member ([list key, message] as JSON).
SCHEDULE = LuaScript(
    """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  return 1
end
return 0
"""
)

# Move scheduled messages that are due back onto their lists. KEYS: scheduled. ARGV: now, limit.
PROMOTE = LuaScript(
    """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local ok, entry = pcall(cjson.decode, member)
  if ok and type(entry) == 'table' and type(entry[1]) == 'string' and type(entry[2]) == 'string' then
    redis.call('RPUSH', entry[1], entry[2])
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
)


@dataclass(frozen=True)
class Fetched:
    tag: str
    raw: bytes


@dataclass(frozen=True)
class Write:
    """One result to store (``meta`` None: nothing to store, only the ack)."""

    tag: str
    task_id: str | None
    meta: bytes | None


class Broker:
    def __init__(
        self,
        client: redis.Redis,
        result_client: redis.Redis,
        result_ttl_s: int,
        fetch_client: redis.Redis | None = None,
    ) -> None:
        self.client = client
        self.results = result_client
        # FETCH is not safe to send twice: a repeat after a lost reply would take more messages
        # while the first ones wait unseen in unacked. Its client does not retry; the fetch loop
        # does, and what a lost reply took comes back after the visibility timeout.
        self.fetch_client = fetch_client or client
        self.result_ttl_s = result_ttl_s
        self._same = result_client is client

    def fetch(self, queue: str, count: int) -> list[Fetched]:
        keys_ = [*keys.queue_keys(queue), keys.UNACKED, keys.UNACKED_INDEX, DEAD_LETTER]
        flat = FETCH(self.fetch_client, keys_, [count, repr(time.time()), queue, DEAD_LETTER_MAX])
        return [Fetched(_text(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    def wait(self, queue: str, timeout_s: float) -> bool:
        """Block until the queue's default-priority list has a message (or timeout); takes nothing.

        ``BLMOVE q q RIGHT RIGHT`` pops the tail and pushes it back at the tail: a wake-up that
        leaves the list as it was.
        """
        key = keys.priority_queue_key(queue, keys.DEFAULT_PRIORITY)
        return self.client.blmove(key, key, timeout_s, "RIGHT", "RIGHT") is not None  # type: ignore[arg-type]

    def store_and_ack(self, writes: Sequence[Write]) -> None:
        """Results, then acks: one script call (one round trip, atomic) per chunk when results
        live in the broker's Redis; with a separate result Redis, results are stored first."""
        for i in range(0, len(writes), _STORE_CHUNK):
            self._store_chunk(writes[i : i + _STORE_CHUNK])

    def _store_chunk(self, writes: Sequence[Write]) -> None:
        results: list[str | bytes] = []
        for w in writes:
            if w.meta is not None and w.task_id is not None:
                results += (keys.RESULT_PREFIX + w.task_id, w.meta)
        tags = [w.tag for w in writes]
        unacked = [keys.UNACKED, keys.UNACKED_INDEX]
        if self._same:
            STORE_AND_ACK(
                self.client, unacked, [self.result_ttl_s, len(results) // 2, *results, *tags]
            )
            return
        STORE_AND_ACK(self.results, unacked, [self.result_ttl_s, len(results) // 2, *results])
        STORE_AND_ACK(self.client, unacked, [self.result_ttl_s, 0, *tags])

    def schedule(self, tag: str, eta: float, queue: str, priority: int, raw: bytes) -> bool:
        """Park a message until ``eta`` (seconds since the epoch); False if no longer held."""
        member = orjson.dumps([keys.priority_queue_key(queue, priority), raw.decode()])
        return bool(
            SCHEDULE(
                self.client, [keys.UNACKED, keys.UNACKED_INDEX, SCHEDULED], [tag, repr(eta), member]
            )
        )

    def promote_due(self, limit: int = 1000) -> int:
        """Put scheduled messages whose eta has come back on their queues."""
        return int(PROMOTE(self.client, [SCHEDULED], [repr(time.time()), limit]))

    def restore(self, tags: Sequence[str]) -> int:
        """Put these unacked messages back on their queues now (warm shutdown, device failure)."""
        if not tags:
            return 0
        payloads: list[bytes | None] = self.client.hmget(keys.UNACKED, list(tags))  # type: ignore[assignment]
        return self._restore_pairs([(t, p) for t, p in zip(tags, payloads, strict=True) if p])

    def restore_expired(self, visibility_timeout_s: float, limit: int = 500) -> int:
        """Redeliver messages unacked for longer than the visibility timeout (dead workers')."""
        ceiling = time.time() - visibility_timeout_s
        found: list[bytes] = self.client.zrangebyscore(
            keys.UNACKED_INDEX, "-inf", ceiling, 0, limit
        )  # type: ignore[assignment]
        tags = [_text(t) for t in found]
        if not tags:
            return 0
        payloads: list[bytes | None] = self.client.hmget(keys.UNACKED, tags)  # type: ignore[assignment]
        stale = [t for t, p in zip(tags, payloads, strict=True) if p is None]
        if stale:  # index entries whose message was acked between the two reads
            self.client.zrem(keys.UNACKED_INDEX, *stale)
        return self._restore_pairs([(t, p) for t, p in zip(tags, payloads, strict=True) if p])

    def _restore_pairs(self, pairs: Sequence[tuple[str, bytes]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for tag, payload in pairs:
            try:
                target, message = self._restore_target(payload)
            except (ValueError, TypeError, KeyError, AttributeError):
                # not kombu's [message, exchange, routing_key]: set aside, never retried forever
                pipe.lpush(DEAD_LETTER, payload)
                pipe.hdel(keys.UNACKED, tag)
                pipe.zrem(keys.UNACKED_INDEX, tag)
                continue
            RESTORE.queue(pipe, [keys.UNACKED, keys.UNACKED_INDEX, target], [tag, message, payload])
        replies = execute_with_scripts(pipe, self.client, [RESTORE])
        return sum(int(r) for r in replies if isinstance(r, int)) if pairs else 0

    def _restore_target(self, payload: bytes) -> tuple[str, str]:
        """The list a stored ``[message, exchange, routing_key]`` goes back to, and the message
        marked redelivered (as kombu marks it)."""
        message, exchange, routing_key = json.loads(payload)
        headers = message.get("headers")
        if isinstance(headers, dict):
            headers["redelivered"] = True
        props = message.setdefault("properties", {})
        info = props.get("delivery_info")
        if isinstance(info, dict):
            info["redelivered"] = True
        queue = self._lookup(exchange, routing_key)
        priority = min(9, max(0, int(props.get("priority") or 0)))
        return keys.priority_queue_key(queue, priority), json.dumps(message, separators=(",", ":"))

    def _lookup(self, exchange: str, routing_key: str) -> str:
        """kombu's direct-exchange lookup: the default exchange routes by queue name."""
        if not exchange:
            return routing_key
        for member in self.client.smembers(f"_kombu.binding.{exchange}"):
            parts = _text(member).split(keys.PRIORITY_SEP)  # routing key, pattern, queue
            if len(parts) == 3 and parts[0] == routing_key:
                return parts[2]
        return routing_key


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
