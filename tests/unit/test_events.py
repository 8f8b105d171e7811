"""Event envelopes are exactly what kombu's Redis fanout publishes, so Flower can read them."""

from __future__ import annotations

import base64
import json

from worker.events import EVENT_TYPES, EnvelopeMaker, fanout_topic


def test_envelopes_parse_and_carry_the_event() -> None:
    make = EnvelopeMaker("w1@host")
    tags = set()
    for type_ in EVENT_TYPES:
        event = {"type": type_, "uuid": "abc", "hostname": "w1@host", "clock": 3}
        env = json.loads(make(event))
        assert json.loads(base64.b64decode(env["body"])) == event
        assert env["content-type"] == "application/json"
        assert env["headers"] == {"hostname": "w1@host"}
        props = env["properties"]
        assert props["delivery_info"] == {
            "exchange": "celeryev",
            "routing_key": type_.replace("-", "."),
        }
        assert props["body_encoding"] == "base64"
        tags.add(props["delivery_tag"])
    assert len(tags) == len(EVENT_TYPES)


def test_fanout_topic_follows_the_broker_db() -> None:
    assert fanout_topic("redis://h:6379/0", "task.succeeded") == "/0.celeryev/task.succeeded"
    assert fanout_topic("rediss://:pw@h:6380/3?ssl_cert_reqs=required", "x") == "/3.celeryev/x"
    assert fanout_topic("redis://h", "x") == "/0.celeryev/x"
