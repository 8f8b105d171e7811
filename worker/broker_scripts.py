"""The worker's server-side scripts (``worker/broker.py`` calls them).

Each takes and moves messages in one atomic step, in kombu's Redis transport format: a queue is
one list per priority, fetched messages are recorded in ``unacked`` (tag -> [message, exchange,
routing_key]) and ``unacked_index`` (tag -> time), results are stored as Celery's Redis backend
stores them.
"""

from __future__ import annotations

from inferq.shared.lua import LuaScript

# Take up to N messages, highest priority list first, into hold lists (one for each of the
# queue's lists) and register the hold in the holding index, scored by time: one atomic step
# in which the messages never pass through Lua. A list taken whole is renamed; otherwise
# ``SORT .. BY nosort LIMIT .. STORE`` copies its oldest elements in C. (A script that pops
# messages into Lua values costs Redis about 8 us per 5 KB message before it does anything with
# them: 24 us per message for the pop-and-record script this replaced, 1.1 ms for a 200 KB
# ResNet input; with this script and the follow-up transaction, 9 us and 0.26 ms.)
# KEYS: the queue's lists, the hold's lists (as many), holding index.
# ARGV: max messages, now, the hold's holding member.
# Returns the number taken from each list. The hold lists share no hash slot with the queue:
# standalone Redis only, as kombu's Redis transport itself.
HOLD = LuaScript(
    """
local nq = (#KEYS - 1) / 2
local want = tonumber(ARGV[1])
local taken, counts = 0, {}
for i = 1, nq do
  local n = 0
  if taken < want then
    local len = redis.call('LLEN', KEYS[i])
    n = math.min(len, want - taken)
    if n > 0 then
      if n == len then  -- the whole list: moved as it is, whatever its size
        redis.call('RENAME', KEYS[i], KEYS[nq + i])
      else  -- kombu pushes on the left and pops on the right: the oldest n are the last n
        redis.call('SORT', KEYS[i], 'BY', 'nosort', 'LIMIT', len - n, n, 'STORE', KEYS[nq + i])
        redis.call('LTRIM', KEYS[i], 0, len - n - 1)
      end
      taken = taken + n
    end
  end
  counts[i] = n
end
if taken > 0 then
  redis.call('ZADD', KEYS[2 * nq + 1], ARGV[2], ARGV[3])
end
return counts
"""
)
# Put a hold that was never recorded as unacked (its worker died in between) back on its lists,
# oldest message last on the right, where the next pop takes it; once only, by whoever ZREMs.
# KEYS: holding index, the queue's lists, the hold's lists (as many). ARGV: the holding member.
RETURN_HOLD = LuaScript(
    """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local nq = (#KEYS - 1) / 2
local moved = 0
for i = 2, nq + 1 do
  local key = KEYS[nq + i]
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    redis.call('RPUSH', KEYS[i], raw)
    moved = moved + 1
  end
  redis.call('DEL', key)
end
return moved
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
STORE_CHUNK = 2000  # Lua's unpack() takes a few thousand values at most

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
