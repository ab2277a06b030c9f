"""The generator's core: batch resolved plans on the GPU, then write the audio.

Ray-free so it can be tested with plain asyncio; ``deployments/generator.py``
wraps it in a Serve replica. One GPU thread runs one batch at a time; encoding
and uploads run on an I/O pool so the next batch starts as soon as the
previous one is decoded. What happens to a request's outputs in the store is
``outputs.py``'s job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..errors import GenerationFailed, InvalidRequest, StorageMisconfigured, Unavailable
from ..metrics import NullMetrics
from ..pipeline.cost import CostModel
from ..pipeline.music_pipeline import BatchOutput, ItemOutput, MusicPipeline
from ..pipeline.settings import SOURCE_SAMPLE_RATE, BatchSettings, ItemSettings
from ..pipeline.tasks import SOURCE_TASKS
from ..progress import GenerationCancelled, Progress, ProgressSink, Stage
from ..responses import GenerateResponse, ItemFailure
from ..schemas import GenerationPlan
from ..sources import MAX_SOURCE_BYTES, SourceError, SourceLibrary
from ..storage import ObjectStore, StorageConfigError, StorageError
from .batching import KeyedBatcher
from .load import ReplicaLoad, batch_cap, replica_load
from .outputs import OutputWriter, RequestUpload, WrittenOutput, resolved_params

logger = logging.getLogger(__name__)


class ItemGenerationFailed(GenerationFailed):
    """One item could not be generated (e.g. non-finite values); its batch-mates may have been."""

    def __init__(self, seed: int, reason: str) -> None:
        super().__init__(f"seed {seed}: {reason}")
        self.seed = seed
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.seed, self.reason))


@dataclass
class EngineConfig:
    max_batch_size: int = 8
    max_batch_audio_s: float = 480.0
    """Caps the batch by total audio, so long durations get smaller batches."""
    batch_wait_s: float = 0.1
    output_prefix: str = ""
    jobs_prefix: str = "jobs"
    """Where the pending-upload markers go (``{jobs_prefix}/uploads/``, see ``serve_app.storage.janitor``)."""
    io_workers: int = 4
    max_source_bytes: int = MAX_SOURCE_BYTES


@dataclass
class _Work:
    request_id: str
    index: int
    item: ItemSettings
    total_steps: int
    progress: ProgressSink | None
    cancelled: bool = False
    source: torch.Tensor | None = None
    """The decoded source of an audio-in task (shared by the request's items)."""

    def report(self, stage: Stage, step: int = 0) -> None:
        if self.progress is not None:
            self.progress(Progress(self.request_id, self.index, stage, step, self.total_steps))


@dataclass
class _Generated:
    output: ItemOutput
    sample_rate: int
    timings: dict[str, float]


class GenerationEngine:
    def __init__(
        self,
        pipelines: Mapping[str, MusicPipeline],
        store: ObjectStore,
        config: EngineConfig | None = None,
        metrics: NullMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``clock`` and ``sleep`` time the batch wait (tests pass a fake clock)."""
        self.pipelines = dict(pipelines)
        self.store = store
        self.config = config or EngineConfig()
        self.metrics = metrics or NullMetrics()
        self._batcher: KeyedBatcher[BatchSettings, _Work, _Generated] = KeyedBatcher(
            self._run_batch,
            max_batch_size=self.batch_cap,
            max_wait_s=self.config.batch_wait_s,
            clock=clock,
            sleep=sleep,
        )
        self._gpu = ThreadPoolExecutor(1, thread_name_prefix="gpu")
        self._io = ThreadPoolExecutor(self.config.io_workers, thread_name_prefix="encode-upload")
        self.outputs = OutputWriter(
            store,
            self._io,
            self.metrics,
            output_prefix=self.config.output_prefix,
            jobs_prefix=self.config.jobs_prefix,
        )
        self._device_error: str | None = None
        self._sources = SourceLibrary(store, self.config.max_source_bytes)
        self._costs = {name: CostModel(scale=pipeline.spec.relative_cost) for name, pipeline in self.pipelines.items()}
        self._running_ends_at: float | None = None
        """When the cost model expects the running batch to finish (``time.monotonic``)."""
        self._requests = 0

    def batch_cap(self, settings: BatchSettings) -> int:
        return batch_cap(settings.audio_duration, self.config.max_batch_size, self.config.max_batch_audio_s)

    def estimate_s(self, settings: BatchSettings, items: int) -> float:
        """Estimated GPU seconds of one batch (``pipeline.cost``, scaled per model)."""
        return self._costs[settings.model].estimate(settings, items)

    def load(self) -> ReplicaLoad:
        """Queued and running work in estimated GPU seconds, and the room in each forming batch."""
        running_left = 0.0 if self._running_ends_at is None else max(0.0, self._running_ends_at - time.monotonic())
        return replica_load(
            running_left, self._batcher.queued_by_key(), self._requests, self.batch_cap, self.estimate_s
        )

    async def generate(self, plan: GenerationPlan, progress: ProgressSink | None = None) -> GenerateResponse:
        """Run a plan; cancelling the call cancels it: queued items leave their queue at
        once, running ones leave their batch at the next step, batch-mates carry on."""
        started = time.perf_counter()
        settings = plan.params.batch_settings()
        if settings.model not in self.pipelines:
            raise Unavailable(f"model {settings.model!r} is not served by this replica")
        await self._refuse_if_store_misconfigured()
        source = await self._load_source(plan)
        works = [
            _Work(plan.request_id, index, item, settings.total_steps, progress, source=source)
            for index, item in enumerate(plan.params.items())
        ]
        for work in works:
            work.report("queued")
        upload = RequestUpload(plan.request_id)
        self._requests += 1
        try:
            results = await asyncio.gather(
                *(self._produce(plan, settings, work, upload) for work in works), return_exceptions=True
            )
        except asyncio.CancelledError:
            for work in works:
                work.cancelled = True
            self.outputs.abandon(upload)
            raise
        finally:
            self._requests -= 1
        return await self._respond(plan, upload, results, time.perf_counter() - started)

    def check_store(self) -> None:
        """Reach the store once (at start-up) and log what an operator must know; never raises."""
        try:
            self.store.check()
        except StorageConfigError as exc:
            logger.error(
                "object storage is misconfigured, requests fail until it is fixed: %s (%s)", exc.public_message, exc
            )
        except StorageError as exc:
            logger.warning("object storage is unavailable at start-up (requests get 503 until it returns): %s", exc)

    async def _refuse_if_store_misconfigured(self) -> None:
        """While the store's configuration is known to be wrong, refuse before any GPU work.

        The store is asked again first (one cheap request), so fixing it behind
        our back (creating the bucket, granting a permission) is noticed at once.
        """
        if self.store.config_error is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._io, self.store.check)
        except StorageConfigError as exc:
            raise StorageMisconfigured.because(exc.public_message) from None
        except StorageError:
            pass  # an outage is answered where it bites, with a 503 to retry

    async def events(self, plan: GenerationPlan) -> AsyncIterator[list[Progress] | GenerateResponse]:
        """``generate`` as a stream: progress as it happens, then the response.

        Each progress list holds only the newest update per item since the last
        one, so a slow consumer is not flooded. Errors are raised as by
        ``generate``; abandoning the stream cancels the request like cancelling
        ``generate`` (its items leave their batch at the next step).
        """
        updates: asyncio.Queue[Progress] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(
            self.generate(plan, lambda progress: loop.call_soon_threadsafe(updates.put_nowait, progress))
        )
        try:
            while not task.done():
                waiter = asyncio.ensure_future(updates.get())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                latest = {}
                if waiter.done():
                    latest[waiter.result().item] = waiter.result()
                else:
                    waiter.cancel()
                while not updates.empty():
                    update = updates.get_nowait()
                    latest[update.item] = update
                if latest:
                    yield list(latest.values())
            yield task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _load_source(self, plan: GenerationPlan) -> torch.Tensor | None:
        """Decode and resample the source on the I/O pool, at the length the plan measured
        (a compressed file's header may count a few samples differently from its decoder)."""
        params = plan.params
        if params.task not in SOURCE_TASKS:
            return None
        loop = asyncio.get_running_loop()
        try:
            waveform = await loop.run_in_executor(self._io, self._sources.load, params.source.key, SOURCE_SAMPLE_RATE)
        except SourceError as exc:
            raise InvalidRequest.for_field("source", str(exc)) from None
        except StorageError:
            raise Unavailable("object storage is unavailable; retry later") from None
        missing = params.source_samples - waveform.shape[1]
        return torch.nn.functional.pad(waveform, (0, missing)) if missing > 0 else waveform[:, : params.source_samples]

    async def _produce(
        self, plan: GenerationPlan, settings: BatchSettings, work: _Work, upload: RequestUpload
    ) -> WrittenOutput:
        generated, batch = await self._batcher.submit(settings, work)
        self.metrics.queue_wait(settings.model, batch.queue_wait_s)
        output = generated.output
        if output.cancelled:
            raise GenerationCancelled()
        if output.error is not None:
            raise ItemGenerationFailed(output.seed, output.error)
        work.report("encoding", work.total_steps)
        timings = {"queue_s": batch.queue_wait_s, **generated.timings}
        write = asyncio.get_running_loop().run_in_executor(
            self._io, self.outputs.write, plan, output, generated.sample_rate, timings, batch.size, upload
        )
        upload.writes.append(write)
        # Shielded: a write the request abandons still finishes, and is then removed (``OutputWriter.abandon``).
        written = await asyncio.shield(write)
        work.report("done", work.total_steps)
        return written

    async def _run_batch(self, settings: BatchSettings, works: Sequence[_Work]) -> list[_Generated]:
        pipeline = self.pipelines[settings.model]
        self.metrics.queue_depth(self._batcher.queued())

        def on_step(done: int, total: int, active: Sequence[int]) -> set[int]:
            for index in active:
                works[index].report("running", done)
            return {index for index, work in enumerate(works) if work.cancelled}

        for work in works:
            work.report("running", 0)
        started = time.perf_counter()
        self._running_ends_at = time.monotonic() + self.estimate_s(settings, len(works))
        loop = asyncio.get_running_loop()
        try:
            sources = [work.source for work in works] if settings.task.task in SOURCE_TASKS else None
            output: BatchOutput = await loop.run_in_executor(
                self._gpu, pipeline, settings, [work.item for work in works], on_step, sources
            )
        except torch.OutOfMemoryError:
            logger.warning("out of GPU memory for a batch of %d x %gs", len(works), settings.audio_duration)
            torch.cuda.empty_cache()
            raise Unavailable(
                "the GPU ran out of memory for this batch; retry, or ask for shorter audio or fewer seeds"
            ) from None
        except torch.AcceleratorError as exc:
            # A CUDA error poisons the context: let the health check have the replica replaced.
            self._device_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._running_ends_at = None
        elapsed = time.perf_counter() - started
        finished = sum(1 for item in output.items if item.waveform is not None)
        self.metrics.batch_finished(settings.model, len(works), finished * settings.audio_duration, elapsed)
        return [_Generated(item, output.sample_rate, dict(output.timings)) for item in output.items]

    async def _respond(
        self, plan: GenerationPlan, upload: RequestUpload, results: list, elapsed: float
    ) -> GenerateResponse:
        written = [result for result in results if isinstance(result, WrittenOutput)]
        errors = [result for result in results if isinstance(result, BaseException)]
        failures = [error for error in errors if isinstance(error, ItemGenerationFailed)]
        fatal = [error for error in errors if not isinstance(error, (ItemGenerationFailed, GenerationCancelled))]
        if not fatal and written and not await self.outputs.commit(upload):
            fatal = [Unavailable("object storage is unavailable; nothing was stored, retry later")]
        if fatal or not written:
            await self.outputs.discard(upload)  # the request fails as a whole
            if fatal:
                raise next((error for error in fatal if isinstance(error, Unavailable)), fatal[0])
            if failures:
                raise failures[0]
            raise GenerationCancelled()
        timings = {
            name: max(result.timings.get(name, 0.0) for result in written)
            for name in ("queue_s", "diffusion_s", "decode_s", "encode_s", "upload_s")
        }
        timings["total_s"] = elapsed
        return GenerateResponse(
            request_id=plan.request_id,
            model=plan.params.model,
            preset=plan.preset,
            outputs=[result.file for result in written],
            params=resolved_params(plan),
            timings=timings,
            warnings=plan.warnings,
            failures=[ItemFailure(seed=error.seed, message=error.reason) for error in failures],
        )

    def loaded(self) -> bool:
        return all(pipeline.loaded_variants() for pipeline in self.pipelines.values())

    def check_health(self) -> None:
        """Raise when this replica cannot serve and should be replaced."""
        if not self.loaded():
            raise RuntimeError("a served model has no loaded weights")
        if self._device_error is not None:
            raise RuntimeError(f"the device failed and needs a new process: {self._device_error}")

    async def drain(self) -> None:
        """Wait until the writes and removals of abandoned requests have landed."""
        await self.outputs.drain()

    async def close(self) -> None:
        """Stop batching (queued items are cancelled), let pending writes and removals land, free the pools.

        The deployment calls this on shutdown, after Serve drained its requests.
        """
        await self._batcher.close()
        await self.drain()
        self._gpu.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=True)
