"""Producer-side view of what is published: which spec to preprocess to, which queue to push to.

A model published in the registry (``inferq models publish``) is routed by its serving policy:
each request goes to one version (the serving one, the canary for its share, or the version the
caller pins with ``version=N``), is preprocessed to that version's spec and pushed to that
version's queue, so it takes requests while no worker runs. A model with no registry record but a
spec published by a running worker (``inferq:model:<m>``, the older way) is routed as before: to
the model's unversioned queue, for whichever worker serves it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from inferq.shared import keys
from inferq.shared.errors import InvalidInput, ModelUnavailable
from inferq.shared.placement import Placement, placement_key
from inferq.shared.policy import ModelRecord, choose_version
from inferq.shared.redisconn import as_text
from inferq.shared.spec import InputSpec


@dataclass(frozen=True)
class Route:
    """Where one request goes and what it must look like."""

    spec: InputSpec
    #: The queue the message is pushed to.
    queue: str
    #: The queues whose lists count against the limit, ``queue`` first.
    counted: tuple[str, ...]
    #: The version the request is prepared for; None: whichever version a worker serves.
    version: int | None


#: What is cached per model: its registry record, or the spec a worker publishes (older way).
Published = ModelRecord | InputSpec


class SpecCache:
    """``route(model)`` costs a Redis round trip at most once per ``ttl_s`` per model.

    Policy changes (rollout, canary share) reach a producer within ``ttl_s``.
    """

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Published]] = {}
        # Each model's placement (shared/placement.py), read and refreshed with its record.
        self._placements: dict[str, Placement | None] = {}

    def route(self, model: str, version: int | None = None) -> Route:
        """The route of one request to ``model`` (pinned to ``version`` if given)."""
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise InvalidInput(f"version must be an integer (a published version), got {version!r}")
        published = self.published(model)
        if isinstance(published, InputSpec):
            base = keys.queue_name(model)
            return Route(published, base, (base,), version)
        chosen = choose_version(published, self._rng) if version is None else version
        spec = published.version(chosen).spec
        queue = keys.version_queue_name(model, chosen)
        return Route(spec, queue, (queue, keys.queue_name(model)), chosen)

    def get(self, model: str) -> InputSpec:
        """The spec a request to ``model`` is preprocessed to now (the serving version's)."""
        return self.route(model).spec

    def placement(self, model: str) -> Placement | None:
        """Where ``model``'s queues live (None: the home Redis), as of its cached record."""
        self.published(model)
        with self._lock:
            return self._placements.get(model)

    def published(self, model: str) -> Published:
        now = self._clock()
        with self._lock:
            hit = self._entries.get(model)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        published = self._read(model)
        with self._lock:
            self._entries[model] = (now, published)
        return published

    def _read(self, model: str) -> Published:
        pipe = self._client.pipeline(transaction=False)
        pipe.get(keys.registry_key(model))
        pipe.get(keys.model_spec_key(model))
        pipe.get(placement_key(model))
        record, spec, placed = pipe.execute()
        with self._lock:
            self._placements[model] = None if placed is None else Placement.from_json(placed)
        if record is not None:
            return ModelRecord.from_json(record)
        if spec is not None:
            return InputSpec.from_json(spec)
        raise ModelUnavailable(
            f"model must be one of the published {self.published_models() or 'none'}, got "
            f"{model!r} which is neither published nor served by a running worker; publish it "
            f"with `inferq models publish {model}`"
        )

    def published_models(self) -> list[str]:
        """Models in the registry, and models a running worker publishes (older way)."""
        names = {as_text(n) for n in self._client.smembers(keys.REGISTRY_MODELS)}
        prefix = keys.MODEL_SPEC_PREFIX
        found = self._client.scan_iter(match=f"{prefix}*", count=1000)
        return sorted(names | {as_text(k)[len(prefix) :] for k in found})
