"""The service on a multi-node Ray cluster, over real HTTP, with outputs in a real S3 server (SeaweedFS).

One cluster for the module (``gpu_cluster``: a head without GPUs, two workers
declaring 2 GPUs each) and one app deployed from ``configs/serve_cluster_test.yaml``
the way ``serve deploy`` does. The tests run in file order and share that app:
scale-out, jobs, node loss, then no GPU at all. ``pytest -s`` prints the
timings (replica start, scale-out, recovery after a node loss).
"""

from __future__ import annotations

import io
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile as sf

from .cluster import GpuCluster

APP = "acestep"
QUICK = {"prompt": "minimal techno", "preset": "precision", "audio_duration": 1.0, "infer_step": 4}
# Long enough to still be on the generator when its node goes away.
SLOW = {**QUICK, "audio_duration": 2.0, "infer_step": 40}
ANSWER_TIMEOUT_S = 60
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.new_bucket("cluster")


@pytest.fixture(scope="module")
def cluster(gpu_cluster: GpuCluster, s3_server, bucket):
    started = time.monotonic()
    gpu_cluster.deploy({"storage": {"minio": s3_server.minio_settings(bucket)}})
    TIMINGS["deploy to RUNNING (first generator replica started, model loaded)"] = time.monotonic() - started
    yield gpu_cluster
    print("\ncluster timings:", *(f"  {what}: {seconds:.1f} s" for what, seconds in TIMINGS.items()), sep="\n")


@pytest.fixture(scope="module")
def client(cluster):
    with httpx.Client(base_url=cluster.base_url, timeout=ANSWER_TIMEOUT_S) as client:
        yield client


def fetch_presigned(url: str) -> tuple[int, tuple[int, int]]:
    with urllib.request.urlopen(url, timeout=10) as fetched:
        audio, rate = sf.read(io.BytesIO(fetched.read()), always_2d=True)
    return rate, audio.shape


class Load:
    """``clients`` threads posting ``body`` to /generate back to back until stopped."""

    def __init__(self, client: httpx.Client, body: dict, clients: int = 8) -> None:
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self._threads = [threading.Thread(target=self._run, args=(client, body)) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: httpx.Client, body: dict) -> None:
        while not self.stop.is_set():
            self.statuses.append(client.post("/generate", json=body).status_code)

    def finish(self) -> list[int]:
        self.stop.set()
        for thread in self._threads:
            thread.join(ANSWER_TIMEOUT_S)
        return self.statuses


def two_generators_on_two_nodes(cluster: GpuCluster, client: httpx.Client) -> float:
    """Load the service until the generator has scaled out to 2 replicas on 2 nodes; the seconds it took."""
    load = Load(client, QUICK)
    try:
        return cluster.wait_for(
            lambda: cluster.replicas("Generator") == 2 and len(set(cluster.node_of_replicas("Generator"))) == 2,
            180,
            "generator scaled out to 2 replicas on 2 nodes",
        )
    finally:
        statuses = load.finish()
        # A request that no replica takes within generate_timeout_s (the second one still
        # loading, the first one full) is shed with a 503, never left waiting.
        assert 200 in statuses and set(statuses) <= {200, 503}, statuses


def job_status(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_job_end(cluster: GpuCluster, client: httpx.Client, job_id: str) -> dict:
    cluster.wait_for(lambda: job_status(client, job_id)["status"] not in ("queued", "running"), 120, "job ended")
    return job_status(client, job_id)


def test_under_load_generators_scale_out_over_nodes_and_every_output_is_readable(cluster, client, s3_server, bucket):
    assert cluster.replicas("Generator") == 1
    TIMINGS["scale-out 1 -> 2 generator replicas under 8 clients"] = two_generators_on_two_nodes(cluster, client)
    head = cluster.cluster.head_node.node_id
    assert head not in cluster.node_of_replicas("Generator")
    # Each replica takes at most 4 requests (max_ongoing_requests), so 8 at once reach both nodes.
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda seed: client.post("/generate", json={**QUICK, "actual_seeds": [seed]}), range(8))
        )
    assert [response.status_code for response in responses] == [200] * 8, [r.text for r in responses]
    for response in responses:
        (output,) = response.json()["outputs"]
        assert output["url"].startswith(f"http://{s3_server.endpoint}/{bucket}/{output['key']}?")
        assert fetch_presigned(output["url"]) == (48000, (48000, 2))


def test_a_job_submitted_through_one_ingress_replica_is_read_through_every_one(cluster, client):
    assert cluster.replicas("Ingress") == 2  # the config's Serve-level `deployments:` override
    accepted = client.post("/jobs", json=QUICK)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    # The head's proxy spreads these reads over both ingress replicas; each must know the job.
    ended = wait_for_job_end(cluster, client, job_id)
    assert ended["status"] == "succeeded", ended
    assert all(job_status(client, job_id) == ended for _ in range(8))
    (output,) = ended["result"]["outputs"]
    assert fetch_presigned(output["url"]) == (48000, (48000, 2))


def test_the_local_store_refuses_a_cluster_of_several_nodes(cluster):
    from deployments.app import build_app

    with pytest.raises(ValueError, match="storage.kind"):
        build_app({"models": ["ace-step-v1-tiny"], "storage": {"kind": "local"}})


def test_a_lost_node_answers_every_request_in_flight_and_jobs_on_it_end(cluster, client):
    if cluster.replicas("Generator") < 2:
        two_generators_on_two_nodes(cluster, client)
    job = client.post("/jobs", json=SLOW)
    assert job.status_code == 202
    job_id = job.json()["job_id"]
    with ThreadPoolExecutor(8) as pool:
        in_flight = [pool.submit(client.post, "/generate", json=SLOW) for _ in range(8)]
        cluster.wait_for(lambda: job_status(client, job_id)["status"] == "running", 60, "job running")
        victim = cluster.node_of_replicas("Generator")[0]
        removed_at = time.monotonic()
        cluster.remove_node(victim)
        responses = [future.result() for future in in_flight]
        TIMINGS["node removed -> last of 8 in-flight requests answered"] = time.monotonic() - removed_at
    print("\nin flight when the node went away:", [response.status_code for response in responses])
    print(*(response.json()["error"]["message"] for response in responses if response.status_code != 200), sep="\n")
    for response in responses:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert response.headers["retry-after"] and "lost" in response.json()["error"]["message"]
    # The job resumes on the surviving replica (one retry) or fails naming the loss.
    ended = wait_for_job_end(cluster, client, job_id)
    assert ended["status"] == "succeeded" or "lost" in (ended["error"] or {}).get("message", ""), ended
    # The surviving replica serves at once; the lost one comes back with a new GPU node.
    assert client.post("/generate", json=QUICK).status_code == 200
    cluster.add_gpu_node()
    cluster.wait_for(lambda: cluster.replicas("Generator") == 2, 120, "replacement generator RUNNING")
    TIMINGS["node removed -> replacement generator RUNNING (new node added)"] = time.monotonic() - removed_at
    assert victim not in cluster.node_of_replicas("Generator")
    assert client.post("/generate", json=QUICK).status_code == 200


def test_with_no_gpu_left_a_request_gets_a_503_after_the_configured_wait(cluster, client):
    for node in cluster.node_of_replicas("Generator"):
        cluster.remove_node(node)
    cluster.wait_for(lambda: cluster.replicas("Generator") == 0, 60, "generators gone")
    started = time.monotonic()
    response = client.post("/generate", json=QUICK)
    TIMINGS["no GPU left -> 503 (generate_timeout_s 10)"] = time.monotonic() - started
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "no generator replica is available" in response.json()["error"]["message"]
