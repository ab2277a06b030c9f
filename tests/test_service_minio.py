"""The service with the MinIO store, against a real S3 server (SeaweedFS) on 127.0.0.1, over real HTTP.

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

from deployments.app import build_app

from .conftest import TEST_MODEL, run_app

APP = "acestep-minio"
PREFIX = "/minio"


@pytest.fixture(scope="module")
def s3(s3_server):
    return s3_server


@pytest.fixture(scope="module")
def bucket_name(s3) -> str:
    return s3.new_bucket("music")


@pytest.fixture(scope="module")
def client(serve_instance, s3, bucket_name):
    from ray import serve

    app = build_app(
        dict(
            models=[TEST_MODEL],
            num_gpus=0,
            batch_wait_s=0.05,
            storage={"kind": "minio", "minio": s3.minio_settings(bucket_name)},
            # The tightest queue limits.
            deployment_options={"Generator": {"max_ongoing_requests": 1, "max_queued_requests": 1}},
        )
    )
    run_app(app, APP, PREFIX)
    with httpx.Client(base_url=f"{serve_instance}{PREFIX}", timeout=60) as client:
        yield client
    serve.delete(APP)


def keys(s3, bucket_name: str) -> list[str]:
    return sorted(obj.object_name for obj in s3.client().list_objects(bucket_name, recursive=True))


BODY = {"prompt": "minimal techno", "preset": "precision", "audio_duration": 1.0}


def test_outputs_land_in_the_bucket_with_presigned_urls_and_sidecars(client, s3, bucket_name):
    response = client.post("/generate", json={**BODY, "actual_seeds": [1, 2], "format": "flac"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(output["batch_size"] for output in body["outputs"]) == [2, 2]
    for output in body["outputs"]:
        assert output["url"].startswith(f"http://{s3.endpoint}/{bucket_name}/{output['key']}?")
        assert "X-Amz-Signature=" in output["url"]
        with urllib.request.urlopen(output["url"], timeout=10) as fetched:
            audio, rate = sf.read(io.BytesIO(fetched.read()), always_2d=True)
        assert (rate, audio.shape) == (48000, (48000, 2))
        sidecar = json.loads(s3.client().get_object(bucket_name, f"{output['key']}.json").read())
        assert sidecar["params"] == body["params"] and sidecar["object"]["key"] == output["key"]
    # Outputs are served by the store, not by the ingress.
    assert client.get(f"/outputs/{body['outputs'][0]['key']}").status_code == 404


def test_with_the_store_down_a_request_is_a_503_and_leaves_nothing(client, s3, bucket_name):
    assert client.post("/generate", json=BODY).status_code == 200
    before = keys(s3, bucket_name)
    s3.stop()
    try:
        response = client.post("/generate", json=BODY)
        health = client.get("/health")
    finally:
        s3.start()
    assert response.status_code == 503 and "retry-after" in response.headers
    assert response.json()["error"]["type"] == "unavailable" and s3.endpoint not in response.text
    assert health.status_code == 503 and health.json()["storage"] == "unavailable"
    assert keys(s3, bucket_name) == before
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
