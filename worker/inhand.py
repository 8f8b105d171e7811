"""Messages a worker holds: counted from fetch to ack, and given back when they will not start.

The fetcher adds what it takes, the writer counts off what it acknowledges, and whatever the
worker will not start (warm shutdown, a device failure, a fetch finished while stopping) goes
back to its queue through ``give_back``, the one place that returns held messages early.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from inferq.shared.logs import get_logger
from inferq.shared.redisconn import CONNECTION_ERRORS
from inferq.worker.broker import QueueBroker

log = get_logger(__name__)


class InHand:
    """Messages taken from Redis and not yet acknowledged, bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._cond = threading.Condition()

    def room(self) -> int:
        with self._cond:
            return max(0, self.limit - self.count)

    def add(self, n: int) -> None:
        with self._cond:
            self.count += n

    def done(self, n: int) -> None:
        with self._cond:
            self.count -= n
            self._cond.notify_all()

    def wait_for_room(self, timeout: float) -> None:
        with self._cond:
            if self.count >= self.limit:
                self._cond.wait(timeout)


def give_back(broker: QueueBroker, in_hand: InHand, tags: Sequence[str]) -> None:
    """Put held, unstarted messages back on their queues now, and stop counting them. If Redis
    cannot take them now, they stay unacked and come back after the visibility timeout."""
    if not tags:
        return
    try:
        restored = broker.restore(tags)
        log.info("returned unstarted messages to their queues", count=restored)
    except CONNECTION_ERRORS:
        log.warning(
            "could not return messages now; they come back after the visibility timeout",
            count=len(tags),
        )
    in_hand.done(len(tags))
