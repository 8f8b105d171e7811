"""Result schema and its Celery result-backend encoding.

A worker stores exactly what Celery's Redis backend would (``celery-task-meta-<id>`` holding
``{status, result, traceback, children, date_done, task_id}`` as JSON, published on the same
channel), so ``AsyncResult.get()`` works from any process. Failures carry ``exc_module =
"inferq.shared.errors"`` and are re-raised as the same typed error; nothing is ever pickled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict, cast

import orjson

from inferq.shared.arrays import ARRAYS_FLAG, ARRAYS_KEY, ArrayDefault, decode_result
from inferq.shared.errors import ERROR_TYPES, InferqError, Revoked


class Timing(TypedDict):
    """Where one request's time went, in milliseconds (wall clock across hosts; clamped at 0).

    ``total_ms`` runs from the producer's call to the result being handed to the backend; the
    ``*_ms`` parts before it are producer preprocessing, time in the Redis queue, time waiting in
    the micro-batcher, then the batch's collate, inference and post-processing.
    """

    preprocess_ms: float
    queue_ms: float
    batch_wait_ms: float
    collate_ms: float
    infer_ms: float
    post_ms: float
    total_ms: float
    batch_size: int
    worker: str
    device: str


class InferenceResult(TypedDict):
    """One request's result, as stored and as ``AsyncResult.get()`` and ``gather`` return it: a
    plain JSON dict, so any Celery client reads it.

    ``outputs`` is what the model's ``[output]`` post-processing gives: for ``topk``, a list of
    ``{index, label, score}`` best first; for ``raw``, the request's output as a numpy array (a
    dict or list of them for a model with several outputs); for ``detection``, a list of
    ``{box, label, score}``; for ``segmentation``, a uint8 array of class ids. Arrays are stored
    as the wire codec inside the JSON (``shared/arrays.py``) and read back as numpy arrays.
    """

    model: str
    version: int
    outputs: Any
    timing: Timing


def now_iso() -> str:
    """Celery's ``date_done`` form; a writer computes it once per batch of metas."""
    return datetime.now(UTC).isoformat()


def success_meta(task_id: str, result: InferenceResult, date_done: str | None = None) -> bytes:
    """The SUCCESS meta; one whose outputs hold arrays also says so (``"inferq_arrays": true``
    before the Celery keys), so that readers walk only those results for arrays."""
    default = ArrayDefault()
    raw = _meta(task_id, "SUCCESS", result, date_done, default)
    return ARRAYS_FLAG + raw[1:] if default.used else raw


def failure_meta(task_id: str, error: InferqError, date_done: str | None = None) -> bytes:
    """FAILURE with the typed error; a revoke is stored as Celery stores it (REVOKED)."""
    if isinstance(error, Revoked):
        revoked = {
            "exc_type": Revoked.stored_type,
            "exc_message": [error.message],
            "exc_module": Revoked.stored_module,
        }
        return _meta(task_id, "REVOKED", revoked, date_done)
    encoded = {
        "exc_type": type(error).__name__,
        "exc_message": [error.message],
        "exc_module": type(error).__module__,
    }
    return _meta(task_id, "FAILURE", encoded, date_done)


def _meta(
    task_id: str, status: str, result: Any, date_done: str | None, default: Any = None
) -> bytes:
    meta = {
        "status": status,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": date_done or now_iso(),
        "task_id": task_id,
    }
    return orjson.dumps(meta, default=default)


#: Error classes by stored ``exc_type``: inferq's own, and Celery's revoke.
_STORED_TYPES: dict[str, type[InferqError]] = {**ERROR_TYPES, Revoked.stored_type: Revoked}


def error_from_meta(result: Any) -> InferqError:
    """The typed error a FAILURE meta stands for; unknown types become a plain InferqError."""
    if not isinstance(result, dict):
        return InferqError(f"task failed with an unreadable error: {result!r}")
    cls = _STORED_TYPES.get(str(result.get("exc_type")), InferqError)
    message = result.get("exc_message") or [""]
    text = message[0] if isinstance(message, list) and message else str(message)
    if cls is InferqError and result.get("exc_type") not in _STORED_TYPES:
        text = f"{result.get('exc_type')}: {text}"
    return cls(str(text))


#: The states a stored meta ends a request in (Celery's READY_STATES that inferq writes).
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def value_from_meta(raw: bytes | str) -> InferenceResult:
    """The result of a stored meta, or raise its typed error."""
    return value_from_decoded(orjson.loads(raw))


def value_from_decoded(meta: dict[str, Any]) -> InferenceResult:
    """:func:`value_from_meta` for a meta already decoded."""
    if meta.get("status") == "SUCCESS":
        result = dict(meta["result"])
        return cast(InferenceResult, decode_result(result) if meta.get(ARRAYS_KEY) else result)
    raise error_from_meta(meta.get("result"))
