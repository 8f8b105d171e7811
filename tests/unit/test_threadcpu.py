"""Per-thread CPU readings used by ``inferq bench``'s drain line."""

from __future__ import annotations

import os
import sys
import time

import pytest

from inferq.worker.tools.threadcpu import thread_cpu, us_per_message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_cpu_a_process_spends_is_read_from_its_threads() -> None:
    before = thread_cpu(os.getpid())
    spent = time.process_time()
    while time.process_time() - spent < 0.2:  # the kernel counts in ticks of 10 ms or so
        sum(range(1000))
    charged = sum(us_per_message(before, thread_cpu(os.getpid()), 1).values()) / 1e6
    assert 0.15 <= charged <= 0.2 + (time.process_time() - spent)


def test_per_message_figures_leave_out_idle_threads_and_rank_the_rest() -> None:
    before = {"fetch": 1.0, "writer": 2.0, "idle": 3.0}
    after = {"fetch": 1.5, "writer": 2.1, "idle": 3.0, "new": 0.2}
    assert list(us_per_message(before, after, 100_000).items()) == [
        ("fetch", pytest.approx(5.0)),
        ("new", pytest.approx(2.0)),
        ("writer", pytest.approx(1.0)),
    ]
