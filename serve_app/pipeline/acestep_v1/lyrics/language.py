"""The language of one lyric line, decided the way the ACE-Step v1 model was trained.

Upstream segments each line into runs of one language (Korean, Thai and Cyrillic by
script, Latin text and everything else with py3langid, short Chinese/Japanese runs by a
few tie-break rules), counts the characters of each language (Chinese counts double) and
takes the most frequent language, or the runner-up when the most frequent is English.
The model learnt its lyric embedding from that choice, so ``line_language`` reproduces
those counts step for step, quirks included, for the one configuration upstream uses:
every py3langid language allowed, the experimental Latin-script detection switched on
(it is whenever French is allowed), a single line without newlines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, lru_cache

from .ssml import read_tag

# The 97 languages py3langid knows, in upstream's filter order; upstream allows all of them.
LANGID_LANGUAGES = [
    "af",
    "am",
    "an",
    "ar",
    "as",
    "az",
    "be",
    "bg",
    "bn",
    "br",
    "bs",
    "ca",
    "cs",
    "cy",
    "da",
    "de",
    "dz",
    "el",
    "en",
    "eo",
    "es",
    "et",
    "eu",
    "fa",
    "fi",
    "fo",
    "fr",
    "ga",
    "gl",
    "gu",
    "he",
    "hi",
    "hr",
    "ht",
    "hu",
    "hy",
    "id",
    "is",
    "it",
    "ja",
    "jv",
    "ka",
    "kk",
    "km",
    "kn",
    "ko",
    "ku",
    "ky",
    "la",
    "lb",
    "lo",
    "lt",
    "lv",
    "mg",
    "mk",
    "ml",
    "mn",
    "mr",
    "ms",
    "mt",
    "nb",
    "ne",
    "nl",
    "nn",
    "no",
    "oc",
    "or",
    "pa",
    "pl",
    "ps",
    "pt",
    "qu",
    "ro",
    "ru",
    "rw",
    "se",
    "si",
    "sk",
    "sl",
    "sq",
    "sr",
    "sv",
    "sw",
    "ta",
    "te",
    "th",
    "tl",
    "tr",
    "ug",
    "uk",
    "ur",
    "vi",
    "vo",
    "wa",
    "xh",
    "zh",
    "zu",
]
# Upstream tests membership both in the list and, in places, as a substring of "af-am-…-zu".
_ALLOWED_TEXT = "-".join(LANGID_LANGUAGES)
# Where a short run of Han characters is ambiguous, the earlier of ja/zh in the filter list wins.
_HAN_PRIORITY = min(("ja", "zh"), key=LANGID_LANGUAGES.index)
_HAN_CONFIDENCE = 0.89

# A stashed match is replaced in the text by a key "⑥<tag><index:06d>⑥".
_KEY = re.compile(r"(⑥\$*\d+[\d]{6,}⑥)")
_NUMBER_KEY = re.compile(r"(⑥\d{6,}⑥)")
_PUNCTUATION_RUN = re.compile(r"([^\w\s]+)")
_SENTENCE = re.compile(r"(.*?[。.?？!！]+[\n]{,1})")
# Lowercase French and Vietnamese letters that upstream's experimental mode adds to [a-zA-Z].
_LATIN_EXTRA = "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿăđĩũơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỷỹ"


def _script_run(letters: str) -> re.Pattern[str]:
    # A run of words in one script with the quotes before and the punctuation/space after each word.
    return re.compile(rf'(([【《（(“‘"\']*[{letters}]+[\W\s]*)+)')


@cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


class TooManyIdentifications(Exception):
    """The text needs more language identifications than the budget set for it."""


# Identifications left to the text being tokenised (None: no budget). A piece of a line costs
# one identification, about a millisecond: text cut into many pieces by digits, punctuation
# or scripts would cost the ingress seconds, so a caller may bound them.
_identifications_left: ContextVar[int | None] = ContextVar("identifications_left", default=None)


@contextmanager
def identification_budget(identifications: int) -> Iterator[None]:
    """Within the block, ``line_language`` raises ``TooManyIdentifications`` past ``identifications`` calls."""
    token = _identifications_left.set(identifications)
    try:
        yield
    finally:
        _identifications_left.reset(token)


def _classify(text: str) -> tuple[str, float]:
    left = _identifications_left.get()
    if left is not None:
        if left <= 0:
            raise TooManyIdentifications
        _identifications_left.set(left - 1)
    return _identify(text)


@lru_cache(maxsize=4096)
def _identify(text: str) -> tuple[str, float]:
    # Memoised: a line of repeated pieces (hostile or not) pays py3langid once.
    language, probability = _identifier().classify(text)
    return language, round(float(probability), 3)


def _squeeze(text: str) -> str:
    """Upstream's text for classification: punctuation runs to one space, repeated characters once."""
    # Upstream writes this as (.*?)([^\w]+) -> "\1 ", the same replacement but quadratic in
    # the length of a run of word characters.
    text = re.sub(r"[^\w]+", " ", text)
    return re.sub(r"(.)\1+", r"\1", text).strip()


def _without_punctuation(text: str) -> str:
    return _PUNCTUATION_RUN.sub("", re.sub(r"\n+", "", text)).strip()


def _is_number(text: str) -> tuple[str, bool]:
    bare = _without_punctuation(text)
    return bare, not re.sub(r"\d+", "", bare)


def _has_han(text: str) -> bool:
    return any("\u4e00" <= char <= "\u9fff" for char in text)


def _has_kana(text: str) -> bool:
    return re.search(r"[\u3040-\u309F\u30A0-\u30FF]", text) is not None


def _spaced_capitals(text: str) -> str:
    # Upstream splits camel case in English runs ("iPhone" → "i Phone ") before counting.
    return re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "


def _last_visible_char(text: str) -> str | None:
    visible = re.sub(r"\s+", "", text)
    return visible[-1] if visible else None


def _short_han_language(
    text: str, cleaned: str, language: str, score: float, previous: str | None, has_runs: bool, ends_line: bool
) -> str:
    """Language of a short (≤ 5 characters) piece with Han characters: zh, ja, or undecided "zh|ja|…".

    An undecided piece waits for the next run to settle it (see ``_LineCounter._add``).
    """
    if score < _HAN_CONFIDENCE:
        language = _HAN_PRIORITY
    if _has_kana(cleaned):
        return "ja"
    if len(cleaned) > 2 and score > 0.90:
        return language
    if ends_line:
        return "zh" if len(cleaned) <= 1 else language
    undecided = "zh|ja" if language == "zh" or (len(cleaned) <= 2 and previous == "zh") else "ja|zh"
    if _last_visible_char(text) in "。.":  # raises on None as upstream does (never: the piece has Han)
        follows = (previous in undecided or undecided in previous) if previous else False
        return previous if follows and has_runs else language
    return f"{undecided}|…"


# Upstream's passes over a line, in order: each match is stashed under a key and handled later.
_PASSES = (
    ("$1", re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)"), "tagged"),
    ("$6", _script_run("\uac00-\ud7a3"), "ko"),
    ("$8", _script_run("\u0e00-\u0e7f"), "th"),
    ("$7", _script_run("А-Яа-яЁё"), "ru"),
    ("00", re.compile(r"(\W*\d+\W+\d*\W*\d*)"), "number"),
    ("$5", _script_run(f"a-zA-Z{_LATIN_EXTRA}"), "latin"),
    ("$3", re.compile(r'(["\'])(.*?)(\1)'), "quoted"),
    ("$4", re.compile(r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})"), "quoted"),
)


@dataclass
class _Run:
    language: str
    text: str
    score: float
    tag: bool | str | None  # None for detected text, True or the tag name for <tag>…</tag> input


class _LineCounter:
    """Character counts per language for one line (one instance per line: it holds state)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # insertion order breaks ties, as upstream's sort does
        self._stash: dict[str, tuple[str, object]] = {}
        self._undecided: list[_Run] = []  # a short Han run waiting for its neighbour to pick zh or ja
        self._at_line_end = False

    def count(self, line: str) -> None:
        text = _KEY.sub("", line)
        if not text.strip():
            return
        for tag, pattern, kind in _PASSES:
            text = self._stash_matches(tag, pattern, kind, text)
        self._walk([], text, root=True)

    def _stash_matches(self, tag: str, pattern: re.Pattern[str], kind: str, text: str) -> str:
        matches = pattern.findall(text)
        if len(matches) == 1 and "".join(matches[0]) == text:
            return text  # the whole line is one match: left to the plain segmentation
        for index, match in enumerate(matches):
            key = f"⑥{tag}{index:06d}⑥"
            text = pattern.sub(key, text, count=1)
            self._stash[key] = (kind, match)
        return text

    def _walk(self, runs: list[_Run], text: str, root: bool) -> None:
        segments = _KEY.split(text)
        for index, segment in enumerate(segments):
            if root:
                self._at_line_end = index >= len(segments) - 1
            if _KEY.match(segment):
                self._stashed(runs, *self._stash[segment])
            else:
                self._segment(runs, segment)

    def _stashed(self, runs: list[_Run], kind: str, match) -> None:
        if kind == "tagged":
            self._tagged(runs, match)
        elif kind in ("ko", "th", "ru"):
            self._add(runs, kind, match[0], 1.0)
        elif kind == "number":  # takes the language of the line's first run
            self._add(runs, runs[0].language if runs else "zh", match, 0.0)
        elif kind == "latin":
            self._latin(runs, match)
        else:
            self._quoted(runs, match)

    def _tagged(self, runs: list[_Run], match: tuple[str, str, str]) -> None:
        _, name, content = match
        if name in _ALLOWED_TEXT:
            self._add(runs, name, content, 1.0, tag=True)
        else:
            language, content = read_tag(name, content)
            self._add(runs, language, content, 1.0, tag=name)

    def _latin(self, runs: list[_Run], match: tuple[str, str]) -> None:
        for sentence in _SENTENCE.split(match[0]):
            if sentence.strip():
                language, score = _classify(_squeeze(sentence))
                self._add(runs, language, sentence, score)

    def _quoted(self, runs: list[_Run], match: tuple[str, str, str]) -> None:
        text = "".join(match)
        if _KEY.findall(text):
            self._walk(runs, text, root=False)
            return
        inner = _squeeze(match[1])
        if len(inner) <= 5:
            self._segment(runs, text)
        else:
            language, score = _classify(inner)
            self._add(runs, language, text, score)

    def _restore_number(self, key: re.Match[str]) -> str:
        stashed = self._stash.get(key.group(0))
        return stashed[1] if stashed else key.group(0)

    def _segment(self, runs: list[_Run], segment: str) -> None:
        """Text between stashed matches: split at punctuation, classify each piece."""
        line_ends_here = self._at_line_end
        pieces = _PUNCTUATION_RUN.split(segment)
        last = len(pieces) - 1
        for index in range(len(pieces)):
            text = pieces[index]
            if not text:
                continue
            at_end = index >= last
            if not at_end and (not _without_punctuation(text) or not _without_punctuation(pieces[index + 1])):
                pieces[index + 1] = text + pieces[index + 1]  # punctuation joins its neighbour
                continue
            cleaned = _squeeze(re.sub(r"\d+", "", _NUMBER_KEY.sub("", text)))
            if not at_end and len(cleaned) <= 2:
                pieces[index + 1] = text + pieces[index + 1]  # too short to classify alone
                continue
            language, score = _classify(cleaned)
            previous = runs[-1].language if runs else None
            if language != "zh" and all("\u4e00" <= c <= "\u9fff" for c in re.sub(r"\s", "", cleaned)):
                language, score = "zh", 1
            if len(cleaned) <= 5 and _has_han(cleaned):
                language = _short_han_language(
                    text, cleaned, language, score, previous, bool(runs), at_end and line_ends_here
                )
            text = _NUMBER_KEY.sub(self._restore_number, text)
            self._add(runs, language, text, score)

    # Recording runs.

    def _add(self, runs: list[_Run], language: str, text: str, score: float, tag: bool | str | None = None) -> None:
        if not text.strip():
            return
        language = language.lower()
        if language == "en":
            text = _spaced_capitals(text)
        had_undecided = bool(self._undecided)
        before = self._undecided.pop() if had_undecided else (runs[-1] if runs else None)
        if before is not None and "|" in before.language:
            # The run after an undecided Han run settles it: its own language if a candidate, else the first.
            if language in before.language:
                before.language = language = language.split("|")[0]
            else:
                before.language = before.language.split("|")[0]
            if had_undecided:
                before = self._save(runs, before)
        if "|" in language and before is not None and before.language not in language and "…" not in language:
            language = language.split("|")[0]
        if "|" in language:
            self._undecided.append(_Run(language, text, score, tag))
        else:
            self._save(runs, _Run(language, text, score, tag))

    def _save(self, runs: list[_Run], run: _Run) -> _Run:
        bare, is_number = _is_number(run.text)
        previous = runs[-1] if runs else None
        if run.tag is None and previous is not None and previous.tag is None:
            if not bare or is_number:
                run.language = previous.language  # numbers and punctuation join the run before them
            if previous.language == run.language:
                self._count(previous.language, run.text)
                previous.text += run.text
                return previous
            if _is_number(previous.text)[1]:
                run.text = previous.text + run.text  # a number before a new language joins it
                runs.pop()
        if "?" in run.language or run.language in LANGID_LANGUAGES or run.language in LANGID_LANGUAGES[0]:
            runs.append(run)
            self._count(run.language, run.text)
        return run

    def _count(self, language: str, text: str) -> None:
        if "|" not in language:
            self.counts[language] = self.counts.get(language, 0) + len(text) * (2 if language == "zh" else 1)


def language_counts(line: str) -> list[tuple[str, int]]:
    """Characters per language in ``line``, most first (upstream's ``getCounts``)."""
    counter = _LineCounter()
    counter.count(line)
    if not counter.counts:
        return [("zh", 0)]
    return sorted(counter.counts.items(), key=lambda item: item[1], reverse=True)


def line_language(line: str) -> str:
    """The language code upstream's ``get_lang`` gives ``line``; "en" when the segmenter fails."""
    try:
        counts = language_counts(line)
    except TooManyIdentifications:
        raise
    except Exception:  # upstream's segmenter raises on some inputs and falls back to English
        return "en"
    language = counts[0][0]
    if language == "en" and len(counts) > 1:
        language = counts[1][0]
    return language
