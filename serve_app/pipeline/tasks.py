"""The audio-in tasks of ACE-Step v1 and 1.5 and the frame arithmetic they share.

``text2music`` starts from noise. ``retake`` starts from the same noise mixed
with a second seed's noise by ``retake_variance``. ``repaint`` and ``extend``
keep the source's latents outside a window (or outside the added spans) and
regenerate inside it, from a point of the trajectory set by
``retake_variance``. ``audio2audio`` starts part-way down a shortened schedule
from the source's latents noised to ``1 - ref_audio_strength``. ``edit`` runs
the flow-edit process from the source towards ``edit_target_prompt`` and
``edit_target_lyrics``.

ACE-Step 1.5 (diffusers' ``AceStepPipeline``) gives the source to the denoiser
as context instead and samples the whole schedule from noise: ``repaint``
replaces the window of the source with the silence latent and marks it in the
chunk mask; ``cover`` passes the source through the 5 Hz audio tokenizer and
back, and blends in the text2music velocity when ``audio_cover_strength`` is
below 1. ``TaskSettings.context_hop`` says which of the two families' meanings
a task has.

Times are seconds; ACE-Step turns them into latent frames by truncation
(v1: ``int(seconds * 44100 / 512 / 8)``; 1.5: ``int(seconds * 48000 / hop)``),
which this module repeats so both the planner (torch-free) and the sampler
agree on every shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["text2music", "retake", "repaint", "extend", "edit", "audio2audio", "cover"]
TASKS: tuple[str, ...] = ("text2music", "retake", "repaint", "extend", "edit", "audio2audio", "cover")
V1_TASKS: tuple[str, ...] = ("text2music", "retake", "repaint", "extend", "edit", "audio2audio")
V15_TASKS: tuple[str, ...] = ("text2music", "repaint", "cover")
"""What diffusers' ``AceStepPipeline`` runs on every 1.5 checkpoint; its lego, extract and
complete are trained into the base models only and are not offered."""
SOURCE_TASKS = frozenset({"repaint", "extend", "edit", "audio2audio", "cover"})
"""Tasks that start from a source recording."""

LATENT_FRAMES_PER_SECOND = 44100 / 512 / 8
"""ACE-Step v1's latent frame rate (one frame is 4096 samples at 44.1 kHz)."""
SOURCE_SAMPLE_RATE = 48000
"""Rate at which a source is counted (``source_samples``) and decoded: the v1 codec's input
rate and ACE-Step 1.5's VAE rate."""


def frames_at(seconds: float) -> int:
    """ACE-Step's seconds -> latent frame index: truncation toward zero."""
    return int(seconds * LATENT_FRAMES_PER_SECOND)


def source_frames(source_samples: int, sample_rate: int) -> int:
    """Latent frames of a source of ``source_samples`` at ``sample_rate`` (resampled to
    44.1 kHz, then padded up to whole frames, as the v1 encoder does)."""
    samples_44k = -(-source_samples * 44100 // sample_rate)
    return -(-samples_44k // 4096)


def context_source_frames(source_samples: int, hop: int) -> int:
    """Latent frames the 1.5 VAE makes of ``source_samples`` at 48 kHz: its strided
    convolutions (every stride even) drop the last partial frame."""
    return source_samples // hop


@dataclass(frozen=True)
class TaskSettings:
    """A task and the parameters that fix its shapes and its sequence of forward passes.

    Parameters a task does not use keep their defaults, so two batches of the
    same task compare equal exactly when they can share forward passes.
    """

    task: Task = "text2music"
    source_frames: int = 0
    """Latent frames of the source (0 for tasks without one)."""
    retake_variance: float = 0.5
    repaint_start: float = 0.0
    repaint_end: float = 0.0
    ref_audio_strength: float = 0.5
    edit_n_min: float = 0.0
    edit_n_max: float = 1.0
    edit_n_avg: int = 1
    audio_cover_strength: float = 1.0
    context_hop: int = 0
    """48 kHz samples per latent frame of a family that takes the source as context
    (ACE-Step 1.5); 0 for v1, whose audio-in tasks start from the source."""

    @property
    def source_as_context(self) -> bool:
        return self.context_hop > 0

    def blends_cover(self) -> bool:
        """cover below full strength: a second conditional pass under text2music's instruction."""
        return self.task == "cover" and self.audio_cover_strength < 1.0

    def extend_spans(self) -> tuple[int, int]:
        """Latent frames added before and after the source by ``extend``.

        Before: ``-repaint_start`` seconds; after: from the source's end to
        ``repaint_end``, both on the source's timeline. (Upstream measures the
        right span after the left padding is added; see README's differences.)
        """
        before = max(0, -frames_at(self.repaint_start))
        after = max(0, frames_at(self.repaint_end) - self.source_frames)
        return before, after

    def latent_frames(self) -> int:
        """Frames of the generated latents for a task with a source."""
        before, after = self.extend_spans() if self.task == "extend" else (0, 0)
        return before + self.source_frames + after

    def repaint_window(self) -> tuple[int, int]:
        """``[start, end)`` latent frames that ``repaint`` regenerates.

        1.5 (as diffusers): ``repaint_end`` 0 or below means the source's end."""
        if not self.source_as_context:
            return frames_at(self.repaint_start), frames_at(self.repaint_end)
        per_second = SOURCE_SAMPLE_RATE / self.context_hop
        end = int(self.repaint_end * per_second) if self.repaint_end > 0 else self.source_frames
        return int(self.repaint_start * per_second), end

    def first_step(self, num_steps: int) -> int:
        """Steps that repaint and extend skip: they join the trajectory at ``1 - retake_variance``."""
        return int(num_steps * (1 - self.retake_variance))

    def audio2audio_steps(self, infer_step: int) -> int:
        """Steps of audio2audio's shortened schedule."""
        return int((1 - self.ref_audio_strength) * infer_step)


def task_problems(task: TaskSettings, infer_step: int, max_frames: int) -> list[tuple[str, str]]:
    """``(field, reason)`` for every parameter combination the task cannot honour."""
    problems: list[tuple[str, str]] = []
    if task.task in SOURCE_TASKS and task.source_frames < 1:
        problems.append(("source", f"task {task.task} needs a source recording"))
        return problems
    if task.source_as_context:
        return _context_task_problems(task)
    if task.task == "repaint":
        start, end = task.repaint_window()
        if task.repaint_start < 0:
            problems.append(("repaint_start", "repaint starts at 0 s or later; use task extend to add audio before"))
        elif end > task.source_frames:
            problems.append(("repaint_end", "the window ends past the source; use task extend to add audio after"))
        elif end - start < 1:
            problems.append(("repaint_end", "the window must span at least one latent frame (about 93 ms)"))
    if task.task == "extend":
        before, after = task.extend_spans()
        if before == 0 and after == 0:
            problems.append(
                ("repaint_start", "extend needs repaint_start < 0 or repaint_end past the source's end by a frame")
            )
        if max(before, after) > task.source_frames:
            field = "repaint_start" if before > task.source_frames else "repaint_end"
            problems.append((field, "each side can add at most the source's own length"))
        if task.latent_frames() > max_frames:
            problems.append(("repaint_end", "the extended audio is longer than the model generates"))
    if task.task == "audio2audio" and task.audio2audio_steps(infer_step) < 1:
        problems.append(("ref_audio_strength", "leaves no diffusion step; lower it or raise infer_step"))
    if task.task == "edit" and task.edit_n_min > task.edit_n_max:
        problems.append(("edit_n_min", "must not exceed edit_n_max"))
    return problems


def _context_task_problems(task: TaskSettings) -> list[tuple[str, str]]:
    """1.5's repaint window, checked where diffusers would clamp it silently."""
    if task.task != "repaint":
        return []
    start, end = task.repaint_window()
    source_s = task.source_frames * task.context_hop / SOURCE_SAMPLE_RATE
    if task.repaint_start < 0:
        return [("repaint_start", "repaint starts at 0 s or later (this model has no extend)")]
    if start >= task.source_frames:
        return [("repaint_start", f"starts past the source's end ({source_s:g} s)")]
    if end > task.source_frames:
        return [("repaint_end", f"ends past the source's end ({source_s:g} s); 0 or below means the end")]
    if end - start < 1:
        frame_ms = 1000 * task.context_hop / SOURCE_SAMPLE_RATE
        return [("repaint_end", f"the window must span at least one latent frame ({frame_ms:g} ms)")]
    return []


def output_duration(task: TaskSettings, source_duration_s: float) -> float:
    """Seconds of audio a task with a source returns: the source's length, plus for
    ``extend`` the added spans (whole latent frames, as the latents are padded).
    A 1.5 task returns the whole latent frames its VAE made of the source."""
    if task.source_as_context:
        return task.source_frames * task.context_hop / SOURCE_SAMPLE_RATE
    before, after = task.extend_spans() if task.task == "extend" else (0, 0)
    return source_duration_s + (before + after) / LATENT_FRAMES_PER_SECOND
