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
from .registry import get_spec
from .tasks import (
    SOURCE_SAMPLE_RATE,
    SOURCE_TASKS,
    Task,
    TaskSettings,
    context_source_frames,
    frames_at,
    source_frames,
    task_problems,
)

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
TimeInSeconds = Annotated[float, Field(ge=-600.0, le=1200.0)]
EditAverages = Annotated[int, Field(strict=True, ge=1, le=10)]


class SourceRef(BaseModel):
    """Source audio of an audio-in task: an object of this service's store (an output or an upload)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=512, description="An output's key or an upload's key.")


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
    task: TaskSettings = TaskSettings()

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
    retake_seed: int = 0
    """Seed of the second noise of retake, repaint and extend, and of all of edit's noise."""
    edit_target_prompt: str = ""
    edit_target_lyrics: str = ""


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
    task: Task = Field(
        default="text2music",
        description="ACE-Step v1: text2music, retake, repaint, extend, edit or audio2audio; "
        "ACE-Step 1.5: text2music, repaint or cover (GET /models lists each model's tasks).",
    )
    source: SourceRef | None = Field(
        default=None,
        description="Source audio of repaint, extend, edit, audio2audio and cover: an output's or an upload's key.",
    )
    source_samples: int = Field(default=0, ge=0)
    """The source's length at ``SOURCE_SAMPLE_RATE``, measured when planning (not a request field)."""
    retake_seeds: tuple[Seed, ...] = Field(
        default=(),
        max_length=MAX_SEEDS_PER_REQUEST,
        description="Second noise of retake, repaint and extend (all of edit's noise), one per output; drawn when absent.",
    )
    retake_variance: UnitInterval = Field(default=0.5, description="How far retake, repaint and extend move away.")
    repaint_start: TimeInSeconds = Field(default=0.0, description="Seconds; below 0 extend adds audio before.")
    repaint_end: TimeInSeconds = Field(
        default=0.0,
        description="Seconds; past the source's end extend adds audio after. "
        "ACE-Step 1.5 (its repainting_end): 0 or below repaints to the source's end.",
    )
    ref_audio_strength: UnitInterval = Field(default=0.5, description="audio2audio: how much of the source stays.")
    edit_target_prompt: str | None = Field(
        default=None, max_length=2000, description="edit: the prompt to move towards (default: prompt)."
    )
    edit_target_lyrics: str | None = Field(
        default=None, max_length=10000, description="edit: the lyrics to move towards (default: lyrics)."
    )
    edit_n_min: UnitInterval = Field(default=0.0, description="edit: fraction of the steps skipped at the start.")
    edit_n_max: UnitInterval = Field(default=1.0, description="edit: fraction of the steps after which it samples.")
    edit_n_avg: EditAverages = Field(default=1, description="edit: noise draws averaged per step.")
    audio_cover_strength: UnitInterval = Field(
        default=1.0,
        description="cover (ACE-Step 1.5): weight of the cover-conditioned velocity; below 1 the rest is "
        "the velocity under text2music's instruction (one more forward pass per step).",
    )

    def request_fields(self) -> dict:
        """The parameters as request fields (JSON-ready): posting them repeats the request
        exactly. Values measured from the source are left out; they are measured again."""
        fields = self.model_dump(mode="json", exclude={"source_samples"})
        if self.task in SOURCE_TASKS:
            del fields["audio_duration"]
        return fields

    def task_settings(self) -> TaskSettings:
        """The task with only the parameters it uses, so unrelated values never split batches."""
        if self.task in SOURCE_TASKS:
            hop = get_spec(self.model).context_hop
            if hop:
                return self._context_task_settings(hop)
        frames = source_frames(self.source_samples, SOURCE_SAMPLE_RATE) if self.task in SOURCE_TASKS else 0
        if self.task == "retake":
            return TaskSettings("retake", retake_variance=self.retake_variance)
        if self.task in ("repaint", "extend"):
            return TaskSettings(self.task, frames, self.retake_variance, self.repaint_start, self.repaint_end)
        if self.task == "audio2audio":
            return TaskSettings("audio2audio", frames, ref_audio_strength=self.ref_audio_strength)
        if self.task == "edit":
            return TaskSettings(
                "edit", frames, edit_n_min=self.edit_n_min, edit_n_max=self.edit_n_max, edit_n_avg=self.edit_n_avg
            )
        return TaskSettings()

    def _context_task_settings(self, hop: int) -> TaskSettings:
        """ACE-Step 1.5's repaint and cover (the source is the denoiser's context)."""
        frames = context_source_frames(self.source_samples, hop)
        if self.task == "repaint":
            return TaskSettings(
                "repaint", frames, repaint_start=self.repaint_start, repaint_end=self.repaint_end, context_hop=hop
            )
        if self.task == "cover":
            return TaskSettings("cover", frames, audio_cover_strength=self.audio_cover_strength, context_hop=hop)
        return TaskSettings(self.task, frames, context_hop=hop)

    def batch_settings(self) -> BatchSettings:
        return BatchSettings(
            **{name: getattr(self, name) for name in _BATCH_FIELDS},
            guided=is_guided(self.guidance_scale),
            double_guidance=uses_double_guidance(self.guidance_scale_text, self.guidance_scale_lyric),
            task=self.task_settings(),
        )

    def items(self) -> list[ItemSettings]:
        shared = {name: getattr(self, name) for name in _ITEM_FIELDS}
        targets = {
            "edit_target_prompt": self.prompt if self.edit_target_prompt is None else self.edit_target_prompt,
            "edit_target_lyrics": self.lyrics if self.edit_target_lyrics is None else self.edit_target_lyrics,
        }
        retake_seeds = self.retake_seeds or (0,) * len(self.actual_seeds)
        return [
            ItemSettings(**shared, **targets, seed=seed, retake_seed=retake_seed)
            for seed, retake_seed in zip(self.actual_seeds, retake_seeds)
        ]


# The settings taken from the parameters of the same name; the others are derived above.
_DERIVED = {"task", "edit_target_prompt", "edit_target_lyrics"}
_BATCH_FIELDS = tuple(f.name for f in fields(BatchSettings) if f.name in set(GenerationParams.model_fields) - _DERIVED)
_ITEM_FIELDS = tuple(f.name for f in fields(ItemSettings) if f.name in set(GenerationParams.model_fields) - _DERIVED)


def check_item_supported(item: ItemSettings, spec: ModelSpec) -> None:
    """Refuse per-item values the model family defines no behaviour for.

    ACE-Step 1.5's reference (diffusers' ``AceStepPipeline``) guides only above
    a scale of 1, while v1 guides at any scale but 0 and 1; a 1.5 scale in
    (0, 1) would be a third behaviour, so it is refused rather than reinterpreted.
    """
    if spec.family == "acestep_v15" and 0.0 < item.guidance_scale < 1.0:
        raise InvalidField(
            "guidance_scale", f"{spec.name} guides only above 1; use 1 (or 0) for no guidance, or a scale above 1"
        )


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
    task = settings.task
    if task.task not in spec.tasks:
        raise InvalidField("task", f"{spec.name} offers the tasks {', '.join(spec.tasks)}, not {task.task}")
    for field, reason in task_problems(task, settings.infer_step, frames_at(spec.max_duration_s)):
        raise InvalidField(field, reason)
    if task.task in ("edit", "audio2audio") and settings.oss_steps:
        raise InvalidField("oss_steps", f"{task.task} runs its own schedule; oss_steps cannot be combined with it")
    if task.task == "edit" and settings.scheduler_type != "euler":
        raise InvalidField("scheduler_type", "edit (flow-edit) steps with euler only")
