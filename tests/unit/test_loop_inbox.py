"""The result listener's hand-over to an event loop: calls from another thread run on the loop's
thread, in order, with one wake-up for everything queued since the last."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

from inferq.producer.backend import LoopInbox, loop_inbox


def test_calls_from_another_thread_run_on_the_loop_in_one_wake_up() -> None:
    async def main() -> tuple[list[tuple[int, int]], int]:
        loop = asyncio.get_running_loop()
        inbox = LoopInbox(loop)
        ran: list[tuple[int, int]] = []
        done = loop.create_future()
        wakes = 0
        real = loop.call_soon_threadsafe

        def counted(*args: object) -> asyncio.Handle:
            nonlocal wakes
            wakes += 1
            return real(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]

        def record(i: int) -> None:
            ran.append((i, threading.get_ident()))
            if i == 99:
                done.set_result(None)

        def listener() -> None:  # the loop is busy meanwhile: everything queues for one wake
            for i in range(100):
                inbox.put(record, i)

        thread = threading.Thread(target=listener)
        thread.start()
        thread.join()
        await done
        return ran, wakes

    ran, wakes = asyncio.run(main())
    assert [i for i, _ in ran] == list(range(100))
    assert {ident for _, ident in ran} == {threading.get_ident()}  # the loop's thread
    assert wakes == 1


def test_one_inbox_per_loop_gone_with_the_loop() -> None:
    from inferq.producer import backend

    async def inboxes() -> tuple[LoopInbox, LoopInbox, weakref.ref[asyncio.AbstractEventLoop]]:
        loop = asyncio.get_running_loop()
        return loop_inbox(loop), loop_inbox(loop), weakref.ref(loop)

    first = asyncio.run(inboxes())
    second = asyncio.run(inboxes())
    assert first[0] is first[1] and second[0] is second[1] and first[0] is not second[0]
    loops = [first[2], second[2]]
    del first, second
    gc.collect()
    assert [ref() for ref in loops] == [None, None]  # the inbox map does not keep a loop alive
    assert len(backend._inboxes) == len(list(backend._inboxes.keys()))  # no dead entries


def test_a_closed_loop_is_not_woken() -> None:
    loop = asyncio.new_event_loop()
    inbox = LoopInbox(loop)
    loop.close()
    inbox.put(print, "never")  # no RuntimeError for the listener's thread
