"""Which versions of each served model a worker holds, kept in line with the registry.

The registry's serving policy (``shared/registry.py``) is the source of truth; a Celery broadcast
(``inferq_rollout``, sent by ``inferq models rollout/promote/rollback``) only makes the worker look
now, and every heartbeat looks again, so a worker that missed the broadcast or started later
converges too. With ``INFERQ_REPOSITORY_POLL_S`` > 0, a new highest version on disk is published
and rolled out the same way.

A rollout to version N, on each worker (every step logged and reported in the rollout record):

1. N is loaded beside the serving version (its sha256 verified by the handler loader), warmed up
   at its batch sizes and validated (``worker/validation.py``) on a run thread of its own;
2. N fetches its version queue (``inferq.<m>@N``); if N is now the serving version, the model's
   unversioned queue moves to it between batches;
3. the old version finishes what it holds and keeps draining its own version queue: producers
   route to it until their spec cache (``INFERQ_SPEC_CACHE_TTL_S``) expires. Once that long has
   passed since the switch and its queue and hands are empty, it is released (handler dropped,
   device memory returned). Until then a rollback to it is immediate.

If step 1 fails, the policy goes back in the registry and the rollout is marked failed with the
reason (``Registry.fail_rollout``); the serving version keeps serving and, when N's input spec
is the same as its own, also fetches N's queue for a spec-cache TTL, so what producers queued for
N before they saw the failure is answered (by the serving version, whose number its results
carry). The canary guard does the same for a canary whose server-side failure rate over its first
``[rollout] canary_min_requests`` requests exceeds ``canary_max_failure_rate``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from inferq.shared import keys
from inferq.shared.errors import ConfigError, InferqError
from inferq.shared.logs import get_logger
from inferq.shared.policy import ModelRecord, ServingPolicy
from inferq.shared.redisconn import CONNECTION_ERRORS
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.repository import ModelRepository, ModelVersion, published_version
from inferq.worker.served import Served
from inferq.worker.validation import validate

if TYPE_CHECKING:
    from inferq.worker.service import InferenceService

log = get_logger(__name__)

_TICK_S = 0.25


def initial_versions(
    registry: Registry, repo: ModelRepository, names: list[str]
) -> list[ModelVersion]:
    """The serving version of each model, publishing first a model the registry lacks (its
    highest version on disk), so that ``init-examples`` + ``worker`` works in one step."""
    chosen: list[ModelVersion] = []
    for name in names:
        record = registry.get(name)
        if record is None:
            record = registry.publish([published_version(repo.resolve(name))])
            log.info("published model", model=name, version=record.policy.serving)
        chosen.append(repo.resolve(name, record.policy.serving))
    return chosen


def wanted(policy: ServingPolicy) -> list[int]:
    """The versions a worker holds under ``policy``: the serving one, and the canary if any."""
    return [policy.serving] if policy.canary is None else [policy.serving, policy.canary]


def same_input(a: InputSpec, b: InputSpec) -> bool:
    """Whether a request prepared for ``a`` is a valid input of ``b`` (a model on an image wire
    also reads the raw codec; one on the raw wire has no decode stage for images)."""
    readable = a.wire == "raw" or b.wire != "raw"
    return readable and (a.shape, a.dtype, a.color, a.resize, a.inputs) == (
        b.shape,
        b.dtype,
        b.color,
        b.resize,
        b.inputs,
    )


@dataclass
class Draining:
    """A version no longer wanted, still draining its queue since ``since`` (monotonic)."""

    served: Served
    since: float


@dataclass(frozen=True)
class Adopted:
    """A failed version's queue that the serving version ``owner`` fetches since ``since``."""

    owner: Served
    queue: str
    since: float


class VersionManager:
    """Runs on its own thread (``run``); ``wake`` makes it re-read the registry now."""

    def __init__(
        self,
        host: InferenceService,
        registry: Registry,
        repo: ModelRepository,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._registry = registry
        self._repo = repo
        self._settings = settings
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._records: dict[str, ModelRecord] = {}
        self._draining: dict[tuple[str, int], Draining] = {}
        self._adopted: list[Adopted] = []
        # Rollouts (model, version, started_at) that failed or tripped the guard here: not
        # tried again every heartbeat; a new rollout of the same version is a new key.
        self._given_up: set[tuple[str, int, float]] = set()
        self._next_poll = 0.0

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            woken = self._wake.wait(_TICK_S)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                self.step(woken)
            except CONNECTION_ERRORS as exc:
                log.warning("redis unavailable for version management; retrying", error=str(exc))
                self._wake.set()
                stop.wait(0.5)
            except Exception:  # the serving versions keep serving whatever goes wrong here
                log.exception("version management step failed; continuing")

    def step(self, woken: bool) -> None:
        """Poll the repository if due; follow the policy if woken; guard canaries; release."""
        poll_s = self._settings.repository_poll_s
        if poll_s > 0 and self._clock() >= self._next_poll:
            self._next_poll = self._clock() + poll_s
            woken = self.poll() or woken
        for model in self._host.model_names:
            if woken:
                self.reconcile(model)
            self._guard(model)
        self._release_drained()

    # -- following the policy ----------------------------------------------------------------

    def reconcile(self, model: str) -> None:
        """Hold the versions the policy wants, serve the unversioned queue with its serving one."""
        record = self._registry.get(model)
        if record is None:
            log.warning("model is not in the registry; serving what is held", model=model)
            return
        self._records[model] = record
        held = self._held(model)
        for v in wanted(record.policy):
            self._draining.pop((model, v), None)  # wanted again (a rollback): it stays
            if v not in held:
                s = self._bring_up(record, v)
                if s is None:
                    return  # the policy went back; the next step reads it again
                held[v] = s
        if record.policy.serving in held:
            self._move_unversioned(model, held[record.policy.serving])
        for v, s in held.items():
            if v not in wanted(record.policy) and (model, v) not in self._draining:
                self._draining[(model, v)] = Draining(s, self._clock())
                log.info("rollout: old version draining its queue", model=model, version=v)
        self._report(record, held)

    def _held(self, model: str) -> dict[int, Served]:
        return {s.version: s for s in self._host.served if s.model.name == model}

    def _bring_up(self, record: ModelRecord, version: int) -> Served | None:
        model = record.model
        key = (model, version, record.rollout.started_at if record.rollout else 0.0)
        if key in self._given_up:
            return None
        log.info("rollout: loading version beside the serving one", model=model, version=version)
        try:
            s = self._host.load_version(self._repo.resolve(model, version), validate)
        except Exception as exc:  # a corrupt file, a failed validation, a config the device refuses
            self._given_up.add(key)
            self._fail(record, version, f"{type(exc).__name__}: {exc}")
            return None
        if self._stop.is_set():  # the worker stops: this version never takes a request
            s.end_runs()
            return None
        self._host.activate(s)
        self._host.open_queue(s, keys.version_queue_name(model, version))
        log.info(
            "rollout: version loaded, warmed up, validated and fetching its queue",
            model=model,
            version=version,
            warmup_s={k: round(v, 4) for k, v in s.warmup_s.items()},
        )
        return s

    def _move_unversioned(self, model: str, serving: Served) -> None:
        """Switch the unversioned queue to ``serving`` (between batches: both keep computing)."""
        base = keys.queue_name(model)
        if base in serving.fetches:
            return
        for s in self._host.served:
            if s.model.name == model and base in s.fetches:
                self._host.close_queue(s, base)
                log.info("rollout: switched", model=model, old=s.version, new=serving.version)
        self._host.open_queue(serving, base)

    def _report(self, record: ModelRecord, held: dict[int, Served]) -> None:
        """Mark the current rollout active (a canary taking its share) or done (serving)."""
        rollout = record.rollout
        if rollout is None or rollout.state in ("failed", "done") or rollout.target not in held:
            return
        state = "active" if record.policy.canary == rollout.target else "done"
        if state == rollout.state:
            return
        try:
            self._registry.mark_rollout(record.model, rollout.target, state)
        except ConfigError:  # the rollout changed meanwhile; the next step reads the new one
            self._wake.set()
            return
        log.info("rollout: reported", model=record.model, version=rollout.target, state=state)

    # -- failures ----------------------------------------------------------------------------

    def _fail(self, record: ModelRecord, version: int, reason: str) -> None:
        log.error(
            "rollout failed; the serving version keeps serving",
            model=record.model,
            version=version,
            reason=reason,
        )
        try:
            self._registry.fail_rollout(record.model, version, reason)
        except InferqError as exc:  # removed from the registry meanwhile
            log.warning("rollout failure not recorded", model=record.model, error=str(exc))
        self._adopt(record, version)
        self._wake.set()

    def _adopt(self, record: ModelRecord, version: int) -> None:
        """Have the serving version answer what producers queued for ``version`` meanwhile."""
        queue = keys.version_queue_name(record.model, version)
        owner = next(
            (
                s
                for s in self._host.served
                if s.model.name == record.model
                and s.version != version
                and keys.queue_name(record.model) in s.fetches
            ),
            None,
        )
        failed = record.version(version).spec
        if owner is None or queue in owner.fetches:
            return
        if not same_input(failed, owner.spec):
            log.warning(
                "requests queued for the failed version wait for a worker that loads it",
                queue=queue,
                model=record.model,
            )
            return
        self._host.open_queue(owner, queue, replace(owner.spec, version=version))
        self._adopted.append(Adopted(owner, queue, self._clock()))
        log.info(
            "serving version answers the failed version's queue", queue=queue, version=owner.version
        )

    def _guard(self, model: str) -> None:
        """Roll back a canary whose server-side failure rate exceeds its bound."""
        record = self._records.get(model)
        canary = record.policy.canary if record is not None else None
        if record is None or canary is None or record.rollout is None:
            return
        s = self._held(model).get(canary)
        rate = s.failures.rate() if s is not None else None
        bound = s.model.config.rollout.canary_max_failure_rate if s is not None else 1.0
        key = (model, canary, record.rollout.started_at)
        if rate is None or rate <= bound or key in self._given_up:
            return
        self._given_up.add(key)
        self._fail(
            record,
            canary,
            f"canary guard: {rate:.1%} of its first {s.failures.limit if s else 0} requests "
            f"failed on the server side, more than the {bound:.1%} allowed",
        )

    # -- releasing ---------------------------------------------------------------------------

    def _release_drained(self) -> None:
        now, ttl = self._clock(), self._settings.spec_cache_ttl_s
        due = [k for k, d in self._draining.items() if now - d.since >= ttl and self._drained(d)]
        for key in due:
            self._retire(key)
        for a in [a for a in self._adopted if now - a.since >= ttl and self._empty(a.queue)]:
            self._adopted.remove(a)
            if a.queue in a.owner.fetches:
                self._host.close_queue(a.owner, a.queue)
                log.info("failed version's queue answered; no longer fetched", queue=a.queue)
        if due:
            self._host.free_device_memory()

    def _drained(self, d: Draining) -> bool:
        queue = keys.version_queue_name(d.served.model.name, d.served.version)
        return d.served.idle() and self._empty(queue)

    def _empty(self, queue: str) -> bool:
        pipe = self._host.client.pipeline(transaction=False)
        for key in keys.queue_keys(queue):
            pipe.llen(key)
        return not any(pipe.execute())

    def _retire(self, key: tuple[str, int]) -> None:
        s = self._draining.pop(key).served
        self._adopted = [a for a in self._adopted if a.owner is not s]
        self._host.retire(s)
        log.info("rollout: old version released", model=key[0], version=key[1])

    # -- polling the repository ---------------------------------------------------------------

    def poll(self) -> bool:
        """Publish and roll out a new highest version found on disk; True if one was."""
        found = False
        for model in self._host.model_names:
            versions = self._repo.versions(model)
            record = self._registry.get(model)
            if not versions or record is None or versions[-1] <= max(record.version_numbers):
                continue
            try:
                self._registry.publish([published_version(self._repo.resolve(model, versions[-1]))])
                self._registry.rollout(model, versions[-1])
            except InferqError as exc:  # e.g. its sha256 is not written yet: the next poll
                log.warning("poll: new version not rolled out", model=model, error=str(exc))
                continue
            log.info(
                "poll: new version published and rolled out", model=model, version=versions[-1]
            )
            found = True
        return found
