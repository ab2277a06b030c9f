"""``build_app``: the import path named in ``serve_config.yaml`` and ``configs/serve_dev.yaml``.

    serve run configs/serve_dev.yaml            # this machine: CPU, tiny model, local store
    serve deploy serve_config.yaml              # GPU cluster: real weights, MinIO

Every deployment option is decided here, as Ray Serve LLM's builders do
(``build_llm_deployment``: defaults dict, overrides, ``serve.deployment(cls, **options)``):
the ``DEFAULT_*_OPTIONS`` below, adjusted for CPU mode, then the per-deployment
``deployment_options`` of the validated ``args``. The deployment classes carry none.
A config's ``deployments:`` list, if any, is applied by Serve on top of what this returns.
"""

from __future__ import annotations

import copy
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import AppConfig

from .cluster import check_store_fits_cluster
from .generator import Generator
from .ingress import Ingress
from .jobs import JobCoordinatorDeployment

INGRESS, GENERATOR, COORDINATOR = "Ingress", "Generator", "JobCoordinator"

DEFAULT_INGRESS_OPTIONS: dict[str, Any] = {
    "ray_actor_options": {"num_cpus": 0.5},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
    "max_ongoing_requests": 256,
    # A stopping ingress replica drains its requests, each waiting on the generator: give it as long
    # as the generator has to finish them (Serve's default of 20 s dropped every longer /generate).
    "graceful_shutdown_timeout_s": 300,
}
DEFAULT_GENERATOR_OPTIONS: dict[str, Any] = {
    "ray_actor_options": {"num_gpus": 1, "num_cpus": 2},
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 30,
        "downscale_delay_s": 600,
    },
    # About two batches inside the replica: the rest of a backlog waits at the
    # callers, where any replica (a new one too) can take it; past
    # max_queued_requests callers get 503 + Retry-After.
    "max_ongoing_requests": 16,
    "max_queued_requests": 256,
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
    # A batch of long songs can take minutes: let it finish on scale-down.
    "graceful_shutdown_timeout_s": 300,
}
DEFAULT_COORDINATOR_OPTIONS: dict[str, Any] = {
    # One replica owns the job state (see deployments/jobs.py).
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.25},
    "max_ongoing_requests": 2048,
    "health_check_period_s": 10,
    "graceful_shutdown_timeout_s": 30,
}
ONE_REPLICA = {"min_replicas": 1, "max_replicas": 1}


def generator_scheduling(config: AppConfig) -> dict[str, Any]:
    """The generator's autoscaling policy and request router, as ``config`` chooses them."""
    options: dict[str, Any] = {}
    if config.autoscaling == "backlog":
        options["autoscaling_config"] = {
            "policy": {
                "policy_function": "serve_app.scheduling.backlog_policy:BacklogPolicy",
                "policy_kwargs": {"target_queue_wait_s": config.target_queue_wait_s},
            },
            # Serve's default pushes replica metrics every 10 s; backlog should be seconds old.
            "metrics_interval_s": 1.0,
            "look_back_period_s": 5.0,
        }
    if config.routing == "batch_key":
        options["request_router_config"] = {
            "request_router_class": "deployments.router:BatchKeyRouter",
            "request_routing_stats_period_s": 0.25,
        }
    return options


def merge_options(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; dict values (``ray_actor_options``, ``autoscaling_config``)
    key by key, so ``{"ray_actor_options": {"num_gpus": 2}}`` keeps ``num_cpus``."""
    merged = copy.deepcopy(base)
    # Serve takes a fixed replica count or autoscaling, never both.
    if "num_replicas" in override:
        merged.pop("autoscaling_config", None)
    if "autoscaling_config" in override:
        merged.pop("num_replicas", None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def deployment_options(config: AppConfig) -> dict[str, dict[str, Any]]:
    """Each deployment's Serve options for ``config``."""
    generator = merge_options(DEFAULT_GENERATOR_OPTIONS, {"ray_actor_options": {"num_gpus": config.num_gpus}})
    generator = merge_options(generator, generator_scheduling(config))
    options = {INGRESS: DEFAULT_INGRESS_OPTIONS, GENERATOR: generator, COORDINATOR: DEFAULT_COORDINATOR_OPTIONS}
    if config.num_gpus == 0:
        # CPU mode: one replica of each, as they share the machine's cores.
        options[INGRESS] = merge_options(options[INGRESS], {"autoscaling_config": ONE_REPLICA})
        options[GENERATOR] = merge_options(
            options[GENERATOR], {"ray_actor_options": {"num_cpus": 1}, "autoscaling_config": ONE_REPLICA}
        )
    for name, override in config.deployment_options.items():
        options[name] = merge_options(options[name], override)
    return {name: copy.deepcopy(value) for name, value in options.items()}


def _deployment(cls: type, name: str, options: dict[str, Any]) -> serve.Deployment:
    try:
        return serve.deployment(cls, name=name, **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"deployment_options.{name}: {exc}") from None


def build_app(args: dict) -> Application:
    config = AppConfig.model_validate(args or {})
    check_store_fits_cluster(config)
    options = deployment_options(config)
    settings = config.model_dump()
    generator = _deployment(Generator, GENERATOR, options[GENERATOR]).bind(settings)
    coordinator = _deployment(JobCoordinatorDeployment, COORDINATOR, options[COORDINATOR]).bind(generator, settings)
    return _deployment(Ingress, INGRESS, options[INGRESS]).bind(generator, coordinator, settings)
