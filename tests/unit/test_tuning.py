"""Worker process tuning: glibc malloc settings and OS thread names."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import pytest

from inferq.worker.tuning import allocator_env, name_os_thread, torch_threads, tune_allocator

GLIBC = platform.libc_ver()[0] == "glibc"


def test_allocator_env_leaves_what_the_operator_set() -> None:
    env = allocator_env(256, {"MALLOC_ARENA_MAX": "4"})
    assert env == {
        "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(512 << 20),
    }
    assert allocator_env(0, {}) == {}
    assert allocator_env(64, {})["MALLOC_ARENA_MAX"] == "1"


def test_zero_leaves_malloc_alone() -> None:
    assert tune_allocator(0) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_child_reuses_heap_for_large_thread_allocations() -> None:
    """The effect the tuning exists for: on a non-main thread, a 100 MB buffer allocated and
    freed over and over is mapped anew each time without it, and kept on the heap with it."""
    probe = """
import resource, sys, threading, numpy as np
from inferq.worker.tuning import tune_allocator
tune_allocator(int(sys.argv[1]))
faults = []
def work():
    for _ in range(11):  # the first round grows the heap; the other ten are steady state
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(100 << 20, np.uint8)
        del a
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work); t.start(); t.join()
print(sum(faults[1:]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def faults(mb: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(mb)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return int(out.stdout.strip())

    untuned, tuned = faults(0), faults(256)
    # Untuned: every round maps and faults in 100 MB again (50 faults with 2 MB pages, 25,600
    # with 4 KB ones); tuned: the heap already holds it.
    assert untuned >= 10 * 40 and tuned * 10 < untuned, (tuned, untuned)


@pytest.mark.skipif(sys.platform != "linux", reason="thread names are read from /proc")
def test_os_thread_names_show_in_proc() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread("inferq-test-stage-long-name")
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/comm") as f:
            seen.append(f.read().strip())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == ["inferq-test-sta"]


def test_omp_env_follows_the_setting_unless_the_operator_chose() -> None:
    from inferq.worker.tuning import omp_env

    assert omp_env("", {}) == {}
    assert omp_env("passive", {}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert omp_env("passive", {"OMP_WAIT_POLICY": "ACTIVE"}) == {}


def test_importing_the_worker_app_sets_omp_before_torch_loads() -> None:
    probe = "import os, sys, inferq.worker.app; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["INFERQ_OMP_WAIT_POLICY"] = "passive"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["PASSIVE", "False"]


def test_instances_share_out_the_cores_unless_threads_are_set() -> None:
    cores = len(os.sched_getaffinity(0))
    assert torch_threads(0, "cpu", 1) == 0  # torch's default
    assert torch_threads(0, "cpu", 2) == max(1, cores // 2)
    assert torch_threads(0, "cpu", 10 * cores) == 1
    assert torch_threads(3, "cpu", 2) == 3  # the operator's setting wins
    assert torch_threads(0, "cuda", 2) == 0
