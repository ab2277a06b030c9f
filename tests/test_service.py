"""The whole service over real HTTP: Ray Serve, the ingress, the generator, the tiny model, the local store.

One app for the module; requests go to 127.0.0.1 through Serve's proxy.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from deployments.app import build_app

from .conftest import METRICS_PORT, TEST_MODEL, run_app

APP = "acestep"
DURATION = 1.5


@pytest.fixture(scope="module")
def outputs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def base_url(serve_instance, outputs_dir):
    from ray import serve

    app = build_app(
        {
            "models": [TEST_MODEL],
            "num_gpus": 0,
            "storage": {"kind": "local", "local_root": str(outputs_dir)},
            "batch_wait_s": 0.4,
            "max_batch_size": 4,
        }
    )
    run_app(app, APP, "/")
    yield serve_instance
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def generate(client: httpx.Client, **fields) -> dict:
    body = {"prompt": "lofi hip hop, mellow piano", "audio_duration": DURATION, **fields}
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def fetch_audio(client: httpx.Client, output: dict) -> tuple[np.ndarray, int]:
    response = client.get(output["url"])
    assert response.status_code == 200
    return sf.read(io.BytesIO(response.content), dtype="float32", always_2d=True)


def field_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [error["field"] for error in response.json()["error"]["fields"]]


# ------------------------------------------------------------------ recipes


@pytest.mark.parametrize("preset", ["balanced", "freestyle", "precision"])
def test_each_guide_recipe_returns_the_requested_audio_with_its_sidecar(client, outputs_dir, preset):
    body = generate(client, preset=preset, actual_seeds=[42])
    (output,) = body["outputs"]
    audio, rate = fetch_audio(client, output)
    assert (rate, audio.shape) == (48000, (int(DURATION * 48000), 2))
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert (output["sample_rate"], output["duration"], output["format"], output["seed"]) == (48000, DURATION, "wav", 42)
    assert output["url"] == f"/outputs/{output['key']}"

    sidecar = json.loads(client.get(f"/outputs/{output['key']}.json").content)
    assert sidecar["params"] == body["params"] and sidecar["preset"] == preset
    recipe = client.get("/presets").json()
    (params,) = [entry["params"] for entry in recipe if entry["name"] == preset]
    assert {name: body["params"][name] for name in params} == params
    assert set(body["timings"]) >= {"queue_s", "diffusion_s", "decode_s", "encode_s", "upload_s", "total_s"}


def test_the_same_request_and_seed_give_the_same_samples(client):
    first = generate(client, preset="precision", actual_seeds=[7])
    again = generate(client, **first["params"])  # the resolved parameters repeat the request exactly
    assert again["params"] == first["params"]
    np.testing.assert_array_equal(
        fetch_audio(client, first["outputs"][0])[0], fetch_audio(client, again["outputs"][0])[0]
    )
    other = generate(client, preset="precision", actual_seeds=[8])
    assert not np.array_equal(fetch_audio(client, first["outputs"][0])[0], fetch_audio(client, other["outputs"][0])[0])


def test_seeds_are_drawn_and_returned_when_absent(client):
    body = generate(client, batch_size=2, infer_step=3)
    seeds = [output["seed"] for output in body["outputs"]]
    assert len(set(seeds)) == 2 and body["params"]["actual_seeds"] == seeds


def test_output_formats_and_names(client, outputs_dir):
    body = generate(client, infer_step=3, format="mp3", mp3_bitrate_kbps=128, output_name="albums/demo/take")
    (output,) = body["outputs"]
    assert output["format"] == "mp3" and output["key"].endswith(f"/take-{output['seed']}.mp3")
    assert output["key"].startswith("albums/demo/")
    audio, rate = fetch_audio(client, output)
    assert rate == 48000 and audio.shape == (int(DURATION * 48000), 2)
    assert (outputs_dir / output["key"]).is_file()

    legacy = generate(client, infer_step=3, format="ogg", output_path="legacy/song")
    assert legacy["params"]["output_name"] == "legacy/song" and legacy["outputs"][0]["key"].endswith(".ogg")


# ------------------------------------------------------------------ batching


def test_concurrent_requests_of_different_durations_never_share_a_batch(client):
    # How many share a batch depends on when each request reaches the generator, so the exact
    # composition is checked in-process (test_engine.py); over HTTP only what timing cannot change.
    bodies = [
        {"prompt": f"song {index}", "infer_step": 3, "audio_duration": duration, "actual_seeds": [index]}
        for index, duration in enumerate([1.0, 1.0, 1.0, 2.0, 2.0])
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/generate", json=body), bodies))
    outputs = [response.json()["outputs"][0] for response in responses]
    assert [output["duration"] for output in outputs] == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert all(1 <= output["batch_size"] <= 3 for output in outputs[:3])
    assert all(1 <= output["batch_size"] <= 2 for output in outputs[3:])


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"infer_step": 0}, "infer_step"),
        ({"guidance_scale": 100}, "guidance_scale"),
        ({"audio_duration": 1000}, "audio_duration"),
        ({"audio_duration": -1}, "audio_duration"),
        ({"actual_seeds": list(range(9))}, "actual_seeds"),
        ({"scheduler_type": "ddim"}, "scheduler_type"),
        ({"format": "aiff"}, "format"),
        ({"format": "mp3", "mp3_bitrate_kbps": 100}, "mp3_bitrate_kbps"),
        ({"output_name": "../../etc/passwd"}, "output_name"),
        ({"output_path": "/tmp/song.wav"}, "output_path"),
        ({"checkpoint_path": "/models/acestep"}, "checkpoint_path"),
        ({"temperature": 0.7}, "temperature"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, fields, field):
    assert field in field_of(client.post("/generate", json={"prompt": "x", **fields}))


def test_a_malformed_body_is_a_422_not_a_500(client):
    response = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert field_of(response) == ["body"]


def test_unknown_preset_or_model_lists_the_known_ones(client):
    response = client.post("/generate", json={"prompt": "x", "preset": "loud"})
    assert field_of(response) == ["preset"]
    assert all(name in response.text for name in ("balanced", "freestyle", "precision"))
    response = client.post("/generate", json={"prompt": "x", "model": "ace-step-v9"})
    assert field_of(response) == ["model"] and TEST_MODEL in response.text


def test_outputs_stream_byte_ranges_for_seeking_players(client):
    (output,) = generate(client, infer_step=3, actual_seeds=[5])["outputs"]
    whole = client.get(output["url"])
    assert whole.headers["content-type"] == "audio/wav"
    first = client.get(output["url"], headers={"Range": "bytes=0-99"})
    assert first.status_code == 206 and first.content == whole.content[:100]
    head = client.head(output["url"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)
    assert head.headers["etag"] == whole.headers["etag"]


def test_outputs_route_serves_only_the_store(client):
    assert client.get("/outputs/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/outputs/nothing/here.wav").status_code == 404


# ------------------------------------------------------------------ catalog, health, handle, metrics


def test_catalog_and_health(client):
    assert {preset["name"] for preset in client.get("/presets").json()} >= {"balanced", "freestyle", "precision"}
    models = {model["name"]: model for model in client.get("/models").json()}
    assert models[TEST_MODEL]["served"] and not models["ace-step-v1-3.5b"]["served"]
    turbo = models["acestep-v15-xl-turbo"]
    assert turbo["guidance_distilled"] and turbo["defaults"]["guidance_scale"] == 1.0
    assert models[TEST_MODEL]["min_duration_s"] == 1.0 and models[TEST_MODEL]["max_duration_s"] == 240.0
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["generator"] == "ready"


def replica_log(deployment: str) -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(path.read_text() for path in logs.glob(f"replica_{APP}_{deployment}_*.log"))


def test_replica_logs_say_which_models_and_storage_are_in_force(client, outputs_dir):
    assert re.search(rf"model {TEST_MODEL} ready: \w+ on cpu, loaded in [\d.]+ s", replica_log("Generator"))
    ingress = replica_log("Ingress")
    assert f"storage: local (LocalStore(root='{outputs_dir}'))" in ingress


def test_python_handle_api(base_url):
    from ray import serve

    from serve_app.errors import InvalidRequest
    from serve_app.responses import GenerateResponse
    from serve_app.schemas import GenerateRequest

    handle = serve.get_app_handle(APP)
    request = GenerateRequest(prompt="handle call", preset="precision", audio_duration=1.0, actual_seeds=[3])
    response = handle.generate.remote(request).result(timeout_s=60)
    assert isinstance(response, GenerateResponse)
    assert response.outputs[0].seed == 3 and response.params["cfg_type"] == "cfg_star"
    with pytest.raises(InvalidRequest) as caught:
        handle.generate.remote(GenerateRequest(prompt="x", preset="loud")).result(timeout_s=60)
    assert caught.value.status == 422 and "balanced" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        handle.generate.remote({"prompt": "x", "infer_step": 0}).result(timeout_s=60)
    assert [field.field for field in caught.value.fields] == ["infer_step"]


def scrape_samples() -> list:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape() -> dict[tuple[str, str], float]:
    """Each sample of the Prometheus endpoint by (name, le), summed over replicas and tags."""
    samples: dict[tuple[str, str], float] = {}
    for sample in scrape_samples():
        key = (sample.name, sample.labels.get("le", ""))
        samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def batches_of_size(samples: dict, size: int) -> float:
    bucket = "ray_acestep_batch_size_bucket"
    return samples.get((bucket, f"{size + 0.5}"), 0.0) - samples.get((bucket, f"{size - 0.5}"), 0.0)


def test_the_exported_batch_size_distribution_counts_each_batch_at_its_size(client):
    before = scrape()
    body = generate(client, infer_step=3, actual_seeds=[11, 12, 13, 14])  # no other test runs a batch of 4
    assert [output["batch_size"] for output in body["outputs"]] == [4, 4, 4, 4]
    deadline = time.monotonic() + 60  # Ray exports on an interval: wait for the batch to arrive
    after = scrape()
    while batches_of_size(after, 4) == batches_of_size(before, 4) and time.monotonic() < deadline:
        time.sleep(0.5)
        after = scrape()
    assert batches_of_size(after, 4) - batches_of_size(before, 4) == 1
    # Every batch is counted at its own size, so the sum is exact: its mean is the mean batch size.
    sizes = range(1, 17)
    count = after[("ray_acestep_batch_size_count", "")]
    assert count == sum(batches_of_size(after, size) for size in sizes)
    assert after[("ray_acestep_batch_size_sum", "")] == sum(size * batches_of_size(after, size) for size in sizes)
    assert after[("ray_acestep_batch_size_sum", "")] - before.get(("ray_acestep_batch_size_sum", ""), 0) >= 4


def test_every_series_the_grafana_dashboard_queries_is_exported(client):
    dashboard = json.loads((Path(__file__).parents[1] / "configs/grafana/acestep.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(ray_\w+)\{", target["expr"])
    }
    generate(client, infer_step=3)  # at least one of everything, then wait for Ray's export interval
    labels: dict[str, set[str]] = {}
    deadline = time.monotonic() + 60
    while not queried <= labels.keys() and time.monotonic() < deadline:
        labels = {}
        for sample in scrape_samples():
            labels.setdefault(sample.name, set()).update(sample.labels)
        time.sleep(0.5)
    assert queried <= labels.keys(), queried - labels.keys()
    for name in queried:  # the dashboard's application filter, and each panel's legend labels, exist
        assert "application" in labels[name], name
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = re.findall(r"\b(ray_\w+)\{", target["expr"])
            for legend_label in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                assert legend_label == "le" or any(legend_label in labels[name] for name in names), (
                    panel["title"],
                    legend_label,
                )
