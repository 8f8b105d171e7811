"""Producer-side cache of the input specs that workers publish in Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from inferq.shared import keys
from inferq.shared.errors import ModelUnavailable
from inferq.shared.spec import InputSpec


class SpecCache:
    """``get(model)`` costs a Redis round trip at most once per ``ttl_s`` per model."""

    def __init__(
        self, client: redis.Redis, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, InputSpec]] = {}

    def get(self, model: str) -> InputSpec:
        now = self._clock()
        with self._lock:
            hit = self._entries.get(model)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        raw = self._client.get(keys.model_spec_key(model))
        if raw is None:
            raise ModelUnavailable(
                f"model must be served by a running worker, got {model!r} which no worker "
                f"publishes (served now: {self.served_models() or 'none'}); start one with "
                f"`inferq worker --model {model}`"
            )
        spec = InputSpec.from_json(raw)
        with self._lock:
            self._entries[model] = (now, spec)
        return spec

    def served_models(self) -> list[str]:
        prefix = keys.MODEL_SPEC_PREFIX
        found = self._client.scan_iter(match=f"{prefix}*", count=1000)
        return sorted(k.decode()[len(prefix) :] for k in found)
