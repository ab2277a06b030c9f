"""The planner's side of the audio-in tasks: task per model family, sources, retake seeds, derived lengths."""

from __future__ import annotations

import pytest

from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline.invalid_field import InvalidField
from serve_app.pipeline.tasks import LATENT_FRAMES_PER_SECOND
from serve_app.schemas import GenerateRequest
from serve_app.sources import SourceInfo

V1 = "ace-step-v1-tiny"
V15 = "acestep-v15-tiny"
SOURCE = SourceInfo(key="outputs/song.wav", sample_rate=44100, frames=3 * 44100, channels=2)


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(PresetBook.load(), served_models=[V1, V15], default_model=V1)


def plan(planner: Planner, probed: SourceInfo | None = SOURCE, **fields):
    """``probed``: what the ingress read of the request's source."""
    return planner.plan(GenerateRequest(prompt="synthwave", **fields), "req1", probed)


def refused(planner: Planner, probed: SourceInfo | None = SOURCE, **fields) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        plan(planner, probed, **fields)
    return caught.value


def test_a_task_the_model_lacks_lists_the_ones_it_has(planner):
    error = refused(planner, model=V15, task="extend", source={"key": SOURCE.key})
    assert error.field == "task" and "text2music, repaint, cover" in error.reason
    error = refused(planner, model=V1, task="cover", source={"key": SOURCE.key})
    assert error.field == "task" and error.reason.endswith("edit, audio2audio, not cover")


def test_a_source_task_takes_its_length_from_the_source(planner):
    params = plan(planner, task="repaint", source={"key": SOURCE.key}, repaint_start=0.5, repaint_end=1.5).params
    assert params.source_samples == 3 * 48000 and params.audio_duration == 3.0
    extended = plan(planner, task="extend", source={"key": SOURCE.key}, repaint_start=-1.0, repaint_end=4.0).params
    added = (int(1.0 * LATENT_FRAMES_PER_SECOND) + int(4.0 * LATENT_FRAMES_PER_SECOND) - 33) / LATENT_FRAMES_PER_SECOND
    assert extended.audio_duration == pytest.approx(3.0 + added)


def test_a_source_task_refuses_an_explicit_duration_and_a_missing_source(planner):
    assert (
        refused(planner, task="audio2audio", source={"key": SOURCE.key}, audio_duration=3.0).field == "audio_duration"
    )
    assert refused(planner, None, task="audio2audio").field == "source"
    assert refused(planner, None, source={"key": SOURCE.key}).field == "source"


def test_retake_seeds_are_one_per_output(planner):
    drawn = plan(planner, None, task="retake", actual_seeds=[1, 2, 3]).params.retake_seeds
    assert len(drawn) == 3
    padded = plan(planner, None, task="retake", actual_seeds=[1, 2, 3], retake_seeds=[9]).params
    assert padded.retake_seeds == (9, 9, 9) and [item.retake_seed for item in padded.items()] == [9, 9, 9]
    assert refused(planner, None, task="retake", actual_seeds=[1], retake_seeds=[4, 5]).field == "retake_seeds"
    assert plan(planner, None, actual_seeds=[1]).params.retake_seeds == ()


def test_task_parameters_of_another_task_are_reported_inert(planner):
    warnings = plan(planner, None, task="retake", repaint_start=1.0).warnings
    assert [warning.field for warning in warnings] == ["repaint_start"]


def test_the_batch_key_holds_the_task_and_its_shape(planner):
    repaint = plan(planner, task="repaint", source={"key": SOURCE.key}, repaint_start=0.5, repaint_end=1.5)
    other_window = plan(planner, task="repaint", source={"key": SOURCE.key}, repaint_start=0.2, repaint_end=1.5)
    text2music = plan(planner, None, audio_duration=3.0)
    keys = {p.params.batch_settings() for p in (repaint, other_window, text2music)}
    assert len(keys) == 3
    assert repaint.params.batch_settings().task.source_frames == 33


def test_edit_targets_default_to_the_source_prompt_and_lyrics(planner):
    item = plan(planner, task="edit", source={"key": SOURCE.key}, lyrics="la la").params.items()[0]
    assert (item.edit_target_prompt, item.edit_target_lyrics) == ("synthwave", "la la")


def test_a_guided_v15_model_refuses_a_scale_between_0_and_1(planner):
    error = refused(planner, None, model=V15, guidance_scale=0.5)
    assert error.field == "guidance_scale" and "above 1" in error.reason
    assert plan(planner, None, model=V15, guidance_scale=1.0).params.batch_settings().guided is False
    assert plan(planner, None, guidance_scale=0.5).params.batch_settings().guided  # v1 guides at 0.5, as upstream


def test_a_v15_task_returns_the_whole_frames_its_vae_makes_of_the_source(planner):
    # 3 s at 48 kHz after resampling; the tiny VAE makes one frame of 9600 samples (0.2 s).
    odd = SourceInfo(key=SOURCE.key, sample_rate=48000, frames=3 * 48000 + 5000, channels=2)
    params = plan(planner, odd, model=V15, task="cover", source={"key": SOURCE.key}).params
    assert params.audio_duration == 3.0 and params.batch_settings().task.source_frames == 15
    assert params.retake_seeds == ()  # 1.5 samples from each item's own noise


def test_v15_repaint_windows_are_checked_where_upstream_would_clamp_them(planner):
    def window(**fields):
        return plan(planner, model=V15, task="repaint", source={"key": SOURCE.key}, **fields).params

    assert window(repaint_start=1.0).batch_settings().task.repaint_window() == (5, 15)  # end 0: the source's end
    assert window(repaint_start=1.0, repaint_end=2.0).batch_settings().task.repaint_window() == (5, 10)
    for fields, field in (
        ({"repaint_start": -0.5}, "repaint_start"),
        ({"repaint_start": 3.0}, "repaint_start"),
        ({"repaint_start": 1.0, "repaint_end": 3.5}, "repaint_end"),
        ({"repaint_start": 1.0, "repaint_end": 1.1}, "repaint_end"),
        ({"repaint_start": 2.0, "repaint_end": 1.0}, "repaint_end"),
    ):
        assert refused(planner, model=V15, task="repaint", source={"key": SOURCE.key}, **fields).field == field


def test_v15_task_parameters_outside_the_task_are_reported_inert(planner):
    repaint = plan(planner, model=V15, task="repaint", source={"key": SOURCE.key}, retake_variance=0.2)
    assert [warning.field for warning in repaint.warnings] == ["retake_variance"]
    text2music = plan(planner, None, model=V15, audio_cover_strength=0.5)
    assert [warning.field for warning in text2music.warnings] == ["audio_cover_strength"]


def test_the_v15_batch_key_holds_the_cover_strength(planner):
    def key(strength):
        return plan(planner, model=V15, task="cover", source={"key": SOURCE.key}, audio_cover_strength=strength)

    assert key(0.5).params.batch_settings() != key(1.0).params.batch_settings()
    assert key(0.5).params.batch_settings() == key(0.5).params.batch_settings()
