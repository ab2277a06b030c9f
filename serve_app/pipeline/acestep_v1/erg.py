"""Entropy-rectifying guidance (ERG) of ACE-Step v1: where it acts and by how much.

ERG builds the unconditional branch of guidance from the model itself rather
than from zeros: the query projections of a few layers are multiplied by a
small temperature ``TAU``, which flattens those layers' attention towards
uniform. Each switch weakens one part of the model:

* ``tag``: the UMT5 text encoder's self-attention queries, blocks 8-9;
* ``lyric``: the lyric Conformer's self-attention queries, layers 4-5;
* ``diffusion``: the DiT's self- and cross-attention queries, blocks 15-19,
  on the unconditional diffusion pass only.

The layer ranges and the temperature are those the official pipeline uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

TAU = 0.01
TEXT_ENCODER_BLOCKS = range(8, 10)
LYRIC_ENCODER_LAYERS = range(4, 6)
DIFFUSION_BLOCKS = range(15, 20)


def check_depth(layers: range, available: int, what: str) -> None:
    """Refuse a model too shallow for an ERG range: ERG would silently do nothing."""
    if layers.stop > available:
        raise ValueError(
            f"{what} has {available} layers but ERG weakens layers {layers.start}-{layers.stop - 1}; "
            f"a model for ACE-Step v1 needs at least {layers.stop}"
        )


@contextlib.contextmanager
def scaled_outputs(modules: Iterable[nn.Module], factor: float = TAU) -> Iterator[None]:
    """Multiply the output of each module by ``factor`` while the context is open.

    Used on modules we do not own (UMT5, the Conformer), where a forward hook is
    the only way in. The callers serialise encoding, so a concurrent forward
    never sees another call's hooks.
    """

    def scale(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        return output * factor

    handles = [module.register_forward_hook(scale) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
