"""Celery task events for the bulk path, so Flower and ``celery events`` show inferq's tasks.

Celery's own consumer sends one event per state change per task, each a round trip. Here events
are built off the request path, on their own thread, and published in one pipeline per batch, in
exactly the form kombu's Redis fanout uses (``PUBLISH /<db>.celeryev/<routing key> <envelope>``).
Like Celery's, events are best effort: if the queue to this thread is full, events are dropped
(and counted), never the requests.
"""

from __future__ import annotations

import base64
import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from shared import keys
from shared.logs import get_logger
from shared.redisconn import CONNECTION_ERRORS, make_client
from worker.hooks import Hook

if TYPE_CHECKING:
    from celery import Celery

    from worker.messages import Rejection
    from worker.runner import Outcome

log = get_logger(__name__)


def fanout_topic(broker_url: str, routing_key: str) -> str:
    path = urlsplit(broker_url).path.strip("/")
    db = int(path) if path.isdigit() else 0
    return f"/{db}.celeryev/{routing_key}"


class EnvelopeMaker:
    """kombu's fanout envelope for an event, with everything but the body and tag built once."""

    def __init__(self, hostname: str) -> None:
        self._head = orjson.dumps(
            {
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"hostname": hostname},
            }
        )[:-1]
        self._prefix = f"{uuid.uuid4()}-"
        self._count = itertools.count()

    def __call__(self, event: dict[str, Any]) -> bytes:
        body = base64.b64encode(orjson.dumps(event))
        props = orjson.dumps(
            {
                "delivery_mode": 1,
                "delivery_info": {
                    "exchange": "celeryev",
                    "routing_key": event["type"].replace("-", "."),
                },
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": f"{self._prefix}{next(self._count)}",
            }
        )
        return b"".join((self._head, b',"body":"', body, b'","properties":', props, b"}"))


class EventsHook(Hook):
    """Sends task-received and task-succeeded/task-failed for every request (no task-started:
    in a batch it would carry the same time as received, at the cost of a third message)."""

    def __init__(self, app: Celery, hostname: str, max_pending: int = 100_000) -> None:
        self.enabled = bool(app.conf.worker_send_task_events)
        self.app = app
        self.hostname = hostname
        self.pid = os.getpid()
        self.dropped = 0
        self._envelope = EnvelopeMaker(hostname)
        self._queue: queue.Queue[list[dict[str, Any]]] = queue.Queue(maxsize=max_pending)
        self._broker_url = app.conf.broker_url
        self._topics = {
            t: fanout_topic(self._broker_url, t.replace("-", "."))
            for t in ("task-received", "task-succeeded", "task-failed")
        }
        if self.enabled:
            threading.Thread(target=self._loop, name="inferq-events", daemon=True).start()

    def after_store(
        self,
        model: str,
        outcomes: Sequence[Outcome],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        if not self.enabled:
            return
        events: list[dict[str, Any]] = []
        for o in outcomes:
            events += self._task_events(o)
        for r in rejections:
            if r.task_id:
                events.append(
                    self._event("task-failed", r.task_id, exception=repr(r.error), traceback=None)
                )
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            self.dropped += len(events)

    def _task_events(self, o: Outcome) -> list[dict[str, Any]]:
        r = o.request
        received = self._event(
            "task-received",
            r.task_id,
            name=keys.TASK_NAME,
            args=f"(<tensor {r.array.dtype}{list(r.array.shape)}>,)",
            kwargs=f"{{'model': {r.model!r}}}",
            retries=0,
            eta=None,
            expires=r.deadline,
            root_id=r.task_id,
            parent_id=None,
            timestamp=r.received_wall,
        )
        if o.error is not None:
            return [
                received,
                self._event("task-failed", r.task_id, exception=repr(o.error), traceback=None),
            ]
        timing = (o.value or {}).get("timing", {})
        runtime = (
            timing.get("collate_ms", 0) + timing.get("infer_ms", 0) + timing.get("post_ms", 0)
        ) / 1e3
        return [
            received,
            self._event(
                "task-succeeded", r.task_id, result=f"<{model_outputs(o)} outputs>", runtime=runtime
            ),
        ]

    def _event(self, type_: str, task_id: str, **fields: Any) -> dict[str, Any]:
        fields.setdefault("timestamp", time.time())
        return {
            "hostname": self.hostname,
            "utcoffset": -time.timezone // 3600,
            "pid": self.pid,
            "clock": self.app.clock.forward(),
            "uuid": task_id,
            **fields,
            "type": type_,
        }

    def on_stop(self) -> None:
        """Give the sender a moment to publish what the last batches produced."""
        deadline = time.monotonic() + 5.0
        while self.enabled and self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _loop(self) -> None:
        client = make_client(self._broker_url, retries=1)
        while True:
            events = self._queue.get()
            taken = 1
            while not self._queue.empty() and len(events) < 3000:
                events += self._queue.get_nowait()
                taken += 1
            pipe = client.pipeline(transaction=False)
            for event in events:
                pipe.execute_command("PUBLISH", self._topics[event["type"]], self._envelope(event))
            try:
                pipe.execute()
            except CONNECTION_ERRORS:
                self.dropped += len(events)
            for _ in range(taken):
                self._queue.task_done()


def model_outputs(o: Outcome) -> int:
    outputs = (o.value or {}).get("outputs")
    return len(outputs) if isinstance(outputs, list) else 1
