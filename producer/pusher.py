"""Pushing prepared messages: the admission script, and concurrent callers coalesced into one trip.

Every call pushes its messages with the PUSH script, which refuses them in the same round trip when
the queue is at its limit. When several threads call ``.delay`` at once, the first one becomes the
leader: it sends its own script calls and those of everyone who queued meanwhile in one pipeline,
then hands the lead to the next waiting caller, if any (so no caller carries others' work for more
than one round trip, and a lone caller never waits on another thread). Each caller keeps its own
script calls and replies, so ``QueueFull`` and ``BrokerUnavailable`` are raised by the call they
concern, and a message is pushed once.

The pipeline is written on a pooled connection directly: redis-py's per-command machinery costs
more than the round trip itself at these sizes. On a connection error the same calls go through
the ordinary client with its retries; each call's reply key makes that replay safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from inferq.shared import ids, keys
from inferq.shared.errors import BrokerUnavailable, QueueFull
from inferq.shared.lua import LuaScript, execute_with_scripts
from inferq.shared.redisconn import CONNECTION_ERRORS, as_text, raw_pipeline

# Push messages only if the queue (all its priority lists) stays within its limit.
# KEYS: every priority list of the queue, the epoch key, this call's reply key.
# ARGV: limit, target list index (1-based), a fresh epoch token (used if none is set), messages...
# Returns {new depth, or -(depth + 1) when refused; the epoch}. A call sent again after a lost
# reply (the client retries on connection errors) finds its reply key and pushes nothing twice.
PUSH = LuaScript(
    """
local nq = #KEYS - 2
local earlier = redis.call('GET', KEYS[nq + 2])
if earlier then return cjson.decode(earlier) end
local epoch = redis.call('GET', KEYS[nq + 1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[nq + 1], epoch)
end
local depth = 0
for i = 1, nq do depth = depth + redis.call('LLEN', KEYS[i]) end
local n = #ARGV - 3
local reply = {depth + n, epoch}
if depth + n > tonumber(ARGV[1]) then
  reply = {-(depth + 1), epoch}
else
  for i = 4, #ARGV do redis.call('LPUSH', KEYS[tonumber(ARGV[2])], ARGV[i]) end
end
redis.call('SET', KEYS[nq + 2], cjson.encode(reply), 'EX', 300)
return reply
"""
)

_MAX_PUSH_BYTES = 8 * 1024 * 1024  # per script call: keeps Redis responsive to other clients


@dataclass(frozen=True)
class Prepared:
    """One message ready to push: the queue list it goes to and its kombu envelope."""

    task_id: str
    queue: str
    priority: int
    limit: int
    envelope: bytes
    #: The queues whose lists count against ``limit``, ``queue`` first (a version's queue also
    #: counts the model's unversioned one, which workers of the serving version drain too).
    counted: tuple[str, ...] = ()


class _Call:
    """One caller's push: its script calls, then their replies or the error that stopped them."""

    __slots__ = ("commands", "error", "event", "groups", "lead", "replies")

    def __init__(self, groups: list[list[Prepared]], commands: list[tuple[Any, ...]]) -> None:
        self.groups = groups
        self.commands = commands
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.event: threading.Event | None = None
        self.lead = False


class Pusher:
    def __init__(self, client: redis.Redis, where: str) -> None:
        self.client = client
        self.where = where  # the broker's URL, redacted, for error messages
        self._lock = threading.Lock()
        self._queued: list[_Call] = []
        self._busy = False

    def push(self, prepared: Sequence[Prepared]) -> str:
        """Push in one round trip (shared with concurrent callers) and return Redis' epoch; raise
        QueueFull (with ``accepted`` task ids) if any group was refused."""
        [outcome] = self.push_each([prepared])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def push_each(self, calls: Sequence[Sequence[Prepared]]) -> list[str | BaseException]:
        """Push each of ``calls`` as if by its own ``push``, all of them in one round trip (shared
        with concurrent callers): for each, Redis' epoch or the error its ``push`` would raise
        (``QueueFull``, ``BrokerUnavailable``). The asyncio client's submitter hands over
        everything its callers queued at once this way."""
        if not calls:
            return []
        token = ids.token()
        made = []
        for prepared in calls:
            groups = list(_groups(prepared))
            made.append(_Call(groups, [_script_call(group, token) for group in groups]))
        self._take_part(made)
        return [self._outcome(call, len(p)) for call, p in zip(made, calls, strict=True)]

    def _outcome(self, call: _Call, count: int) -> str | BaseException:
        if isinstance(call.error, CONNECTION_ERRORS):
            return BrokerUnavailable(
                f"Redis at {self.where} must be reachable to submit, got "
                f"{type(call.error).__name__}: {call.error}; {count} request(s) not queued"
            )
        if call.error is not None:
            return call.error
        try:
            return _outcome(call.groups, call.replies)
        except QueueFull as exc:
            return exc

    # -- coalescing ---------------------------------------------------------------------------

    def _take_part(self, calls: list[_Call]) -> None:
        """Queue ``calls`` together; lead, or wait for a leader to send them (their first
        call carries the wait: a leader takes the whole queue at once, so they go together)."""
        call = calls[0]
        with self._lock:
            self._queued.extend(calls)
            follow = self._busy
            self._busy = True
            if follow:
                call.event = threading.Event()
        if follow:
            assert call.event is not None
            call.event.wait()
            if not call.lead:
                return  # a leader sent it
        self._lead()

    def _lead(self) -> None:
        with self._lock:
            batch, self._queued = self._queued, []
        try:
            self._send(batch)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            if not self._queued:
                self._busy = False
                return
            successor = self._queued[0]
        successor.lead = True
        assert successor.event is not None
        successor.event.set()

    def _send(self, batch: list[_Call]) -> None:
        commands = [command for call in batch for command in call.commands]
        try:
            replies = self._execute(commands)
        except BaseException as exc:
            for call in batch:
                call.error = exc
        else:
            at = 0
            for call in batch:
                call.replies = replies[at : at + len(call.commands)]
                at += len(call.commands)
        for call in batch:
            if call.event is not None and not call.lead:
                call.event.set()

    # -- the round trip -----------------------------------------------------------------------

    def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            replies = raw_pipeline(self.client, commands)
        except CONNECTION_ERRORS:
            return self._execute_with_retries(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            return self._execute_with_retries(commands)  # reply keys: what ran is not redone
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _execute_with_retries(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return execute_with_scripts(pipe, self.client, [PUSH])


def push_one_by_one(
    push: Callable[[Sequence[Prepared]], str], calls: Sequence[Sequence[Prepared]]
) -> list[str | BaseException]:
    """``push_each`` for a pusher that sends one call at a time (a cluster's routes each group to
    its shard): per call, what its ``push`` returned or raised."""
    outcomes: list[str | BaseException] = []
    for prepared in calls:
        try:
            outcomes.append(push(prepared))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _script_call(group: list[Prepared], token: str) -> tuple[Any, ...]:
    first = group[0]
    lists = _counted_lists(first)
    reply_key = keys.push_reply_key(ids.token())
    script_keys = [*lists, keys.EPOCH, reply_key]
    args = [first.limit, first.priority + 1, token, *(p.envelope for p in group)]
    return ("EVALSHA", PUSH.sha, len(script_keys), *script_keys, *args)


def _outcome(groups: list[list[Prepared]], replies: list[Any]) -> str:
    depths = [int(depth) for depth, _ in replies]
    refused = [(g, d) for g, d in zip(groups, depths, strict=True) if d < 0]
    if refused:
        accepted = [p.task_id for g, d in zip(groups, depths, strict=True) if d >= 0 for p in g]
        group, depth = refused[0]
        raise QueueFull(
            queue=group[0].queue,
            limit=group[0].limit,
            waiting=-depth - 1,
            submitted=len(group),
            accepted=accepted,
        )
    return as_text(replies[-1][1])


def _counted_lists(p: Prepared) -> list[str]:
    """Every list counted against the limit; the first ten are the target queue's (PUSH's index)."""
    return [key for queue in p.counted or (p.queue,) for key in keys.queue_keys(queue)]


def _groups(prepared: Sequence[Prepared]) -> Iterable[list[Prepared]]:
    """Messages of the same list, in order, chunked to at most _MAX_PUSH_BYTES per script call."""
    by_list: dict[tuple[str, int], list[Prepared]] = {}
    for p in prepared:
        by_list.setdefault((p.queue, p.priority), []).append(p)
    for items in by_list.values():
        chunk: list[Prepared] = []
        size = 0
        for p in items:
            if chunk and size + len(p.envelope) > _MAX_PUSH_BYTES:
                yield chunk
                chunk, size = [], 0
            chunk.append(p)
            size += len(p.envelope)
        yield chunk
