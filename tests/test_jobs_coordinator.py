"""The job coordinator with plain asyncio: a scripted generator stream and a local store."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest

from serve_app.errors import StorageMisconfigured, Unavailable
from serve_app.jobs import CoordinatorConfig, JobConflict, JobCoordinator, JobNotFound, JobRecords
from serve_app.jobs.webhooks import DeliveryOutcome
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams
from serve_app.progress import STAGE_ORDER, Progress
from serve_app.responses import GenerateResponse
from serve_app.schemas import GenerationPlan, Output
from serve_app.storage import LocalStore, StorageConfigError, StorageUnavailableError

from .fake_clock import settled

STEPS = 4


def make_plan(seeds=(1,)) -> GenerationPlan:
    values = {**ACESTEP_DEFAULTS, "infer_step": STEPS, "audio_duration": 2.0}
    params = GenerationParams(model="ace-step-v1-tiny", prompt="lofi", actual_seeds=tuple(seeds), **values)
    return GenerationPlan(
        request_id=secrets.token_hex(16),
        preset=None,
        params=params,
        output=Output(format="wav", sample_rate=48000),
    )


def response_for(plan: GenerationPlan) -> GenerateResponse:
    return GenerateResponse(
        request_id=plan.request_id, model=plan.params.model, preset=None, outputs=[], params={}, timings={}
    )


class ReplicaLost(Exception):
    pass


class GeneratorsBusy(Exception):
    pass


class Cancelled(Exception):
    pass


class ScriptedStream:
    """Yields queued, then one event per step (each waiting for the test's go-ahead), then the result."""

    def __init__(self, generator: ScriptedGenerator, plan: GenerationPlan) -> None:
        self.generator = generator
        self.plan = plan
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.generator.cancelled.append(self.plan.request_id)

    async def __aiter__(self):
        seeds = range(len(self.plan.params.actual_seeds))
        rid = self.plan.request_id
        yield [Progress(rid, index, "queued", 0, STEPS) for index in seeds]
        failure = self.generator.failures.get(rid)
        if failure:
            self.generator.failures[rid] = failure[1:]
            raise failure[0]
        yield [Progress(rid, index, "running", 0, STEPS) for index in seeds]
        for step in range(1, STEPS + 1):
            await self.generator.gate(rid)
            if self.cancelled:
                raise Cancelled()
            yield [Progress(rid, index, "running", step, STEPS) for index in seeds]
        yield [Progress(rid, index, "encoding", STEPS, STEPS) for index in seeds]
        yield response_for(self.plan)


class ScriptedGenerator:
    def __init__(self, hold: bool = False) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.failures: dict[str, list[Exception]] = {}
        self.hold = hold
        self.release = asyncio.Event()

    async def gate(self, request_id: str) -> None:
        if self.hold:
            await self.release.wait()
        else:
            await asyncio.sleep(0)

    def __call__(self, plan: GenerationPlan) -> ScriptedStream:
        self.started.append(plan.request_id)
        return ScriptedStream(self, plan)


class RecordingWebhooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def deliver(self, url, job_id, body):
        self.calls.append((url, job_id))
        return DeliveryOutcome(True, 1)


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def coordinator(store, generator, **config) -> tuple[JobCoordinator, RecordingWebhooks]:
    config.setdefault("watch_interval_s", 0.0)  # watchers hear of every change at once: no throttle to wait out
    webhooks = RecordingWebhooks()
    return (
        JobCoordinator(
            JobRecords(store),
            generator,
            is_replica_lost=lambda exc: isinstance(exc, ReplicaLost),
            is_transient=lambda exc: isinstance(exc, GeneratorsBusy),
            webhooks=webhooks,
            config=CoordinatorConfig(**config),
        ),
        webhooks,
    )


async def follow_ups_done(jobs: JobCoordinator) -> None:
    """Webhook delivery and marker removal run after a job is reported finished."""
    await asyncio.gather(*(job.follow_up for job in jobs._jobs.values() if job.follow_up))


async def wait_for_status(jobs: JobCoordinator, job_id: str, reached, timeout_s: float = 30.0):
    """The job's status once ``reached(status)`` holds, woken by the coordinator's change events.

    The timeout only stops a broken test from hanging; nothing here depends on time passing.
    """
    version = -1
    async with asyncio.timeout(timeout_s):
        while True:
            version, status = await jobs.wait_for_change(job_id, version, timeout_s)
            if reached(status):
                return status


async def wait_finished(jobs: JobCoordinator, job_id: str):
    return await wait_for_status(jobs, job_id, lambda status: status.finished)


async def wait_running(jobs: JobCoordinator, job_id: str):
    return await wait_for_status(jobs, job_id, lambda status: status.status == "running")


def test_a_job_runs_to_success_with_rising_progress_and_is_recorded(store):
    async def scenario():
        jobs, _ = coordinator(store, ScriptedGenerator())
        accepted = await jobs.submit(make_plan(seeds=(3, 4)))
        assert accepted.status == "queued" and accepted.queue_position == 0
        seen, version = [], -1
        while True:
            version, status = await jobs.wait_for_change(accepted.job_id, version, 1.0)
            seen.append((status.progress.stage, status.progress.step))
            if status.finished:
                break
        await follow_ups_done(jobs)
        await jobs.close()
        return status, seen

    status, seen = asyncio.run(scenario())
    assert status.status == "succeeded" and status.result.request_id == status.job_id
    assert status.attempts == 1 and status.progress.step == status.progress.total_steps == STEPS
    assert seen == sorted(seen, key=lambda entry: (STAGE_ORDER[entry[0]], entry[1]))
    assert seen[-1] == ("done", STEPS)
    records = JobRecords(store)
    assert records.load(status.job_id).status.status == "succeeded"
    assert records.active_ids() == []


def test_queued_jobs_report_their_position_and_run_in_order(store):
    async def scenario():
        generator = ScriptedGenerator(hold=True)
        jobs, _ = coordinator(store, generator, max_in_flight=1)
        ids = [(await jobs.submit(make_plan())).job_id for _ in range(3)]
        await wait_running(jobs, ids[0])
        positions = [(await jobs.status(job_id)).queue_position for job_id in ids]
        states = [(await jobs.status(job_id)).status for job_id in ids]
        generator.release.set()
        finals = [await wait_finished(jobs, job_id) for job_id in ids]
        await jobs.close()
        return positions, states, finals, generator.started, ids

    positions, states, finals, started, ids = asyncio.run(scenario())
    assert states == ["running", "queued", "queued"]
    assert positions == [None, 0, 1]
    assert [status.status for status in finals] == ["succeeded"] * 3
    assert started == ids


def test_cancel_a_queued_job_at_once_and_a_running_one_while_others_finish(store):
    async def scenario():
        generator = ScriptedGenerator(hold=True)
        jobs, _ = coordinator(store, generator, max_in_flight=2)
        running, other, queued = [(await jobs.submit(make_plan())).job_id for _ in range(3)]
        await wait_running(jobs, running)
        cancelled_queued = await jobs.cancel(queued)
        cancelled_running = await jobs.cancel(running)
        generator.release.set()
        finished_other = await wait_finished(jobs, other)
        await jobs.close()
        return cancelled_queued, cancelled_running, finished_other, generator, queued, running

    cancelled_queued, cancelled_running, finished_other, generator, queued, running = asyncio.run(scenario())
    assert cancelled_queued.status == "cancelled" and cancelled_running.status == "cancelled"
    assert queued not in generator.started  # never sent to a generator
    assert generator.cancelled == [running]
    assert finished_other.status == "succeeded"


def test_cancelling_a_finished_job_is_a_conflict_and_cancelling_twice_is_idempotent(store):
    async def scenario():
        generator = ScriptedGenerator(hold=True)
        jobs, _ = coordinator(store, generator)
        done = (await jobs.submit(make_plan())).job_id
        other = (await jobs.submit(make_plan())).job_id
        await jobs.cancel(other)
        again = await jobs.cancel(other)
        generator.release.set()
        await wait_finished(jobs, done)
        with pytest.raises(JobConflict):
            await jobs.cancel(done)
        await jobs.close()
        return again

    assert asyncio.run(scenario()).status == "cancelled"


def test_a_lost_replica_is_retried_once_then_the_job_fails_with_the_reason(store, caplog):
    async def scenario():
        generator = ScriptedGenerator()
        jobs, _ = coordinator(store, generator)
        once, twice = make_plan(), make_plan()
        generator.failures[once.request_id] = [ReplicaLost("replica died")]
        generator.failures[twice.request_id] = [ReplicaLost("replica died"), ReplicaLost("replica died again")]
        await jobs.submit(once)
        await jobs.submit(twice)
        results = await wait_finished(jobs, once.request_id), await wait_finished(jobs, twice.request_id)
        await jobs.close()
        return results

    caplog.set_level(logging.INFO, logger="serve_app.jobs")
    retried, failed = asyncio.run(scenario())
    assert retried.status == "succeeded" and retried.attempts == 2
    assert (
        f"job {retried.job_id} lost its generator replica (replica died): retrying, attempt 2 of 2" in caplog.messages
    )
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.error.type == "replica_lost" and "lost 2 times" in failed.error.message
    assert "traceback" not in failed.error.message.lower()


def test_service_errors_fail_the_job_with_their_message(store):
    async def scenario():
        generator = ScriptedGenerator()
        jobs, _ = coordinator(store, generator)
        plan = make_plan()
        generator.failures[plan.request_id] = [Unavailable("object storage is unavailable")]
        await jobs.submit(plan)
        status = await wait_finished(jobs, plan.request_id)
        await jobs.close()
        return status

    status = asyncio.run(scenario())
    assert status.status == "failed" and status.attempts == 1
    assert status.error.type == "unavailable" and status.error.message == "object storage is unavailable"


def test_unknown_and_malformed_job_ids_are_not_found(store):
    async def scenario():
        jobs, _ = coordinator(store, ScriptedGenerator())
        for job_id in (secrets.token_hex(16), "../../etc/passwd", ""):
            with pytest.raises(JobNotFound):
                await jobs.status(job_id)
            with pytest.raises(JobNotFound):
                await jobs.cancel(job_id)

    asyncio.run(scenario())


def test_a_new_coordinator_reads_finished_jobs_and_resumes_unfinished_ones(store, caplog):
    async def scenario():
        first_generator = ScriptedGenerator(hold=True)
        first, _ = coordinator(store, first_generator)
        finished_plan, unfinished_plan = make_plan(), make_plan()
        await first.submit(finished_plan)
        first_generator.hold = False
        first_generator.release.set()
        await wait_finished(first, finished_plan.request_id)
        first_generator.hold = True
        first_generator.release = asyncio.Event()
        await first.submit(unfinished_plan)
        await wait_running(first, unfinished_plan.request_id)
        await first.close()  # the coordinator dies mid-job

        second_generator = ScriptedGenerator()
        second, _ = coordinator(store, second_generator)
        resumed = await second.recover()
        finished = await second.status(finished_plan.request_id)
        unfinished = await wait_finished(second, unfinished_plan.request_id)
        await second.close()
        return resumed, finished, unfinished, second_generator.started

    caplog.set_level(logging.INFO, logger="serve_app.jobs")
    resumed, finished, unfinished, started = asyncio.run(scenario())
    assert resumed == 1
    assert f"job {unfinished.job_id} resumed after a restart: attempt 2 of 2" in caplog.messages
    assert finished.status == "succeeded"
    assert unfinished.status == "succeeded" and unfinished.attempts == 2
    assert started == [unfinished.job_id]


def test_a_job_interrupted_with_no_retry_left_fails_on_recovery(store):
    async def scenario():
        generator = ScriptedGenerator(hold=True)
        first, _ = coordinator(store, generator, max_attempts=1)
        plan = make_plan()
        await first.submit(plan)
        await wait_running(first, plan.request_id)
        await first.close()
        second, _ = coordinator(store, ScriptedGenerator(), max_attempts=1)
        await second.recover()
        status = await wait_finished(second, plan.request_id)
        await second.close()
        return status

    status = asyncio.run(scenario())
    assert status.status == "failed" and status.error.type == "interrupted"


def test_each_finished_job_calls_its_webhook_exactly_once(store):
    async def scenario():
        generator = ScriptedGenerator(hold=True)
        jobs, webhooks = coordinator(store, generator)
        with_hook = [make_plan() for _ in range(3)]
        without = make_plan()
        for plan in with_hook:
            await jobs.submit(plan, webhook_url="http://127.0.0.1:9/hook")
        await jobs.submit(without)
        await jobs.cancel(with_hook[2].request_id)
        generator.release.set()
        for plan in [*with_hook, without]:
            await wait_finished(jobs, plan.request_id)
        await follow_ups_done(jobs)
        statuses = [await jobs.status(plan.request_id) for plan in with_hook]
        await jobs.close()

        again, again_hooks = coordinator(store, ScriptedGenerator())
        await again.recover()
        await again.close()
        return webhooks.calls, again_hooks.calls, statuses, with_hook

    calls, after_restart, statuses, plans = asyncio.run(scenario())
    assert sorted(job_id for _, job_id in calls) == sorted(plan.request_id for plan in plans)
    assert after_restart == []
    assert all(status.webhook.delivered and status.webhook.attempts == 1 for status in statuses)


def test_a_job_that_cannot_be_recorded_is_refused_and_never_runs(store, monkeypatch):
    def unavailable(*args, **kwargs):
        raise StorageUnavailableError("store down")

    async def scenario():
        generator = ScriptedGenerator()
        jobs, _ = coordinator(store, generator)
        monkeypatch.setattr(jobs.records, "save", unavailable)
        plan = make_plan()
        with pytest.raises(Unavailable):
            await jobs.submit(plan)
        # Not found means never enqueued: no task exists that could start it later.
        with pytest.raises(JobNotFound):
            await jobs.status(plan.request_id)
        return generator.started, jobs.records.active_ids()

    started, active = asyncio.run(scenario())
    assert started == [] and active == []


def test_eta_comes_from_measured_step_time():
    now = [100.0]

    async def scenario(store):
        generator = ScriptedGenerator(hold=True)
        jobs = JobCoordinator(
            JobRecords(store), generator, clock=lambda: now[0], config=CoordinatorConfig(watch_interval_s=0.0)
        )
        plan = make_plan()
        await jobs.submit(plan)
        await wait_running(jobs, plan.request_id)
        before = await jobs.status(plan.request_id)
        job = jobs._jobs[plan.request_id]
        now[0] += 2.0  # two seconds for the first step
        jobs._on_progress(job, [Progress(plan.request_id, 0, "running", 1, STEPS)])
        after = await jobs.status(plan.request_id)
        await jobs.close()
        return before, after

    import tempfile

    with tempfile.TemporaryDirectory() as root:
        before, after = asyncio.run(scenario(LocalStore(root)))
    assert before.status == "running" and before.eta_s is None
    assert after.eta_s == pytest.approx(2.0 * (STEPS - 1))


def test_busy_generators_delay_a_job_without_using_an_attempt(store):
    async def scenario():
        generator = ScriptedGenerator()
        jobs, _ = coordinator(store, generator, busy_backoff_s=0.01)
        plan = make_plan()
        generator.failures[plan.request_id] = [GeneratorsBusy(), GeneratorsBusy()]
        await jobs.submit(plan)
        status = await wait_finished(jobs, plan.request_id)
        await jobs.close()
        return status, generator.started

    status, started = asyncio.run(scenario())
    assert status.status == "succeeded" and status.attempts == 1 and len(started) == 3


def test_a_final_state_the_store_refused_is_recorded_once_it_is_back(store, monkeypatch):
    async def scenario():
        jobs, _ = coordinator(store, ScriptedGenerator(), finish_write_attempts=1)
        real_save = jobs.records.save
        store_down = True

        def flaky_save(record):
            if store_down and record.status.finished:
                raise StorageUnavailableError("store down")
            real_save(record)

        monkeypatch.setattr(jobs.records, "save", flaky_save)
        plan = make_plan()
        await jobs.submit(plan)
        finished = await wait_finished(jobs, plan.request_id)
        while_down = jobs.records.load(plan.request_id).status.status, jobs.records.active_ids()
        store_down = False
        await follow_ups_done(jobs)
        after = jobs.records.load(plan.request_id).status.status, jobs.records.active_ids()
        await jobs.close()
        return finished, while_down, after, plan.request_id

    finished, (stored_while_down, active_while_down), (stored_after, active_after), job_id = asyncio.run(scenario())
    assert finished.status == "succeeded"
    # Until the final record lands the marker stays, so a restart would find the job again.
    assert stored_while_down != "succeeded" and active_while_down == [job_id]
    assert stored_after == "succeeded" and active_after == []


def test_a_cancel_that_races_the_end_reports_how_the_job_ended(store, monkeypatch):
    import threading

    saving, release = threading.Event(), threading.Event()

    async def scenario():
        jobs, _ = coordinator(store, ScriptedGenerator())
        real_save = jobs.records.save

        def held_final_save(record):
            if record.status.finished:
                saving.set()  # the success is being recorded while the DELETE arrives
                release.wait(30)
            real_save(record)

        monkeypatch.setattr(jobs.records, "save", held_final_save)
        plan = make_plan()
        await jobs.submit(plan)
        await asyncio.to_thread(saving.wait, 30)
        cancel = asyncio.create_task(jobs.cancel(plan.request_id))
        await settled(lambda: jobs._jobs[plan.request_id].ended._waiters)  # the DELETE waits for the end
        release.set()
        with pytest.raises(JobConflict):
            await cancel
        status = await jobs.status(plan.request_id)
        await jobs.close()
        return status

    assert asyncio.run(scenario()).status == "succeeded"


class SwitchableStore:
    """A local store that can be taken down: every call raises ``failure`` while ``down``."""

    def __init__(self, store: LocalStore, failure: Exception | None = None) -> None:
        self.store = store
        self.down = True
        self.failure = failure or StorageUnavailableError("store down at 127.0.0.1:9")

    def __getattr__(self, name):
        operation = getattr(self.store, name)

        def call(*args, **kwargs):
            if self.down:
                raise self.failure
            return operation(*args, **kwargs)

        return call


def test_a_coordinator_started_without_its_store_answers_503_then_resumes_by_itself(store):
    async def scenario():
        earlier, _ = coordinator(store, ScriptedGenerator(hold=True))
        unfinished = make_plan()
        await earlier.submit(unfinished)
        await earlier.close()  # an unfinished job is left in the store

        switchable = SwitchableStore(store)
        jobs, _ = coordinator(switchable, ScriptedGenerator(), recovery_backoff_s=60.0, recovery_wait_s=1.0)
        jobs.start_recovery()
        with pytest.raises(Unavailable, match="storage"):
            await jobs.submit(make_plan())
        health_while_down = jobs.health()

        switchable.down = False  # a call wakes recovery at once, despite the 60 s backoff
        accepted = await jobs.submit(make_plan())
        statuses = [await wait_finished(jobs, job_id) for job_id in (unfinished.request_id, accepted.job_id)]
        await jobs.close()
        return health_while_down, jobs.health(), statuses

    health_while_down, health_after, statuses = asyncio.run(scenario())
    assert health_while_down == {"jobs": "waiting for storage", "jobs_problem": "the object store cannot be reached"}
    assert health_after == {"jobs": "ready"}
    assert [status.status for status in statuses] == ["succeeded", "succeeded"]


def test_while_recovery_meets_a_misconfigured_store_job_calls_say_so_and_are_not_retryable(store):
    rejected = StorageConfigError(
        "403 at 127.0.0.1:9", reason="the store rejected the keys", setting="MINIO_SECRET_KEY"
    )

    async def scenario():
        jobs, _ = coordinator(SwitchableStore(store, rejected), ScriptedGenerator(), recovery_wait_s=0.5)
        jobs.start_recovery()
        with pytest.raises(StorageMisconfigured) as refused:
            await jobs.submit(make_plan())
        health = jobs.health()
        await jobs.close()
        return refused.value, health

    refused, health = asyncio.run(scenario())
    assert "MINIO_SECRET_KEY" in refused.message and "127.0.0.1" not in refused.message
    assert health == {
        "jobs": "waiting for storage",
        "jobs_problem": "the store rejected the keys; check MINIO_SECRET_KEY",
    }
