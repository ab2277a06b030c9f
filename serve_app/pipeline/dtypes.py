"""Building modules directly in a dtype, so full-size random models never pass through float32."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Parameters created inside are ``dtype`` (floating point only, as torch allows)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
