"""Named parameter recipes from ``configs/presets.json``.

A preset is a partial set of sampling parameters. Resolution order, weakest
first: ACE-Step defaults, the model's own defaults, the preset, the request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from ..pipeline.settings import GenerationParams
from ..responses import PresetInfo
from ..schemas import GenerateRequest

DEFAULT_PRESETS_PATH = Path(__file__).resolve().parents[2] / "configs" / "presets.json"

# Content and identity stay with the request; a preset is a sampling recipe.
PRESETTABLE_FIELDS = frozenset(GenerationParams.model_fields) - {"model", "prompt", "lyrics", "actual_seeds"}


class PresetError(ValueError):
    pass


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    params: Mapping[str, Any]

    def info(self) -> PresetInfo:
        return PresetInfo(name=self.name, description=self.description, params=dict(self.params))


class PresetBook:
    def __init__(self, presets: Mapping[str, Preset]) -> None:
        self._presets = MappingProxyType(dict(presets))

    @classmethod
    def load(cls, path: Path | str | None = None) -> PresetBook:
        path = Path(path) if path else DEFAULT_PRESETS_PATH
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PresetError(f"cannot read presets from {path}: {exc}") from exc
        return cls({name: _parse(name, entry, path) for name, entry in raw.items()})

    def names(self) -> list[str]:
        return sorted(self._presets)

    def get(self, name: str) -> Preset:
        try:
            return self._presets[name]
        except KeyError:
            raise KeyError(name) from None

    def __iter__(self):
        return iter(self._presets[name] for name in self.names())


def _parse(name: str, entry: Any, path: Path) -> Preset:
    if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
        raise PresetError(f"{path}: preset {name!r} needs a 'params' object")
    params = entry["params"]
    unknown = set(params) - PRESETTABLE_FIELDS
    if unknown:
        raise PresetError(f"{path}: preset {name!r} sets fields a preset cannot set: {sorted(unknown)}")
    try:
        GenerateRequest(prompt="preset check", **params)
    except ValidationError as exc:
        raise PresetError(f"{path}: preset {name!r} is invalid: {exc}") from exc
    return Preset(name=name, description=str(entry.get("description", "")), params=MappingProxyType(dict(params)))
