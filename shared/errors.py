"""The typed error tree every failed request ends in.

Errors cross the result backend as Celery's ``{exc_type, exc_module, exc_message}`` JSON, never
pickled; because ``exc_module`` is this module, ``AsyncResult.get()`` re-raises the same class in any
process that can import ``shared``.
"""

from __future__ import annotations


class InferqError(Exception):
    """Base of every error inferq reports for a request.

    ``reason`` is the stable label used in metrics and result payloads.
    """

    reason = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


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
    """The model's queue is at its limit: the producer refuses instead of growing Redis."""

    reason = "queue_full"


class ModelUnavailable(InferqError):
    """No worker serves the requested model (or version)."""

    reason = "model_unavailable"


class ModelError(InferqError):
    """The model raised while computing this request."""

    reason = "model_error"


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
    """Redis restarted without the request (it keeps nothing on disk): it will never complete."""

    reason = "request_lost"


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
        IntegrityError,
        ConfigError,
        WorkerCrashed,
        BrokerUnavailable,
        RequestLost,
    )
}
