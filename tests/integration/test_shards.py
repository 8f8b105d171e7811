"""A model's queue sharded over a real 3-master Redis Cluster, driven in-process: the shard pusher
and the sharded broker keep the standalone guarantees shard by shard."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from inferq.producer.pusher import Prepared
from inferq.producer.shards import ShardPusher
from inferq.shared import keys
from inferq.shared.cluster import make_cluster_client, shard_books
from inferq.shared.errors import QueueFull
from inferq.shared.placement import Where, make_placement, write_placement
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings, set_settings
from inferq.worker.broker import Write
from inferq.worker.fleet import fleet_status
from inferq.worker.placed import make_broker
from inferq.worker.shards import ShardedBroker
from inferq.worker.tools.localcluster import LocalCluster
from inferq.worker.tools.localredis import LocalRedis

pytestmark = pytest.mark.integration

MODEL = "m"
QUEUE = keys.queue_name(MODEL)
SHARDS = 3


def envelope(n: int, priority: int = keys.DEFAULT_PRIORITY) -> bytes:
    props = {
        "correlation_id": f"id-{n}",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": QUEUE},
        "priority": priority,
        "body_encoding": "base64",
        "delivery_tag": f"tag-{n}",
    }
    head = {"body": "e30=", "content-encoding": "utf-8", "content-type": "application/json"}
    return orjson.dumps({**head, "headers": {"id": f"id-{n}"}, "properties": props})


def prepared(n: int, limit: int = 10_000, priority: int = keys.DEFAULT_PRIORITY) -> Prepared:
    return Prepared(f"id-{n}", QUEUE, priority, limit, envelope(n, priority), (QUEUE,))


@pytest.fixture
def results(local_redis: LocalRedis) -> redis.Redis:
    return redis.Redis.from_url(local_redis.url)


@pytest.fixture
def pusher(redis_cluster: LocalCluster) -> ShardPusher:
    return ShardPusher(make_cluster_client(redis_cluster.url), MODEL, SHARDS, "test")


@pytest.fixture
def broker(redis_cluster: LocalCluster, results: redis.Redis) -> ShardedBroker:
    return ShardedBroker(make_cluster_client(redis_cluster.url), results, 60, MODEL, SHARDS)


def depths(client) -> list[int]:
    return [
        sum(client.llen(k) for k in keys.queue_keys(b.queue(QUEUE)))
        for b in shard_books(MODEL, SHARDS)
    ]


def test_requests_spread_over_shards_on_different_masters(
    redis_cluster: LocalCluster, pusher: ShardPusher
) -> None:
    for n in range(30):
        pusher.push([prepared(n)])
    assert depths(pusher.client) == [10, 10, 10]
    owners = {redis_cluster.node_of(b.tag).port for b in shard_books(MODEL, SHARDS)}
    assert len(owners) == 3, "each shard's slot is on its own master"


def test_every_shard_is_drained_and_each_message_acked_in_its_own(
    pusher: ShardPusher, broker: ShardedBroker, results: redis.Redis
) -> None:
    for n in range(30):
        pusher.push([prepared(n)])
    fetched = []
    while (taken := broker.take(QUEUE, 4)) is not None:
        broker.record(taken)
        fetched += taken.fetched
    assert sorted(f.tag for f in fetched) == sorted(f"tag-{n}" for n in range(30))
    books = shard_books(MODEL, SHARDS)
    assert [broker.client.hlen(b.unacked) for b in books] == [10, 10, 10]
    broker.store_and_ack(
        [Write(f.tag, f"id-{f.tag[4:]}", b'{"status": "SUCCESS"}') for f in fetched]
    )
    assert [broker.client.hlen(b.unacked) for b in books] == [0, 0, 0]
    assert [broker.client.zcard(b.unacked_index) for b in books] == [0, 0, 0]
    assert results.exists(*(keys.result_key(f"id-{n}") for n in range(30))) == 30


def test_priorities_hold_within_a_shard(pusher: ShardPusher, broker: ShardedBroker) -> None:
    # Three rounds of one message per shard: bulk (9), default, urgent (0).
    for n, priority in enumerate([9] * 3 + [keys.DEFAULT_PRIORITY] * 3 + [0] * 3):
        pusher.push([prepared(n, priority=priority)])
    order = []
    while (taken := broker.take(QUEUE, 1)) is not None:
        broker.record(taken)
        order.append((taken.queue, int(taken.fetched[0].tag[4:])))
    for book in shard_books(MODEL, SHARDS):
        mine = [n for q, n in order if q == book.queue(QUEUE)]
        assert [n // 3 for n in mine] == [2, 1, 0], f"shard {book.tag}: {mine}"


def test_queue_full_counts_the_limit_over_all_shards(pusher: ShardPusher) -> None:
    accepted, refused = 0, 0
    for n in range(40):
        try:
            pusher.push([prepared(n, limit=30)])
            accepted += 1
        except QueueFull as exc:
            refused += 1
            assert exc.limit == 30 and exc.waiting == 30 and exc.queue == QUEUE
    assert (accepted, refused) == (30, 10)
    assert depths(pusher.client) == [10, 10, 10]


def test_push_each_answers_every_call_as_push_would(pusher: ShardPusher) -> None:
    """The asyncio client's submit thread hands a round of calls over at once (push_each)."""
    outcomes = pusher.push_each([[prepared(n, limit=30)] for n in range(40)])
    assert outcomes[:30] == [""] * 30  # a cluster keeps no epoch
    assert all(isinstance(o, QueueFull) and o.limit == 30 for o in outcomes[30:])
    assert depths(pusher.client) == [10, 10, 10]


def test_expired_messages_come_back_to_their_own_shard(
    pusher: ShardPusher, broker: ShardedBroker
) -> None:
    for n in range(9):
        pusher.push([prepared(n)])
    while (taken := broker.take(QUEUE, 2)) is not None:
        broker.record(taken)  # and the worker dies: never acked
    assert depths(broker.client) == [0, 0, 0]
    assert broker.restore_expired(visibility_timeout_s=3600) == 0  # not expired yet
    assert broker.restore_expired(visibility_timeout_s=0) == 9
    assert depths(broker.client) == [3, 3, 3]
    books = shard_books(MODEL, SHARDS)
    assert [broker.client.hlen(b.unacked) for b in books] == [0, 0, 0]


def test_a_hold_never_recorded_goes_back_after_the_timeout(
    pusher: ShardPusher, broker: ShardedBroker
) -> None:
    for n in range(6):
        pusher.push([prepared(n)])
    taken = [broker.take(QUEUE, 10) for _ in range(3)]  # taken, then the worker dies
    assert all(t is not None for t in taken)
    assert depths(broker.client) == [0, 0, 0]
    assert broker.return_holds(older_than_s=3600) == 0
    assert broker.return_holds(older_than_s=0) == 6
    assert depths(broker.client) == [2, 2, 2]


def test_warm_shutdown_restores_to_the_shard_each_came_from(
    pusher: ShardPusher, broker: ShardedBroker
) -> None:
    for n in range(6):
        pusher.push([prepared(n)])
    tags = []
    while (taken := broker.take(QUEUE, 10)) is not None:
        broker.record(taken)
        tags += [f.tag for f in taken.fetched]
    assert len(set(tags)) == 6
    assert broker.restore(tags) == 6
    assert depths(broker.client) == [2, 2, 2]
    assert [broker.client.hlen(b.unacked) for b in shard_books(MODEL, SHARDS)] == [0, 0, 0]


def test_a_message_parked_for_its_eta_comes_back_to_its_shard(
    pusher: ShardPusher, broker: ShardedBroker
) -> None:
    for n in range(3):
        pusher.push([prepared(n)])
    parked = []
    while (taken := broker.take(QUEUE, 10)) is not None:
        broker.record(taken)
        for f in taken.fetched:
            parked.append(broker.schedule(f.tag, 0.0, QUEUE, keys.DEFAULT_PRIORITY, f.raw))
    assert parked == [True, True, True]
    books = shard_books(MODEL, SHARDS)
    assert [broker.client.zcard(b.scheduled) for b in books] == [1, 1, 1]
    assert [broker.client.hlen(b.unacked) for b in books] == [0, 0, 0]
    assert broker.promote_due() == 3
    assert depths(broker.client) == [1, 1, 1]


def test_the_backlog_kedas_exporter_reads_sums_every_shard(
    redis_cluster: LocalCluster,
    local_redis: LocalRedis,
    results: redis.Redis,
    pusher: ShardPusher,
    broker: ShardedBroker,
) -> None:
    settings = Settings(broker_url=local_redis.url, redis_instances=f"cl={redis_cluster.url}")
    set_settings(settings)
    try:
        write_placement(results, make_placement(MODEL, settings, "cl", shards=SHARDS))
        for n in range(12):
            pusher.push([prepared(n, priority=0 if n < 3 else keys.DEFAULT_PRIORITY)])
        taken = broker.take(QUEUE, 2)  # a fetch in hand, then one parked for its eta
        assert taken is not None
        broker.record(taken)
        broker.schedule(taken.fetched[0].tag, time.time() + 600, QUEUE, 5, taken.fetched[0].raw)
        held = broker.take(QUEUE, 3)  # and a fetch caught between its two round trips
        assert held is not None
        [status] = fleet_status(results, Registry(results), [MODEL]).models
        assert (status.backlog.waiting, status.backlog.in_hand, status.backlog.scheduled) == (
            7,
            1 + 3,
            1,
        )
        assert status.backlog.by_queue[QUEUE] == 7
        assert sum(status.backlog.by_priority.values()) == 7
    finally:
        set_settings(None)


def test_a_workers_hold_script_is_never_resent(
    redis_cluster: LocalCluster, local_redis: LocalRedis, results: redis.Redis
) -> None:
    """A resent hold would overwrite the first one's lists: its client must not retry (the
    other calls are safe to repeat and do)."""
    settings = Settings(broker_url=local_redis.url)
    where = Where(redis_cluster.url, local_redis.url, cluster=True, shards=SHARDS)
    built = make_broker(results, settings, [MODEL], where)
    assert isinstance(built, ShardedBroker)
    assert {b.fetch_client.retry.get_retries() for b in built.shards} == {0}  # type: ignore[attr-defined]
    assert built.client.retry.get_retries() > 0
