"""Make the batch on the device visible to ``celery inspect active``, like Celery's own tasks."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.worker import state as worker_state

from inferq.shared import keys
from inferq.worker.hooks import Hook

if TYPE_CHECKING:
    from inferq.worker.intake import InferenceRequest
    from inferq.worker.runner import Outcome


@dataclass(eq=False)
class ActiveRequest:
    """What ``inspect active`` reports for one request (Celery's ``Request.info`` fields)."""

    id: str
    model: str
    hostname: str
    time_start: float = field(default_factory=time.time)

    def info(self, safe: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": keys.TASK_NAME,
            "args": "(<tensor>,)",
            "kwargs": {"model": self.model},
            "type": keys.TASK_NAME,
            "hostname": self.hostname,
            "time_start": self.time_start,
            "acknowledged": False,
            "delivery_info": {"routing_key": keys.queue_name(self.model)},
            "worker_pid": os.getpid(),
        }


class ActiveRequestsHook(Hook):
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._running: dict[str, list[ActiveRequest]] = {}

    def before_batch(self, model: str, version: int, batch: Sequence[InferenceRequest]) -> None:
        started = time.time()  # one start for the batch: it runs as one
        active = [ActiveRequest(r.task_id, model, self.hostname, started) for r in batch]
        self._running[model] = active
        worker_state.active_requests.update(active)

    def after_batch(
        self,
        model: str,
        version: int,
        batch: Sequence[InferenceRequest],
        outcomes: Sequence[Outcome],
        infer_s: float,
    ) -> None:
        worker_state.active_requests.difference_update(self._running.pop(model, ()))
