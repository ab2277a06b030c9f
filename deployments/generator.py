"""The GPU deployment: one pipeline per served model, batched generation.

Thin: ``GenerationEngine`` holds the logic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from serve_app.config import AppConfig
from serve_app.error_logging import log_client_errors_at_info
from serve_app.generation.engine import EngineConfig, GenerationEngine
from serve_app.metrics import ServeMetrics
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.progress import Progress
from serve_app.responses import GenerateResponse
from serve_app.schemas import GenerationPlan
from serve_app.storage.watch import StorageWatch

from .cluster import make_store
from .replica_logs import route_app_logs_to_serve

logger = logging.getLogger("ray.serve")


# Deployment options (GPUs, replicas, queues) are in deployments/app.py.
class Generator:
    def __init__(self, config: dict) -> None:
        route_app_logs_to_serve()
        log_client_errors_at_info(logger)
        self.config = AppConfig.model_validate(config)
        device = self.config.resolved_device()
        pipelines = {
            name: MusicPipeline(name, device, max_rows_per_forward=self.config.max_rows_per_forward)
            for name in self.config.models
        }
        for name, pipeline in pipelines.items():
            for variant in self.config.warmup_variants:
                logger.info("loading %s (%s) on %s", name, variant, device)
                if self.config.warmup:
                    pipeline.warmup(bf16=variant == "bf16")
                    if self.config.torch_compile == "warmup":
                        pipeline.warmup(bf16=variant == "bf16", torch_compile=True)
                else:
                    pipeline.model(bf16=variant == "bf16")
        self.engine = GenerationEngine(
            pipelines,
            make_store(self.config),
            EngineConfig(
                max_batch_size=self.config.max_batch_size,
                max_batch_audio_s=self.config.max_batch_audio_s,
                batch_wait_s=self.config.batch_wait_s,
                output_prefix=self.config.output_prefix,
                max_source_bytes=self.config.max_source_bytes,
                jobs_prefix=self.config.jobs_prefix,
            ),
            metrics=ServeMetrics(),
        )
        self.engine.check_store()
        self._storage = StorageWatch(self.engine.store, "generator")

    async def generate(self, plan: GenerationPlan) -> GenerateResponse:
        return await self.engine.generate(plan)

    async def generate_events(self, plan: GenerationPlan) -> AsyncIterator[list[Progress] | GenerateResponse]:
        """``generate`` streamed: progress lists, then the response (the job coordinator's call)."""
        async for event in self.engine.events(plan):
            yield event

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Backlog in estimated GPU seconds, for ``serve_app.scheduling.backlog_policy``."""
        return self.engine.load().autoscaling_stats()

    def record_routing_stats(self) -> dict:
        """Backlog and room in forming batches, for ``deployments.router.BatchKeyRouter``."""
        return self.engine.load().routing_stats(self.config.max_batch_size, self.config.max_batch_audio_s)

    async def check_health(self) -> None:
        self.engine.check_health()
        # A store outage is logged, never fatal: see serve_app/storage/watch.py.
        await asyncio.to_thread(self._storage.observe)

    async def __del__(self) -> None:
        # Serve calls this on shutdown once the replica's requests drained (graceful_shutdown_timeout_s).
        if hasattr(self, "engine"):  # not when the constructor failed
            await self.engine.close()
