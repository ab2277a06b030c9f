"""The job coordinator: runs submitted plans on the generator and keeps their state.

One coordinator serves the whole application (every ingress replica asks it),
and every state it reports is also written to the object store
(``JobRecords``), so a restarted coordinator resumes what was unfinished and
answers for what was finished. Ray-free: the deployment injects how a plan is
started on a generator (``StartJob``) and which errors mean a lost replica.

A job's life: queued (waiting here for an in-flight slot, or in the
generator's batch queue) → running (its batch is on the GPU; progress per
diffusion step) → succeeded / failed / cancelled. A generator replica lost
mid-job costs one retry; a second loss fails the job with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ..errors import Conflict, ServiceError, StorageMisconfigured, Unavailable
from ..progress import STAGE_ORDER, GenerationCancelled, Progress
from ..responses import GenerateResponse
from ..schemas import GenerationPlan
from ..storage import StorageConfigError, StorageError
from .models import ItemProgress, JobError, JobProgress, JobRecord, JobStatus, WebhookDelivery
from .records import JobNotFound, JobRecords
from .webhooks import WebhookSender

logger = logging.getLogger(__name__)


class JobStream(Protocol):
    """A plan running on a generator: yields lists of ``Progress``, then the ``GenerateResponse``."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    def cancel(self) -> None: ...


StartJob = Callable[[GenerationPlan], JobStream]


class JobConflict(Conflict):
    """409: the job is finished; it can no longer be cancelled."""


class JobStoreUnavailable(Unavailable):
    """503: the coordinator has not read its jobs back yet because the object store is unreachable."""

    def __init__(self, message: str = "", fields=None) -> None:
        super().__init__(
            message
            or "jobs are unavailable: the job store (object storage) cannot be reached; "
            "jobs resume by themselves once it returns, retry later",
            fields,
        )


@dataclass(frozen=True)
class CoordinatorConfig:
    max_in_flight: int = 64
    """Jobs sent to the generators at once; the rest wait here, in submission order."""
    max_attempts: int = 2
    persist_interval_s: float = 1.0
    """Progress is written to the store at most this often per job; state changes at once."""
    watch_interval_s: float = 0.25
    """A watcher hears of progress at most this often (each step would be a call per watcher); the end at once."""
    retained_jobs: int = 10_000
    """Finished jobs kept in memory; older ones are read back from the store."""
    finish_write_attempts: int = 5
    busy_backoff_s: float = 1.0
    """First wait before re-sending a job the generators refused as busy; doubles up to the max."""
    max_busy_backoff_s: float = 30.0
    recovery_backoff_s: float = 1.0
    """First wait before reading the store again when recovery found it unreachable; doubles up to the max."""
    max_recovery_backoff_s: float = 30.0
    recovery_wait_s: float = 5.0
    """How long a call made while the store is unreachable waits for recovery before its 503."""


def _now() -> datetime:
    return datetime.now(UTC)


class _Job:
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


def initial_progress(plan: GenerationPlan) -> JobProgress:
    total = plan.params.batch_settings().total_steps
    items = [ItemProgress(seed=seed, total_steps=total) for seed in plan.params.actual_seeds]
    return JobProgress(total_steps=total, items=items)


class JobCoordinator:
    def __init__(
        self,
        records: JobRecords,
        start: StartJob,
        *,
        is_replica_lost: Callable[[BaseException], bool] = lambda exc: False,
        is_transient: Callable[[BaseException], bool] = lambda exc: False,
        webhooks: WebhookSender | None = None,
        config: CoordinatorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = records
        self._start = start
        self._is_replica_lost = is_replica_lost
        self._is_transient = is_transient
        self._webhooks = webhooks or WebhookSender()
        self.config = config or CoordinatorConfig()
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._waiting: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._tail_s: float | None = None
        """Measured seconds from a job's last diffusion step to its result (decode, encode, upload)."""
        self._background: set[asyncio.Task] = set()
        """Follow-ups (final record, webhook, marker): ``close`` cancels them, a restarted coordinator redoes them."""
        self._writes: set[asyncio.Task] = set()
        """Progress records being written: ``close`` lets them land, so the store holds the last state seen."""
        self._recovered = asyncio.Event()
        self._recovered.set()  # nothing to wait for until start_recovery() is called
        self._retry_recovery = asyncio.Event()
        self._recovery_error: StorageError | None = None
        """Why the last read of the job store failed, while recovery waits for it."""

    # -------------------------------------------------------------- start-up

    def start_recovery(self) -> None:
        """Recover in the background, retrying with backoff until the store answers.

        Until then every call waits up to ``recovery_wait_s`` (and wakes the
        retry at once), then answers ``JobStoreUnavailable`` (503). So a
        coordinator starts, and becomes useful, whether or not its store is up.
        """
        self._recovered.clear()
        self._in_background(self._recover_until_done())

    @property
    def recovered(self) -> bool:
        return self._recovered.is_set()

    async def _recover_until_done(self) -> None:
        delay = self.config.recovery_backoff_s
        while True:
            self._retry_recovery.clear()
            try:
                resumed = await self.recover()
            except StorageError as exc:
                if self._recovery_error is None:
                    logger.error("the job store cannot be read; jobs wait for it (retrying in the background): %s", exc)
                self._recovery_error = exc
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_recovery.wait(), delay)
                delay = min(2 * delay, self.config.max_recovery_backoff_s)
                continue
            if self._recovery_error is not None:
                logger.warning("the job store is back; %d unfinished job(s) resumed", resumed)
            self._recovery_error = None
            self._recovered.set()
            return

    async def _ready(self) -> None:
        if self._recovered.is_set():
            return
        self._retry_recovery.set()
        try:
            await asyncio.wait_for(self._recovered.wait(), self.config.recovery_wait_s)
        except TimeoutError:
            if isinstance(self._recovery_error, StorageConfigError):
                raise StorageMisconfigured.because(self._recovery_error.public_message) from None
            raise JobStoreUnavailable() from None

    def health(self) -> dict[str, str]:
        """``{"jobs": "ready"}``, or ``"waiting for storage"`` with the reason (for operators)."""
        if self.recovered:
            return {"jobs": "ready"}
        error = self._recovery_error
        if isinstance(error, StorageConfigError):
            problem = error.public_message
        else:
            problem = "the object store cannot be reached" if error else "reading the job store"
        return {"jobs": "waiting for storage", "jobs_problem": problem}

    # ------------------------------------------------------------------ public

    async def submit(self, plan: GenerationPlan, webhook_url: str | None = None) -> JobStatus:
        """Accept a plan; ``Unavailable`` (503) if the job cannot be recorded, and then nothing runs."""
        await self._ready()
        job_id = plan.request_id
        if job_id in self._jobs:
            raise ValueError(f"job {job_id} already exists")
        webhook = WebhookDelivery(url=webhook_url) if webhook_url else None
        status = JobStatus(
            job_id=job_id, status="queued", created_at=_now(), progress=initial_progress(plan), webhook=webhook
        )
        job = _Job(JobRecord(status=status, plan=plan))
        # Marker first: a record without a marker would never be resumed after a restart.
        try:
            await asyncio.to_thread(self.records.mark_active, job_id)
            await asyncio.to_thread(self.records.save, job.record())
        except StorageError as exc:
            logger.error("job %s could not be recorded: %s", job_id, exc)
            await asyncio.to_thread(self._clear_marker_quietly, job_id)
            if isinstance(exc, StorageConfigError):
                raise StorageMisconfigured.because(exc.public_message) from None
            raise Unavailable("the job store is unavailable; the job was not accepted, retry later") from None
        job.persisted_at = self._clock()
        self._enqueue(job)
        return self._public(job)

    async def status(self, job_id: str) -> JobStatus:
        await self._ready()
        job = self._jobs.get(job_id)
        if job is not None:
            return self._public(job)
        return (await asyncio.to_thread(self.records.load, job_id)).status

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job at once, a running one at its next diffusion step."""
        await self._ready()
        job = self._jobs.get(job_id)
        if job is None:
            status = await self.status(job_id)  # JobNotFound for an unknown id
            raise JobConflict(f"job {job_id} is already {status.status}")
        if job.status.finished:
            if job.status.status == "cancelled":
                return self._public(job)
            raise JobConflict(f"job {job_id} is already {job.status.status}")
        if job.finishing:  # the job is being recorded as finished right now: report how it ended
            await job.ended.wait()
            if job.status.status != "cancelled":
                raise JobConflict(f"job {job_id} is already {job.status.status}")
            return self._public(job)
        job.cancel_requested = True
        if job.stream is not None:
            job.stream.cancel()
        await self._finish(job, "cancelled")
        return self._public(job)

    async def wait_for_change(self, job_id: str, version: int, timeout_s: float) -> tuple[int, JobStatus]:
        """Long poll: the job's status once its version exceeds ``version``, or after ``timeout_s``."""
        await self._ready()
        job = self._jobs.get(job_id)
        if job is None:
            status = await self.status(job_id)
            if not status.finished:
                # Recorded as unfinished but not running here (its final record was lost):
                # nothing will change, so do not let the caller poll in a tight loop.
                await asyncio.sleep(timeout_s)
            return max(version, 0), status
        if job.version <= version:
            try:
                await asyncio.wait_for(job.changed.wait(), timeout_s)
                await asyncio.wait_for(job.ended.wait(), self.config.watch_interval_s)
            except TimeoutError:
                pass
        return job.version, self._public(job)

    async def recover(self) -> int:
        """Resume the unfinished jobs an earlier coordinator left in the store; returns how many.

        Raises ``StorageError`` when the store cannot be read, having changed nothing,
        so it can simply be called again.
        """
        resumed = []
        for job_id in await asyncio.to_thread(self.records.active_ids):
            try:
                record = await asyncio.to_thread(self.records.load, job_id)
            except JobNotFound:
                await asyncio.to_thread(self._clear_marker_quietly, job_id)
                continue
            resumed.append(_Job(record))
        for job in resumed:
            self._jobs[job.status.job_id] = job
        resumed.sort(key=lambda job: job.status.created_at)
        for job in resumed:
            if job.status.finished:
                # The earlier coordinator stopped between the final record and its follow-up.
                job.follow_up = self._in_background(self._after_finish(job))
            elif job.status.attempts >= self.config.max_attempts:
                logger.warning(
                    "job %s not resumed: interrupted by restarts in all %d attempts",
                    job.status.job_id,
                    job.status.attempts,
                )
                await self._finish(
                    job,
                    "failed",
                    error=JobError(
                        type="interrupted",
                        message=f"the job was interrupted {job.status.attempts} times by service restarts",
                    ),
                )
            else:
                logger.info(
                    "job %s resumed after a restart: attempt %d of %d",
                    job.status.job_id,
                    job.status.attempts + 1,
                    self.config.max_attempts,
                )
                self._restart_progress(job)
                self._enqueue(job)
        return len(resumed)

    async def close(self) -> None:
        """Stop: running jobs and follow-ups are cancelled (the next coordinator resumes them from
        the store), record writes already under way land first."""
        running = [job.task for job in self._jobs.values() if job.task is not None]
        tasks = [task for task in (*running, *self._background) if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._writes, return_exceptions=True)

    # --------------------------------------------------------------- running

    def _enqueue(self, job: _Job) -> None:
        self._jobs[job.status.job_id] = job
        self._waiting[job.status.job_id] = None
        job.task = asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: _Job) -> None:
        backoff = self.config.busy_backoff_s
        async with self._slots:
            while not job.cancel_requested and not job.status.finished:
                job.status.attempts += 1
                job.touch()
                try:
                    result = await self._attempt(job)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure ends in a job state, never in a lost task
                    if job.cancel_requested or job.status.finished:
                        return
                    if isinstance(exc, GenerationCancelled):
                        await self._finish(job, "cancelled")
                    elif self._is_transient(exc):
                        # The generators are busy or scaling: not this job's fault, so not an attempt.
                        job.status.attempts -= 1
                        self._restart_progress(job)
                        await asyncio.sleep(backoff)
                        backoff = min(2 * backoff, self.config.max_busy_backoff_s)
                    elif self._is_replica_lost(exc) and job.status.attempts < self.config.max_attempts:
                        logger.warning(
                            "job %s lost its generator replica (%s): retrying, attempt %d of %d",
                            job.status.job_id,
                            exc,
                            job.status.attempts + 1,
                            self.config.max_attempts,
                        )
                        self._restart_progress(job)
                    elif self._is_replica_lost(exc):
                        message = f"the generator replica running the job was lost {job.status.attempts} times"
                        await self._finish(job, "failed", error=JobError(type="replica_lost", message=message))
                    else:
                        await self._finish(job, "failed", error=self._describe(exc))
                    continue
                finally:
                    job.stream = None
                if not job.cancel_requested:
                    await self._finish(job, "succeeded", result=result)

    async def _attempt(self, job: _Job) -> GenerateResponse:
        job.stream = self._start(job.plan)
        result: GenerateResponse | None = None
        async for event in job.stream:
            if isinstance(event, GenerateResponse):
                result = event
            else:
                self._on_progress(job, event)
        if result is None:
            raise RuntimeError("the generator's stream ended without a result")
        if job.last_step_at is not None:
            tail = self._clock() - job.last_step_at
            self._tail_s = tail if self._tail_s is None else 0.8 * self._tail_s + 0.2 * tail
        return result

    def _restart_progress(self, job: _Job) -> None:
        job.status = job.status.model_copy(
            update={"status": "queued", "started_at": None, "progress": initial_progress(job.plan)}
        )
        job.running_since = job.last_step_at = None
        self._waiting[job.status.job_id] = None
        job.touch()

    def _on_progress(self, job: _Job, events: Iterable[Progress]) -> None:
        if job.status.finished:
            return
        items = job.status.progress.items
        for event in events:
            item = items[event.item]
            if STAGE_ORDER[event.stage] < STAGE_ORDER[item.stage]:
                continue
            if event.stage == "running" and event.step > item.step:
                job.last_step_at = self._clock()
            item.stage = event.stage
            item.step = max(item.step, event.step)
        slowest = min(items, key=lambda item: (STAGE_ORDER[item.stage], item.step))
        progress = job.status.progress
        progress.stage, progress.step = slowest.stage, max(progress.step, slowest.step)
        became_running = job.status.status == "queued" and progress.stage != "queued"
        if became_running:
            job.status.status = "running"
            job.status.started_at = _now()
            job.running_since = self._clock()
            self._waiting.pop(job.status.job_id, None)
        job.touch()
        if became_running or self._clock() - job.persisted_at >= self.config.persist_interval_s:
            job.persisted_at = self._clock()
            self._in_background(self._persist(job), self._writes)

    def _in_background(self, work, tasks: set[asyncio.Task] | None = None) -> asyncio.Task:
        tasks = self._background if tasks is None else tasks
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(tasks.discard)
        return task

    # --------------------------------------------------------------- finishing

    async def _finish(
        self,
        job: _Job,
        state: str,
        *,
        result: GenerateResponse | None = None,
        error: JobError | None = None,
    ) -> None:
        if job.status.finished or job.finishing:
            return
        job.finishing = True
        status = job.status.model_copy(
            update={"status": state, "finished_at": _now(), "result": result, "error": error}, deep=True
        )
        if result is not None:
            for item in status.progress.items:
                item.stage, item.step = "done", item.total_steps
            status.progress.stage, status.progress.step = "done", status.progress.total_steps
        # Recorded before anyone is told when the store allows, so a final state a client
        # saw survives a restart; if it does not, the follow-up keeps trying.
        durable = await self._persist(job, attempts=self.config.finish_write_attempts, status=status)
        job.status = status
        self._waiting.pop(status.job_id, None)
        job.ended.set()
        job.touch()
        # Webhook retries take seconds: they must not hold a slot or a DELETE.
        job.follow_up = self._in_background(self._after_finish(job, durable))

    async def _after_finish(self, job: _Job, durable: bool = True) -> None:
        """Make the final record durable, call the webhook (once), then drop the active marker.

        The marker goes last: until it does, a restarted coordinator finds the job
        and finishes this follow-up (or, with no final record, runs the job again).
        """
        delay = 1.0
        while not durable:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 60.0)
            durable = await self._persist(job)
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
            await self._persist(job, attempts=self.config.finish_write_attempts)
        await asyncio.to_thread(self._clear_marker_quietly, job.status.job_id)
        self._finished[job.status.job_id] = None
        while len(self._finished) > self.config.retained_jobs:
            old_id, _ = self._finished.popitem(last=False)
            self._jobs.pop(old_id, None)

    async def _persist(self, job: _Job, attempts: int = 1, status: JobStatus | None = None) -> bool:
        """Write the job's record (``status`` if given); True once it is in the store."""
        delay = 0.5
        async with job.lock:
            for attempt in range(1, attempts + 1):
                try:
                    await asyncio.to_thread(self.records.save, job.record(status))
                    return True
                except StorageError as exc:
                    if attempt == attempts:
                        logger.error("could not record job %s in the object store: %s", job.status.job_id, exc)
                        return False
                    await asyncio.sleep(delay)
                    delay *= 2
        return False

    def _clear_marker_quietly(self, job_id: str) -> None:
        try:
            self.records.clear_active(job_id)
        except StorageError as exc:
            logger.warning("could not clear the active marker of job %s: %s", job_id, exc)

    @staticmethod
    def _describe(exc: Exception) -> JobError:
        if isinstance(exc, ServiceError):
            return JobError(type=exc.type, message=exc.message)
        logger.error("job failed unexpectedly", exc_info=exc)
        return JobError(type="internal_error", message="the generator failed unexpectedly; see the server log")

    # ----------------------------------------------------------------- views

    def _public(self, job: _Job) -> JobStatus:
        return job.status.model_copy(
            update={"queue_position": self._queue_position(job), "eta_s": self._eta(job)}, deep=True
        )

    def _queue_position(self, job: _Job) -> int | None:
        if job.status.status != "queued":
            return None
        for position, job_id in enumerate(self._waiting):
            if job_id == job.status.job_id:
                return position
        return None

    def _eta(self, job: _Job) -> float | None:
        progress = job.status.progress
        if job.status.finished:
            return 0.0 if job.status.status == "succeeded" else None
        if job.running_since is None or job.last_step_at is None or progress.step == 0:
            return None
        per_step = (job.last_step_at - job.running_since) / progress.step
        remaining = per_step * (progress.total_steps - progress.step) - (self._clock() - job.last_step_at)
        return max(0.0, remaining) + (self._tail_s or 0.0)
