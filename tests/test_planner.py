"""Presets and the planner: a request becomes a fully resolved, checked plan."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import DEFAULT_PRESETS_PATH, PresetBook, PresetError
from serve_app.pipeline.invalid_field import InvalidField
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams
from serve_app.schemas import GenerateRequest

V1 = "ace-step-v1-tiny"
V15 = "acestep-v15-tiny"
V15_TURBO = "acestep-v15-turbo-tiny"
ALL_ERG = {"use_erg_tag": True, "use_erg_lyric": True, "use_erg_diffusion": True}
NO_ERG = {"use_erg_tag": False, "use_erg_lyric": False, "use_erg_diffusion": False}


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(PresetBook.load(), served_models=[V1, V15, V15_TURBO], default_model=V1)


def plan(planner: Planner, **fields):
    return planner.plan(GenerateRequest(prompt="synthwave, 120 bpm", **fields), "req1")


def refused(planner: Planner, **fields) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        plan(planner, **fields)
    return caught.value


# ------------------------------------------------------------------- presets


def test_presets_hold_the_guide_recipes_exactly():
    raw = json.loads(DEFAULT_PRESETS_PATH.read_text())
    assert raw["balanced"]["params"] == {
        "infer_step": 60,
        "guidance_scale": 15.0,
        "cfg_type": "apg",
        "scheduler_type": "euler",
        "omega_scale": 10.0,
        **ALL_ERG,
    }
    assert raw["freestyle"]["params"] == {
        "guidance_scale": 9.0,
        "guidance_interval": 0.3,
        "guidance_interval_decay": 0.5,
        "min_guidance_scale": 2.0,
        **ALL_ERG,
    }
    assert raw["precision"]["params"] == {"guidance_scale": 18.0, "cfg_type": "cfg_star", **NO_ERG}
    assert raw["draft"]["params"]["infer_step"] < 60


def test_preset_values_resolve_and_request_fields_override_them(planner):
    resolved = plan(planner, preset="freestyle").params
    assert (resolved.guidance_scale, resolved.guidance_interval, resolved.guidance_interval_decay) == (9.0, 0.3, 0.5)
    assert resolved.min_guidance_scale == 2.0
    assert (resolved.use_erg_tag, resolved.use_erg_lyric, resolved.use_erg_diffusion) == (True, True, True)
    # Fields the recipe leaves open come from ACE-Step's defaults.
    assert resolved.infer_step == ACESTEP_DEFAULTS["infer_step"] and resolved.cfg_type == "apg"

    overridden = plan(planner, preset="freestyle", guidance_scale=4.0, infer_step=5).params
    assert (overridden.guidance_scale, overridden.infer_step, overridden.guidance_interval) == (4.0, 5, 0.3)


def test_model_defaults_apply_below_the_preset(planner):
    resolved = plan(planner, model=V15).params
    assert resolved.infer_step == 50 and resolved.guidance_scale == 7.0  # ACE-Step 1.5 base defaults
    assert not (resolved.use_erg_tag or resolved.use_erg_lyric or resolved.use_erg_diffusion)
    assert plan(planner, model=V15, preset="precision").params.guidance_scale == 18.0


def test_a_preset_file_with_a_bad_value_is_refused_at_load(tmp_path):
    path = tmp_path / "presets.json"
    path.write_text(json.dumps({"loud": {"params": {"guidance_scale": 500}}}))
    with pytest.raises(PresetError, match="loud"):
        PresetBook.load(path)
    path.write_text(json.dumps({"mine": {"params": {"prompt": "presets do not choose content"}}}))
    with pytest.raises(PresetError, match="prompt"):
        PresetBook.load(path)


def test_unknown_preset_and_model_list_the_known_ones(planner):
    error = refused(planner, preset="loud")
    assert error.field == "preset"
    for name in ("balanced", "freestyle", "precision", "draft"):
        assert name in error.reason
    error = refused(planner, model="ace-step-v2")
    assert error.field == "model" and V1 in error.reason and V15 in error.reason


# ------------------------------------------------------------- resolution


def test_plan_is_fully_resolved_and_repeatable(planner):
    first = plan(planner, preset="balanced", audio_duration=12.5, batch_size=3)
    assert len(first.params.actual_seeds) == 3 and len(set(first.params.actual_seeds)) == 3
    # Posting the resolved parameters back resolves to the same plan.
    again = planner.plan(GenerateRequest(**first.params.request_fields()), "req2")
    assert again.params == first.params


def test_given_seeds_are_kept_in_order(planner):
    assert plan(planner, actual_seeds=[7, 3, 5]).params.actual_seeds == (7, 3, 5)
    # ACE-Step's own string form is accepted too.
    assert plan(planner, actual_seeds="7, 3").params.actual_seeds == (7, 3)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"actual_seeds": [1, 1]}, "actual_seeds"),
        ({"actual_seeds": [1, 2], "batch_size": 3}, "batch_size"),
        ({"model": V15, "use_erg_diffusion": True}, "use_erg_diffusion"),
        ({"audio_duration": 241}, "audio_duration"),
        ({"audio_duration": 1e-6}, "audio_duration"),
        ({"audio_duration": 0.05}, "audio_duration"),
        ({"model": V15, "audio_duration": 0.99}, "audio_duration"),
        ({"scheduler_type": "heun", "oss_steps": [2, 5]}, "oss_steps"),
        ({"oss_steps": [5, 2]}, "oss_steps"),
        ({"format": "wav", "mp3_bitrate_kbps": 192}, "mp3_bitrate_kbps"),
        ({"format": "mp3", "mp3_bitrate_kbps": 100}, "mp3_bitrate_kbps"),
        ({"format": "mp3", "sample_rate": 16000, "mp3_bitrate_kbps": 192}, "mp3_bitrate_kbps"),
        ({"output_name": "../escape"}, "output_name"),
        ({"output_name": "/etc/passwd"}, "output_name"),
        ({"output_path": "C:/Users/me/song.wav"}, "output_path"),
        ({"output_path": "~/song"}, "output_path"),
        ({"output_name": "song.wav", "format": "mp3"}, "output_name"),
        ({"output_path": "albums/song.flac"}, "output_path"),
    ],
)
def test_cross_field_errors_name_the_field(planner, fields, field):
    assert refused(planner, **fields).field == field


def test_a_guidance_distilled_model_refuses_guidance(planner):
    error = refused(planner, model=V15_TURBO, guidance_scale=7.0)
    assert error.field == "guidance_scale" and "guidance-distilled" in error.reason and "1" in error.reason
    assert refused(planner, model=V15_TURBO, preset="precision").field == "guidance_scale"
    for unguided in (0.0, 1.0):
        assert plan(planner, model=V15_TURBO, guidance_scale=unguided).params.guidance_scale == unguided
    assert plan(planner, model=V15, guidance_scale=7.0).params.guidance_scale == 7.0


def test_preset_values_that_the_model_refuses_say_where_they_came_from(planner):
    error = refused(planner, model=V15, preset="balanced")
    assert error.field.startswith("use_erg_") and "preset 'balanced'" in error.reason


def test_output_options(planner):
    output = plan(planner).output
    assert (output.format, output.sample_rate, output.mp3_bitrate_kbps, output.name) == ("wav", 48000, None, None)
    assert plan(planner, format="mp3").output.mp3_bitrate_kbps == 192
    assert plan(planner, format="mp3", sample_rate=24000).output.mp3_bitrate_kbps == 160
    assert plan(planner, output_path="albums/summer/track").output.name == "albums/summer/track"
    assert plan(planner, output_name="song.MP3", format="mp3").output.name == "song.MP3"
    assert "format is mp3" in refused(planner, output_name="song.wav", format="mp3").reason


def invalid_field(**fields) -> str:
    """The field a request body fails validation on, as the API's 422 names it."""
    with pytest.raises(ValidationError) as caught:
        GenerateRequest(**{"prompt": "synthwave, 120 bpm", **fields})
    return str(caught.value.errors()[0]["loc"][0])


def test_oss_steps_beyond_the_step_limit_name_oss_steps():
    assert invalid_field(oss_steps=[2, 500]) == "oss_steps"
    assert GenerateRequest(prompt="x", oss_steps=[2, 200]).oss_steps == [2, 200]


def test_model_and_preset_names_are_bounded():
    assert invalid_field(model="m" * 65) == "model"
    assert invalid_field(preset="p" * 65) == "preset"


def test_a_blank_prompt_is_refused():
    assert invalid_field(prompt=" \n\t ") == "prompt"
    assert GenerateRequest(prompt=" lofi ").prompt == " lofi "


def test_oss_steps_set_infer_step(planner):
    resolved = plan(planner, oss_steps=[1, 4, 9]).params
    assert resolved.infer_step == 9 and resolved.oss_steps == (1, 4, 9)


# ------------------------------------------------------------------ warnings


def warned(planner, **fields) -> set[str]:
    return {warning.field for warning in plan(planner, **fields).warnings}


def test_inert_parameters_are_reported_only_when_the_client_set_them(planner):
    assert warned(planner, guidance_scale=1.0, cfg_type="cfg", use_erg_lyric=False) == {"cfg_type", "use_erg_lyric"}
    assert warned(planner, guidance_scale=1.0) == set()
    assert warned(planner, guidance_scale_text=3.0) == {"guidance_scale_text"}
    assert warned(planner, guidance_scale_text=3.0, guidance_scale_lyric=2.0, cfg_type="cfg", guidance_scale=4.0) == {
        "cfg_type",
        "guidance_scale",
    }
    assert warned(planner, min_guidance_scale=5.0) == {"min_guidance_scale"}
    assert warned(planner, min_guidance_scale=5.0, guidance_interval_decay=0.5) == set()
    assert warned(planner, use_erg_tag=True, use_erg_lyric=False) == {"use_erg_tag"}
    assert warned(planner, scheduler_type="pingpong", omega_scale=3.0) == {"omega_scale"}
    assert warned(planner, oss_steps=[2, 6], infer_step=60) == {"infer_step"}


EVERY_GUIDANCE_FIELD = {
    "guidance_scale": 9.0,
    "cfg_type": "cfg",
    "guidance_interval_decay": 0.5,
    "min_guidance_scale": 5.0,
    "guidance_scale_text": 3.0,
    "guidance_scale_lyric": 2.0,
    **ALL_ERG,
}


@pytest.mark.parametrize(
    "steps",
    [
        {"infer_step": 1},  # a window of int(1 * 0.75) - int(1 * 0.25) = 0 steps
        {"guidance_interval": 0.0, "infer_step": 60},
        {"oss_steps": [10], "infer_step": 10},  # one scheduled sigma out of a 10-step schedule
        {"scheduler_type": "heun", "infer_step": 1},
    ],
)
def test_guidance_fields_are_inert_when_no_step_is_guided(planner, steps):
    fields = {**EVERY_GUIDANCE_FIELD, **steps}
    expected = set(EVERY_GUIDANCE_FIELD) | ({"guidance_interval"} if "guidance_interval" in steps else set())
    assert warned(planner, **fields) == expected
    message = {w.field: w.message for w in plan(planner, **fields).warnings}["guidance_scale"]
    assert "no step is guided" in message


def test_decay_is_inert_when_one_step_is_guided(planner):
    one_step = {"infer_step": 2, "guidance_interval": 0.5}  # steps int(0.5) = 0 to int(1.5) = 1
    assert warned(planner, **one_step, guidance_interval_decay=0.5, min_guidance_scale=5.0) == {
        "guidance_interval_decay",
        "min_guidance_scale",
    }
    assert warned(planner, infer_step=4, guidance_interval=0.5, guidance_interval_decay=0.5) == set()


def test_every_request_parameter_is_a_generation_parameter_or_an_output_option():
    resolved = set(GenerationParams.model_fields) - {"source_samples"}  # measured from the source, not asked
    output_options = {"format", "mp3_bitrate_kbps", "sample_rate", "output_name", "output_path"}
    selection = {"preset", "model", "batch_size"}
    assert set(GenerateRequest.model_fields) == resolved | output_options | selection


# ------------------------------------------------------------- request cost


@pytest.mark.parametrize("lyrics", ["😀" * 10000, "1" * 10000], ids=["emoji", "digits"])
def test_hostile_lyrics_are_refused_with_the_limit(planner, lyrics):
    error = refused(planner, lyrics=lyrics)
    assert error.field == "lyrics" and "4096 lyric tokens" in error.reason


def test_lyrics_over_the_token_limit_are_refused_short_lines_or_not(planner):
    verse = "la la la la la"  # 11 tokens a line: [en], five words, four spaces, the line break
    assert plan(planner, lyrics="\n".join([verse] * 300)).params.lyrics.startswith(verse)
    error = refused(planner, lyrics="\n".join([verse] * 400))
    assert error.field == "lyrics" and "longer than 4096 lyric tokens" in error.reason
    assert refused(planner, lyrics="a\n" * 4999).field == "lyrics"


def test_a_model_without_an_ingress_tokenizer_cuts_at_its_limit_instead(planner):
    # ACE-Step 1.5's tokenizer comes with its weights; the model cuts lyrics at max_lyric_tokens.
    assert plan(planner, model=V15, lyrics="la " * 3000).params.lyrics.startswith("la")


def test_torch_compile_is_the_operators_decision():
    assert (
        refused(Planner(PresetBook.load(), served_models=[V1], default_model=V1), torch_compile=True).field
        == "torch_compile"
    )
    allowed = Planner(PresetBook.load(), served_models=[V1], default_model=V1, compile_allowed=True)
    assert plan(allowed, torch_compile=True).params.torch_compile is True


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"actual_seeds": [True]}, "actual_seeds"),
        ({"actual_seeds": True}, "actual_seeds"),
        ({"infer_step": True}, "infer_step"),
        ({"oss_steps": [1, True]}, "oss_steps"),
        ({"batch_size": True}, "batch_size"),
        ({"audio_duration": True}, "audio_duration"),
        ({"guidance_scale": True}, "guidance_scale"),
        ({"mp3_bitrate_kbps": True}, "mp3_bitrate_kbps"),
    ],
)
def test_a_bool_is_not_a_number(fields, field):
    assert invalid_field(**fields) == field


def test_every_parameter_is_settable_by_a_request_with_the_same_range():
    measured = {"source_samples"}  # from the source, when planning
    assert set(GenerationParams.model_fields) - measured <= set(GenerateRequest.model_fields)
    assert invalid_field(infer_step=201) == "infer_step"
    assert invalid_field(guidance_interval=1.5) == "guidance_interval"
    assert invalid_field(guidance_scale_lyric=11) == "guidance_scale_lyric"


def test_lyrics_cut_into_too_many_pieces_are_refused_realistic_ones_are_not(planner):
    bilingual = "我爱你 I love you, 你好 hello world 1, 2, 3 (yeah)"
    assert plan(planner, lyrics="\n".join([bilingual] * 60)).params.lyrics.startswith(bilingual)
    error = refused(planner, lyrics="\n".join(["a1" * 127] * 39))
    assert error.field == "lyrics" and "pieces" in error.reason
