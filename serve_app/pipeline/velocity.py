"""What both sampling loops (guided flow matching and flow-edit) share: the
chunked denoiser call and their result type."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .protocol import Conditioning, MusicModel


@dataclass
class SampledLatents:
    latents: torch.Tensor
    items: list[int]
    """Original indices of the rows of ``latents``; items dropped on the way are absent."""


def chunked_velocity(
    model: MusicModel,
    latents: torch.Tensor,
    sigma: float,
    conditioning: Conditioning,
    erg_rows: torch.Tensor | None,
    compiled: bool,
    max_rows: int | None,
) -> torch.Tensor:
    """The model's velocity at one sigma, at most ``max_rows`` rows per forward pass."""
    rows = latents.shape[0]
    chunk = max_rows or rows
    outputs = []
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        sigmas = torch.full((latents[part].shape[0],), sigma, dtype=torch.float32, device=latents.device)
        outputs.append(
            model.velocity(
                latents[part],
                sigmas,
                {key: value[part] for key, value in conditioning.items()},
                None if erg_rows is None else erg_rows[part],
                compiled=compiled,
            )
        )
    return torch.cat(outputs)
