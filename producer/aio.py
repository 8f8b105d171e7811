"""The asyncio client, for FastAPI/aiohttp services::

    from inferq.aio import submit, gather

    result = await submit(img, model="shapes")
    value = await result.async_get(timeout=10)
    values = await gather([await submit(i, model="shapes") for i in imgs], timeout=30)

Submitting runs ``submit_job.delay`` / ``submit_many`` on a worker thread (preprocessing and the
push's round trip never block the loop; pushes from concurrent submits share round trips as they
do for threads). Waiting never uses a thread: the process's result listener resolves each future
with ``loop.call_soon_threadsafe``. Results are the same ``AsyncResult`` objects (``InferqResult``)
the synchronous client returns, so ``.get()``, ``.state`` and ``gather`` work on them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from inferq.producer.backend import InferqResult
from inferq.producer.client import submit_job
from inferq.producer.client import submit_many as submit_many_sync
from inferq.producer.preprocess import ImageLike

__all__ = ["InferqResult", "gather", "submit", "submit_many"]


async def submit(img: ImageLike, model: str, **options: Any) -> InferqResult:
    """``submit_job.apply_async`` off the loop; raises what ``.delay`` raises (``QueueFull``,
    ``InvalidInput``, ``BrokerUnavailable``)."""
    return await asyncio.to_thread(submit_job.apply_async, (img,), {"model": model}, **options)


async def submit_many(imgs: Iterable[ImageLike], model: str, **options: Any) -> list[InferqResult]:
    """``submit_many`` off the loop: many messages per round trip."""
    return await asyncio.to_thread(submit_many_sync, list(imgs), model, **options)


async def gather(
    results: Sequence[InferqResult],
    timeout: float | None = None,
    *,
    return_exceptions: bool = False,
) -> list[Any]:
    """Every result's value, in order. A failed request raises its typed error, or stands in the
    list as the error with ``return_exceptions=True``; ``TimeoutError`` names how many are still
    pending when ``timeout`` passes (the others' values stay cached on their results)."""
    if not results:
        return []
    waits = [asyncio.ensure_future(r.async_get(propagate=False)) for r in results]
    _, pending = await asyncio.wait(waits, timeout=timeout)
    for waiting in pending:
        waiting.cancel()
    if pending:
        raise TimeoutError(f"gather: {len(pending)} of {len(results)} results still pending")
    values = [w.result() for w in waits]
    if not return_exceptions:
        for value in values:
            if isinstance(value, BaseException):
                raise value
    return values
