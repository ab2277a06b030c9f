"""Durable clean-up: the S3 server (a real SeaweedFS) killed mid-upload leaves nothing once the janitor ran.

The kill points are exact: the store wrapper kills the server right after the
N-th successful put of the request, and writes run one at a time.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from serve_app.errors import Unavailable
from serve_app.generation.engine import EngineConfig, GenerationEngine
from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.schemas import GenerateRequest
from serve_app.storage import LocalStore, MinioStore
from serve_app.storage.janitor import Janitor, PendingUploads

from .conftest import TEST_MODEL

ABANDONED_AFTER = timedelta(hours=1)
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def pipeline(models_root):
    pipeline = MusicPipeline(TEST_MODEL, "cpu", models_root=models_root)
    pipeline.model(bf16=False)
    return pipeline


@pytest.fixture(scope="module")
def planner():
    return Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)


class KillAfterPuts:
    """A store that kills the S3 server (SIGKILL) right after its ``kill_after``-th successful put."""

    def __init__(self, store, server, kill_after: int) -> None:
        self.store = store
        self.server = server
        self.kill_after = kill_after
        self.puts: list[str] = []

    def put(self, key, *args, **kwargs):
        self.store.put(key, *args, **kwargs)
        self.puts.append(key)
        if len(self.puts) == self.kill_after:
            self.server.stop(kill=True)

    def __getattr__(self, name):
        return getattr(self.store, name)


def generate(engine: GenerationEngine, planner: Planner, request_id: str):
    request = GenerateRequest(
        prompt="broken tape loops", model=TEST_MODEL, infer_step=2, audio_duration=1.0, bf16=False, actual_seeds=SEEDS
    )

    async def main():
        try:
            return await engine.generate(planner.plan(request, request_id))
        finally:
            await engine.close()

    return asyncio.run(main())


def later() -> datetime:
    return datetime.now(UTC) + ABANDONED_AFTER + timedelta(seconds=1)


# Puts, in order: the marker, then sidecar and audio of each seed; 9 = every output written,
# and the server dies before the request's commit (deleting the marker).
@pytest.mark.parametrize("kill_after", [1, 2, 5, 9], ids=lambda n: f"killed-after-put-{n}")
def test_a_request_whose_store_died_mid_upload_leaves_nothing_once_the_janitor_ran(
    pipeline, planner, s3_server, kill_after
):
    bucket = s3_server.new_bucket("janitor")
    store = MinioStore(s3_server.minio_config(bucket))
    killer = KillAfterPuts(store, s3_server, kill_after)
    engine = GenerationEngine({TEST_MODEL: pipeline}, killer, EngineConfig(io_workers=1, batch_wait_s=0.5))
    request_id = f"killed{kill_after}"
    try:
        with pytest.raises(Unavailable):
            generate(engine, planner, request_id)
    finally:
        s3_server.start()
    assert len(killer.puts) == kill_after

    left_behind = [key for key in store.list() if request_id in key]
    janitor = Janitor(PendingUploads(store), ABANDONED_AFTER)
    assert janitor.sweep().waiting == 1  # too young: the request might still be writing
    report = janitor.sweep(later())

    assert left_behind and f"jobs/uploads/{request_id}.json" in left_behind
    assert sorted(report.removed_objects) == sorted(key for key in left_behind if not key.startswith("jobs/"))
    assert [key for key in store.list() if request_id in key] == []


def test_a_committed_request_leaves_no_marker_and_the_janitor_keeps_its_outputs(pipeline, planner, tmp_path):
    store = LocalStore(tmp_path)
    engine = GenerationEngine({TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.5))
    response = generate(engine, planner, "committed")
    outputs = sorted(key for output in response.outputs for key in (output.key, output.sidecar_key))

    report = Janitor(PendingUploads(store), ABANDONED_AFTER).sweep(later())
    assert report.removed_objects == [] and report.swept_requests == []
    assert store.list() == outputs and len(outputs) == 2 * len(SEEDS)


def test_the_janitor_removes_audio_before_sidecars_and_only_in_the_request_folder(tmp_path):
    store = LocalStore(tmp_path)
    uploads = PendingUploads(store)
    uploads.begin("r1", "2026-01-01/r1", datetime.now(UTC))
    for key in ("2026-01-01/r1/1.wav.json", "2026-01-01/r1/1.wav", "2026-01-01/r1/2.wav.json"):
        store.put(key, b"x", "application/octet-stream")
    store.put("2026-01-01/r10/1.wav", b"another request", "audio/wav")

    report = Janitor(uploads, ABANDONED_AFTER).sweep(later())
    assert report.removed_objects == ["2026-01-01/r1/1.wav", "2026-01-01/r1/1.wav.json", "2026-01-01/r1/2.wav.json"]
    assert report.swept_requests == ["jobs/uploads/r1.json"]
    assert store.list() == ["2026-01-01/r10/1.wav"]
