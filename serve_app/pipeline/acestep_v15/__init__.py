"""ACE-Step 1.5 (turbo, base, XL) on diffusers' own components, driven by our sampler.

Importing this package is cheap: torch, diffusers and transformers are imported
by the submodules, which load only when a function below is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import is_complete_checkpoint, write_tiny_checkpoint

if TYPE_CHECKING:
    import torch

    from .model import AceStepV15Model

__all__ = ["build_random", "is_complete_checkpoint", "load", "write_tiny_checkpoint"]


def load(path: Path, *, device: torch.device, dtype: torch.dtype, spec=None) -> AceStepV15Model:
    """Load a diffusers ACE-Step 1.5 pipeline folder (``AceStepPipeline.from_pretrained``)."""
    from .model import load as _load

    return _load(path, device=device, dtype=dtype, spec=spec)


def build_random(*, device, dtype, size: str = "tiny", variant: str = "base") -> AceStepV15Model:
    """Random weights, no files: ``size`` "tiny" or "full" (the real XL sizes), ``variant`` "base" or "turbo"."""
    from .model import build_random as _build_random

    return _build_random(device=device, dtype=dtype, size=size, variant=variant)
