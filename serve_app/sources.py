"""Source audio for the audio-in tasks: uploads, lookup by key, checks and decoding.

A source is always an object of the store, never a server path: a previous
output (its key) or an upload (stored under ``UPLOADS_PREFIX``). The ingress
``probe``s a source while planning (size, readable, not empty, channels,
length), reading only the file's header after fetching it, so a bad source is
a 422 naming ``source``; the generator ``load``s it on its I/O pool (decode,
stereo, resample to the model's rate), never on the GPU thread.
"""

from __future__ import annotations

import io
import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import soundfile as sf

from .storage import ObjectNotFoundError, ObjectStore

if TYPE_CHECKING:
    import torch

UPLOADS_PREFIX = "uploads"
MAX_SOURCE_BYTES = 64 * 1024 * 1024
"""Largest source file (upload or output) accepted: a 240 s stereo 48 kHz 24-bit wav is about 69 MB... as
flac or mp3 far less; uncompressed float wav of that length does not fit and is refused."""
UPLOAD_CONTENT_TYPES = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "ogg",
    "application/ogg": "ogg",
}
RESERVED_PREFIXES = ("jobs",)


class SourceError(ValueError):
    """A source that cannot be used; the message is for the client (field ``source``)."""


@dataclass(frozen=True)
class SourceInfo:
    key: str
    sample_rate: int
    frames: int
    channels: int

    def samples_at(self, rate: int) -> int:
        """Samples after resampling to ``rate`` (the resampler's output length)."""
        return math.ceil(self.frames * rate / self.sample_rate)


class SourceLibrary:
    def __init__(self, store: ObjectStore, max_bytes: int = MAX_SOURCE_BYTES) -> None:
        self.store = store
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ uploads

    def upload(self, data: bytes, content_type: str) -> SourceInfo:
        """Check and store an upload under ``uploads/``; its key is then a usable source."""
        if len(data) > self.max_bytes:
            raise SourceError(f"the file has {len(data)} bytes; the limit is {self.max_bytes}")
        extension = UPLOAD_CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
        if extension is None:
            known = ", ".join(sorted(UPLOAD_CONTENT_TYPES))
            raise SourceError(f"content type {content_type!r} is not an audio type we decode ({known})")
        key = f"{UPLOADS_PREFIX}/{secrets.token_hex(16)}.{extension}"
        info = self._info(key, data)
        self.store.put(key, data, content_type)
        return info

    # ------------------------------------------------------------------ reading

    def probe(self, key: str) -> SourceInfo:
        return self._info(key, self._fetch(key))

    def load(self, key: str, sample_rate: int) -> torch.Tensor:
        """Float32 ``(2, samples)`` at ``sample_rate``: mono is duplicated, as upstream does."""
        import numpy as np
        import torch

        from .audio import resample

        data = self._fetch(key)
        info = self._info(key, data)
        frames, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        waveform = torch.from_numpy(np.ascontiguousarray(frames.T))
        if waveform.shape[0] == 1:
            waveform = waveform.repeat(2, 1)
        return resample(waveform, info.sample_rate if rate == info.sample_rate else rate, sample_rate).contiguous()

    def _fetch(self, key: str) -> bytes:
        if not key or key.split("/", 1)[0] in RESERVED_PREFIXES or key.endswith(".json"):
            raise SourceError(f"{key!r} is not an audio object of this service")
        try:
            data = self.store.get(key)
        except (ObjectNotFoundError, ValueError):
            raise SourceError(f"no object at {key!r}") from None
        if len(data) > self.max_bytes:
            raise SourceError(f"the file has {len(data)} bytes; the limit is {self.max_bytes}")
        return data

    @staticmethod
    def _info(key: str, data: bytes) -> SourceInfo:
        try:
            header = sf.info(io.BytesIO(data))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise SourceError(f"cannot read {key!r} as wav, flac, mp3 or ogg audio ({exc})") from None
        if header.frames <= 0 or header.samplerate <= 0:
            raise SourceError(f"{key!r} holds no audio")
        if header.channels > 2:
            raise SourceError(f"{key!r} has {header.channels} channels; mono or stereo only")
        return SourceInfo(key=key, sample_rate=header.samplerate, frames=header.frames, channels=header.channels)
