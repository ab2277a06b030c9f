"""Where the lyric vocabulary comes from: the checkpoint, a verified download cache, or a tiny build.

Upstream ships its BPE vocabulary (``vocab.json``, 6693 ids) inside its Python package, not in
the hub repository, so a real checkpoint folder has none. ``resolve_vocab`` looks in this order:

1. ``<checkpoint>/lyric_tokenizer/vocab.json`` (``CHECKPOINT_VOCAB``): a copy put there by an
   operator, or the tiny vocabulary that ``write_tiny_vocab`` writes for tiny checkpoints;
2. ``<models dir>/acestep-v1-lyric-vocab/vocab-<sha256 prefix>.json``: the cached download;
3. a download of the file from the upstream repository at a pinned commit, checked against
   its SHA-256 and written atomically into the cache. With ``HF_HUB_OFFLINE`` set, or with no
   network, the error names the URL and both places the file may be put.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ...registry import ModelUnavailableError, models_dir

UPSTREAM_COMMIT = "d612523f50e252c0e138e68ae75b06223f96e934"
VOCAB_URL = (
    f"https://raw.githubusercontent.com/ace-step/ACE-Step/{UPSTREAM_COMMIT}/acestep/models/lyrics_utils/vocab.json"
)
VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"
CHECKPOINT_VOCAB = Path("lyric_tokenizer") / "vocab.json"
DOWNLOAD_TIMEOUT_S = 60

START_TOKEN, START_ID = "[START]", 261
LINE_BREAK_TOKEN, LINE_BREAK_ID = "[SPACE]", 2
UNKNOWN_TOKEN = "[UNK]"
LANGUAGE_ID_START = 259  # [en], the first id after the base vocabulary
# The prefix token of each language the tokenizer writes; Chinese is "[zh-cn]".
LANGUAGE_TOKENS = tuple(
    f"[{code}]"
    for code in (
        "en",
        "de",
        "fr",
        "es",
        "it",
        "pt",
        "pl",
        "tr",
        "ru",
        "cs",
        "nl",
        "ar",
        "zh-cn",
        "ja",
        "hu",
        "ko",
        "hi",
    )
)
# Section tags that the real vocabulary holds as single tokens ("[verse]" is one id).
STRUCTURE_TOKENS = tuple(
    f"[{tag}]"
    for tag in (
        "start",
        "intro",
        "verse",
        "chorus",
        "bridge",
        "outro",
        "end",
        "inst",
        "solo",
        "hook",
        "pre-chorus",
        "break",
    )
)
_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


class VocabularyUnavailableError(ModelUnavailableError):
    """The lyric vocabulary is not on disk and cannot be downloaded."""


def fetch(url: str) -> bytes:
    """The bytes at ``url`` (replaced in tests: they never reach the network)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


def default_cache_dir() -> Path:
    return models_dir() / "acestep-v1-lyric-vocab"


def resolve_vocab(checkpoint_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The vocabulary file for a v1 checkpoint folder (see the module docstring for the order)."""
    in_checkpoint = Path(checkpoint_dir) / CHECKPOINT_VOCAB
    if in_checkpoint.is_file():
        return in_checkpoint
    cached = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"vocab-{VOCAB_SHA256[:16]}.json"
    if cached.is_file() and _sha256(cached.read_bytes()) == VOCAB_SHA256:
        return cached

    def unavailable(reason: str) -> VocabularyUnavailableError:
        return VocabularyUnavailableError(
            f"the ACE-Step v1 lyric vocabulary is missing and {reason}; download {VOCAB_URL} "
            f"(sha256 {VOCAB_SHA256}) to {in_checkpoint} or {cached}"
        )

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFFLINE_VALUES:
        raise unavailable("HF_HUB_OFFLINE is set")
    try:
        content = fetch(VOCAB_URL)
    except OSError as error:  # URLError, timeouts and refused connections are all OSErrors
        raise unavailable(f"the download failed ({error})") from error
    digest = _sha256(content)
    if digest != VOCAB_SHA256:
        raise unavailable(f"the download has sha256 {digest}, not the pinned one")
    _write_atomically(cached, content)
    return cached


def write_tiny_vocab(path: str | os.PathLike) -> Path:
    """Write a small vocabulary into the checkpoint folder ``path`` (at ``CHECKPOINT_VOCAB``).

    Same file format and special ids as upstream's: [STOP] 0, [UNK] 1, [SPACE] 2 (the line
    break), [en] 259, [de] 260, [START] 261, the other language and section tokens after it;
    ids 3-258 are characters (Latin with accents, digits, Cyrillic, punctuation) and BPE merges
    learnt from a few romanised lyric lines. Returns the file written.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=UNKNOWN_TOKEN))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=LANGUAGE_ID_START,
        special_tokens=["[STOP]", UNKNOWN_TOKEN, LINE_BREAK_TOKEN],
        initial_alphabet=list(_TINY_ALPHABET),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    if bpe.get_vocab_size() != LANGUAGE_ID_START:
        raise RuntimeError(f"tiny vocabulary has {bpe.get_vocab_size()} base tokens, needs {LANGUAGE_ID_START}")
    specials = [LANGUAGE_TOKENS[0], LANGUAGE_TOKENS[1], START_TOKEN, *LANGUAGE_TOKENS[2:], *STRUCTURE_TOKENS]
    bpe.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    if bpe.token_to_id(START_TOKEN) != START_ID or bpe.token_to_id(LINE_BREAK_TOKEN) != LINE_BREAK_ID:
        raise RuntimeError("tiny vocabulary special ids differ from upstream's")
    target = Path(path) / CHECKPOINT_VOCAB
    _write_atomically(target, bpe.to_str().encode())
    return target


_TINY_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz0123456789!'(),-./:;?"
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœăąćčďęěğıłńňőřśşšťůűźżžōū"
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
)
_TINY_CORPUS = (
    "the night is young and we are dancing under city lights",
    "hold on to me when the morning comes and the rain falls down",
    "we sing together every time the music plays on the radio",
    "forever and ever my heart will follow you home tonight",
    "wo3 men5 yi4 qi3 chang4 ge1 ni3 hao3 shi4 jie4 ai4 qing2",
    "yue4 liang4 dai4 biao3 wo3 de5 xin1 feng1 chui1 guo4 tian1 kong1",
    "kimi no koe ga kikoeru yoru no sora ni hoshi ga hikaru",
    "watashi wa anata wo matte iru ashita mo issho ni utaou",
    "saranghae neoui maeum sok-e nae norae-ga deullyeo",
    "haneul arae uri hamkke georeo ga",
    "bailando bajo la luna corazón canción noche",
    "je chante pour toi mon amour dans la nuit étoilée",
    "ich singe für dich unter dem himmel heute nacht",
    "я пою для тебя под звёздным небом",
)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _write_atomically(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
