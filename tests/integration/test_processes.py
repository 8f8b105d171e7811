"""``inferq worker --processes 2``: two Celery nodes from one command, both serving one queue."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from inferq.producer import gather, submit_many
from inferq.shared import keys
from inferq.worker.supervisor import process_hostname
from tests.waiting import wait_until


def test_two_processes_register_and_share_the_queue(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    group = stack.worker("tiny", ready=False, extra=["--processes", "2"])
    names = [process_hostname(group.hostname, k, 2) for k in range(2)]
    listed = keys.model_workers_key("tiny")
    wait_until(
        lambda: all(stack.client.zscore(listed, n) is not None for n in names),
        120,
        "both worker processes to register",
    )
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8) for _ in range(3000)]
    values = gather(submit_many(imgs, model="tiny"), timeout=120)
    served_by = Counter(v["timing"]["worker"] for v in values)
    assert set(served_by) == set(names), served_by  # each process took part of the queue
    assert sum(served_by.values()) == 3000
    assert group.terminate(timeout=60) == 0  # a warm shutdown of both
    assert group.process.returncode == 0
