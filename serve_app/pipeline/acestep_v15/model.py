"""ACE-Step 1.5 as a ``MusicModel``: diffusers' components, our sampler.

Conditioning follows ``AceStepPipeline`` (same prompt template and task
instruction, tokenisation, text encoder, lyric embeddings, condition encoder
with the silence latent as timbre reference) and its context latents per task:
text2music: silence + all-ones chunk mask; repaint: the source with the
silence latent inside the window + a mask that is one inside it; cover: the
source through the 5 Hz audio tokenizer and detokenizer + all-ones mask, and,
below full ``audio_cover_strength``, a second conditional branch under
text2music's instruction (``Branch.TEXT2MUSIC``) that the sampler blends in.

Two things differ from the pipeline, both for batch invariance:

* every row is encoded on its own (no padding reaches the text encoder or the
  condition encoder), so a row's conditioning is what a batch of one gives;
* rows are then padded to a common length and the DiT's cross-attention is
  given the padding mask. ``AceStepTransformer1DModel.forward`` takes no
  encoder mask (its cross-attention attends to every key), so ``MaskedDiT``
  runs the transformer's own submodules with the mask passed to each block.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from torch import nn

from ..invalid_field import InvalidField
from ..protocol import Branch, Conditioning, ErgFlags
from ..registry import V15_MAX_LYRIC_TOKENS
from ..schedules import AceStepV15Schedule
from ..tasks import V15_TASKS, TaskSettings
from . import checkpoint

ENCODER_STATES = "encoder_hidden_states"
ENCODER_MASK = "encoder_attention_mask"
CONTEXT = "context_latents"

TARGET_PEAK = 10.0 ** (-1.0 / 20.0)  # -1 dBFS
TIMBRE_REFERENCE_SECONDS = 30


def _rotary_tables(length: int, head_dim: int, theta: float, device, dtype):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    positions = torch.arange(length, device=device, dtype=torch.float32)
    cos, sin = get_1d_rotary_pos_embed(head_dim, positions, theta=theta, use_real=True, repeat_interleave_real=False)
    return cos.to(dtype), sin.to(dtype)


def _band_mask(length: int, window: int, device, dtype) -> torch.Tensor:
    """Additive ``(1, 1, L, L)`` mask keeping keys within ``window`` positions of the query."""
    offsets = torch.arange(length, device=device)
    inside = (offsets[:, None] - offsets[None, :]).abs() <= window
    blocked = torch.full((length, length), torch.finfo(dtype).min, device=device, dtype=dtype)
    return blocked.masked_fill(inside, 0.0)[None, None]


class MaskedDiT(nn.Module):
    """``AceStepTransformer1DModel`` evaluated with a cross-attention key mask.

    Equal to ``transformer(..., timestep_r=timestep)`` when the mask keeps
    every key; padded keys (mask False) receive no attention weight.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        latents: torch.Tensor,
        sigmas: torch.Tensor,
        encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        dit = self.transformer
        frames = latents.shape[1]

        # The 1.5 DiT takes (t, r) with r = t at inference; the r path sees t - r = 0.
        time_emb, time_mod = dit.time_embed(sigmas)
        gap_emb, gap_mod = dit.time_embed_r(sigmas - sigmas)
        time_emb = time_emb + gap_emb
        time_mod = time_mod + gap_mod

        hidden = torch.cat([context, latents], dim=-1)
        remainder = frames % dit.patch_size
        if remainder:
            hidden = nn.functional.pad(hidden, (0, 0, 0, dit.patch_size - remainder))
        hidden = dit.proj_in_conv(hidden.transpose(1, 2)).transpose(1, 2)
        keys = dit.condition_embedder(encoder_states)

        patches = hidden.shape[1]
        rotary = _rotary_tables(patches, dit.head_dim, dit.rope_theta, hidden.device, hidden.dtype)
        # Built for every backend: the flash path turns it back into its window argument.
        band = _band_mask(patches, dit.config.sliding_window, hidden.device, hidden.dtype)
        key_mask = encoder_mask.to(device=hidden.device, dtype=torch.bool)

        for kind, block in zip(dit.layer_types, dit.layers):
            hidden = block(
                hidden_states=hidden,
                position_embeddings=rotary,
                temb=time_mod,
                attention_mask=band if kind == "sliding_attention" else None,
                encoder_hidden_states=keys,
                encoder_attention_mask=key_mask,
            )

        shift, scale = (dit.scale_shift_table + time_emb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (dit.norm_out(hidden) * (1 + scale) + shift).type_as(hidden)
        hidden = dit.proj_out_conv(hidden.transpose(1, 2)).transpose(1, 2)
        return hidden[:, :frames]


def _durations(duration_s, rows: int) -> list[float]:
    if duration_s is None:
        raise ValueError(
            "acestep_v15 encode() needs duration_s (the requested audio duration, one float or one per "
            "row): it sets the prompt's duration metadata and the context latents' length"
        )
    if isinstance(duration_s, numbers.Real):
        values = [float(duration_s)] * rows
    else:
        values = [float(value) for value in duration_s]
    if len(values) != rows:
        raise ValueError(f"duration_s has {len(values)} entries for {rows} prompts")
    if any(not math.isfinite(value) or value <= 0 for value in values):
        raise ValueError(f"durations must be positive and finite, got {values}")
    return values


class AceStepV15Model:
    """A loaded ACE-Step 1.5 pipeline behind the ``MusicModel`` protocol."""

    family = "acestep_v15"
    channels = 2
    guidance_norm_dims = (-2,)
    supported_erg: frozenset[str] = frozenset()
    vocal_language = "en"
    max_text_tokens = 256
    max_lyric_tokens = V15_MAX_LYRIC_TOKENS
    frame_axis = 1
    source_encoding_draws = True
    """The VAE encodes a source by sampling its posterior (``encode_audio`` takes a generator)."""
    compile_options: dict | None = None
    """Keyword arguments for ``torch.compile`` of the denoiser (tests pick a cheap backend)."""

    def __init__(
        self,
        pipe,
        *,
        device: torch.device,
        dtype: torch.dtype,
        has_null_condition: bool,
        name: str = "acestep-v15",
    ) -> None:
        self.pipe = pipe
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.transformer = pipe.transformer
        self.condition_encoder = pipe.condition_encoder
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.vae = pipe.vae
        # Optional in diffusers' layout; only cover needs them.
        self.audio_tokenizer = pipe.audio_tokenizer
        self.audio_token_detokenizer = pipe.audio_token_detokenizer
        modules = (self.transformer, self.condition_encoder, self.text_encoder, self.vae)
        for module in (*modules, self.audio_tokenizer, self.audio_token_detokenizer):
            if module is not None:
                module.eval().requires_grad_(False)
        self.noise_schedule = AceStepV15Schedule()
        self.sample_rate = int(pipe.sample_rate)
        self.latents_per_second = float(pipe.latents_per_second)
        self.hop_length = math.prod(self.vae.config.downsampling_ratios)
        self.acoustic_dim = int(self.transformer.config.audio_acoustic_hidden_dim)
        self.is_turbo = bool(pipe.is_turbo)
        self.has_null_condition = has_null_condition and self.condition_encoder.null_condition_emb is not None
        self.denoiser = MaskedDiT(self.transformer)
        self._compiled_denoiser = None
        self._instructions = {task: pipe._get_task_instruction(task_type=task) for task in V15_TASKS}

    # ------------------------------------------------------------------ shapes

    def latent_frames(self, duration_s: float) -> int:
        return math.ceil(duration_s * self.latents_per_second)

    def latent_shape(self, duration_s: float) -> tuple[int, ...]:
        return (self.latent_frames(duration_s), self.acoustic_dim)

    # ---------------------------------------------------------------- encoding

    def _token_ids(self, text: str, limit: int) -> torch.Tensor:
        encoded = self.tokenizer(text, truncation=True, max_length=limit, return_tensors="pt")
        return encoded.input_ids.to(self.device)

    def _timbre_reference(self) -> torch.Tensor:
        frames = math.ceil(TIMBRE_REFERENCE_SECONDS * self.latents_per_second)
        return self.condition_encoder.silence_latent[:, :frames, :].to(device=self.device, dtype=self.dtype)

    def _encode_row(self, prompt: str, lyrics: str, duration_s: float, task: str) -> torch.Tensor:
        """Condition-encoder states ``(L, D)`` of one row under ``task``'s instruction, exactly as a batch of one."""
        text, lyric_text = self.pipe._format_prompt(
            prompt=prompt,
            lyrics=lyrics,
            vocal_language=self.vocal_language,
            audio_duration=duration_s,
            instruction=self._instructions[task],
        )
        text_ids = self._token_ids(text, self.max_text_tokens)
        lyric_ids = self._token_ids(lyric_text, self.max_lyric_tokens)
        text_states = self.text_encoder(input_ids=text_ids).last_hidden_state
        lyric_states = self.text_encoder.get_input_embeddings()(lyric_ids)
        states, mask = self.condition_encoder(
            text_hidden_states=text_states,
            text_attention_mask=torch.ones_like(text_ids, dtype=torch.bool),
            lyric_hidden_states=lyric_states,
            lyric_attention_mask=torch.ones_like(lyric_ids, dtype=torch.bool),
            refer_audio_acoustic_hidden_states_packed=self._timbre_reference(),
            refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=self.device),
        )
        if not bool(mask.all()):
            raise RuntimeError("condition encoder returned padding for an unpadded row")
        return states[0]

    def _silence(self, frames: int, rows: int) -> torch.Tensor:
        """The silence latent tiled to ``frames``: text2music's context, repaint's filler."""
        silence, _ = self.pipe.prepare_src_latents(
            device=self.device, dtype=self.dtype, batch_size=1, latent_length=frames
        )
        return silence.expand(rows, -1, -1)

    def _chunk_mask(self, task: TaskSettings, frames: int, rows: int) -> torch.Tensor:
        """One where the denoiser generates, zero where it keeps the context (repaint's outside)."""
        return self.pipe._build_chunk_mask(
            task_type=task.task,
            latent_length=frames,
            batch_size=rows,
            device=self.device,
            dtype=self.dtype,
            acoustic_dim=self.acoustic_dim,
            repainting_start=task.repaint_start,
            repainting_end=task.repaint_end,
            has_src_audio=task.task != "text2music",
        )

    def _cover_source(self, source: torch.Tensor) -> torch.Tensor:
        """The source as cover hears it: through the 5 Hz audio tokens and back, row by row."""
        if self.audio_tokenizer is None or self.audio_token_detokenizer is None:
            raise InvalidField("task", f"{self.name}'s checkpoint has no audio tokenizer, which cover needs")
        silence = self.condition_encoder.silence_latent.to(device=self.device, dtype=self.dtype)
        rows = []
        for row in source:
            quantized, _ = self.audio_tokenizer.tokenize(row[None], silence)
            rows.append(self.audio_token_detokenizer(quantized)[:, : source.shape[1]])
        return torch.cat(rows)

    def _context_latents(self, task: TaskSettings, frames: int, rows: int, source: torch.Tensor | None):
        """``(rows, frames, 2 * acoustic_dim)``: the context latents and the chunk mask."""
        mask = self._chunk_mask(task, frames, rows)
        if task.task == "text2music":
            context = self._silence(frames, rows)
        elif task.task == "repaint":
            context = torch.where(mask > 0.5, self._silence(frames, rows), source)
        elif task.task == "cover":
            context = self._cover_source(source)
        else:
            raise InvalidField("task", f"{self.name} offers the tasks {', '.join(V15_TASKS)}, not {task.task}")
        return torch.cat([context, mask], dim=-1).contiguous()

    def _null_condition(self) -> torch.Tensor:
        if not self.has_null_condition:
            raise ValueError(
                f"model {self.name!r} has no learned null_condition_emb (a guidance-distilled turbo "
                "checkpoint), so it cannot run the unconditional branch; sample it without guidance "
                "(guidance_scale 1)"
            )
        return self.condition_encoder.null_condition_emb.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _check_erg(erg: ErgFlags) -> None:
        enabled = erg.enabled()
        if enabled:
            raise ValueError(f"acestep_v15 does not support ERG; got {', '.join(sorted(enabled))} (use_erg_* flags)")

    @torch.no_grad()
    def encode(
        self,
        prompts: Sequence[str],
        lyrics: Sequence[str],
        branches: Collection[Branch],
        erg: ErgFlags,
        *,
        duration_s: float | Sequence[float] | None = None,
        task: TaskSettings | None = None,
        source: torch.Tensor | None = None,
    ) -> dict[Branch, Conditioning]:
        """Conditioning per branch; every branch has the same tensor shapes.

        Keys: ``encoder_hidden_states`` ``(B, L, D)``, ``encoder_attention_mask``
        ``(B, L)`` bool (False on padding), ``context_latents`` ``(B, T, C_ctx)``.
        ``duration_s`` (required) is the requested duration, one value or one per row.
        ``task`` (default text2music) and, for repaint and cover, ``source``: the items'
        source latents ``(B, T, C)`` from ``encode_audio``, which fix ``T``.
        """
        self._check_erg(erg)
        task = task or TaskSettings()
        branches = list(dict.fromkeys(branches))
        if len(prompts) != len(lyrics):
            raise ValueError(f"{len(prompts)} prompts but {len(lyrics)} lyrics")
        rows = len(prompts)
        if rows == 0:
            raise ValueError("encode() needs at least one prompt")
        durations = _durations(duration_s, rows)
        if task.task == "text2music":
            frame_counts = {self.latent_frames(value) for value in durations}
            if len(frame_counts) != 1:
                raise ValueError(f"rows of one batch must share a latent length, got durations {durations}")
            frames = frame_counts.pop()
        elif source is None or source.shape[0] != rows:
            raise ValueError(f"task {task.task} needs source latents, one row per prompt")
        else:
            source = source.to(device=self.device, dtype=self.dtype)
            frames = source.shape[1]
        null = self._null_condition() if Branch.UNCOND in branches else None

        cache: dict[tuple[str, str, float, str], torch.Tensor] = {}

        def row_states(prompt: str, lyric: str, duration: float, task_name: str = task.task) -> torch.Tensor:
            key = (prompt, lyric, duration, task_name)
            if key not in cache:
                cache[key] = self._encode_row(*key)
            return cache[key]

        per_branch: dict[Branch, list[torch.Tensor]] = {}
        if Branch.COND in branches or Branch.UNCOND in branches:
            per_branch[Branch.COND] = [row_states(*row) for row in zip(prompts, lyrics, durations)]
        if Branch.TEXT_ONLY in branches:
            per_branch[Branch.TEXT_ONLY] = [row_states(p, "", d) for p, d in zip(prompts, durations)]
        if Branch.TEXT2MUSIC in branches:
            per_branch[Branch.TEXT2MUSIC] = [row_states(*row, "text2music") for row in zip(prompts, lyrics, durations)]
        width = max(states.shape[0] for sequences in per_branch.values() for states in sequences)

        def padded(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            states = sequences[0].new_zeros(rows, width, sequences[0].shape[-1])
            mask = torch.zeros(rows, width, dtype=torch.bool, device=self.device)
            for index, sequence in enumerate(sequences):
                states[index, : sequence.shape[0]] = sequence
                mask[index, : sequence.shape[0]] = True
            return states, mask

        context = self._context_latents(task, frames, rows, source)
        result: dict[Branch, Conditioning] = {}
        packed = {branch: padded(sequences) for branch, sequences in per_branch.items()}
        for branch in branches:
            if branch is Branch.UNCOND:
                cond_states, cond_mask = packed[Branch.COND]
                # The learned null embedding at every position the conditional row uses,
                # as the pipeline broadcasts it; the same mask keeps padding inert.
                states, mask = null.expand_as(cond_states).clone(), cond_mask.clone()
            else:
                states, mask = packed[branch]
                states, mask = states.clone(), mask.clone()
            result[branch] = {ENCODER_STATES: states, ENCODER_MASK: mask, CONTEXT: context.clone()}
        return result

    @torch.no_grad()
    def encode_audio(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents ``(1, T, C)`` of a float ``(channels, samples)`` waveform at 48 kHz: a draw from the
        VAE's posterior, as the pipeline takes it, from ``generator`` (a CPU generator draws the
        same values on every device)."""
        audio = waveform.unsqueeze(0).to(device=self.device, dtype=self.vae.dtype)
        posterior = self.vae.encode(audio).latent_dist
        return posterior.sample(generator=generator).transpose(1, 2).to(self.dtype)

    # --------------------------------------------------------------- denoising

    def _compiled(self):
        if self._compiled_denoiser is None:
            self._compiled_denoiser = torch.compile(self.denoiser, **(self.compile_options or {}))
        return self._compiled_denoiser

    def velocity(
        self,
        latents: torch.Tensor,
        sigmas: torch.Tensor,
        conditioning: Conditioning,
        erg_rows: torch.Tensor | None = None,
        compiled: bool = False,
    ) -> torch.Tensor:
        if erg_rows is not None and bool(torch.as_tensor(erg_rows).any()):
            raise ValueError("acestep_v15 does not support ERG (erg_rows has rows set)")
        rows = latents.shape[0]
        sigmas = torch.as_tensor(sigmas, device=self.device).to(self.dtype).reshape(-1)
        if sigmas.numel() == 1 and rows != 1:
            sigmas = sigmas.expand(rows)
        denoiser = self._compiled() if compiled else self.denoiser
        with torch.no_grad():
            prediction = denoiser(
                latents.to(device=self.device, dtype=self.dtype),
                sigmas,
                conditioning[ENCODER_STATES].to(device=self.device, dtype=self.dtype),
                conditioning[ENCODER_MASK].to(device=self.device),
                conditioning[CONTEXT].to(device=self.device, dtype=self.dtype),
            )
        return prediction.float()

    # ---------------------------------------------------------------- decoding

    @staticmethod
    def normalise_peak(audio: torch.Tensor) -> torch.Tensor:
        """Per item: divide by the peak when it exceeds 1, then scale the peak to -1 dBFS."""
        audio = audio.float()
        peak = audio.abs().amax(dim=(1, 2), keepdim=True)
        audio = audio / peak.clamp(min=1.0)
        peak = audio.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
        return audio * (TARGET_PEAK / peak)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        available = latents.shape[1] * self.hop_length
        if num_samples > available:
            raise ValueError(f"{num_samples} samples requested but {latents.shape[1]} latent frames give {available}")
        waveforms = []
        for item in latents:
            frames = item.to(device=self.device, dtype=self.vae.dtype).transpose(0, 1).unsqueeze(0)
            audio = self.normalise_peak(self.vae.decode(frames).sample)
            waveforms.append(audio[..., :num_samples].cpu())
        return torch.cat(waveforms)


def load(path: Path, *, device: torch.device, dtype: torch.dtype, spec=None) -> AceStepV15Model:
    from diffusers import AceStepPipeline

    path = Path(path)
    has_null = checkpoint.has_null_condition(path)
    pipe = AceStepPipeline.from_pretrained(str(path), dtype=dtype)
    if not has_null:
        # from_pretrained fills a missing parameter with random values; drop it.
        pipe.condition_encoder.null_condition_emb = None
    pipe.to(torch.device(device))
    name = spec.name if spec is not None else path.name
    model = AceStepV15Model(pipe, device=device, dtype=dtype, has_null_condition=has_null, name=name)
    if spec is not None and spec.context_hop != model.hop_length:
        raise ValueError(
            f"{name}: the catalog counts {spec.context_hop} samples per latent frame, the VAE in {path} "
            f"{model.hop_length}; the planner would size sources wrongly"
        )
    return model


def build_random(*, device, dtype, size: str = "tiny", variant: str = "base") -> AceStepV15Model:
    from . import configs
    from .components import build_pipeline

    variant = configs.variant_of(variant)
    pipe = build_pipeline(size=size, variant=variant, device=device, dtype=dtype)
    return AceStepV15Model(
        pipe,
        device=torch.device(device),
        dtype=dtype,
        has_null_condition=variant == configs.BASE,
        name=f"acestep-v15-random-{size}-{variant}",
    )
