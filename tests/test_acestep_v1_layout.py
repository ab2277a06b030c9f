"""Our ACE-Step v1 DiT and prompt encoder have the official checkpoint's layout.

The expected parameter names and shapes are derived here, by rules written
from the official model definition (acestep/models/ace_step_transformer.py,
attention.py, customer_attention_processor.py), from the official config.json.
Nothing is read back from our own model to build them, so any drift in a
module name, a parameter shape or a config field fails this test. Our
full-size model is built on the meta device: no memory, no weights.

The Conformer under ``lyric_encoder.`` and the codec folders have their own
layout tests.
"""

from __future__ import annotations

import pytest
import torch

from serve_app.pipeline.acestep_v1 import erg
from serve_app.pipeline.acestep_v1.text_encoder import UMT5_BASE, UMT5TextEncoder
from serve_app.pipeline.acestep_v1.transformer import AceStepTransformer, TransformerConfig

# ace_step_transformer/config.json as published (acestep/models/config.json upstream).
OFFICIAL_CONFIG = {
    "_class_name": "Transformer2DModel",
    "_diffusers_version": "0.27.2",
    "in_channels": 8,
    "num_layers": 24,
    "inner_dim": 2560,
    "attention_head_dim": 128,
    "num_attention_heads": 20,
    "mlp_ratio": 2.5,
    "out_channels": 8,
    "max_position": 32768,
    "rope_theta": 1000000.0,
    "speaker_embedding_dim": 512,
    "text_embedding_dim": 768,
    "ssl_encoder_depths": [8, 8],
    "ssl_names": ["mert", "m-hubert"],
    "ssl_latent_dims": [1024, 768],
    "patch_size": [16, 1],
    "max_height": 16,
    "max_width": 32768,
    "lyric_encoder_vocab_size": 6693,
    "lyric_hidden_size": 1024,
}
# Sizes the official code fixes rather than reading from config.json.
TIMESTEP_CHANNELS = 256  # Timesteps(num_channels=256) feeding TimestepEmbedding
PATCH_EMBED_WIDTH_FACTOR = 256  # PatchEmbed's first conv: in_channels -> in_channels * 256
CONFORMER_LAYERS = 6
CONFORMER_WIDTH = 1024


def _linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.weight": (out_features, in_features)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_features,)
    return shapes


def expected_dit_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every official tensor outside ``lyric_encoder.`` with its shape."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    assert width == config["inner_dim"]
    hidden = int(width * config["mlp_ratio"])
    patch_h, patch_w = config["patch_size"]
    wide = config["in_channels"] * PATCH_EMBED_WIDTH_FACTOR
    shapes: dict[str, tuple[int, ...]] = {}

    for block in range(config["num_layers"]):
        prefix = f"transformer_blocks.{block}"
        shapes[f"{prefix}.scale_shift_table"] = (6, width)
        # Self-attention: diffusers Attention without added projections.
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes.update(_linear(f"{prefix}.attn.{name}", width, width))
        # Cross-attention: added_kv_proj_dim and context_pre_only=False add four projections.
        for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            shapes.update(_linear(f"{prefix}.cross_attn.{name}", width, width))
        # GLUMBConv: 1x1 conv to 2*hidden (bias), depthwise k=3 (bias), 1x1 conv back (no bias).
        shapes[f"{prefix}.ff.inverted_conv.conv.weight"] = (2 * hidden, width, 1)
        shapes[f"{prefix}.ff.inverted_conv.conv.bias"] = (2 * hidden,)
        shapes[f"{prefix}.ff.depth_conv.conv.weight"] = (2 * hidden, 1, 3)
        shapes[f"{prefix}.ff.depth_conv.conv.bias"] = (2 * hidden,)
        shapes[f"{prefix}.ff.point_conv.conv.weight"] = (width, hidden, 1)
        # norm1/norm2 are RMSNorm without affine parameters: nothing stored.

    shapes.update(_linear("timestep_embedder.linear_1", width, TIMESTEP_CHANNELS))
    shapes.update(_linear("timestep_embedder.linear_2", width, width))
    shapes.update(_linear("t_block.1", 6 * width, width))
    shapes.update(_linear("speaker_embedder", width, config["speaker_embedding_dim"]))
    shapes.update(_linear("genre_embedder", width, config["text_embedding_dim"]))
    shapes["lyric_embs.weight"] = (config["lyric_encoder_vocab_size"], config["lyric_hidden_size"])
    shapes.update(_linear("lyric_proj", width, CONFORMER_WIDTH))
    for index, ssl_dim in enumerate(config["ssl_latent_dims"]):
        shapes.update(_linear(f"projectors.{index}.0", 2 * width, width))
        shapes.update(_linear(f"projectors.{index}.2", 2 * width, 2 * width))
        shapes.update(_linear(f"projectors.{index}.4", ssl_dim, 2 * width))
    shapes["proj_in.early_conv_layers.0.weight"] = (wide, config["in_channels"], patch_h, patch_w)
    shapes["proj_in.early_conv_layers.0.bias"] = (wide,)
    shapes["proj_in.early_conv_layers.1.weight"] = (wide,)  # GroupNorm(32, wide)
    shapes["proj_in.early_conv_layers.1.bias"] = (wide,)
    shapes["proj_in.early_conv_layers.2.weight"] = (width, wide, 1, 1)
    shapes["proj_in.early_conv_layers.2.bias"] = (width,)
    shapes.update(_linear("final_layer.linear", patch_h * patch_w * config["out_channels"], width))
    shapes["final_layer.scale_shift_table"] = (2, width)
    # The rotary tables are non-persistent buffers upstream: not in the checkpoint.
    return shapes


@pytest.fixture(scope="module")
def full_dit():
    with torch.device("meta"):
        return AceStepTransformer(TransformerConfig.from_dict(OFFICIAL_CONFIG))


def test_official_config_round_trips():
    config = TransformerConfig.from_dict(OFFICIAL_CONFIG)
    assert config == TransformerConfig(), "the defaults are not the official config"
    written = config.to_dict()
    for key, value in OFFICIAL_CONFIG.items():
        if not key.startswith("_"):
            assert written[key] == value, key
    extra = set(written) - set(OFFICIAL_CONFIG)
    # Only the Conformer sizes the official code hard-codes (written for tiny models) and the class name.
    assert extra == {"lyric_encoder_attention_heads", "lyric_encoder_linear_units", "lyric_encoder_num_blocks"}
    assert (config.lyric_encoder_attention_heads, config.lyric_encoder_linear_units) == (16, 4096)
    assert config.lyric_encoder_num_blocks == CONFORMER_LAYERS
    assert written["_class_name"] == "ACEStepTransformer2DModel"


def test_full_size_dit_matches_the_official_tensors(full_dit):
    ours = {key: tuple(value.shape) for key, value in full_dit.state_dict().items()}
    expected = expected_dit_shapes(OFFICIAL_CONFIG)
    outside = {key: shape for key, shape in ours.items() if not key.startswith("lyric_encoder.")}
    missing = sorted(set(expected) - set(outside))
    unexpected = sorted(set(outside) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {key: (outside[key], shape) for key, shape in expected.items() if outside[key] != shape}
    assert not wrong, wrong
    assert all(value.dtype == torch.float32 for value in full_dit.state_dict().values())


def test_full_size_dit_holds_the_official_lyric_encoder(full_dit):
    keys = full_dit.state_dict()
    encoder_layers = {key.split(".")[2] for key in keys if key.startswith("lyric_encoder.encoders.")}
    assert encoder_layers == {str(i) for i in range(CONFORMER_LAYERS)}
    for layer in erg.LYRIC_ENCODER_LAYERS:  # the ERG hook points
        assert keys[f"lyric_encoder.encoders.{layer}.self_attn.linear_q.weight"].shape == (
            CONFORMER_WIDTH,
            CONFORMER_WIDTH,
        )


def test_full_size_dit_parameter_count(full_dit):
    # The 3.5B of the name counts the DiT (with its Conformer), UMT5 and the codec.
    parameters = sum(value.numel() for value in full_dit.parameters())
    assert 3.2e9 < parameters < 3.4e9


def test_erg_layers_exist_in_the_official_sizes(full_dit):
    assert erg.DIFFUSION_BLOCKS.stop <= OFFICIAL_CONFIG["num_layers"]
    for block in erg.DIFFUSION_BLOCKS:
        assert hasattr(full_dit.transformer_blocks[block].attn, "to_q")
        assert hasattr(full_dit.transformer_blocks[block].cross_attn, "to_q")


def test_umt5_base_text_encoder_layout():
    """umt5-base/: google/umt5-base's encoder; its width is the DiT's text_embedding_dim."""
    encoder = UMT5TextEncoder.build_random(size="full", device="meta", dtype=torch.float32)
    config = encoder.model.config
    assert config.model_type == "umt5"
    assert config.d_model == OFFICIAL_CONFIG["text_embedding_dim"] == 768
    assert (config.num_layers, config.num_heads, config.d_kv, config.d_ff) == (12, 12, 64, 2048)
    assert config.vocab_size == UMT5_BASE["vocab_size"] == 256384
    assert config.feed_forward_proj == "gated-gelu"
    keys = encoder.model.state_dict()
    for block in erg.TEXT_ENCODER_BLOCKS:  # the ERG hook points
        assert keys[f"encoder.block.{block}.layer.0.SelfAttention.q.weight"].shape == (768, 768)
    # UMT5 (unlike T5) gives every block its own relative position bias.
    assert keys["encoder.block.11.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (32, 12)
