"""A model sharded over a real 3-master Redis Cluster, served by real worker processes, under the
faults that matter: a worker SIGKILLed mid-batch and a master restarted. Every request ends in
exactly one final state, counted exactly."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferq.producer import gather, submit_job, submit_many
from inferq.shared import keys
from inferq.shared.cluster import make_cluster_client, shard_books
from inferq.shared.errors import BrokerUnavailable
from inferq.shared.placement import make_placement, write_placement
from inferq.worker.tools.localcluster import LocalCluster
from tests.integration.test_faults import (
    Held,
    celery_child,
    chw,
    done_at,
    outcome_counts,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

MODEL = "slow"
SHARDS = 3
VISIBILITY_S = 8.0  # above the startup check's floor on a loaded two-core machine
SWEEP_S = 0.5


def cluster_stack(stack_factory, repo: Path, cluster: LocalCluster, **settings: Any):  # type: ignore[no-untyped-def]
    instances = f"cl={cluster.url}"
    stack = stack_factory(repo, redis_instances=instances, **settings)
    stack.extra_env["INFERQ_REDIS_INSTANCES"] = instances
    write_placement(stack.client, make_placement(MODEL, stack.settings, "cl", shards=SHARDS))
    return stack


def held_in_shards(client: Any) -> list[Held]:
    """Every shard's unacked messages now, with when each was recorded as taken."""
    held: list[Held] = []
    for book in shard_books(MODEL, SHARDS):
        entries = client.hgetall(book.unacked)
        recorded = dict(client.zrange(book.unacked_index, 0, -1, withscores=True))
        held += [
            Held(orjson.loads(e)[0]["headers"]["id"], float(recorded[t]))
            for t, e in entries.items()
            if t in recorded
        ]
    return held


def unacked_left(client: Any) -> int:
    return sum(int(client.hlen(b.unacked)) for b in shard_books(MODEL, SHARDS))


def all_acked(client: Any) -> None:
    """Until no shard holds an unacked entry. Results are stored on the result Redis before the
    shard's acks, so the last acks may land just after the last result is read."""
    wait_until(lambda: unacked_left(client) == 0, 30, "every shard's unacked entries acked")


def test_a_sharded_model_is_served_from_every_shard(
    stack_factory, test_repo: Path, redis_cluster: LocalCluster
) -> None:
    stack = cluster_stack(stack_factory, test_repo, redis_cluster)
    stack.worker(MODEL)
    results = submit_many([chw(seed=i) for i in range(300)], model=MODEL, chunk=10)
    values = gather(results, timeout=120, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=300)
    client = make_cluster_client(redis_cluster.url)
    all_acked(client)
    # Results live on the home Redis (the placement's standalone result backend).
    assert stack.client.exists(*(keys.result_key(r.id) for r in results)) == 300


def test_sigkill_mid_batch_loses_nothing_on_a_cluster(
    stack_factory, test_repo: Path, redis_cluster: LocalCluster
) -> None:
    stack = cluster_stack(
        stack_factory,
        test_repo,
        redis_cluster,
        visibility_timeout_s=VISIBILITY_S,
        restore_interval_s=SWEEP_S,
    )
    w = stack.worker(MODEL)
    client = make_cluster_client(redis_cluster.url)
    results = submit_many([chw(seed=i) for i in range(1200)], model=MODEL, chunk=20)
    wait_until(lambda: unacked_left(client) > 0, 60, "the worker holding unacked messages")
    child = celery_child(w)
    child.send_signal(signal.SIGKILL)
    held = held_in_shards(client)
    assert held, "the kill must catch messages in the worker's hands"
    values = gather(results, timeout=180, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=1200)
    all_acked(client)
    for h in held:  # each came back after its visibility timeout, never before
        served_at = done_at(stack.client, h.task_id)
        assert served_at >= h.recorded_at + VISIBILITY_S, f"{h} redelivered before its timeout"


def test_a_master_restarted_under_load_loses_nothing(
    stack_factory, test_repo: Path, redis_cluster: LocalCluster
) -> None:
    stack = cluster_stack(
        stack_factory, test_repo, redis_cluster, visibility_timeout_s=8.0, restore_interval_s=0.5
    )
    stack.worker(MODEL)
    client = make_cluster_client(redis_cluster.url)
    before = submit_many([chw(seed=i) for i in range(900)], model=MODEL, chunk=20)
    wait_until(lambda: unacked_left(client) > 0, 60, "the worker holding unacked messages")
    # Producers keep submitting while a master is down: each call succeeds or says so.
    stop = threading.Event()
    during: list[Any] = []

    def keep_submitting() -> None:
        n = 0
        while not stop.is_set():
            try:
                during.append(submit_job.delay(chw(seed=10_000 + n), model=MODEL))
            except BrokerUnavailable as exc:
                during.append(exc)
            n += 1
            time.sleep(0.01)

    producer = threading.Thread(target=keep_submitting)
    producer.start()
    victim = redis_cluster.node_of(shard_books(MODEL, SHARDS)[1].tag)
    victim.restart(down_s=3.0)  # SIGKILL; its AOF (fsync always) keeps every write
    redis_cluster.wait_ok()
    time.sleep(1.0)
    stop.set()
    producer.join(60)
    accepted = [r for r in during if not isinstance(r, BrokerUnavailable)]
    refused = [r for r in during if isinstance(r, BrokerUnavailable)]
    assert len(accepted) + len(refused) == len(during)
    assert accepted, "the shards still up take requests while one master is down"
    assert refused, "a request sent to the shard that is down is refused, typed, not lost"
    values = gather(before + accepted, timeout=180, return_exceptions=True)
    assert outcome_counts(values) == Counter(ok=900 + len(accepted))
    all_acked(client)
    # The worker reconnected and drains new work on every shard.
    after = submit_many([chw(seed=i) for i in range(60)], model=MODEL, chunk=1)
    assert outcome_counts(gather(after, timeout=60, return_exceptions=True)) == Counter(ok=60)
