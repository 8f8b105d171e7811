"""Readiness and liveness of one worker process, served as ``/ready`` and ``/live`` beside
``/metrics``.

``/ready`` (200 or 503): every served model is loaded, warmed up and published, and the worker
is not draining. Orchestrators send traffic, and compose starts the producer, only then.

``/live`` (200 or 503): each watched loop (fetch, prepare and run per model, housekeeping) has
made progress within ``bound_s``. A loop that waits for work says so (``idle``) and is alive
however long it waits; a loop that polls ticks on every round. A loop stuck in one batch or one
call past the bound is named in the 503's body, so the restart it causes is explained.

``Health`` is a plain object with an injected clock: the service's loops call it, tests drive it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

Clock = Callable[[], float]


@dataclass(frozen=True)
class Verdict:
    """An answer of ``/ready`` or ``/live``: whether it holds, and why, in one line."""

    ok: bool
    reason: str


@dataclass
class _Loop:
    last: float  # when the loop last made progress (clock seconds)
    idle: bool  # waiting for work: alive however long it waits


class Health:
    def __init__(self, bound_s: float, clock: Clock = time.monotonic) -> None:
        self.bound_s = bound_s
        self._clock = clock
        self._lock = threading.Lock()
        self._loops: dict[str, _Loop] = {}
        self._expected: set[str] = set()
        self._loaded: set[str] = set()
        self._published = False
        self._draining = False

    # -- readiness ---------------------------------------------------------------------------

    def expect(self, models: Iterable[str]) -> None:
        """The models this worker must load, warm up and publish before it is ready."""
        with self._lock:
            self._expected = set(models)

    def loaded(self, model: str) -> None:
        """``model`` is loaded and warmed up."""
        with self._lock:
            self._loaded.add(model)

    def published(self) -> None:
        """The served models' specs are in Redis: producers can route to this worker."""
        with self._lock:
            self._published = True

    def draining(self) -> None:
        """Warm shutdown began: take no new traffic, finish what is held."""
        with self._lock:
            self._draining = True

    def readiness(self) -> Verdict:
        with self._lock:
            if self._draining:
                return Verdict(False, "draining: warm shutdown in progress")
            waiting = sorted(self._expected - self._loaded)
            if not self._expected or waiting:
                return Verdict(False, f"loading and warming up: {', '.join(waiting) or 'models'}")
            if not self._published:
                return Verdict(False, "loaded; publishing the models' specs")
            return Verdict(True, f"serving {', '.join(sorted(self._loaded))}")

    # -- liveness ----------------------------------------------------------------------------

    def tick(self, loop: str) -> None:
        """``loop`` made progress (a polling round, a batch started or finished)."""
        with self._lock:
            self._loops[loop] = _Loop(self._clock(), idle=False)

    def tick_here(self) -> None:
        """``tick`` for the calling thread's loop: loops are watched by their thread's name."""
        self.tick(threading.current_thread().name)

    def idle(self, loop: str) -> None:
        """``loop`` is about to wait for work for as long as none comes."""
        with self._lock:
            self._loops[loop] = _Loop(self._clock(), idle=True)

    def forget(self, loop: str) -> None:
        """``loop`` ended on purpose (a stop, a model unloaded): no longer watched."""
        with self._lock:
            self._loops.pop(loop, None)

    def liveness(self) -> Verdict:
        now = self._clock()
        with self._lock:
            stuck = {
                name: now - loop.last
                for name, loop in self._loops.items()
                if not loop.idle and now - loop.last > self.bound_s
            }
        if stuck:
            named = ", ".join(f"{n} ({s:.0f} s)" for n, s in sorted(stuck.items()))
            return Verdict(
                False,
                f"no progress for more than {self.bound_s:g} s (INFERQ_LIVENESS_S) in: {named}",
            )
        return Verdict(True, f"{len(self._loops)} loops progressing")


# -- the endpoint ------------------------------------------------------------------------------

_PROBES: dict[str, Callable[[Health], Verdict]] = {
    "/ready": Health.readiness,
    "/live": Health.liveness,
}


def endpoint_app(registry: CollectorRegistry, health: Health | None) -> Callable[..., Any]:
    """``/ready`` and ``/live`` from ``health``; every other path is prometheus_client's app."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        probe = _PROBES.get(environ.get("PATH_INFO", ""))
        if probe is None or health is None:
            return iter(metrics_app(environ, start_response))
        verdict = probe(health)
        status = "200 OK" if verdict.ok else "503 Service Unavailable"
        body = (verdict.reason + "\n").encode()
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return iter([body])

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


def start_endpoint(
    port: int, registry: CollectorRegistry, health: Health | None, addr: str = "0.0.0.0"
) -> WSGIServer:
    """Serve the app on ``port`` from a daemon thread; OSError if the port is taken."""
    server = make_server(
        addr, port, endpoint_app(registry, health), ThreadingWSGIServer, handler_class=_Quiet
    )
    threading.Thread(target=server.serve_forever, name="inferq-metrics", daemon=True).start()
    return server
