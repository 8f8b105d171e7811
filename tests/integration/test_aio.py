"""The asyncio client end to end: a private redis-server, a real worker, an event loop here."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError

from inferq.aio import gather, submit, submit_many
from inferq.producer import submit_job
from inferq.shared.errors import InvalidInput

pytestmark = pytest.mark.integration


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(8, 8, 3), dtype=np.uint8)


def test_submit_and_await_results_from_a_real_worker(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")

    async def main() -> tuple[dict, list, dict]:
        one = await (await submit(_img(1), model="tiny")).async_get(timeout=30)
        many = await submit_many([_img(i) for i in range(40)], model="tiny")
        both = await asyncio.gather(
            gather(many, timeout=30),
            (await submit_job.async_delay(_img(2), model="tiny")).async_get(timeout=30),
        )
        return one, both[0], both[1]

    one, values, other = asyncio.run(main())
    assert one["model"] == "tiny" and other["model"] == "tiny"
    assert Counter(v["model"] for v in values) == Counter(tiny=40)
    # the same input gives the same answer through either client
    assert submit_job.delay(_img(1), model="tiny").get(timeout=30)["outputs"] == one["outputs"]


def test_errors_stay_typed(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")
    bad = np.zeros((2, 2, 2, 2), dtype=np.uint8)

    async def main() -> None:
        with pytest.raises(InvalidInput):
            await submit(bad, model="tiny")
        never = submit_job.AsyncResult("never-submitted")
        with pytest.raises(CeleryTimeoutError):
            await never.async_get(timeout=0.2)
        with pytest.raises(TimeoutError, match="1 of 2 results still pending"):
            await gather([await submit(_img(3), model="tiny"), never], timeout=5)

    asyncio.run(main())


def test_many_concurrent_awaits_on_one_loop(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tiny")

    async def one(i: int) -> str:
        return (await (await submit(_img(i), model="tiny")).async_get(timeout=60))["model"]

    async def main() -> list[str]:
        return list(await asyncio.gather(*(one(i) for i in range(100))))

    assert Counter(asyncio.run(main())) == Counter(tiny=100)
