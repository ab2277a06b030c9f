"""ACE-Step v1 (3.5B): our implementation, state-dict compatible with the official checkpoint.

Importing this package is cheap: torch, diffusers and transformers are imported
by the submodules, which load only when a function below is called.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..registry import models_dir
from .checkpoint import is_complete_checkpoint, write_tiny_checkpoint

if TYPE_CHECKING:
    import torch

    from ..registry import ModelSpec
    from .lyrics import LyricTokenizer
    from .model import AceStepV1Model

__all__ = ["build_random", "is_complete_checkpoint", "load", "lyric_tokenizer", "write_tiny_checkpoint"]


def load(path: Path, *, device: torch.device, dtype: torch.dtype, spec=None) -> AceStepV1Model:
    """Load a checkpoint folder in the official layout (``ACE-Step/ACE-Step-v1-3.5B``)."""
    from .model import load as _load

    return _load(path, device=device, dtype=dtype, spec=spec)


def build_random(*, device, dtype, size: str = "tiny") -> AceStepV1Model:
    """Random weights, no files: ``size`` "tiny" or "full" (the official sizes)."""
    from .model import build_random as _build_random

    return _build_random(device=device, dtype=dtype, size=size)


def lyric_tokenizer(spec: ModelSpec) -> LyricTokenizer:
    """The lyric tokenizer ``load`` gives the model, without torch or weights: the ingress
    counts lyric tokens with it. Raises ``VocabularyUnavailableError`` when the
    vocabulary is neither on disk nor downloadable."""
    from .lyrics import LyricTokenizer, resolve_vocab, write_tiny_vocab

    if spec.tiny:
        with tempfile.TemporaryDirectory() as scratch:
            return LyricTokenizer.from_vocab_file(write_tiny_vocab(scratch))
    return LyricTokenizer.from_vocab_file(resolve_vocab(models_dir() / spec.name))
