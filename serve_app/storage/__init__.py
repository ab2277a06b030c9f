"""Object storage for generated audio: a MinIO/S3 store and a local-directory store.

Both implement :class:`ObjectStore`. Modules: ``errors`` (what can go wrong),
``protocol`` (the store interface), ``keys`` (safe keys and the output key
layout), ``sidecars`` (the write protocol of one output), ``minio_config``
and ``minio_store`` (S3), ``local_store`` (a directory). Housekeeping, imported
where it runs: ``janitor`` (pending-upload markers, clean-up of abandoned
uploads), ``retention`` (``output_ttl_days``), ``maintenance`` (the periodic
round of both), ``watch`` (what health checks say about the store).
"""

from .errors import (
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
)
from .keys import build_output_key, sidecar_key, validate_key
from .local_store import LocalStore
from .minio_config import DEFAULT_BUCKET, MinioConfig
from .minio_store import MinioStore
from .protocol import ObjectStore
from .sidecars import write_output

__all__ = [
    "DEFAULT_BUCKET",
    "LocalStore",
    "MinioConfig",
    "MinioStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailableError",
    "build_output_key",
    "sidecar_key",
    "validate_key",
    "write_output",
]
