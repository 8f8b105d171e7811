"""Variable-length inputs in a batch: the padded length, padding, generated masks, and outputs
cut back to each request's own length. Plain functions over arrays, no device, no runner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from inferq.shared.errors import ModelError


def padded_length(lengths: Sequence[int], buckets: Sequence[int]) -> int:
    """The batch's longest length, raised to the next bucket when one is at least as long."""
    longest = max(lengths)
    for bucket in buckets:  # sorted when parsed
        if bucket >= longest:
            return bucket
    return longest


def batch_shape(
    shape: tuple[int, ...], variable: int | None, length: int, n: int
) -> tuple[int, ...]:
    """The batch tensor's shape: ``n`` rows of ``shape`` with the variable dimension at ``length``."""
    if variable is None:
        return (n, *shape)
    return (n, *shape[:variable], length, *shape[variable + 1 :])


def pad_into(
    out: np.ndarray, arrays: Sequence[np.ndarray], variable: int | None, pad_value: float
) -> None:
    """Row ``i`` of ``out`` holds ``arrays[i]`` followed by ``pad_value`` along ``variable``."""
    if variable is None:
        for i, array in enumerate(arrays):  # a plain copy loop beats np.stack's per-array cost
            out[i] = array
        return
    out.fill(pad_value)
    for i, array in enumerate(arrays):
        rows: tuple[int | slice, ...] = (i, *(slice(0, d) for d in array.shape))
        out[rows] = array


def mask(lengths: Sequence[int], length: int, out: np.ndarray) -> None:
    """``out[i, j]`` = 1 where position ``j`` is one of request ``i``'s own, 0 in its padding."""
    np.less(np.arange(length), np.asarray(lengths)[:, None], out=out, casting="unsafe")


def cut_back(out: torch.Tensor, lengths: Sequence[int], dim: int = 0) -> list[torch.Tensor]:
    """Each request's row of ``out`` (batch first) cut to its length along the row's ``dim``."""
    if out.dim() < dim + 2 or out.shape[dim + 1] < max(lengths, default=0):
        raise ModelError(
            f"output following a variable input must have at least {max(lengths)} positions "
            f"along its dimension {dim + 1}, got shape {list(out.shape)}"
        )
    return [row.narrow(dim, 0, n) for row, n in zip(out, lengths, strict=True)]
