"""Asynchronous jobs over real HTTP: submit, progress, server-sent events, cancel, webhooks, restarts.

One app for the module (ingress, job coordinator, generator on the tiny model, local store).
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from deployments.app import build_app
from serve_app.progress import STAGE_ORDER

from .conftest import TEST_MODEL, run_app

APP = "acestep-jobs"


@pytest.fixture(scope="module")
def outputs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("job-outputs")


@pytest.fixture(scope="module")
def client(serve_instance, outputs_dir):
    from ray import serve

    app = build_app(
        {
            "models": [TEST_MODEL],
            "num_gpus": 0,
            "storage": {"kind": "local", "local_root": str(outputs_dir)},
            "batch_wait_s": 0.5,
            "max_batch_size": 4,
            "webhook_allow_private_networks": True,  # the receiver is on 127.0.0.1
        }
    )
    run_app(app, APP, "/")
    with httpx.Client(base_url=serve_instance, timeout=60) as client:
        yield client
    serve.delete(APP)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POST."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhooks():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def submit(client: httpx.Client, **fields) -> dict:
    body = {"prompt": "lofi hip hop", "audio_duration": 1.5, "infer_step": 6, **fields}
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert response.headers["location"] == accepted["status_url"] == f"/jobs/{accepted['job_id']}"
    return accepted


def status(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(client: httpx.Client, job_id: str, predicate, timeout_s: float = 120) -> tuple[dict, list[dict]]:
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(status(client, job_id))
        if predicate(seen[-1]):
            return seen[-1], seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the state; last: {seen[-1]}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def outputs_of(outputs_dir, job_id: str) -> list:
    return [path for path in outputs_dir.rglob("*") if job_id in str(path) and path.suffix == ".wav"]


def progress_key(job: dict) -> tuple[int, int]:
    return STAGE_ORDER[job["progress"]["stage"]], job["progress"]["step"]


def test_jobs_rise_monotonically_to_done_and_return_the_generate_result(client):
    jobs = [submit(client, actual_seeds=[index + 1]) for index in range(3)]
    assert all(job["status"] == "queued" and job["queue_position"] is not None for job in jobs)
    for seed, job in enumerate(jobs, start=1):
        final, seen = wait_until(client, job["job_id"], finished)
        assert final["status"] == "succeeded", final
        keys = [progress_key(entry) for entry in seen]
        assert keys == sorted(keys) and keys[-1] == (STAGE_ORDER["done"], final["progress"]["total_steps"])
        assert final["eta_s"] == 0.0 and final["attempts"] == 1 and final["started_at"] and final["finished_at"]
        (output,) = final["result"]["outputs"]
        assert final["result"]["request_id"] == job["job_id"] and output["seed"] == seed
        audio, rate = sf.read(io.BytesIO(client.get(output["url"]).content), always_2d=True)
        assert (rate, audio.shape) == (48000, (int(1.5 * 48000), 2)) and np.isfinite(audio).all()


def test_server_sent_events_stream_the_progress_until_the_end(client):
    job = submit(client, actual_seeds=[11], infer_step=100)  # long enough to be seen running
    events = []
    with client.stream("GET", job["events_url"]) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    keys = [progress_key(event) for event in events]
    assert events[-1]["status"] == "succeeded" and keys == sorted(keys)
    assert any(event["status"] == "running" for event in events)


def test_cancel_a_queued_and_a_running_job_while_the_others_finish(client, outputs_dir):
    slow = {"audio_duration": 2.0, "infer_step": 200, "scheduler_type": "heun"}
    running = submit(client, actual_seeds=[21], **slow)
    mate = submit(client, actual_seeds=[22], **slow)  # same batch key: shares the forward passes
    queued = submit(client, actual_seeds=[23], audio_duration=1.0)  # another duration waits for the GPU
    wait_until(client, running["job_id"], lambda job: job["status"] == "running" and job["progress"]["step"] >= 2)
    assert status(client, queued["job_id"])["status"] == "queued"

    cancelled_queued = client.delete(f"/jobs/{queued['job_id']}")
    assert cancelled_queued.status_code == 200 and cancelled_queued.json()["status"] == "cancelled"
    cancelled_running = client.delete(f"/jobs/{running['job_id']}")
    assert cancelled_running.status_code == 200 and cancelled_running.json()["status"] == "cancelled"

    mate_final, _ = wait_until(client, mate["job_id"], finished)
    assert mate_final["status"] == "succeeded" and mate_final["result"]["outputs"][0]["batch_size"] == 2
    assert status(client, running["job_id"])["status"] == "cancelled"
    assert outputs_of(outputs_dir, running["job_id"]) == [] and outputs_of(outputs_dir, queued["job_id"]) == []
    assert client.delete(f"/jobs/{mate['job_id']}").status_code == 409  # finished: nothing to cancel


def test_each_finished_job_calls_its_webhook_exactly_once(client, webhooks):
    jobs = [submit(client, actual_seeds=[31 + index], webhook_url=webhooks.url) for index in range(2)]
    for job in jobs:
        final, _ = wait_until(client, job["job_id"], lambda job: finished(job) and job["webhook"]["delivered"])
        assert final["webhook"]["attempts"] == 1  # the sender stops once a POST is acknowledged
    assert sorted(headers["Idempotency-Key"] for headers, _ in webhooks.calls) == sorted(job["job_id"] for job in jobs)
    assert all(body["status"] == "succeeded" and body["result"]["outputs"] for _, body in webhooks.calls)


def _coordinator_log() -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(path.read_text() for path in logs.glob(f"replica_{APP}_JobCoordinator_*.log"))


def test_client_errors_are_logged_at_info_without_a_traceback(client):
    tracebacks = _coordinator_log().count("Traceback")
    unknown = "0" * 32
    assert client.get(f"/jobs/{unknown}").status_code == 404
    assert client.delete(f"/jobs/{unknown}").status_code == 404
    # Serve logs what a replica method raised before the caller hears of it: the log is complete now.
    log = _coordinator_log()
    assert log.count("Traceback") == tracebacks
    assert log.count("client error 404 not_found") >= 2


def test_unknown_routes_answer_in_the_documented_error_shape(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"


def test_unknown_jobs_and_bad_bodies(client):
    assert client.get("/jobs/" + "0" * 32).status_code == 404
    assert client.get("/jobs/not-a-job-id").json()["error"]["type"] == "not_found"
    assert client.delete("/jobs/" + "0" * 32).status_code == 404
    assert client.get("/jobs/" + "0" * 32 + "/events").status_code == 404
    response = client.post("/jobs", json={"prompt": "x", "webhook_url": "file:///etc/passwd"})
    assert response.status_code == 422 and response.json()["error"]["fields"][0]["field"] == "webhook_url"
    response = client.post("/generate", json={"prompt": "x", "webhook_url": "http://127.0.0.1/hook"})
    assert response.status_code == 422 and response.json()["error"]["fields"][0]["field"] == "webhook_url"
    response = client.post("/jobs", json={"prompt": "x", "output_name": "jobs/records/x"})
    assert response.status_code == 422 and response.json()["error"]["fields"][0]["field"] == "output_name"


def _kill_replica(deployment: str) -> None:
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#"):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            return
    raise AssertionError(f"no replica of {deployment}")


def _eventually(call, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except (AssertionError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _recorded_status(outputs_dir, job_id: str) -> dict:
    """The job's status as the store holds it (what a restarted coordinator resumes from)."""
    record = json.loads((outputs_dir / "jobs" / "records" / f"{job_id}.json").read_text())
    return record["status"]


def test_every_job_survives_restarts_of_the_coordinator_and_the_ingress(client, outputs_dir):
    done = submit(client, actual_seeds=[41])
    wait_until(client, done["job_id"], finished)
    slow = submit(client, actual_seeds=[42], audio_duration=4.0, infer_step=200, scheduler_type="heun")
    wait_until(client, slow["job_id"], lambda job: job["status"] == "running")
    # The running record (attempt 1) is written in the background: kill only once it is durable.
    running = _recorded_status(outputs_dir, slow["job_id"])  # written before the submit was answered
    deadline = time.monotonic() + 60
    while running["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        running = _recorded_status(outputs_dir, slow["job_id"])
    assert running["status"] == "running" and running["attempts"] == 1

    _kill_replica("JobCoordinator")  # mid-job: the new one resumes it from the store
    assert _eventually(lambda: status(client, done["job_id"]))["status"] == "succeeded"
    final, _ = wait_until(client, slow["job_id"], finished, timeout_s=240)
    assert final["status"] == "succeeded" and final["attempts"] == 2

    _kill_replica("Ingress")
    for job in (done, slow):
        assert _eventually(lambda job=job: status(client, job["job_id"]))["status"] == "succeeded"


def test_a_job_whose_generator_replica_dies_is_retried_once(client):
    job = submit(client, actual_seeds=[51], audio_duration=2.0, infer_step=120, scheduler_type="heun")
    wait_until(client, job["job_id"], lambda job: job["status"] == "running")
    _kill_replica("Generator")
    final, _ = wait_until(client, job["job_id"], finished, timeout_s=240)
    assert final["status"] == "succeeded" and final["attempts"] == 2
