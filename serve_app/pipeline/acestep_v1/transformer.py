"""ACE-Step v1's diffusion transformer, state-dict compatible with the official
``ace_step_transformer/`` folder.

A stack of Sana-style blocks over latent frames: adaLN-single timestep
modulation, linear self-attention, softmax cross-attention to the
conditioning, and a gated depthwise-conv feed-forward. The conditioning is the
concatenation of a speaker embedding, the projected UMT5 prompt states and the
projected lyric Conformer states (``encode``); the denoiser (``forward``)
predicts the flow-matching velocity of ``(B, 8, 16, T)`` latents.

Attribute names, parameter shapes and config keys are the official ones, so the
checkpoint loads with strict key matching.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import RMSNorm
from torch import nn

from . import erg
from .attention import CrossAttention, LinearSelfAttention, RotaryTable
from .lyric_encoder import LyricConformer

CLASS_NAME = "ACEStepTransformer2DModel"
TIMESTEP_CHANNELS = 256
PATCH_EMBED_EXPANSION = 256
"""The patch embedding's first conv widens ``in_channels`` by this fixed factor."""
PATCH_EMBED_GROUPS = 32
NORM_EPS = 1e-6


@dataclass(frozen=True)
class TransformerConfig:
    """The ``config.json`` of ``ace_step_transformer/``; defaults are the official 3.5B values.

    ``num_attention_heads * attention_head_dim`` sets the width (``inner_dim``
    is stored for reference, as the official config does). The three
    ``lyric_encoder_*`` fields are not in the official file: the official model
    fixes those Conformer sizes in code, and these defaults are those values;
    tiny checkpoints write their own.
    """

    in_channels: int = 8
    num_layers: int = 24
    inner_dim: int = 2560
    attention_head_dim: int = 128
    num_attention_heads: int = 20
    mlp_ratio: float = 2.5
    out_channels: int = 8
    max_position: int = 32768
    rope_theta: float = 1000000.0
    speaker_embedding_dim: int = 512
    text_embedding_dim: int = 768
    ssl_encoder_depths: list[int] = field(default_factory=lambda: [8, 8])
    ssl_names: list[str] = field(default_factory=lambda: ["mert", "m-hubert"])
    ssl_latent_dims: list[int] = field(default_factory=lambda: [1024, 768])
    patch_size: list[int] = field(default_factory=lambda: [16, 1])
    max_height: int = 16
    max_width: int = 32768
    lyric_encoder_vocab_size: int = 6693
    lyric_hidden_size: int = 1024
    lyric_encoder_attention_heads: int = 16
    lyric_encoder_linear_units: int = 4096
    lyric_encoder_num_blocks: int = 6

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformerConfig:
        """Known keys are read; ``_class_name``-style metadata and unknown keys are ignored,
        as the official loader does."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": CLASS_NAME, **asdict(self)}


class GatedConvFeedForward(nn.Module):
    """1x1 conv to two branches, depthwise 3-tap conv, SiLU gate, 1x1 conv back (GLUMBConv)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inverted_conv = _Conv(dim, 2 * hidden, kernel_size=1, bias=True)
        self.depth_conv = _Conv(2 * hidden, 2 * hidden, kernel_size=3, bias=True, groups=2 * hidden)
        self.point_conv = _Conv(hidden, dim, kernel_size=1, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.inverted_conv(x.transpose(1, 2)))
        x, gate = self.depth_conv(x).chunk(2, dim=1)
        return self.point_conv(x * self.act(gate)).transpose(1, 2)


class _Conv(nn.Module):
    """A 1-D convolution held as ``.conv``, the checkpoint's nesting."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, bias: bool, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LinearTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.attn = LinearSelfAttention(dim, heads, head_dim)
        self.cross_attn = CrossAttention(dim, heads, head_dim)
        self.norm2 = RMSNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.ff = GatedConvFeedForward(dim, int(dim * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        context_rotary: tuple[torch.Tensor, torch.Tensor],
        erg_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        shift_attn, scale_attn, gate_attn, shift_ff, scale_ff, gate_ff = (
            self.scale_shift_table[None] + modulation.unflatten(1, (6, -1))
        ).chunk(6, dim=1)
        # The operand order of the residual sums is the official one: a sum takes the memory
        # layout of its first operand, and the layout picks the matmul kernels that follow, so
        # this order keeps reduced-precision results bit-identical to the official model's.
        attended = self.attn(self.norm1(x) * (1 + scale_attn) + shift_attn, rotary, erg_rows)
        x = gate_attn * attended + x
        # Cross-attention reads the residual stream directly: no norm, no gate.
        x = self.cross_attn(x, context, context_mask, rotary, context_rotary, erg_rows) + x
        return x + gate_ff * self.ff(self.norm2(x) * (1 + scale_ff) + shift_ff)


class PatchEmbed(nn.Module):
    """``(B, C, H, T)`` latents → ``(B, T / patch_w, D)`` tokens; one patch spans the full height."""

    def __init__(self, in_channels: int, dim: int, patch_size: list[int]) -> None:
        super().__init__()
        wide = in_channels * PATCH_EMBED_EXPANSION
        self.early_conv_layers = nn.Sequential(
            nn.Conv2d(in_channels, wide, kernel_size=tuple(patch_size), stride=tuple(patch_size)),
            nn.GroupNorm(PATCH_EMBED_GROUPS, wide, eps=NORM_EPS),
            nn.Conv2d(wide, dim, kernel_size=1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.early_conv_layers(latents).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """Modulated norm and projection back to patches, then to ``(B, C, H, T)``."""

    def __init__(self, dim: int, patch_size: list[int], out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.RMSNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(dim, patch_size[0] * patch_size[1] * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, embedded_timestep: torch.Tensor, width: int) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        x = self.linear(self.norm_final(x) * (1 + scale) + shift)
        patch_h, patch_w = self.patch_size
        batch, patches = x.shape[:2]
        x = x.reshape(batch, patches, patch_h, patch_w, self.out_channels).permute(0, 4, 2, 1, 3)
        x = x.reshape(batch, self.out_channels, patch_h, patches * patch_w)
        if x.shape[-1] < width:
            return nn.functional.pad(x, (0, width - x.shape[-1]))
        return x[..., :width]


class AceStepTransformer(nn.Module):
    """The DiT with its conditioning encoder (``encode``) and denoiser (``forward``/``decode``)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.width
        heads, head_dim = config.num_attention_heads, config.attention_head_dim

        self.transformer_blocks = nn.ModuleList(
            LinearTransformerBlock(dim, heads, head_dim, config.mlp_ratio) for _ in range(config.num_layers)
        )
        self.time_proj = Timesteps(num_channels=TIMESTEP_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=TIMESTEP_CHANNELS, time_embed_dim=dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

        self.speaker_embedder = nn.Linear(config.speaker_embedding_dim, dim)
        self.genre_embedder = nn.Linear(config.text_embedding_dim, dim)
        self.lyric_embs = nn.Embedding(config.lyric_encoder_vocab_size, config.lyric_hidden_size)
        self.lyric_encoder = LyricConformer(
            input_size=config.lyric_hidden_size,
            output_size=config.lyric_hidden_size,
            attention_heads=config.lyric_encoder_attention_heads,
            linear_units=config.lyric_encoder_linear_units,
            num_blocks=config.lyric_encoder_num_blocks,
        )
        self.lyric_proj = nn.Linear(config.lyric_hidden_size, dim)

        # Self-supervised feature projectors used only in training. Their weights are in
        # the checkpoint, so they are built and loaded, and never run.
        self.projectors = nn.ModuleList(
            nn.Sequential(
                nn.Linear(dim, 2 * dim),
                nn.SiLU(),
                nn.Linear(2 * dim, 2 * dim),
                nn.SiLU(),
                nn.Linear(2 * dim, ssl_dim),
            )
            for ssl_dim in config.ssl_latent_dims
        )

        self.proj_in = PatchEmbed(config.in_channels, dim, config.patch_size)
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels)
        self.rotary = RotaryTable(head_dim, config.rope_theta)

    # ------------------------------------------------------------ conditioning

    def encode(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        speaker_embeds: torch.Tensor,
        lyric_ids: torch.Tensor,
        lyric_mask: torch.Tensor,
        weaken_lyrics: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning sequence ``(B, 1 + T_text + T_lyric, D)`` and its bool mask.

        ``weaken_lyrics`` runs the Conformer under ERG (``erg.LYRIC_ENCODER_LAYERS``
        queries scaled by ``erg.TAU``).
        """
        speaker = self.speaker_embedder(speaker_embeds).unsqueeze(1)
        text = self.genre_embedder(text_states)
        embedded = self.lyric_embs(lyric_ids)
        weakened = [self.lyric_encoder.encoders[i].self_attn.linear_q for i in erg.LYRIC_ENCODER_LAYERS]
        if weaken_lyrics:
            erg.check_depth(erg.LYRIC_ENCODER_LAYERS, len(self.lyric_encoder.encoders), "the lyric encoder")
            with erg.scaled_outputs(weakened):
                lyrics, _ = self.lyric_encoder(embedded, lyric_mask)
        else:
            lyrics, _ = self.lyric_encoder(embedded, lyric_mask)
        lyrics = self.lyric_proj(lyrics)

        states = torch.cat([speaker, text, lyrics], dim=1)
        speaker_mask = torch.ones(speaker.shape[0], 1, dtype=torch.bool, device=speaker.device)
        mask = torch.cat([speaker_mask, text_mask.bool(), lyric_mask.bool()], dim=1)
        return states, mask

    # ----------------------------------------------------------------- denoiser

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        context_rotary: tuple[torch.Tensor, torch.Tensor],
        erg_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for ``latents`` ``(B, C, H, T)``; tensors only, so it compiles as a whole.

        ``timestep`` is ``sigma * 1000`` (float32, one per row); ``erg_rows``
        (bool, one per row) selects rows whose ``erg.DIFFUSION_BLOCKS`` run with
        weakened queries.
        """
        embedded_timestep = self.timestep_embedder(self.time_proj(timestep).to(dtype=latents.dtype))
        modulation = self.t_block(embedded_timestep)
        x = self.proj_in(latents)
        for index, block in enumerate(self.transformer_blocks):
            rows = erg_rows if index in erg.DIFFUSION_BLOCKS else None
            x = block(x, modulation, context, context_mask, rotary, context_rotary, rows)
        return self.final_layer(x, embedded_timestep, latents.shape[-1])

    def decode(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        erg_rows: torch.Tensor | None = None,
        denoiser: nn.Module | None = None,
    ) -> torch.Tensor:
        """``forward`` with its rotary tables; ``denoiser`` is a compiled ``self`` when given."""
        if erg_rows is not None:
            erg.check_depth(erg.DIFFUSION_BLOCKS, len(self.transformer_blocks), "the transformer")
            erg_rows = erg_rows.to(device=latents.device, dtype=torch.bool)
            if not bool(erg_rows.any()):
                erg_rows = None
        patches = latents.shape[-1] // self.config.patch_size[1]
        rotary = self.rotary(patches, latents.device, latents.dtype)
        context_rotary = self.rotary(context.shape[1], latents.device, latents.dtype)
        denoiser = self if denoiser is None else denoiser
        return denoiser(latents, timestep, context, context_mask, rotary, context_rotary, erg_rows)
