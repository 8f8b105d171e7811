"""Process-wide tuning a worker applies once at start, before any model is loaded.

glibc's malloc serves every allocation of 128 KiB or more with a fresh ``mmap`` and returns it
with ``munmap`` on free (the threshold then moves up only after such a block is freed). A CPU
forward pass allocates its activations anew every batch, so with the default each batch pays
page faults and zeroing for megabytes: measured here, the example classifier's batched
throughput is about 1.5x higher with the threshold raised. ``inferq bench`` applies the same
setting before it measures the model's raw speed, so both sides of its ratios run alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from shared.logs import get_logger

log = get_logger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold_mb: int) -> bool:
    """Raise glibc's mmap threshold (and the trim threshold with it); False where not glibc."""
    if mmap_threshold_mb <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    size = mmap_threshold_mb << 20
    ok = bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * size))
    if not ok:
        log.warning("malloc tuning refused by the C library", mmap_threshold_mb=mmap_threshold_mb)
    return ok


def tune_threads(torch_threads: int) -> None:
    """Set torch's intra-op thread count (0 keeps torch's default)."""
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
