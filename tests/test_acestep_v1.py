"""ACE-Step v1 on a tiny checkpoint written in the official layout and loaded through the registry.

Generation goes through ``MusicPipeline`` exactly as in the service: 48 kHz
stereo of the requested length for every scheduler, guidance type and ERG
switch; seeds reproduce; items do not depend on their batch-mates.

Tolerances (``tests/generation.py``): a row's conditioning is computed alone,
so it is bit-identical in any batch; only the denoiser's batched kernels round
differently, which ``SAME`` allows for.
"""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_app.pipeline import acestep_v1 as family
from serve_app.pipeline.acestep_v1 import checkpoint, erg
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.protocol import Branch, ErgFlags
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams, ItemSettings

from .generation import DIFFERENT, SAME, generate_waveform, max_diff

NAME = "ace-step-v1-tiny"
SAMPLE_RATE = 48000
ALL_BRANCHES = [Branch.COND, Branch.UNCOND, Branch.TEXT_ONLY]
ALL_ERG = ErgFlags(tag=True, lyric=True, diffusion=True)
PROMPT = "lofi hip hop, mellow piano"
LYRICS = "[verse]\nla la la\n\n[chorus]\nhello there"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("acestep_v1")


@pytest.fixture(scope="module")
def pipeline(root):
    """The service's path: the registry writes the tiny checkpoint on first use and loads it strictly."""
    return MusicPipeline(NAME, "cpu", models_root=root)


@pytest.fixture(scope="module")
def model(pipeline):
    return pipeline.model(bf16=False)


def _params(**overrides) -> GenerationParams:
    values = {
        **ACESTEP_DEFAULTS,
        "model": NAME,
        "prompt": PROMPT,
        "lyrics": LYRICS,
        "audio_duration": 1.3,
        "infer_step": 4,
        "guidance_interval": 1.0,
        "actual_seeds": (7,),
        "bf16": False,
    }
    return GenerationParams(**{**values, **overrides})


def _generate(pipeline, **overrides) -> torch.Tensor:
    return generate_waveform(pipeline, _params(**overrides))


def _noise(model, rows: int, duration: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, *model.latent_shape(duration), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ checkpoint


def test_registry_writes_the_official_layout(model, root):
    path = root / NAME
    assert family.is_complete_checkpoint(path)
    for folder in ("ace_step_transformer", "umt5-base", "music_dcae_f8c8", "music_vocoder"):
        assert (path / folder / "config.json").is_file(), folder
    assert (path / "ace_step_transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (path / "umt5-base" / "tokenizer_config.json").is_file()
    config = json.loads((path / "ace_step_transformer" / "config.json").read_text())
    assert config["_class_name"] == "ACEStepTransformer2DModel"
    assert config["lyric_encoder_vocab_size"] == model.lyric_tokenizer.vocab_size
    assert json.loads((path / "umt5-base" / "config.json").read_text())["model_type"] == "umt5"
    stored = load_file(path / "ace_step_transformer" / "diffusion_pytorch_model.safetensors")
    assert set(stored) == set(model.transformer.state_dict())
    assert model.family == "acestep_v1" and model.name == NAME


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_transformer_loading_is_strict(root, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(root / NAME, copy)
    weights = copy / "ace_step_transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    if damage == "missing":
        del tensors["transformer_blocks.3.cross_attn.add_k_proj.weight"]
    else:
        tensors["transformer_blocks.3.cross_attn.extra.weight"] = torch.zeros(1)
    save_file(tensors, weights)
    with pytest.raises(RuntimeError, match="add_k_proj|extra"):
        checkpoint.load_transformer(copy, device=torch.device("cpu"), dtype=torch.float32)


def test_incomplete_checkpoint_detected(root, tmp_path):
    assert not family.is_complete_checkpoint(tmp_path / "missing")
    for removed in ("ace_step_transformer/diffusion_pytorch_model.safetensors", "umt5-base/tokenizer_config.json"):
        copy = tmp_path / removed.split("/")[0]
        shutil.copytree(root / NAME, copy)
        (copy / removed).unlink()
        assert not family.is_complete_checkpoint(copy), removed


def test_model_attributes(model):
    assert (model.sample_rate, model.channels) == (SAMPLE_RATE, 2)
    assert model.guidance_norm_dims == (-1, -2)
    assert model.supported_erg == {"tag", "lyric", "diffusion"}
    assert model.noise_schedule.sigmas(8)[0] == 1.0
    # At least the requested duration: a latent frame is 4096 samples at 44.1 kHz.
    for duration in (1.0, 1.3, 2.0, 240.0):
        frames = model.latent_shape(duration)[-1]
        assert model.latent_shape(duration)[:2] == (8, 16)
        assert frames * 4096 / 44100 >= duration > (frames - 1) * 4096 / 44100


# --------------------------------------------------------------- generation


def test_every_scheduler_and_guidance_type_gives_its_own_audio(pipeline):
    outputs = {}
    for scheduler, cfg_type in itertools.product(("euler", "heun", "pingpong"), ("apg", "cfg", "cfg_star")):
        audio = _generate(pipeline, scheduler_type=scheduler, cfg_type=cfg_type)
        assert audio.shape == (2, round(1.3 * SAMPLE_RATE)) and audio.dtype == torch.float32
        assert torch.isfinite(audio).all() and audio.abs().amax() > 0
        outputs[scheduler, cfg_type] = audio
    for (first, a), (second, b) in itertools.combinations(outputs.items(), 2):
        assert max_diff(a, b) > DIFFERENT, (first, second)


def test_each_erg_switch_changes_the_audio(pipeline):
    all_on = _generate(pipeline)
    for flag in ("use_erg_tag", "use_erg_lyric", "use_erg_diffusion"):
        audio = _generate(pipeline, **{flag: False})
        assert audio.shape == all_on.shape and torch.isfinite(audio).all()
        assert max_diff(audio, all_on) > DIFFERENT, flag
    all_off = _generate(pipeline, use_erg_tag=False, use_erg_lyric=False, use_erg_diffusion=False)
    assert max_diff(all_off, all_on) > DIFFERENT


def test_erg_tag_acts_only_through_erg_lyric(pipeline):
    """As upstream: the ERG-weakened prompt feeds only the ERG-lyric unconditional branch."""
    without = _generate(pipeline, use_erg_tag=False, use_erg_lyric=False)
    with_tag = _generate(pipeline, use_erg_tag=True, use_erg_lyric=False)
    assert torch.equal(with_tag, without)


def test_double_guidance(pipeline):
    single = _generate(pipeline)
    double = _generate(pipeline, guidance_scale_text=5.0, guidance_scale_lyric=2.5)
    assert double.shape == single.shape and torch.isfinite(double).all()
    assert max_diff(double, single) > DIFFERENT


@pytest.mark.parametrize("duration", [1.0, 2.7])
def test_exact_duration(pipeline, duration):
    assert _generate(pipeline, audio_duration=duration).shape == (2, round(duration * SAMPLE_RATE))


def test_seeds(pipeline):
    first = _generate(pipeline, actual_seeds=(42,))
    assert torch.equal(first, _generate(pipeline, actual_seeds=(42,)))
    assert max_diff(first, _generate(pipeline, actual_seeds=(43,))) > DIFFERENT


def test_bfloat16_variant_generates(pipeline):
    audio = _generate(pipeline, bf16=True)
    assert audio.shape == (2, round(1.3 * SAMPLE_RATE)) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().amax() > 0
    model = pipeline.model(bf16=True)
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.transformer.parameters()} == {torch.bfloat16}
    assert model.text_encoder.model.dtype == torch.bfloat16


def test_prompt_and_lyrics_change_the_audio(pipeline):
    base = _generate(pipeline)
    assert max_diff(base, _generate(pipeline, prompt="metal, distorted guitars")) > DIFFERENT
    assert max_diff(base, _generate(pipeline, lyrics="")) > DIFFERENT


# ----------------------------------------------------------- batch invariance

ROWS = [
    (PROMPT, LYRICS, 7),
    ("a much longer prompt: energetic drum and bass with heavy sub bass and female vocals", "", 11),
    ("jazz", "[verse]\n" + "many more words in these lyrics " * 4 + "\n[chorus]\nand a chorus", 3),
]


@pytest.mark.parametrize("double", [False, True])
def test_an_item_sounds_the_same_alone_and_in_a_batch(pipeline, double):
    scales = {"guidance_scale_text": 5.0, "guidance_scale_lyric": 2.5} if double else {}
    settings = _params(**scales).batch_settings()
    items = [
        ItemSettings(**{**vars(_params(**scales).items()[0]), "prompt": prompt, "lyrics": lyrics, "seed": seed})
        for prompt, lyrics, seed in ROWS
    ]
    batch = pipeline(settings, items).items
    for item, output in zip(items, batch):
        [alone] = pipeline(settings, [item]).items
        torch.testing.assert_close(output.waveform, alone.waveform, rtol=0, atol=SAME)
    assert max_diff(batch[0].waveform, batch[1].waveform) > DIFFERENT


def test_a_rows_conditioning_is_its_solo_conditioning(model):
    prompts, lyrics, _ = zip(*ROWS)
    batch = model.encode(list(prompts), list(lyrics), ALL_BRANCHES, ALL_ERG, duration_s=2.0)
    shapes = {branch: {key: value.shape for key, value in cond.items()} for branch, cond in batch.items()}
    assert shapes[Branch.COND] == shapes[Branch.UNCOND] == shapes[Branch.TEXT_ONLY]
    for index, (prompt, lyric, _) in enumerate(ROWS):
        alone = model.encode([prompt], [lyric], ALL_BRANCHES, ALL_ERG, duration_s=2.0)
        for branch in ALL_BRANCHES:
            states, mask = alone[branch]["encoder_hidden_states"][0], alone[branch]["encoder_hidden_mask"][0]
            row_states = batch[branch]["encoder_hidden_states"][index]
            row_mask = batch[branch]["encoder_hidden_mask"][index]
            length = states.shape[0]
            assert torch.equal(row_states[:length], states) and torch.equal(row_mask[:length], mask)
            assert not row_mask[length:].any()


def test_padding_is_invisible_to_the_denoiser(model):
    short = model.encode([ROWS[0][0]], [ROWS[0][1]], [Branch.COND], ErgFlags(), duration_s=1.0)[Branch.COND]
    padded = {
        key: torch.nn.functional.pad(value, (0, 0, 0, 9) if value.dim() == 3 else (0, 9), value=0)
        for key, value in short.items()
    }
    padded["encoder_hidden_states"][:, -9:] = 5.0  # garbage under the mask
    latents = _noise(model, 1, 1.0)
    torch.testing.assert_close(
        model.velocity(latents, torch.tensor([0.7]), padded),
        model.velocity(latents, torch.tensor([0.7]), short),
        rtol=0,
        atol=SAME,
    )


# ------------------------------------------------------------------ branches


def test_unconditional_branch_without_erg_is_the_zero_path(model):
    conditioning = model.encode([PROMPT], [LYRICS], [Branch.UNCOND, Branch.TEXT_ONLY], ErgFlags(), duration_s=1.0)
    text = model.text_encoder.encode(PROMPT)
    ids = torch.tensor([model.lyric_tokenizer(LYRICS)])
    speaker = torch.zeros(1, model.transformer.config.speaker_embedding_dim)
    ones = lambda x: torch.ones(x.shape[:2], dtype=torch.long)  # noqa: E731
    with torch.no_grad():
        zero_path, _ = model.transformer.encode(
            torch.zeros_like(text), ones(text), speaker, torch.zeros_like(ids), ones(ids)
        )
        text_only, _ = model.transformer.encode(text, ones(text), speaker, torch.zeros_like(ids), ones(ids))
    assert torch.equal(conditioning[Branch.UNCOND]["encoder_hidden_states"], zero_path)
    assert torch.equal(conditioning[Branch.TEXT_ONLY]["encoder_hidden_states"], text_only)


def test_erg_lyric_and_tag_weaken_the_unconditional_branch(model):
    def uncond(erg_flags):
        return model.encode([PROMPT], [LYRICS], [Branch.UNCOND], erg_flags, duration_s=1.0)[Branch.UNCOND][
            "encoder_hidden_states"
        ]

    zero_path, lyric, tag_lyric = (
        uncond(ErgFlags()),
        uncond(ErgFlags(lyric=True)),
        uncond(ErgFlags(tag=True, lyric=True)),
    )
    assert max_diff(lyric, zero_path) > DIFFERENT and max_diff(tag_lyric, lyric) > DIFFERENT
    # ERG on the prompt is upstream's forward hook on UMT5 blocks 8-9's query projections.
    blocks = model.text_encoder.model.encoder.block
    with erg.scaled_outputs([blocks[i].layer[0].SelfAttention.q for i in (8, 9)], 0.01):
        hooked = model.text_encoder.encode(PROMPT)
    assert torch.equal(model.text_encoder.encode(PROMPT, weaken=True), hooked)
    assert max_diff(hooked, model.text_encoder.encode(PROMPT)) > DIFFERENT


def test_empty_lyrics_are_one_masked_token(model):
    conditioning = model.encode(["jazz"], [""], [Branch.COND, Branch.TEXT_ONLY], ErgFlags(), duration_s=1.0)
    mask = conditioning[Branch.COND]["encoder_hidden_mask"][0]
    text_tokens = model.text_encoder.token_ids("jazz").shape[1]
    assert mask.shape == (1 + text_tokens + 1,) and mask[:-1].all() and not mask[-1]
    # With no lyrics, the text-only branch is the conditional one.
    for key, value in conditioning[Branch.COND].items():
        assert torch.equal(value, conditioning[Branch.TEXT_ONLY][key])


# ----------------------------------------------------------------- ERG diffusion


def _hooked_velocity(model, latents, sigma, conditioning):
    """Upstream's way: forward hooks scaling every to_q output of blocks 15-19, on a batch of one."""
    blocks = model.transformer.transformer_blocks
    queries = [module for i in range(15, 20) for module in (blocks[i].attn.to_q, blocks[i].cross_attn.to_q)]
    with erg.scaled_outputs(queries, 0.01):
        return model.velocity(latents, sigma, conditioning)


def test_erg_diffusion_rows_match_upstreams_hooks(model):
    prompts, lyrics, _ = zip(*ROWS[:2])
    conditioning = model.encode(list(prompts), list(lyrics), [Branch.UNCOND], ALL_ERG, duration_s=1.5)[Branch.UNCOND]
    latents, sigmas = _noise(model, 2, 1.5, seed=5), torch.tensor([0.8, 0.4])
    row = lambda i: {key: value[i : i + 1] for key, value in conditioning.items()}  # noqa: E731

    # A marked row alone is exactly the hooked pass; an unmarked one is the plain pass.
    solo = model.velocity(latents[:1], sigmas[:1], row(0), erg_rows=torch.tensor([True]))
    assert torch.equal(solo, _hooked_velocity(model, latents[:1], sigmas[:1], row(0)))
    assert max_diff(solo, model.velocity(latents[:1], sigmas[:1], row(0))) > DIFFERENT
    assert torch.equal(
        model.velocity(latents, sigmas, conditioning, erg_rows=torch.tensor([False, False])),
        model.velocity(latents, sigmas, conditioning),
    )

    mixed = model.velocity(latents, sigmas, conditioning, erg_rows=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[:1], solo, rtol=0, atol=SAME)
    torch.testing.assert_close(mixed[1:], model.velocity(latents[1:], sigmas[1:], row(1)), rtol=0, atol=SAME)


# ---------------------------------------------------------------- interfaces


def test_bad_arguments_are_refused(model):
    with pytest.raises(ValueError, match="prompts"):
        model.encode(["a", "b"], [""], [Branch.COND], ErgFlags(), duration_s=1.0)
    conditioning = model.encode(["a"], [""], [Branch.COND], ErgFlags(), duration_s=1.0)[Branch.COND]
    with pytest.raises(ValueError, match="erg_rows"):
        model.velocity(_noise(model, 1, 1.0), torch.tensor([0.5]), conditioning, erg_rows=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="sigmas"):
        model.velocity(_noise(model, 1, 1.0), torch.tensor([0.5, 0.4]), conditioning)


def test_compiled_denoiser_is_built_once_and_agrees(root):
    model = family.load(root / NAME, device=torch.device("cpu"), dtype=torch.float32)
    model.compile_options = {"backend": "eager"}
    conditioning = model.encode(["x"], ["[verse]\ny"], [Branch.COND], ErgFlags(), duration_s=1.0)[Branch.COND]
    latents = _noise(model, 1, 1.0)
    eager = model.velocity(latents, torch.tensor([0.5]), conditioning)
    compiled = model.velocity(latents, torch.tensor([0.5]), conditioning, compiled=True)
    first = model._compiled_transformer
    model.velocity(latents, torch.tensor([0.3]), conditioning, compiled=True)
    assert first is not None and model._compiled_transformer is first
    torch.testing.assert_close(compiled, eager)


def test_build_random_tiny_generates():
    model = family.build_random(device="cpu", dtype=torch.float32, size="tiny")
    conditioning = model.encode(["x"], ["[verse]\ny"], ALL_BRANCHES, ALL_ERG, duration_s=1.0)
    latents = _noise(model, 1, 1.0)
    velocity = model.velocity(latents, torch.tensor([1.0]), conditioning[Branch.UNCOND], erg_rows=torch.tensor([True]))
    assert velocity.shape == latents.shape and torch.isfinite(velocity).all()
    assert model.decode(latents, SAMPLE_RATE).shape == (1, 2, SAMPLE_RATE)
