"""The input side of an [[inputs]] model: requests' named tensors into one device batch.

Each sent input is padded along its variable dimension to the batch's padded length
(``worker/padding.py``) in a host staging buffer (pinned on CUDA) and copied to the device on the
collator's own stream, as ``worker/collate.py`` does for images; each ``mask_of`` input is
generated from its source's lengths. The model is called with every input positionally in
declared order. No normalisation: token ids reach the model as they were sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from inferq.shared.inputs import TensorInput
from inferq.shared.spec import ModelConfig
from inferq.worker.handlers import ModelHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.padding import batch_shape, mask, pad_into, padded_length

TORCH_DTYPES = {
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
    "float16": torch.float16,
    "float32": torch.float32,
}


@dataclass(frozen=True)
class TensorBatch:
    """A batch's inputs in declared order; sliced by rows as one tensor is (bisection)."""

    tensors: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, rows: slice) -> TensorBatch:
        return TensorBatch(tuple(t[rows] for t in self.tensors))

    def to(self, device: torch.device, non_blocking: bool = False) -> TensorBatch:
        return TensorBatch(tuple(t.to(device, non_blocking=non_blocking) for t in self.tensors))


@dataclass(frozen=True)
class StagedTensors:
    x: TensorBatch
    ready: Any = None  # torch.cuda.Event on CUDA


def zero_batch(inputs: tuple[TensorInput, ...], n: int) -> TensorBatch:
    """A batch of ``n`` requests of every input's full shape (warm-up, validation): zeros are
    valid token ids and masks for any model."""
    return TensorBatch(
        tuple(torch.zeros((n, *i.shape), dtype=TORCH_DTYPES[i.dtype]) for i in inputs)
    )


class TensorCollator:
    """Stages several inputs per batch in rotating host buffers, each sized for the largest batch
    at every input's maximum shape; a batch's tensors are contiguous views of their front."""

    def __init__(
        self,
        inputs: tuple[TensorInput, ...],
        max_batch_size: int,
        device: torch.device,
        slots: int = 3,
    ) -> None:
        self.inputs = inputs
        self.device = device
        self._cuda = device.type == "cuda"
        self._index = {inp.name: i for i, inp in enumerate(i for i in inputs if i.sent)}
        self._max_batch = max_batch_size
        self._slots = [self._buffers(max_batch_size) for _ in range(slots)]
        self._copied: list[Any] = [None] * slots
        self._next = 0
        self._stream = torch.cuda.Stream(device) if self._cuda else None

    def stage(self, rows: Sequence[tuple[np.ndarray, ...]]) -> StagedTensors:
        """``rows[i]`` holds request ``i``'s sent inputs in declared order."""
        buffers, slot = self._host_buffers(len(rows))
        host = tuple(
            self._fill(inp, buf, rows) for inp, buf in zip(self.inputs, buffers, strict=True)
        )
        if not self._cuda:
            return StagedTensors(TensorBatch(host))
        with torch.cuda.stream(self._stream):
            x = TensorBatch(host).to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        if slot is not None:
            self._copied[slot] = ready
        return StagedTensors(x, ready)

    def claim(self, staged: StagedTensors) -> TensorBatch:
        """The device tensors, safe to use on the calling thread's current stream."""
        if staged.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.ready)
            for t in staged.x.tensors:
                t.record_stream(current)
        return staged.x

    def _fill(
        self, inp: TensorInput, flat: torch.Tensor, rows: Sequence[tuple[np.ndarray, ...]]
    ) -> torch.Tensor:
        source = inp if inp.sent else next(i for i in self.inputs if i.name == inp.mask_of)
        k = self._index[source.name]
        lengths = (
            [r[k].shape[source.variable] for r in rows] if source.variable is not None else [0]
        )
        length = padded_length(lengths, source.buckets)
        shape = batch_shape(inp.shape, inp.variable, length, len(rows))
        tensor = flat[: math.prod(shape)].view(shape)
        if inp.sent:
            pad_into(tensor.numpy(), [r[k] for r in rows], inp.variable, inp.pad_value)
        else:
            mask(lengths, length, tensor.numpy())
        return tensor

    def _buffers(self, n: int) -> list[torch.Tensor]:
        return [
            torch.empty(n * math.prod(i.shape), dtype=TORCH_DTYPES[i.dtype], pin_memory=self._cuda)
            for i in self.inputs
        ]

    def _host_buffers(self, n: int) -> tuple[list[torch.Tensor], int | None]:
        if n > self._max_batch:  # larger than configured: one-off buffers
            return self._buffers(n), None
        slot = self._next
        self._next = (slot + 1) % len(self._slots)
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the copy that last read this slot is done
        return self._slots[slot], slot


class TensorSide:
    """What the runner does differently for an [[inputs]] model: stage named tensors, call the
    model with them, and read the lengths an output follows."""

    def __init__(self, config: ModelConfig, handler: ModelHandler, device: torch.device) -> None:
        self.handler = handler
        # One slot per instance computing, one waiting, one being staged (as for images).
        self.collator = TensorCollator(
            config.inputs, config.batching.max_batch_size, device, slots=config.instances + 2
        )
        sent = [i for i in config.inputs if i.sent]
        follows = next((i for i in sent if i.name == config.output.follows), None)
        self._follows: tuple[int, int] | None = None
        if follows is not None and follows.variable is not None:  # parse_config checked it has one
            self._follows = (sent.index(follows), follows.variable)

    def call(self, x: TensorBatch) -> Any:
        return self.handler.predict(*x.tensors)

    def lengths(self, live: Sequence[InferenceRequest]) -> list[int] | None:
        """Each request's length of the input ``[output] follows`` names (None: no such input)."""
        if self._follows is None:
            return None
        k, dim = self._follows
        return [r.tensors[k].shape[dim] for r in live]
