"""The MinIO/S3 store against a real S3 server (SeaweedFS): objects, buckets, presigned URLs, outages."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from minio.error import S3Error

from serve_app.storage import (
    MinioStore,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    StorageUnavailableError,
    write_output,
)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_minio_round_trip(minio_store, s3_server, s3_bucket):
    store = minio_store
    assert isinstance(store, ObjectStore)
    store.put("p/2025-03-04/r1/1.wav", b"one", "audio/wav")
    store.put("p/2025-03-04/r1/2.wav", b"two", "audio/wav")
    store.put("q/3.wav", b"three", "audio/wav")
    store.put("q/3.wav", b"THREE", "audio/wav")  # overwrite
    assert store.get("p/2025-03-04/r1/1.wav") == b"one" and store.get("q/3.wav") == b"THREE"
    assert store.list("p/") == ["p/2025-03-04/r1/1.wav", "p/2025-03-04/r1/2.wav"]
    assert store.list("") == store.list() == ["p/2025-03-04/r1/1.wav", "p/2025-03-04/r1/2.wav", "q/3.wav"]
    assert s3_server.client().stat_object(s3_bucket, "p/2025-03-04/r1/1.wav").content_type == "audio/wav"
    store.delete("q/3.wav")
    store.delete("q/3.wav")  # missing: no error
    with pytest.raises(ObjectNotFoundError):
        store.get("q/3.wav")
    store.check()
    assert store.config_error is None


def test_minio_creates_missing_bucket(s3_server, s3_bucket, sleeps):
    assert not s3_server.client().bucket_exists(s3_bucket)
    MinioStore(s3_server.minio_config(s3_bucket), sleep=sleeps).put("k.wav", b"x", "audio/wav")
    assert s3_server.client().bucket_exists(s3_bucket)
    assert MinioStore(s3_server.minio_config(s3_bucket)).get("k.wav") == b"x"  # a second replica finds it


def test_minio_bucket_creation_is_race_safe(s3_server, s3_bucket):
    stores = [MinioStore(s3_server.minio_config(s3_bucket)) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    errors = []

    def go(store):
        barrier.wait()
        try:
            store.ensure_bucket()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and s3_server.client().bucket_exists(s3_bucket)


class _LostRaceClient:
    """bucket_exists says no; make_bucket says someone else just made it; put_object records the write."""

    def __init__(self, code, exists_after=True):
        self.code, self.exists_after = code, exists_after
        self.calls: list[str] = []

    def bucket_exists(self, bucket):
        self.calls.append("bucket_exists")
        return self.calls.count("bucket_exists") > 1 and self.exists_after

    def make_bucket(self, bucket):
        self.calls.append("make_bucket")
        raise S3Error(None, self.code, "exists", f"/{bucket}", "rid", "hid", bucket_name=bucket)

    def put_object(self, bucket, key, *args, **kwargs):
        self.calls.append(f"put_object {key}")


@pytest.mark.parametrize("code", ["BucketAlreadyOwnedByYou", "BucketAlreadyExists"])
def test_minio_lost_bucket_race_is_fine(s3_server, code, sleeps):
    client = _LostRaceClient(code)
    store = MinioStore(s3_server.minio_config("unused"), client=client, sleep=sleeps)
    store.put("k.wav", b"x", "audio/wav")
    store.put("l.wav", b"y", "audio/wav")
    # The bucket counts as ready after the lost race: the writes go ahead, and it is not looked for again.
    assert client.calls[-2:] == ["put_object k.wav", "put_object l.wav"]
    assert client.calls.count("make_bucket") == 1 and sleeps.delays == []


def test_minio_bucket_owned_by_someone_else_is_an_error(s3_server, sleeps):
    client = _LostRaceClient("BucketAlreadyExists", exists_after=False)
    store = MinioStore(s3_server.minio_config("unused"), client=client, sleep=sleeps)
    with pytest.raises(StorageError, match="BucketAlreadyExists") as info:
        store.put("k.wav", b"x", "audio/wav")
    assert not isinstance(info.value, StorageUnavailableError) and sleeps.delays == []
    assert not any(call.startswith("put_object") for call in client.calls)


# ---------------------------------------------------------------- presigned URLs


def test_minio_presigned_url_downloads_the_object_until_it_expires(s3_server, s3_bucket):
    store = MinioStore(s3_server.minio_config(s3_bucket, url_expiry_seconds=300))
    store.put("a/b c/1.mp3", b"ID3-bytes", "audio/mpeg")
    url = store.url("a/b c/1.mp3")
    parts = urlsplit(url)
    assert parts.netloc == store.config.endpoint
    assert parse_qs(parts.query)["X-Amz-Expires"] == ["300"]
    assert fetch(url) == b"ID3-bytes"
    default = MinioStore(s3_server.minio_config(s3_bucket)).url("a/b c/1.mp3")
    assert parse_qs(urlsplit(default).query)["X-Amz-Expires"] == [str(24 * 3600)]


def test_a_tampered_presigned_url_is_refused(minio_store):
    minio_store.put("mine.wav", b"mine", "audio/wav")
    minio_store.put("theirs.wav", b"theirs", "audio/wav")
    url = minio_store.url("mine.wav")
    assert fetch_status(url) == 200
    assert fetch_status(url.replace("/mine.wav?", "/theirs.wav?")) == 403  # another object, same signature
    assert fetch_status(url.replace("X-Amz-Expires=86400", "X-Amz-Expires=604800")) == 403  # a longer life
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    forged = url.replace(signature, signature[:-1] + ("0" if signature[-1] != "0" else "1"))
    assert fetch_status(forged) == 403


def test_an_expired_presigned_url_is_refused(minio_store, s3_server, s3_bucket):
    # Signed two hours ago for one hour: expired now, without waiting for a clock.
    minio_store.put("old.wav", b"old", "audio/wav")
    signed_at = datetime.now(UTC) - timedelta(hours=2)
    url = s3_server.client().presigned_get_object(
        s3_bucket, "old.wav", expires=timedelta(hours=1), request_date=signed_at
    )
    assert fetch_status(url) == 403


def test_a_presigned_url_signed_with_a_wrong_secret_is_refused(minio_store, s3_server, s3_bucket):
    minio_store.put("k.wav", b"x", "audio/wav")
    wrong = MinioStore(s3_server.minio_config(s3_bucket, secret_key="not-the-secret"))
    assert fetch_status(wrong.url("k.wav")) == 403


@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_minio_presigned_url_for_public_endpoint(s3_server, s3_bucket, region):
    # Clients reach the store as localhost:PORT (say, a port-forward) while the
    # service uses 127.0.0.1:PORT: the URL must be signed for the public host.
    public = f"http://localhost:{s3_server.port}"
    store = MinioStore(s3_server.minio_config(s3_bucket, public_endpoint=public, region=region))
    store.put("k.wav", b"public", "audio/wav")
    url = store.url("k.wav")
    assert url.startswith(f"http://localhost:{s3_server.port}/{s3_bucket}/k.wav?")
    assert fetch(url) == b"public"


# ----------------------------------------------------------------------- outages


def test_minio_outage_raises_unavailable_then_recovers(s3_server, s3_bucket, sleeps):
    store = MinioStore(s3_server.minio_config(s3_bucket, max_attempts=4), sleep=sleeps)
    store.put("before.wav", b"x", "audio/wav")
    s3_server.stop()
    try:
        with pytest.raises(StorageUnavailableError, match="after 4 attempt"):
            write_output(store, "o/during.wav", b"audio", "audio/wav", {"seed": 1})
        assert len(sleeps.delays) >= 3  # retried with backoff (plus the cleanup's own retries)
        with pytest.raises(StorageUnavailableError):
            store.check()
        with pytest.raises(StorageUnavailableError):
            store.get("before.wav")
        assert store.config_error is None  # an outage is not a configuration problem
    finally:
        s3_server.start()  # same ports and data
    assert store.list("") == ["before.wav"]  # nothing half-written
    store.put("after.wav", b"y", "audio/wav")  # the same store reconnects
    assert store.get("after.wav") == b"y"


def test_minio_backoff_grows_with_jitter(s3_server):
    store = MinioStore(s3_server.minio_config("unused", retry_base_delay_s=0.1, retry_max_delay_s=0.5))
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = [store.backoff_delay(attempt) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jittered
