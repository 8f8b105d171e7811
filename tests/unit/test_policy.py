"""The registry's rules without Redis: publication, rollout, promote, rollback, version choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from inferq.shared import keys
from inferq.shared import policy as rules
from inferq.shared.errors import ConfigError, InvalidInput, ModelUnavailable
from inferq.shared.policy import Change, ModelRecord, ServingPolicy, VersionRecord
from inferq.shared.spec import InputSpec

NOW = Change(now=1000.0, by="op@host")


def version(n: int, model: str = "m", sha: str | None = None) -> VersionRecord:
    spec = InputSpec(model=model, version=n, shape=(3, 8 * n, 8))
    return VersionRecord(n, spec, f"cfg{n}", sha or f"sha{n}", "torchscript", 1.0)


def published(*numbers: int) -> ModelRecord:
    return rules.with_versions("m", None, tuple(version(n) for n in numbers))


def test_first_publication_serves_the_highest_version_and_keeps_it_afterwards() -> None:
    record = published(1, 3, 2)
    assert record.version_numbers == (1, 2, 3)
    assert record.policy == ServingPolicy(serving=3)
    later = rules.with_versions("m", record, (version(4),))
    assert later.version_numbers == (1, 2, 3, 4)
    assert later.policy.serving == 3


def test_republishing_a_changed_model_file_under_the_same_number_is_refused() -> None:
    record = published(1)
    with pytest.raises(
        ConfigError, match=r"version 1 is published with model sha256 sha1, got other"
    ):
        rules.with_versions("m", record, (version(1, sha="other"),))
    assert rules.with_versions("m", record, (version(1),)) == record


def test_publishing_nothing_is_refused() -> None:
    with pytest.raises(InvalidInput, match="at least one version, got none"):
        rules.with_versions("m", None, ())


def test_rollout_serves_the_version_and_remembers_the_previous() -> None:
    record = rules.start_rollout(published(1, 2), 1, None, NOW)
    assert record.policy == ServingPolicy(serving=1, previous=2)
    assert record.rollout is not None
    assert (record.rollout.target, record.rollout.state, record.rollout.by) == (
        1,
        "pending",
        "op@host",
    )


def test_canary_keeps_serving_and_promote_swaps() -> None:
    canary = rules.start_rollout(published(1, 2, 3), 2, 0.25, NOW)
    assert canary.policy == ServingPolicy(serving=3, canary=2, canary_share=0.25)
    promoted = rules.promote(canary, NOW)
    assert promoted.policy == ServingPolicy(serving=2, previous=3)
    assert promoted.rollout is not None and promoted.rollout.target == 2


def test_rollback_drops_a_canary_first_then_returns_to_previous() -> None:
    record = rules.start_rollout(published(1, 2), 1, None, NOW)  # serving 1, previous 2
    canary = rules.start_rollout(record, 2, 0.5, NOW)
    dropped = rules.rollback(canary, NOW)
    assert dropped.policy == ServingPolicy(serving=1, previous=2)
    back = rules.rollback(dropped, NOW)
    assert back.policy == ServingPolicy(serving=2, previous=1)
    assert back.rollout is not None and back.rollout.reason == "rolled back from 1"


def test_transitions_refuse_what_cannot_be_done_and_say_why() -> None:
    record = published(1, 2)
    with pytest.raises(ModelUnavailable, match=r"one of the published \[1, 2\], got 7"):
        rules.start_rollout(record, 7, None, NOW)
    with pytest.raises(InvalidInput, match=r"other than the serving one \(2\), got 2"):
        rules.start_rollout(record, 2, None, NOW)
    with pytest.raises(InvalidInput, match=r"canary of model 'm' must be a version other"):
        rules.start_rollout(record, 2, 0.1, NOW)
    for share in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(InvalidInput, match="canary share must"):
            rules.start_rollout(record, 1, share, NOW)
    with pytest.raises(ConfigError, match="promote needs a canary of model 'm', got none"):
        rules.promote(record, NOW)
    with pytest.raises(ConfigError, match="needs a canary or a previous serving version"):
        rules.rollback(record, NOW)


def test_mark_rollout_updates_the_current_rollout_only() -> None:
    record = rules.start_rollout(published(1, 2), 1, None, NOW)
    later = Change(now=2000.0, by="worker-1")
    failed = rules.mark_rollout(record, 1, "failed", "validation: top-1 0.2", later)
    assert failed.rollout is not None
    assert (failed.rollout.state, failed.rollout.reason) == ("failed", "validation: top-1 0.2")
    assert (failed.rollout.started_at, failed.rollout.updated_at) == (1000.0, 2000.0)
    with pytest.raises(ConfigError, match=r"must be the current one \(version 1\), got version 2"):
        rules.mark_rollout(record, 2, "done", "", later)
    with pytest.raises(InvalidInput, match=r"state must be one of .*, got 'finished'"):
        rules.mark_rollout(record, 1, "finished", "", later)


def test_choose_version_respects_the_canary_share() -> None:
    record = rules.start_rollout(published(1, 2), 1, 0.2, NOW)
    rng = random.Random(7)
    counts = Counter(rules.choose_version(record, rng) for _ in range(20_000))
    assert set(counts) == {1, 2}
    assert counts[1] / 20_000 == pytest.approx(0.2, abs=0.015)
    no_canary = published(1, 2)
    assert {rules.choose_version(no_canary, rng) for _ in range(100)} == {2}


def test_record_round_trips_through_json() -> None:
    record = rules.promote(rules.start_rollout(published(1, 2), 1, 0.3, NOW), NOW)
    assert ModelRecord.from_json(record.to_json()) == record


def test_version_queues_and_backlog_keys() -> None:
    assert keys.version_queue_name("m", 3) == "inferq.m@3"
    backlog = keys.backlog_keys("m", [1, 2])
    assert len(backlog) == 3 * len(keys.PRIORITIES)
    assert backlog[0] == "inferq.m" and backlog[10] == "inferq.m@1"
    assert keys.priority_queue_key("inferq.m@2", 5) in backlog


def test_a_failed_canary_is_dropped_and_the_rollout_marked_failed_with_the_reason() -> None:
    canary = rules.start_rollout(published(1, 2), 1, 0.2, NOW)
    failed = rules.fail_rollout(canary, 1, "IntegrityError: bad bytes", NOW)
    assert failed.policy == ServingPolicy(serving=2)
    assert failed.rollout is not None
    assert (failed.rollout.state, failed.rollout.reason) == ("failed", "IntegrityError: bad bytes")
    # a second worker reporting the same failure changes nothing
    assert rules.fail_rollout(failed, 1, "again", NOW) == failed


def test_a_failed_rollout_goes_back_to_the_version_it_replaced() -> None:
    rolled = rules.start_rollout(published(1, 2), 1, None, NOW)
    failed = rules.fail_rollout(rolled, 1, "ValidationFailed: NaN", NOW)
    assert failed.policy == ServingPolicy(serving=2)
    # a report about a version that is not the current rollout's target changes nothing
    assert rules.fail_rollout(rolled, 2, "stale", NOW) == rolled
