"""Classifier-free guidance as ACE-Step v1 defines it.

How the conditional, unconditional and text-only predictions are combined
(cfg, apg, cfg_star, double-condition). Which steps are guided and with what
scale (``GuidanceWindow``) lives in ``settings``, so the ingress can tell
without torch. Per-item scales are tensors shaped for broadcasting against the
batch, so items with different scales share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_ETA = 0.0
CFG_STAR_ZERO_STEPS = 1


def per_item(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A ``(B, 1, ..., 1)`` tensor that broadcasts one value per item over ``like``."""
    shape = (len(values),) + (1,) * (like.dim() - 1)
    return torch.tensor(list(values), dtype=like.dtype, device=like.device).reshape(shape)


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def cfg_star(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor, step: int) -> torch.Tensor:
    """CFG-Zero*: the unconditional prediction rescaled by its optimal projection
    coefficient, and zero velocity for the first ``CFG_STAR_ZERO_STEPS + 1`` steps."""
    if step <= CFG_STAR_ZERO_STEPS:
        return torch.zeros_like(cond)
    flat_cond, flat_uncond = cond.flatten(1), uncond.flatten(1)
    alpha = (flat_cond * flat_uncond).sum(1, keepdim=True) / (flat_uncond.pow(2).sum(1, keepdim=True) + 1e-8)
    alpha = alpha.reshape((-1,) + (1,) * (cond.dim() - 1))
    return uncond * alpha + scale * (cond - uncond * alpha)


class ApgGuidance:
    """Adaptive projected guidance with its momentum buffer.

    The buffer carries state across steps, one slot per batch row, so it is
    created once per sampling run and follows row selection when items leave.
    """

    def __init__(self, norm_dims: tuple[int, ...]) -> None:
        self.norm_dims = list(norm_dims)
        self.running_average: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> None:
        if self.running_average is not None:
            self.running_average = self.running_average[rows]

    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        diff = cond - uncond
        if self.running_average is not None:
            diff = diff + APG_MOMENTUM * self.running_average
        self.running_average = diff

        norm = diff.norm(p=2, dim=self.norm_dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(norm), APG_NORM_THRESHOLD / norm)

        parallel, orthogonal = self._project(diff, cond)
        return cond + (scale - 1) * (orthogonal + APG_ETA * parallel)

    def _project(self, vector: torch.Tensor, onto: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Float64 as upstream: the projection of a small difference onto a large
        # prediction loses most of its bits in lower precision.
        vector64, direction = vector.double(), torch.nn.functional.normalize(onto.double(), dim=self.norm_dims)
        parallel = (vector64 * direction).sum(dim=self.norm_dims, keepdim=True) * direction
        return parallel.to(vector.dtype), (vector64 - parallel).to(vector.dtype)


def double_condition(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    text_only: torch.Tensor,
    text_scale: torch.Tensor,
    lyric_scale: torch.Tensor,
) -> torch.Tensor:
    """Separate guidance strengths for the prompt and for the lyrics."""
    return (1 - text_scale) * uncond + (text_scale - lyric_scale) * text_only + lyric_scale * cond
