"""The result writer: one thread stores every finished request's result and acknowledges its
message, a whole queue's worth of batches in one script call.

Results are stored and messages acknowledged atomically (``Broker.store_and_ack``); the writer
keeps them until Redis takes them, however long Redis refuses writes or cannot be reached. If
the process dies first, the messages come back after the visibility timeout and are computed
again: nothing is lost, nothing acked without its result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any

import structlog

from inferq.shared.errors import ModelError
from inferq.shared.logs import bound
from inferq.shared.results import failure_meta, now_iso, success_meta
from inferq.worker.broker import QueueBroker, Write, until_redis_takes
from inferq.worker.hooks import Hook
from inferq.worker.inhand import InHand

if TYPE_CHECKING:
    from inferq.worker.intake import Rejection
    from inferq.worker.runner import Outcome


@dataclass(frozen=True)
class WriteJob:
    """What one batch (or one fetch's rejections) leaves to write, for one model."""

    model: str
    version: int  # the version that computed these (or whose queue they came from)
    in_hand: InHand  # the model's count of held messages: these are off it once stored
    outcomes: Sequence[Outcome]
    rejections: Sequence[Rejection]
    #: The log context of the thread that made the job (model, version, batch id), so that the
    #: writer's lines about these requests carry it.
    context: Mapping[str, Any] = field(default_factory=structlog.contextvars.get_contextvars)

    def writes(self) -> list[Write]:
        done = now_iso()  # one date_done for the batch: its results are stored together
        out = [Write(o.request.tag, o.request.task_id, _meta(o, done)) for o in self.outcomes]
        out += [
            Write(r.tag, r.task_id, failure_meta(r.task_id, r.error, done) if r.task_id else None)
            for r in self.rejections
        ]
        return out


def _meta(o: Outcome, date_done: str) -> bytes:
    if o.error is not None:
        return failure_meta(o.request.task_id, o.error, date_done)
    assert o.value is not None
    try:
        return success_meta(o.request.task_id, o.value, date_done)
    except (TypeError, ValueError) as exc:  # an output JSON cannot carry still ends the request
        error = ModelError(
            f"model output must be JSON-serialisable, got {type(exc).__name__}: {exc}"
        )
        return failure_meta(o.request.task_id, error, date_done)


class ResultWriter:
    """``put`` from any thread; ``run`` on the writer's own thread until ``close``, after which
    it writes everything put before and returns."""

    def __init__(self, broker: QueueBroker, hooks: Hook) -> None:
        self.broker = broker
        self.hooks = hooks
        self._jobs: Queue[WriteJob | None] = Queue()

    def put(self, job: WriteJob) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)

    def run(self) -> None:
        done = False
        while not done:
            jobs, done = self._take()
            if jobs:
                self.store(jobs)

    def _take(self) -> tuple[list[WriteJob], bool]:
        """Every job waiting (blocking for the first), and whether ``close`` came among them."""
        jobs: list[WriteJob] = []
        closed = False
        item = self._jobs.get()
        while True:
            if item is None:
                closed = True
            else:
                jobs.append(item)
            try:
                item = self._jobs.get_nowait()
            except Empty:
                return jobs, closed

    def store(self, jobs: Sequence[WriteJob]) -> None:
        """Store the jobs' results and ack their messages, retrying until Redis takes them."""
        writes = [w for job in jobs for w in job.writes()]
        started = time.perf_counter()
        until_redis_takes(
            partial(self.broker.store_and_ack, writes), "storing results", pending=len(writes)
        )
        seconds = time.perf_counter() - started
        for job in jobs:
            job.in_hand.done(len(job.outcomes) + len(job.rejections))
            with bound(**job.context):
                self.hooks.after_store(
                    job.model, job.version, job.outcomes, job.rejections, seconds
                )
