"""Task events are opt-in, as in Celery: `inferq worker -E` / `--events` turns them on."""

from __future__ import annotations

from inferq.shared.celeryconf import celery_config
from inferq.shared.settings import Settings
from inferq.worker.cli import main


def test_the_worker_sends_no_task_events_unless_asked() -> None:
    assert celery_config(Settings())["worker_send_task_events"] is False
    option = next(p for p in main.commands["worker"].params if p.name == "events")
    assert option.default is False
    assert {"-E", "--events"} <= set(option.opts)
