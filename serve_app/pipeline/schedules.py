"""Sigma schedules of the ACE-Step families.

Both use the flow-matching time shift ``s * sigma / (1 + (s - 1) * sigma)``
with ``s = 3``; they differ in where the shift is applied and in how an
explicit step subset (``oss_steps``) is turned into sigmas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def shift_sigmas(sigmas, shift: float):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check_subset(steps: Sequence[int]) -> None:
    if not steps or min(steps) < 1:
        raise ValueError("oss_steps must be non-empty 1-based step indices")


class AceStepV1Schedule:
    """ACE-Step v1's flow-match schedulers (euler, heun and pingpong share it).

    The upstream scheduler shifts its 1000 training sigmas once at
    construction, takes the smallest as ``sigma_min``, spaces the inference
    sigmas linearly from 1 to ``sigma_min`` and shifts them again. For
    ``oss_steps`` it picks sigmas from the ``max(oss_steps)``-step schedule and
    hands them back to the scheduler, which shifts them once more.
    """

    def __init__(self, shift: float = 3.0, num_train_timesteps: int = 1000, top: float = 1.0) -> None:
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        self.top = top
        # The training sigmas are float32 steps of 1/num_train_timesteps up to ``top``.
        ends = torch.tensor([np.float32(top * num_train_timesteps), 1.0], dtype=torch.float32) / num_train_timesteps
        self.sigma_max, self.sigma_min = (float(value) for value in shift_sigmas(ends, shift))

    def truncated(self, top: float) -> AceStepV1Schedule:
        """The schedule of a scheduler built with ``sigma_max=top`` (audio2audio): its
        training sigmas stop at ``top``, so inference starts at ``shift(top)``, shifted
        once more like every inference sigma, while the noise is mixed in at ``sigma_max``."""
        return AceStepV1Schedule(self.shift, self.num_train_timesteps, top)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        linear = np.linspace(self.sigma_max, self.sigma_min, num_steps)
        return torch.from_numpy(shift_sigmas(linear, self.shift)).to(torch.float32)

    def subset(self, steps: Sequence[int]) -> torch.Tensor:
        _check_subset(steps)
        full = self.sigmas(max(steps))
        picked = full[[step - 1 for step in steps]].to(torch.float64)
        return shift_sigmas(picked, self.shift).to(torch.float32)


class AceStepV15Schedule:
    """ACE-Step 1.5's schedule: ``num_steps + 1`` linear points from 1 to 0,
    shifted once, terminal zero dropped. Custom timesteps are used verbatim,
    so ``oss_steps`` picks sigmas without re-shifting."""

    def __init__(self, shift: float = 3.0) -> None:
        self.shift = shift

    def sigmas(self, num_steps: int) -> torch.Tensor:
        linear = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)
        return shift_sigmas(linear, self.shift)[:-1]

    def subset(self, steps: Sequence[int]) -> torch.Tensor:
        _check_subset(steps)
        return self.sigmas(max(steps))[[step - 1 for step in steps]]
