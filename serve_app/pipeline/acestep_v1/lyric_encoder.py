"""Conformer lyric encoder of ACE-Step v1, state-dict compatible with `lyric_encoder.` in the
official transformer checkpoint.

The official transformer builds wenet's ConformerEncoder with `static_chunk_size=0` and every
other option at its default, and calls it with `decoding_chunk_size=1`. With dynamic chunking
off by default that call attends over the whole sequence (only padded keys are masked), and the
defaults switch off both the macaron feed-forward and the convolution module. What runs is
therefore a pre-norm Transformer with Transformer-XL relative-position attention:

    x = LayerNorm(Linear(embeddings)) * sqrt(d)
    per layer: x += RelPosAttention(norm_mha(x));  x += W2 SiLU(W1 norm_ff(x))
    out = after_norm(x)

Only that path is implemented; dropout is omitted because the model only runs in eval.
The only operation that mixes positions is attention, and it ignores padded keys, so a row's
valid outputs never depend on the padding of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LAYER_NORM_EPS = 1e-5


def _relative_position_table(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sinusoids for relative distances length-1, length-2, ..., -(length-1), shape (1, 2*length-1, dim).

    Distance is query index minus key index. Even channels hold sin, odd channels cos, with the
    usual 10000^(-2i/dim) frequencies. Built in float32 and only then cast, so reduced-precision
    models see the same rounded table as the official one.
    """
    distances = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    angles = distances * frequencies
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)
    return table.unsqueeze(0).to(dtype)


def _align_to_key_positions(scores_by_distance: Tensor) -> Tensor:
    """(..., T, 2T-1) scores indexed by distance column c (distance T-1-c) -> (..., T, T) by key.

    Query i and key j sit at column T-1-i+j. After appending one column the rows are 2T long,
    so in the flattened scores each step of 2T-1 elements goes one row down and one column
    left: the T windows of 2T-1 elements starting at flat index T-1 begin at column T-1-i of
    row i, and their first T entries are the keys in order.
    """
    length, width = scores_by_distance.shape[-2:]
    flat = F.pad(scores_by_distance, (0, 1)).flatten(-2)
    windows = flat[..., length - 1 : length - 1 + length * width].unflatten(-1, (length, width))
    return windows[..., :length]


class _RelativePositionSelfAttention(nn.Module):
    """Multi-head self-attention with learned content (u) and position (v) biases (Transformer-XL)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim)

    def forward(self, x: Tensor, padded_keys: Tensor, positions: Tensor) -> Tensor:
        """x (B, T, D); padded_keys (B, 1, 1, T), True at padding; positions (1, 2T-1, D)."""
        batch, length, _ = x.shape
        # linear_q stays a module call: ERG rescales its output through forward hooks, and the
        # biases u and v must be added after that rescaling.
        query = self._split_heads(self.linear_q(x))
        key = self._split_heads(self.linear_k(x)).transpose(1, 2)
        value = self._split_heads(self.linear_v(x)).transpose(1, 2)
        position = self._split_heads(self.linear_pos(positions)).transpose(1, 2)

        content_scores = torch.matmul((query + self.pos_bias_u).transpose(1, 2), key.transpose(-2, -1))
        position_scores = _align_to_key_positions(
            torch.matmul((query + self.pos_bias_v).transpose(1, 2), position.transpose(-2, -1))
        )
        scores = (content_scores + position_scores) / math.sqrt(self.head_dim)

        scores = scores.masked_fill(padded_keys, float("-inf"))
        # A row with no valid key (empty lyrics) softmaxes to NaN; zero weights make it finite.
        weights = torch.softmax(scores, dim=-1).masked_fill(padded_keys, 0.0)
        attended = torch.matmul(weights, value).transpose(1, 2).reshape(batch, length, -1)
        return self.linear_out(attended)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.activation = nn.SiLU()
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class _ConformerLayer(nn.Module):
    """Pre-norm block: relative-position self-attention, then feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = _RelativePositionSelfAttention(dim, heads)
        self.feed_forward = _FeedForward(dim, hidden)
        self.norm_ff = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.norm_mha = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)

    def forward(self, x: Tensor, padded_keys: Tensor, positions: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm_mha(x), padded_keys, positions)
        return x + self.feed_forward(self.norm_ff(x))


class _InputProjection(nn.Module):
    def __init__(self, input_size: int, dim: int) -> None:
        super().__init__()
        # A Sequential only to keep the checkpoint's `embed.out.0` / `embed.out.1` names.
        self.out = nn.Sequential(nn.Linear(input_size, dim), nn.LayerNorm(dim, eps=_LAYER_NORM_EPS))
        self.scale = math.sqrt(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x) * self.scale


class LyricConformer(nn.Module):
    """Encodes lyric token embeddings; the official model's `lyric_encoder` submodule."""

    def __init__(
        self,
        input_size: int = 1024,
        output_size: int = 1024,
        attention_heads: int = 16,
        linear_units: int = 4096,
        num_blocks: int = 6,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.embed = _InputProjection(input_size, output_size)
        self.after_norm = nn.LayerNorm(output_size, eps=_LAYER_NORM_EPS)
        self.encoders = nn.ModuleList(
            _ConformerLayer(output_size, attention_heads, linear_units) for _ in range(num_blocks)
        )

    def forward(self, embeddings: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """embeddings (B, L, input_size); mask (B, L), nonzero for real tokens.

        Returns hidden states (B, L, output_size) and the boolean mask as (B, 1, L). Padded
        positions get finite values that callers must ignore; a row with no real token gives
        finite output too.
        """
        if embeddings.dim() != 3 or mask.shape != embeddings.shape[:2]:
            raise ValueError(
                f"expected embeddings (B, L, D) and mask (B, L), got {tuple(embeddings.shape)} and {tuple(mask.shape)}"
            )
        valid = mask.to(torch.bool).unsqueeze(1)
        padded_keys = ~valid.unsqueeze(1)
        x = self.embed(embeddings)
        positions = _relative_position_table(x.shape[1], self.output_size, x.device, x.dtype)
        for layer in self.encoders:
            x = layer(x, padded_keys, positions)
        return self.after_norm(x), valid
