"""The contract between the model-agnostic sampler and a model family.

A model family (ACE-Step v1, ACE-Step 1.5, ...) turns prompts and lyrics into
conditioning, predicts flow-matching velocities, and decodes latents to audio.
Everything about guidance, schedulers and seeds lives in the sampler, so every
family gets the same controls with the same meaning.

Conventions every family follows:

* Flow matching with ``x_sigma = (1 - sigma) * x0 + sigma * noise``; the
  velocity points from data to noise, so a step is ``x + (sigma_next - sigma) * v``.
* Conditioning is a ``dict[str, Tensor]`` whose tensors are all batch-first.
  All branches returned by one ``encode`` call have identical shapes, so the
  sampler can concatenate them along the batch and run one forward pass, and
  can drop rows (a cancelled item) by indexing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Conditioning = dict[str, torch.Tensor]


class Branch(enum.Enum):
    """Which conditioning a forward pass sees."""

    COND = "cond"
    """Prompt and lyrics."""
    UNCOND = "uncond"
    """The unconditional branch of classifier-free guidance (null or ERG-weakened)."""
    TEXT_ONLY = "text_only"
    """Prompt without lyrics: the extra branch of double-condition guidance."""
    NULL = "null"
    """Zero prompt states and masked-out lyrics: flow-edit's unconditional branch."""
    TEXT2MUSIC = "text2music"
    """ACE-Step 1.5's cover below full strength: prompt and lyrics under text2music's
    instruction, on cover's context; blended into the velocity by ``audio_cover_strength``."""


@dataclass(frozen=True)
class ErgFlags:
    """Entropy-rectifying guidance switches, as ACE-Step v1 names them."""

    tag: bool = False
    lyric: bool = False
    diffusion: bool = False

    def enabled(self) -> frozenset[str]:
        return frozenset(name for name in ("tag", "lyric", "diffusion") if getattr(self, name))


class NoiseSchedule(Protocol):
    """The sigma schedule a family was trained with."""

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """``num_steps`` descending float32 sigmas in (0, 1], without the terminal zero."""

    def subset(self, steps: Sequence[int]) -> torch.Tensor:
        """Sigmas for ``oss_steps``: 1-based indices into the ``max(steps)``-step schedule."""


class MusicModel(Protocol):
    """A loaded model family, ready to sample on one device in one dtype."""

    family: str
    sample_rate: int
    channels: int
    device: torch.device
    dtype: torch.dtype
    noise_schedule: NoiseSchedule
    guidance_norm_dims: tuple[int, ...]
    """Latent dims (negative, excluding batch) over which APG measures norms."""
    supported_erg: frozenset[str]
    """The ERG switches (subset of ``{"tag", "lyric", "diffusion"}``) this family honours."""

    def latent_shape(self, duration_s: float) -> tuple[int, ...]:
        """Shape of one item's latent (no batch dim) long enough to cover ``duration_s``."""

    def encode(
        self,
        prompts: Sequence[str],
        lyrics: Sequence[str],
        branches: Collection[Branch],
        erg: ErgFlags,
        *,
        duration_s: float,
    ) -> dict[Branch, Conditioning]:
        """Conditioning for each requested branch, one row per prompt.

        ``duration_s`` is the batch's audio duration (ACE-Step 1.5 conditions on it).
        """

    def velocity(
        self,
        latents: torch.Tensor,
        sigmas: torch.Tensor,
        conditioning: Conditioning,
        erg_rows: torch.Tensor | None = None,
        compiled: bool = False,
    ) -> torch.Tensor:
        """Predicted velocity for ``latents`` at per-row ``sigmas``.

        ``erg_rows`` (bool, one per row) marks rows that take the ERG-weakened
        diffusion pass; ``compiled`` selects the ``torch.compile``d denoiser.
        """

    def decode(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Float32 CPU waveforms ``(batch, channels, num_samples)`` at ``sample_rate``."""


class SourceEncoder(Protocol):
    """A family that can start from, or condition on, recorded audio (the audio-in tasks)."""

    frame_axis: int
    """The latents' frame axis (batch included)."""
    source_encoding_draws: bool
    """Whether encoding samples a posterior: then every item encodes its source with its own draw."""

    def encode_audio(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents ``(1, *latent_shape)`` of a float ``(channels, samples)`` 48 kHz waveform;
        ``generator`` feeds the posterior draw of a family whose encoding draws."""
