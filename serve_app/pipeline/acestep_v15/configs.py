"""Component configurations for ACE-Step 1.5: the real XL sizes and a tiny test size.

Plain data only (no torch import), so the package stays cheap to import.

XL sizes come from the published model cards: a 32-layer DiT of width 2560
(32 query heads, 8 key/value heads, head dim 128, MLP 9728) fed by a condition
encoder of width 2048 (8 lyric layers, 4 timbre layers), a Qwen3-Embedding-0.6B
text encoder (width 1024, 28 layers) and the Oobleck VAE at 48 kHz with a total
stride of 1920 (25 latent frames per second, 64 channels).
"""

from __future__ import annotations

from typing import Any

TURBO = "turbo"
BASE = "base"

# Special tokens the prompt templates rely on; `<|endoftext|>` closes both the
# caption and the lyric strings and doubles as the padding token.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def variant_of(name: str) -> str:
    """``turbo`` for guidance-distilled names, ``base`` for guided ones."""
    return TURBO if "turbo" in name.lower() else BASE


def transformer_config(size: str, variant: str) -> dict[str, Any]:
    turbo = variant == TURBO
    common = {"is_turbo": turbo, "model_version": variant}
    if size == "full":
        return {
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "in_channels": 192,
            "audio_acoustic_hidden_dim": 64,
            "patch_size": 2,
            "rope_theta": 1000000.0,
            "sliding_window": 128,
            "encoder_hidden_size": 2048,
            **common,
        }
    if size == "tiny":
        # Context = silence latent (timbre width 8) + chunk mask (8) + noisy latent (8).
        return {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "in_channels": 24,
            "audio_acoustic_hidden_dim": 8,
            "patch_size": 2,
            "rope_theta": 1000000.0,
            "sliding_window": 4,
            # Narrower than the DiT, like XL, so the condition projection is exercised.
            "encoder_hidden_size": 24,
            **common,
        }
    raise ValueError(f"unknown size {size!r}; expected 'tiny' or 'full'")


def condition_encoder_config(size: str) -> dict[str, Any]:
    if size == "full":
        return {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "text_hidden_dim": 1024,
            "timbre_hidden_dim": 64,
            "num_lyric_encoder_hidden_layers": 8,
            "num_timbre_encoder_hidden_layers": 4,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "rope_theta": 1000000.0,
            "sliding_window": 128,
        }
    if size == "tiny":
        return {
            "hidden_size": 24,
            "intermediate_size": 48,
            "text_hidden_dim": 16,
            "timbre_hidden_dim": 8,
            "num_lyric_encoder_hidden_layers": 2,
            "num_timbre_encoder_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "rope_theta": 1000000.0,
            "sliding_window": 8,
        }
    raise ValueError(f"unknown size {size!r}; expected 'tiny' or 'full'")


def text_encoder_config(size: str, vocab_size: int) -> dict[str, Any]:
    if size == "full":
        return {
            "vocab_size": max(vocab_size, 151669),
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        }
    if size == "tiny":
        return {
            "vocab_size": vocab_size,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 4096,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        }
    raise ValueError(f"unknown size {size!r}; expected 'tiny' or 'full'")


def vae_config(size: str) -> dict[str, Any]:
    if size == "full":
        return {
            "encoder_hidden_size": 128,
            "downsampling_ratios": [2, 4, 4, 6, 10],
            "channel_multiples": [1, 2, 4, 8, 16],
            "decoder_channels": 128,
            "decoder_input_channels": 64,
            "audio_channels": 2,
            "sampling_rate": 48000,
        }
    if size == "tiny":
        # Total stride 9600: 5 latent frames per second at 48 kHz.
        return {
            "encoder_hidden_size": 16,
            "downsampling_ratios": [4, 8, 10, 30],
            "channel_multiples": [1, 2, 2, 4],
            "decoder_channels": 4,
            "decoder_input_channels": 8,
            "audio_channels": 2,
            "sampling_rate": 48000,
        }
    raise ValueError(f"unknown size {size!r}; expected 'tiny' or 'full'")


def audio_tokenizer_configs(size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The 5 Hz audio tokenizer and its detokenizer (cover's source conditioning); the
    detokenizer reads the tokenizer's quantized width, so both share ``hidden_size``."""
    if size == "full":
        return {}, {}  # diffusers' defaults are the released sizes (width 2048, 64 channels)
    if size == "tiny":
        shared = {
            "hidden_size": 24,
            "intermediate_size": 48,
            "audio_acoustic_hidden_dim": 8,
            "pool_window_size": 5,
            "num_attention_pooler_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "sliding_window": 8,
        }
        return {**shared, "fsq_dim": 24}, shared
    raise ValueError(f"unknown size {size!r}; expected 'tiny' or 'full'")


SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1, "shift": 1.0}
