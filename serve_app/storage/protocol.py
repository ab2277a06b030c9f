"""What the service needs from an object store."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .errors import StorageConfigError


@runtime_checkable
class ObjectStore(Protocol):
    """An object store: :class:`~.minio_store.MinioStore` or :class:`~.local_store.LocalStore`.

    ``put`` overwrites an existing key. ``delete`` of a missing key is not an
    error (as in S3). ``list`` returns every key starting with ``prefix``
    (a plain string prefix, not a directory), sorted. ``url`` is where a client
    fetches the object. ``check`` reaches the store once (health).
    ``config_error`` is the configuration error the store's latest operation
    met, or ``None`` once an operation succeeds again: callers use it to refuse
    work early while an operator has something to fix.
    """

    config_error: StorageConfigError | None

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def check(self) -> None: ...
