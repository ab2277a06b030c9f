"""The MinIO settings: one model read from ``storage.minio`` and the ``MINIO_*`` variables."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig
from serve_app.storage import DEFAULT_BUCKET, MinioConfig, MinioStore

SECRET = "s3cr3t-value"
BASE = {"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": SECRET}


@pytest.fixture
def env(monkeypatch):
    """Set MINIO_* variables for one test, with none left over from the caller's environment."""
    for name in [name for name in os.environ if name.startswith("MINIO_")]:
        monkeypatch.delenv(name)

    def set_env(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_config_from_env_defaults(env):
    env(BASE)
    cfg = MinioConfig()
    assert (cfg.endpoint, cfg.bucket, cfg.secure, cfg.region, cfg.public_endpoint) == (
        "minio:9000",
        DEFAULT_BUCKET,
        True,
        None,
        None,
    )
    assert cfg.url_expiry == timedelta(hours=24)
    assert SECRET not in repr(cfg)


def test_config_from_env_parsing_and_arguments_win(env):
    env(
        BASE
        | {
            "MINIO_ENDPOINT": "http://minio:9000",
            "MINIO_BUCKET": "music",
            "MINIO_REGION": "eu-west-1",
            "MINIO_PUBLIC_ENDPOINT": "https://files.example.com",
            "MINIO_URL_EXPIRY_SECONDS": "600",
        }
    )
    cfg = MinioConfig(max_attempts=2)
    assert (cfg.endpoint, cfg.secure, cfg.bucket, cfg.region) == ("minio:9000", False, "music", "eu-west-1")
    assert cfg.public_endpoint == "https://files.example.com"
    assert cfg.url_expiry == timedelta(seconds=600) and cfg.max_attempts == 2
    assert MinioConfig(bucket="from-the-file").bucket == "from-the-file"  # the config file beats the variable
    env({"MINIO_SECURE": "false", "MINIO_ENDPOINT": "minio:9000", "MINIO_REGION": ""})
    cfg = MinioConfig()
    assert cfg.secure is False and cfg.region is None  # an empty variable counts as unset


@pytest.mark.parametrize(
    "values,match",
    [
        ({}, r"storage\.minio\.endpoint \(MINIO_ENDPOINT\).*MINIO_ACCESS_KEY.*MINIO_SECRET_KEY"),
        ({"MINIO_ENDPOINT": "m:9000", "MINIO_ACCESS_KEY": "a"}, r"missing.*\(MINIO_SECRET_KEY\)"),
        (BASE | {"MINIO_SECURE": "maybe"}, "secure"),
        (BASE | {"MINIO_ENDPOINT": "https://m:9000", "MINIO_SECURE": "0"}, "contradicts"),
        (BASE | {"MINIO_ENDPOINT": "http://m:9000/path"}, "no path"),
        (BASE | {"MINIO_ENDPOINT": "ftp://m"}, "http or https"),
        (BASE | {"MINIO_BUCKET": "Bad_Bucket"}, "invalid bucket name"),
        (BASE | {"MINIO_URL_EXPIRY_SECONDS": "soon"}, "url_expiry_seconds"),
        (BASE | {"MINIO_URL_EXPIRY_SECONDS": str(8 * 86400)}, "url_expiry_seconds"),
        (BASE | {"MINIO_PUBLIC_ENDPOINT": "https://cdn.example.com/minio"}, "no path"),
        (BASE | {"MINIO_PART_SIZE": "1024"}, "part_size"),
    ],
)
def test_config_rejects(env, values, match):
    env(values)
    with pytest.raises(ValidationError, match=match) as info:
        MinioConfig()
    assert SECRET not in str(info.value)  # the secret never lands in a log


def test_config_rejects_unknown_fields_and_bad_delays(env):
    env(BASE)
    with pytest.raises(ValidationError, match="bogus"):
        MinioConfig(bogus=1)
    with pytest.raises(ValidationError, match="retry_max_delay_s"):
        MinioConfig(retry_base_delay_s=2, retry_max_delay_s=1)


def test_app_config_builds_the_minio_store_from_file_and_environment(env):
    env({"MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": SECRET})
    app = AppConfig(storage={"minio": {"endpoint": "https://minio.internal:9000", "bucket": "music"}})
    assert app.storage.resolved_kind() == "minio"
    store = app.make_store()
    assert isinstance(store, MinioStore)
    assert (store.config.endpoint, store.config.secure, store.config.bucket) == ("minio.internal:9000", True, "music")
    assert SECRET not in str(app.model_dump())  # the secret stays in the environment


def test_app_config_refuses_unknown_minio_settings(env):
    with pytest.raises(ValidationError, match="unknown storage.minio setting"):
        AppConfig(storage={"kind": "minio", "minio": {"endpiont": "m:9000"}})


def test_app_config_without_an_endpoint_uses_the_local_store(env, tmp_path):
    app = AppConfig(storage={"local_root": str(tmp_path)})
    assert app.storage.resolved_kind() == "local"
    env(BASE)
    assert AppConfig().storage.resolved_kind() == "minio"
