"""The audio-in tasks (retake, repaint, extend, audio2audio, edit) on the tiny ACE-Step v1.

Checked here on the latents the sampler returns, where the tasks' promises are
exact: repaint and extend end on the source's own latents outside what they
regenerate (their last step puts those latents back at sigma 0), a retake with
variance 0 is the text2music run of the same seed, and a strength-1 start or
an empty edit window returns the source. Parity with upstream's own loop is
measured outside the repository (README, "Audio in").
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from serve_app.pipeline.invalid_field import InvalidField
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.sampler import Sampler
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams
from serve_app.pipeline.tasks import LATENT_FRAMES_PER_SECOND, TaskSettings, output_duration, source_frames

from .generation import DIFFERENT, SAME, max_diff

NAME = "ace-step-v1-tiny"
SOURCE_SECONDS = 1.5
FRAME_S = 1 / LATENT_FRAMES_PER_SECOND


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return MusicPipeline(NAME, "cpu", models_root=tmp_path_factory.mktemp("audio_tasks"))


@pytest.fixture(scope="module")
def model(pipeline):
    return pipeline.model(bf16=False)


@pytest.fixture(scope="module")
def source(model):
    samples = round(SOURCE_SECONDS * 48000)
    t = torch.arange(samples) / 48000
    tone = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(
        2, samples, generator=torch.Generator().manual_seed(1)
    )
    return tone.float()


def _params(**overrides) -> GenerationParams:
    values = {
        **ACESTEP_DEFAULTS,
        "model": NAME,
        "prompt": "lofi piano",
        "lyrics": "",
        "audio_duration": SOURCE_SECONDS,
        "infer_step": 4,
        "guidance_interval": 1.0,
        "use_erg_tag": False,
        "use_erg_lyric": False,
        "use_erg_diffusion": False,
        "actual_seeds": (7,),
        "bf16": False,
    }
    return GenerationParams(**{**values, **overrides})


def _sample(pipeline, model, task: TaskSettings, source=None, retake_seed=11, target="rock", **overrides):
    params = _params(**overrides)
    settings = dataclasses.replace(params.batch_settings(), task=task)
    items = [
        dataclasses.replace(item, retake_seed=retake_seed, edit_target_prompt=target, edit_target_lyrics="")
        for item in params.items()
    ]
    pipeline.check_inputs(settings, items)
    with torch.inference_mode():
        return Sampler(model)(settings, items, None, source).latents


@pytest.fixture(scope="module")
def source_latents(model, source):
    return model.encode_audio(source)


def test_source_encodes_to_the_frames_the_planner_computes(source_latents, source):
    assert source_latents.shape == (1, 8, 16, source_frames(source.shape[1], 48000))


def test_retake_variance_zero_is_the_text2music_run_of_the_seed(pipeline, model):
    text2music = _sample(pipeline, model, TaskSettings())
    retake = _sample(pipeline, model, TaskSettings("retake", retake_variance=0.0))
    varied = _sample(pipeline, model, TaskSettings("retake", retake_variance=0.4))
    assert torch.equal(retake, text2music)
    assert (varied - text2music).abs().max() > DIFFERENT


def test_retake_seed_decides_the_variation(pipeline, model):
    task = TaskSettings("retake", retake_variance=0.4)
    first = _sample(pipeline, model, task, retake_seed=1)
    assert torch.equal(first, _sample(pipeline, model, task, retake_seed=1))
    assert (first - _sample(pipeline, model, task, retake_seed=2)).abs().max() > DIFFERENT


def test_repaint_keeps_the_source_outside_the_window(pipeline, model, source_latents):
    frames = source_latents.shape[-1]
    task = TaskSettings("repaint", frames, retake_variance=0.8, repaint_start=0.4, repaint_end=1.0)
    start, end = task.repaint_window()
    out = _sample(pipeline, model, task, source_latents)
    outside = torch.ones(frames, dtype=torch.bool)
    outside[start:end] = False
    assert torch.allclose(out[..., outside], source_latents[..., outside], atol=1e-6)
    assert (out[..., start:end] - source_latents[..., start:end]).abs().max() > 0.1


def test_repaint_with_variance_zero_returns_the_source(pipeline, model, source_latents):
    task = TaskSettings("repaint", source_latents.shape[-1], retake_variance=0.0, repaint_start=0.4, repaint_end=1.0)
    assert torch.allclose(_sample(pipeline, model, task, source_latents), source_latents, atol=1e-6)


@pytest.mark.parametrize(
    "start,end", [(-0.5, SOURCE_SECONDS), (0.0, SOURCE_SECONDS + 0.7), (-0.3, SOURCE_SECONDS + 0.4)]
)
def test_extend_pads_and_keeps_the_source(pipeline, model, source_latents, start, end):
    frames = source_latents.shape[-1]
    task = TaskSettings("extend", frames, retake_variance=1.0, repaint_start=start, repaint_end=end)
    before, after = task.extend_spans()
    assert before == max(0, -int(start * LATENT_FRAMES_PER_SECOND))
    out = _sample(pipeline, model, task, source_latents)
    assert out.shape[-1] == before + frames + after
    assert torch.allclose(out[..., before : before + frames], source_latents, atol=1e-6)
    seconds = output_duration(task, SOURCE_SECONDS)
    assert seconds == pytest.approx(SOURCE_SECONDS - start + max(0.0, end - SOURCE_SECONDS), abs=2 * FRAME_S)


def test_audio2audio_strength_pulls_towards_the_source(pipeline, model, source_latents):
    frames = source_latents.shape[-1]
    near = _sample(pipeline, model, TaskSettings("audio2audio", frames, ref_audio_strength=0.75), source_latents)
    far = _sample(pipeline, model, TaskSettings("audio2audio", frames, ref_audio_strength=0.25), source_latents)
    assert (near - source_latents).norm() < (far - source_latents).norm()


def test_edit_follows_the_target_and_an_empty_window_returns_the_source(pipeline, model, source_latents):
    frames = source_latents.shape[-1]
    edit = TaskSettings("edit", frames, edit_n_min=0.0, edit_n_max=1.0)
    same_prompt = _sample(pipeline, model, edit, source_latents, target="lofi piano", guidance_scale=1.0)
    # Source and target conditioning equal: every velocity difference is zero.
    assert torch.allclose(same_prompt, source_latents, atol=SAME)
    edited = _sample(pipeline, model, edit, source_latents, target="heavy metal")
    assert (edited - source_latents).abs().max() > DIFFERENT
    assert torch.equal(edited, _sample(pipeline, model, edit, source_latents, target="heavy metal"))


def test_pipeline_decodes_each_task_at_its_length(pipeline, source):
    frames = source_frames(source.shape[1], 48000)
    params = _params()
    for task in (
        TaskSettings("repaint", frames, repaint_start=0.2, repaint_end=0.8),
        TaskSettings("extend", frames, retake_variance=1.0, repaint_start=-0.5, repaint_end=SOURCE_SECONDS + 0.5),
    ):
        seconds = output_duration(task, source.shape[1] / 48000)
        settings = dataclasses.replace(params.batch_settings(), task=task, audio_duration=seconds)
        [item] = pipeline(settings, params.items(), sources=[source]).items
        assert item.waveform.shape == (2, round(seconds * 48000))


@pytest.mark.parametrize(
    "task,field",
    [
        (TaskSettings("repaint", 16, repaint_start=-1.0, repaint_end=1.0), "repaint_start"),
        (TaskSettings("repaint", 16, repaint_start=0.5, repaint_end=2.0), "repaint_end"),
        (TaskSettings("repaint", 16, repaint_start=0.5, repaint_end=0.55), "repaint_end"),
        (TaskSettings("extend", 16, repaint_start=0.0, repaint_end=1.0), "repaint_start"),
        (TaskSettings("extend", 16, repaint_start=-3.0, repaint_end=1.0), "repaint_start"),
        (TaskSettings("audio2audio", 16, ref_audio_strength=0.9), "ref_audio_strength"),
        (TaskSettings("edit", 16, edit_n_min=0.8, edit_n_max=0.2), "edit_n_min"),
        (TaskSettings("repaint", 0, repaint_start=0.0, repaint_end=1.0), "source"),
    ],
)
def test_impossible_task_settings_are_refused_naming_the_field(pipeline, task, field):
    settings = dataclasses.replace(_params().batch_settings(), task=task)
    with pytest.raises(InvalidField) as caught:
        pipeline.check_inputs(settings, _params().items())
    assert caught.value.field == field


def test_audio2audio_with_pingpong_is_per_item_and_deterministic(pipeline, source):
    task = TaskSettings("audio2audio", source_frames(source.shape[1], 48000), ref_audio_strength=0.4)
    seconds = output_duration(task, source.shape[1] / 48000)

    def waveforms(scheduler, seeds):
        # Six steps: the last step's noise is scaled by sigma 0, so two would hide a shared generator.
        params = _params(scheduler_type=scheduler, actual_seeds=seeds, infer_step=10)
        settings = dataclasses.replace(params.batch_settings(), task=task, audio_duration=seconds)
        items = pipeline(settings, params.items(), sources=[source] * len(seeds)).items
        assert all(item.error is None for item in items)
        return [item.waveform for item in items]

    [alone] = waveforms("pingpong", (7,))
    assert alone.shape == (2, round(seconds * 48000))
    assert torch.equal(alone, waveforms("pingpong", (7,))[0])
    # Its fresh noise comes from the item's own seed, so a batch-mate changes nothing.
    first, second = waveforms("pingpong", (7, 8))
    assert max_diff(first, alone) < SAME
    assert max_diff(second, alone) > DIFFERENT
    assert max_diff(alone, waveforms("euler", (7,))[0]) > DIFFERENT


def test_edit_refuses_other_schedulers(pipeline):
    settings = dataclasses.replace(
        _params(scheduler_type="heun").batch_settings(), task=TaskSettings("edit", 16, edit_n_max=1.0)
    )
    with pytest.raises(InvalidField, match="euler"):
        pipeline.check_inputs(settings, _params().items())


def test_a_model_without_audio_in_refuses_the_tasks_listing_its_own():
    pipeline = MusicPipeline("acestep-v15-tiny", "cpu")
    params = _params(model="acestep-v15-tiny", guidance_scale=7.0)
    settings = dataclasses.replace(params.batch_settings(), task=TaskSettings("retake"))
    with pytest.raises(InvalidField) as caught:
        pipeline.check_inputs(settings, params.items())
    assert caught.value.field == "task" and "text2music" in caught.value.reason
