"""Waveform → audio file bytes (wav / flac / mp3 / ogg) with soundfile.

Everything is encoded in memory (``io.BytesIO``); nothing here touches the
filesystem. libsndfile (bundled with soundfile >= 0.13, here 1.2.2) writes all
four formats, MP3 through LAME and Ogg Vorbis through libvorbis.

Encodings
---------
- ``wav``:  16-bit signed PCM. The format every player and DAW opens; 24-bit
  WAV would be 1.5x larger uncompressed for no audible gain on delivery.
- ``flac``: 24-bit PCM. FLAC is what a user picks to keep the model's output
  for further production (mixing, mastering), so it keeps the float output to
  within 2**-23 (quantisation noise ~ -144 dBFS) instead of 16-bit's -96 dBFS;
  it is still lossless-compressed, so the cost is only on disk.
- ``mp3``:  MPEG Layer III, constant bitrate (CBR), ``mp3_bitrate_kbps``
  (default 192). libsndfile has no "set bitrate" command: in CBR mode it maps
  ``compression_level`` c linearly onto ``320 - c*(320-32)`` kbps (MPEG-1,
  rates >= 32 kHz), ``160 - c*152`` (MPEG-2, 16-24 kHz) or ``64 - c*56``
  (MPEG-2.5, 8-12 kHz) and LAME snaps to the nearest legal rate, so we invert
  that map for the requested legal bitrate (the tests read the frame headers
  back and check the exact bitrate). CBR keeps the size predictable
  (``kbps * seconds / 8``) and the requested number honest. The LAME/Info
  header is written (our buffer is seekable), so gapless decoders (libsndfile's
  mpg123, ffmpeg) return exactly the encoded sample count; the few lowest
  bitrates per rate whose first frame cannot hold that header (e.g. < 64 kbps
  at 48 kHz) are rejected rather than silently padded.
- ``ogg``:  Ogg Vorbis, VBR, ``ogg_quality`` in [0, 1] (Vorbis -q 0..10;
  default 0.5, about 160 kbps for stereo 48 kHz). libsndfile's compression
  level is ``1 - quality``.

Input is clipped to [-1, 1] before encoding (libsndfile's own clipping is on
too), and non-finite samples are rejected instead of being written as noise.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import numpy as np
import soundfile as sf

if TYPE_CHECKING:  # torch is optional for callers passing numpy arrays
    import torch

AudioFormat = Literal["wav", "flac", "mp3", "ogg"]
AUDIO_FORMATS: Final[tuple[str, ...]] = get_args(AudioFormat)

_CONTENT_TYPES: Final[dict[str, str]] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
}

# (libsndfile container, subtype) per format.
_SF_FORMAT: Final[dict[str, tuple[str, str]]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_24"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
}

DEFAULT_MP3_BITRATE_KBPS: Final = 192
DEFAULT_OGG_QUALITY: Final = 0.5

# Legal MPEG audio sample rates and the CBR bitrates each MPEG version allows.
_MPEG1_RATES: Final = (32000, 44100, 48000)
_MPEG2_RATES: Final = (16000, 22050, 24000)
_MPEG25_RATES: Final = (8000, 11025, 12000)
MP3_SAMPLE_RATES: Final[tuple[int, ...]] = _MPEG25_RATES + _MPEG2_RATES + _MPEG1_RATES
_MPEG1_BITRATES: Final = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_BITRATES: Final = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MPEG25_BITRATES: Final = (8, 16, 24, 32, 40, 48, 56, 64)

# FLAC's format allows up to 8 channels; MP3 is mono or stereo.
_MAX_CHANNELS: Final[dict[str, int]] = {"wav": 64, "flac": 8, "mp3": 2, "ogg": 255}


def content_type(fmt: str) -> str:
    """MIME type of an encoded format (``ValueError`` for an unknown one)."""
    try:
        return _CONTENT_TYPES[fmt]
    except KeyError:
        raise ValueError(_unknown_format(fmt)) from None


def file_extension(fmt: str) -> str:
    """File extension (no dot) of a format; equal to the format name."""
    content_type(fmt)  # validates
    return fmt


def mp3_bitrates(sample_rate: int, channels: int = 2) -> tuple[int, ...]:
    """CBR bitrates (kbps) we accept for MP3 at ``sample_rate`` with ``channels``.

    These are the MPEG legal rates minus the lowest ones whose first frame is
    too small to carry LAME's Info/LAME tag (see :func:`_mp3_gapless`).
    """
    return tuple(k for k in _mpeg_bitrates(sample_rate) if _mp3_gapless(sample_rate, channels, k))


def resolve_mp3_bitrate(sample_rate: int, kbps: int | None = None, channels: int = 2) -> int:
    """The CBR bitrate an mp3 at ``sample_rate`` is written with.

    ``kbps`` when it is valid there (``ValueError`` naming the valid ones
    otherwise); when ``None``, the default 192 kbps or, at the MPEG-2 rates
    (16-24 kHz) whose bitrates stop at 160, the highest valid rate below it.
    """
    valid = mp3_bitrates(sample_rate, channels)
    if kbps is None:
        return max(rate for rate in valid if rate <= DEFAULT_MP3_BITRATE_KBPS)
    if kbps not in valid:
        raise ValueError(
            f"{kbps} kbps is not a valid mp3 bitrate at {sample_rate} Hz; choose one of {', '.join(map(str, valid))}"
        )
    return kbps


def _mpeg_bitrates(sample_rate: int) -> tuple[int, ...]:
    if sample_rate in _MPEG1_RATES:
        return _MPEG1_BITRATES
    if sample_rate in _MPEG2_RATES:
        return _MPEG2_BITRATES
    if sample_rate in _MPEG25_RATES:
        return _MPEG25_BITRATES
    raise ValueError(
        f"mp3 does not support a sample rate of {sample_rate} Hz; supported: {', '.join(map(str, MP3_SAMPLE_RATES))}"
    )


def _mp3_gapless(sample_rate: int, channels: int, kbps: int) -> bool:
    """Whether LAME can write its gapless Info/LAME tag at this bitrate.

    LAME puts the tag (encoder delay and padding, which decoders use to return
    exactly the encoded samples) into the first frame, sized for the stream's
    bitrate. When that frame is smaller than header + side info + 156 bytes the
    tag is silently dropped, and decoders return ~1100-2200 extra samples with
    the audio shifted in time. Measured with libsndfile 1.2.2 for every rate,
    bitrate and mono/stereo; this formula matches all of them.
    """
    mpeg1 = sample_rate in _MPEG1_RATES
    frame_bytes = (144 if mpeg1 else 72) * kbps * 1000 // sample_rate
    side_info = (32 if channels == 2 else 17) if mpeg1 else (17 if channels == 2 else 9)
    return frame_bytes >= 4 + side_info + 156


def encode_audio(
    waveform: np.ndarray | torch.Tensor,
    sample_rate: int,
    fmt: AudioFormat,
    *,
    mp3_bitrate_kbps: int | None = None,
    ogg_quality: float | None = None,
) -> bytes:
    """Encode a float waveform shaped ``(channels, samples)`` (or 1-D mono).

    ``waveform`` may be a numpy array or a torch tensor on any device/dtype.
    ``mp3_bitrate_kbps`` (mp3 only) must be a legal CBR rate for the sample
    rate (see :func:`mp3_bitrates`); ``ogg_quality`` (ogg only) is in [0, 1].
    Raises ``ValueError`` for an unknown format, an option that does not
    belong to the format, an unsupported sample rate / bitrate / channel
    count, an empty or non-finite waveform.
    """
    if fmt not in _SF_FORMAT:
        raise ValueError(_unknown_format(fmt))
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if mp3_bitrate_kbps is not None and fmt != "mp3":
        raise ValueError(f"mp3_bitrate_kbps applies to mp3 only, not {fmt}")
    if ogg_quality is not None and fmt != "ogg":
        raise ValueError(f"ogg_quality applies to ogg only, not {fmt}")

    frames = _to_frames(waveform)  # (samples, channels) float32, clipped
    channels = frames.shape[1]
    if channels > _MAX_CHANNELS[fmt]:
        raise ValueError(f"{fmt} supports at most {_MAX_CHANNELS[fmt]} channels, got {channels}")

    container, subtype = _SF_FORMAT[fmt]
    options: dict[str, Any] = {}
    if fmt == "mp3":
        kbps = DEFAULT_MP3_BITRATE_KBPS if mp3_bitrate_kbps is None else mp3_bitrate_kbps
        options = {"compression_level": _mp3_compression_level(sample_rate, channels, kbps), "bitrate_mode": "CONSTANT"}
    elif fmt == "ogg":
        quality = DEFAULT_OGG_QUALITY if ogg_quality is None else ogg_quality
        if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0.0 <= quality <= 1.0:
            raise ValueError(f"ogg_quality must be a number in [0, 1], got {ogg_quality!r}")
        options = {"compression_level": 1.0 - float(quality)}

    buf = io.BytesIO()
    try:
        sf.write(buf, frames, sample_rate, format=container, subtype=subtype, **options)
    except (sf.LibsndfileError, RuntimeError) as exc:  # e.g. a rate libvorbis has no mode for
        raise ValueError(f"cannot encode {fmt} at {sample_rate} Hz with {channels} channel(s): {exc}") from exc
    return buf.getvalue()


def resample(waveform: np.ndarray | torch.Tensor, from_sr: int, to_sr: int) -> np.ndarray | torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's sinc resampler).

    Returns the input unchanged when the rates are equal; numpy in → numpy out.
    """
    if from_sr <= 0 or to_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {from_sr} → {to_sr}")
    if from_sr == to_sr:
        return waveform
    import torch
    import torchaudio.functional as F

    if isinstance(waveform, torch.Tensor):
        return F.resample(waveform, int(from_sr), int(to_sr))
    out = F.resample(torch.from_numpy(np.asarray(waveform, dtype=np.float32)), int(from_sr), int(to_sr))
    return out.numpy()


# --------------------------------------------------------------------------- helpers


def _unknown_format(fmt: object) -> str:
    return f"unknown audio format {fmt!r}; supported: {', '.join(AUDIO_FORMATS)}"


def _to_frames(waveform: Any) -> np.ndarray:
    if hasattr(waveform, "detach"):  # torch.Tensor, without importing torch here
        waveform = waveform.detach().to("cpu").float().numpy()
    arr = np.asarray(waveform)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"waveform must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"waveform must be shaped (channels, samples), got shape {tuple(arr.shape)}")
    channels, samples = arr.shape
    if channels < 1 or samples < 1:
        raise ValueError(f"waveform is empty: shape {tuple(arr.shape)}")
    if channels > 2 and channels > samples:
        # (samples, channels) passed by mistake would silently make thousands of channels.
        raise ValueError(
            f"waveform shape {tuple(arr.shape)} has more channels than samples; expected (channels, samples)"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("waveform contains NaN or infinite samples")
    return np.ascontiguousarray(np.clip(arr, -1.0, 1.0).T)


def _mp3_compression_level(sample_rate: int, channels: int, kbps: int) -> float:
    legal = _mpeg_bitrates(sample_rate)
    if isinstance(kbps, bool) or not isinstance(kbps, (int, np.integer)) or kbps not in legal:
        raise ValueError(
            f"mp3 bitrate {kbps!r} kbps is not valid at {sample_rate} Hz; "
            f"choose one of {', '.join(map(str, mp3_bitrates(sample_rate, channels)))}"
        )
    if not _mp3_gapless(sample_rate, channels, int(kbps)):
        raise ValueError(
            f"mp3 bitrate {kbps} kbps is too low at {sample_rate} Hz with {channels} channel(s): "
            f"the file could not carry its gapless header and would play with added silence; "
            f"choose one of {', '.join(map(str, mp3_bitrates(sample_rate, channels)))}"
        )
    lo, hi = legal[0], legal[-1]
    # Inverse of libsndfile's mpeg_l3_encoder_set_quality map (see module doc).
    # 1.0 itself is refused by soundfile (it sets the level before switching to
    # CBR, and 1.0 is out of range for LAME's VBR quality), hence the cap; the
    # result still truncates to the lowest rate.
    return min((hi - int(kbps)) / (hi - lo), 0.9999)
