"""Tests for serve_app.audio: every format decodes back with the right rate,
channel count and length; options change what they claim to change."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from serve_app.audio import (
    AUDIO_FORMATS,
    DEFAULT_MP3_BITRATE_KBPS,
    MP3_SAMPLE_RATES,
    content_type,
    encode_audio,
    mp3_bitrates,
    resample,
)

SR = 48000


def _tone(seconds: float = 0.5, sr: int = SR, channels: int = 2, noise: float = 0.0) -> np.ndarray:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    rows = [0.4 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)]
    x = np.stack(rows).astype(np.float32)
    if noise:
        x += noise * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    return x


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    y, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return y.T, sr  # back to (channels, samples)


# -- MP3 frame-header parsing (to check the bitrate actually written) --------

_BR = {3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)}
_BR[2] = _BR[0] = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_SR = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame_bitrates(b: bytes) -> list[int]:
    """Bitrate (kbps) of each consecutive MPEG audio frame from the first sync."""
    i = 0
    if b[:3] == b"ID3":
        i = 10 + ((b[6] << 21) | (b[7] << 14) | (b[8] << 7) | b[9])
    out: list[int] = []
    while i + 4 <= len(b):
        h = b[i : i + 4]
        ver, layer = (h[1] >> 3) & 3, (h[1] >> 1) & 3
        bi, si, pad = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
        ok = h[0] == 0xFF and (h[1] & 0xE0) == 0xE0 and ver != 1 and layer == 1 and bi not in (0, 15) and si != 3
        if not ok:
            if out:
                break  # end of the frame chain (ID3v1 trailer)
            i += 1
            continue
        br, sr = _BR[ver][bi], _SR[ver][si]
        out.append(br)
        i += (144 if ver == 3 else 72) * br * 1000 // sr + pad
    return out


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip_rate_channels_exact_length(fmt, channels):
    x = _tone(channels=channels)[:, : 24000 + 17]  # not a multiple of any codec frame
    y, sr = _decode(encode_audio(x, SR, fmt))
    assert sr == SR
    assert y.shape[0] == channels
    # Measured: libsndfile writes the LAME gapless header for mp3 and Ogg granule
    # positions for Vorbis, so even the lossy formats come back sample-exact.
    assert y.shape[1] == x.shape[1]


@pytest.mark.parametrize("fmt,tol", [("wav", 2 / 32768), ("flac", 2 / 2**23)])
def test_lossless_values_close(fmt, tol):
    x = _tone(noise=0.01)
    y, _ = _decode(encode_audio(x, SR, fmt))
    assert np.abs(y - x).max() <= tol


def test_wav_is_16bit_and_flac_24bit():
    x = _tone(0.05)
    assert sf.info(io.BytesIO(encode_audio(x, SR, "wav"))).subtype == "PCM_16"
    assert sf.info(io.BytesIO(encode_audio(x, SR, "flac"))).subtype == "PCM_24"


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
def test_lossy_formats_are_time_aligned_and_close(fmt):
    x = _tone(noise=0.0)
    y, _ = _decode(encode_audio(x, SR, fmt))
    core = slice(2000, -2000)
    lags = range(-8, 9)
    scores = [float(np.dot(y[0, core], np.roll(x[0], lag)[core])) for lag in lags]
    assert list(lags)[int(np.argmax(scores))] == 0  # no encoder delay left in the output
    assert np.sqrt(np.mean((y - x) ** 2)) < 0.02


def test_clipping_before_integer_encoding():
    x = np.array([[1.5, -1.5, 1.0, -1.0, 0.5, 0.0] * 10], dtype=np.float32)
    y, _ = sf.read(io.BytesIO(encode_audio(x, SR, "wav")), dtype="int16")
    assert y[:6].tolist() == [32767, -32768, 32767, -32768, 16384, 0]


def test_torch_tensor_input_any_dtype():
    x = torch.from_numpy(_tone(0.1)).to(torch.bfloat16)
    y, sr = _decode(encode_audio(x, SR, "flac"))
    assert sr == SR and y.shape == tuple(x.shape)
    assert np.abs(y - x.float().numpy()).max() < 1e-6


def test_mono_1d_input():
    y, _ = _decode(encode_audio(_tone(0.1, channels=1)[0], SR, "wav"))
    assert y.shape == (1, 4800)


# -- mp3 bitrate -----------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", MP3_SAMPLE_RATES)
def test_mp3_every_accepted_bitrate_is_exact_and_gapless(sr, channels):
    x = _tone(0.06, sr=sr, channels=channels)
    accepted = mp3_bitrates(sr, channels)
    assert len(accepted) >= 5 and accepted[-1] in (64, 160, 320)
    for kbps in accepted:
        data = encode_audio(x, sr, "mp3", mp3_bitrate_kbps=kbps)
        frames = _mp3_frame_bitrates(data)
        # every audio frame is CBR at the requested rate (the first is the Info frame)
        assert len(frames) > 2 and set(frames[1:]) == {kbps}, (kbps, frames)
        y, got_sr = _decode(data)
        assert (got_sr, y.shape) == (sr, x.shape), kbps


def test_mp3_bitrates_too_low_for_gapless_header_are_rejected():
    assert mp3_bitrates(48000, 2)[0] == 64 and mp3_bitrates(44100, 1)[0] == 56
    with pytest.raises(ValueError, match="too low at 48000 Hz.*choose one of 64, 80"):
        encode_audio(_tone(0.05), SR, "mp3", mp3_bitrate_kbps=56)


def test_mp3_default_bitrate():
    frames = _mp3_frame_bitrates(encode_audio(_tone(0.2), SR, "mp3"))
    assert set(frames[1:]) == {DEFAULT_MP3_BITRATE_KBPS}


def test_mp3_higher_bitrate_larger_file():
    x = _tone(1.0, noise=0.05)
    sizes = [len(encode_audio(x, SR, "mp3", mp3_bitrate_kbps=k)) for k in (64, 128, 320)]
    assert sizes[0] < sizes[1] < sizes[2]
    # CBR: size = kbps * seconds / 8 plus at most 3 frames (Info frame, encoder
    # delay and end padding); a 128 kbps frame at 48 kHz is 144*128000/48000 bytes.
    for kbps, size in zip((64, 128, 320), sizes):
        frame = 144 * kbps * 1000 // SR
        assert 0 <= size - kbps * 1000 / 8 <= 3 * frame, (kbps, size)


def test_ogg_quality_changes_size():
    x = _tone(1.0, noise=0.05)
    low, high = (len(encode_audio(x, SR, "ogg", ogg_quality=q)) for q in (0.1, 0.9))
    assert low < high


# -- rejections ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fmt="aac"), "unknown audio format 'aac'"),
        (dict(fmt="WAV"), "unknown audio format"),
        (dict(fmt="mp3", sample_rate=96000), "mp3 does not support a sample rate of 96000"),
        (dict(fmt="mp3", sample_rate=44000), "supported: 8000"),
        (dict(fmt="mp3", mp3_bitrate_kbps=100), "not valid at 48000 Hz"),
        (dict(fmt="mp3", mp3_bitrate_kbps=320, sample_rate=22050), "not valid at 22050 Hz"),
        (dict(fmt="mp3", mp3_bitrate_kbps=True), "not valid"),
        (dict(fmt="wav", mp3_bitrate_kbps=128), "mp3 only"),
        (dict(fmt="mp3", ogg_quality=0.5), "ogg only"),
        (dict(fmt="ogg", ogg_quality=1.5), r"ogg_quality must be a number in \[0, 1\]"),
        (dict(fmt="ogg", ogg_quality=-0.1), "ogg_quality"),
        (dict(fmt="wav", sample_rate=0), "sample_rate must be a positive integer"),
        (dict(fmt="wav", sample_rate=44100.0), "sample_rate must be a positive integer"),
    ],
)
def test_bad_options_raise(kwargs, match):
    kwargs = {"sample_rate": SR, **kwargs}
    with pytest.raises(ValueError, match=match):
        encode_audio(_tone(0.05), kwargs.pop("sample_rate"), kwargs.pop("fmt"), **kwargs)


def test_mp3_more_than_two_channels_rejected():
    with pytest.raises(ValueError, match="at most 2 channels"):
        encode_audio(_tone(0.05, channels=3), SR, "mp3")


@pytest.mark.parametrize(
    "wave,match",
    [
        (np.zeros((2, 0), np.float32), "empty"),
        (np.zeros((2, 2, 10), np.float32), "shaped"),
        (np.zeros((4800, 2), np.float32), "more channels than samples"),
        (np.array([[0.0, np.nan, 0.1]], np.float32), "NaN"),
        (np.array([[0.0, np.inf, 0.1]], np.float32), "infinite"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_waveforms_raise(wave, match):
    with pytest.raises(ValueError, match=match):
        encode_audio(wave, SR, "wav")


def test_content_types():
    assert [content_type(f) for f in AUDIO_FORMATS] == ["audio/wav", "audio/flac", "audio/mpeg", "audio/ogg"]
    with pytest.raises(ValueError, match="unknown audio format"):
        content_type("exe")


def test_resample():
    x = _tone(0.1)
    y = resample(x, 48000, 44100)
    assert isinstance(y, np.ndarray) and y.shape == (2, 4410)
    assert resample(x, SR, SR) is x
    t = torch.from_numpy(x)
    assert resample(t, 48000, 24000).shape == (2, 2400)
    with pytest.raises(ValueError):
        resample(x, 0, 44100)
