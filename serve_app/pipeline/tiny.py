"""Tiny randomly initialised checkpoints, written in each family's real on-disk layout.

Tests and the CPU dev mode load these through exactly the code path that loads
real weights, so nothing about a model is special-cased for testing. Each
family knows its own layout; this module only picks the family from the
catalog. It imports neither torch nor a family until a checkpoint is written.

    python -m serve_app.pipeline.tiny                      # list the tiny models
    python -m serve_app.pipeline.tiny ace-step-v1-tiny     # write into the models folder
    python -m serve_app.pipeline.tiny ace-step-v1-tiny /some/dir
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .registry import CATALOG, MODELS_DIR_ENV, family_module, get_spec, models_dir


def tiny_model_names() -> list[str]:
    return sorted(name for name, spec in CATALOG.items() if spec.tiny)


def write_tiny_checkpoint(model_name: str, path: Path) -> Path:
    """Write the tiny model ``model_name`` into ``path`` unless a complete one is there.

    An incomplete folder (an interrupted write, a missing weight file) is
    replaced. The checkpoint is built beside ``path`` and moved into place
    whole, so a reader (another replica starting) never sees half of one.
    Returns ``path``.
    """
    spec = get_spec(model_name)
    if not spec.tiny:
        raise ValueError(
            f"{model_name!r} is not a tiny model and cannot be written locally; "
            f"tiny models: {', '.join(tiny_model_names())}"
        )
    path = Path(path)
    family = family_module(spec)
    if family.is_complete_checkpoint(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        family.write_tiny_checkpoint(staging, variant=spec.name)
        if family.is_complete_checkpoint(path):
            return path  # another writer finished first
        if path.exists():
            shutil.rmtree(path)
        try:
            os.replace(staging, path)
        except OSError:
            # Another writer (a replica starting beside this one) got there in between.
            if not family.is_complete_checkpoint(path):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.pipeline.tiny",
        description="Write a tiny random-weight checkpoint in its family's real layout (tests, CPU dev mode).",
    )
    parser.add_argument("model", nargs="?", help="tiny model name; omit to list them")
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        help=f"checkpoint folder (default: <models dir>/<model>, where the registry looks; ${MODELS_DIR_ENV})",
    )
    args = parser.parse_args(argv)

    if args.model is None:
        for name in tiny_model_names():
            print(f"{name}\t{CATALOG[name].description}")
        return 0
    if args.model not in CATALOG or not CATALOG[args.model].tiny:
        parser.error(f"unknown tiny model {args.model!r}; choose from: {', '.join(tiny_model_names())}")
    target = write_tiny_checkpoint(args.model, args.path or models_dir() / args.model)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
