"""The typed error tree every failed request ends in.

Errors cross the result backend as Celery's ``{exc_type, exc_module, exc_message}`` JSON, never
pickled; because ``exc_module`` is this module, ``AsyncResult.get()`` re-raises the same class in any
process that can import ``shared``.

Every error is rebuilt from its message alone (that is all the backend keeps, and Celery calls
``cls(message)``). Errors that carry typed fields (``QueueFull``, ``RequestLost``) are built with
keyword arguments where they happen, and read their fields back from the message when rebuilt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, overload

from celery.exceptions import TaskRevokedError


class InferqError(Exception):
    """Base of every error inferq reports for a request.

    ``reason`` is the stable label used in metrics and result payloads.
    """

    reason = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str], dict[str, Any]]:
        # Rebuilt from the message, as the backend rebuilds it; fields kept as they are.
        return (type(self), (self.message,), dict(vars(self)))


def _fields(pattern: re.Pattern[str], message: str) -> dict[str, str]:
    """The named groups of ``pattern`` in a stored message; empty when it does not match (a
    message written by another version)."""
    found = pattern.fullmatch(message)
    return found.groupdict() if found else {}


class InvalidInput(InferqError):
    """The request's input does not match what the model expects."""

    reason = "invalid_input"


class PayloadTooLarge(InvalidInput):
    """The payload is larger than the configured limit."""

    reason = "payload_too_large"


class DeadlineExceeded(InferqError):
    """The request's deadline passed before it could be computed; it was never run."""

    reason = "deadline_exceeded"


class QueueFull(InferqError):
    """The model's queue is at its limit: the producer refuses instead of growing Redis.

    ``QueueFull(queue=..., limit=..., waiting=..., submitted=..., accepted=...)``: ``waiting`` is
    what the queue held, ``submitted`` how many more this push brought, and ``accepted`` the task
    ids of the same call that were queued all the same (they will complete; the producer's own,
    never stored). Rebuilt from a stored message, the numbers are read back from it (None if it
    does not have them) and ``accepted`` is empty.
    """

    reason = "queue_full"
    _TEXT = (
        "queue {queue} must stay within its limit of {limit} waiting requests, "
        "got {waiting} waiting and {submitted} more submitted"
    )
    _PARSE = re.compile(
        r"queue (?P<queue>\S+) must stay within its limit of (?P<limit>\d+) waiting requests, "
        r"got (?P<waiting>\d+) waiting and (?P<submitted>\d+) more submitted"
    )

    @overload
    def __init__(self, message: str, /) -> None: ...

    @overload
    def __init__(
        self,
        /,
        *,
        queue: str,
        limit: int,
        waiting: int,
        submitted: int,
        accepted: Sequence[str] = (),
    ) -> None: ...

    def __init__(
        self,
        message: str | None = None,
        /,
        *,
        queue: str | None = None,
        limit: int | None = None,
        waiting: int | None = None,
        submitted: int | None = None,
        accepted: Sequence[str] = (),
    ) -> None:
        if message is None:
            message = self._TEXT.format(
                queue=queue, limit=limit, waiting=waiting, submitted=submitted
            )
        else:
            found = _fields(self._PARSE, message)
            queue = found.get("queue")
            limit, waiting, submitted = (
                _int_or_none(found.get(k)) for k in ("limit", "waiting", "submitted")
            )
        super().__init__(message)
        self.queue = queue
        self.limit = limit
        self.waiting = waiting
        self.submitted = submitted
        self.accepted = tuple(accepted)


class ModelUnavailable(InferqError):
    """No worker serves the requested model (or version)."""

    reason = "model_unavailable"


class ModelError(InferqError):
    """The model raised while computing this request."""

    reason = "model_error"


class HandlerError(ModelError):
    """The model's custom handler (``[handler]``) raised in a hook for this request: only the
    requests whose hook call fails alone end here, the rest of the batch is answered."""

    reason = "handler_error"


class ValidationFailed(ModelError):
    """A new model version failed its checks before taking requests (non-finite or misshapen
    outputs, or top-1 agreement with its validation file below the threshold)."""

    reason = "validation_failed"


class IntegrityError(InferqError):
    """A model file does not match its recorded sha256."""

    reason = "integrity_error"


class ConfigError(InferqError):
    """Settings or a model config are invalid; the message says what to change."""

    reason = "config_error"


class WorkerCrashed(InferqError):
    """The device failed unrecoverably while computing this request (e.g. a device-side assert)."""

    reason = "worker_crashed"


class BrokerUnavailable(InferqError):
    """Redis could not be reached (after retries); the request was not queued."""

    reason = "broker_unavailable"


class RequestLost(InferqError):
    """Redis restarted without the request (it keeps nothing on disk): it will never complete.

    ``RequestLost(task_id=...)``; rebuilt from a stored message, ``task_id`` is read back from it
    (None if it does not have one).
    """

    reason = "request_lost"
    _TEXT = (
        "request {task_id} must still be queued, held or stored to complete, got none of these "
        "after Redis restarted (run_id changed) without it; submit it again"
    )
    _PARSE = re.compile(r"request (?P<task_id>\S+) must still be queued, held or stored.*", re.S)

    @overload
    def __init__(self, message: str, /) -> None: ...

    @overload
    def __init__(self, /, *, task_id: str) -> None: ...

    def __init__(self, message: str | None = None, /, *, task_id: str | None = None) -> None:
        if message is None:
            message = self._TEXT.format(task_id=task_id)
        else:
            task_id = _fields(self._PARSE, message).get("task_id")
        super().__init__(message)
        self.task_id = task_id


class Revoked(InferqError, TaskRevokedError):
    """The request was revoked (``AsyncResult.revoke()``) before it was computed.

    Stored as Celery stores a revoke (state REVOKED, ``celery.exceptions.TaskRevokedError``), so
    any Celery client's ``.get()`` raises ``TaskRevokedError``; inferq's ``gather`` gives this
    class, which is one.
    """

    reason = "revoked"
    stored_type = "TaskRevokedError"
    stored_module = "celery.exceptions"


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else int(text)


ERROR_TYPES: dict[str, type[InferqError]] = {
    cls.__name__: cls
    for cls in (
        InferqError,
        InvalidInput,
        PayloadTooLarge,
        DeadlineExceeded,
        QueueFull,
        ModelUnavailable,
        ModelError,
        HandlerError,
        ValidationFailed,
        IntegrityError,
        ConfigError,
        WorkerCrashed,
        BrokerUnavailable,
        RequestLost,
    )
}
