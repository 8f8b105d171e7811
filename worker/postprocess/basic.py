"""``topk`` (softmax, the best ``top_k`` labels) and ``raw`` (the request's outputs as arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inferq.shared.spec import ModelConfig
from inferq.worker.intake import InferenceRequest
from inferq.worker.outputs import SINGLE, Chunk, Parts
from inferq.worker.padding import cut_back


class TopK:
    """Softmax over each row and its ``top_k`` classes, for the whole chunk at once. A model with
    several outputs is ranked on its first (``output.names[0]``, or the dict's first key)."""

    def __init__(self, config: ModelConfig) -> None:
        self.top_k = config.output.top_k
        self._labels = config.output.labels
        self._names: list[str] = []

    def __call__(self, chunk: Chunk, requests: Sequence[InferenceRequest]) -> list[Any]:
        if isinstance(chunk, Parts):
            chunk = torch.stack([next(iter(part.values())) for part in chunk])
        probs = torch.softmax(chunk.float().flatten(1), dim=1)
        scores, idx = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
        names = self._label_names(probs.shape[1])
        return [
            [{"index": i, "label": names[i], "score": s} for i, s in zip(ri, rs, strict=True)]
            for ri, rs in zip(idx.tolist(), scores.tolist(), strict=True)
        ]

    def _label_names(self, classes: int) -> list[str]:
        if len(self._names) != classes:
            self._names = [
                self._labels[i] if i < len(self._labels) else str(i) for i in range(classes)
            ]
        return self._names


class Raw:
    """The request's output as a numpy array; ``{name: array}`` for a model with several."""

    def __init__(self, config: ModelConfig) -> None:
        pass

    def __call__(self, chunk: Chunk, requests: Sequence[InferenceRequest]) -> list[Any]:
        if isinstance(chunk, torch.Tensor):
            return list(chunk.numpy())
        return [part_arrays(part) for part in chunk]


def part_arrays(part: dict[str, torch.Tensor]) -> np.ndarray | dict[str, np.ndarray]:
    if len(part) == 1 and SINGLE in part:
        return part[SINGLE].numpy()
    return {name: t.numpy() for name, t in part.items()}


def cut_back_values(chunk: Chunk, lengths: Sequence[int]) -> list[Any]:
    """``raw`` values whose rows are cut back to each request's length of the input the outputs
    follow (``[output] follows``, ``worker/padding.py``)."""
    if isinstance(chunk, torch.Tensor):
        return [row.numpy() for row in cut_back(chunk, lengths)]
    return [
        part_arrays({name: t[:n] for name, t in part.items()})
        for part, n in zip(chunk, lengths, strict=True)
    ]
