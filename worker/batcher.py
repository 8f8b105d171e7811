"""A time/size-windowed micro-batcher that knows nothing of Celery, Redis or torch.

Rules for closing a batch, checked whenever the runner asks for one (it only asks when idle):

1. it holds ``cap`` items (``max_batch_size``, or lower while the runner recovers from OOM);
2. it holds the largest preferred batch size that fits under ``cap``;
3. ``max_wait_s`` has passed since its oldest item arrived;
4. nothing more is on its way (the feeder drained the queue): waiting could only add latency,
   so everything held (up to ``cap``) goes at once.

When closing on size or time with more on the way, the batch is cut to the largest preferred size
that fits (Triton's rule); the rest, the newest items, lead the next batch.

Items are held in arrival order; the feeder says whether more are coming with each ``put``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Arrived(Protocol):
    received_at: float


T = TypeVar("T", bound=Arrived)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_wait_s: float
    preferred_batch_sizes: tuple[int, ...] = ()

    def early_close_size(self, cap: int) -> int:
        """The size at which a batch closes without waiting: the largest preferred size <= cap."""
        fitting = [s for s in self.preferred_batch_sizes if s <= cap]
        return max(fitting) if fitting else cap

    def round_down(self, size: int) -> int:
        """The largest preferred size <= ``size`` (the rest joins the next batch), else ``size``."""
        fitting = [s for s in self.preferred_batch_sizes if s <= size]
        return max(fitting) if fitting else size


class MicroBatcher(Generic[T]):
    def __init__(self, policy: BatchPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._more_coming = False
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, items: Iterable[T], more_coming: bool) -> None:
        with self._cond:
            self._items.extend(items)
            self._more_coming = more_coming
            self._cond.notify_all()

    def put_front(self, items: Iterable[T]) -> None:
        """Return items taken in a batch that could not run, ahead of everything else."""
        with self._cond:
            self._items.extendleft(reversed(list(items)))
            self._cond.notify_all()

    def set_more_coming(self, more_coming: bool) -> None:
        with self._cond:
            self._more_coming = more_coming
            self._cond.notify_all()

    def close(self) -> None:
        """Wake the runner; items still held are returned by :meth:`next_batch` until empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[T]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def next_batch(self, timeout: float, cap: int | None = None) -> list[T]:
        """Block up to ``timeout`` s for a batch; ``[]`` if none closed in that time."""
        limit = (
            self.policy.max_batch_size
            if cap is None
            else max(1, min(cap, self.policy.max_batch_size))
        )
        give_up = self._clock() + timeout
        with self._cond:
            while True:
                size, wait = self._decide(limit)
                if size:
                    return [self._items.popleft() for _ in range(size)]
                remaining = give_up - self._clock()
                if remaining <= 0:
                    return []
                self._cond.wait(min(remaining, wait) if wait is not None else remaining)

    def _decide(self, limit: int) -> tuple[int, float | None]:
        """(items to take now, or 0 and how long to wait before deciding again; None = until woken)."""
        n = len(self._items)
        if n == 0:
            return 0, None
        if self._closed or not self._more_coming:
            return min(n, limit), None
        age = self._clock() - self._items[0].received_at
        if n >= self.policy.early_close_size(limit) or age >= self.policy.max_wait_s:
            return self.policy.round_down(min(n, limit)), None
        return 0, self.policy.max_wait_s - age
