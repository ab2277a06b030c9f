"""Scheduling on a multi-node cluster with the simulated GPU model: backlog autoscaling, batch-key routing, fairness.

The app is the service deployed from ``configs/serve_cluster_test.yaml`` (two
ingress replicas, so two routers), serving ``ace-step-simulated`` (its
denoiser sleeps the cost model's A100 time), made servable by
``ACESTEP_SIMULATED_MODELS`` in the app's runtime environment. Clients call the
ingress through its handle. Assertions are about counts and order, never
about how long anything took.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_app.pipeline.registry import SIMULATED_MODELS_ENV
from serve_app.schemas import GenerateRequest

from .cluster import GpuCluster

APP = "acestep"
MODEL = "ace-step-simulated"
SIMULATED = {"runtime_env": {"env_vars": {SIMULATED_MODELS_ENV: "1"}}}
ANSWER_TIMEOUT_S = 240
# A draft-sized item: 10 s of audio, 20 steps (about 0.2 simulated GPU seconds alone).
DRAFT = {"audio_duration": 10.0, "infer_step": 20}
# A song-sized item: 60 s, 60 steps (about 4 simulated GPU seconds alone, 13 in a batch of 4).
SONG = {"audio_duration": 60.0, "infer_step": 60}
# Between the two: 30 s, 30 steps (about 3.4 s for a batch of 4).
CLIP = {"audio_duration": 30.0, "infer_step": 30}


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.new_bucket("scheduling")


def deploy(cluster: GpuCluster, s3_server, bucket: str, generator: dict, **args) -> None:
    cluster.deploy(
        {
            "models": [MODEL],
            "storage": {"minio": s3_server.minio_settings(bucket)},
            "warmup": False,
            "generate_timeout_s": ANSWER_TIMEOUT_S,  # a backlog waits at the callers: let it
            "deployment_options": {"Generator": {"max_replicas_per_node": 2, **generator}},
            **args,
        },
        application=SIMULATED,
    )


def request(index: int, **fields) -> GenerateRequest:
    return GenerateRequest(prompt=f"song {index}", model=MODEL, actual_seeds=[index], sample_rate=16000, **fields)


def generate_all(requests: list[GenerateRequest]):
    from ray import serve

    handle = serve.get_app_handle(APP)
    calls = [handle.generate.remote(one) for one in requests]
    return [call.result(timeout_s=ANSWER_TIMEOUT_S) for call in calls]


def test_a_burst_scales_generators_with_the_backlog_and_idle_returns_them_to_the_minimum(
    gpu_cluster, s3_server, bucket
):
    scaling = {"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 1, "downscale_delay_s": 3}
    deploy(
        gpu_cluster,
        s3_server,
        bucket,
        {"autoscaling_config": scaling, "max_ongoing_requests": 4},
        autoscaling="backlog",
        target_queue_wait_s=10,
        max_batch_size=4,
    )
    assert gpu_cluster.replicas("Generator") == 1

    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(gpu_cluster.replicas("Generator"))
            done.wait(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # 24 songs: about 80 simulated GPU seconds, 8 times the target wait for one replica.
        responses = generate_all([request(i, **SONG) for i in range(24)])
    finally:
        done.set()
        watcher.join()
    assert [len(response.outputs) for response in responses] == [1] * 24
    assert max(seen) == 3, seen  # scaled to the maximum while the backlog lasted
    gpu_cluster.wait_for(lambda: gpu_cluster.replicas("Generator") == 1, 120, "back to the minimum when idle")


def test_requests_of_one_batch_key_meet_on_one_replica_while_their_batch_has_room(gpu_cluster, s3_server, bucket):
    deploy(
        gpu_cluster,
        s3_server,
        bucket,
        {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}, "max_ongoing_requests": 8},
        routing="batch_key",
        max_batch_size=4,
        batch_wait_s=2.0,  # an idle replica waits this long for batch-mates
    )
    gpu_cluster.wait_for(lambda: gpu_cluster.replicas("Generator") == 2, 120, "two generators")
    # Two keys, four items each, sent at once through two ingress replicas (two routers): each
    # key's four can only share one batch if every router sent them to the same replica.
    first = [request(i, **DRAFT) for i in range(4)]
    second = [request(i, **{**DRAFT, "audio_duration": 20.0}) for i in range(4, 8)]
    responses = generate_all([one for pair in zip(first, second) for one in pair])
    assert [response.outputs[0].batch_size for response in responses] == [4] * 8


def test_a_flooded_key_does_not_hold_back_a_lone_request_of_another_key(gpu_cluster, s3_server, bucket):
    # One replica with room for everything, so the order below is the replica's alone.
    deploy(
        gpu_cluster,
        s3_server,
        bucket,
        {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}, "max_ongoing_requests": 16},
        max_batch_size=4,
    )
    gpu_cluster.wait_for(lambda: gpu_cluster.replicas("Generator") == 1, 120, "one generator")
    from ray import serve

    handle = serve.get_app_handle(APP)
    finished: list[tuple[str, int]] = []  # (key, submission number), in order of completion
    numbers = iter(range(10**6))
    lock, stop = threading.Lock(), threading.Event()

    def send(key: str, fields: dict) -> int:
        with lock:
            number = next(numbers)
        handle.generate.remote(request(number, **fields)).result(timeout_s=ANSWER_TIMEOUT_S)
        with lock:
            finished.append((key, number))
        return number

    def flood() -> None:
        while not stop.is_set():
            send("flood", CLIP)

    with ThreadPoolExecutor(9) as pool:
        floods = [pool.submit(flood) for _ in range(8)]
        gpu_cluster.wait_for(lambda: len(finished) >= 8, ANSWER_TIMEOUT_S, "the flood under way")
        lone = pool.submit(send, "lone", DRAFT).result(timeout=ANSWER_TIMEOUT_S)
        position = finished.index(("lone", lone))
        gpu_cluster.wait_for(lambda: len(finished) >= position + 8, ANSWER_TIMEOUT_S, "the flood going on")
        stop.set()
        for future in floods:
            future.result(timeout=ANSWER_TIMEOUT_S)

    overtaking = [number for key, number in finished[:position] if key == "flood" and number > lone]
    # The lone request waits for what was queued before it; flood requests sent after it get
    # ahead by at most one batch (4 items) however long the flood goes on.
    assert len(overtaking) <= 4, (lone, finished)
