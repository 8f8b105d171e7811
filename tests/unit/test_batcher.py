"""worker/batcher.py: the time/size-windowed micro-batcher, driven by a fake clock.

``next_batch`` computes its give-up time from the injected clock, so with a fake clock that nobody
advances only ``timeout=0.0`` returns when no batch closes. Every single-threaded test below uses
``timeout=0.0``; threaded tests wake the consumer explicitly.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import pytest

from inferq.worker.batcher import BatchPolicy, MicroBatcher

_ids = itertools.count()
W = 0.25  # max_wait_s in the fake-clock tests: a binary fraction, so clock sums are exact


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Item:
    received_at: float
    ident: int = field(default_factory=lambda: next(_ids))


def _items(clock: FakeClock, n: int) -> list[Item]:
    return [Item(clock.now) for _ in range(n)]


def _batcher(
    max_batch_size: int = 8, max_wait_s: float = W, preferred: tuple[int, ...] = ()
) -> tuple[MicroBatcher[Item], FakeClock]:
    clock = FakeClock()
    return MicroBatcher(BatchPolicy(max_batch_size, max_wait_s, preferred), clock=clock), clock


def _ids_of(batch: list[Item]) -> list[int]:
    return [item.ident for item in batch]


# -- BatchPolicy -------------------------------------------------------------------------------


def test_policy_early_close_size() -> None:
    policy = BatchPolicy(16, 0.01, (4, 8))
    assert policy.early_close_size(16) == 8
    assert policy.early_close_size(7) == 4
    assert policy.early_close_size(3) == 3  # no preferred size fits: the cap itself
    assert BatchPolicy(16, 0.01).early_close_size(16) == 16


def test_policy_round_down() -> None:
    policy = BatchPolicy(16, 0.01, (4, 8))
    assert policy.round_down(16) == 8
    assert policy.round_down(7) == 4
    assert policy.round_down(4) == 4
    assert policy.round_down(3) == 3
    assert BatchPolicy(16, 0.01).round_down(11) == 11


# -- closing rules -----------------------------------------------------------------------------


def test_nothing_held_gives_an_empty_batch() -> None:
    batcher, _ = _batcher()
    assert batcher.next_batch(timeout=0.0) == []


def test_closes_at_max_batch_size() -> None:
    batcher, clock = _batcher(max_batch_size=4, max_wait_s=10.0)
    items = _items(clock, 6)
    batcher.put(items, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == items[:4]
    # 2 left, young, more coming: nothing closes yet
    assert batcher.next_batch(timeout=0.0) == []
    assert len(batcher) == 2


def test_does_not_close_below_max_size_while_young_and_more_coming() -> None:
    batcher, clock = _batcher(max_batch_size=4, max_wait_s=10.0)
    batcher.put(_items(clock, 3), more_coming=True)
    assert batcher.next_batch(timeout=0.0) == []
    assert len(batcher) == 3


def test_closes_early_at_the_largest_preferred_size() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=10.0, preferred=(4, 8))
    first = _items(clock, 7)
    batcher.put(first, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == []  # 7 < 8, young
    eighth = _items(clock, 1)
    batcher.put(eighth, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == first + eighth
    assert len(batcher) == 0


def test_early_close_with_more_than_preferred_held_takes_the_preferred_size() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=10.0, preferred=(4, 8))
    items = _items(clock, 11)
    batcher.put(items, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == items[:8]
    assert batcher.next_batch(timeout=0.0) == []  # 3 left, young


def test_closes_when_max_wait_has_passed_since_the_oldest() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=W)
    oldest = Item(clock.now)
    batcher.put([oldest], more_coming=True)
    clock.advance(W * 3 / 4)
    newer = Item(clock.now)
    batcher.put([newer], more_coming=True)
    assert batcher.next_batch(timeout=0.0) == []  # oldest is 3/4 of max_wait old
    clock.advance(W / 4)
    # oldest reached max_wait; the younger item rides along
    assert batcher.next_batch(timeout=0.0) == [oldest, newer]


def test_age_is_measured_from_received_at_not_from_put() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=W)
    stale = Item(clock.now - 2 * W)  # received before it reached the batcher
    batcher.put([stale], more_coming=True)
    assert batcher.next_batch(timeout=0.0) == [stale]


def test_dispatches_at_once_when_nothing_more_is_coming() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=10.0)
    item = Item(clock.now)
    batcher.put([item], more_coming=False)
    assert batcher.next_batch(timeout=0.0) == [item]


def test_more_coming_false_ignores_preferred_sizes() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=10.0, preferred=(4, 8))
    items = _items(clock, 7)
    batcher.put(items, more_coming=False)
    assert batcher.next_batch(timeout=0.0) == items  # all 7, not rounded down to 4


def test_set_more_coming_false_releases_held_items() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=10.0)
    items = _items(clock, 3)
    batcher.put(items, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == []
    batcher.set_more_coming(False)
    assert batcher.next_batch(timeout=0.0) == items


def test_latest_put_decides_more_coming() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=10.0)
    batcher.put(_items(clock, 2), more_coming=False)
    batcher.put(_items(clock, 1), more_coming=True)
    assert batcher.next_batch(timeout=0.0) == []


# -- cap ---------------------------------------------------------------------------------------


def test_cap_limits_the_batch_size() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=10.0)
    items = _items(clock, 10)
    batcher.put(items, more_coming=False)
    assert batcher.next_batch(timeout=0.0, cap=3) == items[:3]
    assert batcher.next_batch(timeout=0.0, cap=3) == items[3:6]
    assert batcher.next_batch(timeout=0.0) == items[6:]


def test_cap_is_clamped_to_1_and_max_batch_size() -> None:
    batcher, clock = _batcher(max_batch_size=4, max_wait_s=10.0)
    items = _items(clock, 10)
    batcher.put(items, more_coming=False)
    assert batcher.next_batch(timeout=0.0, cap=100) == items[:4]
    assert batcher.next_batch(timeout=0.0, cap=0) == items[4:5]
    assert batcher.next_batch(timeout=0.0, cap=-3) == items[5:6]


def test_cap_closes_a_full_batch_while_more_is_coming() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=10.0)
    items = _items(clock, 5)
    batcher.put(items, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == []  # 5 < 16
    assert batcher.next_batch(timeout=0.0, cap=4) == items[:4]  # OOM cap: 4 is a full batch


def test_cap_picks_the_largest_preferred_size_under_it() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=10.0, preferred=(4, 8))
    items = _items(clock, 7)
    batcher.put(items, more_coming=True)
    assert batcher.next_batch(timeout=0.0, cap=6) == items[:4]


# -- round down on timeout ---------------------------------------------------------------------


def test_timeout_rounds_down_to_a_preferred_size_leaving_the_newest() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=W, preferred=(4, 8))
    old = _items(clock, 5)
    clock.advance(W / 2)
    new = _items(clock, 2)
    batcher.put(old + new, more_coming=True)
    clock.advance(W / 2)  # the oldest are max_wait old, the newest half that
    first = batcher.next_batch(timeout=0.0)
    assert first == old[:4]
    # the rest: old[4] is overdue too, so it goes now with the two newer items
    assert batcher.next_batch(timeout=0.0) == [old[4], *new]


def test_timeout_below_smallest_preferred_size_takes_everything() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=W, preferred=(4, 8))
    items = _items(clock, 3)
    batcher.put(items, more_coming=True)
    clock.advance(W)
    assert batcher.next_batch(timeout=0.0) == items


def test_rest_after_round_down_waits_its_own_window() -> None:
    batcher, clock = _batcher(max_batch_size=16, max_wait_s=W, preferred=(4,))
    old = _items(clock, 4)
    batcher.put(old, more_coming=True)
    clock.advance(W)
    young = _items(clock, 2)
    batcher.put(young, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == old
    assert batcher.next_batch(timeout=0.0) == []  # the young ones just arrived
    clock.advance(W)
    assert batcher.next_batch(timeout=0.0) == young


# -- order, close, drain -----------------------------------------------------------------------


def test_fifo_across_puts_and_batches() -> None:
    batcher, clock = _batcher(max_batch_size=3, max_wait_s=10.0)
    items = _items(clock, 10)
    for chunk in (items[:2], items[2:7], items[7:]):
        batcher.put(chunk, more_coming=True)
    batcher.set_more_coming(False)
    seen: list[Item] = []
    while batch := batcher.next_batch(timeout=0.0):
        assert len(batch) <= 3
        seen.extend(batch)
    assert _ids_of(seen) == _ids_of(items)


def test_close_returns_the_rest_then_nothing() -> None:
    batcher, clock = _batcher(max_batch_size=4, max_wait_s=10.0, preferred=(2,))
    items = _items(clock, 7)
    batcher.put(items, more_coming=True)
    assert batcher.next_batch(timeout=0.0) == items[:2]  # early close at preferred 2
    batcher.close()
    # closed: whatever is held goes, up to the cap, without rounding down or waiting
    assert batcher.next_batch(timeout=0.0) == items[2:6]
    assert batcher.next_batch(timeout=0.0) == items[6:]
    assert batcher.next_batch(timeout=0.0) == []
    assert batcher.next_batch(timeout=0.0) == []


def test_drain_takes_everything_and_empties() -> None:
    batcher, clock = _batcher(max_batch_size=2, max_wait_s=10.0)
    items = _items(clock, 5)
    batcher.put(items, more_coming=True)
    assert len(batcher) == 5
    assert batcher.drain() == items
    assert len(batcher) == 0
    assert batcher.drain() == []
    batcher.set_more_coming(False)
    assert batcher.next_batch(timeout=0.0) == []


# -- threads -----------------------------------------------------------------------------------


def _consume_in_thread(
    batcher: MicroBatcher[Item], timeout: float
) -> tuple[threading.Thread, list[list[Item]]]:
    got: list[list[Item]] = []

    def consume() -> None:
        got.append(batcher.next_batch(timeout=timeout))

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread, got


@pytest.mark.parametrize("wake", ["put", "set_more_coming", "close"])
def test_a_waiting_consumer_is_woken(wake: str) -> None:
    # fake clock that never moves: the consumer can only return if it is notified
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=10.0)
    items = _items(clock, 2)
    if wake != "put":
        batcher.put(items, more_coming=True)
    thread, got = _consume_in_thread(batcher, timeout=60.0)
    thread.join(0.05)
    assert thread.is_alive()  # held: young, more coming
    if wake == "put":
        batcher.put(items, more_coming=False)
    elif wake == "set_more_coming":
        batcher.set_more_coming(False)
    else:
        batcher.close()
    thread.join(30.0)
    assert not thread.is_alive()
    assert got == [items]


def test_a_waiting_consumer_wakes_when_the_fake_clock_passes_max_wait() -> None:
    batcher, clock = _batcher(max_batch_size=8, max_wait_s=W)
    items = _items(clock, 2)
    batcher.put(items, more_coming=True)
    thread, got = _consume_in_thread(batcher, timeout=60.0)
    thread.join(0.05)
    assert thread.is_alive()
    clock.advance(W)  # the consumer re-checks after its bounded wait and finds it overdue
    thread.join(30.0)
    assert not thread.is_alive()
    assert got == [items]


def test_threaded_producer_and_consumer_exchange_every_item_exactly_once() -> None:
    batcher: MicroBatcher[Item] = MicroBatcher(BatchPolicy(7, 0.001, (4,)))
    total = 500
    items = [Item(0.0) for _ in range(total)]
    done = threading.Event()

    def produce() -> None:
        for start in range(0, total, 13):
            chunk = items[start : start + 13]
            for item in chunk:
                item.received_at = time.monotonic()
            batcher.put(chunk, more_coming=start + 13 < total)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    received: list[Item] = []
    sizes: list[int] = []
    producer.start()
    for _ in range(100_000):  # a bound on iterations, not on time
        batch = batcher.next_batch(timeout=0.01)
        if batch:
            sizes.append(len(batch))
            received.extend(batch)
        if done.is_set() and len(received) == total:
            break
    producer.join(30.0)
    assert _ids_of(received) == _ids_of(items)  # all, once each, in order
    assert len({id(i) for i in received}) == total
    assert max(sizes) <= 7
    assert len(batcher) == 0
    assert batcher.next_batch(timeout=0.0) == []
