"""The registry's records and the pure rules that change them (no Redis here).

A model's :class:`ModelRecord` holds its published versions and its :class:`ServingPolicy`
(serving, previous, canary and its share) plus the current :class:`RolloutRecord`. Every change is
a function from one record to the next, so that the rules can be tested without a server and
:class:`inferq.shared.registry.Registry` only has to apply them atomically.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from typing import Any

from inferq.shared.errors import ConfigError, InvalidInput, ModelUnavailable
from inferq.shared.spec import InputSpec

#: pending: asked for, no worker has reported yet; active: workers are loading/serving it;
#: failed: a worker could not load or validate it (``reason`` says why); done: serving everywhere.
ROLLOUT_STATES = ("pending", "active", "failed", "done")


@dataclass(frozen=True)
class VersionRecord:
    """One published version: what a producer needs (spec) and what a worker checks (digests)."""

    version: int
    spec: InputSpec
    config_sha256: str
    model_sha256: str
    platform: str
    published_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "spec": json.loads(self.spec.to_json()),
            "config_sha256": self.config_sha256,
            "model_sha256": self.model_sha256,
            "platform": self.platform,
            "published_at": self.published_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionRecord:
        return cls(
            version=int(data["version"]),
            spec=InputSpec.from_json(json.dumps(data["spec"])),
            config_sha256=str(data["config_sha256"]),
            model_sha256=str(data["model_sha256"]),
            platform=str(data["platform"]),
            published_at=float(data["published_at"]),
        )


@dataclass(frozen=True)
class ServingPolicy:
    """Which version takes requests: ``serving``, or ``canary`` for ``canary_share`` of them."""

    serving: int
    previous: int | None = None
    canary: int | None = None
    canary_share: float = 0.0


@dataclass(frozen=True)
class RolloutRecord:
    """The latest change of policy and how workers took it."""

    target: int
    state: str
    reason: str
    started_at: float
    updated_at: float
    by: str
    canary_share: float | None = None


@dataclass(frozen=True)
class ModelRecord:
    model: str
    versions: tuple[VersionRecord, ...]  # ascending by version
    policy: ServingPolicy
    rollout: RolloutRecord | None = None

    @property
    def version_numbers(self) -> tuple[int, ...]:
        return tuple(v.version for v in self.versions)

    def version(self, number: int) -> VersionRecord:
        """The published ``number``; ModelUnavailable naming the published ones otherwise."""
        for v in self.versions:
            if v.version == number:
                return v
        raise ModelUnavailable(
            f"model {self.model!r} version must be one of the published "
            f"{list(self.version_numbers)}, got {number!r}"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "versions": [v.to_dict() for v in self.versions],
                "policy": vars(self.policy),
                "rollout": None if self.rollout is None else vars(self.rollout),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> ModelRecord:
        data = json.loads(raw)
        rollout = data.get("rollout")
        return cls(
            model=str(data["model"]),
            versions=tuple(VersionRecord.from_dict(v) for v in data["versions"]),
            policy=ServingPolicy(**data["policy"]),
            rollout=None if rollout is None else RolloutRecord(**rollout),
        )


@dataclass(frozen=True)
class Change:
    """Who changes a record and when: every transition takes one."""

    now: float
    by: str


# -- transitions: each returns the next record, or raises a typed error naming what is wrong ----


def with_versions(
    model: str, record: ModelRecord | None, versions: tuple[VersionRecord, ...]
) -> ModelRecord:
    """``record`` with ``versions`` added; a model published for the first time serves its highest.

    A version's model file is immutable once published (workers and queued requests are tied to
    it); publishing a changed file under the same number is refused. Its config may change.
    """
    if not versions:
        raise InvalidInput(f"publishing model {model!r} needs at least one version, got none")
    known = {v.version: v for v in (record.versions if record else ())}
    for v in versions:
        old = known.get(v.version)
        if old is not None and old.model_sha256 != v.model_sha256:
            raise ConfigError(
                f"model {model!r} version {v.version} is published with model sha256 "
                f"{old.model_sha256}, got {v.model_sha256}: publish a changed model as a new version"
            )
        known[v.version] = v
    merged = tuple(known[n] for n in sorted(known))
    if record is None:
        return ModelRecord(model, merged, ServingPolicy(serving=merged[-1].version))
    return replace(record, versions=merged)


def start_rollout(
    record: ModelRecord, version: int, canary_share: float | None, change: Change
) -> ModelRecord:
    """Serve ``version`` (or, with a share, send it that share of requests as a canary)."""
    record.version(version)
    policy = record.policy
    if canary_share is None:
        if version == policy.serving and policy.canary is None:
            raise InvalidInput(
                f"rollout of model {record.model!r} must name a version other than the serving "
                f"one ({policy.serving}), got {version}"
            )
        policy = ServingPolicy(serving=version, previous=_previous(policy, version))
    else:
        _check_share(canary_share)
        if version == policy.serving:
            raise InvalidInput(
                f"a canary of model {record.model!r} must be a version other than the serving "
                f"one ({policy.serving}), got {version}"
            )
        policy = replace(policy, canary=version, canary_share=canary_share)
    reason = "canary" if canary_share is not None else "rollout"
    return _with_rollout(record, policy, version, reason, change, canary_share)


def promote(record: ModelRecord, change: Change) -> ModelRecord:
    """The canary becomes the serving version; the serving one is kept as ``previous``."""
    canary = record.policy.canary
    if canary is None:
        raise ConfigError(
            f"promote needs a canary of model {record.model!r}, got none "
            f"(serving {record.policy.serving}); start one with "
            f"`inferq models rollout {record.model} --version N --canary PCT`"
        )
    policy = ServingPolicy(serving=canary, previous=record.policy.serving)
    return _with_rollout(record, policy, canary, f"promoted canary {canary}", change)


def rollback(record: ModelRecord, change: Change) -> ModelRecord:
    """Drop the canary if there is one, else serve the previous version again (the two swap)."""
    policy = record.policy
    if policy.canary is not None:
        reason = f"canary {policy.canary} rolled back"
        return _with_rollout(
            record, ServingPolicy(policy.serving, policy.previous), policy.serving, reason, change
        )
    if policy.previous is None:
        raise ConfigError(
            f"rollback of model {record.model!r} needs a canary or a previous serving version, "
            f"got neither (serving {policy.serving})"
        )
    record.version(policy.previous)  # it may have been republished away; refuse clearly
    swapped = ServingPolicy(serving=policy.previous, previous=policy.serving)
    reason = f"rolled back from {policy.serving}"
    return _with_rollout(record, swapped, policy.previous, reason, change)


def mark_rollout(
    record: ModelRecord, version: int, state: str, reason: str, change: Change
) -> ModelRecord:
    """Record how the rollout of ``version`` goes; a report about an older rollout is refused."""
    if state not in ROLLOUT_STATES:
        raise InvalidInput(f"rollout state must be one of {ROLLOUT_STATES}, got {state!r}")
    current = record.rollout
    if current is None or current.target != version:
        target = "none" if current is None else f"version {current.target}"
        raise ConfigError(
            f"model {record.model!r} rollout being marked must be the current one ({target}), "
            f"got version {version}"
        )
    marked = replace(current, state=state, reason=reason, updated_at=change.now, by=change.by)
    return replace(record, rollout=marked)


def fail_rollout(record: ModelRecord, version: int, reason: str, change: Change) -> ModelRecord:
    """A worker could not take ``version`` on: the policy goes back to what served before it
    (a canary is dropped; a version made serving gives way to the one it replaced), and the
    rollout is marked failed with ``reason``. A report about a rollout that is no longer the
    current one, or one already failed, changes nothing (several workers report the same)."""
    current = record.rollout
    if current is None or current.target != version or current.state == "failed":
        return record
    policy = record.policy
    if policy.canary == version:
        policy = ServingPolicy(policy.serving, policy.previous)
    elif policy.serving == version and policy.previous is not None:
        policy = ServingPolicy(serving=policy.previous)
    failed = replace(current, state="failed", reason=reason, updated_at=change.now, by=change.by)
    return replace(record, policy=policy, rollout=failed)


def choose_version(record: ModelRecord, rng: random.Random) -> int:
    """The version one request goes to: the canary for ``canary_share`` of draws, else serving."""
    policy = record.policy
    if policy.canary is not None and rng.random() < policy.canary_share:
        return policy.canary
    return policy.serving


def _previous(policy: ServingPolicy, new: int) -> int | None:
    return policy.serving if policy.serving != new else policy.previous


def _check_share(share: float) -> None:
    if not isinstance(share, int | float) or isinstance(share, bool) or not math.isfinite(share):
        raise InvalidInput(f"canary share must be a number between 0 and 1, got {share!r}")
    if not 0.0 < share < 1.0:
        raise InvalidInput(
            f"canary share must lie strictly between 0 and 1 (use a plain rollout for all), "
            f"got {share}"
        )


def _with_rollout(
    record: ModelRecord,
    policy: ServingPolicy,
    target: int,
    reason: str,
    change: Change,
    canary_share: float | None = None,
) -> ModelRecord:
    rollout = RolloutRecord(
        target=target,
        state="pending",
        reason=reason,
        started_at=change.now,
        updated_at=change.now,
        by=change.by,
        canary_share=canary_share,
    )
    return replace(record, policy=policy, rollout=rollout)
