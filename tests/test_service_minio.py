"""The service with the MinIO store, against a real S3 endpoint on 127.0.0.1, over real HTTP.

The generator here takes one request at a time and queues one more, so a
burst also shows Serve's backpressure reaching the client as a 503.
"""

from __future__ import annotations

import io
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile as sf
from minio import Minio

from deployments.app import build_app

from .conftest import TEST_MODEL, run_app
from .s3_server import S3TestServer

APP = "acestep-minio"
PREFIX = "/minio"
BUCKET = "music-outputs"


@pytest.fixture(scope="module")
def s3():
    with S3TestServer() as server:
        yield server


@pytest.fixture(scope="module")
def client(serve_instance, s3):
    from ray import serve

    app = build_app(
        dict(
            models=[TEST_MODEL],
            num_gpus=0,
            batch_wait_s=0.05,
            storage={
                "kind": "minio",
                "minio": {
                    "endpoint": s3.endpoint,
                    "access_key": "test-access-key",
                    "secret_key": "test-secret-key",
                    "bucket": BUCKET,
                    "secure": False,
                    "region": "us-east-1",
                },
            },
            # The tightest queue limits.
            deployment_options={"Generator": {"max_ongoing_requests": 1, "max_queued_requests": 1}},
        )
    )
    run_app(app, APP, PREFIX)
    with httpx.Client(base_url=f"{serve_instance}{PREFIX}", timeout=60) as client:
        yield client
    serve.delete(APP)


@pytest.fixture(scope="module")
def bucket(s3) -> Minio:
    return Minio(s3.endpoint, "test-access-key", "test-secret-key", secure=False, region="us-east-1")


def keys(bucket: Minio) -> list[str]:
    return sorted(obj.object_name for obj in bucket.list_objects(BUCKET, recursive=True))


BODY = {"prompt": "minimal techno", "preset": "precision", "audio_duration": 1.0}


def test_outputs_land_in_the_bucket_with_presigned_urls_and_sidecars(client, bucket, s3):
    response = client.post("/generate", json={**BODY, "actual_seeds": [1, 2], "format": "flac"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(output["batch_size"] for output in body["outputs"]) == [2, 2]
    for output in body["outputs"]:
        assert output["url"].startswith(f"http://{s3.endpoint}/{BUCKET}/{output['key']}?")
        assert "X-Amz-Signature=" in output["url"]
        with urllib.request.urlopen(output["url"], timeout=10) as fetched:
            audio, rate = sf.read(io.BytesIO(fetched.read()), always_2d=True)
        assert (rate, audio.shape) == (48000, (48000, 2))
        sidecar = json.loads(bucket.get_object(BUCKET, f"{output['key']}.json").read())
        assert sidecar["params"] == body["params"] and sidecar["object"]["key"] == output["key"]
    # Outputs are served by the store, not by the ingress.
    assert client.get(f"/outputs/{body['outputs'][0]['key']}").status_code == 404


def test_with_the_store_down_a_request_is_a_503_and_leaves_nothing(client, bucket, s3):
    assert client.post("/generate", json=BODY).status_code == 200
    before = keys(bucket)
    s3.stop()
    try:
        response = client.post("/generate", json=BODY)
        health = client.get("/health")
    finally:
        s3.start()
    assert response.status_code == 503 and "retry-after" in response.headers
    assert response.json()["error"]["type"] == "unavailable" and s3.endpoint not in response.text
    assert health.status_code == 503 and health.json()["storage"] == "unavailable"
    assert keys(bucket) == before
    assert client.post("/generate", json=BODY).status_code == 200  # recovered with the store


def test_a_burst_beyond_the_queue_gets_503_with_retry_after(client):
    body = {**BODY, "infer_step": 60, "audio_duration": 4.0}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post("/generate", json=body), range(8)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] and response.json()["error"]["type"] == "unavailable"
