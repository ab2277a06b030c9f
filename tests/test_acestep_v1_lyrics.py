"""ACE-Step v1 lyric tokenizer: the ids upstream's tokenize_lyrics gives, on a tiny vocabulary.

Expected strings are worked out from upstream's rules (num2words readings, Chinese number
rules, pinyin with tone digits, Revised Romanisation, Hepburn romaji); expected ids are the
BPE ids of those strings in the tiny vocabulary, wrapped in [START] (261) and line breaks (2).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error

import pytest
from tokenizers import Tokenizer

from serve_app.pipeline.acestep_v1 import lyrics
from serve_app.pipeline.acestep_v1.lyrics import (
    CHECKPOINT_VOCAB,
    LyricTokenizer,
    VocabularyUnavailableError,
    resolve_vocab,
    write_tiny_vocab,
)
from serve_app.pipeline.acestep_v1.lyrics import tokenizer as tokenizer_module
from serve_app.pipeline.acestep_v1.lyrics import vocab as vocab_module
from serve_app.pipeline.acestep_v1.lyrics.cleaners import normalize
from serve_app.pipeline.acestep_v1.lyrics.language import language_counts, line_language
from serve_app.pipeline.acestep_v1.lyrics.zh_numbers import normalize_chinese

START, BREAK = 261, 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("acestep-v1-tiny")
    write_tiny_vocab(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return LyricTokenizer.from_vocab_file(resolve_vocab(checkpoint))


@pytest.fixture(scope="module")
def bpe(checkpoint):
    """The raw BPE vocabulary, to spell out expected ids of a normalised line."""
    return Tokenizer.from_file(str(checkpoint / CHECKPOINT_VOCAB))


def line_ids(bpe, text: str) -> list[int]:
    return bpe.encode(text.replace(" ", "[SPACE]")).ids


def test_tiny_vocabulary_has_upstreams_special_ids(bpe, tokenizer):
    ids = {token: bpe.token_to_id(token) for token in ("[STOP]", "[UNK]", "[SPACE]", "[en]", "[de]", "[START]")}
    assert ids == {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[en]": 259, "[de]": 260, "[START]": 261}
    for token in ("[zh-cn]", "[ja]", "[ko]", "[hi]", "[verse]", "[pre-chorus]"):
        assert bpe.token_to_id(token) is not None, token
    assert tokenizer.vocab_size == bpe.get_vocab_size() == 289


@pytest.mark.parametrize("lyrics", ["", "   ", "\n\n", " \t\n "])
def test_empty_lyrics_give_no_ids(tokenizer, lyrics):
    assert tokenizer(lyrics) == []


def test_structure_tags_are_english_and_empty_lines_are_line_breaks(tokenizer, bpe):
    lyrics = "[verse]\nThe night is young\n\n[Chorus 2]\n[verse] 你好\n"
    assert tokenizer(lyrics) == [
        START,
        *line_ids(bpe, "[en][verse]"),  # a section tag is one token
        BREAK,
        *line_ids(bpe, "[en]the night is young"),
        BREAK,
        BREAK,  # the empty line
        *line_ids(bpe, "[en][chorus two]"),  # numbers in a tag are spelled out too
        BREAK,
        *line_ids(bpe, "[en][verse] 你好"),  # a line opening with a tag is English whatever follows
        BREAK,
        BREAK,  # the trailing newline ends in an empty line
    ]
    assert bpe.token_to_id("[verse]") in tokenizer("[verse]")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Mr. Jones paid $20 & 50% off", "mister jones paid twenty dollars and fifty percent off"),
        ("It's the 1st and the 22nd time", "it's the first and the twenty-second time"),
        ("12.5 seconds, 100,000 reasons", "twelve point five seconds, one hundred thousand reasons"),
        ('"Hold   me"  Dr. Who', "hold me doctor who"),
    ],
)
def test_english_numbers_abbreviations_and_symbols(line, expected):
    assert normalize(line, "en") == expected


@pytest.mark.parametrize(
    ("line", "language", "expected"),
    [
        ("Ça coûte 20€, Mme. Moreau", "fr", "ça coûte vingt euros, madame moreau"),
        ("Ich bin 1. und du bist 2.", "de", "ich bin erste und du bist zweite"),
        ("Г-н Иванов", "ru", "господин иванов"),
        ("İstanbul", "tr", "istanbul"),
        ("मैं   तुमसे", "hi", "मैं तुमसे"),
    ],
)
def test_other_languages_normalise_as_upstream(line, language, expected):
    assert normalize(line, language) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("在12.5秒内有50名士兵", "在十二点五秒内有五十名士兵"),  # counted quantities
        ("我有200个朋友", "我有两百个朋友"),  # 2 before 百 reads 两
        ("12000块", "一万两千块"),
        ("2024年5月3日", "二零二四年五月三日"),  # years digit by digit
        ("涨了15%", "涨了百分之十五"),
        ("1/2", "二分之一"),
        ("电话13812345678", "电话一三八一二三四五六七八"),
        ("2000", "二零零零"),  # four digits or more without a measure word: a code
        ("10.5", "十点五"),
        ("P2P", "P2P"),
        ("你好，世界！", "你好,世界,"),  # punctuation becomes commas
    ],
)
def test_chinese_number_normalisation(text, expected):
    assert normalize_chinese(text) == expected


def test_chinese_line_is_pinyin_with_tone_digits(tokenizer, bpe):
    assert normalize("在12.5秒内有50名士兵", "zh") == "zai4shi2er4dian3wu3miao3nei4you3wu3shi2ming2shi4bing1"
    assert tokenizer("你好，世界") == [START, *line_ids(bpe, "[zh-cn]ni3hao3,shi4jie4"), BREAK]


def test_korean_line_is_romanised(tokenizer, bpe):
    assert normalize("사랑해", "ko") == "salanghae"
    assert tokenizer("사랑해") == [START, *line_ids(bpe, "[ko]salanghae"), BREAK]


def test_japanese_line_is_romaji(tokenizer, bpe):
    assert normalize("カタカナ", "ja") == "katakana"
    assert tokenizer("君の声が聞こえる") == [START, *line_ids(bpe, "[ja]kimi no koe ga kikoeru"), BREAK]


def test_language_counts_and_the_english_runner_up_rule():
    # Chinese characters count double; English wins on count but yields to the runner-up.
    assert language_counts("你好") == [("zh", 4)]
    counts = language_counts("I love you so much 我爱你")
    assert [language for language, _ in counts] == ["en", "zh"]
    assert line_language("I love you so much 我爱你") == "zh"
    assert line_language("The night is young and we are dancing") == "en"
    assert line_language("사랑해요") == "ko"
    assert line_language("Я люблю тебя") == "ru"


@pytest.mark.parametrize(("line", "detected"), [("Anh yêu em nhiều lắm", "vi"), ("ฉันรักเธอ", "th")])
def test_unsupported_language_is_tokenised_as_english(tokenizer, line, detected):
    assert line_language(line) == detected
    assert tokenizer(line) == [START, *tokenizer.encode_line(line, "en"), BREAK]
    assert tokenizer(line)[1] == 259  # [en]


def test_ids_stay_inside_the_vocabulary(tokenizer):
    lyrics = "[verse]\nHello 你好 안녕 こんにちは\nПривет мир 123\nمرحبا\n[chorus]\n§±~ 😀\n"
    ids = tokenizer(lyrics)
    assert ids[0] == START and ids[-1] == BREAK
    assert all(0 <= token < tokenizer.vocab_size for token in ids)


def test_line_that_cannot_be_normalised_is_left_out_with_a_warning(tokenizer, bpe, monkeypatch, caplog):
    real_normalize = tokenizer_module.normalize

    def failing_for_japanese(text, language):
        if language == "ja":
            raise RuntimeError("romaji converter failed")
        return real_normalize(text, language)

    monkeypatch.setattr(tokenizer_module, "normalize", failing_for_japanese)
    with caplog.at_level(logging.WARNING, logger=tokenizer_module.__name__):
        ids = tokenizer("hello\n君の声が聞こえる\nworld")
    # Upstream drops the failing line and its line break; the others are untouched.
    assert ids == [START, *line_ids(bpe, "[en]hello"), BREAK, *line_ids(bpe, "[en]world"), BREAK]
    assert "line 2" in caplog.text and "君の声が聞こえる" in caplog.text and "romaji converter failed" in caplog.text


def test_vocabulary_without_special_tokens_is_refused(tmp_path):
    from tokenizers import models

    path = tmp_path / "vocab.json"
    Tokenizer(models.BPE(vocab={"[UNK]": 0, "a": 1}, merges=[], unk_token="[UNK]")).save(str(path))
    with pytest.raises(ValueError, match=r"\[START\]"):
        LyricTokenizer.from_vocab_file(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="cannot read"):
        LyricTokenizer.from_vocab_file(path)


# Where the vocabulary comes from. The downloader is replaced: no test reaches the network.

FAKE_VOCAB = b'{"pretend": "vocab"}'


@pytest.fixture
def downloads(monkeypatch):
    """Serve FAKE_VOCAB as the pinned file and record the URLs fetched."""
    fetched = []

    def fake_fetch(url):
        fetched.append(url)
        return FAKE_VOCAB

    monkeypatch.setattr(vocab_module, "fetch", fake_fetch)
    monkeypatch.setattr(vocab_module, "VOCAB_SHA256", hashlib.sha256(FAKE_VOCAB).hexdigest())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fetched


def test_checkpoint_copy_comes_before_the_cache(checkpoint, tmp_path, downloads):
    assert resolve_vocab(tmp_path / "real-checkpoint", cache_dir=tmp_path / "cache").read_bytes() == FAKE_VOCAB
    assert resolve_vocab(checkpoint, cache_dir=tmp_path / "cache") == checkpoint / CHECKPOINT_VOCAB
    assert len(downloads) == 1


def test_download_is_verified_cached_and_done_once(tmp_path, downloads):
    cache = tmp_path / "cache"
    first = resolve_vocab(tmp_path / "checkpoint", cache_dir=cache)
    second = resolve_vocab(tmp_path / "another-checkpoint", cache_dir=cache)
    assert first == second and first.read_bytes() == FAKE_VOCAB
    assert downloads == [vocab_module.VOCAB_URL]
    assert [item.name for item in cache.iterdir()] == [first.name]  # no temporary file left behind
    assert vocab_module.UPSTREAM_COMMIT in vocab_module.VOCAB_URL


def test_default_cache_is_under_the_models_dir(tmp_path, downloads, monkeypatch):
    monkeypatch.setenv("ACESTEP_MODELS_DIR", str(tmp_path / "models"))
    assert resolve_vocab(tmp_path / "checkpoint").is_relative_to(tmp_path / "models")


def test_download_with_the_wrong_hash_is_refused_and_not_cached(tmp_path, downloads, monkeypatch):
    monkeypatch.setattr(vocab_module, "fetch", lambda url: b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(VocabularyUnavailableError, match="sha256"):
        resolve_vocab(tmp_path / "checkpoint", cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_corrupt_cached_file_is_downloaded_again(tmp_path, downloads):
    cache = tmp_path / "cache"
    path = resolve_vocab(tmp_path / "checkpoint", cache_dir=cache)
    path.write_bytes(b"truncated")
    assert resolve_vocab(tmp_path / "checkpoint", cache_dir=cache).read_bytes() == FAKE_VOCAB
    assert len(downloads) == 2


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path, downloads, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VocabularyUnavailableError) as raised:
        resolve_vocab(tmp_path / "checkpoint", cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert "HF_HUB_OFFLINE" in message and vocab_module.VOCAB_URL in message
    assert str(tmp_path / "checkpoint" / CHECKPOINT_VOCAB) in message
    assert downloads == []


def test_unreachable_network_error_names_the_url(tmp_path, downloads, monkeypatch):
    def no_network(url):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(vocab_module, "fetch", no_network)
    with pytest.raises(VocabularyUnavailableError, match="download failed") as raised:
        resolve_vocab(tmp_path / "checkpoint", cache_dir=tmp_path / "cache")
    assert vocab_module.VOCAB_URL in str(raised.value)


def test_vocabulary_error_is_a_model_unavailable_error():
    from serve_app.pipeline.registry import ModelUnavailableError

    assert issubclass(lyrics.VocabularyUnavailableError, ModelUnavailableError)
