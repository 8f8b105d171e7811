"""Hooks on the request path: metrics, logs and events live here, not in the loops.

Each hook is a class with no-op methods; the service calls every hook at each point, and a hook
that raises is logged and skipped, never fatal to the request path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from inferq.shared.logs import get_logger
from inferq.worker.metrics import DeviceMemory

if TYPE_CHECKING:
    from inferq.worker.intake import InferenceRequest, Rejection
    from inferq.worker.metrics import Metrics
    from inferq.worker.runner import Outcome

log = get_logger(__name__)


class Hook:
    def after_fetch(self, model: str, version: int, count: int, depth_hint: bool) -> None:
        """``count`` messages were taken from ``model``'s queue (``depth_hint``: more may wait)."""

    def before_batch(self, model: str, version: int, batch: Sequence[InferenceRequest]) -> None:
        """A batch is about to run on the device."""

    def after_batch(
        self,
        model: str,
        version: int,
        batch: Sequence[InferenceRequest],
        outcomes: Sequence[Outcome],
        infer_s: float,
    ) -> None:
        """A batch was computed (its results not stored yet)."""

    def after_store(
        self,
        model: str,
        version: int,
        outcomes: Sequence[Outcome],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        """Results were stored and their messages acknowledged."""

    def on_batch_cap(self, model: str, version: int, cap: int) -> None:
        """The effective max batch size changed."""

    def on_queue_depth(self, model: str, depth: int) -> None:
        """Housekeeping measured the queue."""

    def on_device_stats(self, device: str, memory_bytes: int, utilization: float | None) -> None:
        """Housekeeping read the accelerator's memory and utilisation (CUDA only)."""

    def on_model_loaded(self, model: str, version: int, platform: str, precision: str) -> None:
        """A model version is loaded and warmed up: it serves from now on."""

    def on_model_released(self, model: str, version: int) -> None:
        """A model version was released (a rollout moved on): it serves no more."""

    def on_in_hand(self, model: str, count: int) -> None:
        """Housekeeping counted the messages this worker holds for ``model``."""

    def on_dead_letters(self, model: str, count: int) -> None:
        """A fetch from ``model``'s queue set ``count`` messages aside (not inferq requests)."""

    def on_redelivered(self, count: int) -> None:
        """The sweep put ``count`` messages back on their queues (left by dead workers)."""

    def on_stop(self) -> None:
        """The service stopped: flush what is buffered."""


class Hooks(Hook):
    """Every hook, called in order at each point, as one: the loops call the same typed methods
    as a single hook has, so a misspelt point is a mypy error, not a log line per batch."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def _each(self, point: str, call: Callable[[Hook], object]) -> None:
        for hook in self.hooks:
            try:
                call(hook)
            except Exception:  # a hook that raises is logged and skipped, never fatal
                log.exception("hook failed", hook=type(hook).__name__, point=point)

    def after_fetch(self, model: str, version: int, count: int, depth_hint: bool) -> None:
        self._each("after_fetch", lambda h: h.after_fetch(model, version, count, depth_hint))

    def before_batch(self, model: str, version: int, batch: Sequence[InferenceRequest]) -> None:
        self._each("before_batch", lambda h: h.before_batch(model, version, batch))

    def after_batch(
        self,
        model: str,
        version: int,
        batch: Sequence[InferenceRequest],
        outcomes: Sequence[Outcome],
        infer_s: float,
    ) -> None:
        self._each("after_batch", lambda h: h.after_batch(model, version, batch, outcomes, infer_s))

    def after_store(
        self,
        model: str,
        version: int,
        outcomes: Sequence[Outcome],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        self._each(
            "after_store", lambda h: h.after_store(model, version, outcomes, rejections, store_s)
        )

    def on_batch_cap(self, model: str, version: int, cap: int) -> None:
        self._each("on_batch_cap", lambda h: h.on_batch_cap(model, version, cap))

    def on_queue_depth(self, model: str, depth: int) -> None:
        self._each("on_queue_depth", lambda h: h.on_queue_depth(model, depth))

    def on_device_stats(self, device: str, memory_bytes: int, utilization: float | None) -> None:
        self._each(
            "on_device_stats", lambda h: h.on_device_stats(device, memory_bytes, utilization)
        )

    def on_model_loaded(self, model: str, version: int, platform: str, precision: str) -> None:
        self._each(
            "on_model_loaded", lambda h: h.on_model_loaded(model, version, platform, precision)
        )

    def on_model_released(self, model: str, version: int) -> None:
        self._each("on_model_released", lambda h: h.on_model_released(model, version))

    def on_in_hand(self, model: str, count: int) -> None:
        self._each("on_in_hand", lambda h: h.on_in_hand(model, count))

    def on_dead_letters(self, model: str, count: int) -> None:
        self._each("on_dead_letters", lambda h: h.on_dead_letters(model, count))

    def on_redelivered(self, count: int) -> None:
        self._each("on_redelivered", lambda h: h.on_redelivered(count))

    def on_stop(self) -> None:
        self._each("on_stop", lambda h: h.on_stop())


class MetricsHook(Hook):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: object, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)  # type: ignore[attr-defined]
        return child

    def after_batch(
        self,
        model: str,
        version: int,
        batch: Sequence[InferenceRequest],
        outcomes: Sequence[Outcome],
        infer_s: float,
    ) -> None:
        labels = (model, str(version))
        self.m.batch_size.observe(labels, len(batch))
        self.m.inference.observe(labels, infer_s)

    def after_store(
        self,
        model: str,
        version: int,
        outcomes: Sequence[Outcome],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        counts: Counter[str] = Counter(r.error.reason for r in rejections)
        # Comprehensions, not one loop appending to two lists: this runs for every request.
        timings = [o.value["timing"] for o in outcomes if o.value is not None]
        if len(timings) < len(outcomes):
            counts.update(
                o.error.reason if o.error else "error" for o in outcomes if o.value is None
            )
        if timings:
            counts["success"] += len(timings)
            labels = (model, str(version))
            latency = np.array([t["total_ms"] for t in timings])
            self.m.latency.observe_many(labels, latency / 1e3)
            self.m.queue_wait.observe_many(labels, np.array([t["queue_ms"] for t in timings]) / 1e3)
        for outcome, n in counts.items():
            self._child(self.m.requests, model, str(version), outcome).inc(n)
        if redelivered := sum(o.request.redelivered for o in outcomes):
            self._child(self.m.redeliveries, model, str(version)).inc(redelivered)

    def on_batch_cap(self, model: str, version: int, cap: int) -> None:
        self._child(self.m.batch_cap, model, str(version)).set(cap)

    def on_queue_depth(self, model: str, depth: int) -> None:
        self.m.set_queue_depth(model, depth)

    def on_model_loaded(self, model: str, version: int, platform: str, precision: str) -> None:
        self.m.set_model_info(model, str(version), platform, precision)

    def on_model_released(self, model: str, version: int) -> None:
        self.m.remove_model_info(model, str(version))

    def on_in_hand(self, model: str, count: int) -> None:
        self.m.set_in_hand(model, count)

    def on_dead_letters(self, model: str, count: int) -> None:
        self._child(self.m.dead_letters, model).inc(count)

    def on_redelivered(self, count: int) -> None:
        self.m.restored.inc(count)

    def on_device_stats(self, device: str, memory_bytes: int, utilization: float | None) -> None:
        memory = DeviceMemory.read(device)  # memory_bytes is its allocated part only
        if memory is not None:
            self.m.set_device_memory(device, memory)
        if utilization is not None:
            self._child(self.m.gpu_util, device).set(utilization)


class LogHook(Hook):
    def after_store(
        self,
        model: str,
        version: int,
        outcomes: Sequence[Outcome],
        rejections: Sequence[Rejection],
        store_s: float,
    ) -> None:
        for o in outcomes:
            if o.error is not None:
                log.warning(
                    "request failed",
                    task_id=o.request.task_id,
                    model=model,
                    error=type(o.error).__name__,
                    message=o.error.message,
                    **(o.request.trace.headers() if o.request.trace else {}),
                )
        for r in rejections:
            log.warning(
                "message rejected",
                task_id=r.task_id,
                model=model,
                error=type(r.error).__name__,
                message=r.error.message,
            )

    def on_batch_cap(self, model: str, version: int, cap: int) -> None:
        log.info("effective max batch size", model=model, cap=cap)
