"""Which files hold a component's weights: one file, or the shards its index names."""

from __future__ import annotations

import json
from pathlib import Path

# What diffusers and transformers write with save_pretrained, safetensors first.
WEIGHT_FILE_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


def weight_files(folder: Path, name: str) -> list[Path] | None:
    """The files holding ``name`` (single file or the shards ``name.index.json`` names);
    ``None`` if any of them is missing, so a half-downloaded checkpoint is never taken for whole."""
    index = folder / f"{name}.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        files = [folder / shard for shard in shards]
        return files if files and all(file.is_file() for file in files) else None
    single = folder / name
    return [single] if single.is_file() else None


def has_weights(folder: Path, names: tuple[str, ...] = WEIGHT_FILE_NAMES) -> bool:
    return any(weight_files(folder, name) for name in names)
