"""An example custom handler (README, "Custom processing"), installed as the entry point
``score-floor`` (group ``inferq.handlers``, in ``pyproject.toml``).

A model picks it with::

    [handler]
    name = "score-floor"            # or "inferq.worker.examples.handlers:ScoreFloor"
    options = { min_score = 0.2 }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferq.worker.custom import BatchHandler, RequestInfo


class ScoreFloor(BatchHandler):
    """Drops ranked labels (``topk``) or detections scoring under ``min_score`` from each result;
    the model's input is left as it is (no ``preprocess``)."""

    def __init__(self, min_score: float = 0.1) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must lie in 0..1, got {min_score}")
        super().__init__(min_score=min_score)
        self.min_score = min_score

    def postprocess(self, values: list[Any], requests: Sequence[RequestInfo]) -> list[Any]:
        return [[v for v in value if v["score"] >= self.min_score] for value in values]
