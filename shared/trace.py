"""W3C trace context (``traceparent``/``tracestate``) carried in a request's message headers.

The producer copies it into the message from OpenTelemetry's current context when the
``opentelemetry`` API is importable, or from the call's own ``headers=`` option; the worker reads
it back, binds it to the request's log lines and hands it to Celery's task signals (as
``task.request.traceparent``, where OpenTelemetry's Celery instrumentation looks), so an
instrumented producer and worker join one trace. Neither side needs OpenTelemetry installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from inferq.shared.errors import InvalidInput

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version-trace_id-parent_id-flags, lower-case hex (W3C Trace Context, section 3.2).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_MAX_TRACESTATE = 512  # W3C: 32 members of at most 256 characters; more is dropped, not sent


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One request's trace context, as W3C headers."""

    traceparent: str
    tracestate: str = ""

    def headers(self) -> dict[str, str]:
        out = {TRACEPARENT: self.traceparent}
        if self.tracestate:
            out[TRACESTATE] = self.tracestate
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any]) -> TraceContext | None:
        """The context a message carries; None when it carries none or a malformed one (a
        worker never fails a request over its tracing)."""
        parent = headers.get(TRACEPARENT)
        if not isinstance(parent, str) or not _TRACEPARENT.fullmatch(parent):
            return None
        state = headers.get(TRACESTATE)
        if not isinstance(state, str) or len(state) > _MAX_TRACESTATE:
            state = ""
        return cls(parent, state)


def _otel_inject() -> Callable[[dict[str, str]], None] | None:
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return None
    return inject


_inject = _otel_inject()


def producer_context(explicit: Mapping[str, Any] | None) -> TraceContext | None:
    """The trace context a new message carries: the call's ``headers=`` if they hold a
    ``traceparent``, else OpenTelemetry's current span (when there is one)."""
    if explicit and TRACEPARENT in explicit:
        ctx = TraceContext.from_headers(explicit)
        if ctx is None:
            raise InvalidInput(
                "headers['traceparent'] must be a W3C traceparent "
                f"('00-<32 hex>-<16 hex>-<2 hex>'), got {explicit[TRACEPARENT]!r}"
            )
        return ctx
    if _inject is None:
        return None
    carrier: dict[str, str] = {}
    _inject(carrier)
    return TraceContext.from_headers(carrier)
