"""The fetch loop for one served model: Redis -> decode and validate -> the model's batcher.

Each round takes up to the room left in the worker's bound on held messages, records what it
took as unacked (repeated until Redis takes it; nothing starts before), decodes every message
against the model's spec, and sends each where it belongs: a rejection to the writer (a typed
failure, stored and acked like a result), a message due more than ``ETA_HORIZON_S`` later to
Redis's scheduled set, one due sooner to a local wait, the rest to the batcher.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from inferq.shared import keys
from inferq.shared.logs import bind_thread, get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.batcher import MicroBatcher
from inferq.worker.broker import Fetched, QueueBroker, Taken, until_redis_takes
from inferq.worker.hooks import Hook
from inferq.worker.inhand import InHand, give_back
from inferq.worker.intake import InferenceRequest, Rejection, decode_message
from inferq.worker.revoked import split_revoked
from inferq.worker.writer import ResultWriter, WriteJob

log = get_logger(__name__)

FETCH_MAX = 256  # messages per fetch round trip at most
ETA_HORIZON_S = 1.0  # messages due later than this are parked in Redis, not held here


class Fetcher:
    """Feeds one model version's batcher from one queue until ``stop`` is set.

    ``queue`` defaults to the model's unversioned queue; a version's fetchers take its version
    queue (``inferq.<m>@<v>``) and, for the serving version, the unversioned one too. Messages
    are decoded against ``spec``, so a request prepared for another version's input is refused
    here, never computed.
    """

    def __init__(
        self,
        broker: QueueBroker,
        settings: Settings,
        spec: InputSpec,
        batcher: MicroBatcher[InferenceRequest],
        in_hand: InHand,
        writer: ResultWriter,
        hooks: Hook,
        stop: threading.Event,
        queue: str | None = None,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.queue = queue or keys.queue_name(spec.model)
        self.batcher = batcher
        self.in_hand = in_hand
        self.writer = writer
        self.hooks = hooks
        self.stop = stop
        self._max_bytes = settings.max_payload_bytes
        self._idle_poll_s = settings.idle_poll_s
        self._delayed: list[InferenceRequest] = []  # held here until their eta, under a second
        # Called at the start of every round, idle polls included (liveness: worker/health.py).
        self.on_round: Callable[[], None] = lambda: None

    def run(self) -> None:
        bind_thread(model=self.spec.model)
        while not self.stop.is_set():
            self.on_round()
            try:
                self.fetch_once()
            except CONNECTION_ERRORS as exc:
                self.batcher.set_more_coming(False)
                log.warning(
                    "redis unavailable while fetching; retrying",
                    model=self.spec.model,
                    queue=self.queue,
                    error=str(exc),
                )
                self.stop.wait(0.5)
            except Exception:
                log.exception("fetch loop error", model=self.spec.model, queue=self.queue)
                self.stop.wait(0.5)

    def fetch_once(self) -> None:
        """One round: release what came due, then take what there is room for."""
        self._release_due()
        room = self.in_hand.room()
        if room <= 0:
            self.in_hand.wait_for_room(0.05)
            return
        want = min(room, FETCH_MAX)
        taken = self.broker.take(self.queue, want)
        if taken is None:
            self.batcher.set_more_coming(False)
            self.broker.wait(self.queue, self._idle_poll_s)
            return
        if self._record(taken):
            if taken.dead:
                self.hooks.on_dead_letters(self.spec.model, len(taken.dead))
            self._dispatch(taken.fetched, more=sum(taken.counts) == want)

    def take_delayed(self) -> list[InferenceRequest]:
        """The requests waiting here for their eta, handed over (to be given back on stop)."""
        delayed, self._delayed = self._delayed, []
        return delayed

    def _record(self, taken: Taken) -> bool:
        """Record a fetch's messages as unacked (the transaction is safe to repeat). False if
        the worker stops first: the hold then goes back to the queue after the visibility
        timeout, and nothing was started."""
        recorded = until_redis_takes(
            partial(self.broker.record, taken),
            "recording fetched messages",
            stop=self.stop,
            held=len(taken.fetched),
        )
        if not recorded:
            log.warning("stopping with a fetch not recorded; its hold goes back later")
        return recorded

    def _dispatch(self, fetched: Sequence[Fetched], more: bool) -> None:
        self.in_hand.add(len(fetched))
        if self.stop.is_set():  # recorded while stopping: nothing of it starts
            give_back(self.broker, self.in_hand, [f.tag for f in fetched])
            return
        requests, rejections = self._decode(fetched)
        requests, revoked = split_revoked(requests)
        rejections += revoked
        if rejections:
            self.writer.put(
                WriteJob(self.spec.model, self.spec.version, self.in_hand, (), rejections)
            )
        self.batcher.put(requests, more_coming=more)
        self.hooks.after_fetch(self.spec.model, self.spec.version, len(fetched), more)

    def _decode(self, fetched: Sequence[Fetched]) -> tuple[list[InferenceRequest], list[Rejection]]:
        """Requests due now (for the batcher) and rejections; the rest parked or delayed."""
        requests: list[InferenceRequest] = []
        rejections: list[Rejection] = []
        # One reading of the clocks for the fetch: its messages arrived together.
        wall, now = time.time(), time.monotonic()
        for f in fetched:
            d = decode_message(
                f.tag, f.raw, self.spec, max_bytes=self._max_bytes, now=now, wall=wall
            )
            if isinstance(d, Rejection):
                rejections.append(d)
            elif d.eta is not None and d.eta > wall + ETA_HORIZON_S:
                self.broker.schedule(d.tag, d.eta, self.queue, d.priority, f.raw)
                self.in_hand.done(1)
            elif d.eta is not None and d.eta > wall:
                self._delayed.append(d)
            else:
                requests.append(d)
        return requests, rejections

    def _release_due(self) -> None:
        if not self._delayed:
            return
        now = time.time()
        due = [r for r in self._delayed if r.eta is not None and r.eta <= now]
        if due:
            self._delayed = [r for r in self._delayed if r.eta is not None and r.eta > now]
            for r in due:
                r.received_at = time.monotonic()
            self.batcher.put(due, more_coming=True)
