"""ACE-Step v1's three update rules (``scheduler_type``) over a sigma schedule.

Each stepper lists the sigmas at which the model is evaluated and turns one
velocity into the next sample. Upstream computes the omega mean-shift over the
whole batch tensor and draws pingpong noise from the first item's generator;
here both are per item, so an item's audio never depends on its batch-mates
(for a batch of one the two are identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def omega_gain(omega_scale: torch.Tensor) -> torch.Tensor:
    """Squash ``omega_scale`` into (0.9, 1.1) with ACE-Step's logistic curve."""
    return 0.9 + 0.2 / (1 + torch.exp(-0.1 * omega_scale))


def _mean_shifted(update: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Scale an update's deviation from its per-item mean by ``gain``."""
    mean = update.mean(dim=tuple(range(1, update.dim())), keepdim=True)
    return (update - mean) * gain + mean


class Stepper:
    """Stateful over one sampling run; ``select`` keeps only some batch rows."""

    eval_sigmas: torch.Tensor

    def step(
        self,
        index: int,
        velocity: torch.Tensor,
        sample: torch.Tensor,
        gain: torch.Tensor,
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor:
        raise NotImplementedError

    def select(self, rows: torch.Tensor) -> None:
        """Drop the state of rows that leave the batch."""


class EulerStepper(Stepper):
    def __init__(self, sigmas: torch.Tensor) -> None:
        self.eval_sigmas = sigmas
        self._sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])

    def step(self, index, velocity, sample, gain, generators):
        delta = self._sigmas[index + 1] - self._sigmas[index]
        return sample + _mean_shifted(delta * velocity, gain)


class HeunStepper(Stepper):
    """Heun's method: every interval but the last is evaluated twice.

    The model is evaluated at ``[s0, s1, s1, s2, s2, ..., sN-1, sN-1]``: a
    predictor at the start of each interval and a corrector at its end; the
    last interval (down to zero) takes a single Euler step.
    """

    def __init__(self, sigmas: torch.Tensor) -> None:
        inner = sigmas[1:].repeat_interleave(2)
        self.eval_sigmas = torch.cat([sigmas[:1], inner])
        self._sigmas = torch.cat([self.eval_sigmas, sigmas.new_zeros(1)])
        self._predictor: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def step(self, index, velocity, sample, gain, generators):
        if self._predictor is None:
            delta = self._sigmas[index + 1] - self._sigmas[index]
            self._predictor = (sample, velocity, delta)
            return sample + _mean_shifted(delta * velocity, gain)
        start_sample, start_velocity, delta = self._predictor
        self._predictor = None
        averaged = 0.5 * (start_velocity + velocity)
        return start_sample + _mean_shifted(delta * averaged, gain)

    def select(self, rows):
        if self._predictor is not None:
            sample, velocity, delta = self._predictor
            self._predictor = (sample[rows], velocity[rows], delta)


class PingPongStepper(Stepper):
    """Jump to the predicted clean sample, then re-noise to the next sigma with
    fresh noise. ACE-Step's pingpong ignores ``omega_scale``."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.eval_sigmas = sigmas
        self._sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])

    def step(self, index, velocity, sample, gain, generators):
        sigma, sigma_next = self._sigmas[index], self._sigmas[index + 1]
        denoised = sample - sigma * velocity
        noise = torch.stack(
            [torch.randn(sample.shape[1:], generator=generator, dtype=torch.float32) for generator in generators]
        ).to(sample.device)
        return (1 - sigma_next) * denoised + sigma_next * noise


STEPPERS: dict[str, type[Stepper]] = {
    "euler": EulerStepper,
    "heun": HeunStepper,
    "pingpong": PingPongStepper,
}
