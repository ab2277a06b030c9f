"""Where a run of retake, repaint, extend or audio2audio starts, and repaint's step rule.

ACE-Step 1.5's tasks (the source as context) start, like text2music, from one
noise per item over the whole schedule, at the source's latent length.

``text2music`` samples the whole schedule from the item's noise. The audio-in
tasks change three things, each as ACE-Step v1 defines it:

* the starting latents: the noise mixed with the retake noise (retake), the
  source noised to the step where the run joins the trajectory (repaint,
  extend), or the source noised to the top of a shortened schedule
  (audio2audio);
* the schedule (audio2audio) or the steps skipped (repaint, extend);
* for repaint and extend, the step itself: a plain Euler step (no omega, no
  pingpong noise) after which every latent outside the window is put back on
  the straight line between the source and its noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .protocol import MusicModel
from .settings import BatchSettings
from .steppers import Stepper
from .tasks import TaskSettings


def _draw(shape: tuple[int, ...], generators: Sequence[torch.Generator]) -> torch.Tensor:
    # Drawn on the CPU in float32 so a seed gives the same noise on any device.
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])


def _noise(model: MusicModel, frames: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Noise of ``frames`` latent frames for the audio-in tasks (ACE-Step v1: frames are the last axis)."""
    return _draw((*model.latent_shape(1.0)[:-1], frames), generators)


def initial_noise(model: MusicModel, settings: BatchSettings, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """text2music's starting latents: one noise per item at the batch's duration."""
    return _draw(model.latent_shape(settings.audio_duration), generators)


def _mixed(noise: torch.Tensor, retake_noise: torch.Tensor, variance: float) -> torch.Tensor:
    """Rotate ``noise`` towards ``retake_noise`` by ``variance`` of a quarter turn (unit variance kept)."""
    angle = torch.tensor(variance * math.pi / 2, dtype=torch.float32)
    return torch.cos(angle) * noise + torch.sin(angle) * retake_noise


class RepaintConstraint:
    """Keeps the latents outside ``mask`` on the line from the source ``x0`` to its noise ``z0``."""

    def __init__(self, x0: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> None:
        self.x0, self.z0, self.mask = x0, z0, mask

    def at(self, sigma: float) -> torch.Tensor:
        return (1 - sigma) * self.x0 + sigma * self.z0

    def select(self, rows: torch.Tensor) -> None:
        self.x0, self.z0, self.mask = self.x0[rows], self.z0[rows], self.mask[rows]

    def to(self, device: torch.device) -> RepaintConstraint:
        return RepaintConstraint(self.x0.to(device), self.z0.to(device), self.mask.to(device))


class RepaintStepper(Stepper):
    """A plain Euler step between consecutive evaluation sigmas, then the constraint."""

    def __init__(self, eval_sigmas: torch.Tensor, constraint: RepaintConstraint) -> None:
        self.eval_sigmas = eval_sigmas
        self._next = torch.cat([eval_sigmas[1:], eval_sigmas.new_zeros(1)])
        self.constraint = constraint

    def step(self, index, velocity, sample, gain, generators):
        sigma, sigma_next = float(self.eval_sigmas[index]), float(self._next[index])
        stepped = sample + (sigma_next - sigma) * velocity
        return torch.where(self.constraint.mask, stepped, self.constraint.at(sigma_next))

    def select(self, rows):
        self.constraint.select(rows)


@dataclass
class TaskStart:
    latents: torch.Tensor
    """Float32 CPU latents, one row per item."""
    schedule: torch.Tensor | None = None
    """Replaces the request's schedule (audio2audio)."""
    first_step: int = 0
    """Evaluations skipped at the start (repaint, extend)."""
    constraint: RepaintConstraint | None = None


def _repaint_mask(task: TaskSettings, rows: int, latent_shape: tuple[int, ...]) -> torch.Tensor | None:
    """Where extend and repaint regenerate; ``None`` when the window covers the whole source,
    which ACE-Step treats as a retake of the source's length."""
    mask = torch.zeros((rows, *latent_shape[:-1], task.latent_frames()), dtype=torch.bool)
    if task.task == "extend":
        before, after = task.extend_spans()
        mask[..., :before] = True
        mask[..., mask.shape[-1] - after :] = True
        return mask
    start, end = task.repaint_window()
    if start == 0 and end == task.source_frames:
        return None
    mask[..., start:end] = True
    return mask


def task_start(
    model: MusicModel,
    settings: BatchSettings,
    eval_sigmas: torch.Tensor,
    generators: Sequence[torch.Generator],
    retake_generators: Sequence[torch.Generator],
    source: torch.Tensor | None,
) -> TaskStart:
    """The starting point of a run; ``eval_sigmas`` are the evaluation sigmas of the
    request's scheduler (repaint joins them part-way)."""
    task = settings.task
    if task.task == "text2music":
        return TaskStart(initial_noise(model, settings, generators))
    if task.task == "retake":
        shape = model.latent_shape(settings.audio_duration)
        return TaskStart(_mixed(_draw(shape, generators), _draw(shape, retake_generators), task.retake_variance))
    if source is None:
        raise ValueError(f"task {task.task} needs source latents")
    source = source.float().cpu()
    if task.source_as_context:
        return TaskStart(_draw(tuple(source.shape[1:]), generators))
    noise = _noise(model, source.shape[-1], generators)
    if task.task == "audio2audio":
        schedule = model.noise_schedule.truncated(1 - task.ref_audio_strength)
        top = schedule.sigma_max
        latents = source * (1 - top) + noise * top
        return TaskStart(latents, schedule=schedule.sigmas(task.audio2audio_steps(settings.infer_step)))

    retake_noise = _noise(model, source.shape[-1], retake_generators)
    mask = _repaint_mask(task, source.shape[0], tuple(source.shape[1:]))
    if mask is None:
        return TaskStart(_mixed(noise, retake_noise, task.retake_variance))
    if task.task == "extend":
        before, after = task.extend_spans()
        x0 = torch.nn.functional.pad(source, (before, after))
        # The added spans start from the retake noise, the source part from the item's own noise.
        z0 = torch.cat([retake_noise[..., :before], noise, retake_noise[..., retake_noise.shape[-1] - after :]], -1)
    else:
        x0 = source
        z0 = torch.where(mask, _mixed(noise, retake_noise, task.retake_variance), noise)
    first = task.first_step(settings.infer_step)
    constraint = RepaintConstraint(x0, z0, mask)
    # Past the end of the schedule nothing is regenerated: the run returns the source.
    sigma = float(eval_sigmas[first]) if first < len(eval_sigmas) else 0.0
    return TaskStart(constraint.at(sigma), first_step=first, constraint=constraint)
