"""ACE-Step v1 as a ``MusicModel``: our DiT, UMT5, lyric tokenizer and codec, driven by our sampler.

Conditioning follows the official pipeline's text2music path: the prompt's
UMT5 states, a zero speaker embedding, the lyric token ids (empty lyrics are a
single masked token 0), all passed through the DiT's ``encode``. The branches:

* ``COND``: prompt and lyrics.
* ``UNCOND``: with ERG on lyrics, the prompt states (ERG-weakened by the tag
  switch, zeros without it) and the lyrics through the ERG-weakened Conformer;
  without it, zero prompt states and zero lyric ids.
* ``TEXT_ONLY`` (double guidance): the prompt with the ERG-weakened lyrics, or
  with zero lyric ids without ERG on lyrics.
* ``NULL`` (flow-edit's unconditional): zero prompt states, zero lyric ids with
  their mask cleared, no ERG.

ERG on diffusion weakens the DiT's queries on the rows the sampler marks
(``erg_rows``), which are the unconditional rows.

Every row is encoded on its own, exactly as a batch of one, then rows are
packed left-aligned and padded to a common length with a False mask. The
cross-attention keys carry rotary positions, so left-aligned packing keeps
each key at the position it has alone, and masked keys get no weight: a row's
velocity does not depend on its batch-mates.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from ..dtypes import default_dtype
from ..protocol import Branch, Conditioning, ErgFlags
from ..schedules import AceStepV1Schedule
from . import codec as codec_module
from .transformer import AceStepTransformer

ENCODER_STATES = "encoder_hidden_states"
ENCODER_MASK = "encoder_hidden_mask"
TRAIN_TIMESTEPS = 1000
"""The DiT takes ``sigma * 1000`` as its timestep, as the official scheduler feeds it."""
EMPTY_LYRICS_TOKEN = 0


class AceStepV1Model:
    """A loaded ACE-Step v1 behind the ``MusicModel`` protocol."""

    family = "acestep_v1"
    channels = 2
    # apg_forward's default dims over (B, 8, 16, frames): the latent height and the frames.
    guidance_norm_dims = (-1, -2)
    supported_erg = frozenset({"tag", "lyric", "diffusion"})
    frame_axis = -1
    source_encoding_draws = False
    compile_options: dict | None = None
    """Keyword arguments for ``torch.compile`` of the denoiser (tests pick a cheap backend)."""

    def __init__(
        self,
        transformer: AceStepTransformer,
        text_encoder,
        lyric_tokenizer,
        codec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        name: str = "ace-step-v1",
    ) -> None:
        config = transformer.config
        if text_encoder.hidden_size != config.text_embedding_dim:
            raise ValueError(
                f"the text encoder gives {text_encoder.hidden_size}-wide states but the transformer "
                f"takes text_embedding_dim={config.text_embedding_dim}"
            )
        if lyric_tokenizer.vocab_size > config.lyric_encoder_vocab_size:
            raise ValueError(
                f"the lyric vocabulary has {lyric_tokenizer.vocab_size} tokens but the transformer embeds "
                f"only lyric_encoder_vocab_size={config.lyric_encoder_vocab_size}"
            )
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.transformer = transformer.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.lyric_tokenizer = lyric_tokenizer
        self.codec = codec
        self.sample_rate = int(codec.output_sample_rate)
        self.noise_schedule = AceStepV1Schedule()
        self._compiled_transformer = None
        # ERG on the text and lyric encoders works through forward hooks on shared
        # modules; one encode at a time keeps a call's hooks out of another's forward.
        self._encode_lock = threading.Lock()

    # ------------------------------------------------------------------ shapes

    def latent_shape(self, duration_s: float) -> tuple[int, ...]:
        """``(8, 16, frames)`` covering at least ``duration_s``.

        The official pipeline takes ``int(duration * 44100 / 512 / 8)`` frames,
        which renders up to one frame (~93 ms) less than asked; the codec rounds
        up instead, so the pipeline can trim to the exact sample count.
        """
        return codec_module.latent_shape(duration_s)

    # ---------------------------------------------------------------- encoding

    def _lyric_tokens(self, lyrics: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.lyric_tokenizer(lyrics)
        if not ids:
            # The official pipeline's stand-in for no lyrics: one token 0 that the mask hides.
            ids, mask = [EMPTY_LYRICS_TOKEN], [0]
        else:
            mask = [1] * len(ids)
        as_row = lambda values: torch.tensor([values], dtype=torch.long, device=self.device)  # noqa: E731
        return as_row(ids), as_row(mask)

    def _encode_row(self, prompt: str, lyrics: str, branches: Collection[Branch], erg: ErgFlags):
        """``{branch: (states (L, D), mask (L,))}`` for one row, as a batch of one."""
        text = self.text_encoder.encode(prompt).to(self.dtype)
        text_mask = torch.ones(text.shape[:2], dtype=torch.long, device=self.device)
        lyric_ids, lyric_mask = self._lyric_tokens(lyrics)
        speaker = torch.zeros(1, self.transformer.config.speaker_embedding_dim, device=self.device, dtype=self.dtype)

        def encode(text_states, ids, weaken_lyrics=False, ids_mask=lyric_mask):
            states, mask = self.transformer.encode(text_states, text_mask, speaker, ids, ids_mask, weaken_lyrics)
            return states[0], mask[0]

        result = {}
        for branch in branches:
            if branch is Branch.COND:
                result[branch] = encode(text, lyric_ids)
            elif branch is Branch.UNCOND and erg.lyric:
                weak_text = self.text_encoder.encode(prompt, weaken=True).to(self.dtype) if erg.tag else None
                result[branch] = encode(torch.zeros_like(text) if weak_text is None else weak_text, lyric_ids, True)
            elif branch is Branch.UNCOND:
                result[branch] = encode(torch.zeros_like(text), torch.zeros_like(lyric_ids))
            elif branch is Branch.TEXT_ONLY and erg.lyric:
                result[branch] = encode(text, lyric_ids, True)
            elif branch is Branch.TEXT_ONLY:
                result[branch] = encode(text, torch.zeros_like(lyric_ids))
            elif branch is Branch.NULL:
                result[branch] = encode(torch.zeros_like(text), torch.zeros_like(lyric_ids), ids_mask=lyric_mask * 0)
            else:
                raise ValueError(f"unknown branch {branch!r}")
        return result

    @torch.no_grad()
    def encode(
        self,
        prompts: Sequence[str],
        lyrics: Sequence[str],
        branches: Collection[Branch],
        erg: ErgFlags,
        *,
        duration_s: float | None = None,
    ) -> dict[Branch, Conditioning]:
        """Conditioning per branch, all with the same shapes.

        Keys: ``encoder_hidden_states`` ``(B, L, D)`` in the model dtype and
        ``encoder_hidden_mask`` ``(B, L)`` bool (False on padding and on the
        placeholder token of empty lyrics). ``duration_s`` is accepted for the
        protocol; v1 does not condition on the duration.
        """
        branches = list(dict.fromkeys(branches))
        if len(prompts) != len(lyrics):
            raise ValueError(f"{len(prompts)} prompts but {len(lyrics)} lyrics")
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        if not branches:
            raise ValueError("encode() needs at least one branch")

        with self._encode_lock:
            cache: dict[tuple[str, str], dict] = {}
            rows = []
            for row in zip(prompts, lyrics):
                if row not in cache:
                    cache[row] = self._encode_row(*row, branches, erg)
                rows.append(cache[row])

        width = max(states.shape[0] for row in rows for states, _ in row.values())
        result: dict[Branch, Conditioning] = {}
        for branch in branches:
            first_states = rows[0][branch][0]
            states = first_states.new_zeros(len(rows), width, first_states.shape[-1])
            mask = torch.zeros(len(rows), width, dtype=torch.bool, device=self.device)
            for index, row in enumerate(rows):
                row_states, row_mask = row[branch]
                states[index, : row_states.shape[0]] = row_states
                mask[index, : row_mask.shape[0]] = row_mask
            result[branch] = {ENCODER_STATES: states, ENCODER_MASK: mask}
        return result

    # --------------------------------------------------------------- denoising

    def _compiled(self):
        if self._compiled_transformer is None:
            self._compiled_transformer = torch.compile(self.transformer, **(self.compile_options or {}))
        return self._compiled_transformer

    @torch.no_grad()
    def velocity(
        self,
        latents: torch.Tensor,
        sigmas: torch.Tensor,
        conditioning: Conditioning,
        erg_rows: torch.Tensor | None = None,
        compiled: bool = False,
    ) -> torch.Tensor:
        rows = latents.shape[0]
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32, device=self.device).reshape(-1)
        if sigmas.numel() not in (1, rows):
            raise ValueError(f"{sigmas.numel()} sigmas for {rows} rows")
        timestep = sigmas.expand(rows) * TRAIN_TIMESTEPS
        if erg_rows is not None:
            erg_rows = torch.as_tensor(erg_rows, dtype=torch.bool, device=self.device).reshape(-1)
            if erg_rows.numel() != rows:
                raise ValueError(f"erg_rows has {erg_rows.numel()} entries for {rows} rows")
        prediction = self.transformer.decode(
            latents.to(device=self.device, dtype=self.dtype),
            timestep,
            conditioning[ENCODER_STATES].to(device=self.device, dtype=self.dtype),
            conditioning[ENCODER_MASK].to(device=self.device),
            erg_rows,
            denoiser=self._compiled() if compiled else None,
        )
        return prediction.float()

    # ---------------------------------------------------------------- decoding

    def decode(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        return self.codec.decode(latents, num_samples)

    def encode_audio(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The DCAE encode path (``codec.encode``): float32 latents of a 48 kHz stereo waveform.
        Deterministic, so ``generator`` is unused."""
        return self.codec.encode(waveform)


def load(path: Path, *, device: torch.device, dtype: torch.dtype, spec=None) -> AceStepV1Model:
    """Load an official-layout checkpoint folder (or a tiny one written in that layout)."""
    from . import checkpoint
    from .lyrics import LyricTokenizer, resolve_vocab
    from .text_encoder import FOLDER as TEXT_ENCODER_FOLDER
    from .text_encoder import UMT5TextEncoder

    path = Path(path)
    device = torch.device(device)
    return AceStepV1Model(
        checkpoint.load_transformer(path, device=device, dtype=dtype),
        UMT5TextEncoder.from_pretrained(path / TEXT_ENCODER_FOLDER, device=device, dtype=dtype),
        LyricTokenizer.from_vocab_file(resolve_vocab(path)),
        codec_module.MusicCodec.from_pretrained(path, device=device, dtype=dtype),
        device=device,
        dtype=dtype,
        name=spec.name if spec is not None else path.name,
    )


def build_random(*, device, dtype, size: str = "tiny") -> AceStepV1Model:
    """Random weights, no checkpoint: ``size`` "tiny" or "full" (the official sizes).

    Both sizes tokenise with the tiny test vocabularies (the real ones are
    upstream data), which the full-size embeddings cover.
    """
    import tempfile

    from . import checkpoint
    from .lyrics import LyricTokenizer, write_tiny_vocab
    from .text_encoder import UMT5TextEncoder

    device = torch.device(device)
    with tempfile.TemporaryDirectory() as scratch:
        lyric_tokenizer = LyricTokenizer.from_vocab_file(write_tiny_vocab(scratch))
    text_encoder = UMT5TextEncoder.build_random(size=size, device=device, dtype=dtype)
    config = checkpoint.transformer_config(size, lyric_vocab_size=lyric_tokenizer.vocab_size)
    with torch.device(device), default_dtype(dtype):
        transformer = AceStepTransformer(config)
    return AceStepV1Model(
        transformer,
        text_encoder,
        lyric_tokenizer,
        codec_module.build_random_codec(size=size, device=device, dtype=dtype),
        device=device,
        dtype=dtype,
        name=f"ace-step-v1-random-{size}",
    )
