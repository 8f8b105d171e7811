"""The metrics the hooks feed: model info on load, in hand and backlog, dead letters, restores."""

from __future__ import annotations

from inferq.worker.hooks import Hooks, MetricsHook
from inferq.worker.metrics import Metrics


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_model_info_names_each_loaded_version_until_it_is_released() -> None:
    m = Metrics()
    hooks = Hooks([MetricsHook(m)])
    hooks.on_model_loaded("shapes", 1, "torchscript", "fp32")
    info = {"model": "shapes", "platform": "torchscript", "precision": "fp32"}
    assert _value(m, "inferq_model_info", version="1", **info) == 1
    hooks.on_model_loaded("shapes", 2, "torchscript", "fp32")  # loaded beside 1 (a rollout)
    assert _value(m, "inferq_model_info", version="2", **info) == 1
    assert _value(m, "inferq_model_info", version="1", **info) == 1
    hooks.on_model_released("shapes", 1)  # switched and drained: 1 is released
    assert _value(m, "inferq_model_info", version="1", **info) is None
    assert _value(m, "inferq_model_info", version="2", **info) == 1
    # The version's counters exist from 0 on, so increase() sees their first event.
    assert _value(m, "inferq_dead_letters_total", model="shapes") == 0
    assert _value(m, "inferq_redeliveries_total", model="shapes", version="2") == 0


def test_backlog_counts_the_queue_and_the_messages_in_hand() -> None:
    m = Metrics()
    hooks = Hooks([MetricsHook(m)])
    hooks.on_queue_depth("shapes", 40)
    hooks.on_in_hand("shapes", 24)
    assert _value(m, "inferq_in_hand", model="shapes") == 24
    assert _value(m, "inferq_backlog", model="shapes") == 64
    hooks.on_in_hand("shapes", 0)
    assert _value(m, "inferq_backlog", model="shapes") == 40


def test_dead_letters_and_sweep_restores_are_counted() -> None:
    m = Metrics()
    hooks = Hooks([MetricsHook(m)])
    hooks.on_dead_letters("shapes", 3)
    hooks.on_dead_letters("shapes", 2)
    hooks.on_redelivered(7)
    assert _value(m, "inferq_dead_letters_total", model="shapes") == 5
    assert _value(m, "inferq_restored_total") == 7
