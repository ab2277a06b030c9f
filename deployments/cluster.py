"""What the application needs from the Ray cluster it runs on.

The local store keeps outputs and job records in one machine's directory: on a
cluster of several nodes a generator on one node would write files that an
ingress on another cannot serve, and a restarted coordinator would not find its
jobs. So it refuses to start there, at build time and again in every replica
(nodes can join after the build).
"""

from __future__ import annotations

import ray

from serve_app.config import AppConfig
from serve_app.storage import ObjectStore


class StoreDoesNotFitCluster(ValueError):
    pass


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def check_store_fits_cluster(config: AppConfig) -> None:
    """Raise ``StoreDoesNotFitCluster`` when the local store would serve a multi-node cluster."""
    if config.storage.resolved_kind() != "local" or not ray.is_initialized():
        return
    nodes = alive_nodes()
    if nodes > 1:
        how = "" if config.storage.kind == "local" else " (storage.kind 'auto' and no MinIO endpoint set)"
        raise StoreDoesNotFitCluster(
            f"storage.kind resolves to 'local'{how} on a Ray cluster of {nodes} nodes: the local store keeps "
            "files on one node only. Set storage.kind: minio and the MINIO_* settings (see the README)."
        )


def make_store(config: AppConfig) -> ObjectStore:
    """The application's object store, after checking that it fits the cluster."""
    check_store_fits_cluster(config)
    return config.make_store()
