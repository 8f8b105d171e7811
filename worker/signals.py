"""Celery's task signals for every request, so Celery integrations see inferq's requests.

With ``INFERQ_TASK_SIGNALS=1`` each request of a batch gets ``task_prerun`` before the batch
runs, then ``task_success`` or ``task_failure`` and ``task_postrun`` once it is computed, as
Celery's own tracer sends them, with ``sender``/``task`` the registered ``inferq.infer`` task.
While a request's signals are sent, ``task.request`` is that request (its id, and the W3C
``traceparent``/``tracestate`` it carried): OpenTelemetry's Celery instrumentation reads the
parent span from there, so its span for the request joins the producer's trace.

Signals are sent on the run thread, around the batch, not inside it: a receiver's cost is paid
per request (README: "Celery task signals" has the figures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from celery import Task, signals

from inferq.shared import keys
from inferq.worker.hooks import Hook

if TYPE_CHECKING:
    from inferq.worker.intake import InferenceRequest
    from inferq.worker.runner import Outcome


class TaskSignalsHook(Hook):
    def __init__(self, task: Task) -> None:
        self.task = task

    def before_batch(self, model: str, version: int, batch: Sequence[InferenceRequest]) -> None:
        if not _listened():
            return
        for r in batch:
            self._as_request(r, self._prerun)

    def after_batch(
        self,
        model: str,
        version: int,
        batch: Sequence[InferenceRequest],
        outcomes: Sequence[Outcome],
        infer_s: float,
    ) -> None:
        if not _listened():
            return
        for o in outcomes:
            self._as_request(o.request, partial(self._finished, outcome=o))

    def _as_request(self, r: InferenceRequest, send: Callable[[InferenceRequest], None]) -> None:
        """Send with ``task.request`` set to ``r``, as Celery does while a task runs."""
        self.task.push_request(**_request_fields(r))
        try:
            send(r)
        finally:
            self.task.pop_request()

    def _prerun(self, r: InferenceRequest) -> None:
        signals.task_prerun.send(
            sender=self.task, task_id=r.task_id, task=self.task, args=(), kwargs=_kwargs(r)
        )

    def _finished(self, r: InferenceRequest, outcome: Outcome) -> None:
        o = outcome
        kwargs = _kwargs(r)
        retval: object
        if o.error is None:
            signals.task_success.send(sender=self.task, result=o.value)
            state, retval = "SUCCESS", o.value
        else:
            signals.task_failure.send(
                sender=self.task,
                task_id=r.task_id,
                exception=o.error,
                args=(),
                kwargs=kwargs,
                traceback=None,
                einfo=None,
            )
            state, retval = "FAILURE", o.error
        signals.task_postrun.send(
            sender=self.task,
            task_id=r.task_id,
            task=self.task,
            args=(),
            kwargs=kwargs,
            retval=retval,
            state=state,
        )


_SIGNALS = (signals.task_prerun, signals.task_success, signals.task_failure, signals.task_postrun)


def _listened() -> bool:
    """Whether anything receives the signals (checked per batch: a receiver connected later,
    say by an instrumentation, is seen from the next batch on)."""
    return any(s.receivers for s in _SIGNALS)


def _kwargs(r: InferenceRequest) -> dict[str, Any]:
    return {"model": r.model}


def _request_fields(r: InferenceRequest) -> dict[str, Any]:
    trace = r.trace.headers() if r.trace is not None else {}
    return {
        "id": r.task_id,
        "task": keys.TASK_NAME,
        "args": (),
        "kwargs": _kwargs(r),
        "delivery_info": {"redelivered": r.redelivered, "priority": r.priority},
        "headers": trace,
        **trace,
    }
