"""A simulated GPU model: the cost model's time, slept, instead of computing.

For scale tests and benchmarks only. It goes through the real planner,
sampler, batcher, engine, encoder and store; only its denoiser and decoder are
stand-ins that sleep for the seconds ``CostModel`` gives (sleeping releases
the GIL, so dozens of "GPUs" fit on a small CPU machine) and return
deterministic values: the same seed gives the same audio, of exactly the
requested length. It needs no checkpoint.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from .cost import CostModel, latent_frames
from .protocol import Branch
from .schedules import AceStepV1Schedule

SAMPLE_RATE = 16000
"""Low, so encoding hundreds of long songs stays cheap on the CPU."""


def is_complete_checkpoint(path: Path) -> bool:
    return True  # nothing to load


def load(path: Path, *, device: torch.device, dtype: torch.dtype, spec=None) -> SimulatedModel:
    scale = spec.relative_cost if spec is not None else 1.0
    return SimulatedModel(CostModel(scale=scale), dtype=dtype)


class SimulatedModel:
    family = "simulated"
    sample_rate = SAMPLE_RATE
    channels = 1
    device = torch.device("cpu")
    guidance_norm_dims = (-1,)
    supported_erg = frozenset({"tag", "lyric", "diffusion"})

    def __init__(
        self, cost: CostModel, dtype: torch.dtype = torch.float32, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.cost = cost
        self.dtype = dtype
        self.noise_schedule = AceStepV1Schedule()
        self._sleep = sleep

    def latent_shape(self, duration_s: float) -> tuple[int, ...]:
        # One channel of v1's frame count: the cost is counted in frames, the values stay small.
        return (1, latent_frames(duration_s))

    def encode(self, prompts, lyrics, branches, erg, *, duration_s):
        text = torch.tensor([zlib.crc32(f"{p}\n{lyric}".encode()) % 1000 / 1000 for p, lyric in zip(prompts, lyrics)])
        values = {Branch.COND: text, Branch.UNCOND: torch.zeros_like(text), Branch.TEXT_ONLY: 0.5 * text}
        return {branch: {"text": values[branch].reshape(-1, 1, 1)} for branch in branches}

    def velocity(self, latents, sigmas, conditioning, erg_rows=None, compiled=False):
        self._sleep(self.cost.forward_s(latents.shape[0], latents.shape[-1]))
        return latents - conditioning["text"]

    def decode(self, latents, num_samples):
        self._sleep(self.cost.decode_items_s(latents.shape[0], latents.shape[-1]))
        # One quiet tone per item, its pitch set by the latents (so by seed and prompt).
        pitch = 220.0 + 220.0 * torch.sigmoid(latents.float().mean(dim=(1, 2)))
        t = torch.arange(num_samples, dtype=torch.float32) / SAMPLE_RATE
        return (0.1 * torch.sin(2 * math.pi * pitch.reshape(-1, 1, 1) * t)).reshape(-1, 1, num_samples)
