"""Celery's semantics on inferq's bulk path: default model, refused workflows, trace context,
task signals and revokes (the parts that need no Redis; the rest is in
tests/integration/test_operability.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from celery import Celery, signals

from inferq.producer import calls
from inferq.producer.client import submit_job
from inferq.producer.envelope import task_envelope
from inferq.shared import codec, keys, trace
from inferq.shared.errors import InvalidInput, Revoked
from inferq.shared.spec import InputSpec
from inferq.shared.trace import TraceContext, producer_context
from inferq.worker.intake import InferenceRequest, decode_message
from inferq.worker.revoked import split_revoked
from inferq.worker.runner import Outcome
from inferq.worker.signals import TaskSignalsHook

SPEC = InputSpec(model="m", version=1, shape=(3, 2, 2))
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- default model -----------------------------------------------------------------------------


def test_the_configured_default_model_wins() -> None:
    assert calls.default_model("shapes", lambda: ["a", "b"]) == "shapes"


def test_the_only_published_model_is_the_default() -> None:
    assert calls.default_model("", lambda: ["shapes"]) == "shapes"


@pytest.mark.parametrize("published", [["a", "b"], []])
def test_no_default_names_the_published_models(published: list[str]) -> None:
    with pytest.raises(InvalidInput, match="INFERQ_DEFAULT_MODEL") as caught:
        calls.default_model("", lambda: published)
    assert str(published) in str(caught.value) if published else "no published" in str(caught.value)


def test_a_call_without_model_takes_the_default_and_a_named_model_skips_it() -> None:
    def unused() -> str:
        raise AssertionError("the default must not be looked up when the call names a model")

    assert calls.split_call(["img"], {}, lambda: "dflt") == ("img", {"model": "dflt"})
    assert calls.split_call(["img", "named"], {}, unused) == ("img", {"model": "named"})
    assert calls.split_call([], {"img": 1, "model": "k"}, unused) == (1, {"model": "k"})
    with pytest.raises(InvalidInput, match="needs an image"):
        calls.split_call([], {}, unused)


# -- link, link_error, chains: refused, never dropped ------------------------------------------


@pytest.mark.parametrize("option", ["link", "link_error"])
def test_callbacks_are_refused_at_submit(option: str) -> None:
    other = Celery(broker="memory://").signature("other.task")
    with pytest.raises(InvalidInput, match=f"got {option}"):
        submit_job.apply_async(("img",), {"model": "m"}, **{option: other})


def test_a_chain_is_refused_at_submit() -> None:
    other = Celery(broker="memory://").signature("other.task")
    with pytest.raises(InvalidInput, match="chain"):
        (submit_job.s("img", model="m") | other).apply_async()


# -- W3C trace context -------------------------------------------------------------------------


def _envelope(options: dict[str, Any]) -> bytes:
    payload = codec.header_for(np.dtype("uint8"), SPEC.shape) + bytes(12)
    kwargs = {"model": "m", "submitted_at": 1.0, "preprocess_ms": 0.0}
    return task_envelope("t-1", payload, kwargs, SPEC, keys.DEFAULT_PRIORITY, None, options)


def test_explicit_trace_headers_travel_to_the_worker_request() -> None:
    raw = _envelope({"headers": {"traceparent": PARENT, "tracestate": "vendor=1"}})
    request = decode_message("tag", raw, SPEC, max_bytes=1 << 20)
    assert isinstance(request, InferenceRequest)
    assert request.trace == TraceContext(PARENT, "vendor=1")


def test_opentelemetrys_current_context_is_injected_when_importable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The seam is the propagator's inject function: what `opentelemetry.propagate.inject` is.
    monkeypatch.setattr(trace, "_inject", lambda carrier: carrier.update(traceparent=PARENT))
    request = decode_message("tag", _envelope({}), SPEC, max_bytes=1 << 20)
    assert isinstance(request, InferenceRequest)
    assert request.trace == TraceContext(PARENT)


def test_without_opentelemetry_or_headers_a_message_carries_no_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trace, "_inject", None)
    request = decode_message("tag", _envelope({}), SPEC, max_bytes=1 << 20)
    assert isinstance(request, InferenceRequest)
    assert request.trace is None


def test_a_malformed_traceparent_is_refused_by_the_producer_and_ignored_by_the_worker() -> None:
    with pytest.raises(InvalidInput, match="W3C traceparent"):
        producer_context({"traceparent": "not-a-trace"})
    assert TraceContext.from_headers({"traceparent": "00-xyz"}) is None


# -- task signals ------------------------------------------------------------------------------


def _request(task_id: str, ctx: TraceContext | None = None) -> InferenceRequest:
    return InferenceRequest(
        task_id, "tag-" + task_id, "m", np.zeros(1, np.uint8), 1.0, 0.0, 2.0, 3.0, None, None, 5,
        trace=ctx,
    )  # fmt: skip


@pytest.fixture
def received() -> Iterator[list[tuple[str, str, Any]]]:
    """(signal, task id, traceparent seen on task.request) for each signal sent."""
    seen: list[tuple[str, str, Any]] = []

    def on(name: str) -> Any:
        def receiver(sender: Any, **kw: Any) -> None:
            seen.append((name, sender.request.id, getattr(sender.request, "traceparent", None)))

        return receiver

    receivers = {
        s: on(name)
        for s, name in [
            (signals.task_prerun, "prerun"),
            (signals.task_success, "success"),
            (signals.task_failure, "failure"),
            (signals.task_postrun, "postrun"),
        ]
    }
    for s, r in receivers.items():
        s.connect(r, weak=False)
    yield seen
    for s, r in receivers.items():
        s.disconnect(r)


def test_each_request_gets_its_signals_once_with_its_trace(
    received: list[tuple[str, str, Any]],
) -> None:
    task = submit_job
    hook = TaskSignalsHook(task)
    a, b = _request("a", TraceContext(PARENT)), _request("b")
    hook.before_batch("m", 1, [a, b])
    hook.after_batch(
        "m", 1, [a, b], [Outcome(a, value=None), Outcome(b, error=InvalidInput("x"))], 0.1
    )
    assert received == [
        ("prerun", "a", PARENT),
        ("prerun", "b", None),
        ("success", "a", PARENT),
        ("postrun", "a", PARENT),
        ("failure", "b", None),
        ("postrun", "b", None),
    ]
    assert Counter(name for name, _, _ in received) == Counter(
        prerun=2, success=1, failure=1, postrun=2
    )
    assert task.request.id is None  # the request stack is left as it was


def test_the_worker_sends_signals_only_when_the_setting_asks() -> None:
    probe = (
        "from inferq.worker.app import build_hooks; from inferq.worker.metrics import Metrics;"
        "from inferq.shared.settings import Settings; m = Metrics();"
        "print([[type(h).__name__ for h in build_hooks(Settings(task_signals=f), m, 'w', False).hooks"
        " if type(h).__name__ == 'TaskSignalsHook'] for f in (False, True)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[[], ['TaskSignalsHook']]"


# -- revokes -----------------------------------------------------------------------------------


def test_revoked_requests_become_revoked_rejections_and_the_rest_go_on() -> None:
    batch = [_request("a"), _request("b"), _request("c")]
    keep, gone = split_revoked(batch, revoked={"b"})
    assert [r.task_id for r in keep] == ["a", "c"]
    assert [(g.tag, g.task_id, type(g.error)) for g in gone] == [("tag-b", "b", Revoked)]


def test_with_nothing_revoked_the_batch_passes_whole() -> None:
    batch = [_request("a")]
    assert split_revoked(batch, revoked=set()) == (batch, [])
