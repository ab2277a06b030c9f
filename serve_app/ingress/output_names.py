"""The rules for a client-chosen output name (``output_name``, legacy ``output_path``).

The name is an object name or prefix *inside the bucket*, relative to the
server's prefix, never a filesystem path: ``"track"``, ``"albums/summer/track"``
or, with a trailing ``/``, folders only (``"albums/summer/"``). The planner
applies these rules before anything is generated; the generator turns the
validated name into folders and a stem for ``storage.build_output_key``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from ..audio import AUDIO_FORMATS
from ..pipeline.invalid_field import InvalidField
from ..storage.keys import invisible_char

MAX_OUTPUT_NAME_CHARS: Final = 200
MAX_OUTPUT_NAME_SEGMENT_CHARS: Final = 100
MAX_OUTPUT_NAME_DEPTH: Final = 8

# Characters a client may use in an output name: letters and digits of any
# script, space, and - _ . ( ) + , = @ . Everything else (URL-special % # ? &,
# Windows-reserved : * " < > |, quotes, ...) is refused.
_NAME_CHAR_RE: Final = re.compile(r"[\w \-.()+,=@]")
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")


def validate_output_name(name: str) -> str:
    """Validate a client-chosen output name and return it NFC-normalised.

    Raises ``InvalidField`` with the reason.
    """
    if not isinstance(name, str):
        raise InvalidField("output_name", f"must be a string, got {type(name).__name__}")
    bad = invisible_char(name)
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
