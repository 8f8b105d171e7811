"""Readiness through a real service's lifecycle against a real Redis, and the worker entry that
``inferq status`` reads: 503 while loading, 200 once loaded and published, 503 while draining."""

from __future__ import annotations

import threading
from pathlib import Path

import redis
import torch

from inferq.shared import keys
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings
from inferq.worker.fleet import fleet_status
from inferq.worker.handlers import ModelHandler, load_handler
from inferq.worker.health import Health
from inferq.worker.repository import ModelVersion
from inferq.worker.service import InferenceService
from inferq.worker.status_text import render
from inferq.worker.tools.localredis import LocalRedis
from tests.models import write_model
from tests.waiting import wait_until


def test_readiness_follows_load_publish_and_drain(
    tmp_path: Path, local_redis: LocalRedis, redis_client: redis.Redis
) -> None:
    write_model(tmp_path, "tiny")
    gate = threading.Event()

    def gated_loader(model: ModelVersion, device: torch.device) -> ModelHandler:
        gate.wait(30)  # the model "loads" until the test has seen the worker not ready
        return load_handler(model, device)

    settings = Settings(broker_url=local_redis.url, model_repository=tmp_path, heartbeat_s=1.0)
    health = Health(settings.liveness_s)
    service = InferenceService(
        settings, ["tiny"], "cpu", worker_name="w1", health=health, handler_loader=gated_loader
    )
    starting = threading.Thread(target=service.start)
    starting.start()
    try:
        loading = "loading and warming up: tiny"
        wait_until(lambda: health.readiness().reason == loading, 10, "the load to begin")
        assert not health.readiness().ok
        gate.set()
        starting.join(60)
        assert health.readiness().ok, health.readiness().reason
        assert health.liveness().ok, health.liveness().reason
        entry = keys.worker_key("w1")
        wait_until(lambda: redis_client.hget(entry, "ready") == b"1", 10, "the beat says ready")
        assert 0 < redis_client.ttl(entry) <= 3
        [model] = fleet_status(redis_client, Registry(redis_client), ["tiny"]).models
        [worker] = model.workers
        assert (worker.alive, worker.ready, worker.versions) == (True, True, {"tiny": 1})
        assert worker.device == "cpu"
        assert "w1  host " in render(
            fleet_status(redis_client, Registry(redis_client), ["tiny"]), 0
        )
    finally:
        gate.set()
        starting.join(60)
        service.stop()
    assert health.readiness().reason == "draining: warm shutdown in progress"
    assert redis_client.exists(keys.worker_key("w1")) == 0
