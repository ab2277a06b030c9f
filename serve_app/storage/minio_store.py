"""The MinIO / S3 object store (minio client), with retries and error classification."""

from __future__ import annotations

import io
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Final, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.lifecycleconfig import LifecycleConfig

from .errors import ObjectNotFoundError, StorageConfigError, StorageError, StorageUnavailableError
from .keys import validate_key
from .minio_config import MinioConfig, setting_name, split_endpoint

logger = logging.getLogger(__name__)

T = TypeVar("T")

# S3 / MinIO error codes worth retrying (besides any 5xx / 429 / 408 status).
_TRANSIENT_CODES: Final = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)
_NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "NoSuchObject"})
_CREDENTIALS: Final = f"{setting_name('access_key')} and {setting_name('secret_key')}"
# Codes that say the configuration is wrong: (reason safe to show a client, the setting to fix).
_CONFIG_CODES: Final = {
    "SignatureDoesNotMatch": ("the S3 server rejected the request signature: the secret key is wrong", _CREDENTIALS),
    "InvalidAccessKeyId": ("the S3 server does not know the access key", _CREDENTIALS),
    "AccessDenied": ("the S3 server denied access: the keys are wrong or lack permission on the bucket", _CREDENTIALS),
    "NoSuchBucket": ("the bucket does not exist", setting_name("bucket")),
    "AuthorizationHeaderMalformed": ("the S3 server expects another region", setting_name("region")),
    "PermanentRedirect": ("the bucket is in another region or behind another endpoint", setting_name("region")),
}


def _status_transient(status: int | None) -> bool:
    return status is not None and (status >= 500 or status in (408, 429))


def _config_error(exc: BaseException, what: str) -> StorageConfigError | None:
    """The configuration error ``exc`` reveals, if it reveals one."""
    if isinstance(exc, S3Error) and exc.code in _CONFIG_CODES:
        reason, setting = _CONFIG_CODES[exc.code]
        return StorageConfigError(f"{what}: {_describe(exc)}", reason=reason, setting=setting)
    if isinstance(exc, InvalidResponseError) and not _status_transient(getattr(exc, "_code", None)):
        return StorageConfigError(
            f"{what}: {_describe(exc)}", reason="the endpoint is not an S3 server", setting=setting_name("endpoint")
        )
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    if isinstance(reason, urllib3.exceptions.SSLError):
        return StorageConfigError(
            f"{what}: {_describe(exc)}",
            reason="TLS to the S3 server failed (does it speak TLS, and is its certificate trusted?)",
            setting=f"{setting_name('secure')} and {setting_name('cert_check')}",
        )
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return StorageConfigError(
            f"{what}: {_describe(exc)}",
            reason="the S3 server's host name does not resolve",
            setting=setting_name("endpoint"),
        )
    return None


def _retryable(exc: BaseException) -> bool | None:
    """True for a transient fault, False for a permanent one, None for an error that is not the store's."""
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES or _status_transient(getattr(exc.response, "status", None))
    if isinstance(exc, ServerError):
        return _status_transient(exc.status_code)
    if isinstance(exc, InvalidResponseError):  # non-XML answer, e.g. a proxy's 502 page
        return _status_transient(getattr(exc, "_code", None))
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return True  # connection refused/reset, timeouts, protocol errors
    return None  # a bug (TypeError...) or minio's argument checks: not ours to wrap


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _make_http_client(cfg: MinioConfig) -> urllib3.PoolManager:
    retries = urllib3.Retry(
        total=None,
        connect=cfg.client_retries,
        read=cfg.client_retries,
        status=0,
        other=0,
        redirect=3,
        backoff_factor=0.1,
        status_forcelist=(),
        raise_on_status=False,
    )
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s),
        maxsize=cfg.max_pool_connections,
        cert_reqs="CERT_REQUIRED" if cfg.cert_check else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or _certifi_where(),
        retries=retries,
    )


def _certifi_where() -> str | None:
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover - certifi ships with minio
        return None


class MinioStore:
    """:class:`ObjectStore` on MinIO or any S3-compatible service (minio client).

    No network I/O happens in the constructor; the bucket is checked (and
    created if missing and ``create_bucket``) on the first operation or by
    :meth:`check`. ``client``/``sleep``/``rng`` are injectable for tests.
    """

    def __init__(
        self,
        config: MinioConfig,
        *,
        client: Minio | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.config_error: StorageConfigError | None = None
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = _make_http_client(config)
        self._client = client or Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=self._http,
            cert_check=config.cert_check,
        )
        self._presigner: Minio | None = None if config.public_endpoint else self._client
        self._bucket_ready = False

    def __repr__(self) -> str:
        return f"MinioStore(endpoint={self.config.endpoint!r}, bucket={self.config.bucket!r})"

    # -------------------------------------------------------------- retry loop

    def _call(self, op: str, key: str | None, fn: Callable[[], T], attempts: int | None = None) -> T:
        attempts = attempts or self.config.max_attempts
        what = f"{op} {key!r}" if key is not None else op
        where = f"{self.config.endpoint}/{self.config.bucket}"
        for attempt in range(1, attempts + 1):
            try:
                result = fn()
            except StorageError:
                raise  # already ours (raised inside fn)
            except Exception as exc:
                if isinstance(exc, S3Error) and exc.code in _NOT_FOUND_CODES:
                    raise ObjectNotFoundError(key or "") from exc
                config_error = _config_error(exc, f"{what} on {where}")
                if config_error is not None:
                    if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
                        self._bucket_ready = False  # removed behind our back: look again next time
                    self.config_error = config_error
                    raise config_error from exc
                retryable = _retryable(exc)
                if retryable is None:
                    raise
                if not retryable:
                    raise StorageError(f"{what} on {where} failed: {_describe(exc)}") from exc
                if attempt == attempts:
                    raise StorageUnavailableError(
                        f"{what} on {where} failed after {attempts} attempt(s): {_describe(exc)}"
                    ) from exc
                delay = self.backoff_delay(attempt)
                logger.warning(
                    "%s on %s: %s; retry %d/%d in %.2fs", what, where, _describe(exc), attempt, attempts - 1, delay
                )
                self._sleep(delay)
            else:
                self.config_error = None
                return result
        raise AssertionError("unreachable")

    def backoff_delay(self, attempt: int) -> float:
        """Sleep before attempt ``attempt + 1``: uniform in [d/2, d], d doubling per attempt."""
        cap = min(self.config.retry_max_delay_s, self.config.retry_base_delay_s * 2 ** (attempt - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    # ------------------------------------------------------------------ bucket

    def ensure_bucket(self, attempts: int | None = None) -> None:
        """Make sure the bucket exists, creating it if allowed (race-safe)."""
        bucket = self.config.bucket

        def op() -> None:
            if self._client.bucket_exists(bucket):
                return
            if not self.config.create_bucket:
                self.config_error = StorageConfigError(
                    f"bucket {bucket!r} does not exist on {self.config.endpoint} and creation is off",
                    reason="the bucket does not exist and creating it is off",
                    setting=f"{setting_name('bucket')} or {setting_name('create_bucket')}",
                )
                raise self.config_error
            try:
                self._client.make_bucket(bucket)
                logger.info("created bucket %r on %s", bucket, self.config.endpoint)
            except S3Error as exc:
                # Another replica created it between our check and our create.
                # (BucketAlreadyExists can also mean "owned by another account"
                # on AWS, hence the re-check.)
                if exc.code == "BucketAlreadyOwnedByYou":
                    return
                if exc.code == "BucketAlreadyExists" and self._client.bucket_exists(bucket):
                    return
                if exc.code == "AccessDenied":
                    self.config_error = StorageConfigError(
                        f"creating bucket {bucket!r} on {self.config.endpoint}: {_describe(exc)}",
                        reason="the bucket does not exist and the keys may not create it",
                        setting=setting_name("bucket"),
                    )
                    raise self.config_error from exc
                raise

        self._call("ensure bucket", bucket, op, attempts)
        self._bucket_ready = True

    def _ready(self) -> None:
        if not self._bucket_ready:
            self.ensure_bucket()

    # -------------------------------------------------------------- operations

    def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)
        data = bytes(data)
        self._ready()
        self._call(
            "put",
            key,
            lambda: self._client.put_object(
                self.config.bucket,
                key,
                io.BytesIO(data),  # a fresh stream per attempt
                len(data),
                content_type=content_type,
                part_size=self.config.part_size,
            ),
        )

    def get(self, key: str) -> bytes:
        validate_key(key)
        self._ready()

        def op() -> bytes:
            response = self._client.get_object(self.config.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("get", key, op)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._ready()
        self._call("delete", key, lambda: self._client.remove_object(self.config.bucket, key))

    def list(self, prefix: str = "") -> list[str]:
        self._ready()
        return self._call(
            "list",
            prefix,
            lambda: sorted(
                o.object_name
                for o in self._client.list_objects(self.config.bucket, prefix=prefix or None, recursive=True)
                if o.object_name is not None
            ),
        )

    def url(self, key: str) -> str:
        """Presigned GET URL valid for ``url_expiry_seconds``, signed for ``public_endpoint`` when one is set."""
        validate_key(key)
        # Signing is local: only finding the region (once) may reach the server.
        return self._get_presigner().presigned_get_object(self.config.bucket, key, expires=self.config.url_expiry)

    def check(self) -> None:
        """Health: one attempt to reach the bucket (creating it if allowed)."""
        self.ensure_bucket(attempts=1)

    def lifecycle(self) -> LifecycleConfig | None:
        """The bucket's lifecycle rules; None when it has none (see ``retention``)."""
        self._ready()
        return self._call("get lifecycle", None, lambda: self._client.get_bucket_lifecycle(self.config.bucket))

    def set_lifecycle(self, rules: LifecycleConfig | None) -> None:
        """Replace the bucket's lifecycle rules; None removes them all."""
        self._ready()
        if rules is None:
            self._call("delete lifecycle", None, lambda: self._client.delete_bucket_lifecycle(self.config.bucket))
        else:
            self._call("set lifecycle", None, lambda: self._client.set_bucket_lifecycle(self.config.bucket, rules))

    # ----------------------------------------------------------------- helpers

    def _get_presigner(self) -> Minio:
        if self._presigner is None:
            host, scheme_secure = split_endpoint(self.config.public_endpoint or "", "public_endpoint")
            region = self.config.region
            if region is None:
                # The public host may be unreachable from here, so it must
                # never need to ask for the region: ask the internal endpoint.
                region = self._call("get region", None, lambda: self._client._get_region(self.config.bucket))
            self._presigner = Minio(
                host,
                access_key=self.config.access_key,
                secret_key=self.config.secret_key,
                secure=self.config.secure if scheme_secure is None else scheme_secure,
                region=region,
                http_client=self._http,  # never used: presigning is local
            )
        return self._presigner
