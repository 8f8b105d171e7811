"""Post-processing: a batch's outputs (one chunk: a tensor or :class:`~inferq.worker.outputs.Parts`)
into one JSON-ready value per request, chosen once per model by ``[output] postprocess``.

``topk`` and ``raw`` live in ``basic.py``; ``detection`` (score threshold, NMS per class, boxes
mapped back to the original image) in ``detection.py``; ``segmentation`` (per-pixel argmax at
the original image's size) in ``segmentation.py``. Values may hold numpy arrays: results carry
them as the wire codec (``shared/arrays.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from inferq.shared.spec import ModelConfig
from inferq.worker.intake import InferenceRequest
from inferq.worker.outputs import Chunk


class Postprocessor(Protocol):
    def __call__(self, chunk: Chunk, requests: Sequence[InferenceRequest]) -> list[Any]:
        """One value per request of ``chunk`` (``requests`` are its requests, in order)."""
        ...


def make_postprocessor(config: ModelConfig) -> Postprocessor:
    from inferq.worker.postprocess.basic import Raw, TopK
    from inferq.worker.postprocess.detection import Detect
    from inferq.worker.postprocess.segmentation import Segment

    kinds: dict[str, type[Postprocessor]] = {
        "topk": TopK,
        "raw": Raw,
        "detection": Detect,
        "segmentation": Segment,
    }
    return kinds[config.output.postprocess](config)  # type: ignore[call-arg]
