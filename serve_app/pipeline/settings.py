"""Fully resolved generation parameters and how they split into a batch.

``GenerationParams`` is the complete ACE-Step control surface with every value
decided. It splits into ``BatchSettings`` (what must be equal for items to share
forward passes: the batch key) and one ``ItemSettings`` per seed (what may
differ inside a batch). This module needs neither torch nor Ray, so the ingress
can resolve and key requests without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .invalid_field import InvalidField

if TYPE_CHECKING:
    import torch

    from .registry import ModelSpec

SchedulerType = Literal["euler", "heun", "pingpong"]
CfgType = Literal["apg", "cfg", "cfg_star"]

# The sampling parameters, defined once: ``GenerationParams`` below takes them resolved,
# the request schema (``serve_app.schemas.GenerateRequest``) takes each as optional with
# the same type, range and description. Numbers are strict: JSON ``true`` is not 1.
# Ranges follow the ACE-Step v1 UI's controls (acestep/ui/components.py).
MAX_INFER_STEP = 200
InferStep = Annotated[int, Field(strict=True, ge=1, le=MAX_INFER_STEP, description="Diffusion steps.")]
GuidanceScale = Annotated[
    float,
    Field(strict=True, ge=0.0, le=30.0, description="Classifier-free guidance scale; 0 or 1 disables guidance."),
]
DoubleGuidanceScale = Annotated[
    float,
    Field(strict=True, ge=0.0, le=10.0),
]
OmegaScale = Annotated[
    float,
    Field(
        strict=True,
        ge=-100.0,
        le=100.0,
        description="Granularity: scales the zero-mean part of each euler/heun update.",
    ),
]
UnitInterval = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
MinGuidanceScale = Annotated[float, Field(strict=True, ge=0.0, le=200.0)]
Seed = Annotated[
    int, Field(strict=True, ge=0, lt=2**32, description="Seed of one output; each seed is one batch item.")
]
# oss_steps index a max(oss_steps)-step schedule, so they share infer_step's limit.
OssStep = Annotated[int, Field(strict=True, ge=1, le=MAX_INFER_STEP)]

MAX_SEEDS_PER_REQUEST = 8

# ACE-Step v1's own defaults (``ACEStepPipeline.__call__``), except the
# duration, which upstream randomises when unset; we default it instead.
ACESTEP_DEFAULTS = {
    "audio_duration": 60.0,
    "lyrics": "",
    "infer_step": 60,
    "guidance_scale": 15.0,
    "scheduler_type": "euler",
    "cfg_type": "apg",
    "omega_scale": 10.0,
    "oss_steps": (),
    "guidance_interval": 0.5,
    "guidance_interval_decay": 0.0,
    "min_guidance_scale": 3.0,
    "use_erg_tag": True,
    "use_erg_lyric": True,
    "use_erg_diffusion": True,
    "guidance_scale_text": 0.0,
    "guidance_scale_lyric": 0.0,
    "bf16": True,
    "torch_compile": False,
}


def model_defaults(spec: ModelSpec) -> dict[str, Any]:
    """Every default for ``spec``: ACE-Step's, overridden by the model's own."""
    return {**ACESTEP_DEFAULTS, **spec.defaults}


def is_guided(guidance_scale: float) -> bool:
    """ACE-Step runs classifier-free guidance unless the scale is exactly 0 or 1."""
    return guidance_scale not in (0.0, 1.0)


def uses_double_guidance(guidance_scale_text: float, guidance_scale_lyric: float) -> bool:
    """Double-condition guidance replaces cfg/apg when both of its scales exceed 1."""
    return guidance_scale_text > 1.0 and guidance_scale_lyric > 1.0


class GuidanceWindow:
    """The contiguous block of steps, centred on the trajectory, that is guided.

    ``guidance_interval`` is the fraction of the ``num_steps`` evaluations that
    get guidance; inside it the scale decays linearly from ``guidance_scale``
    toward ``min_guidance_scale`` by ``guidance_interval_decay``.
    """

    def __init__(self, num_steps: int, guidance_interval: float) -> None:
        self.start = int(num_steps * ((1 - guidance_interval) / 2))
        self.end = int(num_steps * (guidance_interval / 2 + 0.5))

    def __contains__(self, step: int) -> bool:
        return self.start <= step < self.end

    def __len__(self) -> int:
        return self.end - self.start

    def progress(self, step: int) -> float:
        """0 at the first guided step, 1 at the last.

        A one-step window has no span to decay over; ACE-Step divides by zero
        there, we keep the full scale.
        """
        span = self.end - self.start - 1
        return (step - self.start) / span if span > 0 else 0.0

    def scale(
        self,
        step: int,
        guidance_scale: torch.Tensor,
        min_guidance_scale: torch.Tensor,
        decay: torch.Tensor,
    ) -> torch.Tensor:
        return guidance_scale - (guidance_scale - min_guidance_scale) * self.progress(step) * decay


@dataclass(frozen=True)
class BatchSettings:
    """Everything that fixes tensor shapes or the sequence of forward passes.

    Two items may share a batch only when their ``BatchSettings`` are equal.
    """

    model: str
    audio_duration: float
    infer_step: int
    scheduler_type: SchedulerType
    oss_steps: tuple[int, ...]
    cfg_type: CfgType
    guidance_interval: float
    guided: bool
    double_guidance: bool
    use_erg_tag: bool
    use_erg_lyric: bool
    use_erg_diffusion: bool
    bf16: bool
    torch_compile: bool

    @property
    def scheduled_steps(self) -> int:
        """Sigmas of the schedule: what the guidance window is sized by, for every scheduler."""
        return len(self.oss_steps) or self.infer_step

    @property
    def total_steps(self) -> int:
        """Denoiser evaluations of one run: heun evaluates every interval but the last twice."""
        steps = self.scheduled_steps
        return 2 * steps - 1 if self.scheduler_type == "heun" else steps


@dataclass(frozen=True)
class ItemSettings:
    """Per-item values: these may differ between items of one batch."""

    prompt: str
    lyrics: str
    seed: int
    guidance_scale: float
    omega_scale: float
    guidance_interval_decay: float
    min_guidance_scale: float
    guidance_scale_text: float
    guidance_scale_lyric: float


class GenerationParams(BaseModel):
    """Every ACE-Step parameter, resolved: nothing is left to a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    audio_duration: float = Field(strict=True, gt=0.0)
    prompt: str
    lyrics: str
    infer_step: InferStep
    guidance_scale: GuidanceScale
    scheduler_type: SchedulerType = Field(description="Update rule.")
    cfg_type: CfgType = Field(description="How the guided and unguided predictions combine.")
    omega_scale: OmegaScale
    actual_seeds: tuple[Seed, ...] = Field(min_length=1, max_length=MAX_SEEDS_PER_REQUEST)
    oss_steps: tuple[OssStep, ...] = ()
    guidance_interval: UnitInterval = Field(
        description="Fraction of the steps, centred on the trajectory, that are guided."
    )
    guidance_interval_decay: UnitInterval = Field(
        description="How far the guidance scale decays toward min_guidance_scale across the interval."
    )
    min_guidance_scale: MinGuidanceScale = Field(description="The scale the decay heads for.")
    use_erg_tag: bool = Field(description="Entropy-rectifying guidance on the text encoder (ACE-Step v1).")
    use_erg_lyric: bool = Field(description="Entropy-rectifying guidance on the lyric encoder (ACE-Step v1).")
    use_erg_diffusion: bool = Field(description="Entropy-rectifying guidance in the denoiser (ACE-Step v1).")
    guidance_scale_text: DoubleGuidanceScale = Field(
        description="Double-condition guidance, text strength; active when both it and guidance_scale_lyric exceed 1."
    )
    guidance_scale_lyric: DoubleGuidanceScale = Field(description="Double-condition guidance, lyric strength.")
    bf16: bool = Field(description="bfloat16 weights (false: float32).")
    torch_compile: bool = Field(
        description="Run the torch.compile'd denoiser; only where the server's torch_compile setting allows it."
    )

    def batch_settings(self) -> BatchSettings:
        return BatchSettings(
            **{name: getattr(self, name) for name in _BATCH_FIELDS},
            guided=is_guided(self.guidance_scale),
            double_guidance=uses_double_guidance(self.guidance_scale_text, self.guidance_scale_lyric),
        )

    def items(self) -> list[ItemSettings]:
        shared = {name: getattr(self, name) for name in _ITEM_FIELDS}
        return [ItemSettings(**shared, seed=seed) for seed in self.actual_seeds]


# The settings taken from the parameters of the same name; the others are derived above.
_BATCH_FIELDS = tuple(f.name for f in fields(BatchSettings) if f.name in GenerationParams.model_fields)
_ITEM_FIELDS = tuple(f.name for f in fields(ItemSettings) if f.name in GenerationParams.model_fields)


def check_supported(settings: BatchSettings, spec: ModelSpec) -> None:
    """Refuse what the model cannot compute, rather than silently ignoring it."""
    if settings.model != spec.name:
        raise InvalidField("model", f"settings are for {settings.model!r}, not {spec.name!r}")
    if settings.audio_duration < spec.min_duration_s:
        raise InvalidField("audio_duration", f"{spec.name} generates at least {spec.min_duration_s:g} seconds")
    if settings.audio_duration > spec.max_duration_s:
        raise InvalidField("audio_duration", f"{spec.name} generates at most {spec.max_duration_s:g} seconds")
    if settings.guided and spec.guidance_distilled:
        raise InvalidField(
            "guidance_scale",
            f"{spec.name} is guidance-distilled and samples without guidance; use guidance_scale 1 (or 0)",
        )
    for flag in ("tag", "lyric", "diffusion"):
        if getattr(settings, f"use_erg_{flag}") and flag not in spec.supported_erg:
            raise InvalidField(
                f"use_erg_{flag}", f"{spec.name} does not support entropy-rectifying guidance; set it to false"
            )
    if settings.oss_steps:
        if list(settings.oss_steps) != sorted(set(settings.oss_steps)):
            raise InvalidField("oss_steps", "steps must be strictly increasing")
        if settings.scheduler_type == "heun":
            raise InvalidField(
                "oss_steps", "ACE-Step defines oss_steps only for the euler and pingpong schedulers, not heun"
            )
        if settings.infer_step != max(settings.oss_steps):
            raise InvalidField("infer_step", "with oss_steps, infer_step is max(oss_steps)")
