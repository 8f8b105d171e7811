"""``submit_job`` / ``submit_many``: the producer's way in.

``submit_job`` is a real Celery task object (name ``inferq.infer``): ``.delay`` and
``.apply_async`` take Celery's usual options (``priority``, ``expires``, ``countdown``, ``eta``,
``task_id``) and return a standard ``AsyncResult``. What it does differently from a plain Celery
task is on the way out: the image is preprocessed to the model's spec here, and the message is
pushed by a Redis script that refuses it at once (``QueueFull``) when the model's queue is at its
limit, in the same round trip as the push. ``submit_many`` pushes many messages per round trip; ``gather`` (in
``producer/gather.py``) collects many results per round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from celery import Celery, Task
from celery.result import AsyncResult

from inferq.producer.backend import InferqResult
from inferq.producer.calls import default_model, refuse_workflow, split_call
from inferq.producer.envelope import task_envelope
from inferq.producer.listener import close_listeners
from inferq.producer.placed import Lane, Lanes
from inferq.producer.preprocess import ImageLike, fitted_tensor, to_tensor
from inferq.producer.pusher import Prepared, Pusher
from inferq.producer.spec_cache import SpecCache
from inferq.shared import codec, keys
from inferq.shared.celeryconf import make_celery
from inferq.shared.errors import InferqError, QueueFull
from inferq.shared.ids import uuid4_text
from inferq.shared.inputs import encode_request
from inferq.shared.redisconn import make_client
from inferq.shared.registry import Registry
from inferq.shared.settings import Settings, get_settings, redact_url
from inferq.shared.spec import InputSpec
from inferq.shared.wire import encode_image


class Runtime:
    """Per-process state, built once: settings, the Redis client, the spec cache, the Celery app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = make_client(settings.broker_url)
        self.results = (
            self.client
            if settings.result_backend == settings.broker_url
            else make_client(settings.result_backend)
        )
        self.specs = SpecCache(self.client, settings.spec_cache_ttl_s)
        # A Celery app per runtime, so results follow the settings in force (tests, CLI flags).
        self.app = make_celery(settings)
        self.headers: dict[tuple[tuple[int, ...], str], bytes] = {}
        self.pusher = Pusher(self.client, redact_url(settings.broker_url))
        # Each model's queues and results: home, or where its placement says (producer/placed.py).
        self.lanes = Lanes(self)

    def tensor_header(self, shape: tuple[int, ...], dtype: str) -> bytes:
        key = (shape, dtype)
        if key not in self.headers:
            self.headers[key] = codec.header_for(np.dtype(dtype), shape)
        return self.headers[key]


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def reset_runtime() -> None:
    """Forget connections and caches (after settings change, or in a forked child)."""
    global _runtime
    with _runtime_lock:
        _runtime = None
    close_listeners()


class SubmitJob(Task):
    """``inferq.infer``: runs in inferq workers; this side only prepares and publishes."""

    name = keys.TASK_NAME
    typing = False
    ignore_result = False

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise InferqError("inferq.infer runs in an inferq worker, not in the producer process")

    def AsyncResult(
        self, task_id: str, model: str | None = None, **kwargs: Any
    ) -> Any:  # Celery's name
        """The result of ``task_id``, on the Redis its model's placement puts results on
        (known for ids this process submitted; pass ``model`` for others)."""
        rt = runtime()
        backend = rt.lanes.lane_of(task_id, model).backend or rt.app.backend
        return InferqResult(task_id, backend=backend, task_name=self.name, app=rt.app, **kwargs)

    async def async_delay(self, *args: Any, **kwargs: Any) -> InferqResult:
        """``await submit_job.async_delay(img, model=...)``: ``delay`` on the process's submit
        thread (``inferq.aio``), so that preprocessing and the push's round trip never block the
        event loop."""
        from inferq.producer.aio import SUBMITTER  # the asyncio client builds on this module

        return await SUBMITTER.submit(args, kwargs, {})

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        prepared, lane = prepare_call(args, kwargs, options)
        return _pushed([prepared], lane)[0]


def prepare_call(
    args: Sequence[Any] | None, kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> tuple[Prepared, Lane]:
    """``apply_async``'s message, ready to push, and the lane it goes on (what raises here,
    ``InvalidInput`` and the like, is the caller's error; nothing is pushed)."""
    refuse_workflow(options)
    img, call = _split_call(args, kwargs)
    prepared = prepare(img, call, options)
    return prepared, runtime().lanes.lane(str(call["model"]))


def _split_call(
    args: Sequence[Any] | None, kwargs: dict[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
    return split_call(args, kwargs, _default_model)


def _default_model() -> str:
    rt = runtime()
    return default_model(rt.settings.default_model, Registry(rt.client).models)


def prepare(img: ImageLike, call: dict[str, Any], options: dict[str, Any]) -> Prepared:
    """Preprocess ``img`` for ``call['model']`` and build its Celery message (protocol 2)."""
    rt = runtime()
    model = str(call["model"])
    route = rt.specs.route(model, call.get("version"))
    spec = route.spec
    started = time.perf_counter()
    geometry: dict[str, list[float]] | None = None
    payload: bytes | dict[str, bytes]
    if spec.inputs:  # named tensors: {name: codec bytes} (shared/inputs.py)
        payload = encode_request(img, spec.inputs, model)
    else:
        payload, geometry = _image_payload(img, spec, rt)
    preprocess_ms = (time.perf_counter() - started) * 1000.0
    kwargs: dict[str, Any] = {
        "model": model,
        "version": route.version,
        "preprocess_ms": preprocess_ms,
        "submitted_at": time.time(),
    }
    if geometry is not None:
        kwargs["geometry"] = geometry
    task_id = str(options.get("task_id") or uuid4_text())
    priority = _priority(options.get("priority"))
    expires = options.get("expires")
    if expires is None and spec.default_deadline_ms > 0:
        expires = spec.default_deadline_ms / 1000.0
    envelope = task_envelope(
        task_id, payload, kwargs, spec, priority, expires, options, route.queue
    )
    return Prepared(task_id, route.queue, priority, spec.queue_limit, envelope, route.counted)


def _image_payload(
    img: ImageLike, spec: InputSpec, rt: Runtime
) -> tuple[bytes, dict[str, list[float]] | None]:
    """An image's payload, and the resize geometry when its model maps results back to it."""
    geometry = None
    if spec.geometry:
        tensor, fitted = fitted_tensor(img, spec, rt.settings.max_image_pixels)
        geometry = fitted.to_wire()
    else:
        tensor = to_tensor(img, spec, rt.settings.max_image_pixels)
    if spec.wire == "raw":
        return rt.tensor_header(spec.shape, spec.dtype) + tensor.tobytes(), geometry
    # the model takes encoded images: its worker decodes them (worker/decode.py)
    return encode_image(tensor, spec.wire, spec.jpeg_quality), geometry


def _priority(value: Any) -> int:
    if value is None:
        return keys.DEFAULT_PRIORITY
    if not isinstance(value, int) or value not in keys.PRIORITIES:
        raise InferqError(
            f"priority must be an int {keys.HIGHEST_PRIORITY}..{keys.LOWEST_PRIORITY} "
            f"({keys.HIGHEST_PRIORITY} is highest on Redis), got {value!r}"
        )
    return value


def _pushed(batch: list[Prepared], lane: Lane) -> list[Any]:
    """Push ``batch`` on ``lane``; one AsyncResult per message, bound to the lane's backend."""
    runtime().lanes.remember([p.task_id for p in batch], lane)  # before: QueueFull's accepted
    epoch = lane.pusher.push(batch)
    return [_result(p.task_id, epoch, lane) for p in batch]


def pushed_each(calls: Sequence[Prepared], lane: Lane) -> list[Any]:
    """Push each of ``calls`` (one message each) on ``lane`` as its own ``apply_async`` would,
    in one round trip where the lane's pusher can: per call, its AsyncResult or its error."""
    runtime().lanes.remember([p.task_id for p in calls], lane)
    outcomes = lane.pusher.push_each([[p] for p in calls])
    return [
        o if isinstance(o, BaseException) else _result(p.task_id, o, lane)
        for p, o in zip(calls, outcomes, strict=True)
    ]


def _result(task_id: str, epoch: str, lane: Lane) -> Any:
    app = runtime().app
    backend = lane.backend or app.backend
    result = InferqResult(task_id, backend=backend, task_name=keys.TASK_NAME, app=app)
    result.inferq_epoch = epoch  # lets gather tell a request lost with a Redis restart
    return result


def submit_many(
    imgs: Iterable[ImageLike], model: str, *, chunk: int = 256, **options: Any
) -> list[AsyncResult]:
    """One AsyncResult per image; messages are pushed ``chunk`` at a time, one round trip each."""
    if "task_id" in options:
        raise InferqError("submit_many assigns task ids itself; pass no task_id")
    refuse_workflow(options)
    results: list[AsyncResult] = []
    batch: list[Prepared] = []
    lane = runtime().lanes.lane(model)
    for img in imgs:
        batch.append(prepare(img, {"model": model}, options))
        if len(batch) >= chunk:
            results.extend(_push_chunk(batch, results, lane))
            batch = []
    if batch:
        results.extend(_push_chunk(batch, results, lane))
    return results


def _push_chunk(batch: list[Prepared], done: list[AsyncResult], lane: Lane) -> list[AsyncResult]:
    try:
        return _pushed(batch, lane)
    except QueueFull as exc:
        # The call's earlier chunks went in too: the caller learns every id that will complete.
        accepted = set(exc.accepted)
        exc.accepted = (*(r.id for r in done), *(p.task_id for p in batch if p.task_id in accepted))
        raise


def make_producer_app() -> Celery:
    app = make_celery()
    app.register_task(SubmitJob())
    return app


app = make_producer_app()
submit_job: SubmitJob = app.tasks[keys.TASK_NAME]
