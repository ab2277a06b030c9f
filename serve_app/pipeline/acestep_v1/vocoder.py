"""Mel-to-waveform vocoder of ACE-Step v1, state-dict compatible with the official `music_vocoder/`
folder (upstream's `ADaMoSHiFiGANV1`, a diffusers model: `config.json` + `diffusion_pytorch_model.safetensors`).

The network is a ConvNeXt backbone over the 128-bin log-mel frames followed by a HiFi-GAN
generator that upsamples by `hop_length` (512) to 44.1 kHz mono:

    backbone: stem Conv1d(k=7, replicate padding) + LayerNorm, then per stage a LayerNorm and a
              1x1 Conv1d between widths, ConvNeXt blocks, final LayerNorm
    head:     conv_pre, per upsampling stage SiLU -> ConvTranspose1d -> mean of the multi-kernel
              residual blocks, then SiLU -> conv_post -> tanh

Only decoding is implemented. Upstream wraps the head's convolutions in PyTorch's legacy weight
norm and loads the file through diffusers, which matches tensor names exactly, so the file stores
each of them as `weight_g` (magnitude per slice of dim 0, shape `(dim0, 1, 1)`) and `weight_v`
(direction). The convolutions here own parameters
with exactly those names and rebuild the weight as `v * (g / ||v||)` on every call, which is the
legacy module's forward without its deprecated hook machinery. Copies of the weights re-saved
through `torch.nn.utils.parametrizations.weight_norm` name the same tensors
`parametrizations.weight.original0/1`; `checkpoint_to_state_dict` maps those back.

The official file also stores two buffers of upstream's audio-to-mel transform
(`ENCODE_ONLY_KEYS`), which decoding never uses: `checkpoint_to_state_dict` drops them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

CLASS_NAME = "ADaMoSHiFiGANV1"
"""`_class_name` of the official `music_vocoder/config.json`."""

ENCODE_ONLY_KEYS = ("mel_transform.spectrogram.window", "mel_transform.mel_scale.fb")
"""Buffers of the audio-to-mel transform that the official checkpoint stores and decoding ignores."""

_LEGACY_NORM_NAMES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
_LAYER_NORM_EPS = 1e-6
_CONVNEXT_MLP_RATIO = 4
_STEM_KERNEL_SIZE = 7


@dataclass(frozen=True)
class VocoderConfig:
    """The fields of the official `config.json`; the defaults are the official values."""

    input_channels: int = 128
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (128, 256, 384, 512)
    drop_path_rate: float = 0.0
    kernel_sizes: tuple[int, ...] = (7,)
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 13)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_mels: int = 512
    upsample_initial_channel: int = 1024
    use_template: bool = False
    pre_conv_kernel_size: int = 13
    post_conv_kernel_size: int = 13
    sampling_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    f_min: int = 40
    f_max: int = 16000
    n_mels: int = 128

    def __post_init__(self) -> None:
        problems = []
        if len(self.depths) != len(self.dims):
            problems.append(f"depths {self.depths} and dims {self.dims} differ in length")
        if len(self.kernel_sizes) != 1:
            problems.append(f"kernel_sizes {self.kernel_sizes}: only one ConvNeXt kernel size is supported")
        if self.use_template:
            problems.append("use_template: the noise-template input is not supported (the official model has none)")
        if self.num_mels != self.dims[-1]:
            problems.append(f"num_mels {self.num_mels} must equal the backbone width dims[-1] {self.dims[-1]}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            problems.append("upsample_rates and upsample_kernel_sizes differ in length")
        if math.prod(self.upsample_rates) != self.hop_length:
            problems.append(
                f"upsample_rates multiply to {math.prod(self.upsample_rates)}, not hop_length {self.hop_length}"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if any(len(dilations) != 3 for dilations in self.resblock_dilation_sizes):
            problems.append("each residual block takes exactly 3 dilations")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            problems.append("upsample_initial_channel must halve once per upsampling stage")
        if problems:
            raise ValueError("invalid vocoder config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> VocoderConfig:
        """From a `config.json` mapping; keys starting with `_` (class name, diffusers version) are ignored."""
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in config.items() if not key.startswith("_")}
        unknown = sorted(values.keys() - known)
        if unknown:
            raise ValueError(f"unknown vocoder config fields: {unknown}")
        return cls(**{key: _freeze(value) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, lists where the official file has lists."""
        return {key: _thaw(value) for key, value in asdict(self).items()}


def _freeze(value: Any) -> Any:
    return tuple(_freeze(item) for item in value) if isinstance(value, (list, tuple)) else value


def _thaw(value: Any) -> Any:
    return [_thaw(item) for item in value] if isinstance(value, tuple) else value


def checkpoint_to_state_dict(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official file's tensors as `HiFiGANVocoder` parameters: encode-only buffers dropped,
    parametrization-style weight-norm names mapped to `weight_g` / `weight_v`."""
    state = {}
    for key, tensor in checkpoint.items():
        if key in ENCODE_ONLY_KEYS:
            continue
        for new_style, legacy in _LEGACY_NORM_NAMES.items():
            if key.endswith("." + new_style):
                key = key[: -len(new_style)] + legacy
                break
        state[key] = tensor
    return state


def encode_only_buffers(config: VocoderConfig) -> dict[str, Tensor]:
    """The audio-to-mel buffers the official file carries (Hann window, Slaney mel filter bank)."""
    filter_bank = torchaudio.functional.melscale_fbanks(
        n_freqs=config.n_fft // 2 + 1,
        f_min=float(config.f_min),
        f_max=float(config.f_max),
        n_mels=config.n_mels,
        sample_rate=config.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return {ENCODE_ONLY_KEYS[0]: torch.hann_window(config.win_length), ENCODE_ONLY_KEYS[1]: filter_bank}


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def _weight_from_norm(weight_g: Tensor, weight_v: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(weight_v, dim=tuple(range(1, weight_v.ndim)), keepdim=True)
    return weight_v * (weight_g / norm)


def _split_weight(module: nn.Module) -> None:
    """Replace `module.weight` by a direction `weight_v` and a magnitude `weight_g` per slice of dim 0.

    The magnitude starts at sqrt(2), a gain that carries the signal through the SiLU stacks of a
    random model (so its audio depends on its input); trained weights are loaded over it.
    """
    weight = module.weight.detach()
    del module.weight
    module.weight_v = nn.Parameter(weight.clone())
    module.weight_g = nn.Parameter(torch.full((weight.shape[0],) + (1,) * (weight.ndim - 1), math.sqrt(2.0)))


class WeightNormConv1d(nn.Conv1d):
    """`Conv1d` whose weight is stored as magnitude `weight_g` and direction `weight_v`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _split_weight(self)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, _weight_from_norm(self.weight_g, self.weight_v), self.bias)


class WeightNormConvTranspose1d(nn.ConvTranspose1d):
    """`ConvTranspose1d` whose weight is stored as `weight_g` (per input channel) and `weight_v`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _split_weight(self)

    def forward(self, x: Tensor) -> Tensor:
        weight = _weight_from_norm(self.weight_g, self.weight_v)
        return F.conv_transpose1d(
            x, weight, self.bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of `(batch, channels, time)`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        normalized = F.layer_norm(x.transpose(1, 2), self.weight.shape, self.weight, self.bias, _LAYER_NORM_EPS)
        return normalized.transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise MLP (GELU) -> layer scale, added to the input."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=_same_padding(kernel_size), groups=dim)
        self.norm = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, _CONVNEXT_MLP_RATIO * dim)
        self.pwconv2 = nn.Linear(_CONVNEXT_MLP_RATIO * dim, dim)
        # Unit layer scale (the trained value is loaded over it) lets every block of a random model shape the output.
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        dims = config.dims
        stem = nn.Sequential(
            nn.Conv1d(
                config.input_channels,
                dims[0],
                _STEM_KERNEL_SIZE,
                padding=_same_padding(_STEM_KERNEL_SIZE),
                padding_mode="replicate",
            ),
            ChannelsFirstLayerNorm(dims[0]),
        )
        transitions = [
            nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], 1))
            for i in range(len(dims) - 1)
        ]
        self.channel_layers = nn.ModuleList([stem, *transitions])
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, config.kernel_sizes[0]) for _ in range(depth)))
            for dim, depth in zip(dims, config.depths)
        )
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def forward(self, mel: Tensor) -> Tensor:
        x = mel
        for channel_layer, stage in zip(self.channel_layers, self.stages):
            x = stage(channel_layer(x))
        return self.norm(x)


class ResidualStack(nn.Module):
    """HiFi-GAN residual block: per dilation, SiLU -> dilated conv -> SiLU -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size)) for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.silu(dilated(F.silu(x))))
        return x


class HiFiGANHead(nn.Module):
    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        width = config.upsample_initial_channel
        self.conv_pre = WeightNormConv1d(
            config.num_mels, width, config.pre_conv_kernel_size, padding=_same_padding(config.pre_conv_kernel_size)
        )
        self.ups = nn.ModuleList(
            WeightNormConvTranspose1d(width >> i, width >> (i + 1), kernel, rate, padding=(kernel - rate) // 2)
            for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        # Flat list, stage-major: stage i owns resblocks[i * kernels : (i + 1) * kernels].
        self.resblocks = nn.ModuleList(
            ResidualStack(width >> (i + 1), kernel, dilations)
            for i in range(len(self.ups))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        self.kernels_per_stage = len(config.resblock_kernel_sizes)
        self.conv_post = WeightNormConv1d(
            width >> len(self.ups), 1, config.post_conv_kernel_size, padding=_same_padding(config.post_conv_kernel_size)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        for stage, upsample in enumerate(self.ups):
            x = upsample(F.silu(x))
            first = stage * self.kernels_per_stage
            stacks = self.resblocks[first : first + self.kernels_per_stage]
            x = sum(stack(x) for stack in stacks) / self.kernels_per_stage
        return torch.tanh(self.conv_post(F.silu(x)))


class HiFiGANVocoder(nn.Module):
    """Log-mel `(batch, n_mels, frames)` -> waveform `(batch, 1, frames * hop_length)` at `sampling_rate`."""

    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ConvNeXtBackbone(config)
        self.head = HiFiGANHead(config)

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(self.backbone(mel))
