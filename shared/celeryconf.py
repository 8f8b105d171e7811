"""The Celery configuration producers and workers share.

Inference task messages are msgpack (binary-safe, so tensors travel as raw bytes); control
messages, events and results are JSON; pickle is accepted nowhere.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from inferq.shared import keys
from inferq.shared.settings import Settings, get_settings

ACCEPT_CONTENT = ["msgpack", "json"]

# Celery's Redis result backend whose waits share one listener per process (Celery reads the
# class from the part of the URL before ``+``).
RESULT_BACKEND_CLASS = "inferq.producer.backend:ListenerBackend"


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """Send ``inferq.infer`` to its model's queue (``inferq.<model>``)."""
    if name == keys.TASK_NAME and isinstance(kwargs, dict) and kwargs.get("model"):
        return {"queue": keys.queue_name(str(kwargs["model"]))}
    return None


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "priority_steps": list(keys.PRIORITIES),
        "sep": keys.PRIORITY_SEP,
        "queue_order_strategy": "priority",
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": max(1, int(settings.restore_interval_s)),
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": f"{RESULT_BACKEND_CLASS}+{settings.result_backend}",
        # inferq.infer bodies are msgpack (the producer serializes them itself); everything else
        # Celery sends, control and event messages included, stays JSON so that Flower and plain
        # Celery clients with default settings can read it.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ACCEPT_CONTENT,
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_routes": (route_task,),
        "task_default_queue": keys.ADMIN_QUEUE,
        "task_default_priority": keys.DEFAULT_PRIORITY,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": False,
        "result_expires": settings.result_ttl_s,
        "result_extended": False,
        "worker_prefetch_multiplier": 1,
        # Celery's default: no task events unless the worker is started with -E / --events.
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "redis_backend_health_check_interval": 15,
        "redis_retry_on_timeout": True,
        "redis_socket_keepalive": True,
    }


def make_celery(settings: Settings | None = None, main: str = "inferq") -> Celery:
    """A Celery app for inferq; with no ``settings`` they are read lazily, on first use."""
    app = Celery(main)
    if settings is None:
        app.add_defaults(lambda: celery_config(get_settings()))
    else:
        app.conf.update(celery_config(settings))
    return app
