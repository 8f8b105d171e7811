"""Handler classes for tests (``[handler] name = "tests.handlers:Class"``): hooks that fail on
marked requests, so tests can show that only those requests fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from inferq.worker.custom import BatchHandler, RequestInfo


class FailMarked(BatchHandler):
    """``postprocess`` raises for any call holding a request whose task id starts with "bad";
    ``preprocess`` raises for any batch holding a full green pixel outside red ones. Every
    other value is wrapped as ``{"value": ..., "task_id": ...}``."""

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        if bool(((batch[:, 1] > 0.99) & (batch[:, 0] < 0.5)).any()):
            raise ValueError("marked row in preprocess")
        return batch

    def postprocess(self, values: list[Any], requests: Sequence[RequestInfo]) -> list[Any]:
        if any(r.task_id.startswith("bad") for r in requests):
            raise ValueError("marked request in postprocess")
        return [{"value": v, "task_id": r.task_id} for v, r in zip(values, requests, strict=True)]


class Scaled(BatchHandler):
    """``preprocess`` multiplies the batch by ``factor`` (an option); ``postprocess`` returns a
    tensor, which results carry as an array."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__(factor=factor)
        self.factor = factor

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        return batch * self.factor

    def postprocess(self, values: list[Any], requests: Sequence[RequestInfo]) -> list[Any]:
        return [torch.as_tensor(v) for v in values]


class WrongCount(BatchHandler):
    def postprocess(self, values: list[Any], requests: Sequence[RequestInfo]) -> list[Any]:
        return values[:-1] if len(values) > 1 else values


NOT_A_CLASS = 3
