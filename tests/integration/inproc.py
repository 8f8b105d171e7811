"""Helpers for driving the worker's stages in-process against a private Redis: real envelopes
built by the producer's own code, pushed as kombu pushes them, and a hook that records."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import redis

from inferq.producer.envelope import task_envelope
from inferq.shared import codec, keys
from inferq.shared.spec import InputSpec
from inferq.worker.hooks import Hook
from inferq.worker.intake import InferenceRequest, Rejection

SPEC = InputSpec(model="tiny", version=1, shape=(3, 8, 8))
QUEUE = keys.queue_name(SPEC.model)


def envelope(
    task_id: str,
    *,
    fill: int = 0,
    shape: tuple[int, ...] = SPEC.shape,
    priority: int = keys.DEFAULT_PRIORITY,
    **options: Any,
) -> bytes:
    """A task message exactly as ``submit_job`` publishes it (``options``: eta, countdown)."""
    array = np.full(shape, fill, dtype=np.uint8)
    kwargs = {"model": SPEC.model, "submitted_at": time.time(), "preprocess_ms": 0.1}
    return task_envelope(task_id, codec.encode(array), kwargs, SPEC, priority, None, options)


def push(client: redis.Redis, *messages: bytes, priority: int = keys.DEFAULT_PRIORITY) -> None:
    for m in messages:  # as kombu publishes: LPUSH, so the oldest is the rightmost
        client.lpush(keys.priority_queue_key(QUEUE, priority), m)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


class Recorder(Hook):
    """Records what the stages report, and lets a test wait for the stores it expects."""

    def __init__(self) -> None:
        self.fetches: list[tuple[str, int, bool]] = []
        self.stores: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def after_fetch(self, model: str, version: int, count: int, depth_hint: bool) -> None:
        self.fetches.append((model, count, depth_hint))

    def after_store(
        self,
        model: str,
        version: int,
        outcomes: Sequence[Any],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        with self._lock:
            self.stores.append((model, len(outcomes), len(rejections)))


def unacked_ids(client: redis.Redis) -> list[str]:
    """The task ids of the messages recorded as unacked, sorted."""
    entries = client.hvals(keys.UNACKED)
    return sorted(orjson.loads(e)[0]["headers"]["id"] for e in entries)  # type: ignore[union-attr]


def task_ids(requests: Sequence[InferenceRequest]) -> list[str]:
    return [r.task_id for r in requests]
