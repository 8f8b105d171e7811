"""The worker's bulk fetch against a real Redis: order, kombu's unacked records, and holds that a
worker dying between its two fetch round trips leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import redis

from inferq.shared import keys
from inferq.shared.redisconn import make_client
from inferq.worker.broker import Broker

pytestmark = pytest.mark.integration

QUEUE = keys.queue_name("tiny")


def envelope(n: int, priority: int = 0, properties_first: bool = False) -> bytes:
    """A kombu Redis envelope as Celery writes it (or with its fields in another order)."""
    props = {
        "correlation_id": f"id-{n}",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": QUEUE},
        "priority": priority,
        "body_encoding": "base64",
        "delivery_tag": f"tag-{n}",
    }
    head = {"body": "e30=", "content-encoding": "utf-8", "content-type": "application/json"}
    if properties_first:
        return orjson.dumps({"properties": props, **head})
    return orjson.dumps({**head, "headers": {}, "properties": props})


def push(client, *messages: bytes, priority: int = 0) -> None:
    for m in messages:  # as kombu publishes: LPUSH, so the oldest is the rightmost
        client.lpush(keys.priority_queue_key(QUEUE, priority), m)


@pytest.fixture
def broker(stack_factory, test_repo: Path) -> Broker:
    stack = stack_factory(test_repo)
    return Broker(stack.client, stack.client, 60)


def test_fetch_takes_the_highest_priority_then_the_oldest(broker: Broker) -> None:
    push(broker.client, *(envelope(n) for n in range(5)), priority=keys.DEFAULT_PRIORITY)
    push(broker.client, envelope(100, priority=9), priority=9)
    push(broker.client, envelope(200, priority=0), priority=0)
    # kombu's lists are served in queue_keys order (priority 0 first, 9 last), each oldest first
    assert [f.tag for f in broker.fetch(QUEUE, 4)] == ["tag-200", "tag-0", "tag-1", "tag-2"]
    assert [f.tag for f in broker.fetch(QUEUE, 10)] == ["tag-3", "tag-4", "tag-100"]
    assert broker.fetch(QUEUE, 10) == []


def test_fetch_records_kombus_unacked_entries_and_leaves_no_hold(broker: Broker) -> None:
    push(broker.client, envelope(1), envelope(2, properties_first=True))
    got = broker.fetch(QUEUE, 10)
    assert [f.tag for f in got] == ["tag-1", "tag-2"]
    for f in got:
        message, exchange, routing_key = json.loads(broker.client.hget(keys.UNACKED, f.tag))
        assert message == json.loads(f.raw)
        assert (exchange, routing_key) == ("", QUEUE)
        assert broker.client.zscore(keys.UNACKED_INDEX, f.tag) is not None
    assert broker.client.zcard(keys.HOLDING) == 0
    assert broker.client.keys("inferq:hold:*") == []


def test_messages_without_a_delivery_tag_go_to_the_dead_letter_list(broker: Broker) -> None:
    no_tag = orjson.dumps({"body": "e30=", "properties": {"priority": 0}})
    push(broker.client, b"\x00garbage", no_tag, envelope(3))
    assert [f.tag for f in broker.fetch(QUEUE, 10)] == ["tag-3"]
    assert broker.client.lrange(keys.DEAD_LETTER, 0, -1) == [no_tag, b"\x00garbage"]
    assert broker.client.hlen(keys.UNACKED) == 1


def test_a_hold_left_by_a_dead_worker_goes_back_once_in_order(broker: Broker) -> None:
    push(broker.client, *(envelope(n) for n in range(4)))
    push(broker.client, envelope(9))  # stays queued: the hold takes 4
    # The first round trip of a fetch, and then the worker is gone: no unacked record yet.
    counts, _ = broker._hold(keys.queue_keys(QUEUE), "inferq:hold:dead:0", QUEUE, 4)
    assert sum(counts) == 4
    assert broker.client.hlen(keys.UNACKED) == 0
    assert broker.return_holds(older_than_s=3600) == 0  # not yet past the visibility timeout
    assert broker.return_holds(older_than_s=0) == 4
    assert broker.return_holds(older_than_s=0) == 0  # once only
    assert broker.client.keys("inferq:hold:*") == []
    assert [f.tag for f in broker.fetch(QUEUE, 10)] == [f"tag-{n}" for n in (0, 1, 2, 3, 9)]


def test_recording_a_hold_waits_out_refused_writes_and_is_safe_to_repeat(broker: Broker) -> None:
    push(broker.client, envelope(1), envelope(2), envelope(3))
    taken = broker.take(QUEUE, 10)
    assert taken is not None and [f.tag for f in taken.fetched] == ["tag-1", "tag-2", "tag-3"]
    broker.client.config_set("maxmemory-policy", "noeviction")
    broker.client.config_set("maxmemory", 1)  # every write refused: out of memory
    with pytest.raises(redis.RedisError, match="used memory > 'maxmemory'"):
        broker.record(taken)
    assert broker.client.hlen(keys.UNACKED) == 0 and broker.client.zcard(keys.HOLDING) == 1
    broker.client.config_set("maxmemory", 0)
    broker.record(taken)
    broker.record(taken)  # again, as after a lost reply: nothing changes
    assert sorted(broker.client.hkeys(keys.UNACKED)) == [b"tag-1", b"tag-2", b"tag-3"]
    assert broker.client.zcard(keys.UNACKED_INDEX) == 3
    assert broker.client.zcard(keys.HOLDING) == 0
    assert broker.client.keys(f"{keys.HOLD_PREFIX}*") == []


def test_the_fetch_client_records_large_messages_whole(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    fetch_client = make_client(stack.redis.url, retries=0, large_values=True)
    broker = Broker(stack.client, stack.client, 60, fetch_client)
    large = envelope(1).replace(b'"e30="', b'"' + b"A" * 300_000 + b'"')  # over the own-write size
    push(broker.client, large, envelope(2))
    got = broker.fetch(QUEUE, 10)
    assert [f.tag for f in got] == ["tag-1", "tag-2"]
    for f in got:
        assert broker.client.hget(keys.UNACKED, f.tag) == f.unacked
    assert json.loads(broker.client.hget(keys.UNACKED, "tag-1"))[0]["body"] == "A" * 300_000


def test_a_redis_that_lost_its_scripts_still_fetches_and_stores(broker: Broker) -> None:
    """Fetch and store-and-ack go around redis-py's machinery; after a restart that emptied the
    script cache they load their scripts and run, once each."""
    from inferq.worker.broker import Write

    push(broker.client, envelope(1), envelope(2))
    broker.client.script_flush()
    got = broker.fetch(QUEUE, 10)
    assert [f.tag for f in got] == ["tag-1", "tag-2"]
    broker.client.script_flush()
    broker.store_and_ack(
        [Write("tag-1", "id-1", b'{"status": "SUCCESS"}'), Write("tag-2", None, None)]
    )
    assert broker.client.get(keys.result_key("id-1")) == b'{"status": "SUCCESS"}'
    assert broker.client.hlen(keys.UNACKED) == 0 and broker.client.zcard(keys.UNACKED_INDEX) == 0


def test_a_transaction_raises_the_error_of_a_command_inside_it(broker: Broker) -> None:
    from inferq.shared.redisconn import raw_transaction

    broker.client.set("a-string", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        raw_transaction(broker.client, [("SET", "b", "1"), ("HSET", "a-string", "f", "v")])
    assert broker.client.get("b") == b"1"  # Redis runs the rest of a transaction: no rollback
    assert raw_transaction(broker.client, [("INCR", "n"), ("INCR", "n")]) == [1, 2]


class _Routing:
    """A client that is not a ``redis.Redis`` (as a cluster client is not): only its pipeline."""

    def __init__(self, client: redis.Redis) -> None:
        self.pipeline = client.pipeline


def test_a_client_that_routes_commands_itself_gets_the_same_replies(broker: Broker) -> None:
    from inferq.shared.redisconn import raw_pipeline, raw_transaction

    routing = _Routing(broker.client)
    assert raw_pipeline(routing, [("SET", "k", "v"), ("GET", "k")]) == [True, b"v"]
    assert raw_transaction(routing, [("INCR", "m"), ("INCR", "m")]) == [1, 2]
    broker.client.set("a-string", "x")
    (error,) = raw_pipeline(routing, [("HSET", "a-string", "f", "v")])
    assert isinstance(error, redis.ResponseError) and "WRONGTYPE" in str(error)
