"""``gather``: many results collected in about one round trip per batch of them.

It subscribes to every result's channel, reads what is already stored with one MGET, then takes
publications as they come (sweeping again after every poll, for what was published while it
subscribed). A request that a Redis restart took away (the epoch its push recorded is gone, and it
is neither queued, held nor stored once workers have had their visibility timeout to finish it)
ends as ``RequestLost`` instead of leaving the caller waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import orjson
import redis
from celery.result import AsyncResult

from inferq.producer.client import runtime
from inferq.producer.placed import Lane
from inferq.shared import keys
from inferq.shared.errors import InferqError, RequestLost
from inferq.shared.redisconn import CONNECTION_ERRORS, as_text
from inferq.shared.results import FINAL_STATES, InferenceResult, value_from_decoded

Outcome = InferenceResult | InferqError


@overload
def gather(
    results: Sequence[AsyncResult | str],
    timeout: float | None = None,
    *,
    return_exceptions: Literal[False] = False,
    poll_s: float = 1.0,
    on_result: Callable[[int], None] | None = None,
) -> list[InferenceResult]: ...


@overload
def gather(
    results: Sequence[AsyncResult | str],
    timeout: float | None = None,
    *,
    return_exceptions: bool,
    poll_s: float = 1.0,
    on_result: Callable[[int], None] | None = None,
) -> list[Outcome]: ...


def gather(
    results: Sequence[AsyncResult | str],
    timeout: float | None = None,
    *,
    return_exceptions: bool = False,
    poll_s: float = 1.0,
    on_result: Callable[[int], None] | None = None,
) -> list[InferenceResult] | list[Outcome]:
    """Wait for many results: subscribe to all, then one MGET, then read publications as they come.

    Returns result dicts in order. A failed request raises its typed error, or, with
    ``return_exceptions=True``, stands in the list as the error. Raises ``TimeoutError`` naming how
    many are still pending when ``timeout`` passes. ``on_result(i)`` is called as result i arrives.
    """
    ids = [r if isinstance(r, str) else r.id for r in results]
    epochs = [None if isinstance(r, str) else getattr(r, "inferq_epoch", None) for r in results]
    rt = runtime()
    grace = max(LOST_GRACE_S, rt.settings.visibility_timeout_s)
    deadline = None if timeout is None else time.monotonic() + timeout
    out: list[Outcome] = [None] * len(ids)  # type: ignore[list-item]
    for lane, members in _by_lane(ids).items():  # models placed on other Redis: one pass each
        on_member = None if on_result is None else _mapped(on_result, members)
        collector = _Collector(
            lane.broker,
            lane.results,
            [ids[i] for i in members],
            [epochs[i] for i in members],
            on_member,
            grace,
        )
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        collector.run(remaining, poll_s)
        for j, i in enumerate(members):
            out[i] = collector.values[j]
    if return_exceptions:
        return out
    values: list[InferenceResult] = []
    for value in out:
        if isinstance(value, InferqError):
            raise value
        values.append(value)
    return values


def _by_lane(ids: Sequence[str]) -> dict[Lane, list[int]]:
    """The positions of ``ids`` grouped by the lane their results are on (home for most)."""
    lanes = runtime().lanes
    groups: dict[Lane, list[int]] = {}
    for i, task_id in enumerate(ids):
        groups.setdefault(lanes.lane_of(task_id), []).append(i)
    return groups


def _mapped(on_result: Callable[[int], None], members: list[int]) -> Callable[[int], None]:
    return lambda j: on_result(members[j])


# After Redis comes back empty, requests still held by workers finish within the visibility timeout
# (workers refuse settings that could hold one longer); whatever is neither stored nor queued
# after that long, and at least this long, was lost with the restart.
LOST_GRACE_S = 10.0


class _Collector:
    def __init__(
        self,
        broker: redis.Redis,
        results: redis.Redis,
        ids: list[str],
        epochs: list[str | None],
        on_result: Callable[[int], None] | None,
        grace_s: float,
    ) -> None:
        self.client = broker
        self.results = results
        self.grace_s = grace_s
        self.on_result = on_result
        self.epochs = {keys.result_key(i): e for i, e in zip(ids, epochs, strict=True) if e}
        self.restart_seen_at: float | None = None
        self.keys = [keys.result_key(i) for i in ids]
        self.index: dict[str, list[int]] = {}
        for i, k in enumerate(self.keys):
            self.index.setdefault(k, []).append(i)
        self.values: dict[int, Outcome] = {}
        self.waiting: set[str] = set(self.index)

    def pending(self) -> list[str]:
        return list(self.waiting)

    def run(self, timeout: float | None, poll_s: float) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.results.pubsub(ignore_subscribe_messages=True)
        try:
            for i in range(0, len(self.keys), 1000):
                pubsub.subscribe(*self.keys[i : i + 1000])
            self._sweep()
            while self.waiting:
                self._listen(pubsub, deadline, poll_s)
        finally:
            pubsub.close()

    def _listen(self, pubsub: Any, deadline: float | None, poll_s: float) -> None:
        until = time.monotonic() + poll_s
        while self.waiting and time.monotonic() < until:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"gather: {len(self.waiting)} of {len(self.keys)} results still pending"
                )
            try:
                msg = pubsub.get_message(timeout=min(0.2, poll_s))
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.2)  # Redis restarting: the subscription is renewed on reconnect
                return
            if msg is not None and msg.get("type") == "message":
                self._record(msg["channel"].decode(), msg["data"])
        self._sweep()  # covers publications missed while (re)subscribing

    def _orphans(self) -> list[str]:
        """Pending results whose request was submitted under an epoch Redis no longer has."""
        if not self.epochs:
            return []
        current = self.client.get(keys.EPOCH)
        now = as_text(current) if current is not None else None
        return [k for k in self.pending() if self.epochs.get(k, now) != now]

    def _check_restart(self) -> None:
        """Fail, with RequestLost, what a Redis restart took away instead of waiting forever."""
        try:
            orphans = self._orphans()
        except CONNECTION_ERRORS:
            return
        if not orphans:
            self.restart_seen_at = None
            return
        now = time.monotonic()
        if self.restart_seen_at is None:
            self.restart_seen_at = now
        if now - self.restart_seen_at < self.grace_s:
            return
        held = self._queued_blob()
        for key in self.pending():
            task_id = key[len(keys.RESULT_PREFIX) :]
            if key in orphans and task_id.encode() not in held:
                self._set(key, RequestLost(task_id=task_id))
        self.restart_seen_at = None

    def _queued_blob(self) -> bytes:
        """Every message now in an inferq queue or held unacknowledged, as one searchable blob."""
        parts: list[bytes] = list(self.client.hvals(keys.UNACKED))  # type: ignore[arg-type]
        for key in self.client.scan_iter(match=f"{keys.QUEUE_PREFIX}*", count=1000, _type="list"):
            parts.extend(self.client.lrange(key, 0, -1))  # type: ignore[arg-type]
        return b"\n".join(parts)

    def _sweep(self) -> None:
        self._fetch_stored()
        self._check_restart()

    def _fetch_stored(self) -> None:
        pending = self.pending()
        for i in range(0, len(pending), 1000):
            chunk = pending[i : i + 1000]
            try:
                values = self.results.mget(chunk)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return
            for key, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    self._record(key, raw)

    def _record(self, key: str, raw: bytes | str) -> None:
        if key not in self.index:
            return
        meta = orjson.loads(raw)
        if meta.get("status") not in FINAL_STATES:
            return
        try:
            value: Outcome = value_from_decoded(meta)
        except InferqError as exc:
            value = exc
        self._set(key, value)

    def _set(self, key: str, value: Outcome) -> None:
        self.waiting.discard(key)
        for i in self.index[key]:
            if i not in self.values and self.on_result is not None:
                self.on_result(i)
            self.values[i] = value
