"""ACE-Step 1.5's audio-in tasks (repaint, cover) on the tiny 1.5 models.

1.5 gives the source to the denoiser as context instead of starting from it, so
on random weights the promises that can be checked are about what the model
hears: repaint hears the source outside its window and nothing of it inside;
cover at strength 0 hears only the text2music branch. Parity with diffusers'
``AceStepPipeline`` is measured outside the repository (README, "Audio in").
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline.invalid_field import InvalidField
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.sampler import Sampler
from serve_app.pipeline.tasks import TaskSettings
from serve_app.schemas import GenerateRequest
from serve_app.sources import SourceInfo

from .generation import DIFFERENT, SAME, max_diff

GUIDED = "acestep-v15-tiny"
TURBO = "acestep-v15-turbo-tiny"
SAMPLES = 3 * 48000 + 5000
FRAMES = 15  # the tiny VAE makes a frame of 9600 samples and drops the partial one
KEY = "uploads/source.wav"


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("v15_tasks")


@pytest.fixture(scope="module")
def pipelines(models_root):
    return {name: MusicPipeline(name, "cpu", models_root=models_root) for name in (GUIDED, TURBO)}


@pytest.fixture(scope="module")
def planner():
    return Planner(PresetBook.load(), served_models=[GUIDED, TURBO], default_model=GUIDED)


def _tone(frequency: float, noise_seed: int) -> torch.Tensor:
    t = torch.arange(SAMPLES) / 48000
    noise = 0.05 * torch.randn(2, SAMPLES, generator=torch.Generator().manual_seed(noise_seed))
    return (0.3 * torch.sin(2 * math.pi * frequency * t) + noise).float()


SOURCE = _tone(220.0, 1)
OTHER_SOURCE = _tone(330.0, 2)


def _params(planner, model=GUIDED, **fields):
    request = GenerateRequest(
        model=model, prompt="lofi piano", lyrics="la la", infer_step=4, bf16=False, source={"key": KEY}, **fields
    )
    return planner.plan(request, "req", SourceInfo(KEY, 48000, SAMPLES, 2)).params


def _generate(pipeline, params, source=SOURCE) -> list[torch.Tensor]:
    items = params.items()
    output = pipeline(params.batch_settings(), items, sources=[source] * len(items))
    assert all(item.error is None and not item.cancelled for item in output.items)
    return [item.waveform for item in output.items]


@pytest.mark.parametrize("model", [GUIDED, TURBO])
@pytest.mark.parametrize("task", ["repaint", "cover"])
def test_a_task_returns_the_whole_frames_the_vae_makes_of_the_source(pipelines, planner, model, task):
    params = _params(planner, model, task=task, actual_seeds=[3])
    [waveform] = _generate(pipelines[model], params)
    assert waveform.shape == (2, FRAMES * 9600) and bool(torch.isfinite(waveform).all())
    assert params.audio_duration == FRAMES * 9600 / 48000


def test_the_same_request_twice_gives_the_same_audio_and_another_seed_does_not(pipelines, planner):
    first = _generate(pipelines[GUIDED], _params(planner, task="cover", audio_cover_strength=0.5, actual_seeds=[3]))
    again = _generate(pipelines[GUIDED], _params(planner, task="cover", audio_cover_strength=0.5, actual_seeds=[3]))
    other = _generate(pipelines[GUIDED], _params(planner, task="cover", audio_cover_strength=0.5, actual_seeds=[4]))
    assert max_diff(first[0], again[0]) == 0.0
    assert max_diff(first[0], other[0]) > DIFFERENT


@pytest.mark.parametrize("task", ["repaint", "cover"])
def test_an_item_sounds_the_same_alone_and_inside_a_batch(pipelines, planner, task):
    batch = _generate(pipelines[TURBO], _params(planner, TURBO, task=task, repaint_start=1.0, actual_seeds=[3, 9]))
    alone = _generate(pipelines[TURBO], _params(planner, TURBO, task=task, repaint_start=1.0, actual_seeds=[9]))
    assert max_diff(batch[1], alone[0]) < SAME
    assert max_diff(batch[0], batch[1]) > DIFFERENT


def _sample_from_latents(pipeline, params, source_latents: torch.Tensor) -> torch.Tensor:
    settings = params.batch_settings()
    with torch.inference_mode():
        return Sampler(pipeline.model(bf16=False))(settings, params.items(), None, source_latents).latents


def test_repaint_hears_the_source_outside_its_window_and_nothing_inside(pipelines, planner):
    pipeline = pipelines[GUIDED]
    params = _params(planner, task="repaint", repaint_start=1.0, repaint_end=2.0, actual_seeds=[3])
    start, end = params.batch_settings().task.repaint_window()
    assert (start, end) == (5, 10)
    model = pipeline.model(bf16=False)
    latents = model.encode_audio(SOURCE, torch.Generator().manual_seed(0))
    changed_inside, changed_outside = latents.clone(), latents.clone()
    changed_inside[:, start:end] += 3.0
    changed_outside[:, end:] += 3.0

    reference = _sample_from_latents(pipeline, params, latents)
    assert max_diff(_sample_from_latents(pipeline, params, changed_inside), reference) == 0.0
    assert max_diff(_sample_from_latents(pipeline, params, changed_outside), reference) > DIFFERENT


def test_repaint_regenerates_only_where_asked(pipelines, planner):
    """Two windows over the same source and seed give different audio; each is sampled from noise."""
    early = _generate(pipelines[GUIDED], _params(planner, task="repaint", repaint_end=1.0, actual_seeds=[3]))
    late = _generate(pipelines[GUIDED], _params(planner, task="repaint", repaint_start=2.0, actual_seeds=[3]))
    assert max_diff(early[0], late[0]) > DIFFERENT


def test_cover_at_strength_0_hears_only_the_text2music_branch(pipelines, planner):
    """At strength 0 the guided cover velocity has no weight, so the guidance scale changes nothing;
    at strength 1 it is the whole velocity, and 0.5 lies between the two runs."""

    def cover(strength, scale):
        params = _params(planner, task="cover", audio_cover_strength=strength, guidance_scale=scale, actual_seeds=[3])
        return _generate(pipelines[GUIDED], params)[0]

    assert max_diff(cover(0.0, 7.0), cover(0.0, 3.0)) < SAME
    assert max_diff(cover(1.0, 7.0), cover(1.0, 3.0)) > DIFFERENT
    assert max_diff(cover(0.5, 7.0), cover(0.0, 7.0)) > DIFFERENT
    assert max_diff(cover(0.5, 7.0), cover(1.0, 7.0)) > DIFFERENT


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_cover_hears_the_source(pipelines, planner, strength):
    params = _params(planner, TURBO, task="cover", audio_cover_strength=strength, actual_seeds=[3])
    first = _generate(pipelines[TURBO], params, SOURCE)
    other = _generate(pipelines[TURBO], params, OTHER_SOURCE)
    assert max_diff(first[0], other[0]) > DIFFERENT


def test_a_v1_task_on_a_v15_model_is_refused_naming_task(pipelines, planner):
    params = _params(planner, task="repaint", actual_seeds=[3])
    settings = dataclasses.replace(params.batch_settings(), task=TaskSettings("extend", FRAMES, repaint_end=4.0))
    with pytest.raises(InvalidField) as caught:
        pipelines[GUIDED].check_inputs(settings, params.items())
    assert caught.value.field == "task" and "text2music, repaint, cover" in caught.value.reason


def test_cover_without_an_audio_tokenizer_is_refused_naming_task(pipelines, planner):
    model = pipelines[TURBO].model(bf16=False)
    tokenizer, model.audio_tokenizer = model.audio_tokenizer, None
    try:
        with pytest.raises(InvalidField) as caught:
            pipelines[TURBO](*_batch(planner), sources=[SOURCE])
    finally:
        model.audio_tokenizer = tokenizer
    assert caught.value.field == "task" and "audio tokenizer" in caught.value.reason


def _batch(planner):
    params = _params(planner, TURBO, task="cover", actual_seeds=[3])
    return params.batch_settings(), params.items()
