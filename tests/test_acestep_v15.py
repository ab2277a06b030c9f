"""ACE-Step 1.5 family on tiny checkpoints written in the diffusers layout."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder

from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline import acestep_v15 as family
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.protocol import Branch, ErgFlags
from serve_app.pipeline.registry import load_model
from serve_app.pipeline.sampler import Sampler
from serve_app.pipeline.task_start import initial_noise
from serve_app.schemas import GenerateRequest

BASE = "acestep-v15-tiny"
TURBO = "acestep-v15-turbo-tiny"
ALL_BRANCHES = [Branch.COND, Branch.UNCOND, Branch.TEXT_ONLY]
PEAK = 10 ** (-1 / 20)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("acestep_v15")
    for name in (BASE, TURBO):
        family.write_tiny_checkpoint(root / name, variant=name)
    return root


@pytest.fixture(scope="module")
def base(checkpoints):
    return family.load(checkpoints / BASE, device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def turbo(checkpoints):
    return family.load(checkpoints / TURBO, device=CPU, dtype=torch.float32)


def _noise(model, rows: int, duration: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, *model.latent_shape(duration), generator=generator)


# ------------------------------------------------------------------ checkpoints


def test_tiny_checkpoint_layout(checkpoints):
    path = checkpoints / BASE
    assert family.is_complete_checkpoint(path)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "AceStepPipeline"
    assert index["transformer"] == ["diffusers", "AceStepTransformer1DModel"]
    assert index["condition_encoder"] == ["ace_step", "AceStepConditionEncoder"]
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert index["tokenizer"][0] == "transformers"
    turbo_config = json.loads((checkpoints / TURBO / "transformer" / "config.json").read_text())
    base_config = json.loads((path / "transformer" / "config.json").read_text())
    assert turbo_config["is_turbo"] is True and base_config["is_turbo"] is False


def test_incomplete_checkpoint_detected(checkpoints, tmp_path):
    import shutil

    assert not family.is_complete_checkpoint(tmp_path / "missing")
    copy = tmp_path / "copy"
    shutil.copytree(checkpoints / BASE, copy)
    assert family.is_complete_checkpoint(copy)
    (copy / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    assert not family.is_complete_checkpoint(copy)


def test_registry_loads_tiny_models(tmp_path):
    for name, turbo in ((BASE, False), (TURBO, True)):
        model = load_model(name, "cpu", torch.float32, root=tmp_path)
        assert family.is_complete_checkpoint(tmp_path / name)
        assert model.family == "acestep_v15"
        assert model.is_turbo is turbo
        # Written as the real layout has it, turbo included: diffusers loads it off the meta device.
        assert model.has_null_condition
        encoder = AceStepConditionEncoder.from_pretrained(tmp_path / name / "condition_encoder")
        assert encoder.null_condition_emb.device.type == "cpu"


def test_model_attributes(base):
    assert base.sample_rate == 48000
    assert base.channels == 2
    assert base.guidance_norm_dims == (-2,)
    assert base.supported_erg == frozenset()
    # The tiny VAE strides 9600 samples per latent frame: 5 frames per second.
    assert base.latents_per_second == 5.0
    assert base.latent_shape(5.0) == (25, 8)
    assert base.latent_shape(2.1) == (11, 8)
    sigmas = base.noise_schedule.sigmas(8)
    assert sigmas.shape == (8,) and sigmas[0] == 1.0


# ------------------------------------------------------------- velocity/decode


@pytest.mark.parametrize("which", ["base", "turbo"])
def test_velocity_and_decode(which, request):
    model = request.getfixturevalue(which)
    duration = 2.5
    conditioning = model.encode(
        ["lofi beat", "rock"], ["[verse]\nhello", ""], [Branch.COND], ErgFlags(), duration_s=duration
    )
    latents = _noise(model, 2, duration)
    velocity = model.velocity(latents, torch.tensor([1.0, 0.4]), conditioning[Branch.COND])
    assert velocity.shape == latents.shape and velocity.dtype == torch.float32
    assert torch.isfinite(velocity).all()

    num_samples = int(duration * model.sample_rate)
    audio = model.decode(latents, num_samples)
    assert audio.shape == (2, 2, num_samples)
    assert audio.dtype == torch.float32 and audio.device.type == "cpu"
    peaks = audio.abs().amax(dim=(1, 2))
    assert (peaks <= PEAK + 1e-5).all() and (peaks > 0.1).all()


def test_decode_matches_pipeline_normalisation(base):
    latents = _noise(base, 2, 2.0, seed=3) * 4
    frames = latents.shape[1]
    raw = base.vae.decode(latents.transpose(1, 2)).sample
    peak = raw.abs().amax(dim=(1, 2), keepdim=True)
    expected = raw / peak.clamp(min=1.0)
    expected = expected * (PEAK / expected.abs().amax(dim=(1, 2), keepdim=True))
    audio = base.decode(latents, frames * base.hop_length)
    torch.testing.assert_close(audio, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="samples"):
        base.decode(latents, frames * base.hop_length + 1)


def test_euler_loop_matches_diffusers_pipeline(turbo):
    """Our velocity + the 1.5 schedule reproduce AceStepPipeline's own loop (turbo, no CFG)."""
    duration = 3.0
    latents = _noise(turbo, 1, duration, seed=7)
    sigmas = turbo.noise_schedule.sigmas(4).tolist() + [0.0]
    conditioning = turbo.encode(["ambient pads"], ["[chorus]\nsky"], [Branch.COND], ErgFlags(), duration_s=duration)
    x = latents.clone()
    for sigma, following in zip(sigmas[:-1], sigmas[1:]):
        x = x + (following - sigma) * turbo.velocity(x, torch.tensor([sigma]), conditioning[Branch.COND])
    expected = turbo.pipe(
        prompt="ambient pads",
        lyrics="[chorus]\nsky",
        audio_duration=duration,
        num_inference_steps=4,
        latents=latents.clone(),
        output_type="latent",
    ).audios
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [TURBO, BASE])
def test_a_request_without_sampling_fields_reproduces_the_diffusers_pipeline(name, checkpoints):
    """The planner's defaults, run by our sampler and pipeline, are AceStepPipeline's defaults.

    The reference is given only the prompt, the duration, the initial noise and the
    step count: its ``num_inference_steps=8`` is the turbo's count, while the base
    model's catalog default is the ≈50 steps its guided sampling is made for. Shift,
    a plain Euler step, APG (momentum, norm threshold) at guidance 7 on every step
    for base and no guidance for turbo all come from each side's own defaults.
    """
    planner = Planner(PresetBook.load(), served_models=[name], default_model=name)
    request = GenerateRequest(
        prompt="ambient pads", lyrics="[chorus]\nsky", audio_duration=2.0, actual_seeds=[7], bf16=False
    )
    params = planner.plan(request, "parity").params
    settings, items = params.batch_settings(), params.items()
    pipeline = MusicPipeline(name, CPU, models_root=checkpoints)
    model = pipeline.model(bf16=False)

    latents = Sampler(model)(settings, items).latents
    [output] = pipeline(settings, items).items

    final: dict[str, torch.Tensor] = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    noise = initial_noise(model, settings, [torch.Generator().manual_seed(7)])
    reference = model.pipe(
        prompt="ambient pads",
        lyrics="[chorus]\nsky",
        audio_duration=2.0,
        num_inference_steps=params.infer_step,
        latents=noise,
        callback_on_step_end=keep_latents,
    ).audios
    torch.testing.assert_close(latents, final["latents"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.waveform, reference[0, :, : output.waveform.shape[-1]], rtol=1e-4, atol=1e-5)


def test_cond_states_match_pipeline_encoding(base):
    pipe = base.pipe
    duration = 4.0
    text, text_mask, lyric, lyric_mask = pipe.encode_prompt(
        prompt=["bright synth pop"], lyrics=["[verse]\nla la"], device=CPU, audio_duration=duration
    )
    reference = pipe.condition_encoder.silence_latent[:, : math.ceil(30 * pipe.latents_per_second)]
    expected, _ = pipe.condition_encoder(
        text_hidden_states=text,
        text_attention_mask=text_mask,
        lyric_hidden_states=lyric,
        lyric_attention_mask=lyric_mask,
        refer_audio_acoustic_hidden_states_packed=reference,
        refer_audio_order_mask=torch.zeros(1, dtype=torch.long),
    )
    conditioning = base.encode(["bright synth pop"], ["[verse]\nla la"], [Branch.COND], ErgFlags(), duration_s=duration)
    cond = conditioning[Branch.COND]
    assert cond["encoder_attention_mask"].all()
    torch.testing.assert_close(cond["encoder_hidden_states"], expected)
    frames = base.latent_shape(duration)[0]
    silence, _ = pipe.prepare_src_latents(device=CPU, dtype=torch.float32, latent_length=frames)
    assert cond["context_latents"].shape == (1, frames, silence.shape[-1] + base.acoustic_dim)
    torch.testing.assert_close(cond["context_latents"][..., : silence.shape[-1]], silence)
    assert (cond["context_latents"][..., silence.shape[-1] :] == 1).all()


# ------------------------------------------------------------------- branches


def test_branches_differ_and_share_shapes(base):
    conditioning = base.encode(["jazz trio"], ["[verse]\nsome words here"], ALL_BRANCHES, ErgFlags(), duration_s=2.0)
    shapes = {branch: {k: v.shape for k, v in c.items()} for branch, c in conditioning.items()}
    assert shapes[Branch.COND] == shapes[Branch.UNCOND] == shapes[Branch.TEXT_ONLY]
    latents = _noise(base, 1, 2.0)
    sigma = torch.tensor([0.6])
    velocities = {b: base.velocity(latents, sigma, c) for b, c in conditioning.items()}
    assert not torch.allclose(velocities[Branch.UNCOND], velocities[Branch.COND], atol=1e-4)
    assert not torch.allclose(velocities[Branch.TEXT_ONLY], velocities[Branch.COND], atol=1e-4)
    uncond = conditioning[Branch.UNCOND]
    null = base.condition_encoder.null_condition_emb.reshape(-1)
    kept = uncond["encoder_attention_mask"][0]
    assert torch.equal(kept, conditioning[Branch.COND]["encoder_attention_mask"][0])
    assert torch.equal(uncond["encoder_hidden_states"][0, kept], null.expand(int(kept.sum()), -1))


def test_text_only_equals_cond_without_lyrics(base):
    conditioning = base.encode(["jazz trio"], [""], [Branch.COND, Branch.TEXT_ONLY], ErgFlags(), duration_s=2.0)
    for key, value in conditioning[Branch.COND].items():
        assert torch.equal(value, conditioning[Branch.TEXT_ONLY][key])


def test_turbo_without_null_condition_refuses_uncond():
    # A turbo checkpoint that ships no null_condition_emb (the tiny one on disk now has it).
    turbo = family.build_random(device=CPU, dtype=torch.float32, size="tiny", variant="turbo")
    assert turbo.has_null_condition is False
    with pytest.raises(ValueError, match="null_condition_emb"):
        turbo.encode(["x"], ["y"], [Branch.COND, Branch.UNCOND], ErgFlags(), duration_s=1.0)
    # COND and TEXT_ONLY stay available.
    conditioning = turbo.encode(["x"], ["y"], [Branch.COND, Branch.TEXT_ONLY], ErgFlags(), duration_s=1.0)
    assert set(conditioning) == {Branch.COND, Branch.TEXT_ONLY}


def test_encode_needs_duration(base):
    with pytest.raises(ValueError, match="duration_s"):
        base.encode(["x"], ["y"], [Branch.COND], ErgFlags())
    with pytest.raises(ValueError, match="latent length"):
        base.encode(["x", "y"], ["", ""], [Branch.COND], ErgFlags(), duration_s=[1.0, 3.0])


# ----------------------------------------------------------- batch invariance

ROWS = [
    ("soft piano", "[verse]\nshort"),
    ("a very long prompt: energetic drum and bass with heavy sub bass, female vocals", "[verse]\n" + "words " * 30),
    ("metal", ""),
]


def _stack(conditioning, branches):
    return {k: torch.cat([conditioning[b][k] for b in branches]) for k in conditioning[branches[0]]}


def test_batch_invariance(base):
    duration = 3.0
    prompts, lyrics = zip(*ROWS)
    batch = base.encode(list(prompts), list(lyrics), ALL_BRANCHES, ErgFlags(), duration_s=duration)
    latents = _noise(base, len(ROWS), duration, seed=11)
    sigmas = torch.tensor([0.9, 0.5, 0.2])
    rows = len(ROWS)
    batched = base.velocity(latents.repeat(3, 1, 1), sigmas.repeat(3), _stack(batch, ALL_BRANCHES)).split(rows)
    for index, (prompt, lyric) in enumerate(ROWS):
        alone = base.encode([prompt], [lyric], ALL_BRANCHES, ErgFlags(), duration_s=duration)
        for branch_index, branch in enumerate(ALL_BRANCHES):
            solo = alone[branch]
            used = int(solo["encoder_attention_mask"].sum())
            mask = batch[branch]["encoder_attention_mask"][index]
            assert mask[:used].all() and not mask[used:].any()
            torch.testing.assert_close(
                batch[branch]["encoder_hidden_states"][index, :used],
                solo["encoder_hidden_states"][0, :used],
                rtol=0,
                atol=0,
            )
            velocity = base.velocity(latents[index : index + 1], sigmas[index : index + 1], solo)
            torch.testing.assert_close(batched[branch_index][index : index + 1], velocity, rtol=1e-5, atol=1e-6)


def test_padding_would_leak_without_the_mask(base):
    """The guard above is meaningful: diffusers' forward (no encoder mask) sees the padding."""
    short, long = ROWS[0], ROWS[1]
    batch = base.encode([short[0], long[0]], [short[1], long[1]], [Branch.COND], ErgFlags(), duration_s=2.0)
    alone = base.encode([short[0]], [short[1]], [Branch.COND], ErgFlags(), duration_s=2.0)
    cond, solo = batch[Branch.COND], alone[Branch.COND]
    assert not cond["encoder_attention_mask"][0].all()
    latents = _noise(base, 1, 2.0)
    sigma = torch.tensor([0.5])

    def unmasked(c, row):
        return base.transformer(
            hidden_states=latents,
            timestep=sigma,
            timestep_r=sigma,
            encoder_hidden_states=c["encoder_hidden_states"][row : row + 1],
            context_latents=c["context_latents"][row : row + 1],
            return_dict=False,
        )[0]

    assert not torch.allclose(unmasked(cond, 0), unmasked(solo, 0), atol=1e-4)
    masked = {k: v[:1] for k, v in cond.items()}
    torch.testing.assert_close(base.velocity(latents, sigma, masked), base.velocity(latents, sigma, solo))
    # With nothing padded the masked denoiser is diffusers' forward.
    torch.testing.assert_close(base.velocity(latents, sigma, solo), unmasked(solo, 0), rtol=1e-5, atol=1e-6)


def test_per_row_durations_only_change_their_row(base):
    # 10.9 s and 11.0 s share a latent length but not the "duration: N seconds" metadata.
    both = base.encode(["a", "a"], ["", ""], [Branch.COND], ErgFlags(), duration_s=[10.9, 11.0])
    states = both[Branch.COND]["encoder_hidden_states"]
    for row, duration in enumerate((10.9, 11.0)):
        solo = base.encode(["a"], [""], [Branch.COND], ErgFlags(), duration_s=duration)
        torch.testing.assert_close(states[row : row + 1], solo[Branch.COND]["encoder_hidden_states"])
    assert not torch.allclose(states[0], states[1])
    assert both[Branch.COND]["context_latents"].shape[1] == base.latent_shape(11.0)[0]


# ------------------------------------------------------------------------- ERG


@pytest.mark.parametrize("flag", ["tag", "lyric", "diffusion"])
def test_erg_flags_raise(base, flag):
    with pytest.raises(ValueError, match=flag):
        base.encode(["x"], ["y"], [Branch.COND], ErgFlags(**{flag: True}), duration_s=1.0)


def test_erg_rows_raise(base):
    conditioning = base.encode(["x"], ["y"], [Branch.COND], ErgFlags(), duration_s=1.0)[Branch.COND]
    latents = _noise(base, 1, 1.0)
    base.velocity(latents, torch.tensor([0.5]), conditioning, erg_rows=torch.tensor([False]))
    with pytest.raises(ValueError, match="ERG"):
        base.velocity(latents, torch.tensor([0.5]), conditioning, erg_rows=torch.tensor([True]))


# -------------------------------------------------------------------- compile


def test_compiled_denoiser_is_built_lazily(checkpoints):
    model = family.load(checkpoints / TURBO, device=CPU, dtype=torch.float32)
    model.compile_options = {"backend": "eager"}
    assert model._compiled_denoiser is None
    conditioning = model.encode(["x"], ["y"], [Branch.COND], ErgFlags(), duration_s=1.0)[Branch.COND]
    latents = _noise(model, 1, 1.0)
    eager = model.velocity(latents, torch.tensor([0.5]), conditioning)
    compiled = model.velocity(latents, torch.tensor([0.5]), conditioning, compiled=True)
    assert model._compiled_denoiser is not None
    torch.testing.assert_close(compiled, eager)


def test_build_random_tiny():
    model = family.build_random(device=CPU, dtype=torch.float32, size="tiny", variant="turbo")
    assert model.is_turbo and not model.has_null_condition
    conditioning = model.encode(["x"], ["y"], [Branch.COND], ErgFlags(), duration_s=1.0)[Branch.COND]
    velocity = model.velocity(_noise(model, 1, 1.0), torch.tensor([1.0]), conditioning)
    assert torch.isfinite(velocity).all()


def test_build_random_full_has_xl_sizes():
    model = family.build_random(device="meta", dtype=torch.bfloat16, size="full", variant="base")
    dit = model.transformer.config
    assert (dit.hidden_size, dit.num_hidden_layers, dit.num_attention_heads, dit.encoder_hidden_size) == (
        2560,
        32,
        32,
        2048,
    )
    assert model.text_encoder.config.hidden_size == 1024
    assert model.latent_shape(10.0) == (250, 64)
    assert model.sample_rate == 48000 and not model.is_turbo
    parameters = sum(p.numel() for p in model.transformer.parameters())
    assert 4.0e9 < parameters < 4.4e9
