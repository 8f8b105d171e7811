"""shared/results.py: result metas stored exactly as Celery's Redis backend stores them."""

from __future__ import annotations

import copy
import json
import pickle
import typing
from datetime import datetime
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TaskRevokedError

from inferq.shared import errors
from inferq.shared.celeryconf import make_celery
from inferq.shared.errors import ERROR_TYPES, InferqError, InvalidInput, ModelError, QueueFull
from inferq.shared.results import (
    FINAL_STATES,
    InferenceResult,
    Timing,
    error_from_meta,
    failure_meta,
    success_meta,
    value_from_meta,
)
from inferq.shared.settings import Settings

META_KEYS = {"status", "result", "traceback", "children", "date_done", "task_id"}
RESULT = {
    "model": "tiny",
    "version": 3,
    "outputs": [{"index": 1, "label": "b", "score": 0.75}],
    "timing": {"total_ms": 12.5, "batch_size": 4, "worker": "w", "device": "cpu"},
}
ALL_ERRORS = sorted(ERROR_TYPES.values(), key=lambda cls: cls.__name__)


@pytest.fixture(scope="module")
def app() -> Celery:
    # exception_to_python / decode_result never connect; the port is unreachable on purpose
    return make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))


class _Store:
    """Stands in for Redis GET under the backend: AsyncResult reads our bytes through Celery."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.data: dict[bytes, bytes] = {}

    def put(self, task_id: str, raw: bytes) -> None:
        self.data[self.app.backend.get_key_for_task(task_id)] = raw

    def get(self, key: Any) -> bytes | None:
        return self.data.get(key if isinstance(key, bytes) else str(key).encode())


@pytest.fixture
def store(app: Celery, monkeypatch: pytest.MonkeyPatch) -> _Store:
    s = _Store(app)
    monkeypatch.setattr(app.backend, "get", s.get)
    return s


# -- meta shape --------------------------------------------------------------------------------


def test_success_meta_shape() -> None:
    meta = json.loads(success_meta("task-1", RESULT))
    assert set(meta) == META_KEYS
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == RESULT
    assert meta["traceback"] is None
    assert meta["children"] == []
    assert meta["task_id"] == "task-1"
    done = datetime.fromisoformat(meta["date_done"])
    assert done.utcoffset() is not None and done.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_failure_meta_shape(cls: type[InferqError]) -> None:
    meta = json.loads(failure_meta("task-2", cls("what was expected, got what came")))
    assert set(meta) == META_KEYS
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {
        "exc_type": cls.__name__,
        "exc_message": ["what was expected, got what came"],
        "exc_module": "inferq.shared.errors",
    }
    assert meta["traceback"] is None
    assert meta["task_id"] == "task-2"


def test_meta_keys_match_what_celerys_backend_stores(app: Celery) -> None:
    # KeyValueStoreBackend._store_result stores _get_result_meta(...) plus task_id
    celery_meta = app.backend._get_result_meta(
        result=RESULT, state="SUCCESS", traceback=None, request=None
    )
    celery_keys = set(celery_meta) | {"task_id"}
    assert set(json.loads(success_meta("t", RESULT))) == celery_keys
    assert set(json.loads(failure_meta("t", QueueFull("x")))) == celery_keys


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_failure_result_equals_celerys_own_exception_encoding(app: Celery, cls: type) -> None:
    error = cls("must be X, got Y")
    ours = json.loads(failure_meta("t", error))["result"]
    theirs = json.loads(json.dumps(app.backend.prepare_exception(error)))
    assert ours == theirs


def test_metas_are_json_without_pickle() -> None:
    for raw in (success_meta("t", RESULT), failure_meta("t", ModelError("m"))):
        assert isinstance(raw, bytes)
        json.loads(raw)
        assert b"\x80\x04" not in raw and b"\x80\x05" not in raw  # no pickle protocol header
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(raw)


# -- reading metas back ------------------------------------------------------------------------


def test_value_from_meta_returns_the_result() -> None:
    assert value_from_meta(success_meta("t", RESULT)) == RESULT
    assert value_from_meta(success_meta("t", RESULT).decode()) == RESULT


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_value_from_meta_raises_the_same_typed_error(cls: type[InferqError]) -> None:
    message = f"{cls.__name__}: must be this, got that"
    with pytest.raises(cls) as info:
        value_from_meta(failure_meta("t", cls(message)))
    assert type(info.value) is cls
    assert info.value.message == message
    assert str(info.value) == message
    assert info.value.reason == cls.reason


def test_unknown_exc_type_becomes_inferq_error_naming_it() -> None:
    raw = json.dumps(
        {
            "status": "FAILURE",
            "result": {
                "exc_type": "ZeroDivisionError",
                "exc_message": ["division by zero"],
                "exc_module": "builtins",
            },
            "traceback": "Traceback ...",
            "children": [],
            "date_done": "2026-01-01T00:00:00+00:00",
            "task_id": "t",
        }
    )
    with pytest.raises(InferqError) as info:
        value_from_meta(raw)
    assert type(info.value) is InferqError
    assert str(info.value) == "ZeroDivisionError: division by zero"


def test_error_from_meta_edge_cases() -> None:
    unreadable = error_from_meta("just a string")
    assert type(unreadable) is InferqError
    assert "unreadable error: 'just a string'" in str(unreadable)
    plain = error_from_meta({"exc_type": "InvalidInput", "exc_message": "not a list"})
    assert type(plain) is InvalidInput and str(plain) == "not a list"
    empty = error_from_meta({"exc_type": "ModelError", "exc_message": []})
    assert type(empty) is ModelError and str(empty) == ""
    missing = error_from_meta({})
    assert type(missing) is InferqError


def test_shared_errors_do_not_resolve_to_non_error_names() -> None:
    # exc_type is looked up in ERROR_TYPES only: other names in inferq.shared.errors stay generic
    err = error_from_meta(
        {"exc_type": "annotations", "exc_message": ["x"], "exc_module": "inferq.shared.errors"}
    )
    assert type(err) is InferqError


# -- Celery reads our metas --------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_celery_exception_to_python_gives_the_same_class(
    app: Celery, cls: type[InferqError]
) -> None:
    meta = json.loads(failure_meta("t", cls("must be A, got B")))
    exc = app.backend.exception_to_python(meta["result"])
    assert type(exc) is cls
    assert str(exc) == "must be A, got B"
    assert exc.message == "must be A, got B"


def test_celery_decode_result_turns_failure_into_the_exception(app: Celery) -> None:
    meta = app.backend.decode_result(failure_meta("t", QueueFull("queue q must stay within 5")))
    assert meta["status"] == "FAILURE"
    assert type(meta["result"]) is QueueFull
    assert meta["task_id"] == "t"
    ok = app.backend.decode_result(success_meta("t", RESULT))
    assert ok["status"] == "SUCCESS" and ok["result"] == RESULT


def test_async_result_get_returns_and_raises_through_celery(app: Celery, store: _Store) -> None:
    store.put("ok-1", success_meta("ok-1", RESULT))
    store.put("bad-1", failure_meta("bad-1", errors.DeadlineExceeded("request must start before")))
    good = app.AsyncResult("ok-1")
    assert good.state == "SUCCESS"
    assert good.get(timeout=1) == RESULT
    bad = app.AsyncResult("bad-1")
    assert bad.state == "FAILURE"
    assert bad.failed()
    with pytest.raises(errors.DeadlineExceeded, match="request must start before"):
        bad.get(timeout=1)


def test_a_revoked_request_is_stored_as_celery_stores_a_revoke(app: Celery, store: _Store) -> None:
    store.put("gone-1", failure_meta("gone-1", errors.Revoked("request gone-1 was revoked")))
    result = app.AsyncResult("gone-1")
    assert result.state == "REVOKED"
    with pytest.raises(TaskRevokedError, match="gone-1 was revoked"):
        result.get(timeout=1)


def test_gather_reads_a_revoke_as_the_typed_error_which_is_celerys() -> None:
    raw = failure_meta("gone-2", errors.Revoked("request gone-2 was revoked"))
    assert json.loads(raw)["status"] in FINAL_STATES
    with pytest.raises(errors.Revoked) as caught:
        value_from_meta(raw)
    assert isinstance(caught.value, TaskRevokedError)


# -- errors and timing -------------------------------------------------------------------------


def test_error_types_registry_is_complete_and_consistent() -> None:
    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, InferqError)
    }
    # Revoked is stored as Celery stores a revoke (TaskRevokedError), not under its own name.
    assert set(ERROR_TYPES) == defined - {errors.Revoked.__name__}
    for name, cls in ERROR_TYPES.items():
        assert cls.__name__ == name
        assert cls.__module__ == "inferq.shared.errors"
    reasons = [cls.reason for cls in ERROR_TYPES.values()]
    assert len(set(reasons)) == len(reasons)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_errors_survive_copying_with_their_class_and_message(cls: type[InferqError]) -> None:
    error = cls("must be A, got B")
    clone = copy.deepcopy(error)
    assert type(clone) is cls and clone.message == error.message


def test_a_result_declares_exactly_its_documented_fields() -> None:
    assert set(typing.get_type_hints(InferenceResult)) == {"model", "version", "outputs", "timing"}
    assert set(typing.get_type_hints(InferenceResult)) == set(RESULT)


def test_timing_declares_exactly_the_documented_fields() -> None:
    assert set(typing.get_type_hints(Timing)) == {
        "preprocess_ms",
        "queue_ms",
        "batch_wait_ms",
        "collate_ms",
        "infer_ms",
        "post_ms",
        "total_ms",
        "batch_size",
        "worker",
        "device",
    }


# -- errors with typed fields ------------------------------------------------------------------


def test_queue_full_is_built_from_its_fields_and_says_them() -> None:
    error = QueueFull(queue="inferq.m", limit=20, waiting=19, submitted=3, accepted=["a", "b"])
    assert str(error) == (
        "queue inferq.m must stay within its limit of 20 waiting requests, "
        "got 19 waiting and 3 more submitted"
    )
    assert (error.queue, error.limit, error.waiting, error.submitted) == ("inferq.m", 20, 19, 3)
    assert error.accepted == ("a", "b")


def test_queue_full_rebuilt_from_the_backend_reads_its_fields_back(app: Celery) -> None:
    error = QueueFull(queue="inferq.m", limit=20, waiting=19, submitted=3, accepted=["a"])
    stored = json.loads(failure_meta("t", error))["result"]
    for rebuilt in (error_from_meta(stored), app.backend.exception_to_python(stored)):
        assert type(rebuilt) is QueueFull
        assert str(rebuilt) == str(error)
        assert (rebuilt.queue, rebuilt.limit, rebuilt.waiting, rebuilt.submitted) == (
            "inferq.m",
            20,
            19,
            3,
        )
        assert rebuilt.accepted == ()  # the producer's own, never stored


def test_queue_full_from_a_foreign_message_has_no_fields() -> None:
    error = QueueFull("the queue is full")
    assert str(error) == "the queue is full"
    assert (error.queue, error.limit, error.waiting, error.submitted) == (None, None, None, None)


def test_copies_keep_the_fields_that_are_not_stored() -> None:
    error = QueueFull(queue="inferq.m", limit=1, waiting=1, submitted=1, accepted=["a"])
    assert copy.deepcopy(error).accepted == ("a",)


def test_request_lost_names_its_task_and_reads_it_back(app: Celery) -> None:
    error = errors.RequestLost(task_id="t-42")
    assert str(error).startswith("request t-42 must still be queued, held or stored")
    stored = json.loads(failure_meta("t-42", error))["result"]
    for rebuilt in (error_from_meta(stored), app.backend.exception_to_python(stored)):
        assert type(rebuilt) is errors.RequestLost
        assert rebuilt.task_id == "t-42" and str(rebuilt) == str(error)
    assert errors.RequestLost("gone").task_id is None
