"""Event envelopes are exactly what kombu's Redis fanout publishes, so Flower can read them."""

from __future__ import annotations

import base64
import json

import numpy as np
from celery import Celery

from inferq.shared.errors import InvalidInput
from inferq.worker.events import (
    GROUP_ROUTING_KEY,
    EnvelopeMaker,
    EventsHook,
    events_in,
    fanout_topic,
)
from inferq.worker.intake import InferenceRequest, Rejection
from inferq.worker.runner import Outcome


def test_envelopes_parse_and_carry_the_events() -> None:
    make = EnvelopeMaker("w1@host")
    tags = set()
    for body in ({"type": "task-received", "uuid": "abc"}, [{"type": "task-failed", "uuid": "x"}]):
        raw = make(body)
        env = json.loads(raw)
        assert json.loads(base64.b64decode(env["body"])) == body
        assert env["content-type"] == "application/json"
        assert env["headers"] == {"hostname": "w1@host"}
        props = env["properties"]
        assert props["delivery_info"] == {"exchange": "celeryev", "routing_key": "task.multi"}
        assert props["body_encoding"] == "base64"
        tags.add(props["delivery_tag"])
        assert events_in(raw) == (body if isinstance(body, list) else [body])
    assert len(tags) == 2


def test_fanout_topic_follows_the_broker_db() -> None:
    assert fanout_topic("redis://h:6379/0", "task.succeeded") == "/0.celeryev/task.succeeded"
    assert fanout_topic("rediss://:pw@h:6380/3?ssl_cert_reqs=required", "x") == "/3.celeryev/x"
    assert fanout_topic("redis://h", "x") == "/0.celeryev/x"


def _request(task_id: str) -> InferenceRequest:
    return InferenceRequest(
        task_id, "tag-" + task_id, "m", np.zeros(1, np.uint8), 1.0, 0.0, 2.0, 3.0, None, None, 5
    )


def _hook() -> EventsHook:
    app = Celery(broker="memory://")
    app.conf.worker_send_task_events = False  # no sender thread: events are built, not sent
    return EventsHook(app, "w1@host")


def test_a_batch_gives_received_and_final_events_with_increasing_clocks() -> None:
    hook = _hook()
    ok = Outcome(
        _request("a"),
        value={"timing": {"collate_ms": 1.0, "infer_ms": 2.0, "post_ms": 1.0}},
    )
    bad = Outcome(_request("b"), error=InvalidInput("nope"))
    rejected = Rejection("tag-c", "c", InvalidInput("bad header"))
    unanswerable = Rejection("tag-d", None, InvalidInput("no id"))
    events = hook.events_for([ok, bad], [rejected, unanswerable])
    assert [(e["uuid"], e["type"]) for e in events] == [
        ("a", "task-received"),
        ("a", "task-succeeded"),
        ("b", "task-received"),
        ("b", "task-failed"),
        ("c", "task-failed"),
    ]
    clocks = [e["clock"] for e in events]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)
    assert hook.app.clock.value == clocks[-1]
    assert events[1]["runtime"] == 0.004
    assert "nope" in events[3]["exception"]
    assert all(e["hostname"] == "w1@host" for e in events)
    assert events[0]["kwargs"] == "{'model': 'm'}" and events[0]["timestamp"] == 3.0


def test_a_grouped_message_is_read_by_celerys_event_receiver() -> None:
    """EventReceiver's own dispatch path (what Flower runs) takes the grouped body apart."""
    hook = _hook()
    events = hook.events_for([Outcome(_request(str(i)), value={}) for i in range(3)], [])
    [raw] = hook.messages_for(events)
    seen: list[dict] = []
    with hook.app.connection() as conn:  # in-memory transport: no server needed
        recv = hook.app.events.Receiver(conn, handlers={"*": seen.append})
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        recv._receive(body, None)
    assert [(e["uuid"], e["type"]) for e in seen] == [(e["uuid"], e["type"]) for e in events]


def test_large_batches_are_split_into_several_messages() -> None:
    hook = _hook()
    events = [{"type": "task-received", "uuid": str(i)} for i in range(2500)]
    messages = hook.messages_for(events)
    assert len(messages) == 3
    assert [e for m in messages for e in events_in(m)] == events
    assert all(m.startswith(b"{") for m in messages) and GROUP_ROUTING_KEY == "task.multi"
