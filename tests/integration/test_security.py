"""Passwords and TLS work end to end, and secrets never reach a log."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inferq.producer import submit_job
from inferq.shared.errors import InvalidInput
from inferq.worker.tools.localredis import LocalRedis, self_signed_tls
from tests.conftest import Stack

pytestmark = pytest.mark.integration

SECRET = "s3cret-Pa55word"


def _serve_and_check(stack: Stack) -> None:
    w = stack.worker("tiny")
    result = submit_job.delay(np.zeros((3, 8, 8), np.uint8), model="tiny").get(timeout=30)
    assert result["model"] == "tiny"
    with pytest.raises(InvalidInput):
        submit_job.delay(b"not an image", model="tiny")
    w.terminate()
    log = w.log_tail(10_000)
    assert "worker serving" in log
    assert SECRET not in log, "the Redis password reached the worker's log"


def _restart_with(stack: Stack, redis: LocalRedis) -> None:
    """Swap the stack's Redis for ``redis`` (already started) and point everything at it."""
    from inferq.producer.client import reset_runtime
    from inferq.shared.redisconn import make_client
    from inferq.shared.settings import set_settings

    stack.redis.stop()
    stack.redis = redis
    stack.settings = stack.settings.replace(broker_url=redis.url, result_backend=redis.url)
    set_settings(stack.settings)
    reset_runtime()
    stack.client = make_client(redis.url)


def test_password_protected_redis(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    _restart_with(stack, LocalRedis(password=SECRET).start())
    assert SECRET in stack.redis.url
    assert SECRET not in repr(stack.settings)
    _serve_and_check(stack)


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is needed to make a certificate"
)
def test_tls_redis(stack_factory, test_repo: Path, tmp_path: Path) -> None:
    stack = stack_factory(test_repo)
    tls = LocalRedis(password=SECRET, tls_dir=self_signed_tls(tmp_path / "tls"))
    _restart_with(stack, tls.start())
    assert stack.redis.url.startswith("rediss://")
    _serve_and_check(stack)
