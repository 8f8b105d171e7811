"""Model lifecycle with real Redis and real worker processes: hot rollout, canary, promote,
rollback, failed rollouts, an input shape that changes, scale from zero, repository polling.

Each test counts every outcome: no request may fail or go unanswered while versions change.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery.result import AsyncResult

from inferq.producer import gather, submit_job, submit_many
from inferq.shared.celeryconf import make_celery
from inferq.shared.policy import ModelRecord
from inferq.shared.registry import Registry
from inferq.worker.models_cli import notify_workers
from inferq.worker.repository import ModelRepository, published_version
from inferq.worker.validation import VALIDATION_FILE
from tests.models import write_model
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

MODEL = "life"
TTL_S = 0.5  # producers' spec cache: how long an old version drains after a switch
LIFECYCLE_ENV = {
    "INFERQ_SPEC_CACHE_TTL_S": str(TTL_S),
    "INFERQ_HEARTBEAT_S": "1.0",
}


def image(seed: int) -> np.ndarray:
    """An HWC image: the producer resizes it to whatever the routed version's spec says."""
    return np.random.default_rng(seed).integers(0, 200, size=(8, 8, 3), dtype=np.uint8)


@dataclass
class Load:
    """A bounded submitting thread: one request every ``period_s`` until stopped."""

    period_s: float = 0.01
    results: list[AsyncResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.period_s):
            try:
                self.results.append(submit_job.delay(image(i), model=MODEL))
            except Exception as exc:  # counted: a refused submission is a failure too
                self.errors.append(exc)
            i += 1

    def mark(self) -> int:
        """How many were submitted so far: a phase boundary."""
        return len(self.results)

    def stop(self) -> list[Any]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        return gather(self.results, timeout=120, return_exceptions=True)


def outcomes(values: list[Any]) -> Counter[str]:
    return Counter("ok" if isinstance(v, dict) else type(v).__name__ for v in values)


def versions(values: list[Any]) -> list[int]:
    return [v["version"] for v in values if isinstance(v, dict)]


def repo_with(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_model(root, MODEL, "tiny", version=1)
    return root


def add_version(root: Path, version: int, own_config: str | None = None) -> Path:
    """Version ``version`` beside the others (the model's config.toml is written again as is)."""
    config = (root / MODEL / "config.toml").read_text()
    path = write_model(root, MODEL, "tiny", version=version)
    (root / MODEL / "config.toml").write_text(config)
    if own_config is not None:
        (path.parent / "config.toml").write_text(own_config)
    return path


def start(stack_factory: Callable[..., Any], root: Path, **env: str) -> Any:
    stack = stack_factory(root, spec_cache_ttl_s=TTL_S)
    stack.extra_env.update(LIFECYCLE_ENV, **env)
    stack.worker(MODEL)
    return stack


def record(stack: Any) -> ModelRecord:
    found = Registry(stack.client).get(MODEL)
    assert found is not None
    return found


def rollout_state(stack: Any, target: int, state: str) -> ModelRecord | None:
    r = record(stack)
    ok = r.rollout is not None and r.rollout.target == target and r.rollout.state == state
    return r if ok else None


def held_versions(stack: Any) -> set[int]:
    """The versions the (one) worker holds, from its ``inferq_stats`` control command."""
    w = stack.workers[0]
    inspect = make_celery(stack.settings).control.inspect(destination=[w.hostname], timeout=5)
    replies = inspect._request("inferq_stats") or {}
    return {v["version"] for v in replies.get(w.hostname, {}).values()}


def served_by(version: int) -> bool:
    """One fresh request (routed by the policy now) is answered by ``version``."""
    return bool(submit_job.delay(image(0), model=MODEL).get(timeout=30)["version"] == version)


def test_canary_then_promote_under_load(stack_factory, tmp_path: Path) -> None:
    root = repo_with(tmp_path)
    stack = start(stack_factory, root)
    add_version(root, 2)
    registry = Registry(stack.client)
    registry.publish([published_version(ModelRepository(root).resolve(MODEL, 2))])
    load = Load().start()
    wait_until(lambda: load.mark() > 50, 30, "load before the rollout")

    registry.rollout(MODEL, 2, canary_share=0.5)
    notify_workers(MODEL)
    wait_until(lambda: rollout_state(stack, 2, "active"), 60, "the canary loaded and active")
    wait_until(lambda: served_by(2), 30, "a request answered by the canary")
    registry.promote(MODEL)
    notify_workers(MODEL)
    wait_until(lambda: rollout_state(stack, 2, "done"), 30, "version 2 serving")
    time.sleep(TTL_S * 2)  # producers' caches have expired: every new request is routed to 2
    after = load.mark()
    wait_until(lambda: load.mark() > after + 50, 30, "load after the promotion")
    wait_until(lambda: held_versions(stack) == {2}, 30, "version 1 drained and released")
    values = load.stop()

    assert load.errors == []
    assert outcomes(values) == Counter(ok=len(values))
    assert set(versions(values[:50])) == {1}
    assert set(versions(values[after:])) == {2}
    assert Counter(versions(values))[2] > 50


def test_rollback_returns_to_the_previous_version(stack_factory, tmp_path: Path) -> None:
    root = repo_with(tmp_path)
    add_version(root, 2)
    stack = start(stack_factory, root)
    registry = Registry(stack.client)
    assert record(stack).policy.serving == 2  # first publication serves the highest
    registry.publish([published_version(ModelRepository(root).resolve(MODEL, 1))])
    load = Load().start()
    registry.rollout(MODEL, 1)
    notify_workers(MODEL)
    wait_until(lambda: rollout_state(stack, 1, "done"), 60, "version 1 serving")
    registry.rollback(MODEL)
    notify_workers(MODEL)
    wait_until(lambda: rollout_state(stack, 2, "done"), 30, "back on version 2")
    time.sleep(TTL_S * 2)
    after = load.mark()
    wait_until(lambda: load.mark() > after + 30, 30, "load after the rollback")
    values = load.stop()

    assert load.errors == []
    assert outcomes(values) == Counter(ok=len(values))
    assert set(versions(values[after:])) == {2}
    assert 1 in versions(values)


@pytest.mark.parametrize("fault", ["corrupt", "validation"])
def test_a_failed_rollout_keeps_the_old_version_serving(
    stack_factory, tmp_path: Path, fault: str
) -> None:
    root = repo_with(tmp_path)
    stack = start(stack_factory, root)
    path = add_version(root, 2)
    registry = Registry(stack.client)
    registry.publish([published_version(ModelRepository(root).resolve(MODEL, 2))])
    if fault == "corrupt":  # bytes changed after publication: the recorded sha256 no longer holds
        path.write_bytes(path.read_bytes()[:-64] + bytes(64))
    else:  # expected top-1 that the model never gives
        inputs = np.random.default_rng(3).integers(0, 256, size=(16, 3, 8, 8), dtype=np.uint8)
        np.savez(path.parent / VALIDATION_FILE, inputs=inputs, top1=np.full(16, 99))
    load = Load().start()
    wait_until(lambda: load.mark() > 30, 30, "load before the rollout")

    registry.rollout(MODEL, 2)
    notify_workers(MODEL)
    failed = wait_until(lambda: rollout_state(stack, 2, "failed"), 60, "the rollout failed")
    time.sleep(TTL_S * 2)
    after = load.mark()
    wait_until(lambda: load.mark() > after + 30, 30, "load after the failure")
    values = load.stop()

    assert failed.policy.serving == 1
    assert failed.rollout is not None
    reason = failed.rollout.reason
    assert (
        ("IntegrityError" in reason and "sha256" in reason)
        if fault == "corrupt"
        else ("ValidationFailed" in reason and "agree" in reason)
    )
    assert load.errors == []
    assert outcomes(values) == Counter(ok=len(values))
    assert set(versions(values)) == {1}


def test_a_new_input_shape_switches_without_invalid_input(stack_factory, tmp_path: Path) -> None:
    root = repo_with(tmp_path)
    stack = start(stack_factory, root)
    wider = (root / MODEL / "config.toml").read_text().replace("[3, 8, 8]", "[3, 12, 12]")
    add_version(root, 2, own_config=wider)
    registry = Registry(stack.client)
    registry.publish([published_version(ModelRepository(root).resolve(MODEL, 2))])
    assert record(stack).version(2).spec.shape == (3, 12, 12)
    load = Load().start()
    wait_until(lambda: load.mark() > 30, 30, "load before the rollout")
    registry.rollout(MODEL, 2)
    notify_workers(MODEL)
    wait_until(lambda: rollout_state(stack, 2, "done"), 60, "version 2 serving")
    time.sleep(TTL_S * 2)
    after = load.mark()
    wait_until(lambda: load.mark() > after + 30, 30, "load after the switch")
    values = load.stop()

    assert load.errors == []
    assert outcomes(values) == Counter(ok=len(values))  # no InvalidInput
    assert set(versions(values[after:])) == {2}


def test_scale_from_zero_answers_what_was_queued(stack_factory, tmp_path: Path) -> None:
    root = repo_with(tmp_path)
    stack = stack_factory(root)
    Registry(stack.client).publish([published_version(ModelRepository(root).resolve(MODEL))])
    results = submit_many([image(i) for i in range(500)], model=MODEL)  # no worker alive
    stack.worker(MODEL)
    values = gather(results, timeout=120, return_exceptions=True)
    assert outcomes(values) == Counter(ok=500)
    assert set(versions(values)) == {1}


def test_polling_mode_rolls_out_a_new_version_directory(stack_factory, tmp_path: Path) -> None:
    root = repo_with(tmp_path)
    stack = start(stack_factory, root, INFERQ_REPOSITORY_POLL_S="0.5")
    assert served_by(1)
    add_version(root, 2)
    polled = wait_until(lambda: rollout_state(stack, 2, "done"), 60, "version 2 polled and serving")
    assert polled.policy.serving == 2 and polled.version_numbers == (1, 2)
    time.sleep(TTL_S * 2)
    values = gather(submit_many([image(i) for i in range(50)], model=MODEL), timeout=60)
    assert set(versions(list(values))) == {2}


def poisoned(seed: int) -> np.ndarray:
    """An image the ``faulty`` test model raises on (its first pixel is 255); ``tiny`` does not."""
    img = image(seed)
    img[0, 0, :] = 255
    return img


def test_the_canary_guard_rolls_back_a_failing_canary(stack_factory, tmp_path: Path) -> None:
    root = repo_with(tmp_path)
    stack = start(stack_factory, root)
    config = (root / MODEL / "config.toml").read_text()
    path = write_model(root, MODEL, "faulty", version=2)  # fails every request sent below
    (root / MODEL / "config.toml").write_text(config)
    guarded = config + "\n[rollout]\ncanary_max_failure_rate = 0.2\ncanary_min_requests = 10\n"
    (path.parent / "config.toml").write_text(guarded)
    registry = Registry(stack.client)
    registry.publish([published_version(ModelRepository(root).resolve(MODEL, 2))])

    registry.rollout(MODEL, 2, canary_share=0.5)
    notify_workers(MODEL)
    wait_until(lambda: rollout_state(stack, 2, "active"), 60, "the canary loaded and active")
    before = submit_many([poisoned(i) for i in range(200)], model=MODEL)
    failed = wait_until(lambda: rollout_state(stack, 2, "failed"), 60, "the guard rolled back")
    time.sleep(TTL_S * 2)  # producers' caches have expired: nothing more is routed to 2
    after = submit_many([poisoned(i) for i in range(100)], model=MODEL)
    first = gather(before, timeout=120, return_exceptions=True)
    second = gather(after, timeout=120, return_exceptions=True)

    assert failed.policy.serving == 1 and failed.policy.canary is None
    assert failed.rollout is not None and "canary guard" in failed.rollout.reason
    counts = outcomes(first)
    # Only the canary's own requests failed (ModelError, a server-side failure); every other
    # request of the first batch was answered by version 1.
    assert set(counts) <= {"ok", "ModelError"} and counts["ModelError"] >= 10
    assert set(versions(first)) == {1}
    assert outcomes(second) == Counter(ok=100) and set(versions(second)) == {1}
