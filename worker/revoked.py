"""Celery's revokes, honoured by the bulk path: a revoked request is never computed.

``AsyncResult.revoke()`` broadcasts a ``revoke`` command; each worker's Celery consumer adds the
id to ``celery.worker.state.revoked`` (and a worker that starts later learns it from its peers).
Celery's own consumer checks that set when a message arrives; the fetcher does so per fetch and
the service again per batch before it is staged, and a revoked request ends as Celery ends it:
state REVOKED, ``TaskRevokedError`` on ``.get()``.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from celery.worker import state as worker_state

from inferq.shared.errors import Revoked
from inferq.worker.intake import InferenceRequest, Rejection


def split_revoked(
    requests: Sequence[InferenceRequest], revoked: Container[str] | None = None
) -> tuple[list[InferenceRequest], list[Rejection]]:
    """The requests still wanted, and a rejection for each revoked one. ``revoked`` defaults to
    the worker's set, read when called (Celery replaces nothing, but tests pass their own)."""
    ids = worker_state.revoked if revoked is None else revoked
    if not ids or not requests:  # nearly always: one test per batch, none per request
        return list(requests), []
    keep: list[InferenceRequest] = []
    gone: list[Rejection] = []
    for r in requests:
        if r.task_id in ids:
            gone.append(Rejection(r.tag, r.task_id, Revoked(f"request {r.task_id} was revoked")))
        else:
            keep.append(r)
    return keep, gone
