"""The MinIO/S3 store's settings: one model read from ``storage.minio`` and ``MINIO_*`` variables."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BUCKET: Final = "ace-step-outputs"
ENV_PREFIX: Final = "MINIO_"
_REQUIRED: Final = ("endpoint", "access_key", "secret_key")
_BUCKET_RE: Final = re.compile(r"(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE: Final = re.compile(r"\d+\.\d+\.\d+\.\d+")


def setting_name(field: str) -> str:
    """How an operator sets ``field``: the config file's key and the environment variable."""
    return f"storage.minio.{field} ({ENV_PREFIX}{field.upper()})"


def split_endpoint(value: str, what: str) -> tuple[str, bool | None]:
    """``"host[:port]"`` or ``"http(s)://host[:port]"`` → (host[:port], secure or None)."""
    value = value.strip()
    secure: bool | None = None
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{what} scheme must be http or https, got {parts.scheme!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{what} must be host[:port] with no path, got {value!r}")
        secure, value = parts.scheme == "https", parts.netloc
    if not value or "/" in value or "@" in value:
        raise ValueError(f"{what} must be host[:port], got {value!r}")
    return value, secure


class MinioConfig(BaseSettings):
    """Connection and behaviour settings of :class:`~.minio_store.MinioStore`.

    Every field comes from the keyword arguments (the ``storage.minio``
    section of the serve config) or else from its ``MINIO_<FIELD>`` variable:

    ==============================  =========  ===========================================
    ``MINIO_ENDPOINT``              required   ``host:port``; an ``http://``/``https://``
                                               prefix also sets ``secure``
    ``MINIO_ACCESS_KEY``            required
    ``MINIO_SECRET_KEY``            required   keep it in the environment, not in a file
    ``MINIO_BUCKET``                optional   default ``ace-step-outputs``
    ``MINIO_SECURE``                optional   TLS; default true (or the endpoint's scheme)
    ``MINIO_REGION``                optional   default: asked from the server
    ``MINIO_PUBLIC_ENDPOINT``       optional   host clients use for presigned URLs
    ``MINIO_URL_EXPIRY_SECONDS``    optional   presigned URL lifetime, default 86400
    ==============================  =========  ===========================================

    ``endpoint`` is ``host[:port]`` as reached from inside the cluster;
    ``public_endpoint`` (``host[:port]`` or ``http(s)://host[:port]``) is the
    address clients use when it differs (ingress, CDN, port-forward):
    presigned URLs are signed for it, because a SigV4 signature covers the
    Host header and a URL signed for the internal host cannot simply be
    rewritten. ``region=None`` asks the server once for the bucket's region;
    set it to skip that request.

    Retries: the minio client's own urllib3 retries are limited to
    ``client_retries`` connection/read retries (no status retries); our loop
    makes up to ``max_attempts`` attempts of each operation with exponential
    backoff and jitter: before attempt n+1 it sleeps a random time in
    [d/2, d] with d = min(retry_max_delay_s, retry_base_delay_s * 2**(n-1)).
    Worst case per operation ≈ max_attempts * (client_retries + 1) *
    (connect or read timeout) + the sleeps.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        hide_input_in_errors=True,  # the input holds the secret key
    )

    endpoint: str
    access_key: str = Field(min_length=1)
    secret_key: str = Field(min_length=1, repr=False)
    bucket: str = DEFAULT_BUCKET
    secure: bool = True
    region: str | None = None
    public_endpoint: str | None = None
    url_expiry_seconds: int = Field(default=24 * 3600, ge=1, le=7 * 24 * 3600)
    """Presigned URL lifetime: 1 second to 7 days (the SigV4 limit)."""
    create_bucket: bool = True
    cert_check: bool = True
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    client_retries: int = Field(default=1, ge=0)
    max_attempts: int = Field(default=4, ge=1)
    retry_base_delay_s: float = Field(default=0.2, ge=0)
    retry_max_delay_s: float = Field(default=5.0, ge=0)
    max_pool_connections: int = Field(default=10, ge=1)
    part_size: int = Field(default=64 * 1024 * 1024, ge=5 * 2**20, le=5 * 2**30)
    """Objects up to this size go up in one PUT (retried whole); bigger ones use
    multipart, which minio aborts on failure. S3 allows 5 MiB to 5 GiB."""

    @model_validator(mode="before")
    @classmethod
    def _required_and_scheme(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        missing = [setting_name(name) for name in _REQUIRED if data.get(name) in (None, "")]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)}")
        endpoint = data["endpoint"]
        if not isinstance(endpoint, str):
            return data
        host, scheme_secure = split_endpoint(endpoint, "endpoint")
        data = {**data, "endpoint": host}
        if scheme_secure is not None:
            given = data.get("secure")
            try:
                contradicts = given is not None and TypeAdapter(bool).validate_python(given) != scheme_secure
            except ValidationError:
                contradicts = False  # the field's own validation reports it
            if contradicts:
                raise ValueError(f"{setting_name('secure')} contradicts the scheme of {setting_name('endpoint')}")
            data["secure"] = scheme_secure
        return data

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET_RE.fullmatch(value) or _IPV4_RE.fullmatch(value):
            raise ValueError(f"invalid bucket name {value!r} (3-63 of a-z 0-9 . -, as S3 requires)")
        return value

    @field_validator("public_endpoint")
    @classmethod
    def _public_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            split_endpoint(value, "public_endpoint")
        return value

    @model_validator(mode="after")
    def _delays(self) -> MinioConfig:
        if self.retry_max_delay_s < self.retry_base_delay_s:
            raise ValueError("retry_max_delay_s must be at least retry_base_delay_s")
        return self

    @property
    def url_expiry(self) -> timedelta:
        return timedelta(seconds=self.url_expiry_seconds)
