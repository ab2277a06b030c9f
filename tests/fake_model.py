"""An analytic stand-in for a model family, for testing the sampler exactly.

Rows never interact, so any batch-dependence seen in a test is the sampler's.
"""

from __future__ import annotations

import math
import zlib

import torch

from serve_app.pipeline.protocol import Branch
from serve_app.pipeline.schedules import AceStepV1Schedule

FRAMES_PER_SECOND = 4


def _text_value(text: str) -> float:
    return (zlib.crc32(text.encode()) % 1000) / 1000.0


class FakeModel:
    family = "fake"
    sample_rate = 100
    channels = 2
    device = torch.device("cpu")
    dtype = torch.float32
    guidance_norm_dims = (-1,)
    supported_erg = frozenset({"tag", "lyric", "diffusion"})

    def __init__(self, schedule=None) -> None:
        self.noise_schedule = schedule or AceStepV1Schedule()
        self.calls: list[dict] = []

    def latent_shape(self, duration_s: float) -> tuple[int, ...]:
        return (2, math.ceil(duration_s * FRAMES_PER_SECOND))

    def encode(self, prompts, lyrics, branches, erg, *, duration_s):
        prompt = torch.tensor([_text_value(p) for p in prompts]).reshape(-1, 1, 1)
        lyric = torch.tensor([_text_value(text) if text else 0.0 for text in lyrics]).reshape(-1, 1, 1)
        nan = torch.tensor([math.nan if p == "nan" else 0.0 for p in prompts]).reshape(-1, 1, 1)
        weak = 0.5 if erg.lyric else 0.0
        values = {
            Branch.COND: prompt + lyric + nan,
            Branch.UNCOND: weak * (prompt * float(erg.tag) + lyric),
            Branch.TEXT_ONLY: prompt + weak * lyric,
        }
        return {branch: {"embedding": values[branch]} for branch in branches}

    def velocity(self, latents, sigmas, conditioning, erg_rows=None, compiled=False):
        self.calls.append(
            {"rows": latents.shape[0], "sigma": float(sigmas[0]), "erg_rows": erg_rows, "compiled": compiled}
        )
        embedding = conditioning["embedding"]
        if erg_rows is not None:
            embedding = torch.where(erg_rows.reshape(-1, 1, 1), 0.25 * embedding + 0.1, embedding)
        ramp = torch.linspace(0.5, 1.5, latents.shape[-1])
        return latents * (1 - sigmas.reshape(-1, 1, 1)) * ramp + embedding

    def decode(self, latents, num_samples):
        waveform = torch.nn.functional.interpolate(latents, size=num_samples, mode="linear")
        return waveform.float().cpu()
