"""Process-wide tuning a worker applies once at start, before any model is loaded.

glibc's malloc gives each thread that allocates its own arena, and a thread arena grows in heaps
of at most 64 MiB: anything larger is served with a fresh ``mmap`` and returned with ``munmap``
on free, whatever the mmap threshold says. A CPU forward pass allocates its activations anew
every batch, and in a worker the forward runs on a run thread, so each batch paid page faults and
zeroing for every large activation: measured here on ResNet-18 at batch 32, 1.5 million page
faults and a fifth of the worker's CPU time in the kernel, where the same forward on the main
thread (as a benchmark runs it) paid none. One arena (``M_ARENA_MAX`` 1: every thread allocates
from the main heap, which grows without that limit) and a high mmap threshold keep activations
on the heap from batch to batch. ``inferq bench`` applies the same setting before it measures the
model's raw speed, so both sides of its ratios run alike.

The settings take full effect when they are in place before the process's threads start:
``inferq worker`` passes them to its Celery child in glibc's environment variables, and
``inferq.worker.app`` sets them with ``mallopt`` when the Celery app is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from inferq.shared.logs import get_logger

if TYPE_CHECKING:
    from inferq.shared.settings import Settings

log = get_logger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def tune_allocator(mmap_threshold_mb: int) -> bool:
    """One malloc arena, and glibc's mmap threshold (and trim threshold, twice it) raised to
    ``mmap_threshold_mb``; False where the C library is not glibc or refuses."""
    if mmap_threshold_mb <= 0:
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False  # not glibc (musl, macOS): nothing to tune
    size = mmap_threshold_mb << 20
    ok = (
        bool(mallopt(_M_ARENA_MAX, 1))
        and bool(mallopt(_M_MMAP_THRESHOLD, size))
        and bool(mallopt(_M_TRIM_THRESHOLD, 2 * size))
    )
    if not ok:
        log.warning("malloc tuning refused by the C library", mmap_threshold_mb=mmap_threshold_mb)
    return ok


def allocator_env(
    mmap_threshold_mb: int, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """glibc's own variables for the same tuning, for a child process to read at its first
    allocation; any the caller's environment already sets are left as they are."""
    if mmap_threshold_mb <= 0:
        return {}
    env = os.environ if environ is None else environ
    size = mmap_threshold_mb << 20
    wanted = {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(size),
        "MALLOC_TRIM_THRESHOLD_": str(2 * size),
    }
    return {k: v for k, v in wanted.items() if k not in env}


def omp_env(wait_policy: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``OMP_WAIT_POLICY`` for the worker from ``INFERQ_OMP_WAIT_POLICY`` ("" keeps libgomp's
    default: spin a while, then sleep), unless ``environ`` (default: ours) sets it already.
    libgomp reads it once, when torch is first imported.

    Measured here (README, Performance): ``passive`` leaves the cores to the Python stages,
    Redis and a producer between batches (example classifier: end-to-end 4,561 against 2,956
    img/s, p50 at half load 43 against 200 ms), but makes small batches of a heavier model
    slower (ResNet-18 at half load: p50 485 ms against 56 to 134 ms).
    """
    env = os.environ if environ is None else environ
    if not wait_policy or "OMP_WAIT_POLICY" in env:
        return {}
    return {"OMP_WAIT_POLICY": wait_policy.upper()}


def worker_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allocator and OpenMP variables a worker child process should start with, less any
    that ``environ`` (default: ours) already sets."""
    env = os.environ if environ is None else environ
    return {
        **allocator_env(settings.malloc_mmap_threshold_mb, env),
        **omp_env(settings.omp_wait_policy, env),
    }


def torch_threads(setting: int, device_type: str, instances: int) -> int:
    """Intra-op threads for a worker: ``INFERQ_TORCH_THREADS`` when set; on CPU with several
    model instances, the cores shared out between them (each instance computing on all cores
    would oversubscribe them); else 0, torch's default."""
    if setting > 0 or device_type != "cpu" or instances <= 1:
        return setting
    return max(1, len(os.sched_getaffinity(0)) // instances)


def tune_threads(torch_threads: int) -> None:
    """Set torch's intra-op thread count (0 keeps torch's default)."""
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)


_PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux keeps 15 bytes), best effort."""
    prctl = getattr(_libc(), "prctl", None)
    if prctl is not None:
        prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
