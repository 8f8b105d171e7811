"""The result writer driven in-process against a private Redis: a batch's results stored and its
messages acknowledged in one script call, and writes that wait while Redis refuses them or is
down, then land once it takes them."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import orjson
import pytest
import redis

from inferq.shared import keys
from inferq.shared.errors import ModelError
from inferq.shared.redisconn import make_client
from inferq.worker.broker import Broker, Write
from inferq.worker.broker_scripts import STORE_AND_ACK
from inferq.worker.inhand import InHand
from inferq.worker.intake import InferenceRequest, decode_message
from inferq.worker.runner import Outcome
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.writer import ResultWriter, WriteJob
from tests.integration.inproc import QUEUE, SPEC, Recorder, envelope, push, unacked_ids, wait_until

pytestmark = pytest.mark.integration


class CountingBroker(Broker):
    """Counts the writer's attempts to store, refused or not."""

    attempts = 0

    def store_and_ack(self, writes: Sequence[Write]) -> None:
        self.attempts += 1
        super().store_and_ack(writes)


def fetched(broker: Broker, n: int) -> list[InferenceRequest]:
    """``n`` requests pushed, fetched (recorded as unacked) and decoded, as the fetcher does."""
    push(broker.client, *(envelope(f"t{i}", fill=i) for i in range(n)))
    got = [decode_message(f.tag, f.raw, SPEC, max_bytes=1 << 20) for f in broker.fetch(QUEUE, n)]
    assert all(isinstance(r, InferenceRequest) for r in got)
    return got  # type: ignore[return-value]


def job(requests: Sequence[InferenceRequest], in_hand: InHand) -> WriteJob:
    """Every request succeeds with its fill value, except ``t1``, which fails."""
    outcomes = [
        Outcome(r, error=ModelError("model raised on this input"))
        if r.task_id == "t1"
        else Outcome(r, value={"model": SPEC.model, "outputs": int(r.array[0, 0, 0])})
        for r in requests
    ]
    in_hand.add(len(outcomes))
    return WriteJob(SPEC.model, SPEC.version, in_hand, outcomes, ())


def meta(client: redis.Redis, task_id: str) -> dict[str, object] | None:
    raw = client.get(keys.result_key(task_id))
    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]


def commands(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


@pytest.fixture
def broker(redis_client: redis.Redis) -> CountingBroker:
    return CountingBroker(redis_client, redis_client, 60)


@pytest.fixture
def running(broker: CountingBroker) -> Iterator[tuple[ResultWriter, Recorder]]:
    """A writer on its own thread, as in the worker; closed and joined afterwards."""
    hooks = Recorder()
    writer = ResultWriter(broker, hooks)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    yield writer, hooks
    writer.close()
    thread.join(30)
    assert not thread.is_alive()


def test_a_batch_is_stored_and_acked_in_one_script_call(broker: CountingBroker) -> None:
    requests = fetched(broker, 3)
    in_hand = InHand(3)
    hooks = Recorder()
    writer = ResultWriter(broker, hooks)
    broker.client.script_load(STORE_AND_ACK.source)
    broker.client.config_resetstat()
    writer.store([job(requests, in_hand)])
    calls = commands(broker.client)
    assert (calls["evalsha"], calls["set"], calls["publish"], calls["hdel"]) == (1, 3, 3, 1)
    statuses = {t: meta(broker.client, t)["status"] for t in ("t0", "t1", "t2")}  # type: ignore[index]
    assert statuses == {"t0": "SUCCESS", "t1": "FAILURE", "t2": "SUCCESS"}
    assert meta(broker.client, "t2")["result"]["outputs"] == 2  # type: ignore[index]
    assert meta(broker.client, "t1")["result"]["exc_type"] == "ModelError"  # type: ignore[index]
    assert broker.client.hlen(keys.UNACKED) == 0 and broker.client.zcard(keys.UNACKED_INDEX) == 0
    assert in_hand.count == 0
    assert hooks.stores == [("tiny", 3, 0)]


def test_batches_waiting_together_go_in_one_call(broker: CountingBroker) -> None:
    requests = fetched(broker, 4)
    in_hand = InHand(4)
    hooks = Recorder()
    writer = ResultWriter(broker, hooks)
    writer.put(job(requests[:2], in_hand))
    writer.put(job(requests[2:], in_hand))
    writer.close()
    writer.run()  # returns once everything put before close is written
    assert broker.attempts == 1
    assert hooks.stores == [("tiny", 2, 0), ("tiny", 2, 0)]
    assert [meta(broker.client, f"t{i}") is not None for i in range(4)] == [True] * 4
    assert broker.client.hlen(keys.UNACKED) == 0 and in_hand.count == 0


def test_writes_wait_while_redis_refuses_them(
    broker: CountingBroker, running: tuple[ResultWriter, Recorder]
) -> None:
    writer, hooks = running
    requests = fetched(broker, 3)
    in_hand = InHand(3)
    broker.client.config_set("maxmemory-policy", "noeviction")
    broker.client.config_set("maxmemory", 1)  # every write refused: out of memory
    writer.put(job(requests, in_hand))
    wait_until(lambda: broker.attempts >= 3, "the writer tried again after refusals")
    assert meta(broker.client, "t0") is None and hooks.stores == []
    assert unacked_ids(broker.client) == ["t0", "t1", "t2"]  # nothing acked without its result
    assert in_hand.count == 3
    broker.client.config_set("maxmemory", 0)
    wait_until(lambda: hooks.stores == [("tiny", 3, 0)], "the results are stored")
    assert [meta(broker.client, f"t{i}")["status"] for i in range(3)] == [  # type: ignore[index]
        "SUCCESS",
        "FAILURE",
        "SUCCESS",
    ]
    assert broker.client.hlen(keys.UNACKED) == 0 and in_hand.count == 0


def test_writes_wait_for_a_stopped_redis_to_come_back(local_redis: LocalRedis) -> None:
    client = make_client(local_redis.url, retries=0)  # each attempt fails at once while down
    broker = CountingBroker(client, client, 60)
    requests = fetched(broker, 2)
    in_hand = InHand(2)
    hooks = Recorder()
    writer = ResultWriter(broker, hooks)
    thread = threading.Thread(target=writer.run, daemon=True)
    local_redis.kill()
    thread.start()
    writer.put(job(requests, in_hand))
    wait_until(lambda: broker.attempts >= 3, "the writer tried again while Redis was down")
    assert hooks.stores == [] and in_hand.count == 2
    local_redis.start()  # same port, nothing kept: the acks find nothing left to remove
    wait_until(lambda: hooks.stores == [("tiny", 2, 0)], "the results are stored")
    writer.close()
    thread.join(30)
    assert [meta(client, f"t{i}")["status"] for i in range(2)] == ["SUCCESS", "FAILURE"]  # type: ignore[index]
    assert in_hand.count == 0
