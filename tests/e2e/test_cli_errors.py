"""Every CLI mistake a user can make ends in one line naming what to do, and exit code 2 (1 for
models that fail their checks), never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import torch

from inferq.shared import keys
from inferq.shared.redisconn import make_client
from inferq.worker.tools.localredis import LocalRedis, free_port
from tests.e2e.test_cli import inferq

pytestmark = pytest.mark.e2e


def _closed_url() -> str:
    return f"redis://:sekret@127.0.0.1:{free_port()}/0"  # nothing listens there


def _refused(out: object, *needles: str, code: int = 2) -> str:
    err: str = out.stderr  # type: ignore[attr-defined]
    assert out.returncode == code, err  # type: ignore[attr-defined]
    assert "Traceback" not in err and "sekret" not in err + out.stdout  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in err, err
    return err


def test_version() -> None:
    out = inferq("--version")
    assert out.returncode == 0 and out.stdout.startswith("inferq, version ")


def test_submit_with_redis_down_names_the_redacted_url(tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(b"not even an image")
    url = _closed_url()
    out = inferq("submit", "--model", "shapes", str(image), env={"INFERQ_BROKER_URL": url})
    err = _refused(out, "error: BrokerUnavailable: Redis at redis://:***@127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


def test_submit_needs_files_or_an_explicit_synthetic_count() -> None:
    out = inferq("submit", "--model", "shapes")
    _refused(out, "pass image FILES to submit, or --synthetic N")
    out = inferq("submit", "--synthetic", "0")
    _refused(out, "Invalid value for '--synthetic'")


def test_submit_refuses_a_path_that_is_not_there() -> None:
    _refused(inferq("submit", "--model", "shapes", "no-such.png"), "'no-such.png' does not exist")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_worker_on_cuda_without_cuda_says_what_to_install() -> None:
    out = inferq("worker", "--model", "shapes", "--device", "cuda:0")
    _refused(out, "error: ConfigError: --device cuda:0 needs CUDA", "or pass --device cpu")


def test_worker_refuses_a_malformed_device() -> None:
    _refused(inferq("worker", "--model", "shapes", "--device", "gpu"), "must be cpu or cuda:N")


def test_worker_on_a_closed_redis_port_fails_before_loading_any_model(tmp_path: Path) -> None:
    """No model repository at all: the Redis check must come first, and in seconds."""
    env = {"INFERQ_BROKER_URL": _closed_url(), "INFERQ_MODEL_REPOSITORY": str(tmp_path / "none")}
    started = time.monotonic()
    out = inferq("worker", "--model", "shapes", "--device", "cpu", env=env, timeout=60)
    err = _refused(out, "error: BrokerUnavailable: Redis at redis://:***@127.0.0.1:")
    assert "must answer before a worker loads its models" in err
    assert time.monotonic() - started < 30


def test_models_list_exit_codes(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    _refused(
        inferq("models", "list", "--repo", str(missing)),
        f"model repository {missing} does not exist",
        "inferq models init-examples",
    )
    broken = tmp_path / "repo" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.toml").write_text("[input]\nshape = [3, 8, 8]\n")
    out = inferq("models", "list", "--repo", str(tmp_path / "repo"))
    _refused(out, "1 model(s)", code=1)
    assert "broken\tversions=[]\tERROR" in out.stdout


def test_init_examples_offers_the_example_names() -> None:
    out = inferq("models", "init-examples", "--only", "nosuch")
    _refused(out, "Invalid value for '--only'", "'shapes'", "'resnet18'", "'resnet50'")


def _envelope(queue: str, task_id: str) -> bytes:
    return orjson.dumps(
        {
            "body": "",
            "headers": {"id": task_id, "task": keys.TASK_NAME},
            "properties": {
                "delivery_tag": task_id,
                "priority": 0,
                "delivery_info": {"exchange": "", "routing_key": queue},
            },
        }
    )


def test_deadletter_list_requeue_purge() -> None:
    redis = LocalRedis().start()
    try:
        client = make_client(redis.url)
        envelope = _envelope("inferq.shapes", "t-1")
        client.lpush(keys.DEAD_LETTER, b"garbage", envelope)
        env = {"INFERQ_BROKER_URL": redis.url}
        listed = inferq("deadletter", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "envelope for 'inferq.shapes' task t-1" in listed.stdout
        assert "not a kombu envelope" in listed.stdout
        assert "2 dead letter(s) in inferq.deadletter" in listed.stdout
        requeued = inferq("deadletter", "requeue", env=env)
        assert "requeued 1; 1 left" in requeued.stdout, requeued.stderr
        assert client.lrange("inferq.shapes", 0, -1) == [envelope]
        _refused(inferq("deadletter", "purge", env=env), "nothing deleted: pass --yes")
        purged = inferq("deadletter", "purge", "--yes", env=env)
        assert "purged 1 dead letter(s)" in purged.stdout
        assert client.llen(keys.DEAD_LETTER) == 0
    finally:
        redis.stop()


def test_deadletter_with_redis_down() -> None:
    out = inferq("deadletter", "list", env={"INFERQ_BROKER_URL": _closed_url()})
    _refused(out, "error: BrokerUnavailable: Redis at redis://:***@127.0.0.1:")
