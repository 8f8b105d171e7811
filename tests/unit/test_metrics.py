"""The batch histogram exports exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from inferq.worker.metrics import BatchHistogram, Metrics

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
    m.latency.observe_many(("shapes",), [0.002, 0.02])
    m.requests.labels("shapes", "success").inc(2)
    text = generate_latest(m.registry).decode()
    assert "# TYPE inferq_request_latency_seconds histogram" in text
    assert 'inferq_request_latency_seconds_count{model="shapes"} 2.0' in text
    assert 'inferq_request_latency_seconds_bucket{le="0.0025",model="shapes"} 1.0' in text
    assert 'inferq_requests_total{model="shapes",outcome="success"} 2.0' in text
