"""The ingress's serving logic, between the HTTP routes and the generator.

Plans requests, calls the generator through a ``GeneratorClient`` (a Serve
handle in production, an in-process engine in tests), hands jobs to the job
coordinator through a ``JobsClient``, and answers the catalog, health and
output questions. Knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import InvalidRequest, NotFound, PayloadTooLarge, ServiceError, Unavailable
from ..jobs import JobRecords, JobRequest, JobStatus
from ..metrics import NullMetrics
from ..pipeline.invalid_field import InvalidField
from ..pipeline.registry import CATALOG
from ..pipeline.tasks import SOURCE_TASKS
from ..responses import GenerateResponse, ModelInfo, PresetInfo, UploadedSource
from ..schemas import GenerateRequest, GenerationPlan
from ..sources import MAX_SOURCE_BYTES, SourceError, SourceInfo, SourceLibrary
from ..storage import (
    LocalStore,
    ObjectNotFoundError,
    ObjectStore,
    StorageConfigError,
    StorageError,
    sidecar_key,
)
from ..storage.keys import SIDECAR_SUFFIX
from .planner import Planner

JOB_EVENTS_KEEPALIVE_S = 15.0
JOB_STATUS_TIMEOUT_S = 5.0
"""How long a status read waits for the coordinator before answering from the store instead."""
JOBS_HEALTH_TIMEOUT_S = 2.0


class GeneratorClient(Protocol):
    async def generate(self, plan: GenerationPlan) -> GenerateResponse:
        """Run a plan; raises ``ServiceError``s a client may see."""

    async def ready(self) -> bool:
        """True when at least one generator replica has its model loaded."""


class JobsClient(Protocol):
    """The job coordinator; every method raises ``ServiceError``s a client may see."""

    async def submit(self, plan: GenerationPlan, webhook_url: str | None) -> JobStatus: ...

    async def status(self, job_id: str) -> JobStatus: ...

    async def cancel(self, job_id: str) -> JobStatus: ...

    async def wait_for_change(self, job_id: str, version: int, timeout_s: float) -> tuple[int, JobStatus]: ...

    async def health(self) -> dict[str, str]:
        """``{"jobs": "ready"}``, or another state with ``jobs_problem`` saying why."""


def new_request_id() -> str:
    """128 random bits: unguessable, so an id (of a request, of a job) is its own capability."""
    return secrets.token_hex(16)


class Frontend:
    def __init__(
        self,
        planner: Planner,
        generator: GeneratorClient,
        store: ObjectStore,
        metrics: NullMetrics | None = None,
        jobs: JobsClient | None = None,
        jobs_prefix: str = "jobs",
        max_source_bytes: int = MAX_SOURCE_BYTES,
    ) -> None:
        self.planner = planner
        self.generator = generator
        self.store = store
        self.metrics = metrics or NullMetrics()
        self.jobs = jobs
        self.job_records = JobRecords(store, prefix=jobs_prefix)
        self.jobs_prefix = jobs_prefix
        self.sources = SourceLibrary(store, max_source_bytes)

    def plan(self, request: GenerateRequest, source: SourceInfo | None = None) -> GenerationPlan:
        try:
            plan = self.planner.plan(request, new_request_id(), source)
            if plan.output.name is not None and self._is_job_key(plan.output.name):
                field = "output_path" if request.output_path is not None else "output_name"
                raise InvalidField(field, f"'{self.jobs_prefix}/' is reserved for job records")
        except InvalidField as exc:
            raise InvalidRequest.from_field(exc) from None
        return plan

    def _is_job_key(self, key: str) -> bool:
        return key.split("/", 1)[0] == self.jobs_prefix

    async def probe_source(self, request: GenerateRequest) -> SourceInfo | None:
        """Read the header of an audio-in task's source, off the event loop."""
        if request.source is None or request.task not in SOURCE_TASKS:
            return None
        try:
            return await asyncio.to_thread(self.sources.probe, request.source.key)
        except SourceError as exc:
            raise InvalidRequest.for_field("source", str(exc)) from None
        except StorageError:
            raise Unavailable("the object store is unavailable; retry later") from None

    async def upload(self, data: bytes, content_type: str) -> UploadedSource:
        """Store an upload under ``uploads/``; its key is usable as ``source``."""
        if len(data) > self.sources.max_bytes:
            raise PayloadTooLarge(f"the upload has {len(data)} bytes; the limit is {self.sources.max_bytes}")
        try:
            info = await asyncio.to_thread(self.sources.upload, data, content_type)
        except SourceError as exc:
            raise InvalidRequest.for_field("source", str(exc)) from None
        except StorageError:
            raise Unavailable("the object store is unavailable; nothing was stored, retry later") from None
        return UploadedSource(
            key=info.key,
            sample_rate=info.sample_rate,
            channels=info.channels,
            duration=info.frames / info.sample_rate,
            bytes=len(data),
        )

    async def _planned(self, route: str, request: GenerateRequest) -> GenerationPlan:
        try:
            # Off the event loop: counting lyric tokens is CPU work, other requests keep being served.
            source = await self.probe_source(request)
            return await asyncio.to_thread(self.plan, request, source)
        except ServiceError as exc:
            # Label with what was resolved, never with client strings (each would be a new series).
            self.metrics.request_finished(route, exc.status, "invalid", "invalid")
            raise

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        plan = await self._planned("/generate", request)
        try:
            response = await self.generator.generate(plan)
        except ServiceError as exc:
            self.metrics.request_finished("/generate", exc.status, plan.params.model, plan.preset)
            raise
        except Exception:
            self.metrics.request_finished("/generate", 500, plan.params.model, plan.preset)
            raise
        self.metrics.request_finished("/generate", 200, plan.params.model, plan.preset)
        return response

    def presets(self) -> list[PresetInfo]:
        return [preset.info() for preset in self.planner.presets]

    def models(self) -> list[ModelInfo]:
        served = set(self.planner.served_models)
        return [ModelInfo.from_spec(spec, served=spec.name in served) for spec in CATALOG.values()]

    async def health(self) -> dict[str, Any]:
        generator_ready = await self.generator.ready()
        problem = None
        try:
            await asyncio.to_thread(self.store.check)
            storage = "ok"
        except StorageConfigError as exc:
            storage, problem = "misconfigured", exc.public_message
        except StorageError:
            storage = "unavailable"
        jobs = await self._jobs_health()
        ready = generator_ready and storage == "ok" and jobs.get("jobs") in ("ready", "disabled")
        health = {
            "status": "ok" if ready else "unavailable",
            "generator": "ready" if generator_ready else "not ready",
            "storage": storage,
        }
        if problem is not None:
            health["storage_problem"] = problem
        return health | jobs

    async def _jobs_health(self) -> dict[str, str]:
        if self.jobs is None:
            return {"jobs": "disabled"}
        try:
            return await asyncio.wait_for(self.jobs.health(), JOBS_HEALTH_TIMEOUT_S)
        except (TimeoutError, ServiceError) as exc:
            reason = exc.message if isinstance(exc, ServiceError) else "the job coordinator did not answer in time"
            return {"jobs": "unavailable", "jobs_problem": reason}

    async def output_file(self, key: str) -> tuple[Path, str]:
        """The local file of an output and its content type (the one its sidecar records)."""
        if not isinstance(self.store, LocalStore):
            raise NotFound("outputs are in the object store; fetch them with the URL in the response")
        if self._is_job_key(key):
            raise NotFound(f"no output at {key!r}")
        try:
            path = await asyncio.to_thread(self.store.file, key)
        except (ObjectNotFoundError, ValueError):
            raise NotFound(f"no output at {key!r}") from None
        except StorageError:
            raise Unavailable("the output store is unavailable; retry later") from None
        return path, await asyncio.to_thread(self._recorded_content_type, key)

    def _recorded_content_type(self, key: str) -> str:
        guessed = mimetypes.guess_type(key)[0] or "application/octet-stream"
        if key.endswith(SIDECAR_SUFFIX):
            return guessed
        try:
            sidecar = json.loads(self.store.get(sidecar_key(key)))
            return str(sidecar["object"]["content_type"])
        except (StorageError, ValueError, TypeError, KeyError):
            return guessed  # a file the service did not write: its extension is all there is

    # ------------------------------------------------------------------ jobs

    def _jobs(self) -> JobsClient:
        if self.jobs is None:
            raise Unavailable("asynchronous jobs are not enabled on this server")
        return self.jobs

    async def submit_job(self, request: JobRequest) -> JobStatus:
        plan = await self._planned("/jobs", request)
        try:
            status = await self._jobs().submit(plan, request.webhook_url)
        except ServiceError as exc:
            self.metrics.request_finished("/jobs", exc.status, plan.params.model, plan.preset)
            raise
        self.metrics.request_finished("/jobs", 202, plan.params.model, plan.preset)
        return status

    async def job(self, job_id: str) -> JobStatus:
        try:
            return await asyncio.wait_for(self._jobs().status(job_id), JOB_STATUS_TIMEOUT_S)
        except (TimeoutError, Unavailable):
            # The coordinator is restarting or swamped: its last recorded state is still an answer.
            try:
                return (await asyncio.to_thread(self.job_records.load, job_id)).status
            except StorageError:
                raise Unavailable("job state is unavailable; retry later") from None

    async def cancel_job(self, job_id: str) -> JobStatus:
        return await self._jobs().cancel(job_id)

    async def job_updates(self, job_id: str) -> AsyncIterator[JobStatus | None]:
        """The job's status now and after every change until it ends; ``None`` when a
        keep-alive interval passed without change."""
        try:
            version, status = await self._jobs().wait_for_change(job_id, -1, 0.0)
        except Unavailable:
            version, status = -1, await self.job(job_id)
        yield status
        while not status.finished:
            try:
                new_version, status = await self._jobs().wait_for_change(job_id, version, JOB_EVENTS_KEEPALIVE_S)
            except Unavailable:
                # A restarted coordinator counts versions afresh: start over once it answers.
                await asyncio.sleep(1.0)
                new_version = -1
            yield status if new_version not in (version, -1) else None
            version = new_version
