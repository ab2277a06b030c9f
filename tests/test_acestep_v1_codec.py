"""ACE-Step v1 audio codec: the official folder layout, and tiny checkpoints written in it that
decode to exactly the requested length of 48 kHz stereo."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_app.pipeline.acestep_v1 import codec
from serve_app.pipeline.acestep_v1.vocoder import (
    HiFiGANVocoder,
    VocoderConfig,
    WeightNormConv1d,
    WeightNormConvTranspose1d,
    checkpoint_to_state_dict,
)

# `music_vocoder/config.json` of ACE-Step/ACE-Step-v1-3.5B: the arguments upstream's
# ADaMoSHiFiGANV1 registers (its defaults are these values, and published copies of the file agree).
OFFICIAL_VOCODER_CONFIG = {
    "input_channels": 128,
    "depths": [3, 3, 9, 3],
    "dims": [128, 256, 384, 512],
    "drop_path_rate": 0.0,
    "kernel_sizes": [7],
    "upsample_rates": [4, 4, 2, 2, 2, 2, 2],
    "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11, 13],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_mels": 512,
    "upsample_initial_channel": 1024,
    "use_template": False,
    "pre_conv_kernel_size": 13,
    "post_conv_kernel_size": 13,
    "sampling_rate": 44100,
    "n_fft": 2048,
    "win_length": 2048,
    "hop_length": 512,
    "f_min": 40,
    "f_max": 16000,
    "n_mels": 128,
}

# `music_dcae_f8c8/config.json` (diffusers AutoencoderDC, saved by diffusers 0.32.2).
OFFICIAL_DCAE_CONFIG = {
    "in_channels": 2,
    "latent_channels": 8,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
    "encoder_block_out_channels": [128, 256, 512, 1024],
    "decoder_block_out_channels": [128, 256, 512, 1024],
    "encoder_layers_per_block": [2, 2, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [5], [5]],
    "upsample_block_type": "interpolate",
    "downsample_block_type": "Conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}


def official_vocoder_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of upstream's ADaMoSHiFiGANV1 state dict for `config`, by the rules of its modules.

    ConvNeXtEncoder: `channel_layers.0` = (stem Conv1d k=7, LayerNorm); `channel_layers.i` =
    (LayerNorm, 1x1 Conv1d) between widths; `stages.i.j` ConvNeXt blocks (depthwise conv, LayerNorm,
    Linear x4, Linear back, layer scale `gamma`); final `norm`. HiFiGANGenerator: legacy weight norm
    (`weight_g` is (dim0, 1, 1): out channels of a Conv1d, in channels of a ConvTranspose1d);
    `conv_pre`, `ups.i`, stage-major `resblocks.(i * kernels + k)` each with 3 `convs1` and 3
    `convs2`, `conv_post` to one channel. LogMelSpectrogram buffers: Hann window, mel filter bank.
    """
    tensors: dict[str, tuple[int, ...]] = {}

    def conv(name, out_ch, in_ch, kernel):
        tensors[f"{name}.weight"] = (out_ch, in_ch, kernel)
        tensors[f"{name}.bias"] = (out_ch,)

    def norm(name, dim):
        tensors[f"{name}.weight"] = (dim,)
        tensors[f"{name}.bias"] = (dim,)

    def weight_normed(name, dim0, dim1, kernel, out_ch):
        tensors[f"{name}.weight_g"] = (dim0, 1, 1)
        tensors[f"{name}.weight_v"] = (dim0, dim1, kernel)
        tensors[f"{name}.bias"] = (out_ch,)

    dims = config["dims"]
    conv("backbone.channel_layers.0.0", dims[0], config["input_channels"], 7)
    norm("backbone.channel_layers.0.1", dims[0])
    for i in range(1, len(dims)):
        norm(f"backbone.channel_layers.{i}.0", dims[i - 1])
        conv(f"backbone.channel_layers.{i}.1", dims[i], dims[i - 1], 1)
    for i, (dim, depth) in enumerate(zip(dims, config["depths"])):
        for j in range(depth):
            block = f"backbone.stages.{i}.{j}"
            conv(f"{block}.dwconv", dim, 1, config["kernel_sizes"][0])
            norm(f"{block}.norm", dim)
            tensors[f"{block}.pwconv1.weight"] = (4 * dim, dim)
            tensors[f"{block}.pwconv1.bias"] = (4 * dim,)
            tensors[f"{block}.pwconv2.weight"] = (dim, 4 * dim)
            tensors[f"{block}.pwconv2.bias"] = (dim,)
            tensors[f"{block}.gamma"] = (dim,)
    norm("backbone.norm", dims[-1])

    width = config["upsample_initial_channel"]
    weight_normed("head.conv_pre", width, config["num_mels"], config["pre_conv_kernel_size"], width)
    kernels = config["resblock_kernel_sizes"]
    for i, kernel in enumerate(config["upsample_kernel_sizes"]):
        in_ch, out_ch = width // 2**i, width // 2 ** (i + 1)
        weight_normed(f"head.ups.{i}", in_ch, out_ch, kernel, out_ch)
        for k, resblock_kernel in enumerate(kernels):
            for convs in ("convs1", "convs2"):
                for m in range(3):
                    name = f"head.resblocks.{i * len(kernels) + k}.{convs}.{m}"
                    weight_normed(name, out_ch, out_ch, resblock_kernel, out_ch)
    last = width // 2 ** len(config["upsample_rates"])
    weight_normed("head.conv_post", 1, last, config["post_conv_kernel_size"], 1)

    tensors["mel_transform.spectrogram.window"] = (config["win_length"],)
    tensors["mel_transform.mel_scale.fb"] = (config["n_fft"] // 2 + 1, config["n_mels"])
    return tensors


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _without_encode_only(tensors: dict) -> dict:
    return {key: value for key, value in tensors.items() if not key.startswith("mel_transform.")}


def _latents(batch: int, duration_s: float, seed: int = 0) -> tuple[torch.Tensor, int]:
    generator = torch.Generator().manual_seed(seed)
    shape = codec.latent_shape(duration_s)
    return torch.randn(batch, *shape, generator=generator), round(duration_s * codec.OUTPUT_SAMPLE_RATE)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("acestep_v1_codec")
    codec.write_tiny_codec(path)
    return path


@pytest.fixture(scope="module")
def tiny_codec(tiny_dir):
    return codec.MusicCodec.from_pretrained(tiny_dir, device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------------------------ layout


def test_vocoder_config_has_the_official_fields_and_values():
    assert VocoderConfig().to_dict() == OFFICIAL_VOCODER_CONFIG
    on_disk = {"_class_name": "ADaMoSHiFiGANV1", "_diffusers_version": "0.32.2", **OFFICIAL_VOCODER_CONFIG}
    assert VocoderConfig.from_dict(on_disk) == VocoderConfig()
    with pytest.raises(ValueError, match="unknown vocoder config fields"):
        VocoderConfig.from_dict({**OFFICIAL_VOCODER_CONFIG, "snake_activation": True})


def test_full_vocoder_has_the_official_parameter_names_and_shapes():
    expected = official_vocoder_tensors(OFFICIAL_VOCODER_CONFIG)
    with torch.device("meta"):
        vocoder = HiFiGANVocoder(VocoderConfig.from_dict(OFFICIAL_VOCODER_CONFIG))
    assert _shapes(vocoder.state_dict()) == _without_encode_only(expected)

    # The loader takes the whole official file, encode-only buffers included ...
    official_file = {key: torch.empty(shape, device="meta") for key, shape in expected.items()}
    assert _shapes(checkpoint_to_state_dict(official_file)) == _without_encode_only(expected)
    # ... and copies re-saved through torch.nn.utils.parametrizations.weight_norm.
    renamed = {
        key.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1"
        ): value
        for key, value in official_file.items()
    }
    assert _shapes(checkpoint_to_state_dict(renamed)) == _without_encode_only(expected)


def test_full_dcae_config_is_the_official_one_with_the_v1_latent_geometry():
    from diffusers import AutoencoderDC

    assert codec.FULL_DCAE_CONFIG == OFFICIAL_DCAE_CONFIG
    with torch.device("meta"):
        dcae = AutoencoderDC(**codec.FULL_DCAE_CONFIG)
        vocoder = HiFiGANVocoder(codec.FULL_VOCODER_CONFIG)
        mel = dcae.decoder(torch.empty(1, 8, 16, 5))
        wave = vocoder(mel[0])
    assert tuple(mel.shape) == (1, 2, 128, 40)  # stereo, 128 bins, 8 mel frames per latent frame
    assert tuple(wave.shape) == (2, 1, 40 * 512)  # one hop of 512 samples per mel frame


def test_tiny_files_use_the_official_layout(tiny_dir):
    dcae_config = json.loads((tiny_dir / "music_dcae_f8c8" / "config.json").read_text())
    assert dcae_config["_class_name"] == "AutoencoderDC"
    assert OFFICIAL_DCAE_CONFIG.keys() <= dcae_config.keys()
    assert (dcae_config["in_channels"], dcae_config["latent_channels"]) == (2, 8)
    assert len(dcae_config["decoder_block_out_channels"]) == 4  # 8x compression, as the official DCAE

    vocoder_config = json.loads((tiny_dir / "music_vocoder" / "config.json").read_text())
    assert vocoder_config.pop("_class_name") == "ADaMoSHiFiGANV1"
    vocoder_config.pop("_diffusers_version")
    assert vocoder_config.keys() == OFFICIAL_VOCODER_CONFIG.keys()
    weights = load_file(tiny_dir / "music_vocoder" / "diffusion_pytorch_model.safetensors")
    assert _shapes(weights) == official_vocoder_tensors(vocoder_config)
    assert codec.is_complete_codec(tiny_dir)


# ------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    ("ours", "plain", "shape"),
    [
        (WeightNormConv1d, torch.nn.Conv1d, dict(in_channels=6, out_channels=4, kernel_size=5, dilation=3, padding=6)),
        (
            WeightNormConvTranspose1d,
            torch.nn.ConvTranspose1d,
            dict(in_channels=8, out_channels=4, kernel_size=8, stride=4, padding=2),
        ),
    ],
)
def test_weight_normed_convolutions_compute_what_torch_weight_norm_computes(ours, plain, shape):
    torch.manual_seed(0)
    conv = ours(**shape)
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)  # a magnitude that is not ||weight_v||
    reference = torch.nn.utils.parametrizations.weight_norm(plain(**shape))
    reference.load_state_dict(conv.state_dict())  # torch maps the legacy weight_g / weight_v names itself
    x = torch.randn(2, conv.in_channels, 50)
    torch.testing.assert_close(conv(x), reference(x))


def test_one_pass_decode_unscales_denormalises_vocodes_and_resamples(tiny_codec):
    import torchaudio

    latents, num_samples = _latents(batch=1, duration_s=1.0, seed=5)
    with torch.inference_mode():
        mel = tiny_codec.dcae.decoder(latents / 0.1786 - 1.9091)  # DiT latent space -> DCAE latent space
        log_mel = (mel + 1) / 2 * 14 - 11  # [-1, 1] -> [-11, 3]
        wave = tiny_codec.vocoder(log_mel[0])[:, 0]  # the two channels as a batch of two mono mels
    expected = torchaudio.functional.resample(wave, 44100, 48000)[:, :num_samples]
    torch.testing.assert_close(tiny_codec.decode(latents, num_samples)[0], expected, rtol=0, atol=1e-5)


def test_tiny_codec_decodes_exact_length_48k_stereo(tiny_codec):
    latents, num_samples = _latents(batch=2, duration_s=1.5)
    audio = tiny_codec.decode(latents, num_samples)

    assert (tiny_codec.output_sample_rate, tiny_codec.channels) == (48000, 2)
    assert audio.shape == (2, 2, num_samples) and num_samples == 72000
    assert audio.dtype == torch.float32 and audio.device.type == "cpu"
    assert torch.isfinite(audio).all()
    assert (audio.std(dim=-1) > 0).all()  # every item and channel carries signal
    assert not torch.allclose(audio[0], audio[1])
    assert not torch.allclose(audio[:, 0], audio[:, 1])  # two channels, not one copied


def test_items_decode_independently_of_their_batch(tiny_codec):
    latents, num_samples = _latents(batch=3, duration_s=1.0, seed=1)
    together = tiny_codec.decode(latents, num_samples)
    for index in range(3):
        alone = tiny_codec.decode(latents[index : index + 1], num_samples)
        assert torch.equal(alone[0], together[index])


@pytest.mark.parametrize("duration_s", [0.05, 1.0, 10.0, 29.97, 240.0])
def test_latent_frames_cover_the_duration_with_nothing_to_spare(duration_s):
    num_samples = round(duration_s * 48000)
    frames = codec.latent_frames(duration_s)
    assert codec.latent_shape(duration_s) == (8, 16, frames)
    assert codec.max_num_samples(frames) >= num_samples > codec.max_num_samples(frames - 1)


def test_decode_rejects_bad_input_with_the_reason(tiny_codec):
    latents, num_samples = _latents(batch=1, duration_s=1.0)
    with pytest.raises(ValueError, match="fewer than"):
        tiny_codec.decode(latents, codec.max_num_samples(latents.shape[-1]) + 1)
    with pytest.raises(ValueError, match=r"\(batch>0, 8, 16, frames>0\)"):
        tiny_codec.decode(latents[:, :4], num_samples)
    with pytest.raises(ValueError, match="positive int"):
        tiny_codec.decode(latents, 0)


def test_bfloat16_codec_returns_float32_close_to_float32(tiny_dir, tiny_codec):
    half = codec.MusicCodec.from_pretrained(tiny_dir, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    latents, num_samples = _latents(batch=1, duration_s=1.0, seed=2)
    reference = tiny_codec.decode(latents, num_samples)
    audio = half.decode(latents, num_samples)
    assert audio.dtype == torch.float32 and audio.shape == reference.shape
    # bf16 keeps 8 significant bits, so each of the ~20 layers adds ~0.4% relative noise.
    relative_error = (audio - reference).norm() / reference.norm()
    assert relative_error < 0.05


def test_random_codec_builds_without_files():
    random_codec = codec.build_random_codec(size="tiny", device="cpu", dtype=torch.float32)
    latents, num_samples = _latents(batch=1, duration_s=0.5)
    assert random_codec.decode(latents, num_samples).shape == (1, 2, num_samples)
    with pytest.raises(ValueError, match="size must be one of"):
        codec.build_random_codec(size="huge", device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------------------------ long audio


@pytest.mark.parametrize(
    ("frames", "windows"),
    [
        (300, [(0, 300, 0, 300)]),
        (512, [(0, 512, 0, 512)]),
        (513, [(0, 512, 0, 384), (256, 513, 384, 513)]),
        (1100, [(0, 512, 0, 384), (256, 768, 384, 640), (512, 1024, 640, 896), (768, 1100, 896, 1100)]),
    ],
)
def test_overlapped_dcae_windows(frames, windows):
    assert codec.dcae_windows(frames) == windows


def test_overlapped_dcae_windows_tile_every_length():
    for frames in range(1, 3000):
        windows = codec.dcae_windows(frames)
        kept = [(keep_start, keep_end) for _, _, keep_start, keep_end in windows]
        assert kept[0][0] == 0 and kept[-1][1] == frames
        assert all(previous[1] == following[0] for previous, following in zip(kept, kept[1:]))
        assert all(end - start <= codec.DCAE_WINDOW for start, end, _, _ in windows)


def test_overlapped_dcae_keeps_the_middle_of_each_window(tiny_codec):
    z = torch.randn(1, 8, 16, 700, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        mel = tiny_codec._mel_overlapped(z)
        first = tiny_codec.dcae.decoder(z[..., 0:512])
        second = tiny_codec.dcae.decoder(z[..., 256:700])
    assert torch.equal(mel, torch.cat([first[..., : 384 * 8], second[..., 128 * 8 :]], dim=-1))


def test_overlapped_vocoder_crossfades_consecutive_blocks(tiny_codec):
    mel = torch.randn(2, 128, 600, generator=torch.Generator().manual_seed(4)) * 2 - 4
    assert codec.vocoder_blocks(600) == [0, 508]
    with torch.inference_mode():
        wave = tiny_codec._wave_overlapped(mel)
        first = tiny_codec.vocoder(mel[..., 0:512])[:, 0]
        second = tiny_codec.vocoder(torch.nn.functional.pad(mel[..., 508:600], (0, 420)))[:, 0]
    seam = 508 * 512 + 1024  # first sample the second block owns
    ramp = torch.linspace(0, 1, 128)
    assert wave.shape == (2, 508 * 512 + 512 * 512)
    assert torch.equal(wave[:, : seam - 128], first[:, : seam - 128])
    crossfade = first[:, seam - 128 : seam] * (1 - ramp) + second[:, 1024 - 128 : 1024] * ramp
    torch.testing.assert_close(wave[:, seam - 128 : seam], crossfade, rtol=0, atol=1e-7)
    assert torch.equal(wave[:, seam:], second[:, 1024:])


def test_long_audio_takes_the_overlapped_path_and_keeps_its_length(tiny_codec, monkeypatch):
    calls = []
    original = codec.MusicCodec._mel_overlapped
    monkeypatch.setattr(codec.MusicCodec, "_mel_overlapped", lambda self, z: calls.append(z.shape) or original(self, z))

    short_latents, short_samples = _latents(batch=1, duration_s=2.0)
    tiny_codec.decode(short_latents, short_samples)
    assert calls == []

    latents, num_samples = _latents(batch=1, duration_s=50.0)
    audio = tiny_codec.decode(latents, num_samples)
    assert len(calls) == 1
    assert audio.shape == (1, 2, 50 * 48000) and torch.isfinite(audio).all()


# ------------------------------------------------------------------------------------ loading


def _copy(tiny_dir, tmp_path):
    target = tmp_path / "checkpoint"
    shutil.copytree(tiny_dir, target)
    return target


def _rewrite_vocoder_weights(folder, edit):
    path = folder / "music_vocoder" / "diffusion_pytorch_model.safetensors"
    save_file(edit(load_file(path)), path)


def test_missing_codec_file_is_reported(tiny_dir, tmp_path):
    checkpoint = _copy(tiny_dir, tmp_path)
    (checkpoint / "music_vocoder" / "diffusion_pytorch_model.safetensors").unlink()
    assert not codec.is_complete_codec(checkpoint)
    with pytest.raises(FileNotFoundError, match="music_vocoder"):
        codec.MusicCodec.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda weights: {k: v for k, v in weights.items() if k != "head.conv_post.weight_g"}, "conv_post.weight_g"),
        (lambda weights: {**weights, "head.extra.weight": torch.zeros(1)}, "head.extra.weight"),
    ],
)
def test_every_vocoder_tensor_must_match(tiny_dir, tmp_path, edit, message):
    checkpoint = _copy(tiny_dir, tmp_path)
    _rewrite_vocoder_weights(checkpoint, edit)
    with pytest.raises(RuntimeError, match=message):
        codec.MusicCodec.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)


def test_parametrization_named_weights_decode_the_same(tiny_dir, tiny_codec, tmp_path):
    checkpoint = _copy(tiny_dir, tmp_path)
    _rewrite_vocoder_weights(
        checkpoint,
        lambda weights: {
            key.replace("weight_g", "parametrizations.weight.original0").replace(
                "weight_v", "parametrizations.weight.original1"
            ): value
            for key, value in weights.items()
        },
    )
    renamed = codec.MusicCodec.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)
    latents, num_samples = _latents(batch=1, duration_s=0.5)
    assert torch.equal(renamed.decode(latents, num_samples), tiny_codec.decode(latents, num_samples))


def test_swapped_folders_are_refused(tiny_dir, tmp_path):
    checkpoint = _copy(tiny_dir, tmp_path)
    dcae, vocoder = checkpoint / "music_dcae_f8c8", checkpoint / "music_vocoder"
    dcae.rename(checkpoint / "swap")
    vocoder.rename(dcae)
    (checkpoint / "swap").rename(vocoder)
    with pytest.raises(ValueError, match="describes a ADaMoSHiFiGANV1, expected AutoencoderDC"):
        codec.MusicCodec.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)
