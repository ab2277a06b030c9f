"""Shared fixtures: the test model, its checkpoint folder, and one Ray Serve instance.

The model every service test runs is ``TEST_MODEL``, a tiny random-weight
checkpoint written in the real layout and loaded through the real code path.
Ray starts at most once per session, and only for tests that ask for it.
"""

from __future__ import annotations

import os
import socket

import pytest

from serve_app.pipeline.registry import MODELS_DIR_ENV, get_spec

# The guide's balanced and freestyle recipes turn ERG on, which only the v1 family honours.
TEST_MODEL = "ace-step-v1-tiny"
needs_erg = pytest.mark.skipif(
    not get_spec(TEST_MODEL).supported_erg, reason=f"needs ERG, which {TEST_MODEL} does not support (v1 family only)"
)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """A private models folder; replicas inherit it through the environment."""
    root = tmp_path_factory.mktemp("models")
    os.environ[MODELS_DIR_ENV] = str(root)
    return root


# ------------------------------------------------------------------ Ray Serve


def free_port() -> int:
    """A port nothing listens on now, so parallel test sessions on one machine do not collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVE_PORT = free_port()
METRICS_PORT = free_port()
SERVE_RUN_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def serve_instance(models_root, tmp_path_factory):
    """One local Ray instance with Serve on 127.0.0.1:SERVE_PORT; torn down with ``ray.shutdown``."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    yield f"http://127.0.0.1:{SERVE_PORT}"
    ray.shutdown()


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
