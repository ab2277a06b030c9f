"""The keyed pull scheduler, with a worker the test finishes by hand and a fake clock: no wall-clock waits."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.generation.batching import KeyedBatcher

from .fake_clock import FakeClock, settled


class Worker:
    """Runs each batch until the test finishes it, so the test decides when the worker is busy."""

    def __init__(self, finish_at_once: bool = False) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.finish_at_once = finish_at_once
        self._gates: list[asyncio.Event] = []

    async def __call__(self, key, items):
        self.batches.append((key, list(items)))
        gate = asyncio.Event()
        self._gates.append(gate)
        if self.finish_at_once:
            gate.set()
        await gate.wait()
        return [f"{key}:{item}" for item in items]

    async def running(self, count: int) -> None:
        """Wait until ``count`` batches have started."""
        await settled(lambda: len(self.batches) >= count)

    def finish_all(self) -> None:
        self.finish_at_once = True
        for gate in self._gates:
            gate.set()


def batcher(worker, clock, cap=4, wait=0.05):
    return KeyedBatcher(worker, max_batch_size=lambda key: cap, max_wait_s=wait, clock=clock, sleep=clock.sleep)


def test_items_of_one_key_share_a_batch_and_keys_never_mix():
    async def scenario():
        worker, clock = Worker(finish_at_once=True), FakeClock()
        scheduler = batcher(worker, clock)
        calls = [asyncio.ensure_future(scheduler.submit("30s", f"a{i}")) for i in range(3)]
        calls.append(asyncio.ensure_future(scheduler.submit("60s", "b0")))
        await settled(lambda: scheduler.queued() == 4 and clock.sleeping() == 1)
        assert worker.batches == []  # nothing is full: both keys wait for batch-mates
        clock.advance(0.05)
        return worker, await asyncio.gather(*calls)

    worker, results = asyncio.run(scenario())
    assert sorted(tuple(items) for _, items in worker.batches) == [("a0", "a1", "a2"), ("b0",)]
    assert [info.size for _, info in results] == [3, 3, 3, 1]
    assert [info.queue_wait_s for _, info in results] == pytest.approx([0.05] * 4)
    assert results[0][0] == "30s:a0"


def test_a_full_queue_runs_at_once_and_the_cap_bounds_batch_size():
    async def scenario():
        worker, clock = Worker(finish_at_once=True), FakeClock()
        scheduler = batcher(worker, clock, cap=2, wait=10.0)
        calls = asyncio.gather(*(scheduler.submit("k", i) for i in range(4)))
        await settled(calls.done)  # the clock never moves: only full queues can run
        return worker

    worker = asyncio.run(scenario())
    assert [len(items) for _, items in worker.batches] == [2, 2]


def test_batches_form_while_the_worker_is_busy():
    async def scenario():
        worker, clock = Worker(), FakeClock()
        scheduler = batcher(worker, clock, cap=8, wait=0.01)
        first = asyncio.ensure_future(scheduler.submit("k", "early"))
        await settled(lambda: clock.sleeping() == 1)
        clock.advance(0.01)
        await worker.running(1)
        late = [asyncio.ensure_future(scheduler.submit("k", f"late{i}")) for i in range(5)]
        await settled(lambda: scheduler.queued() == 5)
        clock.advance(1.0)  # ready long ago, but the worker is busy: they wait together
        worker.finish_all()
        await asyncio.gather(first, *late)
        return worker

    worker = asyncio.run(scenario())
    assert [len(items) for _, items in worker.batches] == [1, 5]


def test_the_longest_waiting_ready_queue_goes_first():
    async def scenario():
        worker, clock = Worker(), FakeClock()
        scheduler = batcher(worker, clock, cap=2, wait=0.0)
        blocker = asyncio.ensure_future(scheduler.submit("x", "blocker"))
        await worker.running(1)
        old = asyncio.ensure_future(scheduler.submit("quiet", "old"))
        clock.advance(0.01)
        busy = [asyncio.ensure_future(scheduler.submit("busy", i)) for i in range(2)]  # full, but younger
        await settled(lambda: scheduler.queued() == 3)
        worker.finish_all()
        await asyncio.gather(blocker, old, *busy)
        return worker

    worker = asyncio.run(scenario())
    assert [key for key, _ in worker.batches] == ["x", "quiet", "busy"]


def test_cancelled_callers_are_dropped_before_their_batch_starts():
    async def scenario():
        worker, clock = Worker(), FakeClock()
        scheduler = batcher(worker, clock, cap=8, wait=0.0)
        blocker = asyncio.ensure_future(scheduler.submit("k", "blocker"))
        await worker.running(1)
        keep = asyncio.ensure_future(scheduler.submit("k", "keep"))
        gone = asyncio.ensure_future(scheduler.submit("k", "gone"))
        await settled(lambda: scheduler.queued() == 2)
        gone.cancel()
        worker.finish_all()
        await asyncio.gather(blocker, keep)
        return worker

    worker = asyncio.run(scenario())
    assert worker.batches[1] == ("k", ["keep"])


def test_close_cancels_the_running_batch_and_the_queued_callers():
    async def scenario():
        worker, clock = Worker(), FakeClock()
        scheduler = batcher(worker, clock, cap=1, wait=0.0)
        running = asyncio.ensure_future(scheduler.submit("k", "running"))
        await worker.running(1)
        queued = asyncio.ensure_future(scheduler.submit("k", "queued"))
        await settled(lambda: scheduler.queued() == 1)
        await scheduler.close()
        return await asyncio.gather(running, queued, return_exceptions=True), scheduler.queued()

    results, left = asyncio.run(scenario())
    assert all(isinstance(result, asyncio.CancelledError) for result in results) and left == 0


def test_a_failing_batch_fails_every_caller_with_its_error():
    async def broken(key, items):
        raise RuntimeError("CUDA error: device-side assert")

    async def scenario():
        scheduler = KeyedBatcher(broken, max_batch_size=lambda key: 4, max_wait_s=0.0)
        return await asyncio.gather(scheduler.submit("k", 1), scheduler.submit("k", 2), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(result, RuntimeError) for result in results)


def test_per_item_failures_reach_only_their_callers():
    async def partly(key, items):
        return [ValueError("bad") if item == "bad" else item for item in items]

    async def scenario():
        scheduler = KeyedBatcher(partly, max_batch_size=lambda key: 4, max_wait_s=0.0)
        return await asyncio.gather(scheduler.submit("k", "ok"), scheduler.submit("k", "bad"), return_exceptions=True)

    ok, bad = asyncio.run(scenario())
    assert ok[0] == "ok" and isinstance(bad, ValueError)
