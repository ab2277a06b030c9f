"""The diffusers pipeline folder: completeness check, tiny writer, weight key probe."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint_files import has_weights
from . import configs

MODEL_INDEX = "model_index.json"
NULL_CONDITION_KEY = "null_condition_emb"


def _components(path: Path) -> dict[str, tuple[str, str]]:
    index = json.loads((path / MODEL_INDEX).read_text())
    found = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value[0] is None or value[1] is None:
            continue  # an optional component saved as absent
        found[name] = (value[0], value[1])
    return found


def _component_complete(folder: Path, name: str, class_name: str) -> bool:
    if not folder.is_dir():
        return False
    if name == "tokenizer" or ("Tokenizer" in class_name and not class_name.startswith("AceStep")):
        has_vocab = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
        return (folder / "tokenizer_config.json").is_file() and has_vocab
    if name == "scheduler" or "Scheduler" in class_name:
        return (folder / "scheduler_config.json").is_file()
    return (folder / "config.json").is_file() and has_weights(folder)


def is_complete_checkpoint(path: Path) -> bool:
    path = Path(path)
    try:
        components = _components(path)
    except (OSError, ValueError):
        return False
    required = {"transformer", "condition_encoder", "vae", "text_encoder", "tokenizer"}
    if not required <= components.keys():
        return False
    return all(_component_complete(path / name, name, cls) for name, (_, cls) in components.items())


def weight_keys(folder: Path) -> set[str]:
    """Tensor names stored in a component folder (headers only, nothing loaded)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for index_file in folder.glob("*.safetensors.index.json"):
        keys.update(json.loads(index_file.read_text())["weight_map"])
    if keys:
        return keys
    for weights in folder.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            keys.update(handle.keys())
    if not keys:
        import torch

        for weights in folder.glob("*.bin"):
            keys.update(torch.load(weights, map_location="meta", weights_only=True))
    return keys


def has_null_condition(path: Path) -> bool:
    """Whether the checkpoint's condition encoder ships a learned ``null_condition_emb``."""
    return NULL_CONDITION_KEY in weight_keys(Path(path) / "condition_encoder")


def write_tiny_checkpoint(path: Path, variant: str) -> None:
    """Write a tiny random ACE-Step 1.5 pipeline in the diffusers layout.

    ``variant`` is the model name: names containing ``turbo`` get a turbo DiT
    config, the others a guided (base) DiT. Both condition encoders carry
    ``null_condition_emb``, as diffusers declares it and the real layout has it
    (a file without it leaves the parameter on the meta device when diffusers
    loads it). Write into a fresh folder: ``serve_app.pipeline.tiny`` stages it
    and moves it into place.
    """
    from .components import build_pipeline

    pipe = build_pipeline(size="tiny", variant=configs.variant_of(variant), with_null_condition=True)
    pipe.save_pretrained(Path(path), safe_serialization=True)
