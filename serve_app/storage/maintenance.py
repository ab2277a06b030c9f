"""Housekeeping the store needs now and then, run by one replica (the job coordinator's).

Each round sweeps abandoned uploads (``janitor``) and applies retention
(``retention``): on S3 the lifecycle rules are set once (the store expires
objects itself), on the local store expired files are swept every round. A
store that is down only postpones a round: the next one catches up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from .errors import StorageError
from .janitor import Janitor, PendingUploads
from .local_store import LocalStore
from .minio_store import MinioStore
from .protocol import ObjectStore
from .retention import RetentionPolicy, apply_lifecycle, sweep_local

logger = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class StoreMaintenance:
    def __init__(
        self,
        store: ObjectStore,
        retention: RetentionPolicy,
        *,
        abandoned_after: timedelta,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.store = store
        self.retention = retention
        self.janitor = Janitor(PendingUploads(store, retention.jobs_prefix), abandoned_after)
        self._clock = clock
        self._lifecycle_applied = False

    def run_once(self) -> None:
        """One round (blocking); raises ``StorageError`` if the store failed, having done what it could."""
        now = self._clock()
        self.janitor.sweep(now)
        if isinstance(self.store, MinioStore) and not self._lifecycle_applied:
            apply_lifecycle(self.store, self.retention)
            self._lifecycle_applied = True
        elif isinstance(self.store, LocalStore):
            sweep_local(self.store, self.retention, now)

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except StorageError as exc:
                logger.warning("store maintenance postponed to the next round, the store failed: %s", exc)
            except Exception:  # a bug must not end housekeeping for the replica's lifetime
                logger.exception("store maintenance failed; trying again next round")
            await asyncio.sleep(interval_s)
