"""The two shipped Serve configs are valid, and each says what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import (
    DEFAULT_GENERATOR_OPTIONS,
    build_app,
    deployment_options,
    generator_scheduling,
    merge_options,
)
from serve_app.config import AppConfig
from serve_app.pipeline.registry import get_spec

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> tuple[ServeDeploySchema, AppConfig]:
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / name).read_text()))
    (application,) = schema.applications
    assert application.import_path == "deployments.app:build_app"
    build_app(application.args)  # binds the graph; needs no cluster
    return schema, AppConfig.model_validate(application.args)


def test_dev_config_runs_a_tiny_model_on_this_cpu_with_the_local_store():
    schema, config = load("configs/serve_dev.yaml")
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 8000)
    assert all(get_spec(name).tiny for name in config.models)
    assert config.num_gpus == 0 and config.storage.resolved_kind() == "local"


def test_production_config_runs_real_weights_on_gpus_with_minio():
    schema, config = load("serve_config.yaml")
    assert not any(get_spec(name).tiny for name in config.models)
    assert config.num_gpus >= 1 and config.storage.kind == "minio"
    generator = deployment_options(config)["Generator"]
    assert generator["ray_actor_options"] == {"num_gpus": config.num_gpus, "num_cpus": 2}
    assert generator["max_queued_requests"] > 0 and generator["autoscaling_config"]["max_replicas"] >= 1


def test_cpu_mode_runs_one_replica_of_each_without_gpus():
    options = deployment_options(AppConfig(num_gpus=0))
    assert options["Generator"]["ray_actor_options"] == {"num_gpus": 0, "num_cpus": 1}
    assert options["Generator"]["autoscaling_config"]["max_replicas"] == 1
    assert options["Ingress"]["autoscaling_config"]["max_replicas"] == 1


def test_deployment_options_merge_over_the_defaults_key_by_key():
    config = AppConfig(
        deployment_options={
            "Generator": {"ray_actor_options": {"num_gpus": 2}, "max_ongoing_requests": 4},
            "Ingress": {"num_replicas": 3},
        }
    )
    options = deployment_options(config)
    generator = options["Generator"]
    assert generator["ray_actor_options"] == {"num_gpus": 2, "num_cpus": 2}
    assert generator["max_ongoing_requests"] == 4
    assert generator["autoscaling_config"] == {
        **DEFAULT_GENERATOR_OPTIONS["autoscaling_config"],
        **generator_scheduling(config)["autoscaling_config"],
    }
    # A fixed count replaces autoscaling (Serve refuses both).
    assert options["Ingress"]["num_replicas"] == 3 and "autoscaling_config" not in options["Ingress"]
    assert merge_options({"num_replicas": 1}, {"autoscaling_config": {"max_replicas": 2}}) == {
        "autoscaling_config": {"max_replicas": 2}
    }


@pytest.mark.parametrize(
    "args, message",
    [
        ({"models": ["ace-step-v9"]}, "unknown models"),
        ({"models": ["acestep-v15-tiny"], "default_model": "ace-step-v1-3.5b"}, "default_model"),
        ({"storage": {"kind": "s3"}}, "kind"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"deployment_options": {"Generator": {"max_ongoing_requestz": 1}}}, "deployment_options.Generator"),
        ({"deployment_options": {"Proxy": {}}}, "deployment_options"),
        ({"generate_timeout_s": 0}, "generate_timeout_s"),
    ],
)
def test_bad_app_args_are_refused_at_build(args, message):
    with pytest.raises(ValueError, match=message):
        build_app(args)


def test_compilation_is_off_unless_the_operator_turns_it_on():
    assert AppConfig().torch_compile == "off"
    assert AppConfig(torch_compile="warmup").torch_compile == "warmup"
    with pytest.raises(ValueError, match="warmup: true"):
        AppConfig(torch_compile="warmup", warmup=False)
    with pytest.raises(ValueError):
        AppConfig(torch_compile="on_request")


def test_a_stopping_ingress_waits_as_long_as_the_generator_for_requests_in_flight():
    # The ingress's /generate waits on the generator; an ingress replica that stops sooner drops it.
    from ray.serve._private.build_app import build_app as build_deployments

    for name in ("configs/serve_dev.yaml", "serve_config.yaml"):
        schema, _ = load(name)
        (application,) = schema.applications
        built = build_deployments(build_app(application.args), name=application.name)
        timeouts = {
            deployment.name: deployment._deployment_config.graceful_shutdown_timeout_s
            for deployment in built.deployments
        }
        overrides = {deployment.name: deployment.graceful_shutdown_timeout_s for deployment in application.deployments}
        timeouts.update({name: value for name, value in overrides.items() if isinstance(value, (int, float))})
        assert timeouts["Ingress"] >= timeouts["Generator"], (name, timeouts)


def test_generators_scale_on_backlog_and_route_by_batch_key_unless_told_otherwise():
    _, config = load("serve_config.yaml")
    generator = deployment_options(config)["Generator"]
    policy = generator["autoscaling_config"]["policy"]
    assert policy["policy_function"] == "serve_app.scheduling.backlog_policy:BacklogPolicy"
    assert policy["policy_kwargs"] == {"target_queue_wait_s": config.target_queue_wait_s}
    assert generator["request_router_config"]["request_router_class"] == "deployments.router:BatchKeyRouter"

    plain = deployment_options(config.model_copy(update={"autoscaling": "requests", "routing": "default"}))
    assert "policy" not in plain["Generator"]["autoscaling_config"]
    assert plain["Generator"]["autoscaling_config"]["target_ongoing_requests"] > 0
    assert "request_router_config" not in plain["Generator"]
