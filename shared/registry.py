"""What is published, in Redis without expiry, independent of workers.

One JSON document per model at ``inferq:registry:<model>`` (:class:`ModelRecord`: published
versions with their input specs and digests, the serving policy, the current rollout) and the set
of published names at ``inferq:registry:models``. Producers read it to preprocess and route a
request to a version's queue, so a published model takes requests while no worker runs; workers
read it to know which versions to hold and report on rollouts through :meth:`Registry.mark_rollout`.

Every change is a read-modify-write of one document under WATCH/MULTI: two operators (or an
operator and a worker) changing the same model at once never lose each other's change; the loser
of a race re-reads and applies its rule again, and a rule that no longer holds raises.

Usage::

    registry = Registry(client)
    registry.publish([published_version(mv)])   # worker/repository.py verifies and builds it
    registry.rollout("resnet18", 2, canary_share=0.1)
    record = registry.get("resnet18")
    version = choose_version(record, rng)
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable, Sequence

import redis

from inferq.shared import keys
from inferq.shared import policy as rules
from inferq.shared.errors import InvalidInput, ModelUnavailable
from inferq.shared.policy import (
    ROLLOUT_STATES,
    Change,
    ModelRecord,
    RolloutRecord,
    ServingPolicy,
    VersionRecord,
    choose_version,
)

__all__ = [
    "ROLLOUT_STATES",
    "ModelRecord",
    "Registry",
    "RolloutRecord",
    "ServingPolicy",
    "VersionRecord",
    "choose_version",
]

#: A transition from the stored record (None: not published) to the next one.
Rule = Callable[[ModelRecord | None], ModelRecord]


def default_actor() -> str:
    """Who a change is recorded as made by, unless told: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Registry:
    """Published models and their serving policy over one Redis client.

    ``clock`` stamps records (wall-clock seconds); ``actor`` is who changes are recorded as made
    by (an operator ``user@host``, or a worker's node name).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        clock: Callable[[], float] = time.time,
        actor: str | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._actor = actor or default_actor()

    # -- reading -------------------------------------------------------------------------------

    def get(self, model: str) -> ModelRecord | None:
        raw = self._client.get(keys.registry_key(model))
        return None if raw is None else ModelRecord.from_json(raw)

    def require(self, model: str) -> ModelRecord:
        """The model's record; ModelUnavailable naming the published models if there is none."""
        record = self.get(model)
        if record is None:
            raise self.unpublished(model)
        return record

    def models(self) -> list[str]:
        names: set[bytes | str] = self._client.smembers(keys.REGISTRY_MODELS)
        return sorted(n.decode() if isinstance(n, bytes) else n for n in names)

    def unpublished(self, model: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"model must be one of the published {self.models() or 'none'}, got {model!r}; "
            f"publish it with `inferq models publish {model}`"
        )

    # -- changing ------------------------------------------------------------------------------

    def publish(self, versions: Sequence[VersionRecord], model: str | None = None) -> ModelRecord:
        """Record ``versions`` (all of one model); the first publication serves the highest."""
        name = model or (versions[0].spec.model if versions else "")
        strays = sorted({v.spec.model for v in versions} - {name})
        if not name or strays:
            raise InvalidInput(
                f"publish takes versions of one model ({name or 'none given'}), got also {strays}"
            )
        return self._update(name, lambda record: rules.with_versions(name, record, tuple(versions)))

    def remove(self, model: str) -> ModelRecord:
        """Forget ``model``: producers refuse it from now on. Returns what was removed."""
        key = keys.registry_key(model)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.delete(key)
            pipe.srem(keys.REGISTRY_MODELS, model)
            raw, _, _ = pipe.execute()
        if raw is None:
            raise self.unpublished(model)
        return ModelRecord.from_json(raw)

    def rollout(self, model: str, version: int, canary_share: float | None = None) -> ModelRecord:
        """Serve ``version``; with ``canary_share`` (0..1) send it that share only, as a canary."""
        _check_version(version)
        return self._change(model, lambda r, c: rules.start_rollout(r, version, canary_share, c))

    def promote(self, model: str) -> ModelRecord:
        """The canary becomes the serving version."""
        return self._change(model, rules.promote)

    def rollback(self, model: str) -> ModelRecord:
        """Drop the canary, or without one go back to the previous serving version."""
        return self._change(model, rules.rollback)

    def mark_rollout(self, model: str, version: int, state: str, reason: str = "") -> ModelRecord:
        """Report the state of the current rollout of ``version`` (workers call this)."""
        return self._change(model, lambda r, c: rules.mark_rollout(r, version, state, reason, c))

    def fail_rollout(self, model: str, version: int, reason: str) -> ModelRecord:
        """Undo the current rollout of ``version`` and mark it failed (a worker could not load
        or validate it, or the canary guard tripped); the same report twice changes nothing."""
        return self._change(model, lambda r, c: rules.fail_rollout(r, version, reason, c))

    # -- the atomic read-modify-write ------------------------------------------------------------

    def _change(
        self, model: str, rule: Callable[[ModelRecord, Change], ModelRecord]
    ) -> ModelRecord:
        def apply(record: ModelRecord | None) -> ModelRecord:
            if record is None:
                raise self.unpublished(model)
            return rule(record, Change(now=self._clock(), by=self._actor))

        return self._update(model, apply)

    def _update(self, model: str, rule: Rule) -> ModelRecord:
        key = keys.registry_key(model)
        done: list[ModelRecord] = []

        def attempt(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            record = None if raw is None else ModelRecord.from_json(raw)
            new = rule(record)
            pipe.multi()
            pipe.set(key, new.to_json())
            pipe.sadd(keys.REGISTRY_MODELS, model)
            done[:] = [new]

        # redis-py retries ``attempt`` from the top whenever the key changed under WATCH.
        self._client.transaction(attempt, key)
        return done[0]


def _check_version(version: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput(f"version must be a positive integer, got {version!r}")
