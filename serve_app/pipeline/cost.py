"""Estimated GPU seconds of a batch: what replicas report as backlog, and what the simulated model sleeps.

Calibration: ACE-Step v1 3.5B on an A100, batch 1, 60 s of audio, the default
sampling (guidance on the middle half of the steps), as the upstream README
publishes it: 2.20 s at 27 steps and 4.89 s at 60 steps (about 82 ms a step).
Upstream runs the guided and unguided branches as two separate forward passes,
so those runs are 41 and 90 single-row passes (27 steps: 14 guided, 13 plain;
60 steps: 30 and 30). With decoding set at 0.12 s per 60 s item, the least
squares fit gives 52.6 ms per single-row pass over 60 s of latent (646
frames), and the model reproduces the two timings within 4 %.

Batching efficiency (an assumption, not a measurement): a forward pass of
``r`` rows costs ``1 + 0.6 (r - 1)`` single-row passes, i.e. each extra row
costs 60 % of the first. Decoding is linear in items. The pass cost is linear
in latent frames (v1's attention is linear). ``benchmarks/bench_pipeline.py``
on a GPU measures all three; its numbers replace these constants.

Real models scale the whole estimate by ``ModelSpec.relative_cost``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .settings import BatchSettings, GuidanceWindow

LATENT_FRAMES_PER_SECOND = 44100 / 512 / 8
"""ACE-Step v1's latent frame rate: the unit every cost here is counted in."""

CALIBRATION_FRAMES = math.ceil(60 * LATENT_FRAMES_PER_SECOND)


def latent_frames(duration_s: float) -> int:
    return math.ceil(duration_s * LATENT_FRAMES_PER_SECOND)


@dataclass(frozen=True)
class CostModel:
    single_row_pass_s: float = 0.0526
    """One denoiser pass of one row over ``CALIBRATION_FRAMES`` latent frames."""
    extra_row_cost: float = 0.6
    """Cost of each further row in the same pass, as a fraction of the first."""
    decode_s: float = 0.12
    """Decoding one item of ``CALIBRATION_FRAMES`` latent frames."""
    scale: float = 1.0
    """The model's cost relative to the calibrated one."""

    def forward_s(self, rows: int, frames: int) -> float:
        """One denoiser pass of ``rows`` rows of ``frames`` latent frames."""
        if rows <= 0:
            return 0.0
        single = self.single_row_pass_s * frames / CALIBRATION_FRAMES
        return self.scale * single * (1 + self.extra_row_cost * (rows - 1))

    def decode_items_s(self, items: int, frames: int) -> float:
        return self.scale * self.decode_s * items * frames / CALIBRATION_FRAMES

    def batch_s(
        self, items: int, frames: int, steps: int, guided_steps: int, guidance_passes: int, decode: bool = True
    ) -> float:
        """A whole batch: ``steps`` passes, ``guided_steps`` of them with ``guidance_passes`` rows per item."""
        plain = steps - guided_steps
        total = plain * self.forward_s(items, frames) + guided_steps * self.forward_s(items * guidance_passes, frames)
        return total + (self.decode_items_s(items, frames) if decode else 0.0)

    def estimate(self, settings: BatchSettings, items: int) -> float:
        """GPU seconds of a batch of ``items`` items with these settings, decoding included."""
        guided_steps, passes = 0, 1
        if settings.guided:
            guided_steps = len(GuidanceWindow(settings.scheduled_steps, settings.guidance_interval))
            passes = 3 if settings.double_guidance else 2
        frames = latent_frames(settings.audio_duration)
        total = self.batch_s(items, frames, settings.total_steps, guided_steps, passes)
        if settings.task.blends_cover():  # 1.5's cover below full strength: one more pass a step
            total += settings.total_steps * self.forward_s(items, frames)
        return total
