"""The prompt encoder of ACE-Step v1: UMT5's encoder and tokenizer from ``umt5-base/``.

A prompt is tokenised on its own (no padding, at most ``MAX_TOKENS`` tokens
with the closing ``</s>``), exactly as the official pipeline encodes a batch
of one, and encoded to ``(1, T, d_model)`` states. ``weaken=True`` is ERG on
the prompt: the query projections of ``erg.TEXT_ENCODER_BLOCKS`` are scaled
by ``erg.TAU``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import erg

FOLDER = "umt5-base"
MAX_TOKENS = 256

UMT5_BASE = {
    "vocab_size": 256384,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
"""google/umt5-base, the encoder ACE-Step v1 ships in ``umt5-base/``."""

TINY_UMT5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": erg.TEXT_ENCODER_BLOCKS.stop,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
"""Just deep enough for the ERG blocks to exist."""

_TINY_WORDS = [
    "rock",
    "pop",
    "jazz",
    "piano",
    "guitar",
    "drums",
    "bass",
    "synth",
    "vocal",
    "female",
    "male",
    "lofi",
    "hip",
    "hop",
    "ambient",
    "electronic",
    "dance",
    "slow",
    "fast",
    "happy",
    "sad",
    "acoustic",
    "beat",
    "melody",
    "chorus",
    "verse",
    "bright",
    "dark",
    "soft",
    "loud",
    "bpm",
]


def build_tiny_tokenizer():
    """A small UMT5-style (Unigram, ``</s>``-terminated) tokenizer built locally:
    special tokens, single characters as a fallback, and a few music words."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(char, -5.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789,.-'"]
    pieces += [("\u2581" + word, -1.0) for word in _TINY_WORDS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


class UMT5TextEncoder:
    """Tokenizer and UMT5 encoder, evaluated one prompt at a time."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @classmethod
    def from_pretrained(cls, folder: Path, *, device: torch.device, dtype: torch.dtype) -> UMT5TextEncoder:
        from transformers import AutoTokenizer, UMT5EncoderModel

        model, info = UMT5EncoderModel.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
        if info["missing_keys"]:
            # transformers would fill them with random values; a text encoder with holes is a broken checkpoint.
            missing = ", ".join(sorted(info["missing_keys"])[:5])
            raise ValueError(f"{folder} lacks text encoder weights ({missing}, ...)")
        return cls(model.to(device), AutoTokenizer.from_pretrained(str(folder)))

    @classmethod
    def build_random(cls, *, size: str, device, dtype) -> UMT5TextEncoder:
        """Random weights: ``size`` "tiny" or "full" (umt5-base). Both use the tiny tokenizer,
        since the real vocabulary cannot be built offline."""
        from transformers import UMT5Config, UMT5EncoderModel

        tokenizer = build_tiny_tokenizer()
        if size == "full":
            config = UMT5Config(**UMT5_BASE)
        elif size == "tiny":
            config = UMT5Config(vocab_size=len(tokenizer), **TINY_UMT5)
        else:
            raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
        with torch.device(device):
            model = UMT5EncoderModel(config)
        return cls(model.to(dtype=dtype), tokenizer)

    def save_pretrained(self, folder: Path) -> None:
        self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))

    def token_ids(self, prompt: str) -> torch.Tensor:
        encoded = self.tokenizer(prompt, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return encoded.input_ids.to(self.device)

    @torch.no_grad()
    def encode(self, prompt: str, weaken: bool = False) -> torch.Tensor:
        """States ``(1, T, d_model)`` of one prompt; ``weaken`` applies ERG."""
        ids = self.token_ids(prompt)
        mask = torch.ones_like(ids)
        if not weaken:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        blocks = self.model.encoder.block
        erg.check_depth(erg.TEXT_ENCODER_BLOCKS, len(blocks), "the text encoder")
        with erg.scaled_outputs(blocks[i].layer[0].SelfAttention.q for i in erg.TEXT_ENCODER_BLOCKS):
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state
