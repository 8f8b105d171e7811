"""The device side of a served model: the prepare loop closes batches and stages them on the
device while the previous batch computes; each run thread computes staged batches and hands
their outcomes to the writer. A device failure fails the batch in hand, hands every other held
message back, flushes the writer and exits for a restart.

The service (``worker/service.py``) spawns these loops on threads named for the model
(``inferq-prepare-<model>@<v>``, ``inferq-run-<model>``...): ``/live`` watches them by name.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from queue import Empty

from inferq.shared.logs import bind_thread, bound, get_logger
from inferq.worker.broker import QueueBroker
from inferq.worker.health import Health
from inferq.worker.hooks import Hooks
from inferq.worker.inhand import give_back
from inferq.worker.intake import InferenceRequest
from inferq.worker.revoked import split_revoked
from inferq.worker.runner import (
    Deferred,
    DeviceFailure,
    Outcome,
    PreparedBatch,
    StagingFailed,
    unrecoverable,
)
from inferq.worker.served import Served
from inferq.worker.supervisor import EXIT_DEVICE_FAILURE
from inferq.worker.writer import ResultWriter, WriteJob

log = get_logger(__name__)


class DeviceLoops:
    def __init__(
        self,
        broker: QueueBroker,
        writer: ResultWriter,
        hooks: Hooks,
        health: Health,
        stopping: threading.Event,
        served: Callable[[], Sequence[Served]],
        flush_writer: Callable[[], None],
        on_fatal: Callable[[int], None],
    ) -> None:
        self.broker = broker
        self.writer = writer
        self.hooks = hooks
        self.health = health
        self._stopping = stopping
        self._served = served  # the versions held now (device failure hands all of theirs back)
        self._flush_writer = flush_writer
        self._on_fatal = on_fatal
        self._fatal = threading.Event()
        self._fatal_lock = threading.Lock()
        #: Batches computing at once on the device: one per instance of the largest model (the
        #: service sizes it once the models are known, before any batch runs).
        self.compute_slots = threading.Semaphore(1)

    # -- prepare -----------------------------------------------------------------------------

    def prepare_loop(self, s: Served) -> None:
        """Close batches and stage them on the device while the previous batch computes."""
        bind_thread(model=s.model.name)
        while not self._fatal.is_set():
            self.health.tick_here()
            batch = s.batcher.next_batch(timeout=0.1, cap=s.runner.cap.value)
            if not batch:
                if (self._stopping.is_set() or s.retiring.is_set()) and len(s.batcher) == 0:
                    break
                continue
            self._prepare(s, batch)
        s.end_runs()

    def _prepare(self, s: Served, batch: list[InferenceRequest]) -> None:
        batch, revoked = split_revoked(batch)  # revoked while waiting here: never computed
        if revoked:
            self.writer.put(WriteJob(s.model.name, s.model.version, s.in_hand, (), revoked))
        if not batch:
            return
        try:
            staged = s.runner.stage(batch)
        except DeviceFailure as exc:
            self._device_failed(s, batch, exc)
            return
        if isinstance(staged, PreparedBatch):
            s.ready.put(staged)
        elif isinstance(staged, Deferred):  # the runner lowered its cap: same requests, smaller
            s.batcher.put_front(staged.requests)
        elif isinstance(staged, StagingFailed):
            self._write(s, staged.outcomes)

    # -- run ---------------------------------------------------------------------------------

    def run_loop(self, s: Served) -> None:
        bind_thread(model=s.model.name)
        while (prepared := self._next_prepared(s)) is not None:
            if self._fatal.is_set():  # the device is gone: hand the staged batch back untouched
                self.give_back(s, prepared.requests)
                continue
            if not self._runs_unrevoked(s, prepared):
                continue
            # The version per batch, not per loop: a reload swaps it between batches.
            with bound(batch_id=uuid.uuid4().hex[:16], version=s.model.version):
                self._run_batch(s, prepared)

    def _runs_unrevoked(self, s: Served, prepared: PreparedBatch) -> bool:
        """False if requests of the staged batch were revoked while it waited for the device:
        they are answered REVOKED, the others go back to be batched again (or to the queue if
        the worker is stopping)."""
        keep, revoked = split_revoked(prepared.requests)
        if not revoked:
            return True
        self.writer.put(WriteJob(s.model.name, s.model.version, s.in_hand, (), revoked))
        if self._stopping.is_set():
            self.give_back(s, keep)
        elif keep:
            s.batcher.put_front(keep)
        return False

    def _next_prepared(self, s: Served) -> PreparedBatch | None:
        """Wait, alive however long no work comes, for the next staged batch."""
        loop = threading.current_thread().name
        self.health.idle(loop)
        prepared = s.ready.get()
        self.health.tick(loop)  # from here the batch must finish within the liveness bound
        return prepared

    def _run_batch(self, s: Served, prepared: PreparedBatch) -> None:
        batch = prepared.requests
        self.hooks.before_batch(s.model.name, s.model.version, batch)
        started = time.perf_counter()
        try:
            with self.compute_slots:
                outcomes = s.runner.execute(prepared)
        except DeviceFailure as exc:
            self._device_failed(s, batch, exc)
            return
        except Exception as exc:  # a runner bug must still answer every request
            log.exception("runner failed outside the model", model=s.model.name)
            outcomes = unrecoverable(batch, exc)
        self.hooks.after_batch(
            s.model.name, s.model.version, batch, outcomes, time.perf_counter() - started
        )
        s.failures.observe(outcomes)
        self._write(s, outcomes)

    def _write(self, s: Served, outcomes: Sequence[Outcome]) -> None:
        self.writer.put(WriteJob(s.model.name, s.model.version, s.in_hand, outcomes, ()))

    def give_back(self, s: Served, held: Sequence[InferenceRequest]) -> None:
        """Put ``held`` back on their queues now, uncomputed."""
        give_back(self.broker, s.in_hand, [r.tag for r in held])

    # -- device failure ----------------------------------------------------------------------

    def _device_failed(self, s: Served, batch: list[InferenceRequest], exc: BaseException) -> None:
        """Fail only this batch, hand every other held message back, flush, and exit for a restart."""
        self.health.draining()
        with self._fatal_lock:
            first = not self._fatal.is_set()
            self._fatal.set()
            self._stopping.set()
        if not first:  # another thread is already restarting the worker; this batch comes back
            self.give_back(s, batch)
            return
        log.error(
            "unrecoverable device error; restarting worker", model=s.model.name, error=str(exc)
        )
        try:
            self._write(s, unrecoverable(batch, exc))
            for other in self._served():
                other.batcher.close()
                self.give_back(other, other.unstarted() + _staged(other))
            self._flush_writer()
        finally:
            self._on_fatal(EXIT_DEVICE_FAILURE)


def _staged(s: Served) -> list[InferenceRequest]:
    """The requests of the batch staged and waiting for a run thread, taken off its slot."""
    try:
        staged = s.ready.get_nowait()
    except Empty:
        return []
    return staged.requests if staged is not None else []
