"""The runner's device-side verdicts: which exceptions mean out of memory or a dead device,
and the batch cap that out-of-memory errors lower (``worker/runner.py`` re-exports them)."""

from __future__ import annotations

from collections.abc import Callable

import torch


class DeviceFailure(Exception):
    """The device is unusable (e.g. a device-side assert): the process must restart."""


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def is_fatal_device_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, getattr(torch, "AcceleratorError", ())) or any(
        marker in text
        for marker in (
            "device-side assert",
            "illegal memory access",
            "CUDA error: unspecified launch",
        )
    )


class BatchCap:
    """The effective max batch size: halved on OOM, doubled back after a run of clean batches.

    ``on_change`` hears the starting value and every change after it (the batch-cap gauge and
    log), from whichever thread made the change."""

    def __init__(
        self,
        maximum: int,
        recover_after: int = 50,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.maximum = maximum
        self.value = maximum
        self.recover_after = recover_after
        self._clean = 0
        self._on_change = on_change
        if on_change is not None:
            on_change(maximum)

    def shrink(self, failed_size: int) -> None:
        self._set(max(1, min(self.value, failed_size // 2)))
        self._clean = 0

    def ok(self) -> None:
        if self.value >= self.maximum:
            return
        self._clean += 1
        if self._clean >= self.recover_after:
            self._set(min(self.maximum, self.value * 2))
            self._clean = 0

    def _set(self, value: int) -> None:
        changed = value != self.value
        self.value = value
        if changed and self._on_change is not None:
            self._on_change(value)
