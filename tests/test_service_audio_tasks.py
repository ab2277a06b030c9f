"""Audio in, audio out over real HTTP: the tasks with a source, uploads, and their errors.

Every task starts from a text2music output of the service (its key) or from an
upload. The tiny model's codec has random weights, so encoding and decoding a
recording does not give it back: "the source" in the repaint check is the
source's own latents decoded, which a repaint with ``retake_variance`` 0
returns (it regenerates nothing). The tiny ACE-Step 1.5 turbo model runs its own
tasks (repaint, cover) from its own text2music output.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from deployments.app import build_app
from serve_app.pipeline.tasks import LATENT_FRAMES_PER_SECOND, frames_at

from .conftest import TEST_MODEL, run_app
from .test_service import fetch_audio, field_of

APP = "acestep-audio-tasks"
V15 = "acestep-v15-turbo-tiny"
V15_SECONDS = 2.0  # whole frames of the tiny 1.5 VAE (0.2 s), so its tasks return the same length
SOURCE_S = 1.5
FRAME_S = 1 / LATENT_FRAMES_PER_SECOND
MAX_SOURCE_BYTES = 600_000
# Cheap sampling without ERG; the same for every request so results compare.
SAMPLING = {"prompt": "lofi hip hop, mellow piano", "preset": "precision", "infer_step": 3}


@pytest.fixture(scope="module")
def outputs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audio_task_outputs")


@pytest.fixture(scope="module")
def client(serve_instance, outputs_dir):
    from ray import serve

    app = build_app(
        {
            "models": [TEST_MODEL, V15],
            "num_gpus": 0,
            "storage": {"kind": "local", "local_root": str(outputs_dir)},
            "batch_wait_s": 0.1,
            "max_source_bytes": MAX_SOURCE_BYTES,
        }
    )
    run_app(app, APP, "/tasks")
    with httpx.Client(base_url=f"{serve_instance}/tasks", timeout=120) as client:
        yield client
    serve.delete(APP)


def post(client, **fields) -> dict:
    response = client.post("/generate", json={**SAMPLING, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def source(client) -> dict:
    """A text2music output: the source of the tasks below."""
    return post(client, audio_duration=SOURCE_S, actual_seeds=[5])


def source_of(source: dict) -> dict:
    return {"key": source["outputs"][0]["key"]}


def wav_bytes(seconds: float, rate: int = 44100, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 330 * t)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone] * channels, axis=1), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "task,fields,seconds",
    [
        ("retake", {"audio_duration": SOURCE_S, "retake_variance": 0.3}, SOURCE_S),
        ("repaint", {"repaint_start": 0.4, "repaint_end": 1.0}, SOURCE_S),
        ("extend", {"repaint_start": -0.5, "repaint_end": SOURCE_S + 0.5, "retake_variance": 1.0}, SOURCE_S + 1.0),
        ("audio2audio", {"ref_audio_strength": 0.5}, SOURCE_S),
        ("edit", {"edit_target_prompt": "heavy metal, distorted guitar", "edit_n_max": 0.7}, SOURCE_S),
    ],
)
def test_each_task_returns_audio_of_its_length(client, source, task, fields, seconds):
    given = {"source": source_of(source)} if task != "retake" else {}
    body = post(client, task=task, actual_seeds=[5], **given, **fields)
    audio, rate = fetch_audio(client, body["outputs"][0])
    # extend adds whole latent frames: each added span is within one frame (~93 ms) of what was asked.
    tolerance = 2 * FRAME_S if task == "extend" else 0.0
    assert rate == 48000 and abs(audio.shape[0] / rate - seconds) <= tolerance + 1 / rate
    assert body["outputs"][0]["duration"] == pytest.approx(audio.shape[0] / rate, abs=1 / rate)
    assert body["params"]["task"] == task and np.isfinite(audio).all()
    if task != "retake":
        assert body["params"]["source"] == source_of(source)


def test_retake_variance_zero_reproduces_the_source(client, source):
    body = post(client, task="retake", audio_duration=SOURCE_S, actual_seeds=[5], retake_variance=0.0)
    np.testing.assert_array_equal(
        fetch_audio(client, body["outputs"][0])[0], fetch_audio(client, source["outputs"][0])[0]
    )


def test_repaint_changes_the_window_and_keeps_the_rest(client, source):
    """Outside the window the latents are the source's exactly; the decoder mixes some context
    across the edges (convolutions and the DCAE's global attention), so the audio is compared
    0.2 s away from them: there the difference's RMS stays under 3% of the peak (measured about
    1%), while inside it is several times larger."""
    window = {"task": "repaint", "source": source_of(source), "repaint_start": 0.4, "repaint_end": 1.0}
    kept = fetch_audio(client, post(client, **window, retake_variance=0.0)["outputs"][0])[0]
    repainted = fetch_audio(client, post(client, **window, retake_variance=1.0)["outputs"][0])[0]
    start, end = (frames_at(seconds) * FRAME_S for seconds in (0.4, 1.0))
    difference = np.abs(repainted - kept)
    outside = np.concatenate([difference[: int((start - 0.2) * 48000)], difference[int((end + 0.2) * 48000) :]])
    inside = difference[int(start * 48000) : int(end * 48000)]
    peak = np.abs(kept).max()
    rms = lambda values: float(np.sqrt(np.mean(values**2)))  # noqa: E731
    assert rms(outside) < 0.03 * peak
    assert rms(inside) > 3 * rms(outside)


def test_the_same_request_twice_gives_the_same_samples(client, source):
    first = post(client, task="repaint", source=source_of(source), repaint_start=0.2, repaint_end=0.9)
    assert len(first["params"]["retake_seeds"]) == 1 and "audio_duration" not in first["params"]
    again = post(client, **first["params"])  # the resolved parameters repeat the request exactly
    assert again["params"] == first["params"]
    np.testing.assert_array_equal(
        fetch_audio(client, first["outputs"][0])[0], fetch_audio(client, again["outputs"][0])[0]
    )


def test_an_upload_is_a_source(client):
    response = client.post("/uploads", files={"file": ("take.wav", wav_bytes(1.2), "audio/wav")})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["key"].startswith("uploads/") and upload["sample_rate"] == 44100
    body = post(client, task="audio2audio", source={"key": upload["key"]}, ref_audio_strength=0.6)
    audio, rate = fetch_audio(client, body["outputs"][0])
    assert audio.shape == (int(np.ceil(int(1.2 * 44100) * 48000 / 44100)), 2)


def test_a_raw_upload_with_its_content_type(client):
    response = client.post("/uploads", content=wav_bytes(1.1, 48000, 2), headers={"content-type": "audio/wav"})
    assert response.status_code == 201, response.text
    assert response.json()["channels"] == 2


@pytest.mark.parametrize(
    "source_key,fields",
    [
        ("outputs/nothing-here.wav", {"task": "repaint", "repaint_start": 0.1, "repaint_end": 0.5}),
        ("jobs/records/x.json", {"task": "audio2audio"}),
        (None, {"task": "repaint", "repaint_start": 0.1, "repaint_end": 0.5}),
    ],
)
def test_a_bad_source_is_a_422_naming_source(client, source_key, fields):
    body = {**SAMPLING, **fields}
    if source_key is not None:
        body["source"] = {"key": source_key}
    assert field_of(client.post("/generate", json=body)) == ["source"]


def test_an_unreadable_or_empty_upload_is_a_422_naming_source(client):
    garbage = client.post("/uploads", content=b"not audio at all" * 100, headers={"content-type": "audio/wav"})
    assert field_of(garbage) == ["source"]
    empty = client.post("/uploads", content=wav_bytes(0.0), headers={"content-type": "audio/wav"})
    assert field_of(empty) == ["source"]


def test_task_parameters_are_checked_naming_the_field(client, source):
    outside = {"task": "repaint", "source": source_of(source), "repaint_start": 0.5, "repaint_end": 5.0}
    assert field_of(client.post("/generate", json={**SAMPLING, **outside})) == ["repaint_end"]
    with_path = {"task": "repaint", "src_audio_path": "/etc/passwd"}
    assert field_of(client.post("/generate", json={**SAMPLING, **with_path})) == ["src_audio_path"]
    text2music_with_source = {"source": source_of(source)}
    assert field_of(client.post("/generate", json={**SAMPLING, **text2music_with_source})) == ["source"]


def test_uploads_past_the_limit_are_refused_without_being_stored(client, outputs_dir):
    before = (
        sorted(path.name for path in (outputs_dir / "uploads").glob("*")) if (outputs_dir / "uploads").exists() else []
    )
    too_big = b"\0" * (MAX_SOURCE_BYTES + 1)
    raw = client.post("/uploads", content=too_big, headers={"content-type": "audio/wav"})
    multipart = client.post("/uploads", files={"file": ("big.wav", too_big, "audio/wav")})
    assert raw.status_code == 413 and multipart.status_code == 413
    after = (
        sorted(path.name for path in (outputs_dir / "uploads").glob("*")) if (outputs_dir / "uploads").exists() else []
    )
    assert after == before


@pytest.fixture(scope="module")
def v15_source(client) -> dict:
    """A text2music output of the 1.5 model: the source of its tasks."""
    return post_v15(client, audio_duration=V15_SECONDS, actual_seeds=[5])


def post_v15(client, **fields) -> dict:
    response = client.post("/generate", json={"model": V15, "prompt": "lofi piano", "infer_step": 3, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "fields",
    [
        {"task": "repaint", "repaint_start": 0.6, "repaint_end": 1.4},
        {"task": "cover", "audio_cover_strength": 0.5},
    ],
)
def test_each_v15_task_returns_the_source_length_and_repeats_from_its_params(client, v15_source, fields):
    first = post_v15(client, source=source_of(v15_source), actual_seeds=[7], **fields)
    audio, rate = fetch_audio(client, first["outputs"][0])
    assert rate == 48000 and audio.shape[0] == V15_SECONDS * 48000 and np.isfinite(audio).all()
    assert first["params"]["source"] == source_of(v15_source) and first["params"]["task"] == fields["task"]
    assert first["params"]["retake_seeds"] == [] and "audio_duration" not in first["params"]
    again = post_v15(client, **first["params"])
    assert again["params"] == first["params"]
    np.testing.assert_array_equal(audio, fetch_audio(client, again["outputs"][0])[0])


def test_a_task_the_family_lacks_is_a_422_naming_task(client, v15_source, source):
    extend = {"model": V15, "prompt": "x", "task": "extend", "source": source_of(v15_source), "repaint_end": 3.0}
    response = client.post("/generate", json=extend)
    assert field_of(response) == ["task"] and "text2music, repaint, cover" in response.text
    cover_on_v1 = {**SAMPLING, "task": "cover", "source": source_of(source)}
    assert field_of(client.post("/generate", json=cover_on_v1)) == ["task"]
