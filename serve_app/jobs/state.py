"""A job as the coordinator holds it in memory: its status, its run, its estimates.

The coordinator decides what happens to a job; this module keeps what one job
knows about itself (the record it would write, how long it has left) and the
pure mappings a status is built from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Protocol

from ..errors import ServiceError
from ..schemas import GenerationPlan
from .models import ItemProgress, JobError, JobProgress, JobRecord, JobStatus

logger = logging.getLogger(__name__)


class JobStream(Protocol):
    """A plan running on a generator: yields lists of ``Progress``, then the ``GenerateResponse``."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    def cancel(self) -> None: ...


def now() -> datetime:
    return datetime.now(UTC)


class LiveJob:
    def __init__(self, record: JobRecord) -> None:
        self.status = record.status
        self.plan = record.plan
        self.version = 0
        self.changed = asyncio.Event()
        self.stream: JobStream | None = None
        self.task: asyncio.Task | None = None
        self.cancel_requested = False
        self.lock = asyncio.Lock()
        self.persisted_at = 0.0
        self.running_since: float | None = None
        self.last_step_at: float | None = None
        self.follow_up: asyncio.Task | None = None
        self.finishing = False
        self.ended = asyncio.Event()
        if record.status.finished:
            self.ended.set()

    def touch(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def record(self, status: JobStatus | None = None) -> JobRecord:
        return JobRecord(status=(status or self.status).model_copy(deep=True), plan=self.plan)

    def eta_s(self, clock: Callable[[], float], tail_s: float | None) -> float | None:
        """Seconds left: the remaining steps at the measured step time, then ``tail_s`` to the result."""
        progress = self.status.progress
        if self.status.finished:
            return 0.0 if self.status.status == "succeeded" else None
        if self.running_since is None or self.last_step_at is None or progress.step == 0:
            return None
        per_step = (self.last_step_at - self.running_since) / progress.step
        remaining = per_step * (progress.total_steps - progress.step) - (clock() - self.last_step_at)
        return max(0.0, remaining) + (tail_s or 0.0)


def initial_progress(plan: GenerationPlan) -> JobProgress:
    total = plan.params.batch_settings().total_steps
    items = [ItemProgress(seed=seed, total_steps=total) for seed in plan.params.actual_seeds]
    return JobProgress(total_steps=total, items=items)


def describe_failure(exc: Exception) -> JobError:
    """The error a failed job reports: a service error's own words, anything else only in the log."""
    if isinstance(exc, ServiceError):
        return JobError(type=exc.type, message=exc.message)
    logger.error("job failed unexpectedly", exc_info=exc)
    return JobError(type="internal_error", message="the generator failed unexpectedly; see the server log")
