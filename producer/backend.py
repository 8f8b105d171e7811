"""``ListenerBackend``: Celery's Redis result backend, with every wait served by one listener.

Celery picks it from the ``result_backend`` URL (``inferq.producer.backend:ListenerBackend+redis://``,
set in ``shared/celeryconf.py``). Storing, reading and the meta format are Celery's own; what changes
is waiting: ``AsyncResult.get()`` first reads the key (a stored result costs one GET), then sleeps
on the process's :class:`~inferq.producer.listener.ResultListener` instead of subscribing on a
connection of its own thread. ``.ready()``, ``.state`` and ``ResultSet.get()``/``join_native`` work
as with Celery's backend, from any thread. Arrays in a result come back as numpy arrays.

Celery tracks every pending ``AsyncResult`` (and drops it again in ``__del__``) so that its drainer
can fill their caches; here a result's cache is filled by the call that waits for it, so there is
nothing to track and both are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from celery.app import app_or_default
from celery.backends.redis import RedisBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from celery.states import READY_STATES
from vine import promise

from inferq.producer.listener import Meta, ResultListener, fast_get, listener_for, ready_meta
from inferq.shared import keys
from inferq.shared.arrays import ARRAYS_KEY, decode_result


class ListenerBackend(RedisBackend):
    """Celery's Redis backend; waits go through the process-wide result listener."""

    @property
    def listener(self) -> ResultListener:
        return listener_for(self.url)

    # -- reads: Celery's own, without redis-py's per-command wrappers -------------------------

    def get(self, key: Any) -> Any:
        return fast_get(self.client, key)

    def meta_from_decoded(self, meta: Any) -> Any:
        """Celery's, with the arrays in a result's outputs (``shared/arrays.py``) read back as
        numpy arrays: every read (``get``, ``async_get``, ``.result``, ``join_native``) goes
        through here."""
        if meta.get(ARRAYS_KEY) and meta.get("status") == "SUCCESS":
            meta["result"] = decode_result(meta["result"])
        return super().meta_from_decoded(meta)

    # -- pending-result tracking: nothing to track ---------------------------------------------

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        return list(results)

    def remove_pending_result(self, result: Any) -> Any:
        return result

    # -- waiting -------------------------------------------------------------------------------

    def wait_for_pending(
        self,
        result: Any,
        callback: Any = None,
        propagate: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        self._ensure_not_eager()
        result._maybe_set_cache(self.final_meta(result.id, timeout))
        return result.maybe_throw(callback=callback, propagate=propagate)

    def final_meta(self, task_id: str, timeout: float | None = None) -> Meta:
        """The stored meta if final, else wait for it on the listener (JSON-decoded, as stored)."""
        meta = ready_meta(self.get(keys.result_key(task_id)))
        if meta is None:
            # A copy: Celery turns a failure's result into an exception in place, and other
            # waiters on the same id share what the listener received.
            meta = dict(self.listener.wait(task_id, timeout))
        return meta

    def iter_native(
        self, result: Any, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[tuple[str, Any]]:
        """``(task id, meta)`` of a ResultSet's members as each is final (``join_native``)."""
        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        for node in result.results:
            if node._cache is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise CeleryTimeoutError("The operation timed out.")
                node._maybe_set_cache(self.final_meta(node.id, remaining))
            yield node.id, node._cache


class InferqResult(AsyncResult):
    """Celery's AsyncResult, plus ``await result.async_get()`` for asyncio services."""

    inferq_epoch: str | None = None  # the epoch its push recorded (gather tells lost requests)

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: str | None = None,
        app: Any = None,
        parent: Any = None,
    ) -> None:
        # Celery's own __init__, less the ``on_ready`` promise it makes for every result: a weak
        # method that costs 8 of its 9 us, on every .delay() and every submit_many request,
        # and is only used when a callback is chained with ``then`` (made on first use, below).
        if id is None:
            raise ValueError(f"AsyncResult requires valid id, not {type(id)}")
        self.app = app_or_default(app or getattr(type(self), "app", None))
        self.id = id
        self.backend = backend or self.app.backend
        self.parent = parent
        self._cache = None
        self._ignored = False

    def __getattr__(self, name: str) -> Any:
        """``on_ready`` as Celery makes it, on first use (fulfilled at once if the result is in
        already, as Celery's would have been); any other missing name as usual."""
        if name != "on_ready":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        ready = promise(self._on_fulfilled, weak=True)
        self.on_ready = ready
        if self._cache is not None:
            ready(self)
        return ready

    def _maybe_set_cache(self, meta: Any) -> Any:
        """Celery's, but the ``on_ready`` promise is fulfilled only where one was made: fulfilling
        it keeps the result in its arguments, a reference cycle per result that only the
        garbage collector's full passes free (tens of ms with thousands of results held)."""
        if meta and meta["status"] in READY_STATES:
            cached = self._set_cache(self.backend.meta_from_decoded(meta))
            ready = self.__dict__.get("on_ready")
            if ready is not None:
                ready(self)
            return cached
        return meta

    async def async_get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Like ``get()``, without blocking the event loop: the listener resolves a future."""
        if self._cache is None:
            self._maybe_set_cache(await wait_meta(self.backend, self.id, timeout))
        return self.maybe_throw(propagate=propagate)


async def wait_meta(backend: ListenerBackend, task_id: str, timeout: float | None) -> Meta:
    """The final meta of ``task_id``, resolved by the listener on this loop's thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Meta] = loop.create_future()
    inbox = loop_inbox(loop)

    def resolve(meta: Meta) -> None:  # on the listener's thread, or at once on ours
        # A copy: Celery turns a failure's result into an exception in place, and other
        # waiters on the same id share what the listener received.
        inbox.put(_settle, (future, dict(meta)))

    cancel = backend.listener.notify(task_id, resolve)
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise CeleryTimeoutError("The operation timed out.") from None
    finally:
        cancel()


def _settle(arrived: tuple[asyncio.Future[Meta], Meta]) -> None:
    future, meta = arrived
    if not future.done():
        future.set_result(meta)


class LoopInbox:
    """What the result listener hands one event loop: calls queued from the listener's thread
    and run on the loop's, one wake-up (``call_soon_threadsafe``, a write to the loop's
    self-pipe) for everything that arrived since the last, not one per result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # a strong one would keep the loop in _inboxes for ever
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[[Any], None], Any]] = []
        self._scheduled = False

    def put(self, call: Callable[[Any], None], arg: Any) -> None:
        with self._lock:
            self._calls.append((call, arg))
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop()
        if loop is None:  # the loop is gone: nobody waits any more
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._scheduled = False
        for call, arg in calls:
            call(arg)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox] = (
    weakref.WeakKeyDictionary()
)
_inboxes_lock = threading.Lock()


def loop_inbox(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    """``loop``'s inbox (made on first use, gone with the loop)."""
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _inboxes_lock:
            inbox = _inboxes.setdefault(loop, LoopInbox(loop))
    return inbox
