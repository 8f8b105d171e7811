"""Readiness and liveness: the Health object with a fake clock, and the endpoint that serves it."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from inferq.worker.health import Health, Verdict, start_endpoint


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_only_once_every_model_is_loaded_and_published() -> None:
    health = Health(60.0, FakeClock())
    assert health.readiness().ok is False  # nothing expected yet: still starting
    health.expect(["a", "b"])
    health.loaded("a")
    verdict = health.readiness()
    assert (verdict.ok, verdict.reason) == (False, "loading and warming up: b")
    health.loaded("b")
    assert health.readiness() == Verdict(False, "loaded; publishing the models' specs")
    health.published()
    assert health.readiness().ok is True


def test_draining_is_not_ready() -> None:
    health = Health(60.0, FakeClock())
    health.expect(["a"])
    health.loaded("a")
    health.published()
    health.draining()
    verdict = health.readiness()
    assert (verdict.ok, verdict.reason) == (False, "draining: warm shutdown in progress")


def test_a_loop_without_progress_past_the_bound_is_named() -> None:
    clock = FakeClock()
    health = Health(60.0, clock)
    health.tick("inferq-fetch-a")
    health.tick("inferq-housekeeping")
    clock.now += 59
    health.tick("inferq-housekeeping")
    assert health.liveness().ok is True
    clock.now += 2
    verdict = health.liveness()
    assert verdict.ok is False
    assert verdict.reason == (
        "no progress for more than 60 s (INFERQ_LIVENESS_S) in: inferq-fetch-a (61 s)"
    )


def test_an_idle_loop_is_alive_however_long_it_waits_and_an_ended_one_is_forgotten() -> None:
    clock = FakeClock()
    health = Health(10.0, clock)
    health.idle("inferq-run-a")
    health.tick("inferq-prepare-a")
    clock.now += 3600
    assert health.liveness() == Verdict(
        False, "no progress for more than 10 s (INFERQ_LIVENESS_S) in: inferq-prepare-a (3600 s)"
    )
    health.forget("inferq-prepare-a")
    assert health.liveness().ok is True
    health.tick("inferq-run-a")  # a batch started and is still computing past the bound
    clock.now += 11
    assert health.liveness().ok is False


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoint_serves_probes_beside_metrics() -> None:
    registry = CollectorRegistry()
    Counter("probe_test", "a counter", registry=registry).inc()
    clock = FakeClock()
    health = Health(5.0, clock)
    server = start_endpoint(0, registry, health, addr="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert _get(f"{base}/ready") == (503, "loading and warming up: models\n")
        health.expect(["a"])
        health.loaded("a")
        health.published()
        assert _get(f"{base}/ready") == (200, "serving a\n")
        health.tick("inferq-fetch-a")
        clock.now += 6
        status, body = _get(f"{base}/live")
        assert (status, "inferq-fetch-a (6 s)" in body) == (503, True)
        status, body = _get(f"{base}/metrics")
        assert status == 200 and "probe_test_total 1.0" in body
    finally:
        server.shutdown()
        server.server_close()
