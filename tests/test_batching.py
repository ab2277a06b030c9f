"""The keyed pull scheduler, with a fake worker and plain asyncio."""

from __future__ import annotations

import asyncio

from serve_app.generation.batching import KeyedBatcher


class Worker:
    def __init__(self, seconds: float = 0.05) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.seconds = seconds

    async def __call__(self, key, items):
        self.batches.append((key, list(items)))
        await asyncio.sleep(self.seconds)
        return [f"{key}:{item}" for item in items]


def batcher(worker, cap=4, wait=0.05):
    return KeyedBatcher(worker, max_batch_size=lambda key: cap, max_wait_s=wait)


def test_items_of_one_key_share_a_batch_and_keys_never_mix():
    async def scenario():
        worker = Worker()
        scheduler = batcher(worker)
        calls = [scheduler.submit("30s", f"a{i}") for i in range(3)] + [scheduler.submit("60s", "b0")]
        results = await asyncio.gather(*calls)
        return worker, results

    worker, results = asyncio.run(scenario())
    assert sorted(tuple(items) for _, items in worker.batches) == [("a0", "a1", "a2"), ("b0",)]
    assert [info.size for _, info in results] == [3, 3, 3, 1]
    assert results[0][0] == "30s:a0"


def test_a_full_queue_runs_at_once_and_the_cap_bounds_batch_size():
    async def scenario():
        worker = Worker()
        scheduler = batcher(worker, cap=2, wait=10.0)
        results = await asyncio.wait_for(asyncio.gather(*(scheduler.submit("k", i) for i in range(4))), 5)
        return worker, results

    worker, results = asyncio.run(scenario())
    assert [len(items) for _, items in worker.batches] == [2, 2]


def test_batches_form_while_the_worker_is_busy():
    async def scenario():
        worker = Worker(seconds=0.2)
        scheduler = batcher(worker, cap=8, wait=0.01)
        first = asyncio.ensure_future(scheduler.submit("k", "early"))
        await asyncio.sleep(0.05)  # the first batch is running now
        late = [asyncio.ensure_future(scheduler.submit("k", f"late{i}")) for i in range(5)]
        await asyncio.gather(first, *late)
        return worker

    worker = asyncio.run(scenario())
    assert [len(items) for _, items in worker.batches] == [1, 5]


def test_the_longest_waiting_ready_queue_goes_first():
    async def scenario():
        worker = Worker(seconds=0.1)
        scheduler = batcher(worker, cap=2, wait=0.0)
        blocker = asyncio.ensure_future(scheduler.submit("x", "blocker"))
        await asyncio.sleep(0.02)
        old = asyncio.ensure_future(scheduler.submit("quiet", "old"))
        await asyncio.sleep(0.01)
        busy = [asyncio.ensure_future(scheduler.submit("busy", i)) for i in range(2)]
        await asyncio.gather(blocker, old, *busy)
        return worker

    worker = asyncio.run(scenario())
    assert [key for key, _ in worker.batches] == ["x", "quiet", "busy"]


def test_cancelled_callers_are_dropped_before_their_batch_starts():
    async def scenario():
        worker = Worker(seconds=0.1)
        scheduler = batcher(worker, cap=8, wait=0.0)
        blocker = asyncio.ensure_future(scheduler.submit("k", "blocker"))
        await asyncio.sleep(0.02)
        keep = asyncio.ensure_future(scheduler.submit("k", "keep"))
        gone = asyncio.ensure_future(scheduler.submit("k", "gone"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(blocker, keep)
        return worker

    worker = asyncio.run(scenario())
    assert worker.batches[1] == ("k", ["keep"])


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
