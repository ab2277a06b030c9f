"""Retention: outputs, sidecars and job records expire after output_ttl_days, on both stores.

The local sweep runs with an injected clock. SeaweedFS accepts and returns S3
lifecycle rules but expires in days, so on S3 the tests check the rules the
bucket holds (through the minio client), not an expiry.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from pydantic import ValidationError

from serve_app.config import AppConfig
from serve_app.storage import LocalStore, MinioStore
from serve_app.storage.janitor import PendingUploads
from serve_app.storage.maintenance import StoreMaintenance
from serve_app.storage.retention import RetentionPolicy, apply_lifecycle, sweep_local

TTL_DAYS = 7
OUTPUT = "2026-01-01/r1/1.wav"
RECORD = "jobs/records/" + "a" * 32 + ".json"
ACTIVE_ID = "b" * 32


def written(store: LocalStore, *keys: str) -> None:
    for key in keys:
        store.put(key, b"x", "application/octet-stream")


def age(store: LocalStore, key: str, days: float) -> None:
    """Make ``key`` look written ``days`` ago."""
    when = (datetime.now(UTC) - timedelta(days=days)).timestamp()
    os.utime(store.path(key), (when, when))


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def test_the_local_sweep_deletes_outputs_sidecars_and_finished_job_records_once_expired(store):
    written(store, OUTPUT, f"{OUTPUT}.json", RECORD, f"jobs/records/{ACTIVE_ID}.json", f"jobs/active/{ACTIVE_ID}")
    policy = RetentionPolicy(TTL_DAYS)
    now = datetime.now(UTC)

    assert sweep_local(store, policy, now + timedelta(days=TTL_DAYS) - timedelta(hours=1)) == []
    deleted = sweep_local(store, policy, now + timedelta(days=TTL_DAYS, hours=1))

    assert deleted == [OUTPUT, f"{OUTPUT}.json", RECORD]  # audio before its sidecar
    # An unfinished job keeps its record and its marker, however old.
    assert store.list() == [f"jobs/active/{ACTIVE_ID}", f"jobs/records/{ACTIVE_ID}.json"]


def test_a_sidecar_stays_while_its_audio_does(store):
    written(store, OUTPUT, f"{OUTPUT}.json")
    age(store, f"{OUTPUT}.json", TTL_DAYS + 1)  # the sidecar is written first: it can expire first
    assert sweep_local(store, RetentionPolicy(TTL_DAYS), datetime.now(UTC)) == []
    assert store.list() == [OUTPUT, f"{OUTPUT}.json"]


def test_without_a_ttl_nothing_is_ever_deleted(store):
    written(store, OUTPUT, f"{OUTPUT}.json", RECORD)
    assert sweep_local(store, RetentionPolicy(None), datetime.now(UTC) + timedelta(days=10_000)) == []
    assert len(store.list()) == 3


def test_a_maintenance_round_on_the_local_store_sweeps_expired_outputs_and_abandoned_uploads(store):
    now = datetime.now(UTC)
    written(store, OUTPUT, f"{OUTPUT}.json", "2026-01-02/r2/1.wav.json")
    PendingUploads(store).begin("r2", "2026-01-02/r2", now)
    clock = [now + timedelta(days=TTL_DAYS, hours=1)]
    maintenance = StoreMaintenance(
        store, RetentionPolicy(TTL_DAYS), abandoned_after=timedelta(hours=1), clock=lambda: clock[0]
    )
    maintenance.run_once()
    assert store.list() == []


def test_output_ttl_days_is_a_whole_number_of_days():
    assert AppConfig(output_ttl_days=30).output_ttl_days == 30
    assert AppConfig().output_ttl_days is None
    for bad in (0, -1, 1.5):
        with pytest.raises(ValidationError, match="output_ttl_days"):
            AppConfig(output_ttl_days=bad)


# ------------------------------------------------------------------------- S3


@pytest.fixture
def s3_store(s3_server):
    return MinioStore(s3_server.minio_config(s3_server.new_bucket("retention")))


def rules(store: MinioStore) -> dict[str, tuple[str, int]]:
    config = store.lifecycle()
    return {rule.rule_id: (rule.rule_filter.prefix, rule.expiration.days) for rule in (config.rules if config else [])}


def test_on_s3_retention_is_a_lifecycle_rule_on_the_bucket(s3_store):
    StoreMaintenance(s3_store, RetentionPolicy(TTL_DAYS), abandoned_after=timedelta(hours=1)).run_once()
    assert rules(s3_store) == {"ace-step-retention": ("", TTL_DAYS)}


def test_with_an_output_prefix_outputs_and_job_records_get_a_rule_each(s3_store):
    apply_lifecycle(s3_store, RetentionPolicy(TTL_DAYS, output_prefix="music/"))
    assert rules(s3_store) == {"ace-step-outputs": ("music/", TTL_DAYS), "ace-step-job-records": ("jobs/records/", 7)}


def test_an_operators_own_rules_are_kept_and_turning_retention_off_removes_only_ours(s3_store):
    theirs = Rule(ENABLED, rule_filter=Filter(prefix="tmp/"), rule_id="operator-tmp", expiration=Expiration(days=1))
    s3_store.set_lifecycle(LifecycleConfig([theirs]))

    apply_lifecycle(s3_store, RetentionPolicy(30))
    assert rules(s3_store) == {"operator-tmp": ("tmp/", 1), "ace-step-retention": ("", 30)}
    apply_lifecycle(s3_store, RetentionPolicy(None))
    assert rules(s3_store) == {"operator-tmp": ("tmp/", 1)}
    s3_store.set_lifecycle(None)
    apply_lifecycle(s3_store, RetentionPolicy(None))
    assert rules(s3_store) == {}
