"""Object keys: what a safe key is, the layout of output keys, and sidecar keys.

Keys are ``/``-separated object names that the *server* builds
(:func:`build_output_key`); a client contributes at most the folders and file
stem of a name it chose, which the ingress validated first
(``serve_app/ingress/output_names.py``). Whatever goes in, the result is
checked by :func:`validate_key`, so a key can never leave a LocalStore root.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

MAX_KEY_BYTES: Final = 1024  # S3's limit on object names
MAX_SEGMENT_BYTES: Final = 255  # NAME_MAX of common filesystems (LocalStore)
SIDECAR_SUFFIX: Final = ".json"

_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_EXT_RE: Final = re.compile(r"[a-z0-9]{1,10}")


def invisible_char(text: str) -> str | None:
    """First control / format / unassigned / private-use character, if any.

    Catches NUL, newlines, DEL, C1 controls, zero-width and bidi-override
    characters (which make a name display differently from what it is).
    """
    for ch in text:
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
    bad = invisible_char(key)
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


def build_output_key(
    prefix: str,
    request_id: str,
    seed: int,
    ext: str,
    *,
    folders: Sequence[str] = (),
    stem: str | None = None,
    when: datetime,
) -> str:
    """Build the object key of one generated output.

    Layout (``date`` is ``when`` in UTC, ``YYYY-MM-DD``)::

        no folders, no stem           {prefix}/{date}/{request_id}/{seed}.{ext}
        stem="track"                  {prefix}/{date}/{request_id}/track-{seed}.{ext}
        folders=["albums", "summer"]  {prefix}/albums/summer/{date}/{request_id}/{seed}.{ext}

    The client's folders come first so that everything a client filed under
    ``albums/summer/`` can be listed with that one prefix; the date and the
    request id always follow, so two requests never write the same key (a
    client re-sending the same request id overwrites its own earlier output).
    The file name a browser saves is the client's stem plus the seed. The same
    seed twice in one request yields the same key: callers must not repeat
    seeds. ``prefix`` is the server's own prefix ("" for none).
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
    filename = f"{stem}-{seed}.{ext}" if stem else f"{seed}.{ext}"
    key = "/".join([*([prefix] if prefix else []), *folders, date, request_id, filename])
    return validate_key(key)


def sidecar_key(key: str) -> str:
    """Key of the JSON sidecar of an output: ``key + ".json"``."""
    return key + SIDECAR_SUFFIX
