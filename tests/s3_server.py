"""A real S3 endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1.

    with S3TestServer() as s3:               # free port, started
        cfg = s3.minio_config(bucket="b1")   # MinioConfig pointing at it
        ...
        s3.stop()      # outage: connections are refused from now on
        s3.start()     # back on the same port

Notes:
- moto keeps its data in process-global memory, shared by every server in the
  process and kept across stop()/start(). Use a distinct bucket per test, or
  call ``reset()`` (wipes everything, for every server in the process).
- moto accepts any credentials and does not check signatures.
"""

from __future__ import annotations

import logging
import urllib.request
from typing import Any

from moto.server import ThreadedMotoServer

__all__ = ["S3TestServer"]


class S3TestServer:
    """Start/stop a moto S3 server on 127.0.0.1; the port is kept across restarts."""

    host = "127.0.0.1"

    def __init__(self, port: int = 0, *, quiet: bool = True):
        self._port = port  # 0: the OS picks a free port on first start
        self._server: ThreadedMotoServer | None = None
        if quiet:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start (or restart on the same port); returns the endpoint ``host:port``."""
        if self._server is not None:
            return self.endpoint
        server = ThreadedMotoServer(ip_address=self.host, port=self._port, verbose=False)
        server.start()
        self._port = server.get_host_and_port()[1]
        self._server = server
        return self.endpoint

    def stop(self) -> None:
        """Stop serving; the listening socket is closed, so connects are refused."""
        if self._server is not None:
            self._server.stop()  # werkzeug closes the socket when serve_forever returns
            self._server = None

    def restart(self) -> str:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> S3TestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- access

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("server not started yet")
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port``, as the minio client wants it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def reset(self) -> None:
        """Drop every bucket and object (moto's state is process-global)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def minio_config(self, bucket: str = "test-bucket", **overrides: Any):
        """A ``MinioConfig`` for this server: plain HTTP, small timeouts, fast retries."""
        from serve_app.storage import MinioConfig

        kwargs: dict[str, Any] = dict(
            endpoint=self.endpoint,
            access_key="test-access-key",
            secret_key="test-secret-key",
            bucket=bucket,
            secure=False,
            region="us-east-1",
            connect_timeout_s=0.5,
            read_timeout_s=2.0,
            client_retries=0,
            max_attempts=3,
            retry_base_delay_s=0.01,
            retry_max_delay_s=0.05,
        )
        kwargs.update(overrides)
        return MinioConfig(**kwargs)
