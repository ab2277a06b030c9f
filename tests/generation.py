"""Helpers for tests that generate through ``MusicPipeline``.

Tolerances: a row's audio differs from its solo run only by float32 rounding
of batched kernels (the CPU splits reductions differently for another batch
size), about 1e-7 on audio that peaks near 0.1: ``SAME`` allows for that.
Settings that should change the audio must change it by more than
``DIFFERENT``, well above it.
"""

from __future__ import annotations

import torch

from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.settings import GenerationParams

SAME = 1e-5
DIFFERENT = 1e-4


def generate_waveform(pipeline: MusicPipeline, params: GenerationParams) -> torch.Tensor:
    """The one item of ``params``, which must neither fail nor be cancelled."""
    [item] = pipeline(params.batch_settings(), params.items()).items
    assert item.error is None and not item.cancelled
    return item.waveform


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
