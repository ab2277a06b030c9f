"""ACE-Step 1.5 end to end through ``MusicPipeline``, on the tiny checkpoint the registry writes.

The same sampler drives both families; here the controls are checked on the
1.5 family's real components: exact duration and rate, seeds, schedulers,
guidance types, and an item's independence from its batch-mates (tolerances
in ``tests/generation.py``).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.registry import get_spec
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams, ItemSettings
from serve_app.schemas import GenerateRequest

from .generation import DIFFERENT, SAME, generate_waveform, max_diff

NAME = "acestep-v15-tiny"
SAMPLE_RATE = 48000


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return MusicPipeline(NAME, "cpu", models_root=tmp_path_factory.mktemp("acestep_v15_pipeline"))


def _params(**overrides) -> GenerationParams:
    values = {
        **ACESTEP_DEFAULTS,
        **get_spec(NAME).defaults,
        "model": NAME,
        "prompt": "lofi hip hop, mellow piano",
        "lyrics": "[verse]\nla la la",
        "audio_duration": 1.4,
        "infer_step": 4,
        "guidance_interval": 1.0,
        "actual_seeds": (7,),
        "bf16": False,
    }
    return GenerationParams(**{**values, **overrides})


def _generate(pipeline, **overrides) -> torch.Tensor:
    return generate_waveform(pipeline, _params(**overrides))


@pytest.mark.parametrize("duration", [get_spec(NAME).min_duration_s, 2.3])
def test_exact_duration_rate_and_channels(pipeline, duration):
    audio = _generate(pipeline, audio_duration=duration)
    assert audio.shape == (2, round(duration * SAMPLE_RATE)) and audio.dtype == torch.float32
    assert pipeline.model(bf16=False).sample_rate == SAMPLE_RATE
    assert torch.isfinite(audio).all() and audio.abs().amax() > 0


def test_the_same_seed_gives_the_same_audio_and_another_seed_does_not(pipeline):
    first = _generate(pipeline, actual_seeds=(42,))
    assert torch.equal(first, _generate(pipeline, actual_seeds=(42,)))
    assert max_diff(first, _generate(pipeline, actual_seeds=(43,))) > DIFFERENT


def test_every_scheduler_and_guidance_type_gives_its_own_audio(pipeline):
    outputs = {
        combination: _generate(pipeline, scheduler_type=combination[0], cfg_type=combination[1])
        for combination in itertools.product(("euler", "heun", "pingpong"), ("apg", "cfg", "cfg_star"))
    }
    for (first, a), (second, b) in itertools.combinations(outputs.items(), 2):
        assert max_diff(a, b) > DIFFERENT, (first, second)


def test_an_item_sounds_the_same_alone_and_inside_a_larger_batch(pipeline):
    params = _params()
    settings = params.batch_settings()
    base = vars(params.items()[0])
    items = [
        ItemSettings(**{**base, "seed": 7}),
        ItemSettings(**{**base, "prompt": "a far longer prompt about energetic drum and bass", "seed": 11}),
        ItemSettings(**{**base, "lyrics": "", "seed": 3, "guidance_scale": 3.0}),
    ]
    batch = pipeline(settings, items).items
    for item, output in zip(items, batch):
        [alone] = pipeline(settings, [item]).items
        torch.testing.assert_close(output.waveform, alone.waveform, rtol=0, atol=SAME)
    assert max_diff(batch[0].waveform, batch[1].waveform) > DIFFERENT


def test_with_no_guided_step_the_warned_guidance_fields_change_nothing(pipeline):
    """guidance_interval 0 leaves an empty window: the planner warns, and the audio agrees."""
    planner = Planner(PresetBook.load(), served_models=[NAME], default_model=NAME)

    def generate(**fields) -> tuple[torch.Tensor, set[str]]:
        request = GenerateRequest(
            prompt="lofi",
            audio_duration=1.4,
            infer_step=4,
            guidance_interval=0.0,
            actual_seeds=[7],
            bf16=False,
            **fields,
        )
        plan = planner.plan(request, "empty-window")
        [item] = pipeline(plan.params.batch_settings(), plan.params.items()).items
        return item.waveform, {warning.field for warning in plan.warnings}

    guided, _ = generate(guidance_scale=3.0)
    changed, warned = generate(guidance_scale=9.0, cfg_type="cfg", guidance_scale_text=3.0, guidance_scale_lyric=2.0)
    assert {"guidance_scale", "cfg_type", "guidance_scale_text", "guidance_scale_lyric"} <= warned
    assert torch.equal(guided, changed)
