"""A real worker, as operators run it: JSON logs on every stream, and Celery's revoke honoured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery.exceptions import TaskRevokedError

from inferq.producer import submit_job
from inferq.shared.errors import ModelError
from tests.conftest import Stack
from tests.models import write_model
from tests.waiting import wait_until

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def chw(value: int = 7) -> np.ndarray:
    return np.full((3, 8, 8), value, dtype=np.uint8)


def poisoned() -> np.ndarray:
    x = chw()
    x[0, 0, 0] = 255  # Faulty raises for this row
    return x


def test_json_mode_writes_only_json_lines_with_the_failures_context(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "faulty", "faulty")
    stack = stack_factory(repo)
    stack.extra_env["INFERQ_TASK_SIGNALS"] = "1"  # the signals path logs through the same handler
    worker = stack.worker("faulty")
    good = submit_job.delay(chw(), model="faulty")
    bad = submit_job.apply_async(
        (poisoned(),), {"model": "faulty"}, headers={"traceparent": PARENT}
    )
    assert good.get(timeout=60)["model"] == "faulty"
    with pytest.raises(ModelError):
        bad.get(timeout=60)
    assert worker.terminate(timeout=30) == 0
    assert worker.log_path is not None
    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    records = [_json(line) for line in lines]  # every line of stdout and stderr
    assert any(r.get("event") == "celery worker starting" for r in records)
    failed = [r for r in records if r.get("event") == "request failed"]
    assert len(failed) == 1
    line = failed[0]
    assert line["task_id"] == bad.id
    assert (line["model"], line["version"], line["traceparent"]) == ("faulty", 1, PARENT)
    assert line["worker"] == worker.hostname and line["batch_id"]


def _json(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        pytest.fail(f"worker wrote a line that is not JSON: {line!r}")
    assert isinstance(record, dict), line
    return record


def test_a_request_revoked_while_queued_behind_a_slow_batch_is_never_computed(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "sleepy", "sleepy", max_batch_size=1, max_wait_ms=1.0)
    stack = stack_factory(repo)
    worker = stack.worker("sleepy")
    # Revokes are broadcast: they reach the workers listening then (Celery's semantics), and
    # the inferq step is up before Celery's consumer, so wait for it to answer.
    control = submit_job.AsyncResult("x").app.control
    wait_until(
        lambda: control.ping([worker.hostname], timeout=0.5), 60, "the worker answering ping"
    )
    # One request computes (about a second), one is staged behind it, the third waits.
    ahead = [submit_job.delay(chw(), model="sleepy") for _ in range(2)]
    doomed = submit_job.delay(chw(), model="sleepy")
    doomed.revoke()
    after = submit_job.delay(chw(), model="sleepy")
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=60)
    assert doomed.state == "REVOKED"
    for r in [*ahead, after]:
        assert r.get(timeout=60)["model"] == "sleepy"
    # Celery's revoke command already stores REVOKED; computing it would have overwritten that.
    assert submit_job.AsyncResult(doomed.id).state == "REVOKED"
    assert worker.terminate(timeout=30) == 0
    assert worker.log_path is not None
    computed = [
        r for r in map(json.loads, worker.log_path.read_text().splitlines())
        if r.get("task_id") == doomed.id
    ]  # fmt: skip
    assert [(r["event"], r["error"]) for r in computed] == [("message rejected", "Revoked")]
