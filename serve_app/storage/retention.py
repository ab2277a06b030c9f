"""Retention: outputs, their sidecars and job records are deleted ``ttl_days`` after they were written.

- On MinIO/S3 the store does it: :func:`apply_lifecycle` sets bucket lifecycle
  rules (``Expiration`` in days, the S3 unit). The rules carry ids starting
  with ``ace-step-``; an operator's other rules on the bucket are kept.
  With no ``output_prefix`` outputs lie anywhere in the bucket, so one rule
  covers the whole bucket; otherwise one rule covers ``{output_prefix}/`` and
  one ``{jobs_prefix}/records/``.
- On the local store :func:`sweep_local` deletes files whose modification
  time is older than the TTL; something must call it now and then
  (``maintenance.StoreMaintenance``).

A job record is rewritten on every change, so it expires ``ttl_days`` after
the job ended. The local sweep never deletes the record or the marker of an
unfinished job; a bucket-wide S3 rule cannot exclude them, which only
matters for a job unfinished for ``ttl_days``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from .errors import StorageError
from .keys import SIDECAR_SUFFIX
from .local_store import LocalStore
from .minio_store import MinioStore

logger = logging.getLogger(__name__)

RULE_ID_PREFIX = "ace-step-"


@dataclass(frozen=True)
class RetentionPolicy:
    ttl_days: int | None
    """None keeps everything forever."""
    output_prefix: str = ""
    jobs_prefix: str = "jobs"

    def rule_prefixes(self) -> dict[str, str]:
        """Lifecycle rule id → the key prefix it expires."""
        output_prefix = self.output_prefix.strip("/")
        if not output_prefix:
            return {f"{RULE_ID_PREFIX}retention": ""}
        return {
            f"{RULE_ID_PREFIX}outputs": f"{output_prefix}/",
            f"{RULE_ID_PREFIX}job-records": f"{self.jobs_prefix}/records/",
        }


def lifecycle_rules(policy: RetentionPolicy) -> list[Rule]:
    if policy.ttl_days is None:
        return []
    return [
        Rule(ENABLED, rule_filter=Filter(prefix=prefix), rule_id=rule_id, expiration=Expiration(days=policy.ttl_days))
        for rule_id, prefix in policy.rule_prefixes().items()
    ]


def apply_lifecycle(store: MinioStore, policy: RetentionPolicy) -> None:
    """Make the bucket's ``ace-step-`` lifecycle rules those of ``policy`` (none when it keeps
    everything), keeping every other rule. Raises ``StorageError``."""
    current = store.lifecycle()
    others = [
        rule for rule in (current.rules if current else []) if not (rule.rule_id or "").startswith(RULE_ID_PREFIX)
    ]
    rules = others + lifecycle_rules(policy)
    if rules:
        store.set_lifecycle(LifecycleConfig(rules))
    elif current is not None:
        store.set_lifecycle(None)
    logger.info("retention on %r: %s", store, f"{policy.ttl_days} day(s)" if policy.ttl_days else "keep forever")


def sweep_local(store: LocalStore, policy: RetentionPolicy, now: datetime) -> list[str]:
    """Delete what is older than the TTL on a local store; returns the deleted keys.

    Audio goes before its sidecar, and a sidecar stays while its audio does
    (the sidecar is written first, so it can be a moment older).
    """
    if policy.ttl_days is None:
        return []
    cutoff = (now - timedelta(days=policy.ttl_days)).timestamp()
    unfinished = f"{policy.jobs_prefix}/active/"
    active_jobs = {key.removeprefix(unfinished) for key in store.list(unfinished)}
    keys = set(store.list())
    expired = set()
    for key in keys:
        if key.startswith((unfinished, f"{policy.jobs_prefix}/uploads/")):
            continue  # the coordinator's and the janitor's
        if key.startswith(f"{policy.jobs_prefix}/records/") and key.rsplit("/", 1)[1].split(".")[0] in active_jobs:
            continue
        try:
            if store.path(key).stat().st_mtime < cutoff:
                expired.add(key)
        except FileNotFoundError:
            continue
    expired -= {key for key in expired if key.endswith(SIDECAR_SUFFIX) and _audio_of(key) in keys - expired}
    deleted = []
    for key in sorted(expired, key=lambda key: (key.endswith(SIDECAR_SUFFIX), key)):
        try:
            store.delete(key)
        except StorageError as exc:
            logger.warning("retention could not delete %s: %s", key, exc)
            continue
        deleted.append(key)
    if deleted:
        logger.info("retention deleted %d object(s) older than %d day(s)", len(deleted), policy.ttl_days)
    return deleted


def _audio_of(sidecar: str) -> str:
    return sidecar.removesuffix(SIDECAR_SUFFIX)
