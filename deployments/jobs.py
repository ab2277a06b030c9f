"""The job coordinator deployment: one replica that owns the ``/jobs`` state.

Thin: ``serve_app.jobs.JobCoordinator`` holds the logic. Every ingress
replica reaches this one replica through a handle, so all of them see the
same jobs; the state is also in the object store, so a restarted replica
(Serve replaces it when its health check fails) resumes where the last one
stopped before it answers anything.
"""

from __future__ import annotations

import logging

from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig
from serve_app.error_logging import log_client_errors_at_info
from serve_app.jobs import CoordinatorConfig, JobCoordinator, JobRecords, JobStatus, WebhookPolicy, WebhookSender
from serve_app.schemas import GenerationPlan

from .calls import AcceptedStream, is_busy, is_replica_lost
from .cluster import make_store

logger = logging.getLogger("ray.serve")


# Deployment options (one replica, queue size) are in deployments/app.py.
class JobCoordinatorDeployment:
    async def __init__(self, generator: DeploymentHandle, config: dict) -> None:
        log_client_errors_at_info(logger)
        settings = AppConfig.model_validate(config)
        self._generator = generator.options(stream=True)
        self.jobs = JobCoordinator(
            JobRecords(make_store(settings), prefix=settings.jobs_prefix),
            lambda plan: AcceptedStream(
                self._generator.generate_events.remote(plan), "generator", settings.generate_timeout_s
            ),
            is_replica_lost=is_replica_lost,
            is_transient=is_busy,
            webhooks=WebhookSender(WebhookPolicy(allow_private_networks=settings.webhook_allow_private_networks)),
            config=CoordinatorConfig(max_in_flight=settings.jobs_max_in_flight),
        )
        await self.jobs.recover()

    async def submit(self, plan: GenerationPlan, webhook_url: str | None = None) -> JobStatus:
        return await self.jobs.submit(plan, webhook_url)

    async def status(self, job_id: str) -> JobStatus:
        return await self.jobs.status(job_id)

    async def cancel(self, job_id: str) -> JobStatus:
        return await self.jobs.cancel(job_id)

    async def wait_for_change(self, job_id: str, version: int, timeout_s: float) -> tuple[int, JobStatus]:
        return await self.jobs.wait_for_change(job_id, version, timeout_s)

    async def __del__(self) -> None:
        # Serve calls this on shutdown: unfinished jobs stay recorded as active, so the next coordinator resumes them.
        if hasattr(self, "jobs"):  # not when the constructor failed
            await self.jobs.close()
