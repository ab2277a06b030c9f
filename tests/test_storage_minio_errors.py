"""How the MinIO/S3 store classifies failures: configuration errors, transient faults, permanent ones.

Configuration errors (wrong keys, a bucket that may not be created, an endpoint
that is not S3) come from a real S3 server (SeaweedFS) and are never retried.
Faults a real server will not produce on demand (503 SlowDown, a proxy's 502
page, a server that accepts connections and never answers) come from a small
scripted endpoint.
"""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from serve_app.storage import (
    MinioConfig,
    MinioStore,
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
)

# ------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "overrides,setting",
    [
        ({"secret_key": "not-the-secret"}, "MINIO_SECRET_KEY"),
        ({"access_key": "nobody"}, "MINIO_ACCESS_KEY"),
    ],
)
def test_rejected_credentials_are_a_configuration_error_naming_them(s3_server, s3_bucket, sleeps, overrides, setting):
    store = MinioStore(s3_server.minio_config(s3_bucket, **overrides), sleep=sleeps)
    for operation in (store.check, lambda: store.put("k.wav", b"x", "audio/wav")):
        with pytest.raises(StorageConfigError) as info:
            operation()
        assert setting in info.value.public_message and "storage.minio." in info.value.setting
        assert s3_server.endpoint not in info.value.public_message  # safe to show a client
        assert store.config_error is info.value
    assert sleeps.delays == []  # never retried


def test_a_configuration_error_clears_once_the_store_answers(s3_server, s3_bucket, sleeps):
    store = MinioStore(s3_server.minio_config(s3_bucket, create_bucket=False), sleep=sleeps)
    with pytest.raises(StorageConfigError) as info:
        store.put("k.wav", b"x", "audio/wav")
    assert "does not exist and creating it is off" in info.value.public_message
    assert "storage.minio.bucket" in info.value.setting and "storage.minio.create_bucket" in info.value.setting
    assert store.config_error is info.value and sleeps.delays == []
    s3_server.client().make_bucket(s3_bucket)  # an operator fixes it
    store.check()
    assert store.config_error is None
    store.put("k.wav", b"x", "audio/wav")


def test_an_endpoint_that_is_not_s3_is_a_configuration_error(s3_server, sleeps):
    # The SeaweedFS master answers HTTP, but not the S3 API.
    not_s3 = f"127.0.0.1:{s3_server.ports['master']}"
    store = MinioStore(s3_server.minio_config("b-anything", endpoint=not_s3), sleep=sleeps)
    with pytest.raises(StorageConfigError) as info:
        store.put("k.wav", b"x", "audio/wav")
    assert "not an S3 server" in info.value.public_message and "MINIO_ENDPOINT" in info.value.public_message
    assert sleeps.delays == []


def test_tls_to_a_plain_http_server_is_a_configuration_error(s3_server, sleeps):
    store = MinioStore(s3_server.minio_config("b-anything", secure=True), sleep=sleeps)
    with pytest.raises(StorageConfigError) as info:
        store.check()
    assert "TLS" in info.value.public_message and "MINIO_SECURE" in info.value.public_message
    assert sleeps.delays == []


def test_a_host_name_that_does_not_resolve_is_a_configuration_error(s3_server, sleeps):
    store = MinioStore(s3_server.minio_config("b-anything", endpoint="no-such-host.invalid:9000"), sleep=sleeps)
    with pytest.raises(StorageConfigError) as info:
        store.check()
    assert "does not resolve" in info.value.public_message and "MINIO_ENDPOINT" in info.value.public_message
    assert sleeps.delays == []


def test_a_refused_connection_is_an_outage_not_a_configuration_error(sleeps):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = MinioStore(_config(f"127.0.0.1:{port}", max_attempts=3), sleep=sleeps)
    with pytest.raises(StorageUnavailableError, match="after 3 attempt"):
        store.put("k.wav", b"x", "audio/wav")
    assert store.config_error is None and len(sleeps.delays) == 2


# ------------------------------------------------------------ scripted faults


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


def _config(endpoint: str, **overrides) -> MinioConfig:
    settings = dict(
        endpoint=endpoint,
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
    )
    return MinioConfig(**(settings | overrides))


def _scripted_store(server, sleeps) -> MinioStore:
    host, port = server.server_address[:2]
    return MinioStore(_config(f"{host}:{port}"), sleep=sleeps)


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
    assert store.config_error is None


@pytest.mark.parametrize(
    "reply,error",
    [
        ((403, XML, _s3_error("AccessDenied")), StorageConfigError),
        ((404, XML, _s3_error("NoSuchBucket")), StorageConfigError),
        ((400, XML, _s3_error("AuthorizationHeaderMalformed")), StorageConfigError),
        ((403, XML, _s3_error("InvalidAccessKeyId")), StorageConfigError),
        ((400, XML, _s3_error("EntityTooLarge")), StorageError),
    ],
)
def test_permanent_errors_are_not_retried(scripted, sleeps, reply, error):
    server, handler = scripted
    handler.script[:] = [reply] * 5
    store = _scripted_store(server, sleeps)
    with pytest.raises(StorageError) as info:
        store.put("k.wav", b"x", "audio/wav")
    assert type(info.value) is error
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
        cfg = _config(f"{host}:{port}", connect_timeout_s=0.2, read_timeout_s=0.2, max_attempts=2)
        with pytest.raises(StorageUnavailableError, match="(?i)timed out|timeout"):
            MinioStore(cfg, sleep=sleeps).check()  # health: a single attempt
        assert sleeps.delays == []
        with pytest.raises(StorageUnavailableError, match="after 2 attempt"):
            MinioStore(cfg, sleep=sleeps).put("k.wav", b"x", "audio/wav")
        assert len(sleeps.delays) == 1
    finally:
        listener.close()
