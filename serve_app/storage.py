"""Object storage for generated audio: a MinIO/S3 store and a local-directory store.

Both implement :class:`ObjectStore`. Keys are ``/``-separated object names that
the *server* builds (:func:`build_output_key`); a client can only contribute a
validated name or prefix inside the bucket (``output_name``), never a
filesystem path.

Errors (all subclasses of :class:`StorageError`):

- :class:`StorageUnavailableError` — the store cannot be reached or keeps
  failing transiently (connection errors, timeouts, 5xx, throttling) after our
  retries. The API answers 503.
- :class:`ObjectNotFoundError` — ``get`` of a missing key. The API answers 404.
- plain :class:`StorageError` — a permanent problem (access denied, missing
  bucket with creation off, wrong region, TLS misconfiguration). Raised on the
  first attempt, never retried; the message says what is wrong.

Messages name the endpoint, bucket and key for operators; they are not meant
to be sent to clients verbatim.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from .audio import AUDIO_FORMATS
from .pipeline.invalid_field import InvalidField

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BUCKET: Final = "ace-step-outputs"
SIDECAR_SUFFIX: Final = ".json"
SIDECAR_CONTENT_TYPE: Final = "application/json"


# ============================================================================ errors


class StorageError(Exception):
    """A storage operation failed permanently (misconfiguration, access denied...)."""


class StorageUnavailableError(StorageError):
    """The store is unreachable or failing transiently, even after retries (→ 503)."""


class ObjectNotFoundError(StorageError):
    """The requested object does not exist (→ 404)."""

    def __init__(self, key: str):
        super().__init__(f"object {key!r} not found")
        self.key = key


# ========================================================================= protocol


@runtime_checkable
class ObjectStore(Protocol):
    """What the service needs from an object store.

    ``put`` overwrites an existing key. ``delete`` of a missing key is not an
    error (as in S3). ``list`` returns every key starting with ``prefix``
    (a plain string prefix, not a directory), sorted.
    """

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str, expires: timedelta | None = None) -> str: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def check(self) -> None: ...


# ====================================================================== key safety

MAX_KEY_BYTES: Final = 1024  # S3's limit on object names
MAX_SEGMENT_BYTES: Final = 255  # NAME_MAX of common filesystems (LocalStore)
MAX_OUTPUT_NAME_CHARS: Final = 200
MAX_OUTPUT_NAME_SEGMENT_CHARS: Final = 100
MAX_OUTPUT_NAME_DEPTH: Final = 8

_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_EXT_RE: Final = re.compile(r"[a-z0-9]{1,10}")
# Characters a client may use in an output name: letters and digits of any
# script, space, and - _ . ( ) + , = @ . Everything else (URL-special % # ? &,
# Windows-reserved : * " < > |, quotes, ...) is refused.
_NAME_CHAR_RE: Final = re.compile(r"[\w \-.()+,=@]")
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")


def _invisible_char(s: str) -> str | None:
    """First control / format / unassigned / private-use character, if any.

    Catches NUL, newlines, DEL, C1 controls, zero-width and bidi-override
    characters (which make a name display differently from what it is).
    """
    for ch in s:
        if unicodedata.category(ch)[0] == "C":
            return ch
    return None


def validate_key(key: str) -> str:
    """Check that ``key`` is a safe object key and return it unchanged.

    A safe key is a relative ``/``-separated path of non-empty segments, none of
    which is ``.``/``..`` or starts with ``.`` (reserved: LocalStore's temporary
    files), with no backslash, no control or invisible character, at most 1024
    UTF-8 bytes and 255 bytes per segment. Such a key can never leave a
    LocalStore root. Raises ``ValueError`` saying why not.
    """
    if not isinstance(key, str):
        raise ValueError(f"object key must be a string, got {type(key).__name__}")
    if not key:
        raise ValueError("object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    bad = _invisible_char(key)
    if bad is not None:
        raise ValueError(f"object key contains a control or invisible character (U+{ord(bad):04X})")
    if "\\" in key:
        raise ValueError("object key contains a backslash")
    if key.startswith("/"):
        raise ValueError("object key must be relative (it starts with '/')")
    for seg in key.split("/"):
        if not seg:
            raise ValueError("object key has an empty path segment ('//' or a trailing '/')")
        if seg in (".", ".."):
            raise ValueError(f"object key has a '{seg}' path segment")
        if seg.startswith("."):
            raise ValueError(f"object key segment {seg!r} starts with '.' (reserved)")
        if len(seg.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise ValueError(f"object key segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return key


def validate_output_name(name: str) -> str:
    """Validate a client-chosen output name and return it NFC-normalised.

    The name is an object name or prefix *inside the bucket*, relative to the
    server's prefix — never a filesystem path: ``"track"``,
    ``"albums/summer/track"`` or, with a trailing ``/``, a folder only
    (``"albums/summer/"``). Raises ``InvalidField`` with the reason.
    """
    if not isinstance(name, str):
        raise InvalidField("output_name", f"must be a string, got {type(name).__name__}")
    bad = _invisible_char(name)
    if bad is not None:
        raise InvalidField("output_name", f"contains a control or invisible character (U+{ord(bad):04X})")
    name = unicodedata.normalize("NFC", name)
    if not name.strip():
        raise InvalidField("output_name", "is empty")
    if len(name) > MAX_OUTPUT_NAME_CHARS:
        raise InvalidField("output_name", f"is longer than {MAX_OUTPUT_NAME_CHARS} characters")
    if "\\" in name:
        raise InvalidField("output_name", "contains a backslash; use '/' to separate folders")
    if name.startswith("/"):
        raise InvalidField("output_name", "must be relative: it names an object in the bucket, not a filesystem path")
    if _DRIVE_RE.match(name):
        raise InvalidField("output_name", "must not start with a drive letter: it is not a filesystem path")
    if "~" in name:
        raise InvalidField("output_name", "must not contain '~': it is not a filesystem path")
    segments = name[:-1].split("/") if name.endswith("/") else name.split("/")
    if len(segments) > MAX_OUTPUT_NAME_DEPTH:
        raise InvalidField("output_name", f"has more than {MAX_OUTPUT_NAME_DEPTH} path segments")
    for seg in segments:
        if seg in (".", ".."):
            raise InvalidField("output_name", f"must not contain '{seg}' path segments")
        if not seg:
            raise InvalidField("output_name", "has an empty path segment ('//' or a leading/trailing '/')")
        if seg.startswith("."):
            raise InvalidField("output_name", f"segment {seg!r} must not start with '.'")
        if seg != seg.strip():
            raise InvalidField("output_name", f"segment {seg!r} starts or ends with whitespace")
        if len(seg) > MAX_OUTPUT_NAME_SEGMENT_CHARS or len(seg.encode()) > 2 * MAX_OUTPUT_NAME_SEGMENT_CHARS:
            raise InvalidField(
                "output_name",
                f"segment is longer than {MAX_OUTPUT_NAME_SEGMENT_CHARS} characters "
                f"({2 * MAX_OUTPUT_NAME_SEGMENT_CHARS} bytes in UTF-8)",
            )
        for ch in seg:
            if not _NAME_CHAR_RE.fullmatch(ch):
                raise InvalidField(
                    "output_name",
                    f"contains {ch!r}, which is not allowed; "
                    "use letters, digits, space and - _ . ( ) + , = @ ('/' separates folders)",
                )
    return name


def split_output_name(name: str, ext: str) -> tuple[list[str], str | None]:
    """Folders and file stem of a validated output name, for a file ending in ``.{ext}``.

    A name ending in ``/`` is folders only (no stem). A trailing ``.{ext}`` on the
    stem is dropped (``"track.mp3"`` → ``track``); another audio extension is an
    ``InvalidField``, so the planner refuses it before anything is generated.
    """
    if name.endswith("/"):
        return name[:-1].split("/"), None
    *folders, stem = name.split("/")
    base, dot, suffix = stem.rpartition(".")
    if dot and base and suffix.lower() == ext:
        stem = base
    elif dot and base and suffix.lower() in AUDIO_FORMATS:
        raise InvalidField("output_name", f"ends with '.{suffix}' but the output format is {ext}")
    return folders, stem


def build_output_key(
    prefix: str,
    request_id: str,
    seed: int,
    ext: str,
    *,
    name: str | None = None,
    when: datetime,
) -> str:
    """Build the object key of one generated output.

    Layout (``date`` is ``when`` in UTC, ``YYYY-MM-DD``)::

        name=None                   {prefix}/{date}/{request_id}/{seed}.{ext}
        name="track"                {prefix}/{date}/{request_id}/track-{seed}.{ext}
        name="albums/summer/track"  {prefix}/albums/summer/{date}/{request_id}/track-{seed}.{ext}
        name="albums/summer/"       {prefix}/albums/summer/{date}/{request_id}/{seed}.{ext}

    The client's folders come first so that everything a client filed under
    ``albums/summer/`` can be listed with that one prefix; the date and the
    request id always follow, so two requests never write the same key (a
    client re-sending the same request id overwrites its own earlier output).
    The file name a browser saves is the client's stem plus the seed. A
    trailing ``.{ext}`` on the name is dropped (``"track.mp3"`` →
    ``track-{seed}.mp3``); another audio extension is an error. The same seed
    twice in one request yields the same key: callers must not repeat seeds.
    ``prefix`` is the server's own prefix ("" for none).
    """
    prefix = prefix.rstrip("/") if isinstance(prefix, str) else prefix
    if prefix:
        validate_key(prefix)
    elif prefix != "":
        raise ValueError("prefix must be a string")
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise ValueError("request_id must be 1-128 characters of letters, digits, '-' or '_'")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(ext, str) or not _EXT_RE.fullmatch(ext):
        raise ValueError(f"extension must be 1-10 lowercase letters or digits, got {ext!r}")
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("when must be a timezone-aware datetime")
    date = when.astimezone(UTC).strftime("%Y-%m-%d")

    folders: list[str] = []
    stem: str | None = None
    if name is not None:
        folders, stem = split_output_name(validate_output_name(name), ext)
    filename = f"{stem}-{seed}.{ext}" if stem else f"{seed}.{ext}"
    key = "/".join([*([prefix] if prefix else []), *folders, date, request_id, filename])
    return validate_key(key)


def sidecar_key(key: str) -> str:
    """Key of the JSON sidecar of an output: ``key + ".json"``."""
    return key + SIDECAR_SUFFIX


# ======================================================================== sidecars


def write_output(
    store: ObjectStore,
    key: str,
    audio_bytes: bytes,
    content_type: str,
    sidecar: Mapping[str, Any],
    *,
    metadata: dict[str, str] | None = None,
) -> str:
    """Write one output: the audio at ``key`` and its JSON sidecar at ``key + ".json"``.

    The sidecar holds ``sidecar`` (the resolved parameters etc., JSON-ready)
    plus an ``"object"`` entry describing the audio (key, content type, size,
    sha256). Returns the sidecar key. On failure raises the store's error
    (``StorageUnavailableError`` / ``StorageError``) after removing what it wrote.

    Ordering — sidecar first, audio last: the audio object is the output
    clients fetch and list, so it is written last and acts as the commit
    marker. The invariant "an audio object exists ⇒ its sidecar exists"
    (every result is reproducible from its sidecar) then holds even if the
    process dies between the two writes: the only possible leftover is a small
    sidecar without audio, which no client is ever pointed to. Audio first
    would leave an unexplained audio object in the same situation. On a failed
    audio write we delete the audio too (a PUT that timed out may still have
    landed) and delete the sidecar only once the audio is known gone, so the
    invariant also survives a failing cleanup.
    """
    validate_key(key)
    skey = sidecar_key(key)
    validate_key(skey)
    if "object" in sidecar:
        raise ValueError("sidecar must not contain an 'object' entry; write_output fills it in")
    document = {
        **sidecar,
        "object": {
            "key": key,
            "content_type": content_type,
            "size_bytes": len(audio_bytes),
            "sha256": hashlib.sha256(audio_bytes).hexdigest(),
        },
    }
    try:
        sidecar_bytes = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sidecar is not JSON-serialisable: {exc}") from exc

    try:
        store.put(skey, sidecar_bytes, SIDECAR_CONTENT_TYPE)
    except Exception:
        _delete_quietly(store, skey)  # a failed PUT may still have landed
        raise
    try:
        store.put(key, audio_bytes, content_type, metadata)
    except Exception:
        if _delete_quietly(store, key):
            _delete_quietly(store, skey)
        raise
    return skey


def _delete_quietly(store: ObjectStore, key: str) -> bool:
    try:
        store.delete(key)
        return True
    except Exception as exc:  # best effort: the original error is what matters
        logger.warning("cleanup of %r after a failed write failed: %s", key, exc)
        return False


# ===================================================================== MinIO / S3

_BUCKET_RE: Final = re.compile(r"(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
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


def _split_endpoint(value: str, what: str) -> tuple[str, bool | None]:
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


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{name} must be one of true/false/1/0/yes/no/on/off, got {value!r}")


@dataclass(frozen=True)
class MinioConfig:
    """Connection and behaviour settings of :class:`MinioStore`.

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

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str = DEFAULT_BUCKET
    secure: bool = True
    region: str | None = None
    public_endpoint: str | None = None
    url_expiry: timedelta = timedelta(hours=24)
    create_bucket: bool = True
    cert_check: bool = True
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    client_retries: int = 1
    max_attempts: int = 4
    retry_base_delay_s: float = 0.2
    retry_max_delay_s: float = 5.0
    max_pool_connections: int = 10
    # Objects up to this size go up in one PUT (retried whole); bigger ones
    # use multipart, which minio aborts on failure. Must be 5 MiB..5 GiB.
    part_size: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        host, scheme_secure = _split_endpoint(self.endpoint, "endpoint")
        if scheme_secure is not None:
            raise ValueError("endpoint must be host[:port]; use secure= (MINIO_SECURE) for TLS")
        if not self.access_key or not self.secret_key:
            raise ValueError("access_key and secret_key are required")
        if not _BUCKET_RE.fullmatch(self.bucket) or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", self.bucket):
            raise ValueError(f"invalid bucket name {self.bucket!r} (3-63 of a-z 0-9 . -, as S3 requires)")
        if self.public_endpoint is not None:
            _split_endpoint(self.public_endpoint, "public_endpoint")
        if not timedelta(seconds=1) <= self.url_expiry <= timedelta(days=7):
            raise ValueError("url_expiry must be between 1 second and 7 days (SigV4 limit)")
        if self.max_attempts < 1 or self.client_retries < 0:
            raise ValueError("max_attempts must be >= 1 and client_retries >= 0")
        if min(self.connect_timeout_s, self.read_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if self.retry_base_delay_s < 0 or self.retry_max_delay_s < self.retry_base_delay_s:
            raise ValueError("need 0 <= retry_base_delay_s <= retry_max_delay_s")
        if not 5 * 2**20 <= self.part_size <= 5 * 2**30:
            raise ValueError("part_size must be between 5 MiB and 5 GiB")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> MinioConfig:
        """Read the configuration from environment variables.

        ==========================  =========  ===========================================
        ``MINIO_ENDPOINT``          required   ``host:port``; an ``http://``/``https://``
                                               prefix also sets ``MINIO_SECURE``
        ``MINIO_ACCESS_KEY``        required
        ``MINIO_SECRET_KEY``        required
        ``MINIO_BUCKET``            optional   default ``ace-step-outputs``
        ``MINIO_SECURE``            optional   TLS; default true (or the endpoint's scheme)
        ``MINIO_REGION``            optional   default: asked from the server
        ``MINIO_PUBLIC_ENDPOINT``   optional   host clients use for presigned URLs
        ``MINIO_URL_EXPIRY_SECONDS`` optional  presigned URL lifetime, default 86400
        ==========================  =========  ===========================================

        ``overrides`` set any field, these included (a configuration file
        naming the endpoint and bucket, say); a required variable is needed
        only when its field is not overridden.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        required = {"MINIO_ENDPOINT": "endpoint", "MINIO_ACCESS_KEY": "access_key", "MINIO_SECRET_KEY": "secret_key"}
        missing = [name for name, field in required.items() if get(name) is None and field not in overrides]
        if missing:
            raise ValueError(f"missing environment variable(s): {', '.join(missing)}")
        endpoint, scheme_secure = (
            _split_endpoint(get("MINIO_ENDPOINT"), "MINIO_ENDPOINT") if get("MINIO_ENDPOINT") else (None, None)
        )
        secure_env = get("MINIO_SECURE")
        secure = _parse_bool("MINIO_SECURE", secure_env) if secure_env is not None else None
        if secure is not None and scheme_secure is not None and secure != scheme_secure:
            raise ValueError("MINIO_SECURE contradicts the scheme of MINIO_ENDPOINT")
        kwargs: dict[str, Any] = {
            "endpoint": endpoint,
            "access_key": get("MINIO_ACCESS_KEY"),
            "secret_key": get("MINIO_SECRET_KEY"),
            "bucket": get("MINIO_BUCKET") or DEFAULT_BUCKET,
            "secure": next((s for s in (secure, scheme_secure) if s is not None), True),
            "region": get("MINIO_REGION"),
            "public_endpoint": get("MINIO_PUBLIC_ENDPOINT"),
        }
        expiry = get("MINIO_URL_EXPIRY_SECONDS")
        if expiry is not None:
            try:
                kwargs["url_expiry"] = timedelta(seconds=int(expiry))
            except ValueError:
                raise ValueError(f"MINIO_URL_EXPIRY_SECONDS must be an integer, got {expiry!r}") from None
        kwargs.update(overrides)
        return cls(**kwargs)


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


_TRANSIENT, _NOT_FOUND, _PERMANENT, _FOREIGN = "transient", "not_found", "permanent", "foreign"


def _status_transient(status: int | None) -> bool:
    return status is not None and (status >= 500 or status in (408, 429))


def _classify(exc: BaseException) -> str:
    if isinstance(exc, StorageError):
        return _FOREIGN  # already ours: pass through
    if isinstance(exc, S3Error):
        if exc.code in _NOT_FOUND_CODES:
            return _NOT_FOUND
        status = getattr(exc.response, "status", None)
        if exc.code in _TRANSIENT_CODES or _status_transient(status):
            return _TRANSIENT
        return _PERMANENT
    if isinstance(exc, ServerError):
        return _TRANSIENT if _status_transient(exc.status_code) else _PERMANENT
    if isinstance(exc, InvalidResponseError):  # non-XML answer, e.g. a proxy's 502 page
        return _TRANSIENT if _status_transient(getattr(exc, "_code", None)) else _PERMANENT
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(exc.reason, urllib3.exceptions.SSLError):
        return _PERMANENT
    if isinstance(exc, urllib3.exceptions.SSLError):
        return _PERMANENT
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return _TRANSIENT  # connection refused/reset, timeouts, protocol errors
    return _FOREIGN  # a bug (TypeError...) or minio's argument checks: not ours to wrap


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


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
                return fn()
            except Exception as exc:
                kind = _classify(exc)
                if kind == _FOREIGN:
                    raise
                if kind == _NOT_FOUND:
                    raise ObjectNotFoundError(key or "") from exc
                if kind == _PERMANENT:
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
                raise StorageError(f"bucket {bucket!r} does not exist on {self.config.endpoint} and creation is off")
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
                raise

        self._call("ensure bucket", bucket, op, attempts)
        self._bucket_ready = True

    def _ready(self) -> None:
        if not self._bucket_ready:
            self.ensure_bucket()

    # -------------------------------------------------------------- operations

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> None:
        validate_key(key)
        _check_metadata(metadata)
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
                metadata=dict(metadata) if metadata else None,
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

    def exists(self, key: str) -> bool:
        validate_key(key)
        self._ready()
        try:
            self._call("stat", key, lambda: self._client.stat_object(self.config.bucket, key))
        except ObjectNotFoundError:
            return False
        return True

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

    def url(self, key: str, expires: timedelta | None = None) -> str:
        """Presigned GET URL, signed for ``public_endpoint`` when one is set."""
        validate_key(key)
        expires = self.config.url_expiry if expires is None else expires
        if not timedelta(seconds=1) <= expires <= timedelta(days=7):
            raise ValueError("expires must be between 1 second and 7 days")
        presigner = self._get_presigner()
        return self._call(
            "presign", key, lambda: presigner.presigned_get_object(self.config.bucket, key, expires=expires)
        )

    def check(self) -> None:
        """Health: one attempt to reach the bucket (creating it if allowed)."""
        self.ensure_bucket(attempts=1)

    def close(self) -> None:
        self._http.clear()

    # ----------------------------------------------------------------- helpers

    def _get_presigner(self) -> Minio:
        if self._presigner is None:
            host, scheme_secure = _split_endpoint(self.config.public_endpoint or "", "public_endpoint")
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


def _check_metadata(metadata: Mapping[str, str] | None) -> None:
    """S3 user metadata travels as HTTP headers: ASCII names and printable ASCII values."""
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", k):
            raise ValueError(f"metadata name {k!r} must be letters, digits, '-' or '_'")
        if not isinstance(v, str) or not re.fullmatch(r"[\x20-\x7e]*", v):
            raise ValueError(f"metadata value for {k!r} must be printable ASCII")


# =================================================================== local store

# Errors of the disk itself, as opposed to a bad key or a file-vs-folder clash.
_UNAVAILABLE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOENT})


class LocalStore:
    """:class:`ObjectStore` on a local directory (single-machine default).

    Writes are atomic: data goes to a temporary file in the target's own
    directory (named ``.tmp-<random>``; keys cannot start a segment
    with ``.``, so temporaries are never addressable or listed), is fsynced,
    then ``os.replace``\\ d over the target. Readers see the old object or the
    new one, never a partial one, and a crash leaves at most a stray
    temporary. ``content_type`` and ``metadata`` are not stored; serve files
    with a type derived from the extension (see :meth:`path`).
    """

    def __init__(self, root: str | os.PathLike[str], url_prefix: str = "/outputs"):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        """Filesystem path of ``key`` (validated; always inside ``root``)."""
        validate_key(key)
        p = self.root.joinpath(*key.split("/"))
        # validate_key already rules out escapes; this also refuses a symlink
        # planted inside the root that points outside it.
        if not p.resolve().is_relative_to(self.root):
            raise ValueError("object key resolves outside the store root")
        return p

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> None:
        target = self.path(key)
        tmp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(target.parent)
        except OSError as exc:
            raise self._error("put", key, exc) from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def get(self, key: str) -> bytes:
        p = self.path(key)
        try:
            return p.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise self._error("get", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        p = self.path(key)
        try:
            if not p.is_dir():
                p.unlink(missing_ok=True)
        except NotADirectoryError:
            pass
        except OSError as exc:
            raise self._error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        # Walk only below the deepest folder named by the prefix.
        folder = prefix.rpartition("/")[0]
        start = self.root
        if folder:
            try:
                start = self.path(folder)
            except ValueError:
                return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # temporaries (and anything else unaddressable)
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def url(self, key: str, expires: timedelta | None = None) -> str:
        """``{url_prefix}/{key}`` (percent-encoded); ``expires`` does not apply."""
        validate_key(key)
        return f"{self.url_prefix}/{quote(key, safe='/')}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailableError(f"output directory {self.root} does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailableError(f"output directory {self.root} is not writable")

    def _error(self, op: str, key: str, exc: OSError) -> StorageError:
        cls = StorageUnavailableError if exc.errno in _UNAVAILABLE_ERRNOS else StorageError
        return cls(f"{op} {key!r} in {self.root} failed: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
