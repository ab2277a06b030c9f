"""The guided flow-matching loop over one batch, model-agnostic.

One run: per-item noise from per-item generators, conditioning for the branches
the settings need, then for each evaluation sigma either a conditional pass or
a guided step whose branches share one batched forward pass. Items can leave
the batch between steps (cancellation); the rest continue unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch

from .flowedit import FlowEdit
from .guidance import ApgGuidance, cfg, cfg_star, double_condition, per_item
from .protocol import Branch, Conditioning, ErgFlags, MusicModel
from .settings import BatchSettings, GuidanceWindow, ItemSettings
from .steppers import STEPPERS, omega_gain
from .task_start import RepaintStepper, task_start
from .velocity import SampledLatents, chunked_velocity

StepCallback = Callable[[int, int, Sequence[int]], Collection[int] | None]
"""Called after each step with ``(steps_done, total_steps, active_items)``;
returns the indices of items to drop from the batch (e.g. cancelled)."""


def base_sigmas(model: MusicModel, settings: BatchSettings) -> torch.Tensor:
    schedule = model.noise_schedule
    return schedule.subset(settings.oss_steps) if settings.oss_steps else schedule.sigmas(settings.infer_step)


class _Batch:
    """The per-row state of a run, kept aligned when rows leave."""

    def __init__(self, items: Sequence[ItemSettings], latents: torch.Tensor, conditioning, generators) -> None:
        self.index = list(range(len(items)))
        self.items = list(items)
        self.latents = latents
        self.conditioning: dict[Branch, Conditioning] = conditioning
        self.generators = list(generators)

    def scalars(self, name: str) -> torch.Tensor:
        return per_item([getattr(item, name) for item in self.items], self.latents)

    def keep(self, rows: list[int]) -> torch.Tensor:
        selector = torch.tensor(rows, dtype=torch.long)
        self.index = [self.index[r] for r in rows]
        self.items = [self.items[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]
        self.latents = self.latents[selector.to(self.latents.device)]
        self.conditioning = {
            branch: {key: value[selector.to(value.device)] for key, value in cond.items()}
            for branch, cond in self.conditioning.items()
        }
        return selector


class Sampler:
    """Runs ACE-Step's guided sampling for one batch on one model.

    ``max_rows_per_forward`` bounds how many rows (items × guidance branches)
    go through the denoiser at once; ``None`` runs all branches of a step in
    one forward pass.
    """

    def __init__(self, model: MusicModel, max_rows_per_forward: int | None = None) -> None:
        self.model = model
        self.max_rows_per_forward = max_rows_per_forward

    def __call__(
        self,
        settings: BatchSettings,
        items: Sequence[ItemSettings],
        on_step: StepCallback | None = None,
        source: torch.Tensor | None = None,
    ) -> SampledLatents:
        """``source``: the items' source latents, one row per item, for the audio-in tasks."""
        model = self.model
        erg = ErgFlags(settings.use_erg_tag, settings.use_erg_lyric, settings.use_erg_diffusion)
        guided_branches = [Branch.COND, Branch.UNCOND] + ([Branch.TEXT_ONLY] if settings.double_guidance else [])
        branches = guided_branches if settings.guided else [Branch.COND]
        if settings.task.blends_cover():
            branches = [*branches, Branch.TEXT2MUSIC]

        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
        retake_generators = [torch.Generator("cpu").manual_seed(item.retake_seed) for item in items]
        if settings.task.task == "edit":
            return FlowEdit(model, settings, items, self.max_rows_per_forward)(source, retake_generators, on_step)

        schedule = base_sigmas(model, settings)
        start = task_start(
            model,
            settings,
            STEPPERS[settings.scheduler_type](schedule).eval_sigmas,
            generators,
            retake_generators,
            source,
        )
        if start.schedule is not None:
            schedule = start.schedule
        stepper = STEPPERS[settings.scheduler_type](schedule)
        if start.constraint is not None:
            stepper = RepaintStepper(stepper.eval_sigmas, start.constraint.to(model.device))
        sigmas = stepper.eval_sigmas

        # A family that takes the source as context conditions on it (ACE-Step 1.5).
        context = {"task": settings.task, "source": source} if settings.task.source_as_context else {}
        conditioning = model.encode(
            [i.prompt for i in items],
            [i.lyrics for i in items],
            branches,
            erg,
            duration_s=settings.audio_duration,
            **context,
        )
        batch = _Batch(items, start.latents.to(model.device), conditioning, generators)
        # ACE-Step sizes the window by the number of scheduled sigmas but indexes it by
        # evaluation, so for heun (2N-1 evaluations) it covers an earlier stretch of
        # the trajectory than its centre; kept as upstream defines it.
        window = GuidanceWindow(len(schedule), settings.guidance_interval)
        apg = ApgGuidance(model.guidance_norm_dims)

        for step, sigma in enumerate(sigmas.tolist()):
            if step < start.first_step:
                continue
            if settings.guided and step in window:
                velocity = self._guided_velocity(batch, sigma, step, settings, guided_branches, window, apg, erg)
            else:
                velocity = self._velocity(batch.latents, sigma, batch.conditioning[Branch.COND], None, settings)
            if settings.task.blends_cover():
                velocity = self._cover_blend(batch, sigma, velocity, settings)
            gain = omega_gain(batch.scalars("omega_scale"))
            batch.latents = stepper.step(step, velocity, batch.latents, gain, batch.generators)
            if on_step is not None:
                dropped = set(on_step(step + 1, len(sigmas), list(batch.index)) or ())
                if dropped:
                    rows = [r for r, item in enumerate(batch.index) if item not in dropped]
                    selector = batch.keep(rows)
                    stepper.select(selector.to(batch.latents.device))
                    apg.select(selector.to(batch.latents.device))
                    if not rows:
                        break
        return SampledLatents(latents=batch.latents, items=batch.index)

    def _guided_velocity(self, batch, sigma, step, settings, branches, window, apg, erg) -> torch.Tensor:
        rows = batch.latents.shape[0]
        latents = batch.latents.repeat(len(branches), *([1] * (batch.latents.dim() - 1)))
        conditioning = {
            key: torch.cat([batch.conditioning[branch][key] for branch in branches])
            for key in batch.conditioning[Branch.COND]
        }
        erg_rows = None
        if erg.diffusion:
            erg_rows = torch.tensor([branch is Branch.UNCOND for branch in branches for _ in range(rows)])
        predictions = dict(zip(branches, self._velocity(latents, sigma, conditioning, erg_rows, settings).split(rows)))
        cond, uncond = predictions[Branch.COND], predictions[Branch.UNCOND]

        if settings.double_guidance:
            return double_condition(
                cond,
                uncond,
                predictions[Branch.TEXT_ONLY],
                batch.scalars("guidance_scale_text"),
                batch.scalars("guidance_scale_lyric"),
            )
        scale = window.scale(
            step,
            batch.scalars("guidance_scale"),
            batch.scalars("min_guidance_scale"),
            batch.scalars("guidance_interval_decay"),
        )
        if settings.cfg_type == "apg":
            return apg(cond, uncond, scale)
        if settings.cfg_type == "cfg":
            return cfg(cond, uncond, scale)
        return cfg_star(cond, uncond, scale, step)

    def _cover_blend(self, batch, sigma, velocity, settings) -> torch.Tensor:
        """ACE-Step 1.5's cover: the (guided) cover velocity weighted by ``audio_cover_strength``,
        the rest from an unguided pass under text2music's instruction."""
        strength = settings.task.audio_cover_strength
        text2music = self._velocity(batch.latents, sigma, batch.conditioning[Branch.TEXT2MUSIC], None, settings)
        return strength * velocity + (1.0 - strength) * text2music

    def _velocity(self, latents, sigma, conditioning, erg_rows, settings) -> torch.Tensor:
        return chunked_velocity(
            self.model, latents, sigma, conditioning, erg_rows, settings.torch_compile, self.max_rows_per_forward
        )
