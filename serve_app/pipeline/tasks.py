"""The audio-in tasks of ACE-Step v1 and the frame arithmetic they share.

``text2music`` starts from noise. ``retake`` starts from the same noise mixed
with a second seed's noise by ``retake_variance``. ``repaint`` and ``extend``
keep the source's latents outside a window (or outside the added spans) and
regenerate inside it, from a point of the trajectory set by
``retake_variance``. ``audio2audio`` starts part-way down a shortened schedule
from the source's latents noised to ``1 - ref_audio_strength``. ``edit`` runs
the flow-edit process from the source towards ``edit_target_prompt`` and
``edit_target_lyrics``.

Times are seconds; ACE-Step turns them into latent frames by truncation
(``int(seconds * 44100 / 512 / 8)``), which this module repeats so both the
planner (torch-free) and the sampler agree on every shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["text2music", "retake", "repaint", "extend", "edit", "audio2audio"]
TASKS: tuple[str, ...] = ("text2music", "retake", "repaint", "extend", "edit", "audio2audio")
SOURCE_TASKS = frozenset({"repaint", "extend", "edit", "audio2audio"})
"""Tasks that start from a source recording."""
RETAKE_SEED_TASKS = frozenset({"retake", "repaint", "extend", "edit"})
"""Tasks that draw a second noise per item from ``retake_seeds`` (edit draws all its noise there)."""

LATENT_FRAMES_PER_SECOND = 44100 / 512 / 8
"""ACE-Step v1's latent frame rate (one frame is 4096 samples at 44.1 kHz)."""


def frames_at(seconds: float) -> int:
    """ACE-Step's seconds -> latent frame index: truncation toward zero."""
    return int(seconds * LATENT_FRAMES_PER_SECOND)


def source_frames(source_samples: int, sample_rate: int) -> int:
    """Latent frames of a source of ``source_samples`` at ``sample_rate`` (resampled to
    44.1 kHz, then padded up to whole frames, as the v1 encoder does)."""
    samples_44k = -(-source_samples * 44100 // sample_rate)
    return -(-samples_44k // 4096)


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
        """``[start, end)`` latent frames that ``repaint`` regenerates."""
        return frames_at(self.repaint_start), frames_at(self.repaint_end)

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


def output_duration(task: TaskSettings, source_duration_s: float) -> float:
    """Seconds of audio a task with a source returns: the source's length, plus for
    ``extend`` the added spans (whole latent frames, as the latents are padded)."""
    before, after = task.extend_spans() if task.task == "extend" else (0, 0)
    return source_duration_s + (before + after) / LATENT_FRAMES_PER_SECOND
