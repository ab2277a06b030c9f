"""The job coordinator deployment: one replica that owns the ``/jobs`` state.

Thin: ``serve_app.jobs.JobCoordinator`` holds the logic. Every ingress
replica reaches this one replica through a handle, so all of them see the
same jobs; the state is also in the object store, so a restarted replica
(Serve replaces it when its health check fails) resumes where the last one
stopped before it answers anything.

The replica starts whether or not the store is reachable: it reads its jobs
back in the background, retrying until the store answers, and job calls made
meanwhile get a 503 naming storage. A store outage never fails
``check_health``: a new replica would find the same outage, and a replica that
fails its constructor or its checks in a loop is given up by Serve
(DEPLOY_FAILED), which is how the job API used to stay down after the store
came back. The outage is reported in ``/health`` (``jobs``) and in the log.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig
from serve_app.error_logging import log_client_errors_at_info
from serve_app.jobs import CoordinatorConfig, JobCoordinator, JobRecords, JobStatus, WebhookPolicy, WebhookSender
from serve_app.schemas import GenerationPlan
from serve_app.storage.maintenance import StoreMaintenance
from serve_app.storage.retention import RetentionPolicy
from serve_app.storage.watch import StorageWatch

from .calls import AcceptedStream, is_busy, is_replica_lost
from .cluster import make_store
from .replica_logs import route_app_logs_to_serve

logger = logging.getLogger("ray.serve")


# Deployment options (one replica, queue size) are in deployments/app.py.
class JobCoordinatorDeployment:
    async def __init__(self, generator: DeploymentHandle, config: dict) -> None:
        route_app_logs_to_serve()
        log_client_errors_at_info(logger)
        settings = AppConfig.model_validate(config)
        self._generator = generator.options(stream=True)
        store = make_store(settings)
        self.jobs = JobCoordinator(
            JobRecords(store, prefix=settings.jobs_prefix),
            lambda plan: AcceptedStream(
                self._generator.generate_events.remote(plan), "generator", settings.generate_timeout_s
            ),
            is_replica_lost=is_replica_lost,
            is_transient=is_busy,
            webhooks=WebhookSender(WebhookPolicy(allow_private_networks=settings.webhook_allow_private_networks)),
            config=CoordinatorConfig(max_in_flight=settings.jobs_max_in_flight),
        )
        self.jobs.start_recovery()
        self._storage = StorageWatch(store, "job coordinator")
        # This deployment has one replica: the natural home of the store's housekeeping.
        maintenance = StoreMaintenance(
            store,
            RetentionPolicy(settings.output_ttl_days, settings.output_prefix, settings.jobs_prefix),
            abandoned_after=timedelta(seconds=settings.abandoned_upload_after_s),
        )
        self._maintenance = asyncio.get_running_loop().create_task(
            maintenance.run_forever(settings.maintenance_interval_s)
        )

    async def submit(self, plan: GenerationPlan, webhook_url: str | None = None) -> JobStatus:
        return await self.jobs.submit(plan, webhook_url)

    async def status(self, job_id: str) -> JobStatus:
        return await self.jobs.status(job_id)

    async def cancel(self, job_id: str) -> JobStatus:
        return await self.jobs.cancel(job_id)

    async def wait_for_change(self, job_id: str, version: int, timeout_s: float) -> tuple[int, JobStatus]:
        return await self.jobs.wait_for_change(job_id, version, timeout_s)

    async def health(self) -> dict[str, str]:
        return self.jobs.health()

    async def check_health(self) -> None:
        # Never raises for storage (see the module docstring): an outage is logged instead.
        await asyncio.to_thread(self._storage.observe)

    async def __del__(self) -> None:
        # Serve calls this on shutdown: unfinished jobs stay recorded as active, so the next coordinator resumes them.
        if hasattr(self, "_maintenance"):  # not when the constructor failed
            self._maintenance.cancel()
            await self.jobs.close()
