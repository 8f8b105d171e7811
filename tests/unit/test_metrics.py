"""The batch histogram exports exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from inferq.shared.errors import InvalidInput
from inferq.worker.hooks import MetricsHook
from inferq.worker.intake import InferenceRequest
from inferq.worker.metrics import BatchHistogram, DeviceMemory, Metrics
from inferq.worker.runner import Outcome

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_batch_histogram_matches_prometheus_histogram() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(0.05, 500), BUCKETS, [0.0, 5.0]])  # edges are "le"
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "doc", ["model"], BUCKETS, ours)
    ref = Histogram("lat_seconds", "doc", ["model"], buckets=BUCKETS, registry=theirs)
    for chunk in np.array_split(values, 7):
        batch.observe_many(("m",), chunk)
        for v in chunk:
            ref.labels("m").observe(float(v))
    batch.observe(("other",), 0.5)
    ref.labels("other").observe(0.5)
    batch.observe_many(("m",), [])
    got, want = _samples(ours), _samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert np.isclose(got[key], value), key
    assert b"# TYPE lat_seconds histogram" in generate_latest(ours)


def test_worker_metrics_are_exported_with_their_types() -> None:
    m = Metrics()
    m.latency.observe_many(("shapes", "1"), [0.002, 0.02])
    m.requests.labels("shapes", "1", "success").inc(2)
    text = generate_latest(m.registry).decode()
    assert "# TYPE inferq_request_latency_seconds histogram" in text
    assert 'inferq_request_latency_seconds_count{model="shapes",version="1"} 2.0' in text
    assert (
        'inferq_request_latency_seconds_bucket{le="0.0025",model="shapes",version="1"} 1.0' in text
    )
    assert 'inferq_requests_total{model="shapes",outcome="success",version="1"} 2.0' in text


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_backlog_is_queue_depth_plus_messages_in_hand() -> None:
    m = Metrics()
    m.set_queue_depth("shapes", 40)
    assert _value(m, "inferq_backlog", model="shapes") == 40
    m.set_in_hand("shapes", 24)
    m.set_queue_depth("shapes", 10)
    assert _value(m, "inferq_backlog", model="shapes") == 34
    assert _value(m, "inferq_in_hand", model="shapes") == 24
    assert _value(m, "inferq_queue_depth", model="shapes") == 10


def test_model_info_names_each_version_served_until_it_is_released() -> None:
    m = Metrics()
    m.set_model_info("shapes", "1", "torchscript", "fp32")
    m.set_model_info("other", "3", "onnx", "fp16")
    m.set_model_info("shapes", "2", "torchscript", "fp16")  # a canary beside version 1

    def info() -> list[str]:
        text = generate_latest(m.registry).decode()
        return sorted(line for line in text.splitlines() if line.startswith("inferq_model_info{"))

    assert info() == [
        'inferq_model_info{model="other",platform="onnx",precision="fp16",version="3"} 1.0',
        'inferq_model_info{model="shapes",platform="torchscript",precision="fp16",version="2"} 1.0',
        'inferq_model_info{model="shapes",platform="torchscript",precision="fp32",version="1"} 1.0',
    ]
    m.remove_model_info("shapes", "1")  # promoted: version 1 released
    assert info() == [
        'inferq_model_info{model="other",platform="onnx",precision="fp16",version="3"} 1.0',
        'inferq_model_info{model="shapes",platform="torchscript",precision="fp16",version="2"} 1.0',
    ]


def test_device_memory_is_exported_by_device() -> None:
    m = Metrics()
    m.set_device_memory("cuda:1", DeviceMemory(total=80 << 30, reserved=6 << 30, allocated=5 << 30))
    assert _value(m, "inferq_device_memory_total_bytes", device="cuda:1") == 80 << 30
    assert _value(m, "inferq_device_memory_reserved_bytes", device="cuda:1") == 6 << 30
    assert _value(m, "inferq_device_memory_allocated_bytes", device="cuda:1") == 5 << 30


def test_device_memory_is_not_read_from_a_device_this_process_has_not_touched() -> None:
    # Reading would create a CUDA context; a CPU worker, or one before its device starts, has none.
    torch = pytest.importorskip("torch")
    assert DeviceMemory.read("cpu") is None
    if torch.cuda.is_initialized():
        pytest.skip("another test in this process initialised CUDA")
    assert DeviceMemory.read("cuda:0") is None
    assert not torch.cuda.is_initialized()


def test_exported_names_counters_as_promql_does() -> None:
    exported = Metrics().exported()
    assert exported["inferq_requests_total"] == "counter"
    assert exported["inferq_redeliveries_total"] == "counter"
    assert exported["inferq_inference_seconds"] == "histogram"
    assert exported["inferq_backlog"] == "gauge"
    assert "inferq_requests" not in exported


def _outcome(task_id: str, redelivered: bool) -> Outcome:
    request = InferenceRequest(
        task_id, "tag-" + task_id, "shapes", np.zeros(1, np.uint8), 1.0, 0.0, 2.0, 3.0,
        None, None, 5, redelivered,
    )  # fmt: skip
    return Outcome(request, error=InvalidInput("expected a tensor, got nothing"))


def test_metrics_hook_counts_redelivered_requests_and_outcomes() -> None:
    m = Metrics()
    hook = MetricsHook(m)
    outcomes = [_outcome("a", True), _outcome("b", False), _outcome("c", True)]
    hook.after_store("shapes", 2, outcomes, [], 0.01)
    assert _value(m, "inferq_redeliveries_total", model="shapes", version="2") == 2
    labels = {"model": "shapes", "version": "2", "outcome": "invalid_input"}
    assert _value(m, "inferq_requests_total", **labels) == 3
    hook.on_queue_depth("shapes", 7)
    assert _value(m, "inferq_backlog", model="shapes") == 7
