"""One result listener per process: one pub/sub connection and one thread resolve every waiter.

Celery's Redis backend subscribes, reads and unsubscribes per result on a connection of each
thread's own; with many callers that is a round trip and a socket per waiting thread. Here a
waiter registers under the process-wide lock and sleeps on its own event; the listener thread
subscribes the new channels in one command, and once Redis confirms them reads their keys with one
MGET, so a result stored before its waiter was subscribed is found at once, never after a missed
publication. Publications then resolve the rest. After a reconnection redis-py subscribes again,
and the confirmations bring the same MGET, covering whatever was published while the link was down.

Waiters may be threads (:meth:`ResultListener.wait`) or callbacks (:meth:`ResultListener.notify`,
which the asyncio client turns into ``loop.call_soon_threadsafe``); the callback runs on the
listener thread and must be quick.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError

from inferq.shared import keys
from inferq.shared.logs import get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS, make_client

log = get_logger(__name__)

Meta = dict[str, Any]
Callback = Callable[[Meta], None]

# Celery's ready states: a meta in any other state (STARTED, RETRY) does not end a wait.
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
_MGET_CHUNK = 1000
_RECONNECT_S = 0.2


def ready_meta(raw: bytes | str | None) -> Meta | None:
    """A stored or published meta if it is final, else None."""
    if raw is None:
        return None
    meta = orjson.loads(raw)
    return meta if isinstance(meta, dict) and meta.get("status") in READY else None


class Waiter:
    """Everyone waiting on one result: threads sleep on ``event``, callbacks run when it comes."""

    __slots__ = ("callbacks", "event", "key", "meta", "users")

    def __init__(self, key: str) -> None:
        self.key = key
        self.meta: Meta | None = None
        self.event = threading.Event()
        self.callbacks: list[Callback] = []
        self.users = 0


class ResultListener:
    def __init__(self, url: str) -> None:
        self.client = make_client(url)
        self._lock = threading.Lock()
        self._waiters: dict[str, Waiter] = {}
        self._subscribe: list[str] = []
        self._unsubscribe: list[str] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._woken = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inferq-results", daemon=True)
        self._thread.start()

    # -- the waiting side, any thread --------------------------------------------------------

    def wait(self, task_id: str, timeout: float | None = None) -> Meta:
        """The final meta of ``task_id``; raise Celery's TimeoutError after ``timeout`` seconds."""
        waiter = self._watch(keys.result_key(task_id))
        try:
            if not waiter.event.wait(timeout):
                raise CeleryTimeoutError("The operation timed out.")
        finally:
            self._release(waiter)
        assert waiter.meta is not None  # set before the event
        return waiter.meta

    def notify(self, task_id: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(meta)`` once ``task_id`` is final (at once if it already is, on this
        thread; otherwise on the listener's). Returns a function that cancels the interest."""
        waiter = self._watch(keys.result_key(task_id))
        with self._lock:
            meta = waiter.meta
            if meta is None:
                waiter.callbacks.append(callback)
        if meta is not None:
            self._release(waiter)
            callback(meta)
            return _nothing

        def cancel() -> None:
            with self._lock:
                still_waiting = callback in waiter.callbacks
                if still_waiting:
                    waiter.callbacks.remove(callback)
            if still_waiting:  # once resolved, the listener has released it already
                self._release(waiter)

        return cancel

    def _watch(self, key: str) -> Waiter:
        with self._lock:
            waiter = self._waiters.get(key)
            if waiter is None:
                waiter = self._waiters[key] = Waiter(key)
                self._subscribe.append(key)
                self._wake_locked()
            waiter.users += 1
            return waiter

    def _release(self, waiter: Waiter) -> None:
        with self._lock:
            waiter.users -= 1
            if waiter.users == 0 and self._waiters.get(waiter.key) is waiter:
                # Nobody waits any more (timeouts): stop listening for it.
                del self._waiters[waiter.key]
                self._unsubscribe.append(waiter.key)
                self._wake_locked()

    def _wake_locked(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake_w.send(b"\0")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake_locked()
        self._thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()
        self.client.close()

    # -- the listener thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            pubsub = self.client.pubsub()
            try:
                self._serve(pubsub)
            except CONNECTION_ERRORS as exc:
                log.warning("result listener lost Redis, reconnecting", error=str(exc))
                time.sleep(_RECONNECT_S)
            except Exception:  # a listener that dies would leave every caller waiting
                log.exception("result listener failed, restarting it")
                time.sleep(_RECONNECT_S)
            finally:
                pubsub.close()
            with self._lock:  # a fresh connection subscribes everything still awaited
                self._subscribe = list(self._waiters)
                self._unsubscribe = []

    def _serve(self, pubsub: Any) -> None:
        while not self._closed:
            self._send_changes(pubsub)
            confirmed: list[str] = []
            while (msg := pubsub.get_message(timeout=0)) is not None:
                self._handle(msg, confirmed)
            if confirmed:
                self._sweep(confirmed)
                continue  # the MGET took time: see what came meanwhile before sleeping
            self._sleep(pubsub)

    def _send_changes(self, pubsub: Any) -> None:
        with self._lock:
            # A key resolved and awaited again since is kept; one given up and awaited anew too.
            subscribe = [k for k in self._subscribe if k in self._waiters]
            unsubscribe = [k for k in self._unsubscribe if k not in self._waiters]
            self._subscribe, self._unsubscribe = [], []
            self._woken = False
            self._drain_wake()
        if subscribe:
            pubsub.subscribe(*subscribe)
        if unsubscribe:
            pubsub.unsubscribe(*unsubscribe)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _sleep(self, pubsub: Any) -> None:
        """Until Redis sends something or a caller wakes us; a timeout keeps health checks going."""
        conn = pubsub.connection
        sock = getattr(conn, "_sock", None)  # redis-py keeps no public handle to poll on
        if conn is not None and conn.can_read(timeout=0):
            return
        watched = [self._wake_r] if sock is None else [self._wake_r, sock]
        select.select(watched, [], [], 1.0)

    def _handle(self, msg: dict[str, Any], confirmed: list[str]) -> None:
        kind = msg.get("type")
        if kind == "message":
            self._resolve(_text(msg["channel"]), ready_meta(msg["data"]))
        elif kind == "subscribe":
            confirmed.append(_text(msg["channel"]))

    def _sweep(self, confirmed: list[str]) -> None:
        """Read what was stored before the subscriptions took effect."""
        with self._lock:
            wanted = [k for k in confirmed if k in self._waiters]
        for i in range(0, len(wanted), _MGET_CHUNK):
            chunk = wanted[i : i + _MGET_CHUNK]
            for key, raw in zip(chunk, self.client.mget(chunk), strict=True):
                self._resolve(key, ready_meta(raw))

    def _resolve(self, key: str, meta: Meta | None) -> None:
        if meta is None:
            return
        with self._lock:
            waiter = self._waiters.pop(key, None)
            if waiter is None:
                return
            waiter.meta = meta
            callbacks, waiter.callbacks = waiter.callbacks, []
            self._unsubscribe.append(key)
        waiter.event.set()
        for callback in callbacks:
            _call(callback, meta)
            self._release(waiter)


def _nothing() -> None:
    return None


def _call(callback: Callback, meta: Meta) -> None:
    try:
        callback(meta)
    except Exception:
        log.exception("result callback failed")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- one listener per process and result backend --------------------------------------------------

_listeners: dict[str, ResultListener] = {}
_listeners_lock = threading.Lock()
_listeners_pid = os.getpid()


def listener_for(url: str) -> ResultListener:
    """The process's listener for the result backend at ``url`` (a new one after a fork)."""
    global _listeners_pid
    with _listeners_lock:
        if _listeners_pid != os.getpid():  # threads do not survive a fork: start afresh
            _listeners.clear()
            _listeners_pid = os.getpid()
        found = _listeners.get(url)
        if found is None:
            found = _listeners[url] = ResultListener(url)
        return found


def close_listeners(urls: Iterable[str] | None = None) -> None:
    """Stop listeners (all, or those of ``urls``): tests and ``reset_runtime`` call this."""
    with _listeners_lock:
        chosen = list(_listeners) if urls is None else [u for u in urls if u in _listeners]
        stopped = [_listeners.pop(u) for u in chosen]
    for listener in stopped:
        listener.close()


def fast_get(client: redis.Redis, key: str) -> Any:
    """GET on a pooled connection without redis-py's per-command wrappers (about half the CPU);
    on a connection error, the ordinary client with its retries takes over."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("GET", key)
        return conn.read_response()
    except CONNECTION_ERRORS:
        conn.disconnect()
        return client.get(key)
    finally:
        pool.release(conn)
