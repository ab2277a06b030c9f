"""A Ray cluster shaped like a GPU cluster, on this machine, for tests that need several nodes.

    cluster = GpuCluster(workers=2)                  # head (CPUs, no GPU) + 2 workers declaring 2 GPUs each
    url = cluster.deploy({"storage": {...}})         # configs/serve_cluster_test.yaml, args overridden
    cluster.wait_for(lambda: cluster.replicas("Generator") == 2, 120, "two generators")
    node = cluster.node_of_replicas("Generator")[0]; cluster.remove_node(node)
    cluster.shutdown()

Workers declare GPUs but no CPUs, so generator replicas (``num_gpus: 1``,
``num_cpus: 0``, ``device: cpu``) are placed exactly as on a GPU cluster while
torch runs on the CPU, and the CPU deployments (ingress, coordinator) stay on
the head: losing a worker costs generator replicas only.

The app is deployed from a config file through the calls ``serve run
config.yaml`` makes (``ray/serve/scripts.py:run``): the YAML validated as
``ServeDeploySchema``, Serve started with its ``http_options`` and
``proxy_location`` (``_private_api.serve_start``), then
``client.deploy_apps(schema)``, which is what ``serve deploy`` asks the
dashboard to do (``ray/dashboard/modules/serve/serve_head.py:put_all_applications``
→ ``controller.apply_config``). Serve thus builds the app from its import path
and ``args`` in a build task on the cluster, and applies the YAML's
``deployments:`` overrides, as in production.

Pitfalls handled here (../shared/ray-serve-scheduling.md): ``Cluster`` writes its
address where a plain ``ray.init()`` would find it, so ``RAY_TMPDIR`` points at
a private directory while the cluster lives; the head gets its own dashboard
port. One cluster per test module (the ``gpu_cluster`` fixture in conftest.py, which
shuts down the single-node instance first if a module before used it): starting one
costs seconds and ~1 GiB.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_CONFIG = ROOT / "configs" / "serve_cluster_test.yaml"
HEAD_CPUS = 2
GPUS_PER_WORKER = 2
DEPLOY_TIMEOUT_S = 240


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class GpuCluster:
    """A head node without GPUs and ``workers`` nodes declaring ``GPUS_PER_WORKER`` GPUs each;
    the driver (this process) is connected to it."""

    def __init__(self, workers: int = 2) -> None:
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise RuntimeError("this process is already attached to a Ray instance: use the gpu_cluster fixture")
        # Short: Ray's socket paths under it must stay within the 107-byte Unix limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        self._saved_tmpdir = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = self.temp_dir
        os.mkdir(os.path.join(self.temp_dir, "ray"))  # where Cluster writes its address
        self.http_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.cluster = None
        try:
            self.cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": HEAD_CPUS,
                    "num_gpus": 0,
                    "include_dashboard": False,
                    "dashboard_port": free_port(),
                    "temp_dir": os.path.join(self.temp_dir, "ray"),
                },
            )
            for _ in range(workers):
                self.add_gpu_node()
            ray.init(address=self.cluster.address, log_to_driver=False)
        except BaseException:
            self.shutdown()
            raise

    # ------------------------------------------------------------------ nodes

    def add_gpu_node(self):
        node = self.cluster.add_node(num_cpus=0, num_gpus=GPUS_PER_WORKER)
        self.cluster.wait_for_nodes()
        return node

    def remove_node(self, node_id: str) -> None:
        """Kill a worker node at once (its processes die as in a machine loss)."""
        (node,) = [node for node in self.cluster.worker_nodes if node.node_id == node_id]
        self.cluster.remove_node(node, allow_graceful=False)

    # -------------------------------------------------------------------- app

    def config(
        self, args: dict[str, Any] | None = None, application: dict[str, Any] | None = None, **top_level: Any
    ) -> dict[str, Any]:
        """``configs/serve_cluster_test.yaml`` served on this cluster's HTTP port, with its app's
        ``args`` deep-merged with ``args``, other app keys (``deployments``, ``autoscaling_policy``,
        ``name``...) set from ``application``, and top-level keys from ``top_level``."""
        config = yaml.safe_load(CLUSTER_CONFIG.read_text())
        config = deep_merge(config, {"http_options": {"port": self.http_port}, **top_level})
        (app,) = config["applications"]
        app.update(copy.deepcopy(application or {}))
        app["args"] = deep_merge(app.get("args") or {}, args or {})
        return config

    def deploy(
        self, args: dict[str, Any] | None = None, application: dict[str, Any] | None = None, **top_level: Any
    ) -> str:
        """Deploy the test config (see ``config``) as ``serve run``/``serve deploy`` do; returns the
        base URL once the app is RUNNING. Like ``serve deploy``, the config is the whole truth:
        apps it does not name are deleted, and a redeploy updates the app in place."""
        from ray.serve._private import api as serve_api
        from ray.serve.config import gRPCOptions
        from ray.serve.schema import ServeDeploySchema

        schema = ServeDeploySchema.model_validate(self.config(args, application, **top_level))
        client = serve_api.serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
            grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
            controller_options=schema.controller_options,
        )
        client.deploy_apps(schema, _blocking=False)
        names = [application.name for application in schema.applications]
        self.wait_for(
            lambda: all(self.app_status(name) == "RUNNING" for name in names), DEPLOY_TIMEOUT_S, "app RUNNING"
        )
        return self.base_url

    @staticmethod
    def app_status(name: str) -> str | None:
        from ray import serve

        application = serve.status().applications.get(name)
        if application is not None and application.status == "DEPLOY_FAILED":
            raise RuntimeError(f"app {name} failed to deploy: {application.message}")
        return None if application is None else application.status

    @staticmethod
    def replicas(deployment: str, app: str = "acestep", state: str = "RUNNING") -> int:
        from ray import serve

        application = serve.status().applications.get(app)
        if application is None or deployment not in application.deployments:
            return 0
        return application.deployments[deployment].replica_states.get(state, 0)

    @staticmethod
    def node_of_replicas(deployment: str, app: str = "acestep") -> list[str]:
        """The node id of each live replica actor of ``deployment`` (from the GCS actor table,
        as the state API needs the dashboard)."""
        import ray

        class_name = f"ServeReplica:{app}:{deployment}"
        return sorted(
            actor["Address"]["NodeID"]
            for actor in ray._private.state.actors().values()
            if actor["ActorClassName"] == class_name and actor["State"] == "ALIVE"
        )

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.25) -> float:
        """Poll ``condition`` until true; returns the seconds it took, fails after ``timeout_s``."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{what}: not reached within {timeout_s}s")
            time.sleep(poll_s)
        return time.monotonic() - started

    # -------------------------------------------------------------- teardown

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()  # also forgets Serve's client, so a later ray.init starts clean
        finally:
            ray.shutdown()
            if self.cluster is not None:
                self.cluster.shutdown()
            if self._saved_tmpdir is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = self._saved_tmpdir
            shutil.rmtree(self.temp_dir, ignore_errors=True)
