"""A model placed on its own Redis, served by a real worker: requests, results and bookkeeping
live there; the home Redis keeps the directory (placement, specs, heartbeats)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from inferq.producer import gather, submit_job, submit_many
from inferq.producer.client import reset_runtime
from inferq.shared import codec, keys
from inferq.shared.placement import make_placement, placement_key, write_placement
from inferq.shared.redisconn import make_client
from inferq.worker.tools.localredis import LocalRedis, self_signed_tls

pytestmark = pytest.mark.integration

SECRET = "hot-secret-pw"


def chw(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(3, 8, 8), dtype=np.uint8)


@pytest.fixture
def hot() -> Iterator[LocalRedis]:
    server = LocalRedis(password=SECRET).start()
    yield server
    server.stop()


def placed_stack(stack_factory, repo: Path, hot: LocalRedis, model: str):  # type: ignore[no-untyped-def]
    instances = f"hot={hot.url}"
    stack = stack_factory(repo, redis_instances=instances)
    stack.extra_env["INFERQ_REDIS_INSTANCES"] = instances
    write_placement(stack.client, make_placement(model, stack.settings, "hot"))
    return stack


def test_a_placed_model_is_served_from_its_own_redis(
    stack_factory, test_repo: Path, hot: LocalRedis
) -> None:
    stack = placed_stack(stack_factory, test_repo, hot, "tiny")
    assert SECRET.encode() not in stack.client.get(placement_key("tiny"))
    w = stack.worker("tiny")
    results = submit_many([chw(i) for i in range(60)], model="tiny")
    values = gather(results, timeout=60)
    assert [v["model"] for v in values] == ["tiny"] * 60
    hot_client = make_client(hot.url)
    result_keys = [keys.result_key(r.id) for r in results]
    assert hot_client.exists(*result_keys) == 60
    assert stack.client.exists(*result_keys) == 0  # nothing of the requests on home
    assert hot_client.hlen(keys.UNACKED) == 0
    assert stack.client.exists(keys.model_spec_key("tiny"))  # the directory stays home
    assert SECRET not in w.log_tail(100_000)


def test_get_finds_a_placed_result_from_any_thread_and_process(
    stack_factory, test_repo: Path, hot: LocalRedis
) -> None:
    stack = placed_stack(stack_factory, test_repo, hot, "tiny")
    stack.worker("tiny")
    r = submit_job.delay(chw(1), model="tiny")
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(submit_job.AsyncResult(r.id).get(30)))
    thread.start()
    thread.join(40)
    assert got and got[0]["model"] == "tiny"  # type: ignore[index]
    reset_runtime()  # another process: it knows the id and the model only
    assert submit_job.AsyncResult(r.id, model="tiny").get(timeout=30)["model"] == "tiny"


def test_a_foreign_celery_client_pointed_at_the_models_redis_is_served(
    stack_factory, test_repo: Path, hot: LocalRedis
) -> None:
    stack = placed_stack(stack_factory, test_repo, hot, "tiny")
    stack.worker("tiny")
    app = Celery(broker=hot.url, backend=hot.url)
    app.conf.update(task_serializer="msgpack", accept_content=["msgpack", "json"])
    tensor = codec.encode(np.full((3, 8, 8), 9, dtype=np.uint8))
    r = app.send_task(
        keys.TASK_NAME, args=[tensor], kwargs={"model": "tiny"}, queue=keys.queue_name("tiny")
    )
    assert r.get(timeout=30)["model"] == "tiny"


def test_a_worker_refuses_models_on_different_redis(
    stack_factory, test_repo: Path, hot: LocalRedis
) -> None:
    stack = placed_stack(stack_factory, test_repo, hot, "tiny")
    with pytest.raises(RuntimeError, match="share one placement"):
        stack.worker("tiny", "slow", supervised=False)


def test_a_model_placed_on_a_tls_redis_with_a_password(
    stack_factory, test_repo: Path, tmp_path: Path
) -> None:
    tls = LocalRedis(password=SECRET, tls_dir=self_signed_tls(tmp_path / "tls")).start()
    try:
        assert tls.url.startswith("rediss://")
        stack = placed_stack(stack_factory, test_repo, tls, "tiny")
        w = stack.worker("tiny")
        values = gather(submit_many([chw(i) for i in range(20)], model="tiny"), timeout=60)
        assert [v["model"] for v in values] == ["tiny"] * 20
        assert make_client(tls.url).hlen(keys.UNACKED) == 0
        assert SECRET not in w.log_tail(100_000)
    finally:
        tls.stop()
