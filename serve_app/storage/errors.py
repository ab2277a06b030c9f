"""Storage errors, all subclasses of :class:`StorageError`.

- :class:`StorageUnavailableError`: the store cannot be reached or keeps failing
  transiently (connection errors, timeouts, 5xx, throttling) after our retries.
  The API answers 503 with ``Retry-After``.
- :class:`StorageConfigError`: the store answers, but the configuration is wrong
  (rejected credentials, a missing bucket that may not be created, an endpoint
  that is not an S3 server, a TLS mismatch). Retrying cannot help, so it is
  raised on the first attempt and names the setting to fix.
- :class:`ObjectNotFoundError`: ``get`` of a missing key. The API answers 404.
- plain :class:`StorageError`: another permanent failure, raised on the first
  attempt, never retried.

Messages name the endpoint, bucket and key for operators; they are not meant
to be sent to clients verbatim (:attr:`StorageConfigError.public_message` is).
"""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed permanently."""


class StorageUnavailableError(StorageError):
    """The store is unreachable or failing transiently, even after retries (→ 503)."""


class StorageConfigError(StorageError):
    """The store's configuration is wrong; an operator must change ``setting``.

    ``reason`` and ``setting`` hold no endpoint, bucket or key names, so
    :attr:`public_message` may be shown in ``/health`` and error responses.
    """

    def __init__(self, message: str, *, reason: str, setting: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.setting = setting

    def __reduce__(self):
        return (_rebuild_config_error, (str(self), self.reason, self.setting))

    @property
    def public_message(self) -> str:
        return f"{self.reason}; check {self.setting}"


def _rebuild_config_error(message: str, reason: str, setting: str) -> StorageConfigError:
    return StorageConfigError(message, reason=reason, setting=setting)


class ObjectNotFoundError(StorageError):
    """The requested object does not exist (→ 404)."""

    def __init__(self, key: str):
        super().__init__(f"object {key!r} not found")
        self.key = key
