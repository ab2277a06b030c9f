"""Randomly initialised ACE-Step 1.5 pipelines built from diffusers' own classes.

Used by ``write_tiny_checkpoint`` (tiny sizes, saved in the diffusers layout)
and by ``build_random`` (tiny or the real XL sizes, kept in memory).
"""

from __future__ import annotations

import torch

from ..dtypes import default_dtype
from . import configs


def build_tokenizer():
    """A byte-level BPE tokenizer made locally (no merges, so every byte is a token).

    It is a ``Qwen2Tokenizer``, the class the real checkpoints name in
    ``model_index.json``, backed by a ``tokenizers`` model whose vocabulary is
    the 256 byte symbols plus the special tokens the prompt templates use.
    """
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in configs.SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=32768)


def build_pipeline(
    *,
    size: str,
    variant: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    with_null_condition: bool | None = None,
):
    """An ``AceStepPipeline`` whose components are random and sized ``size``.

    ``with_null_condition`` defaults to "guided variants only": a turbo
    pipeline gets ``condition_encoder.null_condition_emb = None``.
    Parameters are created directly on ``device`` in ``dtype`` so the XL sizes
    never pass through a float32 CPU copy.
    """
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    from transformers import Qwen3Config, Qwen3Model

    if variant not in (configs.TURBO, configs.BASE):
        raise ValueError(f"unknown variant {variant!r}; expected 'turbo' or 'base'")
    if with_null_condition is None:
        with_null_condition = variant == configs.BASE
    tokenizer = build_tokenizer()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]), torch.device(device), default_dtype(dtype):
        torch.manual_seed(seed)
        transformer = AceStepTransformer1DModel(**configs.transformer_config(size, variant))
        condition_encoder = AceStepConditionEncoder(**configs.condition_encoder_config(size))
        if size == "tiny":
            # The real silence latent is an encoded silent clip, never zeros;
            # give the tiny one some content so the context input matters.
            with torch.no_grad():
                condition_encoder.silence_latent.normal_(0.0, 0.5)
        text_config = Qwen3Config(**configs.text_encoder_config(size, len(tokenizer)))
        text_encoder = Qwen3Model(text_config)
        vae = AutoencoderOobleck(**configs.vae_config(size))
        # Made last, so the components above keep the weights they had before cover existed.
        tokenizer_config, detokenizer_config = configs.audio_tokenizer_configs(size)
        audio_tokenizer = AceStepAudioTokenizer(**tokenizer_config)
        audio_token_detokenizer = AceStepAudioTokenDetokenizer(**detokenizer_config)
    if not with_null_condition:
        condition_encoder.null_condition_emb = None
    scheduler = FlowMatchEulerDiscreteScheduler(**configs.SCHEDULER_CONFIG)
    for module in (transformer, condition_encoder, text_encoder, vae, audio_tokenizer, audio_token_detokenizer):
        module.eval()
    return AceStepPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        condition_encoder=condition_encoder,
        scheduler=scheduler,
        audio_tokenizer=audio_tokenizer,
        audio_token_detokenizer=audio_token_detokenizer,
    )
