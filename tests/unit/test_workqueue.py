"""The work queue: one worker per key, bursts collapse, per-key backoff, timers."""

from __future__ import annotations

import asyncio

from cloudcred.workqueue import WorkQueue


def run(scenario):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_a_burst_of_adds_is_one_reconcile() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("q")
        for _ in range(100):
            queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        assert [await queue.get(), await queue.get()] == ["a", "b"]

    run(scenario)


def test_a_key_added_while_held_runs_again_after_done_never_twice_at_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("q")
        queue.add("a")
        held = await queue.get()
        queue.add("a")  # a change while a worker reconciles it
        assert len(queue) == 0, "a second worker must not get the key it holds"
        queue.done(held)
        assert len(queue) == 1
        assert await queue.get() == "a"

    run(scenario)


def test_waiting_workers_are_woken_one_per_key() -> None:
    async def scenario() -> None:
        queue: WorkQueue[int] = WorkQueue("q")
        got: list[int] = []

        async def worker() -> None:
            key = await queue.get()
            got.append(key)
            queue.done(key)

        workers = [asyncio.create_task(worker()) for _ in range(3)]
        await asyncio.sleep(0)
        for key in (1, 2, 3):
            queue.add(key)
        await asyncio.gather(*workers)
        assert sorted(got) == [1, 2, 3]

    run(scenario)


def test_failures_back_off_per_key_and_forget_resets() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("q", base_delay=0.01, max_delay=0.04)
        delays = [queue.add_rate_limited("bad") for _ in range(4)]
        assert delays == [0.01, 0.02, 0.04, 0.04]  # doubles, capped
        assert queue.add_rate_limited("good") == 0.01  # another key is not slowed
        queue.forget("bad")
        assert queue.add_rate_limited("bad") == 0.01

    run(scenario)


def test_a_rate_limited_key_comes_back_after_its_delay() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("q", base_delay=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue.add_rate_limited("a")
        assert len(queue) == 0
        assert await queue.get() == "a"
        assert loop.time() - started >= 0.04

    run(scenario)


def test_add_after_keeps_the_earliest_timer_and_add_now_wins() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("q")
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.01)  # earlier: replaces
        queue.add_after("a", 5.0)  # later: ignored
        assert await queue.get() == "a"
        queue.done("a")
        queue.add_after("b", 5.0)
        queue.add("b")  # now: the timer is dropped
        assert await queue.get() == "b"
        queue.done("b")
        await asyncio.wait_for(queue.idle(), 1.0)  # no timer left behind

    run(scenario)


def test_idle_waits_for_waiting_and_running_keys_not_for_retries() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("q")
        queue.add("a")
        queue.add("b")
        key = await queue.get()
        idle = asyncio.create_task(queue.idle())
        await asyncio.sleep(0.01)
        assert not idle.done(), "idle while a key waits"
        queue.done(key)
        key = await queue.get()
        await asyncio.sleep(0.01)
        assert not idle.done(), "idle while a key is being reconciled"
        queue.add_rate_limited(key)  # it failed: a retry is timed
        queue.done(key)
        await asyncio.wait_for(idle, 1.0)  # a failing object does not hold others up
        assert await queue.get() == "b"

    run(scenario)


def test_settled_waits_for_a_quiet_spell_not_a_gap_between_two_keys() -> None:
    async def scenario() -> None:
        queue: WorkQueue[int] = WorkQueue("q")
        settled = asyncio.create_task(queue.settled(0.2))
        for key in range(5):  # a stream of new objects, each handled at once
            queue.add(key, arrival=True)
            queue.done(await queue.get())
            await asyncio.sleep(0.05)
            assert not settled.done(), "settled between two changes of a stream"
        queue.add(99)  # a change of a known object (a write's echo) is no arrival
        queue.done(await queue.get())
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(settled, 1.0)
        assert asyncio.get_running_loop().time() - started >= 0.1

    run(scenario)


def test_a_burst_is_arriving_until_it_settles_and_burst_settled_waits_for_the_next() -> None:
    async def scenario() -> None:
        queue: WorkQueue[int] = WorkQueue("q")
        assert not queue.arriving
        waiter = asyncio.create_task(queue.burst_settled(0.05))
        await asyncio.sleep(0.1)
        assert not waiter.done(), "no burst has begun"
        queue.add(0)  # a change of a known object is no burst
        assert not queue.arriving
        queue.done(await queue.get())
        queue.add(1, arrival=True)
        assert queue.arriving
        queue.done(await queue.get())
        assert queue.arriving, "until it has settled"
        await asyncio.wait_for(waiter, 1.0)
        assert not queue.arriving
        queue.add_after(2, 10.0)
        assert queue.timed() == [2]

    run(scenario)
