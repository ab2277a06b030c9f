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

The coordinator decides; its helpers keep a job in memory (``state``), write
it to the store and call its webhook (``journal``), and read the jobs back at
start-up (``recovery``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import Conflict
from ..progress import STAGE_ORDER, GenerationCancelled, Progress
from ..responses import GenerateResponse
from ..schemas import GenerationPlan
from .journal import JobJournal
from .models import JobError, JobRecord, JobStatus, WebhookDelivery
from .records import JobRecords
from .recovery import StoreRecovery
from .state import JobStream, LiveJob, describe_failure, initial_progress, now
from .webhooks import WebhookSender

logger = logging.getLogger(__name__)

StartJob = Callable[[GenerationPlan], JobStream]


class JobConflict(Conflict):
    """409: the job is finished; it can no longer be cancelled."""


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
        self.config = config or CoordinatorConfig()
        self._journal = JobJournal(
            records, webhooks or WebhookSender(), finish_write_attempts=self.config.finish_write_attempts
        )
        self._clock = clock
        self._jobs: dict[str, LiveJob] = {}
        self._waiting: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._tail_s: float | None = None
        """Measured seconds from a job's last diffusion step to its result (decode, encode, upload)."""
        self._background: set[asyncio.Task] = set()
        """Follow-ups (final record, webhook, marker): ``close`` cancels them, a restarted coordinator redoes them."""
        self._writes: set[asyncio.Task] = set()
        """Progress records being written: ``close`` lets them land, so the store holds the last state seen."""
        self._recovery = StoreRecovery(
            self.recover,
            backoff_s=self.config.recovery_backoff_s,
            max_backoff_s=self.config.max_recovery_backoff_s,
            wait_s=self.config.recovery_wait_s,
        )

    # -------------------------------------------------------------- start-up

    def start_recovery(self) -> None:
        """Recover in the background, retrying with backoff until the store answers.

        Until then every call waits up to ``recovery_wait_s`` (and wakes the
        retry at once), then answers ``JobStoreUnavailable`` (503). So a
        coordinator starts, and becomes useful, whether or not its store is up.
        """
        self._recovery.start(self._in_background)

    @property
    def recovered(self) -> bool:
        return self._recovery.recovered

    def health(self) -> dict[str, str]:
        """``{"jobs": "ready"}``, or ``"waiting for storage"`` with the reason (for operators)."""
        return self._recovery.health()

    # ------------------------------------------------------------------ public

    async def submit(self, plan: GenerationPlan, webhook_url: str | None = None) -> JobStatus:
        """Accept a plan; ``Unavailable`` (503) if the job cannot be recorded, and then nothing runs."""
        await self._recovery.ready()
        job_id = plan.request_id
        if job_id in self._jobs:
            raise ValueError(f"job {job_id} already exists")
        webhook = WebhookDelivery(url=webhook_url) if webhook_url else None
        status = JobStatus(
            job_id=job_id, status="queued", created_at=now(), progress=initial_progress(plan), webhook=webhook
        )
        job = LiveJob(JobRecord(status=status, plan=plan))
        await self._journal.open(job)
        job.persisted_at = self._clock()
        self._enqueue(job)
        return self._public(job)

    async def status(self, job_id: str) -> JobStatus:
        await self._recovery.ready()
        job = self._jobs.get(job_id)
        if job is not None:
            return self._public(job)
        return (await asyncio.to_thread(self.records.load, job_id)).status

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job at once, a running one at its next diffusion step."""
        await self._recovery.ready()
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
        await self._recovery.ready()
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
        resumed = [LiveJob(record) for record in await self._journal.unfinished()]
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

    def _enqueue(self, job: LiveJob) -> None:
        self._jobs[job.status.job_id] = job
        self._waiting[job.status.job_id] = None
        job.task = asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: LiveJob) -> None:
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
                        await self._finish(job, "failed", error=describe_failure(exc))
                    continue
                finally:
                    job.stream = None
                if not job.cancel_requested:
                    await self._finish(job, "succeeded", result=result)

    async def _attempt(self, job: LiveJob) -> GenerateResponse:
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

    def _restart_progress(self, job: LiveJob) -> None:
        job.status = job.status.model_copy(
            update={"status": "queued", "started_at": None, "progress": initial_progress(job.plan)}
        )
        job.running_since = job.last_step_at = None
        self._waiting[job.status.job_id] = None
        job.touch()

    def _on_progress(self, job: LiveJob, events: Iterable[Progress]) -> None:
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
            job.status.started_at = now()
            job.running_since = self._clock()
            self._waiting.pop(job.status.job_id, None)
        job.touch()
        if became_running or self._clock() - job.persisted_at >= self.config.persist_interval_s:
            job.persisted_at = self._clock()
            self._in_background(self._journal.save(job), self._writes)

    def _in_background(self, work, tasks: set[asyncio.Task] | None = None) -> asyncio.Task:
        tasks = self._background if tasks is None else tasks
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(tasks.discard)
        return task

    # --------------------------------------------------------------- finishing

    async def _finish(
        self,
        job: LiveJob,
        state: str,
        *,
        result: GenerateResponse | None = None,
        error: JobError | None = None,
    ) -> None:
        if job.status.finished or job.finishing:
            return
        job.finishing = True
        status = job.status.model_copy(
            update={"status": state, "finished_at": now(), "result": result, "error": error}, deep=True
        )
        if result is not None:
            for item in status.progress.items:
                item.stage, item.step = "done", item.total_steps
            status.progress.stage, status.progress.step = "done", status.progress.total_steps
        # Recorded before anyone is told when the store allows, so a final state a client
        # saw survives a restart; if it does not, the follow-up keeps trying.
        durable = await self._journal.save_final(job, status)
        job.status = status
        self._waiting.pop(status.job_id, None)
        job.ended.set()
        job.touch()
        # Webhook retries take seconds: they must not hold a slot or a DELETE.
        job.follow_up = self._in_background(self._after_finish(job, durable))

    async def _after_finish(self, job: LiveJob, durable: bool = True) -> None:
        """The journal's follow-up (record, webhook, marker), then the job leaves memory in its turn."""
        await self._journal.follow_up(job, durable)
        self._finished[job.status.job_id] = None
        while len(self._finished) > self.config.retained_jobs:
            old_id, _ = self._finished.popitem(last=False)
            self._jobs.pop(old_id, None)

    # ----------------------------------------------------------------- views

    def _public(self, job: LiveJob) -> JobStatus:
        return job.status.model_copy(
            update={"queue_position": self._queue_position(job), "eta_s": job.eta_s(self._clock, self._tail_s)},
            deep=True,
        )

    def _queue_position(self, job: LiveJob) -> int | None:
        if job.status.status != "queued":
            return None
        for position, job_id in enumerate(self._waiting):
            if job_id == job.status.job_id:
                return position
        return None
