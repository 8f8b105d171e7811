"""Scoring the examples' results as a worker returns them (``AsyncResult.get()`` / ``gather``
values), against the scenes and sentences they were made from, with the same counters as the
in-process figures (``evaluate``). Numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inferq.producer.tools.scenes import SCENE_CLASSES, Scene
from inferq.worker.examples.evaluate import Detections, IoUCounts, MatchCounts
from inferq.worker.examples.textcls import TEXT_CLASSES


def detections_of(outputs: Sequence[dict[str, Any]]) -> Detections:
    """The worker's ``[{"box", "label", "score"}]`` (best first) as ``Detections``."""
    return Detections(
        np.array([d["box"] for d in outputs], dtype=np.float32).reshape(-1, 4),
        np.array([SCENE_CLASSES.index(d["label"]) for d in outputs], dtype=np.int64),
        np.array([d["score"] for d in outputs], dtype=np.float32),
    )


def score_detections(values: Sequence[Any], scenes: Sequence[Scene]) -> MatchCounts:
    counts = MatchCounts()
    for value, scene in zip(values, scenes, strict=True):
        counts.add(detections_of(value["outputs"]), scene.boxes, scene.labels)
    return counts


def score_segmentation(values: Sequence[Any], scenes: Sequence[Scene]) -> IoUCounts:
    counts = IoUCounts(len(SCENE_CLASSES) + 1)
    for value, scene in zip(values, scenes, strict=True):
        labels = np.asarray(value["outputs"])
        if labels.shape != scene.mask.shape:
            raise ValueError(f"labels {labels.shape} for an image of {scene.mask.shape}")
        counts.add(labels, scene.mask)
    return counts


def text_correct(values: Sequence[Any], labels: Sequence[int] | np.ndarray) -> int:
    return sum(
        value["outputs"][0]["label"] == TEXT_CLASSES[int(label)]
        for value, label in zip(values, labels, strict=True)
    )
