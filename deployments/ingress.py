"""The HTTP and handle entry point: validate, resolve, route to the generator.

Thin: routes live in ``serve_app.ingress.api`` and serving logic in
``serve_app.ingress.frontend``. The methods ``generate``, ``submit_job``,
``job_status``, ``cancel_job``, ``presets`` and ``models`` are the Python API
for other Ray applications (see the README):

    handle = serve.get_app_handle("acestep")
    response: GenerateResponse = await handle.generate.remote(GenerateRequest(prompt="..."))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve_app.config import AppConfig
from serve_app.error_logging import log_client_errors_at_info
from serve_app.errors import InvalidRequest
from serve_app.ingress import api
from serve_app.ingress.auth import ApiKeys
from serve_app.ingress.frontend import Frontend
from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.jobs import JobRequest, JobStatus
from serve_app.metrics import ServeMetrics
from serve_app.responses import GenerateResponse, ModelInfo, PresetInfo
from serve_app.schemas import GenerateRequest, GenerationPlan

from .calls import call
from .cluster import make_store
from .replica_logs import route_app_logs_to_serve

READY_CACHE_S = 2.0
GENERATE_ATTEMPTS = 2
"""A generation is sent at most twice: once, and again if its replica was lost."""

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
Request = TypeVar("Request", bound=BaseModel)


def validated(model: type[Request], request: Request | dict) -> Request:
    """A handle caller's request as ``model``; bad fields raise ``InvalidRequest`` as over HTTP."""
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise InvalidRequest.from_validation(exc.errors()) from None


class ServeGeneratorClient:
    """Calls the generator deployment through its handle.

    A generation whose replica is lost (its node went away) is sent once more, to
    another replica; a second loss is a 503. No caller waits more than
    ``accept_timeout_s`` for a replica to take its request.
    """

    def __init__(self, handle: DeploymentHandle, app_name: str, accept_timeout_s: float) -> None:
        self.handle = handle
        self.app_name = app_name
        self.accept_timeout_s = accept_timeout_s
        self._ready_at = 0.0
        self._ready = False

    async def generate(self, plan: GenerationPlan) -> GenerateResponse:
        return await call(
            lambda: self.handle.generate.remote(plan), "generator", self.accept_timeout_s, GENERATE_ATTEMPTS
        )

    async def ready(self) -> bool:
        # Ask the controller, not a replica, so a readiness probe never wakes a
        # generator scaled to zero.
        now = time.monotonic()
        if now - self._ready_at > READY_CACHE_S:
            self._ready = await asyncio.to_thread(self._running_replicas) > 0
            self._ready_at = now
        return self._ready

    def _running_replicas(self) -> int:
        application = serve.status().applications.get(self.app_name)
        if application is None:
            return 0
        deployment = application.deployments.get(self.handle.deployment_name)
        return 0 if deployment is None else deployment.replica_states.get("RUNNING", 0)


class ServeJobsClient:
    """Calls the job coordinator deployment through its handle."""

    def __init__(self, handle: DeploymentHandle, accept_timeout_s: float) -> None:
        self.handle = handle
        self.accept_timeout_s = accept_timeout_s

    async def _call(self, send: Callable[[], DeploymentResponse]) -> T:
        return await call(send, "job coordinator", self.accept_timeout_s)

    async def submit(self, plan: GenerationPlan, webhook_url: str | None) -> JobStatus:
        return await self._call(lambda: self.handle.submit.remote(plan, webhook_url))

    async def status(self, job_id: str) -> JobStatus:
        return await self._call(lambda: self.handle.status.remote(job_id))

    async def cancel(self, job_id: str) -> JobStatus:
        return await self._call(lambda: self.handle.cancel.remote(job_id))

    async def wait_for_change(self, job_id: str, version: int, timeout_s: float) -> tuple[int, JobStatus]:
        return await self._call(lambda: self.handle.wait_for_change.remote(job_id, version, timeout_s))

    async def health(self) -> dict[str, str]:
        return await self._call(lambda: self.handle.health.remote())


# Deployment options (replicas, resources, queues) are in deployments/app.py.
@serve.ingress()
class Ingress:
    def __init__(self, generator: DeploymentHandle, jobs: DeploymentHandle, config: dict) -> None:
        route_app_logs_to_serve()
        log_client_errors_at_info(logger)
        self.config = AppConfig.model_validate(config)
        # A malformed ACESTEP_API_KEYS stops the replica here, before it serves anything.
        self.api_keys = ApiKeys.from_env()
        logger.log(logging.INFO if self.api_keys.enabled else logging.WARNING, self.api_keys.summary())
        planner = Planner(
            PresetBook.load(self.config.presets_path),
            served_models=self.config.models,
            default_model=self.config.default_model,
            compile_allowed=self.config.torch_compile != "off",
        )
        app_name = serve.get_replica_context().app_name
        store = make_store(self.config)
        logger.info("storage: %s (%s)", self.config.storage.resolved_kind(), store)
        self.frontend = Frontend(
            planner,
            ServeGeneratorClient(generator, app_name, self.config.generate_timeout_s),
            store,
            ServeMetrics(),
            jobs=ServeJobsClient(jobs, self.config.generate_timeout_s),
            jobs_prefix=self.config.jobs_prefix,
            max_source_bytes=self.config.max_source_bytes,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, around this replica's frontend.
        return api.create_app(self.frontend, self.api_keys)

    async def generate(self, request: GenerateRequest | dict) -> GenerateResponse:
        """Same body and result as ``POST /generate``; errors raise ``ServiceError`` subclasses."""
        return await self.frontend.generate(validated(GenerateRequest, request))

    async def submit_job(self, request: JobRequest | dict) -> JobStatus:
        """Same body as ``POST /jobs``; returns the queued job's status."""
        return await self.frontend.submit_job(validated(JobRequest, request))

    async def job_status(self, job_id: str) -> JobStatus:
        """Same as ``GET /jobs/{job_id}``; ``result`` holds the ``GenerateResponse`` once it succeeded."""
        return await self.frontend.job(job_id)

    async def cancel_job(self, job_id: str) -> JobStatus:
        """Same as ``DELETE /jobs/{job_id}``."""
        return await self.frontend.cancel_job(job_id)

    async def presets(self) -> list[PresetInfo]:
        return self.frontend.presets()

    async def models(self) -> list[ModelInfo]:
        return self.frontend.models()
