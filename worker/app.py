"""Celery wiring, kept thin: the inferq service runs as a worker bootstep.

    celery -A inferq.worker.app worker --pool solo -Q inferq.admin --inferq-model shapes --inferq-device cpu

(``inferq worker`` runs exactly this under a small supervisor that restarts it after a device
failure.) The worker stays a Celery worker in every way users see: ``celery inspect ping``,
broadcast commands, heartbeats and task events work as usual; the model queues are drained by the
bulk fetcher instead of Celery's one-message-at-a-time consumer.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Task, bootsteps
from celery.worker.control import control_command, inspect_command
from click import Option

from inferq.shared import keys
from inferq.shared.celeryconf import make_celery
from inferq.shared.errors import InferqError
from inferq.shared.logs import configure_logging, get_logger
from inferq.shared.settings import Settings, get_settings
from inferq.worker import celerylogs  # connects Celery's logging signals at import
from inferq.worker.celerystate import ActiveRequestsHook
from inferq.worker.events import EventsHook
from inferq.worker.health import Health
from inferq.worker.hooks import Hook, Hooks, LogHook, MetricsHook
from inferq.worker.metrics import Metrics
from inferq.worker.signals import TaskSignalsHook
from inferq.worker.tuning import omp_env, tune_allocator

log = get_logger(__name__)

# Before the worker starts any thread, so that every thread allocates from the one heap, and
# before torch (imported when the inferq step starts) loads OpenMP, which reads its variables once.
tune_allocator(get_settings().malloc_mmap_threshold_mb)
if "torch" not in sys.modules:
    os.environ.update(omp_env(get_settings().omp_wait_policy))

configure_logging(get_settings())  # before anything logs: the first use fixes a logger's form
app = make_celery()
app.conf.worker_pool = "solo"  # one process per device; inferq's threads do the work
app.conf.worker_hijack_root_logger = False  # the root logger's one handler is inferq's


class InferTask(Task):
    """Registered so the name is known; its messages are consumed by the bulk fetcher."""

    name = keys.TASK_NAME

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise InferqError(
            "inferq.infer messages must be sent to the model's queue (inferq.<model>), "
            f"got one on {keys.ADMIN_QUEUE}"
        )


app.register_task(InferTask())


class InferqStep(bootsteps.StartStopStep):
    """Loads the models, checks the settings, and runs the inference service with the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(
        self,
        worker: Any,
        inferq_model: tuple[str, ...] = (),
        inferq_device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(worker, **kwargs)
        settings = get_settings()
        self.models = list(inferq_model) or settings.model_list
        self.device = inferq_device or settings.device
        self.service: Any = None

    def start(self, worker: Any) -> None:
        from inferq.worker.service import (
            InferenceService,  # torch is imported in the worker process only
        )

        settings = get_settings()
        configure_logging(settings)
        celerylogs.quiet_shutdown(worker)
        metrics = Metrics()
        health = Health(settings.liveness_s)  # /ready and /live answer 503 until it is told more
        if settings.metrics_port:
            metrics.serve(settings.metrics_port, health=health)
        hooks = build_hooks(settings, metrics, worker.hostname, bool(worker.task_events))
        self.service = InferenceService(
            settings,
            self.models,
            self.device,
            worker_name=worker.hostname,
            hooks=hooks,
            health=health,
        )
        worker.inferq = self.service
        self.service.start()
        metrics.up.set(1)

    def stop(self, worker: Any) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    shutdown = stop


def build_hooks(settings: Settings, metrics: Metrics, hostname: str, events: bool) -> Hooks:
    """The worker's hooks; task events only with ``-E`` (Celery's default is none), Celery's
    task signals only when ``INFERQ_TASK_SIGNALS`` asks."""
    hooks: list[Hook] = [
        MetricsHook(metrics),
        LogHook(),
        EventsHook(app, hostname, enabled=events),
        ActiveRequestsHook(hostname),
    ]
    if settings.task_signals:
        hooks.append(TaskSignalsHook(app.tasks[keys.TASK_NAME]))
    return Hooks(hooks)


app.steps["worker"].add(InferqStep)
app.user_options["worker"].add(
    Option(["--inferq-model"], multiple=True, help="Model to serve (repeatable).")
)
app.user_options["worker"].add(Option(["--inferq-device"], default=None, help="cpu or cuda:N."))


@inspect_command()
def inferq_stats(state: Any) -> dict[str, Any]:
    """``celery -A inferq.worker.app inspect inferq_stats``: per-model in-hand counts, batch cap, warm-up."""
    service = getattr(state.consumer.controller, "inferq", None)
    return service.stats() if service is not None else {}


@control_command(args=[("model", str)], signature="<model>")
def inferq_rollout(state: Any, model: str = "") -> dict[str, Any]:
    """Sent by ``inferq models rollout/promote/rollback``: re-read the model's serving policy now
    (the registry is the source of truth; the heartbeat re-reads it anyway)."""
    service = getattr(state.consumer.controller, "inferq", None)
    if service is None:
        return {"ok": "no inferq service in this worker"}
    service.versions.wake()
    return {"ok": f"following the registry's policy for {model or 'every model'}"}
