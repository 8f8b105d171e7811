"""``detection``: per request, the boxes whose class score passes ``score_threshold``, NMS per
class, the best ``max_detections``, each box mapped back to the ORIGINAL image's pixels.

The model gives ``boxes`` [A, 4] (xyxy in the model input's pixels) and ``scores`` [A, C]
(per-class probabilities, no background) per request; the request's geometry (recorded by the
producer's ``fit()``) is inverted for its boxes. A request sent without one is taken to be the
model input itself. Results: ``[{"box": [x1, y1, x2, y2], "label": str, "score": float}]``,
best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from inferq.shared.errors import ModelError
from inferq.shared.geometry import Geometry
from inferq.shared.spec import ModelConfig
from inferq.worker.intake import InferenceRequest
from inferq.worker.outputs import Chunk, Parts
from inferq.worker.postprocess.nms import batched_nms


class Detect:
    def __init__(self, config: ModelConfig) -> None:
        self.spec = config.output.detection
        self.labels = config.output.labels
        _, height, width = config.shape
        self.input_size = (width, height)

    def __call__(self, chunk: Chunk, requests: Sequence[InferenceRequest]) -> list[Any]:
        if not isinstance(chunk, Parts):
            raise ModelError(
                f"detection needs the outputs {self.spec.boxes!r} and {self.spec.scores!r}, "
                f"got one tensor {tuple(chunk.shape)}"
            )
        return [self.one(part, r.geometry) for part, r in zip(chunk, requests, strict=True)]

    def one(self, part: dict[str, torch.Tensor], geometry: Geometry | None) -> list[Any]:
        boxes, scores = self._read(part)
        rows, classes = (scores >= self.spec.score_threshold).nonzero(as_tuple=True)
        kept_scores = scores[rows, classes]
        keep = batched_nms(boxes[rows], kept_scores, classes, self.spec.iou_threshold)
        keep = keep[: self.spec.max_detections]
        g = geometry or Geometry.identity(*self.input_size)
        mapped = g.boxes_to_original(boxes[rows[keep]].double().numpy())
        return [
            {"box": box, "label": self.labels[c], "score": s}
            for box, c, s in zip(
                mapped.tolist(), classes[keep].tolist(), kept_scores[keep].tolist(), strict=True
            )
        ]

    def _read(self, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = _output(part, self.spec.boxes)
        scores = _output(part, self.spec.scores)
        classes = len(self.labels)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ModelError(f"detection boxes must be [A, 4] per input, got {tuple(boxes.shape)}")
        if scores.shape != (boxes.shape[0], classes):
            raise ModelError(
                f"detection scores must be [A, {classes}] per input (one column per label, "
                f"A = {boxes.shape[0]} boxes), got {tuple(scores.shape)}"
            )
        return boxes.float(), scores.float()


def _output(part: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in part:
        raise ModelError(f"detection needs the model output {name!r}, got outputs {sorted(part)}")
    return part[name]
