"""The HTTP and handle entry point: validate, resolve, route to the generator.

Thin: routes live in ``serve_app.api`` and serving logic in
``serve_app.frontend``. The methods ``generate``, ``presets`` and ``models``
are the Python API for other Ray applications (see the README):

    handle = serve.get_app_handle("acestep")
    response: GenerateResponse = await handle.generate.remote(GenerateRequest(prompt="..."))
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app import api
from serve_app.config import AppConfig
from serve_app.errors import ServiceError, Unavailable
from serve_app.frontend import Frontend
from serve_app.metrics import ServeMetrics
from serve_app.planner import Planner
from serve_app.presets import PresetBook
from serve_app.schemas import GenerateRequest, GenerateResponse, GenerationPlan, ModelInfo, PresetInfo

READY_CACHE_S = 2.0


class ServeGeneratorClient:
    """Calls the generator deployment through its handle."""

    def __init__(self, handle: DeploymentHandle, app_name: str) -> None:
        self.handle = handle
        self.app_name = app_name
        self._ready_at = 0.0
        self._ready = False

    async def generate(self, plan: GenerationPlan) -> GenerateResponse:
        try:
            return await self.handle.generate.remote(plan)
        except BackPressureError:
            raise Unavailable("every generator replica is at capacity; retry later") from None
        except RayActorError:
            raise Unavailable("the generator replica stopped while running this request; retry") from None
        except RayTaskError as exc:
            if isinstance(exc.cause, ServiceError):
                raise exc.cause from None
            raise

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


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
    max_ongoing_requests=256,
)
@serve.ingress()
class Ingress:
    def __init__(self, generator: DeploymentHandle, config: dict) -> None:
        self.config = AppConfig.model_validate(config)
        planner = Planner(
            PresetBook.load(self.config.presets_path),
            served_models=self.config.models,
            default_model=self.config.default_model,
        )
        app_name = serve.get_replica_context().app_name
        self.frontend = Frontend(
            planner, ServeGeneratorClient(generator, app_name), self.config.make_store(), ServeMetrics()
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built in the replica, around this replica's frontend.
        return api.create_app(self.frontend)

    async def generate(self, request: GenerateRequest | dict) -> GenerateResponse:
        """Same body and result as ``POST /generate``; errors raise ``ServiceError`` subclasses."""
        return await self.frontend.generate(GenerateRequest.model_validate(request))

    async def presets(self) -> list[PresetInfo]:
        return self.frontend.presets()

    async def models(self) -> list[ModelInfo]:
        return self.frontend.models()
