"""The asyncio client, for FastAPI/aiohttp services::

    from inferq.aio import submit, gather

    result = await submit(img, model="shapes")
    value = await result.async_get(timeout=10)
    values = await gather([await submit(i, model="shapes") for i in imgs], timeout=30)

Submitting runs on the process's submit thread (preprocessing and the push's round trip never
block the loop): it takes every submit queued meanwhile at once, prepares each in its caller's
context, sends them in one round trip per Redis (``Pusher.push_each``; each keeps its own
outcome, so ``QueueFull`` and ``InvalidInput`` reach the submit that caused them) and wakes each
loop once with every outcome. Waiting holds no thread: the process's result listener resolves
the futures through the loop's inbox (``producer/backend.py``), one wake-up for every result that
came meanwhile; ``gather`` first reads the results already stored with one MGET, a short trip
to the loop's executor. Results are the same ``AsyncResult`` objects (``InferqResult``) the
synchronous client returns, so ``.get()``, ``.state`` and ``gather`` work on them too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Iterable, Sequence
from queue import Empty, SimpleQueue
from typing import Any, NamedTuple

from inferq.producer.backend import InferqResult, loop_inbox
from inferq.producer.client import prepare_call, pushed_each
from inferq.producer.client import submit_many as submit_many_sync
from inferq.producer.listener import Meta, ready_meta
from inferq.producer.placed import Lane
from inferq.producer.preprocess import ImageLike
from inferq.producer.pusher import Prepared
from inferq.shared import keys

__all__ = ["InferqResult", "gather", "submit", "submit_many"]


async def submit(img: ImageLike, model: str, **options: Any) -> InferqResult:
    """``submit_job.apply_async`` off the loop; raises what ``.delay`` raises (``QueueFull``,
    ``InvalidInput``, ``BrokerUnavailable``)."""
    return await SUBMITTER.submit((img,), {"model": model}, options)


async def submit_many(imgs: Iterable[ImageLike], model: str, **options: Any) -> list[InferqResult]:
    """``submit_many`` off the loop: many messages per round trip."""
    return await asyncio.to_thread(submit_many_sync, list(imgs), model, **options)


async def gather(
    results: Sequence[InferqResult],
    timeout: float | None = None,
    *,
    return_exceptions: bool = False,
) -> list[Any]:
    """Every result's value, in order. A failed request raises its typed error, or stands in the
    list as the error with ``return_exceptions=True``; ``TimeoutError`` names how many are still
    pending when ``timeout`` passes (the others' values stay cached on their results).

    Results already stored are read with one MGET per Redis (on a thread, once per call, when
    there are ``READ_FIRST`` or more to wait for); the rest are resolved by the process's
    result listener, which wakes this loop once per round with every result that came."""
    if not results:
        return []
    waiting = [r for r in results if r._cache is None]
    if len(waiting) >= READ_FIRST:
        await asyncio.get_running_loop().run_in_executor(None, read_stored, waiting)
        waiting = [r for r in waiting if r._cache is None]
    if waiting:
        arrivals = Arrivals(asyncio.get_running_loop(), waiting)
        try:
            await asyncio.wait_for(arrivals.done, timeout)
        except TimeoutError:
            left = sum(1 for r in results if r._cache is None)
            raise TimeoutError(f"gather: {left} of {len(results)} results still pending") from None
        finally:
            arrivals.close()
    values = [r.maybe_throw(propagate=False) for r in results]
    if not return_exceptions:
        for value in values:
            if isinstance(value, BaseException):
                raise value
    return values


READ_FIRST = 8  # results to wait for from which gather reads the stored ones first


def read_stored(results: Sequence[InferqResult]) -> None:
    """Fill the cache of every result already stored: one MGET per Redis and 1,000 results."""
    by_backend: dict[int, list[InferqResult]] = {}
    for r in results:
        by_backend.setdefault(id(r.backend), []).append(r)
    for members in by_backend.values():
        client = members[0].backend.client
        for i in range(0, len(members), 1000):
            chunk = members[i : i + 1000]
            stored = client.mget([keys.result_key(r.id) for r in chunk])
            for r, raw in zip(chunk, stored, strict=True):
                r._maybe_set_cache(ready_meta(raw))


class Arrivals:
    """Waits on many results through the listener: each arrives on the listener's thread (or at
    once, on this one) into the loop's inbox, which wakes the loop once per batch of arrivals,
    not once per result."""

    def __init__(self, loop: asyncio.AbstractEventLoop, results: Sequence[InferqResult]) -> None:
        self._results = results
        self._inbox = loop_inbox(loop)
        self._left = len(results)
        self.done: asyncio.Future[None] = loop.create_future()
        self._cancels = [
            r.backend.listener.notify(r.id, functools.partial(self._arrived, i))
            for i, r in enumerate(results)
        ]

    def _arrived(self, i: int, meta: Meta) -> None:
        # A copy: Celery turns a failure's result into an exception in place, and other
        # waiters on the same id share what the listener received.
        self._inbox.put(self._take, (i, dict(meta)))

    def _take(self, arrived: tuple[int, Meta]) -> None:
        i, meta = arrived
        self._results[i]._maybe_set_cache(meta)
        self._left -= 1
        if self._left <= 0 and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Stop waiting for whatever has not come (a timeout, a cancelled gather)."""
        for cancel in self._cancels:
            cancel()


ROUND_MAX = 256  # submits one round of the submit thread takes at most (as submit_many's chunk)


class _Submit(NamedTuple):
    context: contextvars.Context  # the caller's: trace context is read while preparing
    args: Sequence[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[InferqResult]


class Submitter:
    """The thread that runs this process's asyncio submits, for every event loop.

    ``asyncio.to_thread`` per submit crossed the loop's default executor each time, about 80 us
    of CPU on the development machine, as much as the submit itself. Here a submit is a queue
    put; the thread takes everything queued at once, prepares each in its caller's context,
    pushes each lane's messages in one round trip with their own outcomes, and wakes each loop
    once per round.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: SimpleQueue[_Submit] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(
        self, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> asyncio.Future[InferqResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferqResult] = loop.create_future()
        queue = self._running()
        queue.put(_Submit(contextvars.copy_context(), args, kwargs, options, loop, future))
        return future

    def _running(self) -> SimpleQueue[_Submit]:
        """The queue of a live submit thread (started on first use, and again in a forked child,
        which has no threads; the parent's queue stays the parent's)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            with self._lock:
                if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                    if self._pid != os.getpid():
                        self._queue = SimpleQueue()
                    self._pid = os.getpid()
                    self._thread = threading.Thread(
                        target=self._run, args=(self._queue,), name="inferq-aio-submit", daemon=True
                    )
                    self._thread.start()
        return self._queue

    def _run(self, queue: SimpleQueue[_Submit]) -> None:
        while True:
            taken = [queue.get()]
            while len(taken) < ROUND_MAX:
                try:
                    taken.append(queue.get_nowait())
                except Empty:
                    break
            try:
                outcomes = submit_round(taken)
            except BaseException as exc:  # no caller is left waiting, whatever happened here
                outcomes = [exc] * len(taken)
            settle_all(taken, outcomes)
            del taken, outcomes  # nothing of a round (loops, futures, results) kept while idle


def submit_round(taken: Sequence[_Submit]) -> list[Any]:
    """Per submit, its InferqResult or the error its ``apply_async`` would have raised."""
    outcomes: list[Any] = [None] * len(taken)
    lanes: dict[int, tuple[Lane, list[int], list[Prepared]]] = {}
    for i, s in enumerate(taken):
        try:
            prepared, lane = s.context.run(prepare_call, s.args, s.kwargs, s.options)
        except Exception as exc:
            outcomes[i] = exc
            continue
        _, at, batch = lanes.setdefault(id(lane), (lane, [], []))
        at.append(i)
        batch.append(prepared)
    for lane, at, batch in lanes.values():
        try:
            pushed = pushed_each(batch, lane)
        except Exception as exc:
            pushed = [exc] * len(at)
        for i, outcome in zip(at, pushed, strict=True):
            outcomes[i] = outcome
    return outcomes


def settle_all(taken: Sequence[_Submit], outcomes: Sequence[Any]) -> None:
    """Hand each loop its outcomes through its inbox: one wake-up for all of them."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for s, outcome in zip(taken, outcomes, strict=True):
        by_loop.setdefault(s.loop, []).append((s.future, outcome))
    for loop, pairs in by_loop.items():
        loop_inbox(loop).put(_settle, pairs)


def _settle(pairs: Sequence[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in pairs:
        if future.done():  # cancelled while it was being submitted
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


SUBMITTER = Submitter()
