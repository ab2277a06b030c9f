"""Start-up recovery: the coordinator reads its jobs back from the store, retrying until it answers.

A coordinator starts whether or not its store is up. Until the jobs are read
back, every call waits a little for them (and wakes the retry at once), then
answers 503, or the store's configuration problem when a setting is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine

from ..errors import StorageMisconfigured, Unavailable
from ..storage import StorageConfigError, StorageError

logger = logging.getLogger(__name__)


class JobStoreUnavailable(Unavailable):
    """503: the coordinator has not read its jobs back yet because the object store is unreachable."""

    def __init__(self, message: str = "", fields=None) -> None:
        super().__init__(
            message
            or "jobs are unavailable: the job store (object storage) cannot be reached; "
            "jobs resume by themselves once it returns, retry later",
            fields,
        )


class StoreRecovery:
    """Runs ``read_back`` (which raises ``StorageError`` having changed nothing) until it succeeds."""

    def __init__(
        self,
        read_back: Callable[[], Awaitable[int]],
        *,
        backoff_s: float,
        max_backoff_s: float,
        wait_s: float,
    ) -> None:
        self._read_back = read_back
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._wait_s = wait_s
        self._recovered = asyncio.Event()
        self._recovered.set()  # nothing to wait for until start() is called
        self._retry = asyncio.Event()
        self._error: StorageError | None = None
        """Why the last read of the job store failed, while recovery waits for it."""

    def start(self, spawn: Callable[[Coroutine], object]) -> None:
        """Mark the jobs unrecovered now, and hand the retrying read to ``spawn`` to run in the background."""
        self._recovered.clear()
        spawn(self._until_done())

    @property
    def recovered(self) -> bool:
        return self._recovered.is_set()

    async def _until_done(self) -> None:
        delay = self._backoff_s
        while True:
            self._retry.clear()
            try:
                resumed = await self._read_back()
            except StorageError as exc:
                if self._error is None:
                    logger.error("the job store cannot be read; jobs wait for it (retrying in the background): %s", exc)
                self._error = exc
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry.wait(), delay)
                delay = min(2 * delay, self._max_backoff_s)
                continue
            if self._error is not None:
                logger.warning("the job store is back; %d unfinished job(s) resumed", resumed)
            self._error = None
            self._recovered.set()
            return

    async def ready(self) -> None:
        """Return once the jobs are read back; else ``JobStoreUnavailable`` or ``StorageMisconfigured``."""
        if self._recovered.is_set():
            return
        self._retry.set()
        try:
            await asyncio.wait_for(self._recovered.wait(), self._wait_s)
        except TimeoutError:
            if isinstance(self._error, StorageConfigError):
                raise StorageMisconfigured.because(self._error.public_message) from None
            raise JobStoreUnavailable() from None

    def health(self) -> dict[str, str]:
        """``{"jobs": "ready"}``, or ``"waiting for storage"`` with the reason (for operators)."""
        if self.recovered:
            return {"jobs": "ready"}
        error = self._error
        if isinstance(error, StorageConfigError):
            problem = error.public_message
        else:
            problem = "the object store cannot be reached" if error else "reading the job store"
        return {"jobs": "waiting for storage", "jobs_problem": problem}
