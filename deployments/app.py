"""``build_app``: the import path named in ``serve_config.yaml`` and ``configs/serve_dev.yaml``.

serve run configs/serve_dev.yaml            # this machine: CPU, tiny model, local store
serve deploy serve_config.yaml              # GPU cluster: real weights, MinIO
"""

from __future__ import annotations

from ray.serve import Application

from serve_app.config import AppConfig

from .generator import Generator
from .ingress import Ingress
from .jobs import JobCoordinatorDeployment

ONE_REPLICA = {"min_replicas": 1, "max_replicas": 1}


def build_app(args: dict) -> Application:
    config = AppConfig.model_validate(args or {})
    ingress, generator = Ingress, Generator
    if config.num_gpus == 0:
        # CPU mode: one replica of each, as they share the machine's cores.
        # ray_actor_options replaces the decorator's dict whole, so num_cpus is restated.
        ingress = Ingress.options(autoscaling_config=ONE_REPLICA)
        generator = Generator.options(ray_actor_options={"num_gpus": 0, "num_cpus": 1}, autoscaling_config=ONE_REPLICA)
    elif config.num_gpus != 1:
        generator = Generator.options(ray_actor_options={"num_gpus": config.num_gpus, "num_cpus": 2})
    settings = config.model_dump()
    generator_app = generator.bind(settings)
    return ingress.bind(generator_app, JobCoordinatorDeployment.bind(generator_app, settings), settings)
