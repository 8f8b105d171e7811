"""Post-processing: a batch's outputs (one chunk: a tensor or :class:`~inferq.worker.outputs.Parts`)
into one JSON-ready value per request, chosen once per model by ``[output] postprocess``.

``topk`` and ``raw`` live in ``basic.py``; ``detection`` (score threshold, NMS per class, boxes
mapped back to the original image) in ``detection.py``; ``segmentation`` (per-pixel argmax at
the original image's size) in ``segmentation.py``. Values may hold numpy arrays: results carry
them as the wire codec (``shared/arrays.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from inferq.shared.errors import InferqError, ModelError
from inferq.shared.spec import ModelConfig
from inferq.worker.custom import HandlerHooks
from inferq.worker.intake import InferenceRequest
from inferq.worker.outputs import Chunk, sizes
from inferq.worker.postprocess.basic import cut_back_values


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


class BatchPostprocess:
    """A batch's chunks (outputs, or one request's error, in row order) into one value or error
    per live request: the ``[output]`` post-processing once per chunk, then the handler's
    postprocess hook over the requests still standing."""

    def __init__(
        self,
        config: ModelConfig,
        hooks: HandlerHooks | None,
        lengths: Callable[[Sequence[InferenceRequest]], list[int] | None] | None = None,
    ) -> None:
        self._post = make_postprocessor(config)
        self._hooks = hooks if hooks is not None and hooks.postprocess is not None else None
        # [output] follows: an [[inputs]] model's rows cut back to each request's own length
        self._lengths = lengths if config.output.follows else None

    def __call__(
        self, chunks: Sequence[Chunk | InferqError], live: Sequence[InferenceRequest]
    ) -> list[Any]:
        if len(chunks) == 1 and not isinstance(chunks[0], InferqError):
            values = self._chunk(chunks[0], live)  # the batch ran whole
        else:
            values, at = [], 0
            for chunk, size in zip(chunks, sizes(chunks), strict=True):
                if isinstance(chunk, InferqError):
                    values.append(chunk)
                else:
                    values += self._chunk(chunk, live[at : at + size])
                at += size
        return values if self._hooks is None else self._hooks.finish(values, live)

    def _chunk(self, chunk: Chunk, requests: Sequence[InferenceRequest]) -> list[Any]:
        try:
            lengths = self._lengths(requests) if self._lengths is not None else None
            if lengths is not None:
                return cut_back_values(chunk, lengths)
            return self._post(chunk, requests)
        except InferqError as exc:  # a model whose outputs do not fit its [output] config
            return [exc] * len(requests)
        except Exception as exc:
            error = ModelError(
                f"model outputs must post-process as [output] says, got {type(exc).__name__}: {exc}"
            )
            return [error] * len(requests)
