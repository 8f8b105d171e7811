"""One model version a worker holds: its runner, batcher, messages in hand, and the queues it
fetches from.

A version fetches its own queue (``inferq.<m>@<v>``); the serving version also the model's
unversioned one (``inferq.<m>``), and during a rollout that failed, the failed version's queue
when its input spec is the same (nothing queued for it is left behind). Each queue has its own
fetch loop and stop event, so a rollout moves a queue from one version to another between
batches while both keep computing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from queue import Queue

from inferq.shared.spec import InputSpec
from inferq.worker.batcher import MicroBatcher
from inferq.worker.fetcher import Fetcher
from inferq.worker.inhand import InHand
from inferq.worker.intake import InferenceRequest
from inferq.worker.metrics import CLIENT_ERROR_REASONS
from inferq.worker.repository import ModelVersion
from inferq.worker.runner import Outcome, PreparedBatch, Runner


class FailureCount:
    """Server-side failures among a version's first ``limit`` outcomes (the canary guard).

    Failures the caller caused (``InvalidInput``, ``DeadlineExceeded``, ...) are not the
    version's fault and are not counted as failures.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.failed = 0
        self._lock = threading.Lock()

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        with self._lock:
            for o in outcomes[: max(0, self.limit - self.seen)]:
                self.seen += 1
                if o.error is not None and o.error.reason not in CLIENT_ERROR_REASONS:
                    self.failed += 1

    def rate(self) -> float | None:
        """The failure rate over the first ``limit`` outcomes; None until there were that many."""
        with self._lock:
            return self.failed / self.limit if self.seen >= self.limit else None


@dataclass
class FetchLoop:
    """A fetcher over one queue, the event that stops it and the thread that runs it."""

    fetcher: Fetcher
    stop: threading.Event
    thread: threading.Thread


@dataclass
class Served:
    """One model version this worker holds."""

    model: ModelVersion
    spec: InputSpec
    runner: Runner
    batcher: MicroBatcher[InferenceRequest]
    in_hand: InHand
    warmup_s: dict[int, float]
    failures: FailureCount
    # One prepared batch waits here while the one before it computes.
    ready: Queue[PreparedBatch | None] = field(default_factory=lambda: Queue(maxsize=1))
    #: The queues it fetches, by name.
    fetches: dict[str, FetchLoop] = field(default_factory=dict)
    #: Its prepare and run threads (they end once it is retired or the worker stops).
    threads: list[threading.Thread] = field(default_factory=list)
    #: Set once its queues are closed: the prepare thread ends when the batcher is empty.
    retiring: threading.Event = field(default_factory=threading.Event)
    #: Requests that waited for their eta in fetch loops since stopped.
    left: list[InferenceRequest] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def label(self) -> str:
        return f"{self.model.name}@{self.model.version}"

    def end_runs(self) -> None:
        """Tell each of the model's run threads to end once the batches before are computed."""
        for _ in range(self.model.config.instances):
            self.ready.put(None)

    def unstarted(self) -> list[InferenceRequest]:
        """Everything held that has not started: waiting in the batcher or for its eta."""
        return self.batcher.drain() + self.take_delayed()

    def take_delayed(self) -> list[InferenceRequest]:
        left, self.left = self.left, []
        return left + [r for loop in self.fetches.values() for r in loop.fetcher.take_delayed()]

    def stop_fetching(self, queues: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        """Stop the fetch loops of ``queues`` (all by default) and wait for them: what their
        last round took is in the batcher (or given back) when this returns."""
        names = list(self.fetches) if queues is None else [q for q in queues if q in self.fetches]
        for name in names:
            self.fetches[name].stop.set()
        for name in names:
            self.fetches[name].thread.join(timeout)
            self.left += self.fetches.pop(name).fetcher.take_delayed()

    def idle(self) -> bool:
        """Nothing held: no message in hand, none waiting in the batcher."""
        return self.in_hand.count == 0 and len(self.batcher) == 0
