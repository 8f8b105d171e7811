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
from shared.lua import LuaScript
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
    """kombu's fanout envelope for an event; all but the body and tag are built once per type."""

    def __init__(self, hostname: str) -> None:
        self._head = orjson.dumps(
            {
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"hostname": hostname},
            }
        )[:-1]
        self._tails = {
            t: orjson.dumps(
                {
                    "delivery_mode": 1,
                    "delivery_info": {"exchange": "celeryev", "routing_key": t.replace("-", ".")},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": "",
                }
            )[:-2]  # open at the delivery tag's value: ...,"delivery_tag":"
            for t in EVENT_TYPES
        }
        self._prefix = f"{uuid.uuid4()}-".encode()
        self._count = itertools.count()

    def __call__(self, event: dict[str, Any]) -> bytes:
        body = base64.b64encode(orjson.dumps(event))
        tag = b"%s%d" % (self._prefix, next(self._count))
        tail = self._tails[event["type"]]
        return b"".join((self._head, b',"body":"', body, b'","properties":', tail, tag, b'"}}'))


EVENT_TYPES = ("task-received", "task-succeeded", "task-failed")

# KEYS: none. ARGV: topic1, payload1, topic2, payload2, ... One call publishes a whole batch's
# events, so a request costs no per-command client work.
PUBLISH_MANY = LuaScript(
    """
for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
"""
)


class EventsHook(Hook):
    """Sends task-received and task-succeeded/task-failed for every request (no task-started:
    in a batch it would carry the same time as received, at the cost of a third message).

    The request path only hands each stored batch to this hook's thread; events are built and
    published there, one script call per batch or more.
    """

    def __init__(self, app: Celery, hostname: str, max_pending: int = 10_000) -> None:
        self.enabled = bool(app.conf.worker_send_task_events)
        self.app = app
        self.hostname = hostname
        self.pid = os.getpid()
        self.dropped = 0
        self._envelope = EnvelopeMaker(hostname)
        self._queue: queue.Queue[tuple[Sequence[Outcome], Sequence[Rejection]]] = queue.Queue(
            maxsize=max_pending
        )
        self._broker_url = app.conf.broker_url
        self._topics = {t: fanout_topic(self._broker_url, t.replace("-", ".")) for t in EVENT_TYPES}
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
        try:
            self._queue.put_nowait((outcomes, rejections))
        except queue.Full:
            self.dropped += 2 * len(outcomes) + len(rejections)

    def events_for(
        self, outcomes: Sequence[Outcome], rejections: Sequence[Rejection]
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for o in outcomes:
            events += self._task_events(o)
        for r in rejections:
            if r.task_id:
                events.append(
                    self._event("task-failed", r.task_id, exception=repr(r.error), traceback=None)
                )
        return events

    def _task_events(self, o: Outcome) -> list[dict[str, Any]]:
        r = o.request
        received = self._event(
            "task-received",
            r.task_id,
            name=keys.TASK_NAME,
            args="(<tensor>,)",
            kwargs=f"{{'model': {r.model!r}}}",
            retries=0,
            eta=None,
            expires=r.deadline,
            root_id=r.task_id,
            parent_id=None,
            timestamp=r.received_wall,
        )
        if o.error is not None:
            failed = self._event("task-failed", r.task_id, exception=repr(o.error), traceback=None)
            return [received, failed]
        timing = (o.value or {}).get("timing", {})
        runtime = (
            timing.get("collate_ms", 0) + timing.get("infer_ms", 0) + timing.get("post_ms", 0)
        ) / 1e3
        return [
            received,
            self._event("task-succeeded", r.task_id, result="<outputs>", runtime=runtime),
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
            jobs = [self._queue.get()]
            while not self._queue.empty() and len(jobs) < 64:
                jobs.append(self._queue.get_nowait())
            events = [
                e for outcomes, rejections in jobs for e in self.events_for(outcomes, rejections)
            ]
            args: list[str | bytes] = []
            for event in events:
                args += (self._topics[event["type"]], self._envelope(event))
            try:
                if args:
                    PUBLISH_MANY(client, [], args)
            except CONNECTION_ERRORS:
                self.dropped += len(events)
            for _ in jobs:
                self._queue.task_done()
