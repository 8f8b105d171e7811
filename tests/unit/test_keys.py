"""shared/keys.py: the Redis names are wire contracts (queued messages, running workers and other
Celery clients rely on them), so each is pinned here as a literal, and kombu's own against kombu."""

from __future__ import annotations

import pytest
from kombu.transport.redis import Channel
from kombu.transport.virtual.base import Channel as VirtualChannel

from inferq.shared import keys


def test_kombu_names_are_kombus_own() -> None:
    assert Channel.sep == keys.PRIORITY_SEP
    assert Channel.unacked_key == keys.UNACKED
    assert Channel.unacked_index_key == keys.UNACKED_INDEX
    assert keys.binding_key("ex") == Channel.keyprefix_queue % "ex"
    assert (
        VirtualChannel.min_priority,
        VirtualChannel.max_priority,
    ) == (keys.HIGHEST_PRIORITY, keys.LOWEST_PRIORITY)


def test_inferq_names_stay_as_they_are() -> None:
    assert keys.TASK_NAME == "inferq.infer"
    assert keys.ADMIN_QUEUE == "inferq.admin"
    assert keys.queue_name("resnet18") == "inferq.resnet18"
    assert keys.DEAD_LETTER == "inferq.deadletter"
    assert keys.SCHEDULED == "inferq:scheduled"
    assert keys.HOLDING == "inferq:holding"
    assert keys.EPOCH == "inferq:epoch"
    assert keys.result_key("t-1") == "celery-task-meta-t-1"
    assert keys.push_reply_key("c") == "inferq:push:c"
    assert keys.model_spec_key("m") == "inferq:model:m"
    assert keys.model_workers_key("m") == "inferq:workers:m"
    assert keys.event_channel(0, "task.multi") == "/0.celeryev/task.multi"


def test_priority_lists_follow_kombus_q_for_pri() -> None:
    lists = keys.queue_keys("inferq.m")
    assert lists[0] == "inferq.m"
    assert lists[1:] == [f"inferq.m\x06\x16{p}" for p in range(1, 10)]
    assert lists[keys.priority_list_index(keys.DEFAULT_PRIORITY)] == "inferq.m\x06\x165"


@pytest.mark.parametrize(("given", "clamped"), [(-3, 0), (0, 0), (4, 4), (9, 9), (42, 9)], ids=str)
def test_priority_is_clamped_into_the_range(given: int, clamped: int) -> None:
    assert keys.clamp_priority(given) == clamped


def test_holds_and_their_registration() -> None:
    hold = keys.hold_key("f00d", 7)
    assert hold == "inferq:hold:f00d:7"
    assert keys.hold_lists(hold) == [f"inferq:hold:f00d:7:{i}" for i in range(1, 11)]
    member = keys.holding_member(hold, "inferq.a#b")
    assert member == "inferq:hold:f00d:7#inferq.a#b"
    assert keys.parse_holding_member(member) == (hold, "inferq.a#b")
