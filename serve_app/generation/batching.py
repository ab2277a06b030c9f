"""A pull scheduler that batches work items by key.

The worker (one GPU) runs one batch at a time. Whenever it is free, the
scheduler looks at the per-key queues and takes a *ready* one: full (at its
per-key size cap) or holding an item that has waited ``max_wait_s``. Among
ready queues it serves the one whose head has waited longest, so busy keys
cannot starve quiet ones. Batches are formed only when the worker is free,
which keeps them large under load (``@serve.batch`` instead closes a batch when
its timer fires, whether or not the worker is free).

Time comes from ``clock`` and ``sleep``, so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Entry(Generic[Item]):
    item: Item
    future: asyncio.Future
    enqueued_at: float


@dataclass
class BatchInfo:
    """What a caller learns about the batch its item ran in."""

    size: int
    queue_wait_s: float


RunBatch = Callable[[Key, Sequence[Item]], Awaitable[Sequence[Result | BaseException]]]


class KeyedBatcher(Generic[Key, Item, Result]):
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: Callable[[Key], int],
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._sleep = sleep
        self._queues: OrderedDict[Key, list[_Entry[Item]]] = OrderedDict()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def submit(self, key: Key, item: Item) -> tuple[Result, BatchInfo]:
        """Queue ``item`` under ``key``; resolves with its result once its batch ran.

        Cancelling the caller before its batch starts removes the item; a
        running batch cannot be interrupted here (the runner may offer that).
        """
        self._ensure_loop()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(_Entry(item, future, self._clock()))
        self._arrived.set()
        return await future

    def queued(self) -> int:
        return sum(len(entries) for entries in self._queues.values())

    def queued_by_key(self) -> dict[Key, int]:
        """Items waiting per key (the running batch excluded)."""
        return {key: len(entries) for key, entries in self._queues.items()}

    def _store(self, key: Key, entries: list[_Entry[Item]]) -> None:
        if entries:
            self._queues[key] = entries
        else:
            self._queues.pop(key, None)

    async def close(self) -> None:
        """Stop scheduling: queued callers and a running batch are cancelled."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for entries in self._queues.values():
            for entry in entries:
                entry.future.cancel()
        self._queues.clear()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._serve_forever())

    async def _serve_forever(self) -> None:
        while True:
            self._drop_cancelled()
            key, wake_at = self._next_ready(self._clock())
            if key is None:
                self._arrived.clear()
                await self._arrival_or_deadline(None if wake_at is None else max(0.0, wake_at - self._clock()))
                continue
            await self._run(key)

    async def _arrival_or_deadline(self, timeout_s: float | None) -> None:
        arrival = asyncio.ensure_future(self._arrived.wait())
        waits = {arrival} if timeout_s is None else {arrival, asyncio.ensure_future(self._sleep(timeout_s))}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _drop_cancelled(self) -> None:
        for key in list(self._queues):
            self._store(key, [entry for entry in self._queues[key] if not entry.future.done()])

    def _next_ready(self, now: float) -> tuple[Key | None, float | None]:
        """The ready key with the longest-waiting head, else when to look again."""
        best_key, best_head, wake_at = None, None, None
        for key, entries in self._queues.items():
            head = entries[0].enqueued_at
            deadline = head + self._max_wait_s
            if len(entries) >= self._max_batch_size(key) or deadline <= now:
                if best_head is None or head < best_head:
                    best_key, best_head = key, head
            elif wake_at is None or deadline < wake_at:
                wake_at = deadline
        return best_key, wake_at

    async def _run(self, key: Key) -> None:
        entries = self._queues[key]
        size = self._max_batch_size(key)
        batch, rest = entries[:size], entries[size:]
        self._store(key, rest)
        started = self._clock()
        try:
            results = await self._run_batch(key, [entry.item for entry in batch])
        except asyncio.CancelledError:
            for entry in batch:
                entry.future.cancel()
            raise
        except Exception as exc:  # the whole batch failed: every caller learns why
            results = [exc] * len(batch)
        for entry, result in zip(batch, results):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result((result, BatchInfo(len(batch), started - entry.enqueued_at)))
