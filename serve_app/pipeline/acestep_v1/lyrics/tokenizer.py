"""Lyrics → token ids for the ACE-Step v1 lyric encoder, identical to upstream's ``tokenize_lyrics``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .cleaners import normalize
from .language import identification_budget, line_language
from .vocab import LANGUAGE_TOKENS, LINE_BREAK_ID, LINE_BREAK_TOKEN, START_ID, START_TOKEN, UNKNOWN_TOKEN

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Upstream's SUPPORT_LANGUAGES; a line detected as any other language is tokenised as English.
SUPPORTED_LANGUAGES = frozenset(
    {"en", "de", "fr", "es", "it", "pt", "pl", "tr", "ru", "cs", "nl", "ar", "zh", "ja", "hu", "ko", "hi"}
)
# A line that starts with a bracketed tag ("[verse]", "[Chorus 2] ...") is tokenised as English.
STRUCTURE_TAG = re.compile(r"\[.*?\]")


class LyricTokenizer:
    """Each line: its language, upstream's normalisation for it, BPE after a ``[lang]`` prefix.

    The ids are ``[START]`` (261), then per line the line's ids and the line break ``[SPACE]``
    (2); an empty line is a line break alone.
    """

    def __init__(self, bpe: Tokenizer) -> None:
        required = (START_TOKEN, LINE_BREAK_TOKEN, UNKNOWN_TOKEN, *LANGUAGE_TOKENS)
        missing = [token for token in required if bpe.token_to_id(token) is None]
        if missing:
            raise ValueError(f"lyric vocabulary lacks the tokens {', '.join(missing)}")
        if bpe.token_to_id(START_TOKEN) != START_ID or bpe.token_to_id(LINE_BREAK_TOKEN) != LINE_BREAK_ID:
            raise ValueError(
                f"lyric vocabulary must map {START_TOKEN} to {START_ID} and {LINE_BREAK_TOKEN} to {LINE_BREAK_ID}"
            )
        self._bpe = bpe
        self.vocab_size: int = max(bpe.get_vocab(with_added_tokens=True).values()) + 1
        """Number of ids: the lyric embedding needs at least this many rows."""

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike) -> LyricTokenizer:
        from tokenizers import Tokenizer

        try:
            bpe = Tokenizer.from_file(os.fspath(path))
        except Exception as error:  # tokenizers raises plain Exceptions for unreadable files
            raise ValueError(f"cannot read the lyric vocabulary {os.fspath(path)}: {error}") from error
        return cls(bpe)

    def __call__(self, lyrics: str) -> list[int]:
        """Token ids of ``lyrics``; ``[]`` when it is empty or whitespace only.

        A line that cannot be normalised (a transliterator failing on unusual characters)
        is left out, as upstream leaves it out, with a warning naming it.
        """
        return [token for ids in self._pieces(lyrics) for token in ids]

    def count(self, lyrics: str, stop_above: int, max_identifications: int) -> int:
        """How many ids ``lyrics`` has, counting only until the count passes ``stop_above``:
        a text far over a model's limit costs no more to refuse than one just over it.
        Raises ``TooManyIdentifications`` when its lines need more than ``max_identifications``
        language identifications (realistic lyrics need about one per ten ids)."""
        total = 0
        with identification_budget(max_identifications):
            for ids in self._pieces(lyrics):
                total += len(ids)
                if total > stop_above:
                    break
        return total

    def _pieces(self, lyrics: str) -> Iterator[list[int]]:
        """The ids in order, a line at a time (the start id first)."""
        if not lyrics.strip():
            return
        yield [START_ID]
        for number, line in enumerate(lyrics.split("\n"), start=1):
            line = line.strip()
            if not line:
                yield [LINE_BREAK_ID]
                continue
            language = "en" if STRUCTURE_TAG.match(line) else line_language(line)
            if language not in SUPPORTED_LANGUAGES:
                language = "en"
            try:
                ids = self.encode_line(line, language)
            except Exception as error:
                logger.warning(
                    "lyrics line %d %.80r (%s) left out: cannot normalise it: %s", number, line, language, error
                )
                continue
            yield [*ids, LINE_BREAK_ID]

    def encode_line(self, line: str, language: str) -> list[int]:
        """Ids of one line in ``language`` (one of ``SUPPORTED_LANGUAGES``), without the line break."""
        text = normalize(line, language)
        prefix = "zh-cn" if language == "zh" else language
        return self._bpe.encode(f"[{prefix}]{text}".replace(" ", "[SPACE]")).ids
