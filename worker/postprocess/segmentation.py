"""``segmentation``: per-pixel class ids (argmax over the logits' classes) at the ORIGINAL image's
size, as a uint8 array (int32 past 256 classes).

The logits ([C, h, w] per request, any h x w over the model input) are reduced to labels on the
whole batch at once; each request's label map is then read back at its original pixels through
the inverse of its resize geometry (nearest label at each original pixel's centre), so a
letterboxed image loses its padding and a cropped one gets the label of the nearest edge it was
cropped to. A request without geometry is taken to be the model input itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inferq.shared.errors import ModelError
from inferq.shared.geometry import Geometry
from inferq.shared.spec import ModelConfig
from inferq.worker.intake import InferenceRequest
from inferq.worker.outputs import Chunk, only


class Segment:
    def __init__(self, config: ModelConfig) -> None:
        self.logits = config.output.segmentation.logits
        _, height, width = config.shape
        self.input_size = (width, height)

    def __call__(self, chunk: Chunk, requests: Sequence[InferenceRequest]) -> list[Any]:
        logits = self._logits(chunk)
        if logits.dim() != 4:
            raise ModelError(
                f"segmentation logits must be [C, H, W] per input, got {tuple(logits.shape[1:])}"
            )
        dtype = torch.uint8 if logits.shape[1] <= 256 else torch.int32
        # max(dim).indices, not argmax(dim): the same first-maximum labels, 8x faster on the CPU
        # over the class dim's stride (32 x 4 x 128 x 128: 11 ms against 92 ms).
        labels = logits.max(dim=1).indices.to(dtype).numpy()
        return [self.one(labels[i], r.geometry) for i, r in enumerate(requests)]

    def one(self, labels: np.ndarray, geometry: Geometry | None) -> np.ndarray:
        """``labels`` [h, w] read at each pixel of the original image: [H, W]."""
        g = geometry or Geometry.identity(*self.input_size)
        map_h, map_w = labels.shape
        rows, cols = g.source_pixels(self.input_size, (map_w, map_h))
        # Rows, then columns: two 1-D gathers (5x faster than one 2-D fancy index at 640x480).
        return labels.take(rows, axis=0).take(cols, axis=1)

    def _logits(self, chunk: Chunk) -> torch.Tensor:
        if isinstance(chunk, torch.Tensor):
            return chunk
        per_request = [only(part, self.logits, "segmentation") for part in chunk]
        shapes = {tuple(t.shape) for t in per_request}
        if len(shapes) != 1:
            raise ModelError(f"segmentation logits must share one shape, got {sorted(shapes)}")
        return torch.stack(per_request)
