"""What ``inferq status`` reports of a model: published versions, policy, workers and backlog.

The backlog is every request the model still owes an answer for: what waits in any priority list
of its unversioned queue and of each published version's queue, what is scheduled for later (an
eta), and what workers have taken but not yet acknowledged (in hand). That sum, and nothing less,
is what a pool scaled from zero must wake up for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from inferq.shared import keys
from inferq.shared.cluster import STANDALONE, Book
from inferq.shared.policy import ModelRecord
from inferq.shared.registry import Registry

# The last element of kombu's unacked entry ``[message, exchange, routing_key]`` and the first of
# a scheduled member ``[list key, message]``: read without decoding the (large) message.
_ROUTING_KEY = re.compile(rb',\s*("(?:[^"\\]|\\.)*")\s*\]\s*$')
_LIST_KEY = re.compile(rb'^\[\s*("(?:[^"\\]|\\.)*")')
_SCAN = 1000


@dataclass(frozen=True)
class Backlog:
    """Requests a model owes: waiting by priority (all its queues), scheduled, and in hand."""

    by_priority: dict[int, int]
    by_queue: dict[str, int]
    scheduled: int
    in_hand: int

    @property
    def waiting(self) -> int:
        return sum(self.by_priority.values())

    @property
    def total(self) -> int:
        return self.waiting + self.scheduled + self.in_hand


@dataclass(frozen=True)
class WorkerSeen:
    """A worker listed under a model, with what its own heartbeat entry says of it; ``host``
    is None once that entry expired (the worker missed its heartbeats: gone or stuck)."""

    name: str
    last_heartbeat: float  # wall-clock seconds
    host: str | None = None
    device: str | None = None
    versions: dict[str, int] = field(default_factory=dict)
    ready: bool = False

    @property
    def alive(self) -> bool:
        return self.host is not None

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "last_heartbeat": self.last_heartbeat,
            "age_s": now - self.last_heartbeat,
            "alive": self.alive,
            "host": self.host,
            "device": self.device,
            "versions": self.versions,
            "ready": self.ready,
        }

    @classmethod
    def read(cls, name: str, score: float, entry: dict[bytes, bytes]) -> WorkerSeen:
        """From the model's list (name, score) and the worker's hash (empty once expired)."""
        if not entry:
            return cls(name, score)
        fields = {_text(k): _text(v) for k, v in entry.items()}
        return cls(
            name,
            float(fields.get("heartbeat", score)),
            host=fields.get("host", "?"),
            device=fields.get("device"),
            versions={
                str(m): int(v) for m, v in orjson.loads(fields.get("versions", "{}")).items()
            },
            ready=fields.get("ready") == "1",
        )


@dataclass(frozen=True)
class ModelStatus:
    model: str
    record: ModelRecord | None  # None: served by workers only, never published
    workers: tuple[WorkerSeen, ...]
    backlog: Backlog

    def to_dict(self, now: float) -> dict[str, Any]:
        record = self.record
        return {
            "model": self.model,
            "published": record is not None,
            "versions": [] if record is None else [v.to_dict() for v in record.versions],
            "policy": None if record is None else vars(record.policy),
            "rollout": None if record is None or record.rollout is None else vars(record.rollout),
            "workers": [w.to_dict(now) for w in self.workers],
            "backlog": {
                "by_priority": {str(p): n for p, n in self.backlog.by_priority.items()},
                "by_queue": self.backlog.by_queue,
                "waiting": self.backlog.waiting,
                "scheduled": self.backlog.scheduled,
                "in_hand": self.backlog.in_hand,
                "total": self.backlog.total,
            },
        }


@dataclass(frozen=True)
class FleetStatus:
    models: tuple[ModelStatus, ...]
    dead_letters: int  # not attributable to a model: they are not inferq messages

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "models": [m.to_dict(now) for m in self.models],
            "dead_letters": self.dead_letters,
        }


def known_models(client: redis.Redis, registry: Registry) -> list[str]:
    """Published models and models that workers announce (the older, unpublished way)."""
    prefix = keys.MODEL_WORKERS_PREFIX
    announced = {_text(k)[len(prefix) :] for k in client.scan_iter(match=f"{prefix}*", count=_SCAN)}
    return sorted(set(registry.models()) | announced)


def fleet_status(client: redis.Redis, registry: Registry, models: Iterable[str]) -> FleetStatus:
    chosen = list(models)
    queues = {m: _queues(m, registry.get(m)) for m in chosen}
    scheduled = _scheduled_by_queue(client)
    in_hand = _in_hand_by_queue(client)
    # Models placed on another Redis or a cluster: their backlog is read where they live.
    from inferq.worker.placed_fleet import placed_backlogs

    placed = placed_backlogs(client, {m: queues[m][1] for m in chosen})
    statuses = []
    for model in chosen:
        record, names = queues[model]
        backlog = placed.get(model) or _backlog(client, names, scheduled, in_hand)
        statuses.append(ModelStatus(model, record, _workers(client, model), backlog))
    return FleetStatus(tuple(statuses), int(client.llen(keys.DEAD_LETTER)))


def _queues(model: str, record: ModelRecord | None) -> tuple[ModelRecord | None, list[str]]:
    return record, keys.model_queues(model, record.version_numbers if record else ())


def _backlog(
    client: redis.Redis, queues: list[str], scheduled: dict[str, int], in_hand: dict[str, int]
) -> Backlog:
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in keys.queue_keys(queue):
            pipe.llen(key)
    lengths = [int(n) for n in pipe.execute()]
    width = len(keys.PRIORITIES)
    by_priority = {p: sum(lengths[i::width]) for i, p in enumerate(keys.PRIORITIES)}
    by_queue = {q: sum(lengths[i * width : (i + 1) * width]) for i, q in enumerate(queues)}
    return Backlog(
        by_priority=by_priority,
        by_queue=by_queue,
        scheduled=sum(scheduled.get(q, 0) for q in queues),
        in_hand=sum(in_hand.get(q, 0) for q in queues),
    )


def _workers(client: redis.Redis, model: str) -> tuple[WorkerSeen, ...]:
    seen: list[tuple[bytes, float]] = client.zrange(  # type: ignore[assignment]
        keys.model_workers_key(model), 0, -1, withscores=True
    )
    pipe = client.pipeline(transaction=False)
    for name, _ in seen:
        pipe.hgetall(keys.worker_key(_text(name)))
    entries = pipe.execute() if seen else []
    return tuple(
        WorkerSeen.read(_text(name), float(score), entry)
        for (name, score), entry in zip(seen, entries, strict=True)
    )


def _scheduled_by_queue(client: redis.Redis, book: Book = STANDALONE) -> dict[str, int]:
    counts: dict[str, int] = {}
    for member, _ in client.zscan_iter(book.scheduled, count=_SCAN):
        found = _LIST_KEY.match(member)
        if found:
            queue = orjson.loads(found.group(1)).split(keys.PRIORITY_SEP)[0]
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def _in_hand_by_queue(client: redis.Redis, book: Book = STANDALONE) -> dict[str, int]:
    """Unacked deliveries by the queue they were routed to, plus messages in fetch holds."""
    counts: dict[str, int] = {}
    for _, entry in client.hscan_iter(book.unacked, count=_SCAN):
        found = _ROUTING_KEY.search(entry)
        if found:
            queue = orjson.loads(found.group(1))
            counts[queue] = counts.get(queue, 0) + 1
    members: list[bytes] = client.zrange(book.holding, 0, -1)  # type: ignore[assignment]
    holds = [_text(m).rpartition("#") for m in members]
    if holds:
        pipe = client.pipeline(transaction=False)
        for hold, _, _ in holds:
            for i in range(len(keys.PRIORITIES)):
                pipe.llen(f"{hold}:{i + 1}")
        lengths = [int(n) for n in pipe.execute()]
        width = len(keys.PRIORITIES)
        for n, (_, _, queue) in enumerate(holds):
            counts[queue] = counts.get(queue, 0) + sum(lengths[n * width : (n + 1) * width])
    return counts


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
