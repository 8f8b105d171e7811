"""The fetcher driven in-process against a private Redis: what it takes reaches the batcher in
order and is counted, a message it cannot decode is answered as a typed failure, a message due
later is parked or waits, and what it fetches while stopping goes back to its queue."""

from __future__ import annotations

import threading

import orjson
import pytest
import redis

from inferq.shared import keys
from inferq.shared.errors import InvalidInput
from inferq.shared.keys import SCHEDULED
from inferq.shared.results import error_from_meta
from inferq.shared.settings import Settings
from inferq.worker.batcher import BatchPolicy, MicroBatcher
from inferq.worker.broker import Broker
from inferq.worker.fetcher import Fetcher
from inferq.worker.inhand import InHand
from inferq.worker.intake import InferenceRequest
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.writer import ResultWriter
from tests.integration.inproc import (
    QUEUE,
    SPEC,
    Recorder,
    envelope,
    push,
    task_ids,
    unacked_ids,
    wait_until,
)

pytestmark = pytest.mark.integration


class Stage:
    """A fetcher with its batcher, in-hand count and writer, none of them on a thread."""

    def __init__(self, local_redis: LocalRedis, client: redis.Redis, limit: int = 64) -> None:
        self.client = client
        self.broker = Broker(client, client, 60)
        self.hooks = Recorder()
        self.batcher: MicroBatcher[InferenceRequest] = MicroBatcher(BatchPolicy(64, 0.005))
        self.in_hand = InHand(limit)
        self.writer = ResultWriter(self.broker, self.hooks)
        self.stop = threading.Event()
        settings = Settings(broker_url=local_redis.url, metrics_port=0, idle_poll_s=0.01)
        self.fetcher = Fetcher(
            self.broker,
            settings,
            SPEC,
            self.batcher,
            self.in_hand,
            self.writer,
            self.hooks,
            self.stop,
        )

    def flush_writes(self) -> None:
        """Everything put to the writer so far, stored and acked."""
        self.writer.close()
        self.writer.run()

    def queued(self) -> int:
        return sum(int(self.client.llen(k)) for k in keys.queue_keys(QUEUE))


@pytest.fixture
def stage(local_redis: LocalRedis, redis_client: redis.Redis) -> Stage:
    return Stage(local_redis, redis_client)


def test_fetched_requests_reach_the_batcher_in_order_and_are_counted(stage: Stage) -> None:
    push(stage.client, *(envelope(f"t{n}", fill=n) for n in range(5)))
    push(stage.client, envelope("urgent"), priority=0)
    stage.fetcher.fetch_once()
    got = stage.batcher.drain()
    assert task_ids(got) == ["urgent", "t0", "t1", "t2", "t3", "t4"]
    assert [int(r.array[0, 0, 0]) for r in got[1:]] == [0, 1, 2, 3, 4]
    assert stage.in_hand.count == 6
    assert stage.client.hlen(keys.UNACKED) == 6
    assert stage.client.zcard(keys.HOLDING) == 0
    assert stage.hooks.fetches == [("tiny", 6, False)]  # fewer than asked for: nothing more


def test_fetch_takes_no_more_than_the_room_left(local_redis: LocalRedis, redis_client) -> None:
    stage = Stage(local_redis, redis_client, limit=3)
    push(stage.client, *(envelope(f"t{n}") for n in range(5)))
    stage.fetcher.fetch_once()
    assert (stage.in_hand.count, stage.queued()) == (3, 2)
    assert stage.hooks.fetches == [("tiny", 3, True)]  # as many as asked for: more may wait
    stage.fetcher.fetch_once()  # no room: takes nothing
    assert (stage.in_hand.count, stage.queued()) == (3, 2)
    stage.in_hand.done(3)  # three acked
    stage.fetcher.fetch_once()
    assert (stage.in_hand.count, stage.queued()) == (2, 0)
    assert task_ids(stage.batcher.drain()) == ["t0", "t1", "t2", "t3", "t4"]


def test_an_undecodable_message_is_stored_as_a_typed_failure(stage: Stage) -> None:
    push(stage.client, envelope("good"), envelope("bad", shape=(3, 4, 4)), envelope("good2"))
    stage.fetcher.fetch_once()
    assert task_ids(stage.batcher.drain()) == ["good", "good2"]
    assert stage.in_hand.count == 3
    stage.flush_writes()
    meta = orjson.loads(stage.client.get(keys.result_key("bad")))
    assert meta["status"] == "FAILURE"
    error = error_from_meta(meta["result"])
    assert isinstance(error, InvalidInput)
    assert str(error) == "tensor must be uint8[3, 8, 8] for model 'tiny', got uint8[3, 4, 4]"
    assert stage.client.get(keys.result_key("good")) is None  # not computed here
    assert stage.in_hand.count == 2  # the rejection is acked; the two requests are still held
    assert stage.client.hlen(keys.UNACKED) == 2
    assert stage.hooks.stores == [("tiny", 0, 1)]


def test_a_message_due_much_later_is_parked_in_redis(stage: Stage) -> None:
    push(stage.client, envelope("later", countdown=60), envelope("now"))
    stage.fetcher.fetch_once()
    assert task_ids(stage.batcher.drain()) == ["now"]
    assert stage.in_hand.count == 1  # the parked message holds no prefetch slot
    assert stage.client.zcard(SCHEDULED) == 1
    assert unacked_ids(stage.client) == ["now"]  # no visibility timeout runs for the parked one


def test_a_message_due_soon_waits_here_then_joins_the_batcher(stage: Stage) -> None:
    push(stage.client, envelope("soon", countdown=0.3))
    stage.fetcher.fetch_once()
    assert len(stage.batcher) == 0
    assert stage.in_hand.count == 1 and stage.client.zcard(SCHEDULED) == 0

    def released() -> bool:
        stage.fetcher.fetch_once()
        return len(stage.batcher) == 1

    wait_until(released, "the delayed request is due")
    assert task_ids(stage.batcher.drain()) == ["soon"]
    assert stage.fetcher.take_delayed() == []


def test_what_is_fetched_while_stopping_goes_back_to_its_queue(stage: Stage) -> None:
    push(stage.client, *(envelope(f"t{n}") for n in range(4)))
    stage.stop.set()
    stage.fetcher.fetch_once()
    assert len(stage.batcher) == 0
    assert stage.in_hand.count == 0
    assert stage.client.hlen(keys.UNACKED) == 0
    assert stage.queued() == 4
    assert stage.hooks.fetches == []
