"""The whole app started while its S3 store (a real SeaweedFS) is down, over real HTTP.

Every deployment must come up without its store, say so in ``/health``, and
serve jobs once the store returns, without anyone restarting anything.
"""

from __future__ import annotations

import time

import httpx
import pytest

from deployments.app import build_app

from .conftest import TEST_MODEL, run_app

APP = "acestep-outage"
PREFIX = "/outage"
JOB = {"prompt": "dub techno", "audio_duration": 1.0, "infer_step": 3}
RECOVERY_DEADLINE_S = 30.0
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def stopped_store(s3_server):
    """The session's S3 server, stopped for the start of this module's app; started again after."""
    s3_server.stop()
    try:
        yield s3_server
    finally:
        s3_server.start()


@pytest.fixture(scope="module")
def client(serve_instance, stopped_store):
    from ray import serve

    app = build_app(
        dict(
            models=[TEST_MODEL],
            num_gpus=0,
            batch_wait_s=0.05,
            storage={"kind": "minio", "minio": stopped_store.minio_settings(stopped_store.new_bucket("outage"))},
        )
    )
    run_app(app, APP, PREFIX)  # returns only once every deployment is running
    with httpx.Client(base_url=f"{serve_instance}{PREFIX}", timeout=60) as client:
        yield client
    serve.delete(APP)


def poll(call, done, deadline_s: float):
    """``call()`` until ``done(result)``; each call is bounded by the server, the whole by ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = call()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_the_app_starts_without_its_store_and_serves_jobs_once_it_returns(client, stopped_store):
    refused = client.post("/jobs", json=JOB)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] and "storage" in refused.json()["error"]["message"]
    assert stopped_store.endpoint not in refused.text  # endpoints are for the log, not for clients

    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["storage"] == "unavailable" and health.json()["jobs"] == "waiting for storage"

    stopped_store.start()
    accepted = poll(lambda: client.post("/jobs", json=JOB), lambda r: r.status_code == 202, RECOVERY_DEADLINE_S)
    assert accepted.status_code == 202, accepted.text

    job_id = accepted.json()["job_id"]
    final = poll(lambda: client.get(f"/jobs/{job_id}").json(), lambda job: job["status"] in FINAL, 120)
    assert final["status"] == "succeeded", final
    assert client.get("/health").json() == {"status": "ok", "generator": "ready", "storage": "ok", "jobs": "ready"}
