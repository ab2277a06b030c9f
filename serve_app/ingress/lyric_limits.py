"""Lyrics longer than the chosen model reads are refused here, before any GPU work.

The length is counted in the model's own lyric tokens. ACE-Step v1's tokenizer
(language detection, per-language normalisation, BPE) is CPU work without torch,
so the ingress runs it. It reproduces upstream's regular expressions and calls a
language identifier for every piece of a line, and both grow faster than the line:
a line is therefore capped in characters before anything is tokenised, and the
count stops as soon as it passes the limit. ACE-Step 1.5's tokenizer ships with
its weights, which the ingress does not load; its lyrics are bounded by the
request's character limit and cut at the model's token limit, as diffusers cuts them.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..pipeline.acestep_v1.lyrics import TooManyIdentifications
from ..pipeline.invalid_field import InvalidField
from ..pipeline.registry import family_module
from ..schemas import MAX_LYRIC_LINE_CHARS

if TYPE_CHECKING:
    from ..pipeline.acestep_v1.lyrics import LyricTokenizer
    from ..pipeline.registry import ModelSpec

logger = logging.getLogger(__name__)


class LyricLimits:
    """Checks lyrics against each model's ``max_lyric_tokens``; tokenizers load on first use."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, LyricTokenizer | None] = {}
        self._lock = threading.Lock()

    def check(self, spec: ModelSpec, lyrics: str) -> None:
        tokenizer = self._tokenizer(spec)
        if tokenizer is None or not lyrics.strip():
            return
        limit = spec.max_lyric_tokens
        lines = lyrics.split("\n")
        if len(lines) >= limit:  # each line takes a token at least, and the lyrics a start token
            raise InvalidField("lyrics", f"has {len(lines)} lines; {spec.name} reads at most {limit} lyric tokens")
        for number, line in enumerate(lines, start=1):
            if len(line.strip()) > MAX_LYRIC_LINE_CHARS:
                raise InvalidField(
                    "lyrics",
                    f"line {number} has {len(line.strip())} characters, over the {MAX_LYRIC_LINE_CHARS} a line may "
                    f"have ({spec.name} reads at most {limit} lyric tokens in all); put each sung line on its own line",
                )
        identifications = limit // 4  # realistic lyrics at the token limit need about half as many
        try:
            tokens = tokenizer.count(lyrics, stop_above=limit, max_identifications=identifications)
        except TooManyIdentifications:
            raise InvalidField(
                "lyrics",
                f"is cut into more than {identifications} pieces (words split by digits, punctuation or scripts) "
                f"to check against the {limit} lyric tokens {spec.name} reads; simplify it",
            ) from None
        if tokens > limit:
            raise InvalidField("lyrics", f"is longer than {limit} lyric tokens, the most {spec.name} reads")

    def _tokenizer(self, spec: ModelSpec) -> LyricTokenizer | None:
        with self._lock:
            if spec.name not in self._tokenizers:
                self._tokenizers[spec.name] = _load_tokenizer(spec)
            return self._tokenizers[spec.name]


def _load_tokenizer(spec: ModelSpec) -> LyricTokenizer | None:
    family = family_module(spec)
    if not hasattr(family, "lyric_tokenizer"):
        return None
    try:
        return family.lyric_tokenizer(spec)
    except Exception as error:  # the generator needs the same vocabulary and reports its absence
        logger.warning("lyric length of %s is not checked in the ingress: %s", spec.name, error)
        return None
