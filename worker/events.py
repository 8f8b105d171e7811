"""Celery task events for the bulk path, so Flower and ``celery events`` show inferq's tasks.

Celery's own consumer sends one event per state change per task, each a round trip. Here events
are built off the request path, on their own thread, and a whole batch's events travel as one
message: a list body on routing key ``task.multi``, the form Celery's own dispatcher uses for
grouped events and that its ``EventReceiver`` (and so Flower) reads, in exactly the envelope
kombu's Redis fanout uses (``PUBLISH /<db>.celeryev/task.multi <envelope>``). Like Celery's,
events are best effort: if the queue to this thread is full, events are dropped (counted and logged),
never the requests.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import pybase64

from inferq.shared import keys
from inferq.shared.logs import get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS, make_client
from inferq.worker.hooks import Hook
from inferq.worker.tuning import name_os_thread

if TYPE_CHECKING:
    from celery import Celery

    from inferq.worker.intake import InferenceRequest, Rejection
    from inferq.worker.runner import Outcome

log = get_logger(__name__)

GROUP_ROUTING_KEY = "task.multi"  # celery.events.dispatcher: '%s.multi' % group
_GROUP_MAX = 1024  # events per published message at most


def fanout_topic(broker_url: str, routing_key: str) -> str:
    path = urlsplit(broker_url).path.strip("/")
    db = int(path) if path.isdigit() else 0
    return keys.event_channel(db, routing_key)


class EnvelopeMaker:
    """kombu's fanout envelope for an event body; all but the body and tag are built once."""

    def __init__(self, hostname: str, routing_key: str = GROUP_ROUTING_KEY) -> None:
        self._head = orjson.dumps(
            {
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"hostname": hostname},
            }
        )[:-1]
        self._tail = orjson.dumps(
            {
                "delivery_mode": 1,
                "delivery_info": {"exchange": keys.EVENT_EXCHANGE, "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": "",
            }
        )[:-2]  # open at the delivery tag's value: ...,"delivery_tag":"
        self._prefix = f"{uuid.uuid4()}-".encode()
        self._count = itertools.count()

    def __call__(self, body: dict[str, Any] | list[dict[str, Any]]) -> bytes:
        encoded = pybase64.b64encode(orjson.dumps(body))
        tag = b"%s%d" % (self._prefix, next(self._count))
        return b"".join(
            (self._head, b',"body":"', encoded, b'","properties":', self._tail, tag, b'"}}')
        )


def _final_fields(o: Outcome) -> dict[str, Any]:
    """What task-succeeded or task-failed says of one outcome (Celery's field names)."""
    if o.error is not None:
        return {"exception": repr(o.error), "traceback": None, "type": "task-failed"}
    timing: Mapping[str, Any] = o.value.get("timing", {}) if o.value else {}
    runtime = timing.get("collate_ms", 0) + timing.get("infer_ms", 0) + timing.get("post_ms", 0)
    return {"result": "<outputs>", "runtime": runtime / 1e3, "type": "task-succeeded"}


def events_in(payload: bytes | str) -> list[dict[str, Any]]:
    """The events one fanout message carries (a single event, or a grouped list), as
    ``EventReceiver`` reads them."""
    body = orjson.loads(pybase64.b64decode(orjson.loads(payload)["body"]))
    return body if isinstance(body, list) else [body]


class EventsHook(Hook):
    """Sends task-received and task-succeeded/task-failed for every request (no task-started:
    in a batch it would carry the same time as received, at the cost of a third message).

    The request path only hands each stored batch to this hook's thread; events are built and
    published there, one message per up to ``_GROUP_MAX`` events.
    """

    def __init__(
        self, app: Celery, hostname: str, max_pending: int = 10_000, enabled: bool | None = None
    ) -> None:
        # The worker's -E/--task-events flag, else the app's setting (off, as in Celery).
        self.enabled = bool(app.conf.worker_send_task_events if enabled is None else enabled)
        self.app = app
        self.hostname = hostname
        self.pid = os.getpid()
        self.dropped = 0
        self._envelope = EnvelopeMaker(hostname)
        self._queue: queue.Queue[tuple[Sequence[Outcome], Sequence[Rejection]]] = queue.Queue(
            maxsize=max_pending
        )
        self._broker_url = app.conf.broker_url
        self._topic = fanout_topic(self._broker_url, GROUP_ROUTING_KEY)
        self._kwargs_repr: dict[str, str] = {}  # model -> the kwargs repr events show
        if self.enabled:
            threading.Thread(target=self._loop, name="inferq-events", daemon=True).start()

    def after_store(
        self,
        model: str,
        version: int,
        outcomes: Sequence[Outcome],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait((outcomes, rejections))
        except queue.Full:
            self._drop(2 * len(outcomes) + len(rejections), "event queue full")

    def events_for(
        self, outcomes: Sequence[Outcome], rejections: Sequence[Rejection]
    ) -> list[dict[str, Any]]:
        """task-received and task-succeeded/failed per outcome, task-failed per rejection.

        Built for a whole batch at once: the fields every event shares are computed once, and
        the batch takes a run of Lamport clock values in one step.
        """
        answerable = [r for r in rejections if r.task_id]
        ticks = self._ticks(2 * len(outcomes) + len(answerable))
        now = time.time()
        common = {"hostname": self.hostname, "utcoffset": -time.timezone // 3600, "pid": self.pid}
        events: list[dict[str, Any]] = []
        for o in outcomes:
            events.append({**common, "clock": next(ticks), **self._received(o.request)})
            final = _final_fields(o)
            events.append(
                {**common, "clock": next(ticks), "uuid": o.request.task_id, "timestamp": now}
                | final
            )
        for rej in answerable:
            failed = {"exception": repr(rej.error), "traceback": None, "type": "task-failed"}
            events.append(
                {**common, "clock": next(ticks), "uuid": rej.task_id, "timestamp": now} | failed
            )
        return events

    def _ticks(self, n: int) -> Iterator[int]:
        """``n`` consecutive values of the app's Lamport clock, taken in one step."""
        clock = self.app.clock
        with clock.mutex:
            first = clock.value + 1
            clock.value += n
        return itertools.count(first)

    def _received(self, r: InferenceRequest) -> dict[str, Any]:
        model_repr = self._kwargs_repr.get(r.model)
        if model_repr is None:
            model_repr = self._kwargs_repr[r.model] = f"{{'model': {r.model!r}}}"
        return {
            "uuid": r.task_id,
            "name": keys.TASK_NAME,
            "args": "(<tensor>,)",
            "kwargs": model_repr,
            "retries": 0,
            "eta": None,
            "expires": r.deadline,
            "root_id": r.task_id,
            "parent_id": None,
            "timestamp": r.received_wall,
            "type": "task-received",
        }

    def messages_for(self, events: Sequence[dict[str, Any]]) -> list[bytes]:
        """Fanout envelopes, each carrying up to ``_GROUP_MAX`` events as one list body."""
        return [
            self._envelope(list(events[i : i + _GROUP_MAX]))
            for i in range(0, len(events), _GROUP_MAX)
        ]

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        log.warning("task events dropped", count=count, total=self.dropped, reason=why)

    def on_stop(self) -> None:
        """Give the sender a moment to publish what the last batches produced."""
        deadline = time.monotonic() + 5.0
        while self.enabled and self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _loop(self) -> None:
        name_os_thread("inferq-events")
        client = make_client(self._broker_url, retries=1)
        while True:
            jobs = [self._queue.get()]
            while not self._queue.empty() and len(jobs) < 64:
                jobs.append(self._queue.get_nowait())
            events = [
                e for outcomes, rejections in jobs for e in self.events_for(outcomes, rejections)
            ]
            try:
                for message in self.messages_for(events):
                    client.publish(self._topic, message)
            except CONNECTION_ERRORS:
                self._drop(len(events), "redis unreachable")
            for _ in jobs:
                self._queue.task_done()
