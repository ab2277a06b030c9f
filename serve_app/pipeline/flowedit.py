"""The ``edit`` task: ACE-Step v1's flow-edit from a source towards a target prompt and lyrics.

No inversion: at each step the source is noised afresh (``n_avg`` draws,
averaged), the edited latents are moved by the same offset, and the edit
follows the difference between the target's and the source's velocities.
Steps before ``edit_n_min`` are skipped; from ``edit_n_max`` on, the edit
turns into ordinary sampling under the target conditioning from the edited
latents re-noised to that step. All of it is Euler; guidance is APG on every
step with flow-edit's own unconditional branch (``Branch.NULL``), the source's
with a momentum buffer, the target's with none while editing and with a fresh
one during the final sampling, as upstream has it. Noise comes from the
items' retake seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch

from .guidance import ApgGuidance, per_item
from .protocol import Branch, ErgFlags, MusicModel
from .settings import BatchSettings, ItemSettings
from .velocity import SampledLatents, chunked_velocity

StepCallback = Callable[[int, int, Sequence[int]], Collection[int] | None]


class FlowEdit:
    def __init__(
        self, model: MusicModel, settings: BatchSettings, items: Sequence[ItemSettings], max_rows: int | None
    ) -> None:
        self.model = model
        self.settings = settings
        self.items = list(items)
        self.max_rows = max_rows
        self.branches = [Branch.COND, Branch.NULL] if settings.guided else [Branch.COND]

    def __call__(
        self, source: torch.Tensor | None, generators: Sequence[torch.Generator], on_step: StepCallback | None
    ) -> SampledLatents:
        if source is None:
            raise ValueError("edit needs source latents")
        model, settings, task = self.model, self.settings, self.settings.task
        x_src = source.float().to(model.device)
        count = len(self.items)
        prompts = [i.prompt for i in self.items] + [i.edit_target_prompt for i in self.items]
        lyrics = [i.lyrics for i in self.items] + [i.edit_target_lyrics for i in self.items]
        # One encode call pads source and target rows to one width, so they share forward passes.
        encoded = model.encode(prompts, lyrics, self.branches, ErgFlags(), duration_s=settings.audio_duration)
        self.conditioning = {branch: dict(cond) for branch, cond in encoded.items()}
        self.index = list(range(count))
        self.generators = list(generators)
        self.scale = per_item([i.guidance_scale for i in self.items], x_src)
        self.source_apg = ApgGuidance(model.guidance_norm_dims)
        self.target_apg = ApgGuidance(model.guidance_norm_dims)

        steps = settings.infer_step
        sigmas = model.noise_schedule.sigmas(steps).tolist() + [0.0]
        n_min, n_max = int(steps * task.edit_n_min), int(steps * task.edit_n_max)
        edited = x_src.clone()
        target: torch.Tensor | None = None
        for step in range(n_min, steps):
            sigma, sigma_next = sigmas[step], sigmas[step + 1]
            if step < n_max:
                delta = torch.zeros_like(x_src)
                for _ in range(task.edit_n_avg):
                    noised = (1 - sigma) * x_src + sigma * self._noise(x_src)
                    source_v, target_v = self._velocities(noised, edited + noised - x_src, sigma)
                    delta = delta + (1 / task.edit_n_avg) * (target_v - source_v)
                edited = edited + (sigma_next - sigma) * delta
            else:
                if target is None:
                    noised = sigma * self._noise(x_src) + (1 - sigma) * x_src
                    target = edited + noised - x_src
                _, target_v = self._velocities(None, target, sigma)
                target = target + (sigma_next - sigma) * target_v
            if on_step is not None:
                dropped = set(on_step(step + 1 - n_min, steps - n_min, list(self.index)) or ())
                if dropped:
                    rows = [r for r, item in enumerate(self.index) if item not in dropped]
                    selector = torch.tensor(rows, dtype=torch.long, device=x_src.device)
                    x_src, edited = x_src[selector], edited[selector]
                    target = None if target is None else target[selector]
                    self._keep(rows, selector)
                    if not rows:
                        break
        return SampledLatents(latents=edited if target is None else target, items=self.index)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        draws = [torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(like.device)

    def _keep(self, rows: list[int], selector: torch.Tensor) -> None:
        count = len(self.index)
        both = torch.cat([selector, selector + count])
        self.index = [self.index[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]
        self.scale = self.scale[selector]
        self.conditioning = {
            branch: {key: value[both.to(value.device)] for key, value in cond.items()}
            for branch, cond in self.conditioning.items()
        }
        for apg in (self.source_apg, self.target_apg):
            apg.select(selector)

    def _velocities(
        self, source_latents: torch.Tensor | None, target_latents: torch.Tensor, sigma: float
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Guided velocities of the source (``None`` when not asked) and of the target."""
        count = target_latents.shape[0]
        halves = ["source", "target"] if source_latents is not None else ["target"]
        latents, conditioning = [], {key: [] for key in self.conditioning[Branch.COND]}
        for half in halves:
            rows = slice(0, count) if half == "source" else slice(count, 2 * count)
            for branch in self.branches:
                latents.append(source_latents if half == "source" else target_latents)
                for key, value in self.conditioning[branch].items():
                    conditioning[key].append(value[rows])
        predictions = chunked_velocity(
            self.model,
            torch.cat(latents),
            sigma,
            {key: torch.cat(values) for key, values in conditioning.items()},
            None,
            self.settings.torch_compile,
            self.max_rows,
        ).split(count)
        per_half = len(self.branches)
        guided = {}
        for number, half in enumerate(halves):
            outputs = predictions[number * per_half : (number + 1) * per_half]
            if not self.settings.guided:
                guided[half] = outputs[0]
            elif half == "source":
                guided[half] = self.source_apg(outputs[0], outputs[1], self.scale)
            elif source_latents is not None:
                # While editing the target is guided without momentum.
                guided[half] = ApgGuidance(self.model.guidance_norm_dims)(outputs[0], outputs[1], self.scale)
            else:
                guided[half] = self.target_apg(outputs[0], outputs[1], self.scale)
        return guided.get("source"), guided["target"]
