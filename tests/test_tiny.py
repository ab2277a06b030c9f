"""Tiny checkpoints written by ``tiny.py`` load through the registry and generate audio."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.registry import CATALOG, load_model
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams
from serve_app.pipeline.tiny import main, tiny_model_names, write_tiny_checkpoint

DURATION_S = 5.0
SAMPLE_RATE = 48000


FAMILY_ENTRY_POINTS = ("is_complete_checkpoint", "write_tiny_checkpoint", "load", "build_random")


def _family(name: str):
    """The model's family package, or a skip naming it while it has not been written yet."""
    family = CATALOG[name].family
    try:
        module = importlib.import_module(f"serve_app.pipeline.{family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"serve_app.pipeline.{family}":
            raise  # the family exists but is broken: that is a failure, not a skip
        pytest.skip(f"family {family!r} of {name} is not implemented yet")
    if not any(hasattr(module, entry) for entry in FAMILY_ENTRY_POINTS):
        # A package still being written (no entry points at all); a partial one fails below.
        pytest.skip(f"family {family!r} of {name} exposes no entry points yet")
    return module


TINY = pytest.mark.parametrize("name", tiny_model_names())


def _params(name: str, **overrides) -> GenerationParams:
    values = {
        **ACESTEP_DEFAULTS,
        **CATALOG[name].defaults,
        "model": name,
        "prompt": "lofi hip hop, mellow piano",
        "lyrics": "[verse]\nla la la",
        "audio_duration": DURATION_S,
        "infer_step": 3,
        "actual_seeds": (7,),
        "bf16": False,
    }
    return GenerationParams(**{**values, **overrides})


def _weight_files(path):
    files = [item for item in path.rglob("*") if item.is_file()]
    assert files, f"{path} is empty"
    return {str(item.relative_to(path)): (item.stat().st_ino, item.stat().st_mtime_ns) for item in files}


def test_tiny_models_are_listed():
    names = tiny_model_names()
    assert {"ace-step-v1-tiny", "acestep-v15-tiny", "acestep-v15-turbo-tiny"} <= set(names)
    assert all(CATALOG[name].tiny for name in names)


@TINY
def test_written_checkpoint_generates_five_seconds_through_the_pipeline(name, tmp_path):
    family = _family(name)
    path = write_tiny_checkpoint(name, tmp_path / name)
    assert family.is_complete_checkpoint(path)
    before = _weight_files(path)

    model = load_model(name, "cpu", torch.float32, root=tmp_path)
    assert _weight_files(path) == before, "the registry rewrote a complete tiny checkpoint"
    pipeline = MusicPipeline(name, "cpu", loader=lambda *_: model)
    params = _params(name)
    output = pipeline(params.batch_settings(), params.items())

    assert output.sample_rate == SAMPLE_RATE
    [item] = output.items
    assert item.error is None and not item.cancelled
    assert item.waveform.shape == (2, int(DURATION_S * SAMPLE_RATE))
    assert item.waveform.dtype == torch.float32
    assert torch.isfinite(item.waveform).all()
    assert item.waveform.abs().amax() > 0, "silence"
    assert set(output.timings) >= {"diffusion_s", "decode_s"}


@TINY
def test_writing_twice_keeps_the_first_checkpoint(name, tmp_path):
    family = _family(name)
    path = write_tiny_checkpoint(name, tmp_path / name)
    first = _weight_files(path)
    assert write_tiny_checkpoint(name, path) == path
    assert family.is_complete_checkpoint(path)
    assert _weight_files(path) == first


@TINY
def test_incomplete_checkpoint_is_rewritten(name, tmp_path):
    family = _family(name)
    path = write_tiny_checkpoint(name, tmp_path / name)
    largest = max((item for item in path.rglob("*") if item.is_file()), key=lambda item: item.stat().st_size)
    largest.unlink()
    assert not family.is_complete_checkpoint(path)

    write_tiny_checkpoint(name, path)
    assert family.is_complete_checkpoint(path)
    assert largest.is_file()


def test_full_size_model_cannot_be_written(tmp_path):
    with pytest.raises(ValueError, match="acestep-v15-tiny"):
        write_tiny_checkpoint("ace-step-v1-3.5b", tmp_path / "x")
    with pytest.raises(KeyError, match="known models"):
        write_tiny_checkpoint("no-such-model", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_writes_into_the_models_folder(tmp_path, monkeypatch, capsys):
    name = "acestep-v15-turbo-tiny"
    family = _family(name)
    monkeypatch.setenv("ACESTEP_MODELS_DIR", os.fspath(tmp_path))
    assert main([name]) == 0
    assert capsys.readouterr().out.strip() == os.fspath(tmp_path / name)
    assert family.is_complete_checkpoint(tmp_path / name)

    with pytest.raises(SystemExit):
        main(["ace-step-v1-3.5b"])
    assert "choose from" in capsys.readouterr().err
