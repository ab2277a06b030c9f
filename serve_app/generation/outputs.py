"""A request's outputs in the store: encode and write each one, then commit or remove them all.

Every output of a request goes under one pending-upload marker (``serve_app.storage.janitor``),
written before its first output; the request then either commits (drops the marker) or removes
what it wrote. What the store refuses to remove now, the janitor removes later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..audio import content_type, encode_audio, file_extension, resample
from ..errors import StorageMisconfigured, Unavailable
from ..ingress.output_names import split_output_name
from ..metrics import NullMetrics
from ..pipeline.music_pipeline import ItemOutput
from ..responses import OutputFile
from ..schemas import GenerationPlan
from ..storage import ObjectStore, StorageConfigError, StorageError, build_output_key, sidecar_key, write_output
from ..storage.janitor import PendingUploads

logger = logging.getLogger(__name__)


class RequestUpload:
    """One request's outputs in the store: its marker is written once, before the first output."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started_at = datetime.now(UTC)
        """Also the date in every key of the request, so all its outputs share one folder."""
        self.folder: str | None = None
        """Set once the marker is written."""
        self.lock = threading.Lock()
        self.writes: list[asyncio.Future] = []

    def begin(self, uploads: PendingUploads, key: str) -> None:
        with self.lock:
            if self.folder is None:
                folder = key.rpartition("/")[0]
                uploads.begin(self.request_id, folder, self.started_at)
                self.folder = folder


@dataclass
class WrittenOutput:
    file: OutputFile
    timings: dict[str, float] = field(default_factory=dict)


class OutputWriter:
    """Writes, commits and removes requests' outputs; store calls run on the engine's I/O pool."""

    def __init__(
        self, store: ObjectStore, io: Executor, metrics: NullMetrics, *, output_prefix: str, jobs_prefix: str
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.output_prefix = output_prefix
        self.uploads = PendingUploads(store, jobs_prefix)
        self._io = io
        self._pending: set[asyncio.Future] = set()
        """Clean-ups of cancelled requests (``abandon``), which no request waits for; ``drain`` waits for them."""

    def write(
        self,
        plan: GenerationPlan,
        output: ItemOutput,
        sample_rate: int,
        timings: dict[str, float],
        batch_size: int,
        upload: RequestUpload,
    ) -> WrittenOutput:
        """Encode one item and store it with its sidecar (blocking: run it on the I/O pool).

        ``timings`` holds the item's times so far; encoding and upload are added to it.
        """
        spec = plan.output
        started = time.perf_counter()
        waveform = output.waveform
        if spec.sample_rate != sample_rate:
            waveform = resample(waveform, sample_rate, spec.sample_rate)
        data = encode_audio(waveform, spec.sample_rate, spec.format, mp3_bitrate_kbps=spec.mp3_bitrate_kbps)
        timings["encode_s"] = time.perf_counter() - started

        ext = file_extension(spec.format)
        folders, stem = split_output_name(spec.name, ext) if spec.name is not None else ([], None)
        key = build_output_key(
            self.output_prefix,
            plan.request_id,
            output.seed,
            ext,
            folders=folders,
            stem=stem,
            when=upload.started_at,
        )
        file = OutputFile(
            seed=output.seed,
            key=key,
            url="",
            format=spec.format,
            sample_rate=spec.sample_rate,
            duration=plan.params.audio_duration,
            batch_size=batch_size,
            sidecar_key=sidecar_key(key),
        )
        sidecar = {
            "request_id": plan.request_id,
            "preset": plan.preset,
            "output": file.model_dump(exclude={"url"}),
            "params": resolved_params(plan),
            "warnings": [warning.model_dump() for warning in plan.warnings],
            "timings": timings,
            "created_at": datetime.now(UTC).isoformat(),
        }
        started = time.perf_counter()
        try:
            upload.begin(self.uploads, key)
            write_output(self.store, key, data, content_type(spec.format), sidecar)
            url = self.store.url(key)
        except StorageError as exc:
            # The details name endpoints and buckets: for the log, not the client.
            logger.error("request %s: storing %s failed: %s", plan.request_id, key, exc)
            self.metrics.storage_op("write_output", time.perf_counter() - started, ok=False)
            if isinstance(exc, StorageConfigError):
                raise StorageMisconfigured.because(exc.public_message) from None
            raise Unavailable("object storage is unavailable; nothing was stored, retry later") from None
        timings["upload_s"] = time.perf_counter() - started
        self.metrics.storage_op("write_output", timings["upload_s"], ok=True)
        return WrittenOutput(file.model_copy(update={"url": url}), timings)

    async def commit(self, upload: RequestUpload) -> bool:
        """Drop the request's pending-upload marker; False if the store refused."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._io, self.uploads.commit, upload.request_id)
        except StorageError as exc:
            logger.error("request %s: committing its outputs failed: %s", upload.request_id, exc)
            return False
        return True

    async def discard(self, upload: RequestUpload) -> None:
        """A failed request: remove what it wrote (its failed writes too may have left objects), then its marker."""
        if upload.folder is not None and await self._remove_outputs(upload):
            await self.commit(upload)

    def abandon(self, upload: RequestUpload) -> None:
        """A cancelled request: once the writes it started have landed, discard them (``drain`` waits for it)."""
        cleanup = asyncio.get_running_loop().create_task(self._abandon(upload))
        self._pending.add(cleanup)
        cleanup.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait until the writes and removals of abandoned requests have landed."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _abandon(self, upload: RequestUpload) -> None:
        await asyncio.gather(*upload.writes, return_exceptions=True)
        await self.discard(upload)

    async def _remove_outputs(self, upload: RequestUpload) -> bool:
        try:
            await asyncio.get_running_loop().run_in_executor(self._io, self.uploads.remove_outputs, upload.folder)
        except StorageError as exc:
            logger.warning("request %s failed; its outputs are left for the janitor: %s", upload.request_id, exc)
            return False
        return True


def resolved_params(plan: GenerationPlan) -> dict:
    """Sampling and output parameters: POSTing them back repeats the request exactly."""
    params = plan.params.request_fields()
    params.update(
        format=plan.output.format,
        mp3_bitrate_kbps=plan.output.mp3_bitrate_kbps,
        sample_rate=plan.output.sample_rate,
        output_name=plan.output.name,
    )
    return params
