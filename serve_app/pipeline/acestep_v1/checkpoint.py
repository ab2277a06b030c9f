"""The official checkpoint folder: completeness check, transformer loading, tiny writer.

Layout (``ACE-Step/ACE-Step-v1-3.5B``)::

    ace_step_transformer/   config.json + diffusion_pytorch_model.safetensors (or shards + index)
    umt5-base/              UMT5 encoder config + weights, tokenizer files
    music_dcae_f8c8/        the codec's DCAE (see codec.py)
    music_vocoder/          the codec's vocoder (see codec.py)

A tiny checkpoint is the same layout with tiny random weights, plus a tiny
lyric vocabulary where ``lyrics.resolve_vocab`` looks for one.

Importing this module is cheap: torch and the model code load on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint_files import has_weights, weight_files

if TYPE_CHECKING:
    import torch

    from .transformer import AceStepTransformer, TransformerConfig

TRANSFORMER_FOLDER = "ace_step_transformer"
TEXT_ENCODER_FOLDER = "umt5-base"
CONFIG_NAME = "config.json"
TRANSFORMER_WEIGHTS = "diffusion_pytorch_model.safetensors"

_TOKENIZER_VOCABS = ("tokenizer.json", "spiece.model")
_TEXT_ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


# ------------------------------------------------------------------ completeness


def _transformer_complete(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and weight_files(folder, TRANSFORMER_WEIGHTS) is not None


def _text_encoder_complete(folder: Path) -> bool:
    weights = has_weights(folder, _TEXT_ENCODER_WEIGHTS)
    has_tokenizer = (folder / "tokenizer_config.json").is_file() and any(
        (folder / name).is_file() for name in _TOKENIZER_VOCABS
    )
    return (folder / CONFIG_NAME).is_file() and weights and has_tokenizer


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds every folder of the official layout with its weights.

    The lyric vocabulary is not checked: the hub repository does not ship it,
    and ``lyrics.resolve_vocab`` finds or fetches it when the model loads.
    """
    from .codec import is_complete_codec

    path = Path(path)
    return (
        _transformer_complete(path / TRANSFORMER_FOLDER)
        and _text_encoder_complete(path / TEXT_ENCODER_FOLDER)
        and is_complete_codec(path)
    )


# ------------------------------------------------------------------- transformer

TINY_TRANSFORMER = {
    "num_layers": 20,  # blocks 15-19 must exist for ERG on diffusion
    "inner_dim": 32,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "speaker_embedding_dim": 16,
    "ssl_latent_dims": [16, 12],
    "lyric_hidden_size": 32,
    "lyric_encoder_attention_heads": 2,
    "lyric_encoder_linear_units": 64,
    "lyric_encoder_num_blocks": 6,  # layers 4-5 must exist for ERG on lyrics
}


def transformer_config(size: str, *, lyric_vocab_size: int | None = None) -> TransformerConfig:
    """The official config (``size="full"``) or the tiny one, which takes the tiny
    text encoder's width and the lyric vocabulary's size."""
    from .text_encoder import TINY_UMT5
    from .transformer import TransformerConfig

    if size == "full":
        return TransformerConfig()
    if size != "tiny":
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    if lyric_vocab_size is None:
        raise ValueError("a tiny transformer needs the lyric vocabulary size")
    return TransformerConfig(
        **TINY_TRANSFORMER, text_embedding_dim=TINY_UMT5["d_model"], lyric_encoder_vocab_size=lyric_vocab_size
    )


def load_transformer(path: Path, *, device: torch.device, dtype: torch.dtype) -> AceStepTransformer:
    """Build from ``config.json`` on the meta device and load every tensor strictly:
    a missing or unexpected key is an error, never a silently random weight."""
    import torch
    from safetensors import safe_open

    from .transformer import AceStepTransformer, TransformerConfig

    folder = Path(path) / TRANSFORMER_FOLDER
    files = weight_files(folder, TRANSFORMER_WEIGHTS)
    if not (folder / CONFIG_NAME).is_file() or files is None:
        raise FileNotFoundError(f"{folder} needs {CONFIG_NAME} and {TRANSFORMER_WEIGHTS} (or its shards)")
    config = TransformerConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    with torch.device("meta"):
        transformer = AceStepTransformer(config)
    state = {}
    for file in files:
        # Straight onto the target device, one tensor at a time: no full copy in host memory.
        with safe_open(str(file), framework="pt", device=str(device)) as weights:
            for key in weights.keys():
                state[key] = weights.get_tensor(key).to(dtype=dtype)
    transformer.load_state_dict(state, strict=True, assign=True)
    return transformer.eval().requires_grad_(False)


def write_transformer(folder: Path, transformer: AceStepTransformer) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(transformer.config.to_dict(), indent=2) + "\n")
    tensors = {key: value.contiguous() for key, value in transformer.state_dict().items()}
    save_file(tensors, folder / TRANSFORMER_WEIGHTS, metadata={"format": "pt"})


# ------------------------------------------------------------------- tiny writer


def write_tiny_checkpoint(path: Path, variant: str) -> None:
    """Write a tiny random ACE-Step v1 checkpoint in the official layout.

    ``variant`` is the model name (v1 has a single tiny variant). Write into a
    fresh folder: ``serve_app.pipeline.tiny`` stages it and moves it into place.
    """
    import torch

    from .codec import write_tiny_codec
    from .lyrics import LyricTokenizer, resolve_vocab, write_tiny_vocab
    from .text_encoder import UMT5TextEncoder
    from .transformer import AceStepTransformer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_tiny_codec(path)
    write_tiny_vocab(path)
    vocab_size = LyricTokenizer.from_vocab_file(resolve_vocab(path)).vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UMT5TextEncoder.build_random(size="tiny", device="cpu", dtype=torch.float32).save_pretrained(
            path / TEXT_ENCODER_FOLDER
        )
        transformer = AceStepTransformer(transformer_config("tiny", lyric_vocab_size=vocab_size))
    write_transformer(path / TRANSFORMER_FOLDER, transformer)
