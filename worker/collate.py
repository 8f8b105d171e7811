"""Collation: many requests' arrays into one device batch, overlapping the compute before it.

Arrays are copied into a host staging buffer (pinned on CUDA) and from there to the device. The
collator keeps ``slots`` buffers in rotation so that batch k+1 can be staged while batch k is
queued or running. On CUDA the host-to-device copy runs on the collator's own stream and the
staged batch carries an event that the compute stream waits on; a slot is reused only after the
copy out of it has finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Staged:
    x: torch.Tensor
    ready: Any = None  # torch.cuda.Event on CUDA


class Collator:
    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        max_batch_size: int,
        device: torch.device,
        slots: int = 3,
    ) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self._cuda = device.type == "cuda"
        self._slots = [
            torch.empty((max_batch_size, *shape), dtype=dtype, pin_memory=self._cuda)
            for _ in range(slots)
        ]
        self._copied: list[Any] = [None] * slots
        self._next = 0
        self._stream = torch.cuda.Stream(device) if self._cuda else None

    def stage(self, arrays: Sequence[np.ndarray]) -> Staged:
        host, slot = self._host_buffer(len(arrays))
        out = host.numpy()
        for i, array in enumerate(arrays):  # a plain copy loop beats np.stack's per-array overhead
            out[i] = array
        if not self._cuda:
            return Staged(host)  # the CPU model reads the staging slot itself
        with torch.cuda.stream(self._stream):
            x = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        if slot is not None:
            self._copied[slot] = ready
        return Staged(x, ready)

    @property
    def stream(self) -> Any:
        """The copy stream (None on the CPU); the device decode stage stages on it too."""
        return self._stream

    def claim(self, staged: Staged) -> torch.Tensor:
        """The device tensor, safe to use on the calling thread's current stream."""
        if staged.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.ready)
            staged.x.record_stream(current)
        return staged.x

    def _host_buffer(self, n: int) -> tuple[torch.Tensor, int | None]:
        if n > self._slots[0].shape[0]:  # larger than configured: a one-off buffer
            return torch.empty((n, *self.shape), dtype=self.dtype, pin_memory=self._cuda), None
        slot = self._next
        self._next = (slot + 1) % len(self._slots)
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the copy that last read this slot is done
        return self._slots[slot][:n], slot
