"""The DiT's attention: linear self-attention over latent frames, softmax
cross-attention to the conditioning, both with rotary positions.

Module and parameter names follow the official checkpoint (``to_q``,
``to_k``, ``to_v``, ``to_out.0``, and for cross-attention also ``add_q_proj``,
``add_k_proj``, ``add_v_proj``, ``to_add_out``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .erg import TAU

LINEAR_ATTENTION_EPS = 1e-15


class RotaryTable:
    """Cosine and sine tables of the DiT's rotary embedding, grown on demand.

    Frequencies ``theta ** (-2i / head_dim)`` fill both halves of the table
    (``[f_0 .. f_{d/2-1}, f_0 .. f_{d/2-1}]``) while ``apply_rotary`` rotates
    adjacent channel pairs: the checkpoint was trained with exactly this
    pairing, so it is kept. Values are computed in float32 on the CPU and only
    then cast and moved, as the official model does with its cached table, so
    every device and dtype sees the same rounded values.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        self._cpu: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _grow(self, length: int) -> None:
        size = 1024
        while size < length:
            size *= 2
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        frequencies = 1.0 / (self.theta**exponents)
        angles = torch.outer(torch.arange(size, dtype=torch.int64).float(), frequencies)
        angles = torch.cat((angles, angles), dim=-1)
        self._cpu = (angles.cos(), angles.sin())
        self._cast.clear()

    def __call__(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(length, head_dim)`` in ``dtype`` on ``device``."""
        if self._cpu is None or self._cpu[0].shape[0] < length:
            self._grow(length)
        key = (torch.device(device), dtype)
        if key not in self._cast:
            self._cast[key] = tuple(table.to(dtype=dtype).to(device) for table in self._cpu)
        cos, sin = self._cast[key]
        return cos[:length], sin[:length]


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` ``(B, H, S, D)``; computed in float32."""
    cos, sin = rotary
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def weaken_queries(query: torch.Tensor, erg_rows: torch.Tensor | None) -> torch.Tensor:
    """ERG on the diffusion pass: scale the query projection of the marked rows by ``TAU``.

    ``query * TAU`` is the very operation the official pipeline's hook applies,
    so a marked row equals that row run alone under the hook, bit for bit, and
    unmarked rows are untouched.
    """
    if erg_rows is None:
        return query
    return torch.where(erg_rows.view(-1, *([1] * (query.dim() - 1))), query * TAU, query)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, S, H*D)`` → ``(B, H, S, D)``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, S, D)`` → ``(B, S, H*D)``."""
    return x.transpose(1, 2).flatten(2)


class LinearSelfAttention(nn.Module):
    """ReLU-kernel linear attention (Sana's LiteLA) with rotary positions.

    ``out_s = sum_t v_t <k_t, q_s> / sum_t <k_t, q_s>`` with ``q, k`` passed
    through ReLU: memory grows linearly with the number of frames. The sums run
    in float32 whatever the model dtype.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        if heads * head_dim != dim:
            raise ValueError(f"{heads} heads of {head_dim} channels do not make {dim}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        # A list so the checkpoint's ``to_out.0`` name is kept (index 1 was an inference no-op dropout).
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        erg_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = x.dtype
        query = _split_heads(weaken_queries(self.to_q(x), erg_rows), self.heads)
        key = _split_heads(self.to_k(x), self.heads)
        value = _split_heads(self.to_v(x), self.heads)

        query = F.relu(apply_rotary(query, rotary)).float().transpose(-1, -2)  # (B, H, D, S)
        key = F.relu(apply_rotary(key, rotary)).float()  # (B, H, S, D)
        value = value.float().transpose(-1, -2)  # (B, H, D, S)

        # A row of ones under the values yields the normaliser in the same matmuls. The products
        # are taken in the official order and layouts, which keeps bf16 results bit-identical.
        value = F.pad(value, (0, 0, 0, 1), value=1.0)
        summary = torch.matmul(value, key)  # (B, H, D + 1, D)
        attended = torch.matmul(summary, query)  # (B, H, D + 1, S)
        attended = attended[:, :, :-1] / (attended[:, :, -1:] + LINEAR_ATTENTION_EPS)
        return self.to_out[0](attended.flatten(1, 2).transpose(1, 2).to(dtype))


class CrossAttention(nn.Module):
    """Softmax attention from latent frames to the conditioning sequence.

    Queries carry the frames' rotary positions and keys the conditioning's own
    positions (speaker, prompt tokens, lyric tokens, in that order); keys whose
    mask is False get no weight.

    ``add_q_proj``, ``add_k_proj``, ``add_v_proj`` and ``to_add_out`` are in the
    official checkpoint but its cross-attention never runs them: they are kept
    only so the state dict loads strictly.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        if heads * head_dim != dim:
            raise ValueError(f"{heads} heads of {head_dim} channels do not make {dim}")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.add_q_proj = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.to_add_out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        context_rotary: tuple[torch.Tensor, torch.Tensor],
        erg_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = _split_heads(weaken_queries(self.to_q(x), erg_rows), self.heads)
        key = _split_heads(self.to_k(context), self.heads)
        value = _split_heads(self.to_v(context), self.heads)
        query = apply_rotary(query, rotary)
        key = apply_rotary(key, context_rotary)

        # One additive row per item, broadcast over heads and queries.
        bias = torch.zeros(context_mask.shape, dtype=query.dtype, device=query.device)
        bias = bias.masked_fill(~context_mask.bool(), float("-inf"))[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return self.to_out[0](_merge_heads(attended))
