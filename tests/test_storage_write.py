"""``write_output``, on both stores: sidecar then audio, nothing half-written on failure."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from serve_app.storage import LocalStore, StorageUnavailableError, build_output_key, write_output


@pytest.fixture(params=["minio", "local"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    return request.getfixturevalue("minio_store")


def test_write_output_writes_audio_and_sidecar(any_store):
    when = datetime(2025, 3, 4, 23, 30, tzinfo=UTC)
    key = build_output_key("outputs", "req-9", 123, "wav", folders=["album"], stem="song", when=when)
    params = {"prompt": "lo-fi, piano", "seed": 123, "infer_step": 60, "guidance_scale": 15.0, "lyrics": "la — la"}
    skey = write_output(any_store, key, b"RIFF....WAVE", "audio/wav", params)
    assert skey == key + ".json"
    assert any_store.get(key) == b"RIFF....WAVE"
    doc = json.loads(any_store.get(skey))
    assert {k: doc[k] for k in params} == params
    assert doc["object"] == {
        "key": key,
        "content_type": "audio/wav",
        "size_bytes": 12,
        "sha256": hashlib.sha256(b"RIFF....WAVE").hexdigest(),
    }
    assert any_store.list("outputs/album/") == [key, skey]


def test_write_output_rejects_bad_sidecar_before_writing(any_store):
    with pytest.raises(ValueError, match="JSON"):
        write_output(any_store, "k.wav", b"x", "audio/wav", {"when": datetime.now()})
    with pytest.raises(ValueError, match="JSON"):
        write_output(any_store, "k.wav", b"x", "audio/wav", {"nan": float("nan")})
    with pytest.raises(ValueError, match="'object'"):
        write_output(any_store, "k.wav", b"x", "audio/wav", {"object": 1})
    assert any_store.list("") == []


class FlakyStore:
    """Wraps a real store; fails chosen operations, optionally after they landed."""

    def __init__(self, inner, fail_put=(), land_then_fail=(), fail_delete=()):
        self.inner = inner
        self.fail_put, self.land_then_fail, self.fail_delete = set(fail_put), set(land_then_fail), set(fail_delete)
        self.calls: list[tuple[str, str]] = []

    def put(self, key, data, content_type):
        self.calls.append(("put", key))
        if key in self.land_then_fail:
            self.inner.put(key, data, content_type)  # e.g. a PUT whose reply timed out
            raise StorageUnavailableError("reply lost")
        if key in self.fail_put:
            raise StorageUnavailableError("store down")
        self.inner.put(key, data, content_type)

    def delete(self, key):
        self.calls.append(("delete", key))
        if key in self.fail_delete:
            raise StorageUnavailableError("store down")
        self.inner.delete(key)


def test_write_output_order_sidecar_then_audio(any_store):
    flaky = FlakyStore(any_store)
    write_output(flaky, "o/1.wav", b"x", "audio/wav", {})
    assert flaky.calls == [("put", "o/1.wav.json"), ("put", "o/1.wav")]


@pytest.mark.parametrize(
    "failure",
    [
        dict(fail_put={"o/1.wav"}),  # audio write fails
        dict(land_then_fail={"o/1.wav"}),  # audio landed but the call failed
        dict(fail_put={"o/1.wav.json"}),  # sidecar write fails
        dict(land_then_fail={"o/1.wav.json"}),
    ],
)
def test_write_output_leaves_nothing_on_failure(any_store, failure):
    flaky = FlakyStore(any_store, **failure)
    with pytest.raises(StorageUnavailableError):
        write_output(flaky, "o/1.wav", b"audio", "audio/wav", {"seed": 1})
    assert any_store.list("") == []
    if "o/1.wav.json" in failure.get("fail_put", ()):
        assert ("put", "o/1.wav") not in flaky.calls  # audio never attempted


def test_write_output_keeps_sidecar_if_audio_cannot_be_removed(any_store):
    # Invariant: audio present ⇒ sidecar present, even when cleanup fails.
    flaky = FlakyStore(any_store, land_then_fail={"o/1.wav"}, fail_delete={"o/1.wav"})
    with pytest.raises(StorageUnavailableError, match="reply lost"):
        write_output(flaky, "o/1.wav", b"audio", "audio/wav", {"seed": 1})
    assert any_store.list("") == ["o/1.wav", "o/1.wav.json"]
