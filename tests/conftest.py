"""Shared fixtures: the test model, its checkpoint folder, and one Ray Serve instance.

The model every service test runs is ``TEST_MODEL``, a tiny random-weight
checkpoint written in the real layout and loaded through the real code path.
Ray starts at most once per session, and only for tests that ask for it; so
does the S3 server (SeaweedFS, see s3_server.py).
"""

from __future__ import annotations

import os

import pytest

from serve_app.pipeline.registry import MODELS_DIR_ENV

from .ports import free_port

# A v1-family model: the guide's balanced and freestyle recipes turn ERG on, which only v1 honours,
# and the service tests run those recipes.
TEST_MODEL = "ace-step-v1-tiny"


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """A private models folder; replicas inherit it through the environment."""
    root = tmp_path_factory.mktemp("models")
    os.environ[MODELS_DIR_ENV] = str(root)
    return root


# ----------------------------------------------------------------- S3 server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real S3 server (SeaweedFS) for the session, with keys enforced.

    Tests share it: each takes its own bucket (``s3_server.new_bucket()``). A
    test that stops it for an outage must start it again before it returns.
    """
    from .s3_server import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A bucket name of this test's own on the session's S3 server (not created)."""
    return s3_server.new_bucket()


class SleepRecorder:
    """A ``sleep`` for code under test: records the delays and returns at once."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def minio_store(s3_server, s3_bucket, sleeps):
    """A ``MinioStore`` on the session's S3 server, in this test's own bucket, retrying without sleeping."""
    from serve_app.storage import MinioStore

    return MinioStore(s3_server.minio_config(s3_bucket), sleep=sleeps)


# ------------------------------------------------------------------ Ray Serve


SERVE_PORT = free_port()
METRICS_PORT = free_port()
SERVE_RUN_TIMEOUT_S = 180


class RayInstances:
    """At most one Ray instance in this process at a time: the single-node one (with Serve on
    127.0.0.1:SERVE_PORT), kept across the modules that ask for it, or a ``GpuCluster``, one per
    module. Asking for the other kind shuts the live one down, so module order does not matter."""

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        self.local_url: str | None = None
        self.cluster = None

    def local(self) -> str:
        if self.local_url is None:
            import ray
            from ray import serve

            self.close()
            ray.init(
                address="local",
                num_cpus=2,
                num_gpus=0,
                include_dashboard=False,
                log_to_driver=False,
                _metrics_export_port=METRICS_PORT,
                _temp_dir=self.temp_dir,
            )
            serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
            self.local_url = f"http://127.0.0.1:{SERVE_PORT}"
        return self.local_url

    def gpu_cluster(self):
        from .cluster import GpuCluster

        self.close()
        self.cluster = GpuCluster(workers=2)
        return self.cluster

    def close(self, final: bool = False) -> None:
        import ray

        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        if self.local_url is not None:
            if not final:
                from ray import serve

                serve.shutdown()  # forgets Serve's client, so the next instance starts its own
            ray.shutdown()
            self.local_url = None


@pytest.fixture(scope="session")
def ray_instances(models_root, tmp_path_factory):
    instances = RayInstances(str(tmp_path_factory.mktemp("ray")))
    yield instances
    instances.close(final=True)  # ray.shutdown alone: skipping serve.shutdown saves seconds


@pytest.fixture(scope="module")
def serve_instance(ray_instances) -> str:
    """A local Ray instance with Serve on 127.0.0.1:SERVE_PORT, shared by consecutive modules."""
    return ray_instances.local()


def run_app(app, name: str, route_prefix: str | None) -> None:
    """``serve.run`` with a deadline: an unschedulable replica would block it forever."""
    import threading

    from ray import serve

    failure: list[BaseException] = []

    def deploy() -> None:
        try:
            serve.run(app, name=name, route_prefix=route_prefix)
        except BaseException as exc:  # reported below
            failure.append(exc)

    thread = threading.Thread(target=deploy, daemon=True)
    thread.start()
    thread.join(SERVE_RUN_TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"app {name!r} not running after {SERVE_RUN_TIMEOUT_S}s: {serve.status().applications.get(name)}")
    if failure:
        raise failure[0]


@pytest.fixture(scope="module")
def gpu_cluster(ray_instances):
    """A multi-node Ray cluster with GPU workers (``tests/cluster.py``); one per test module."""
    yield ray_instances.gpu_cluster()
    ray_instances.close()
