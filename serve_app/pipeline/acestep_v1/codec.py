"""ACE-Step v1 audio codec: DiT latents -> mel (DCAE decoder) -> 44.1 kHz waveform (vocoder) ->
48 kHz stereo, and the way back for source audio (`encode`: 48 kHz -> 44.1 kHz -> log-mel -> DCAE
encoder -> DiT latents).

Geometry (official `music_dcae_f8c8`, a diffusers `AutoencoderDC`): a stereo log-mel image
`(2, 128 bins, frames)` is compressed 8x in both axes to latents `(8, 16, frames / 8)`. One mel
frame is one vocoder hop of 512 samples at 44.1 kHz, so one latent frame covers 4096 samples
(`LATENT_FRAMES_PER_SECOND` = 44100 / 512 / 8). The vocoder renders each stereo channel as a
mono 128-bin mel.

Decoding one item, as upstream's `MusicDCAE` does:

1. un-scale the DiT latents: `z / SCALE_FACTOR + SHIFT_FACTOR`;
2. DCAE decoder -> mel in [-1, 1], mapped back to log-mel in [MEL_MIN, MEL_MAX];
3. vocoder, both channels as one batch of two;
4. resample 44.1 kHz -> 48 kHz (torchaudio's windowed-sinc defaults) and trim.

Outputs longer than `OVERLAP_DECODE_ABOVE_S` take upstream's overlapped decode (its
`decode_overlap`, which upstream uses above the same 48 s when asked to) so memory stays bounded
for 240 s: the DCAE runs on 512-latent-frame windows every 256 frames and keeps the middle half
of each (`dcae_windows`), the vocoder on 512-mel-frame blocks every 508 frames with a 128-sample
crossfade at each seam (`vocoder_blocks`). Shorter outputs are decoded in one pass, as upstream's
default `decode`.

Batch items are decoded one after another, so an item's audio never depends on its batch-mates
and peak memory is that of one item.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchaudio
from torch import Tensor, nn

from .mel import LogMelAnalyzer
from .vocoder import CLASS_NAME as VOCODER_CLASS_NAME
from .vocoder import ENCODE_ONLY_KEYS, HiFiGANVocoder, VocoderConfig, checkpoint_to_state_dict, encode_only_buffers

if TYPE_CHECKING:
    from diffusers import AutoencoderDC

DCAE_FOLDER = "music_dcae_f8c8"
VOCODER_FOLDER = "music_vocoder"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DCAE_CLASS_NAME = "AutoencoderDC"

LATENT_CHANNELS = 8
LATENT_HEIGHT = 16
MEL_BINS = 128
AUDIO_CHANNELS = 2
MEL_FRAMES_PER_LATENT_FRAME = 8
HOP_LENGTH = 512
VOCODER_SAMPLE_RATE = 44100
OUTPUT_SAMPLE_RATE = 48000
LATENT_FRAMES_PER_SECOND = VOCODER_SAMPLE_RATE / HOP_LENGTH / MEL_FRAMES_PER_LATENT_FRAME
SAMPLES_PER_LATENT_FRAME = HOP_LENGTH * MEL_FRAMES_PER_LATENT_FRAME
"""Vocoder samples (44.1 kHz) per latent frame."""

SCALE_FACTOR = 0.1786
SHIFT_FACTOR = -1.9091
MEL_MIN = -11.0
MEL_MAX = 3.0

OVERLAP_DECODE_ABOVE_S = 48.0
DCAE_WINDOW = 512
"""Latent frames per DCAE window of the overlapped decode."""
DCAE_TRIM = DCAE_WINDOW // 4
"""Latent frames dropped at each inner edge of a window (its decoder output sees no context there)."""
DCAE_HOP = DCAE_WINDOW // 2
VOCODER_BLOCK_FRAMES = 512
"""Mel frames per vocoder block of the overlapped decode."""
VOCODER_OVERLAP = 1024
"""Samples dropped at each inner edge of a vocoder block."""
VOCODER_HOP_FRAMES = (VOCODER_BLOCK_FRAMES * HOP_LENGTH - 2 * VOCODER_OVERLAP) // HOP_LENGTH
CROSSFADE = 128
"""Samples over which consecutive vocoder blocks are crossfaded."""

FULL_DCAE_CONFIG = {
    "in_channels": 2,
    "latent_channels": 8,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "encoder_block_out_channels": [128, 256, 512, 1024],
    "decoder_block_out_channels": [128, 256, 512, 1024],
    "encoder_layers_per_block": [2, 2, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [5], [5]],
    "upsample_block_type": "interpolate",
    "downsample_block_type": "Conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}
"""The official `music_dcae_f8c8/config.json` fields (written with diffusers 0.32.2; the later
`encoder_out_shortcut`, `decoder_in_shortcut`, `decoder_conv_act_fn` keep their defaults)."""

TINY_DCAE_CONFIG = {
    **FULL_DCAE_CONFIG,
    "attention_head_dim": 8,
    "encoder_block_out_channels": [8, 8, 16, 16],
    "decoder_block_out_channels": [8, 8, 16, 16],
    "encoder_layers_per_block": [1, 1, 1, 1],
    "decoder_layers_per_block": [1, 1, 1, 1],
}
"""The official block structure and latent geometry with small widths and one layer per block."""

FULL_VOCODER_CONFIG = VocoderConfig()
TINY_VOCODER_CONFIG = VocoderConfig(
    depths=(1, 1),
    dims=(16, 32),
    num_mels=32,
    upsample_rates=(8, 8, 8),
    upsample_kernel_sizes=(16, 16, 16),
    resblock_kernel_sizes=(3, 5),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
    upsample_initial_channel=32,
    pre_conv_kernel_size=7,
    post_conv_kernel_size=7,
)

_SIZES = {"tiny": (TINY_DCAE_CONFIG, TINY_VOCODER_CONFIG), "full": (FULL_DCAE_CONFIG, FULL_VOCODER_CONFIG)}
_RANDOM_SEED = 0


def max_num_samples(latent_frames: int) -> int:
    """Whole 48 kHz samples that `latent_frames` frames of latents cover."""
    return latent_frames * SAMPLES_PER_LATENT_FRAME * OUTPUT_SAMPLE_RATE // VOCODER_SAMPLE_RATE


def latent_frames_for(num_samples: int) -> int:
    """Fewest latent frames whose audio covers `num_samples` samples at 48 kHz.

    Upstream sizes its latents as `int(duration * LATENT_FRAMES_PER_SECOND)`, which rounds down
    and so renders up to one frame (~93 ms) less than asked; rounding up lets `decode` return
    exactly the requested length.
    """
    return math.ceil(num_samples * VOCODER_SAMPLE_RATE / (SAMPLES_PER_LATENT_FRAME * OUTPUT_SAMPLE_RATE))


def latent_frames(duration_s: float) -> int:
    """Latent frames for `duration_s` seconds, counted as `round(duration_s * 48000)` output samples."""
    return latent_frames_for(round(duration_s * OUTPUT_SAMPLE_RATE))


def latent_shape(duration_s: float) -> tuple[int, int, int]:
    """One item's latent shape `(channels, height, frames)`; the same for the tiny and full codecs."""
    return (LATENT_CHANNELS, LATENT_HEIGHT, latent_frames(duration_s))


def dcae_windows(num_frames: int) -> list[tuple[int, int, int, int]]:
    """The overlapped decode's DCAE windows over `num_frames` latent frames.

    Each entry is `(start, end, keep_start, keep_end)`: the decoder sees latent frames
    `[start, end)` and the mel of frames `[keep_start, keep_end)` is kept. Windows start every
    `DCAE_HOP` frames; all but the first drop `DCAE_TRIM` frames at their start and all but the
    last at their end, so the kept ranges tile `[0, num_frames)`.
    """
    starts = range(0, max(num_frames - 2 * DCAE_TRIM, 1), DCAE_HOP)
    windows = []
    for index, start in enumerate(starts):
        end = min(num_frames, start + DCAE_WINDOW)
        keep_start = start if index == 0 else start + DCAE_TRIM
        keep_end = end if index == len(starts) - 1 else end - DCAE_TRIM
        windows.append((start, end, keep_start, keep_end))
    return windows


def vocoder_blocks(num_mel_frames: int) -> list[int]:
    """First mel frame of each vocoder block of the overlapped decode (blocks are zero-padded to full length)."""
    return list(range(0, num_mel_frames, VOCODER_HOP_FRAMES))


class MusicCodec(nn.Module):
    """Latents `(batch, 8, 16, frames)` in the DiT's scaled space -> 48 kHz stereo waveforms."""

    output_sample_rate: int = OUTPUT_SAMPLE_RATE
    channels: int = AUDIO_CHANNELS

    def __init__(self, dcae: AutoencoderDC, vocoder: HiFiGANVocoder, analyzer: LogMelAnalyzer | None = None) -> None:
        super().__init__()
        _check_geometry(dcae.config, vocoder.config)
        self.dcae = dcae
        self.vocoder = vocoder
        self.analyzer = analyzer or LogMelAnalyzer(vocoder.config)

    @classmethod
    def from_pretrained(
        cls, checkpoint_dir: str | Path, *, device: torch.device | str, dtype: torch.dtype
    ) -> MusicCodec:
        """Load `checkpoint_dir/music_dcae_f8c8` and `checkpoint_dir/music_vocoder`, every tensor accounted for."""
        checkpoint_dir = Path(checkpoint_dir)
        dcae = _load_dcae(checkpoint_dir / DCAE_FOLDER)
        vocoder, analysis_buffers = _load_vocoder(checkpoint_dir / VOCODER_FOLDER)
        codec = cls(dcae, vocoder, LogMelAnalyzer(vocoder.config, analysis_buffers))
        return codec.to(device=device, dtype=dtype).eval()

    @property
    def device(self) -> torch.device:
        return self.vocoder.head.conv_pre.weight_v.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vocoder.head.conv_pre.weight_v.dtype

    @torch.inference_mode()
    def decode(self, latents: Tensor, num_samples: int) -> Tensor:
        """Float32 CPU waveforms `(batch, 2, num_samples)` at 48 kHz, one item at a time."""
        _check_decode_input(latents, num_samples)
        return torch.stack([self._decode_item(latent, num_samples) for latent in latents])

    @torch.inference_mode()
    def encode(self, waveform: Tensor) -> Tensor:
        """DiT latents `(1, 8, 16, frames)` of a float `(2, samples)` waveform at 48 kHz.

        As upstream: resample to 44.1 kHz, zero-pad to whole latent frames (so `frames` is
        `latent_frames_for(samples)`), log-mel per channel scaled to [-1, 1], DCAE encoder, then
        the DiT's shift and scale. The mel is computed in float32 whatever the codec's dtype.
        """
        if waveform.ndim != 2 or waveform.shape[0] != AUDIO_CHANNELS or waveform.shape[1] == 0:
            raise ValueError(f"expected a (2, samples>0) waveform, got {tuple(waveform.shape)}")
        wave = torchaudio.functional.resample(
            waveform.to(device=self.device, dtype=torch.float32), OUTPUT_SAMPLE_RATE, VOCODER_SAMPLE_RATE
        )
        wave = nn.functional.pad(wave, (0, -wave.shape[-1] % SAMPLES_PER_LATENT_FRAME))
        mel = self.analyzer(wave)
        image = ((mel - MEL_MIN) / (MEL_MAX - MEL_MIN) - 0.5) / 0.5
        latents = self.dcae.encoder(image.unsqueeze(0).to(self.dtype)).float()
        return (latents - SHIFT_FACTOR) * SCALE_FACTOR

    def _decode_item(self, latent: Tensor, num_samples: int) -> Tensor:
        z = latent.to(device=self.device, dtype=torch.float32) / SCALE_FACTOR + SHIFT_FACTOR
        z = z.to(self.dtype).unsqueeze(0)
        overlapped = num_samples > OVERLAP_DECODE_ABOVE_S * OUTPUT_SAMPLE_RATE
        mel = self._mel_overlapped(z) if overlapped else self.dcae.decoder(z)
        mel = (mel * 0.5 + 0.5) * (MEL_MAX - MEL_MIN) + MEL_MIN
        stereo_mel = mel[0]  # the two audio channels become the vocoder's batch
        wave = self._wave_overlapped(stereo_mel) if overlapped else self.vocoder(stereo_mel)[:, 0].float()
        wave = torchaudio.functional.resample(wave, VOCODER_SAMPLE_RATE, OUTPUT_SAMPLE_RATE)
        return wave[:, :num_samples].cpu()

    def _mel_overlapped(self, z: Tensor) -> Tensor:
        pieces = []
        stride = MEL_FRAMES_PER_LATENT_FRAME
        for start, end, keep_start, keep_end in dcae_windows(z.shape[-1]):
            mel = self.dcae.decoder(z[..., start:end])
            pieces.append(mel[..., (keep_start - start) * stride : (keep_end - start) * stride])
        return torch.cat(pieces, dim=-1)

    def _wave_overlapped(self, mel: Tensor) -> Tensor:
        """Float32 `(channels, samples)` from `(channels, bins, frames)`, block by block.

        Each block's kept samples go to their place in the output; across the
        `CROSSFADE` samples just before a block's kept start, the previous block's
        tail fades out while this block fades in.
        """
        starts = vocoder_blocks(mel.shape[-1])
        block_samples = VOCODER_BLOCK_FRAMES * HOP_LENGTH
        out = torch.empty(mel.shape[0], starts[-1] * HOP_LENGTH + block_samples, device=mel.device)
        fade_in = torch.linspace(0.0, 1.0, CROSSFADE, device=mel.device)
        fade_out = torch.linspace(1.0, 0.0, CROSSFADE, device=mel.device)
        for index, start in enumerate(starts):
            block = mel[..., start : start + VOCODER_BLOCK_FRAMES]
            block = nn.functional.pad(block, (0, VOCODER_BLOCK_FRAMES - block.shape[-1]))
            wave = self.vocoder(block)[:, 0].float()
            offset = start * HOP_LENGTH
            keep_from = 0 if index == 0 else VOCODER_OVERLAP
            keep_to = block_samples if index == len(starts) - 1 else block_samples - VOCODER_OVERLAP
            if index > 0:
                seam = slice(offset + VOCODER_OVERLAP - CROSSFADE, offset + VOCODER_OVERLAP)
                incoming = wave[:, VOCODER_OVERLAP - CROSSFADE : VOCODER_OVERLAP]
                out[:, seam] = out[:, seam] * fade_out + incoming * fade_in
            out[:, offset + keep_from : offset + keep_to] = wave[:, keep_from:keep_to]
        return out


def _check_geometry(dcae_config, vocoder_config: VocoderConfig) -> None:
    problems = []
    if dcae_config.in_channels != AUDIO_CHANNELS:
        problems.append(f"DCAE in_channels {dcae_config.in_channels}, expected {AUDIO_CHANNELS} (stereo mel)")
    if dcae_config.latent_channels != LATENT_CHANNELS:
        problems.append(f"DCAE latent_channels {dcae_config.latent_channels}, expected {LATENT_CHANNELS}")
    compression = 2 ** (len(dcae_config.decoder_block_out_channels) - 1)
    if compression != MEL_FRAMES_PER_LATENT_FRAME or MEL_BINS // compression != LATENT_HEIGHT:
        problems.append(f"DCAE compresses {compression}x, expected {MEL_FRAMES_PER_LATENT_FRAME}x")
    if vocoder_config.input_channels != MEL_BINS or vocoder_config.hop_length != HOP_LENGTH:
        problems.append(f"vocoder takes {vocoder_config.input_channels} bins at hop {vocoder_config.hop_length}")
    if vocoder_config.sampling_rate != VOCODER_SAMPLE_RATE:
        problems.append(f"vocoder sampling_rate {vocoder_config.sampling_rate}, expected {VOCODER_SAMPLE_RATE}")
    if problems:
        raise ValueError("not an ACE-Step v1 codec: " + "; ".join(problems))


def _check_decode_input(latents: Tensor, num_samples: int) -> None:
    expected = (LATENT_CHANNELS, LATENT_HEIGHT)
    if latents.ndim != 4 or tuple(latents.shape[1:3]) != expected or latents.shape[0] == 0 or latents.shape[3] == 0:
        raise ValueError(
            f"latents must be (batch>0, {expected[0]}, {expected[1]}, frames>0), got {tuple(latents.shape)}"
        )
    if not latents.is_floating_point():
        raise ValueError(f"latents must be floating point, got {latents.dtype}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    available = max_num_samples(latents.shape[3])
    if num_samples > available:
        raise ValueError(
            f"{latents.shape[3]} latent frames cover {available} samples at {OUTPUT_SAMPLE_RATE} Hz, "
            f"fewer than the {num_samples} asked; use latent_frames_for(num_samples) = {latent_frames_for(num_samples)}"
        )


# ---------------------------------------------------------------------------- checkpoint files


def is_complete_codec(checkpoint_dir: str | Path) -> bool:
    """Whether both codec folders hold a config and weights."""
    checkpoint_dir = Path(checkpoint_dir)
    return all(
        (checkpoint_dir / folder / CONFIG_NAME).is_file() and (checkpoint_dir / folder / WEIGHTS_NAME).is_file()
        for folder in (DCAE_FOLDER, VOCODER_FOLDER)
    )


def _read_folder(folder: Path, class_name: str) -> tuple[dict, dict[str, Tensor]]:
    from safetensors.torch import load_file

    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: the ACE-Step v1 codec needs {name} in {folder.name}/")
    config = json.loads((folder / CONFIG_NAME).read_text())
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ValueError(f"{folder / CONFIG_NAME} describes a {found}, expected {class_name}")
    return config, load_file(folder / WEIGHTS_NAME)


def _load_dcae(folder: Path) -> AutoencoderDC:
    from diffusers import AutoencoderDC

    config, weights = _read_folder(folder, DCAE_CLASS_NAME)
    with torch.device("meta"):
        dcae = AutoencoderDC.from_config(config)
    dcae.load_state_dict(weights, strict=True, assign=True)
    return dcae


def _load_vocoder(folder: Path) -> tuple[HiFiGANVocoder, dict[str, Tensor] | None]:
    """The vocoder and the file's audio-to-mel buffers (`None` when the file has none)."""
    config, weights = _read_folder(folder, VOCODER_CLASS_NAME)
    with torch.device("meta"):
        vocoder = HiFiGANVocoder(VocoderConfig.from_dict(config))
    vocoder.load_state_dict(checkpoint_to_state_dict(weights), strict=True, assign=True)
    buffers = {key: weights[key] for key in ENCODE_ONLY_KEYS if key in weights}
    return vocoder, buffers if len(buffers) == len(ENCODE_ONLY_KEYS) else None


def _build_modules(size: str) -> tuple[AutoencoderDC, HiFiGANVocoder]:
    from diffusers import AutoencoderDC

    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    dcae_config, vocoder_config = _SIZES[size]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        return AutoencoderDC(**dcae_config), HiFiGANVocoder(vocoder_config)


def build_random_codec(*, size: str, device: torch.device | str, dtype: torch.dtype) -> MusicCodec:
    """Random weights, no files: `size` "tiny" or "full" (the official architecture)."""
    dcae, vocoder = _build_modules(size)
    return MusicCodec(dcae, vocoder).to(device=device, dtype=dtype).eval()


def write_tiny_codec(checkpoint_dir: str | Path) -> None:
    """Write `music_dcae_f8c8/` and `music_vocoder/` with tiny random weights in the official layout.

    The vocoder file carries the official file's encode-only buffers too, so loading it goes
    through the same key handling as the real one. Callers that need the folders to appear
    atomically write into a staging directory and move it.
    """
    import diffusers
    from safetensors.torch import save_file

    checkpoint_dir = Path(checkpoint_dir)
    dcae, vocoder = _build_modules("tiny")
    dcae.save_pretrained(checkpoint_dir / DCAE_FOLDER, safe_serialization=True)
    folder = checkpoint_dir / VOCODER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {**vocoder.state_dict(), **encode_only_buffers(vocoder.config)}
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    config = {"_class_name": VOCODER_CLASS_NAME, "_diffusers_version": diffusers.__version__}
    config.update(vocoder.config.to_dict())
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
