"""A misconfigured store (wrong keys, a bucket that may not be created) against a real S3 server.

The ingress and the generator run in-process (the real planner, engine and
tiny model, over the ASGI app): an operator learns of the problem at start-up
and from ``/health``, naming the setting; a client gets a non-retryable error
before any GPU work, not a 503 after the whole generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from fastapi.testclient import TestClient

from serve_app.errors import StorageMisconfigured
from serve_app.generation.engine import EngineConfig, GenerationEngine
from serve_app.ingress.api import create_app
from serve_app.ingress.frontend import Frontend
from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.jobs import JobCoordinator, JobRecords, JobRequest
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.storage import MinioStore

from .conftest import TEST_MODEL

BODY = {"prompt": "ambient pads", "model": TEST_MODEL, "infer_step": 3, "audio_duration": 1.0, "bf16": False}


class CountingPipeline:
    """The real pipeline, counting the batches it runs (GPU work)."""

    def __init__(self, inner: MusicPipeline):
        self.inner, self.batches = inner, 0

    def __call__(self, *args, **kwargs):
        self.batches += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class EngineClient:
    """The ingress's generator client, calling the engine in-process."""

    def __init__(self, engine: GenerationEngine):
        self.engine = engine

    async def generate(self, plan):
        return await self.engine.generate(plan)

    async def ready(self) -> bool:
        return True


@pytest.fixture(scope="module")
def real_pipeline(models_root):
    pipeline = MusicPipeline(TEST_MODEL, "cpu", models_root=models_root)
    pipeline.model(bf16=False)
    return pipeline


@pytest.fixture
def service(real_pipeline):
    """``service(store, check_at_start)`` → (HTTP client, counting pipeline)."""
    running = contextlib.ExitStack()

    def make(store, check_at_start: bool = True):
        pipeline = CountingPipeline(real_pipeline)
        engine = GenerationEngine({TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.0))
        if check_at_start:
            engine.check_store()  # what the generator deployment does when it starts
        planner = Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)
        app = create_app(Frontend(planner, EngineClient(engine), store))
        # Entered, so every request runs on one event loop: the engine's batching task lives there and
        # is closed there before the loop ends.
        client = running.enter_context(TestClient(app, raise_server_exceptions=False))
        running.callback(client.portal.call, engine.close)
        return client, pipeline

    with running:
        yield make


def assert_misconfigured(response, setting: str) -> None:
    assert response.status_code == 500, response.text
    assert "retry-after" not in response.headers
    error = response.json()["error"]
    assert error["type"] == "storage_misconfigured" and setting in error["message"]


def test_a_wrong_secret_key_is_named_at_start_up_and_in_health(s3_server, s3_bucket, service, caplog):
    store = MinioStore(s3_server.minio_config(s3_bucket, secret_key="not-the-secret"))
    with caplog.at_level(logging.ERROR, logger="serve_app.generation.engine"):
        client, pipeline = service(store)
    assert any("misconfigured" in r.message and "MINIO_SECRET_KEY" in r.message for r in caplog.records)
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["storage"] == "misconfigured" and "MINIO_SECRET_KEY" in health.json()["storage_problem"]
    assert s3_server.endpoint not in health.text
    assert_misconfigured(client.post("/generate", json=BODY), "MINIO_SECRET_KEY")
    assert pipeline.batches == 0  # refused before any GPU work


def test_a_wrong_secret_key_found_by_a_write_is_not_an_outage(s3_server, s3_bucket, service):
    # Not checked at start: the first request finds out when it writes, and
    # gets a 500 that says so rather than a 503 inviting a retry; the next is
    # refused before generating.
    store = MinioStore(s3_server.minio_config(s3_bucket, secret_key="not-the-secret"))
    client, pipeline = service(store, check_at_start=False)
    assert_misconfigured(client.post("/generate", json=BODY), "MINIO_SECRET_KEY")
    assert pipeline.batches == 1
    assert_misconfigured(client.post("/generate", json=BODY), "MINIO_SECRET_KEY")
    assert pipeline.batches == 1


def test_a_missing_bucket_is_refused_until_an_operator_creates_it(s3_server, s3_bucket, service):
    store = MinioStore(s3_server.minio_config(s3_bucket, create_bucket=False))
    client, pipeline = service(store)
    assert_misconfigured(client.post("/generate", json=BODY), "MINIO_BUCKET")
    assert client.get("/health").json()["storage"] == "misconfigured"
    assert pipeline.batches == 0
    s3_server.client().make_bucket(s3_bucket)
    response = client.post("/generate", json=BODY)  # noticed without a restart
    assert response.status_code == 200, response.text
    assert pipeline.batches == 1 and client.get("/health").json()["storage"] == "ok"


def test_a_job_is_refused_as_misconfigured_when_it_cannot_be_recorded(s3_server, s3_bucket):
    store = MinioStore(s3_server.minio_config(s3_bucket, secret_key="not-the-secret"))
    started = []
    planner = Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)
    plan = planner.plan(JobRequest(**BODY), "a" * 32)

    async def submit():
        jobs = JobCoordinator(JobRecords(store), lambda plan: started.append(plan))
        try:
            await jobs.submit(plan)
        finally:
            await jobs.close()

    with pytest.raises(StorageMisconfigured, match="MINIO_SECRET_KEY"):
        asyncio.run(submit())
    assert started == []
