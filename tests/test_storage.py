"""Tests for serve_app.storage against a real S3 endpoint (moto) and a local directory."""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import os
import socket
import threading
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from minio import Minio
from minio.error import S3Error

from serve_app.storage import (
    DEFAULT_BUCKET,
    LocalStore,
    MinioConfig,
    MinioStore,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    StorageUnavailableError,
    build_output_key,
    sidecar_key,
    split_output_name,
    validate_key,
    validate_output_name,
    write_output,
)

from .s3_server import S3TestServer

WHEN = datetime(2025, 3, 4, 23, 30, tzinfo=UTC)
_bucket_ids = itertools.count()


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def s3():
    with S3TestServer() as server:
        yield server


@pytest.fixture
def bucket():
    return f"test-{os.getpid()}-{next(_bucket_ids)}"


class SleepRecorder:
    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps():
    return SleepRecorder()


@pytest.fixture
def minio_store(s3, bucket, sleeps):
    store = MinioStore(s3.minio_config(bucket), sleep=sleeps)
    yield store
    store.close()


def raw_client(s3) -> Minio:
    return Minio(s3.endpoint, "k", "s", secure=False, region="us-east-1")


@pytest.fixture(params=["minio", "local"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    return request.getfixturevalue("minio_store")


# ========================================================================= key layout


def test_build_output_key_default_layout():
    assert build_output_key("outputs", "req-1", 42, "mp3", when=WHEN) == "outputs/2025-03-04/req-1/42.mp3"
    assert build_output_key("", "r", 0, "wav", when=WHEN) == "2025-03-04/r/0.wav"
    assert build_output_key("a/b/", "r", 1, "ogg", when=WHEN) == "a/b/2025-03-04/r/1.ogg"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("track", "outputs/2025-03-04/req-1/track-7.flac"),
        ("albums/summer/track", "outputs/albums/summer/2025-03-04/req-1/track-7.flac"),
        ("albums/summer/", "outputs/albums/summer/2025-03-04/req-1/7.flac"),
        ("track.flac", "outputs/2025-03-04/req-1/track-7.flac"),
        ("track.FLAC", "outputs/2025-03-04/req-1/track-7.flac"),
        ("track.v2", "outputs/2025-03-04/req-1/track.v2-7.flac"),
        ("Summer Song (live)", "outputs/2025-03-04/req-1/Summer Song (live)-7.flac"),
        ("música/canción", "outputs/música/2025-03-04/req-1/canción-7.flac"),
        ("cafe\u0301", "outputs/2025-03-04/req-1/caf\u00e9-7.flac"),  # NFC-normalised
    ],
)
def test_build_output_key_with_client_name(name, expected):
    assert build_output_key("outputs", "req-1", 7, "flac", name=name, when=WHEN) == expected


@pytest.mark.parametrize(
    "name,ext,expected",
    [
        ("track", "mp3", ([], "track")),
        ("albums/summer/track.MP3", "mp3", (["albums", "summer"], "track")),
        ("albums/summer/", "wav", (["albums", "summer"], None)),
        ("take.2", "wav", ([], "take.2")),
    ],
)
def test_split_output_name(name, ext, expected):
    assert split_output_name(name, ext) == expected


def test_split_output_name_refuses_another_audio_extension():
    with pytest.raises(ValueError, match=r"ends with '\.wav' but the output format is mp3"):
        split_output_name("albums/song.wav", "mp3")


def test_build_output_key_date_is_utc():
    tokyo = timezone(timedelta(hours=9))
    when = datetime(2025, 3, 5, 8, 30, tzinfo=tokyo)  # 2025-03-04 23:30 UTC
    assert build_output_key("p", "r", 1, "wav", when=when).startswith("p/2025-03-04/")


def test_two_requests_never_share_a_key():
    a = build_output_key("p", "req-a", 1, "wav", name="x/y", when=WHEN)
    b = build_output_key("p", "req-b", 1, "wav", name="x/y", when=WHEN)
    assert a != b


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(when=datetime(2025, 1, 1)), "timezone-aware"),
        (dict(request_id="../x"), "request_id"),
        (dict(request_id=""), "request_id"),
        (dict(request_id="a/b"), "request_id"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(seed=1.0), "seed"),
        (dict(ext="MP3"), "extension"),
        (dict(ext="mp3/../x"), "extension"),
        (dict(prefix="../up"), "'..' path segment"),
        (dict(prefix="/abs"), "relative"),
        (dict(name="track.wav"), r"ends with '\.wav' but the output format is mp3"),
    ],
)
def test_build_output_key_rejects(kwargs, match):
    args = dict(prefix="outputs", request_id="r1", seed=1, ext="mp3", when=WHEN) | kwargs
    with pytest.raises(ValueError, match=match):
        build_output_key(args.pop("prefix"), args.pop("request_id"), args.pop("seed"), args.pop("ext"), **args)


@pytest.mark.parametrize(
    "name,match",
    [
        ("../etc/passwd", r"'\.\.' path segments"),
        ("a/../../b", r"'\.\.' path segments"),
        ("a/./b", r"'\.' path segments"),
        ("..", r"'\.\.' path segments"),
        ("/etc/passwd", "must be relative"),
        ("C:/Windows/x", "drive letter"),
        ("c:track", "drive letter"),
        ("~/music", "'~'"),
        ("a~b", "'~'"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("a\x00b", r"control or invisible character \(U\+0000\)"),
        ("a\nb", r"U\+000A"),
        ("a\x7fb", r"U\+007F"),
        ("evil\u202e3pm.exe", r"U\+202E"),
        ("zero\u200bwidth", r"U\+200B"),
        ("x" * 201, "longer than 200 characters"),
        ("a/" + "b" * 101, "longer than 100 characters"),
        ("曲" * 67 + "/x", "200 bytes"),
        ("/".join("a" * 9), "more than 8 path segments"),
        ("a//b", "empty path segment"),
        ("a/b//", "empty path segment"),
        (".hidden", "must not start with '.'"),
        ("a/.git/config", "must not start with '.'"),
        ("", "empty"),
        ("   ", "empty"),
        (" lead", "whitespace"),
        ("a/trail ", "whitespace"),
        ("what?", r"contains '\?'"),
        ("100%", "contains '%'"),
        ("a#b", "contains '#'"),
        ("ab:c", "contains ':'"),
        ("a*b", r"contains '\*'"),
        ('a"b', "contains '\"'"),
        ("a<b>", "contains '<'"),
        ("a|b", r"contains '\|'"),
        ("a&b", "contains '&'"),
        (42, "must be a string"),
    ],
)
def test_output_name_rejections_say_why(name, match):
    with pytest.raises(ValueError, match=match):
        validate_output_name(name)


@pytest.mark.parametrize(
    "key,match",
    [
        ("", "empty"),
        ("/abs", "relative"),
        ("../x", r"'\.\.'"),
        ("a/../../x", r"'\.\.'"),
        ("a/./x", r"'\.'"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a\\b", "backslash"),
        ("a\x00b", "control"),
        ("a/.tmp-123", "reserved"),
        ("x" * 256, "255 bytes"),
        ("a/" * 600 + "b", "1024 bytes"),
        (None, "must be a string"),
    ],
)
def test_validate_key_rejections(key, match):
    with pytest.raises(ValueError, match=match):
        validate_key(key)


def test_validate_key_accepts_server_keys():
    key = build_output_key("outputs", "r", 3, "mp3", name="albums/Summer Song (v2)", when=WHEN)
    assert validate_key(key) == key
    assert sidecar_key(key) == key + ".json"


# ===================================================================== local store


def test_local_store_round_trip(tmp_path):
    store = LocalStore(tmp_path / "out", url_prefix="/outputs/")
    assert isinstance(store, ObjectStore)
    store.put("a/b/one.wav", b"one", "audio/wav")
    store.put("a/two.wav", b"two", "audio/wav")
    store.put("a/b/one.wav", b"uno", "audio/wav")  # overwrite
    assert store.get("a/b/one.wav") == b"uno"
    assert store.exists("a/b/one.wav") and not store.exists("a/b/nope.wav") and not store.exists("a/b")
    assert store.list("") == ["a/b/one.wav", "a/two.wav"]
    assert store.list("a/b") == ["a/b/one.wav"]
    assert store.list("a/t") == ["a/two.wav"]
    assert store.list("zzz/") == []
    assert store.url("a/b/one.wav") == "/outputs/a/b/one.wav"
    assert store.url("x/Summer Song-1.mp3") == "/outputs/x/Summer%20Song-1.mp3"
    assert store.path("a/two.wav") == (tmp_path / "out" / "a" / "two.wav").resolve()
    store.delete("a/two.wav")
    store.delete("a/two.wav")  # missing: no error, like S3
    assert store.list("") == ["a/b/one.wav"]
    with pytest.raises(ObjectNotFoundError):
        store.get("a/two.wav")
    with pytest.raises(ObjectNotFoundError):
        store.get("a/b")  # a folder is not an object
    store.check()


@pytest.mark.parametrize(
    "key",
    ["../escape.wav", "a/../../escape.wav", "/tmp/escape.wav", "a\\..\\escape.wav", "a//b", "a\x00b", ".tmp-x"],
)
def test_local_store_rejects_unsafe_keys(tmp_path, key):
    root = tmp_path / "root"
    store = LocalStore(root)
    before = sorted(p.name for p in tmp_path.iterdir())
    for op in (
        lambda: store.put(key, b"x", "audio/wav"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.url(key),
    ):
        with pytest.raises(ValueError):
            op()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(root.rglob("*")) == []


def test_local_store_refuses_symlink_out_of_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalStore(tmp_path / "root")
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the store root"):
        store.put("link/x.wav", b"x", "audio/wav")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_local_store_failed_write_leaves_old_object_and_no_temp(tmp_path, monkeypatch, failing):
    store = LocalStore(tmp_path)
    store.put("d/k.wav", b"old", "audio/wav")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(failing, boom)
    with pytest.raises(StorageUnavailableError, match="No space left"):
        store.put("d/k.wav", b"new" * 1000, "audio/wav")
    with pytest.raises(StorageUnavailableError):
        store.put("d/fresh.wav", b"new", "audio/wav")
    monkeypatch.undo()
    assert store.get("d/k.wav") == b"old"
    assert not store.exists("d/fresh.wav")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k.wav"]  # no temporaries


def test_local_store_readers_never_see_partial_writes(tmp_path):
    store = LocalStore(tmp_path)
    a, b = b"A" * 2_000_000, b"B" * 3_000_000
    store.put("k.wav", a, "audio/wav")
    stop = threading.Event()

    def writer():
        for i in range(40):
            store.put("k.wav", b if i % 2 == 0 else a, "audio/wav")
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    while not stop.is_set():
        data = store.get("k.wav")
        assert data in (a, b), f"partial read of {len(data)} bytes"
        seen.add(data[:1])
    t.join()
    assert store.list("") == ["k.wav"]


def test_local_store_ignores_stray_temporaries_and_folder_clash(tmp_path):
    store = LocalStore(tmp_path)
    store.put("d/k.wav", b"x", "audio/wav")
    (tmp_path / "d" / ".tmp-crashed").write_bytes(b"half")
    assert store.list("") == ["d/k.wav"]
    with pytest.raises(StorageError):
        store.put("d", b"x", "audio/wav")  # 'd' is a folder
    with pytest.raises(StorageError):
        store.put("d/k.wav/x", b"x", "audio/wav")  # 'd/k.wav' is a file


def test_local_store_check_fails_when_root_is_gone(tmp_path):
    store = LocalStore(tmp_path / "r")
    (tmp_path / "r").rmdir()
    with pytest.raises(StorageUnavailableError):
        store.check()


# ======================================================================= MinIO / S3


def test_minio_round_trip(minio_store, s3, bucket):
    store = minio_store
    assert isinstance(store, ObjectStore)
    store.put("p/2025-03-04/r1/1.wav", b"one", "audio/wav", {"seed": "1"})
    store.put("p/2025-03-04/r1/2.wav", b"two", "audio/wav")
    store.put("q/3.wav", b"three", "audio/wav")
    assert store.get("p/2025-03-04/r1/1.wav") == b"one"
    assert store.exists("q/3.wav") and not store.exists("q/4.wav")
    assert store.list("p/") == ["p/2025-03-04/r1/1.wav", "p/2025-03-04/r1/2.wav"]
    assert store.list("") == store.list() == ["p/2025-03-04/r1/1.wav", "p/2025-03-04/r1/2.wav", "q/3.wav"]
    stat = raw_client(s3).stat_object(bucket, "p/2025-03-04/r1/1.wav")
    assert stat.content_type == "audio/wav"
    assert stat.metadata.get("x-amz-meta-seed") == "1"
    store.delete("q/3.wav")
    store.delete("q/3.wav")
    assert not store.exists("q/3.wav")
    with pytest.raises(ObjectNotFoundError):
        store.get("q/3.wav")
    store.check()


def test_minio_creates_missing_bucket(s3, bucket, sleeps):
    assert not raw_client(s3).bucket_exists(bucket)
    store = MinioStore(s3.minio_config(bucket), sleep=sleeps)
    store.put("k.wav", b"x", "audio/wav")
    assert raw_client(s3).bucket_exists(bucket)
    # a second replica finds it there
    MinioStore(s3.minio_config(bucket)).check()


def test_minio_bucket_creation_is_race_safe(s3, bucket):
    stores = [MinioStore(s3.minio_config(bucket)) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    errors = []

    def go(store):
        barrier.wait()
        try:
            store.ensure_bucket()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and raw_client(s3).bucket_exists(bucket)


class _LostRaceClient:
    """bucket_exists says no; make_bucket says someone else just made it; puts are counted."""

    def __init__(self, code, exists_after=True):
        self.code, self.exists_after, self.calls, self.creates, self.puts = code, exists_after, 0, 0, []

    def bucket_exists(self, bucket):
        self.calls += 1
        return self.calls > 1 and self.exists_after

    def make_bucket(self, bucket):
        self.creates += 1
        raise S3Error(None, self.code, "exists", f"/{bucket}", "rid", "hid", bucket_name=bucket)

    def put_object(self, bucket, key, *args, **kwargs):
        self.puts.append(key)


@pytest.mark.parametrize("code, checks", [("BucketAlreadyOwnedByYou", 1), ("BucketAlreadyExists", 2)])
def test_minio_lost_bucket_race_is_fine(s3, sleeps, code, checks):
    client = _LostRaceClient(code)
    store = MinioStore(s3.minio_config("unused"), client=client, sleep=sleeps)
    store.ensure_bucket()
    # Losing the race is success at once: one create tried, no retry, and (when the code is ambiguous
    # about the owner) one re-check; then the store writes without asking about the bucket again.
    assert (client.creates, client.calls, sleeps.delays) == (1, checks, [])
    store.put("k.wav", b"x", "audio/wav")
    assert client.puts == ["k.wav"] and client.calls == checks


def test_minio_bucket_owned_by_someone_else_is_an_error(s3, sleeps):
    store = MinioStore(s3.minio_config("unused"), client=_LostRaceClient("BucketAlreadyExists", False), sleep=sleeps)
    with pytest.raises(StorageError, match="BucketAlreadyExists") as info:
        store.ensure_bucket()
    assert not isinstance(info.value, StorageUnavailableError) and sleeps.delays == []


def test_minio_missing_bucket_without_creation_fails_fast(s3, bucket, sleeps):
    store = MinioStore(s3.minio_config(bucket, create_bucket=False), sleep=sleeps)
    with pytest.raises(StorageError, match="does not exist") as info:
        store.put("k.wav", b"x", "audio/wav")
    assert not isinstance(info.value, StorageUnavailableError)
    assert sleeps.delays == []  # not retried


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def test_minio_presigned_url_downloads_the_object(minio_store):
    minio_store.put("a/b c/1.mp3", b"ID3-bytes", "audio/mpeg")
    url = minio_store.url("a/b c/1.mp3", timedelta(minutes=5))
    parts = urlsplit(url)
    assert parts.netloc == minio_store.config.endpoint
    assert parse_qs(parts.query)["X-Amz-Expires"] == ["300"]
    assert _fetch(url) == b"ID3-bytes"
    default = parse_qs(urlsplit(minio_store.url("a/b c/1.mp3")).query)["X-Amz-Expires"]
    assert default == [str(24 * 3600)]
    with pytest.raises(ValueError):
        minio_store.url("a/b c/1.mp3", timedelta(days=8))


@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_minio_presigned_url_for_public_endpoint(s3, bucket, region):
    # Clients reach the store as localhost:PORT (say, a port-forward) while the
    # service uses 127.0.0.1:PORT: the URL must be signed for the public host.
    public = f"http://localhost:{s3.port}"
    store = MinioStore(s3.minio_config(bucket, public_endpoint=public, region=region))
    store.put("k.wav", b"public", "audio/wav")
    url = store.url("k.wav")
    assert url.startswith(f"http://localhost:{s3.port}/{bucket}/k.wav?")
    assert "X-Amz-Signature=" in url
    assert _fetch(url) == b"public"


def test_write_output_writes_audio_and_sidecar(any_store):
    key = build_output_key("outputs", "req-9", 123, "wav", name="album/song", when=WHEN)
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

    def put(self, key, data, content_type, metadata=None):
        self.calls.append(("put", key))
        if key in self.land_then_fail:
            self.inner.put(key, data, content_type, metadata)  # e.g. a PUT whose reply timed out
            raise StorageUnavailableError("reply lost")
        if key in self.fail_put:
            raise StorageUnavailableError("store down")
        self.inner.put(key, data, content_type, metadata)

    def delete(self, key):
        self.calls.append(("delete", key))
        if key in self.fail_delete:
            raise StorageUnavailableError("store down")
        self.inner.delete(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


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


# ------------------------------------------------------------------ outages & retries


def test_minio_outage_raises_unavailable_then_recovers(s3, bucket, sleeps):
    store = MinioStore(s3.minio_config(bucket, max_attempts=4), sleep=sleeps)
    store.put("before.wav", b"x", "audio/wav")
    s3.stop()
    try:
        with pytest.raises(StorageUnavailableError, match="after 4 attempt"):
            write_output(store, "o/during.wav", b"audio", "audio/wav", {"seed": 1})
        assert len(sleeps.delays) >= 3  # retried with backoff (plus the cleanup's own retries)
        with pytest.raises(StorageUnavailableError):
            store.check()
        with pytest.raises(StorageUnavailableError):
            store.get("before.wav")
    finally:
        s3.start()  # same port; moto keeps its data across restarts
    assert store.list("") == ["before.wav"]  # nothing half-written
    store.put("after.wav", b"y", "audio/wav")  # the same store reconnects
    assert store.get("after.wav") == b"y"


def test_minio_backoff_grows_with_jitter(s3):
    store = MinioStore(s3.minio_config("unused", retry_base_delay_s=0.1, retry_max_delay_s=0.5))
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = [store.backoff_delay(attempt) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jittered


class _ScriptedS3(http.server.BaseHTTPRequestHandler):
    """Minimal S3 endpoint: HEAD bucket → 200; PUT/GET object → the next scripted reply."""

    protocol_version = "HTTP/1.1"
    script: list[tuple[int, str, bytes]]
    puts: list[bytes]
    requests: int

    def log_message(self, *args):
        pass

    def _reply(self, status, ctype="", body=b"", etag=False):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if etag:
            self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self._reply(200)

    def _scripted(self):
        type(self).requests += 1
        if self.script:
            status, ctype, body = self.script.pop(0)
            self._reply(status, ctype, body)
            return True
        return False

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).puts.append(body)
        if not self._scripted():
            self._reply(200, etag=True)

    def do_GET(self):
        if not self._scripted():
            self._reply(200, "application/octet-stream", b"payload")


def _s3_error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>m</Message><Resource>/b/k</Resource><RequestId>1</RequestId></Error>".encode()


@pytest.fixture
def scripted():
    handler = type("Handler", (_ScriptedS3,), {"script": [], "puts": [], "requests": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _scripted_store(server, sleeps, **overrides):
    host, port = server.server_address[:2]
    cfg = MinioConfig(
        endpoint=f"{host}:{port}",
        access_key="a",
        secret_key="s",
        bucket="b-scripted",
        secure=False,
        region="us-east-1",
        connect_timeout_s=0.5,
        read_timeout_s=1.0,
        client_retries=0,
        max_attempts=4,
        retry_base_delay_s=0.01,
        retry_max_delay_s=0.05,
        **overrides,
    )
    return MinioStore(cfg, sleep=sleeps)


XML = "application/xml"
TRANSIENT_REPLIES = {
    "503 SlowDown": (503, XML, _s3_error("SlowDown")),
    "500 InternalError": (500, XML, _s3_error("InternalError")),
    "500 no body": (500, "", b""),
    "502 proxy html": (502, "text/html", b"<html>Bad Gateway</html>"),
    "429 throttled": (429, XML, _s3_error("TooManyRequests")),
}


@pytest.mark.parametrize("reply", TRANSIENT_REPLIES)
def test_transient_errors_are_retried_until_success(scripted, sleeps, reply):
    server, handler = scripted
    handler.script[:] = [TRANSIENT_REPLIES[reply]] * 2
    store = _scripted_store(server, sleeps)
    store.put("k.wav", b"0123456789", "audio/wav")
    assert handler.requests == 3  # two failures, then the default 200
    assert handler.puts == [b"0123456789"] * 3  # the full body on every attempt
    assert len(sleeps.delays) == 2 and 0.005 <= sleeps.delays[0] <= 0.01 and 0.01 <= sleeps.delays[1] <= 0.02


def test_transient_errors_exhaust_to_unavailable(scripted, sleeps):
    server, handler = scripted
    handler.script[:] = [TRANSIENT_REPLIES["503 SlowDown"]] * 10
    store = _scripted_store(server, sleeps)
    with pytest.raises(StorageUnavailableError, match="after 4 attempt.*SlowDown"):
        store.put("k.wav", b"x", "audio/wav")
    assert handler.requests == 4 and len(sleeps.delays) == 3
    handler.script[:] = [TRANSIENT_REPLIES["502 proxy html"]] * 10
    with pytest.raises(StorageUnavailableError):
        store.get("k.wav")


@pytest.mark.parametrize(
    "reply,match",
    [
        ((403, XML, _s3_error("AccessDenied")), "AccessDenied"),
        ((404, XML, _s3_error("NoSuchBucket")), "NoSuchBucket"),
        ((400, XML, _s3_error("AuthorizationHeaderMalformed")), "AuthorizationHeaderMalformed"),
        ((403, XML, _s3_error("InvalidAccessKeyId")), "InvalidAccessKeyId"),
    ],
)
def test_permanent_errors_are_not_retried(scripted, sleeps, reply, match):
    server, handler = scripted
    handler.script[:] = [reply] * 5
    store = _scripted_store(server, sleeps)
    with pytest.raises(StorageError, match=match) as info:
        store.put("k.wav", b"x", "audio/wav")
    assert not isinstance(info.value, StorageUnavailableError)
    assert handler.requests == 1 and sleeps.delays == []


def test_get_missing_object_is_not_found_not_retried(scripted, sleeps):
    server, handler = scripted
    handler.script[:] = [(404, XML, _s3_error("NoSuchKey"))] * 5
    store = _scripted_store(server, sleeps)
    with pytest.raises(ObjectNotFoundError):
        store.get("k.wav")
    assert handler.requests == 1


def test_unresponsive_endpoint_times_out_quickly(sleeps):
    # Accepts TCP connections but never answers: only the read timeout ends it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        host, port = listener.getsockname()
        cfg = MinioConfig(
            endpoint=f"{host}:{port}",
            access_key="a",
            secret_key="s",
            bucket="b-silent",
            secure=False,
            region="us-east-1",
            connect_timeout_s=0.2,
            read_timeout_s=0.2,
            client_retries=0,
            max_attempts=2,
            retry_base_delay_s=0.01,
            retry_max_delay_s=0.01,
        )
        with pytest.raises(StorageUnavailableError, match="(?i)timed out|timeout"):
            MinioStore(cfg, sleep=sleeps).check()  # health: a single attempt
        assert sleeps.delays == []
        with pytest.raises(StorageUnavailableError, match="after 2 attempt"):
            MinioStore(cfg, sleep=sleeps).put("k.wav", b"x", "audio/wav")
        assert len(sleeps.delays) == 1
    finally:
        listener.close()


# =========================================================================== config


def test_config_from_env_defaults_and_parsing():
    cfg = MinioConfig.from_env({"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": "sk"})
    assert (cfg.endpoint, cfg.bucket, cfg.secure, cfg.region, cfg.public_endpoint) == (
        "minio:9000",
        DEFAULT_BUCKET,
        True,
        None,
        None,
    )
    assert cfg.url_expiry == timedelta(hours=24)
    assert "sk" not in repr(cfg)

    cfg = MinioConfig.from_env(
        {
            "MINIO_ENDPOINT": "http://minio:9000",
            "MINIO_ACCESS_KEY": "ak",
            "MINIO_SECRET_KEY": "sk",
            "MINIO_BUCKET": "music",
            "MINIO_REGION": "eu-west-1",
            "MINIO_PUBLIC_ENDPOINT": "https://files.example.com",
            "MINIO_URL_EXPIRY_SECONDS": "600",
        },
        max_attempts=2,
    )
    assert (cfg.endpoint, cfg.secure, cfg.bucket, cfg.region) == ("minio:9000", False, "music", "eu-west-1")
    assert cfg.public_endpoint == "https://files.example.com"
    assert cfg.url_expiry == timedelta(seconds=600) and cfg.max_attempts == 2
    base = {"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": "sk"}
    assert MinioConfig.from_env(base | {"MINIO_SECURE": "false"}).secure is False


@pytest.mark.parametrize(
    "env,match",
    [
        ({}, "MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY"),
        ({"MINIO_ENDPOINT": "m:9000", "MINIO_ACCESS_KEY": "a"}, "MINIO_SECRET_KEY"),
        ({"MINIO_SECURE": "maybe"}, "MINIO_SECURE must be"),
        ({"MINIO_ENDPOINT": "https://m:9000", "MINIO_SECURE": "0"}, "contradicts"),
        ({"MINIO_ENDPOINT": "http://m:9000/path"}, "no path"),
        ({"MINIO_ENDPOINT": "ftp://m"}, "http or https"),
        ({"MINIO_BUCKET": "Bad_Bucket"}, "invalid bucket name"),
        ({"MINIO_URL_EXPIRY_SECONDS": "soon"}, "integer"),
        ({"MINIO_URL_EXPIRY_SECONDS": str(8 * 86400)}, "7 days"),
        ({"MINIO_PUBLIC_ENDPOINT": "https://cdn.example.com/minio"}, "no path"),
    ],
)
def test_config_from_env_rejects(env, match):
    base = {"MINIO_ENDPOINT": "m:9000", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "s"} if env else {}
    if "MINIO_ACCESS_KEY" in env:
        base = {}
    with pytest.raises(ValueError, match=match):
        MinioConfig.from_env(base | env)


def test_config_rejects_scheme_in_endpoint_field():
    with pytest.raises(ValueError, match="host\\[:port\\]"):
        MinioConfig(endpoint="http://m:9000", access_key="a", secret_key="s")


def test_package_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, serve_app.storage, serve_app.audio; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0
