"""The ingress's serving logic, between the HTTP routes and the generator.

Plans requests, calls the generator through a ``GeneratorClient`` (a Serve
handle in production, an in-process engine in tests) and answers the
catalog, health and output questions. Knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Protocol

from .errors import InvalidRequest, NotFound, ServiceError, Unavailable
from .metrics import NullMetrics
from .pipeline.registry import CATALOG
from .planner import Planner, PlanningError
from .schemas import GenerateRequest, GenerateResponse, GenerationPlan, ModelInfo, PresetInfo
from .storage import LocalStore, ObjectNotFoundError, ObjectStore, StorageError


class GeneratorClient(Protocol):
    async def generate(self, plan: GenerationPlan) -> GenerateResponse:
        """Run a plan; raises ``ServiceError``s a client may see."""

    async def ready(self) -> bool:
        """True when at least one generator replica has its model loaded."""


def new_request_id() -> str:
    """128 random bits: unguessable, so an id does not reveal other clients' outputs."""
    return uuid.uuid4().hex


class Frontend:
    def __init__(
        self,
        planner: Planner,
        generator: GeneratorClient,
        store: ObjectStore,
        metrics: NullMetrics | None = None,
    ) -> None:
        self.planner = planner
        self.generator = generator
        self.store = store
        self.metrics = metrics or NullMetrics()

    def plan(self, request: GenerateRequest) -> GenerationPlan:
        try:
            return self.planner.plan(request, new_request_id())
        except PlanningError as exc:
            raise InvalidRequest.for_field(exc.field, exc.message) from None

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        model = request.model or self.planner.default_model
        try:
            response = await self.generator.generate(self.plan(request))
        except ServiceError as exc:
            self.metrics.request_finished("/generate", exc.status, model, request.preset)
            raise
        except Exception:
            self.metrics.request_finished("/generate", 500, model, request.preset)
            raise
        self.metrics.request_finished("/generate", 200, model, request.preset)
        return response

    def presets(self) -> list[PresetInfo]:
        return [preset.info() for preset in self.planner.presets]

    def models(self) -> list[ModelInfo]:
        served = set(self.planner.served_models)
        return [
            ModelInfo(
                name=spec.name,
                family=spec.family,
                description=spec.description,
                repo_id=spec.repo_id,
                max_duration_s=spec.max_duration_s,
                supported_erg=sorted(spec.supported_erg),
                defaults=dict(spec.defaults),
                served=spec.name in served,
            )
            for spec in CATALOG.values()
        ]

    async def health(self) -> dict[str, Any]:
        generator_ready = await self.generator.ready()
        try:
            await asyncio.to_thread(self.store.check)
            storage = "ok"
        except StorageError:
            storage = "unavailable"
        status = "ok" if generator_ready and storage == "ok" else "unavailable"
        return {"status": status, "generator": "ready" if generator_ready else "not ready", "storage": storage}

    async def read_output(self, key: str) -> bytes:
        if not isinstance(self.store, LocalStore):
            raise NotFound("outputs are in the object store; fetch them with the URL in the response")
        try:
            return await asyncio.to_thread(self.store.get, key)
        except (ObjectNotFoundError, ValueError):
            raise NotFound(f"no output at {key!r}") from None
        except StorageError:
            raise Unavailable("the output store is unavailable; retry later") from None
