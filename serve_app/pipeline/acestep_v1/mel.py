"""Audio -> log-mel analysis of ACE-Step v1, the input side of the DCAE encoder.

The official vocoder file carries the analysis buffers (a Hann window and a
Slaney-normalised mel filter bank, ``vocoder.ENCODE_ONLY_KEYS``); this module
applies them the way upstream's encoder input is computed: reflect padding of
``(win - hop) / 2`` on each side instead of a centred STFT, magnitude with a
small floor inside the square root, mel projection, natural log clamped at
1e-5. Each channel of a stereo waveform gives one 128-bin mel image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .vocoder import ENCODE_ONLY_KEYS, VocoderConfig, encode_only_buffers

MAGNITUDE_FLOOR = 1e-6
LOG_FLOOR = 1e-5


class LogMelAnalyzer(nn.Module):
    """Waveform ``(channels, samples)`` at 44.1 kHz -> log-mel ``(channels, n_mels, frames)``."""

    def __init__(self, config: VocoderConfig, buffers: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        buffers = buffers or encode_only_buffers(config)
        window_key, filter_bank_key = ENCODE_ONLY_KEYS
        self.n_fft = config.n_fft
        self.win_length = config.win_length
        self.hop_length = config.hop_length
        self.register_buffer("window", buffers[window_key].float().clone(), persistent=False)
        self.register_buffer("filter_bank", buffers[filter_bank_key].float().clone(), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        excess = self.win_length - self.hop_length
        padded = nn.functional.pad(waveform.float().unsqueeze(1), (excess // 2, (excess + 1) // 2), mode="reflect")
        spectrum = torch.stft(
            padded.squeeze(1),
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.float(),
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(torch.view_as_real(spectrum).pow(2).sum(-1) + MAGNITUDE_FLOOR)
        mel = torch.matmul(magnitude.transpose(-1, -2), self.filter_bank.float()).transpose(-1, -2)
        return torch.log(torch.clamp(mel, min=LOG_FLOOR))
