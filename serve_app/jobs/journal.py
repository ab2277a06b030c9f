"""What the store and the outside world hear about a job: its record, its active marker, its webhook.

The coordinator decides a job's state; the journal makes it durable. Writes
are retried with backoff, and a job's final follow-up (durable record, one
webhook call, marker removed) runs to the end however long the store is away.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import StorageMisconfigured, Unavailable
from ..storage import StorageConfigError, StorageError
from .models import JobRecord, JobStatus
from .records import JobNotFound, JobRecords
from .state import LiveJob
from .webhooks import WebhookSender

logger = logging.getLogger(__name__)


class JobJournal:
    def __init__(self, records: JobRecords, webhooks: WebhookSender, *, finish_write_attempts: int) -> None:
        self._records = records
        self._webhooks = webhooks
        self._finish_write_attempts = finish_write_attempts

    async def open(self, job: LiveJob) -> None:
        """Record a new job; ``Unavailable`` (503) or ``StorageMisconfigured`` if the store refuses it."""
        job_id = job.status.job_id
        # Marker first: a record without a marker would never be resumed after a restart.
        try:
            await asyncio.to_thread(self._records.mark_active, job_id)
            await asyncio.to_thread(self._records.save, job.record())
        except StorageError as exc:
            logger.error("job %s could not be recorded: %s", job_id, exc)
            await asyncio.to_thread(self._clear_marker_quietly, job_id)
            if isinstance(exc, StorageConfigError):
                raise StorageMisconfigured.because(exc.public_message) from None
            raise Unavailable("the job store is unavailable; the job was not accepted, retry later") from None

    async def unfinished(self) -> list[JobRecord]:
        """The records of the jobs still marked active; ``StorageError`` if the store cannot be read."""
        records = []
        for job_id in await asyncio.to_thread(self._records.active_ids):
            try:
                records.append(await asyncio.to_thread(self._records.load, job_id))
            except JobNotFound:
                await asyncio.to_thread(self._clear_marker_quietly, job_id)
        return records

    async def save(self, job: LiveJob, attempts: int = 1, status: JobStatus | None = None) -> bool:
        """Write the job's record (``status`` if given); True once it is in the store."""
        delay = 0.5
        async with job.lock:
            for attempt in range(1, attempts + 1):
                try:
                    await asyncio.to_thread(self._records.save, job.record(status))
                    return True
                except StorageError as exc:
                    if attempt == attempts:
                        logger.error("could not record job %s in the object store: %s", job.status.job_id, exc)
                        return False
                    await asyncio.sleep(delay)
                    delay *= 2
        return False

    async def save_final(self, job: LiveJob, status: JobStatus) -> bool:
        return await self.save(job, attempts=self._finish_write_attempts, status=status)

    async def follow_up(self, job: LiveJob, durable: bool = True) -> None:
        """Make the final record durable, call the webhook (once), then drop the active marker.

        The marker goes last: until it does, a restarted coordinator finds the job
        and finishes this follow-up (or, with no final record, runs the job again).
        """
        delay = 1.0
        while not durable:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 60.0)
            durable = await self.save(job)
        webhook = job.status.webhook
        if webhook is not None and not webhook.delivered:
            body = job.status.model_dump_json().encode()
            outcome = await self._webhooks.deliver(webhook.url, job.status.job_id, body)
            job.status.webhook = webhook.model_copy(
                update={
                    "delivered": outcome.delivered,
                    "attempts": webhook.attempts + outcome.attempts,
                    "last_error": outcome.last_error,
                }
            )
            job.touch()
            await self.save(job, attempts=self._finish_write_attempts)
        await asyncio.to_thread(self._clear_marker_quietly, job.status.job_id)

    def _clear_marker_quietly(self, job_id: str) -> None:
        try:
            self._records.clear_active(job_id)
        except StorageError as exc:
            logger.warning("could not clear the active marker of job %s: %s", job_id, exc)
