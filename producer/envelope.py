"""Celery protocol-2 task messages in kombu's Redis envelope, built without per-call overhead.

Celery's ``create_task_message`` spends most of its time in ``saferepr`` of the arguments; here
the representation of a tensor is known, the static parts are built once, and the envelope is
serialized with orjson. The result is byte-for-byte the structure Celery itself publishes, so any
Celery worker or tool reads it.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import orjson
import pybase64

from inferq.shared import keys
from inferq.shared.errors import InferqError
from inferq.shared.ids import uuid4_text
from inferq.shared.spec import InputSpec
from inferq.shared.trace import producer_context

ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"  # what Celery's anon_nodename() gives
_ARG_KIND = {"raw": "tensor", "jpeg": "jpeg", "png": "png"}
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def iso_after(value: Any, now: datetime, what: str) -> str | None:
    """Celery's eta/expires forms (seconds from now, datetime, ISO string) as an ISO string."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (now + timedelta(seconds=float(value))).isoformat()
    raise InferqError(f"{what} must be seconds, a datetime or an ISO 8601 string, got {value!r}")


def _argsrepr(spec: InputSpec) -> str:
    if spec.inputs:
        return f"({{{', '.join(f'{i.name!r}: <{i.describe()}>' for i in spec.inputs if i.sent)}}},)"
    return f"(<{_ARG_KIND[spec.wire]} {spec.dtype}{list(spec.shape)}>,)"


def task_envelope(
    task_id: str,
    payload: bytes | dict[str, bytes],
    kwargs: dict[str, Any],
    spec: InputSpec,
    priority: int,
    expires: Any,
    options: dict[str, Any],
    queue: str | None = None,
) -> bytes:
    """The envelope of one request; ``queue`` (default: the model's unversioned queue) is its
    routing key, where a redelivery puts it back, so a version's message returns to its version."""
    now = datetime.now(UTC)
    eta = options.get("eta")
    if eta is None and options.get("countdown") is not None:
        eta = options["countdown"]
    headers: dict[str, Any] = {
        "lang": "py",
        "task": keys.TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": iso_after(eta, now, "eta/countdown"),
        "expires": iso_after(expires, now, "expires"),
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": _argsrepr(spec),
        "kwargsrepr": f"{{'model': {spec.model!r}}}",
        "origin": ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    trace = producer_context(options.get("headers"))
    if trace is not None:
        headers.update(trace.headers())
    body = msgpack.packb([[payload], kwargs, _EMBED], use_bin_type=True)
    envelope = {
        "body": pybase64.b64encode_as_string(body),
        "content-encoding": "binary",
        "content-type": "application/x-msgpack",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue or keys.queue_name(spec.model)},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": uuid4_text(),
        },
    }
    return orjson.dumps(envelope)
