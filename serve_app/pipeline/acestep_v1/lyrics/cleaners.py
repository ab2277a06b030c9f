"""Per-language text normalisation before BPE, as upstream's lyric tokenizer does it.

Alphabetic languages: quotes dropped, lowercase, numbers/currency/ordinals spelled out with
num2words, abbreviations and symbols expanded, whitespace collapsed. Chinese: numbers in
Chinese characters, then pinyin with tone digits. Korean: the same cleaning, then Revised
Romanisation. Japanese: romaji by cutlet. Hindi: lowercase and whitespace only.

Each of the number, abbreviation and symbol stages is all or nothing: when one raises
(num2words has no ordinals for some languages, a malformed amount, ...), that stage leaves
the text as it was and the next stage runs, exactly as upstream; a warning would fire on
ordinary lyrics, so this is logged at debug level only.
"""

from __future__ import annotations

import logging
import re
from functools import cache

from .zh_numbers import normalize_chinese

logger = logging.getLogger(__name__)

# Languages cleaned by the alphabetic pipeline (Chinese and Korean then transliterate).
ALPHABETIC = frozenset({"ar", "cs", "de", "en", "es", "fr", "hu", "it", "nl", "pl", "pt", "ru", "tr", "zh", "ko"})

_ABBREVIATIONS = {
    "en": (
        ("mrs", "misess"),
        ("mr", "mister"),
        ("dr", "doctor"),
        ("st", "saint"),
        ("co", "company"),
        ("jr", "junior"),
        ("maj", "major"),
        ("gen", "general"),
        ("drs", "doctors"),
        ("rev", "reverend"),
        ("lt", "lieutenant"),
        ("hon", "honorable"),
        ("sgt", "sergeant"),
        ("capt", "captain"),
        ("esq", "esquire"),
        ("ltd", "limited"),
        ("col", "colonel"),
        ("ft", "fort"),
    ),
    "es": (
        ("sra", "señora"),
        ("sr", "señor"),
        ("dr", "doctor"),
        ("dra", "doctora"),
        ("st", "santo"),
        ("co", "compañía"),
        ("jr", "junior"),
        ("ltd", "limitada"),
    ),
    "fr": (
        ("mme", "madame"),
        ("mr", "monsieur"),
        ("dr", "docteur"),
        ("st", "saint"),
        ("co", "compagnie"),
        ("jr", "junior"),
        ("ltd", "limitée"),
    ),
    "de": (("fr", "frau"), ("dr", "doktor"), ("st", "sankt"), ("co", "firma"), ("jr", "junior")),
    "pt": (
        ("sra", "senhora"),
        ("sr", "senhor"),
        ("dr", "doutor"),
        ("dra", "doutora"),
        ("st", "santo"),
        ("co", "companhia"),
        ("jr", "júnior"),
        ("ltd", "limitada"),
    ),
    "it": (
        ("sig", "signore"),
        ("dr", "dottore"),
        ("st", "santo"),
        ("co", "compagnia"),
        ("jr", "junior"),
        ("ltd", "limitata"),
    ),
    "pl": (("p", "pani"), ("m", "pan"), ("dr", "doktor"), ("sw", "święty"), ("jr", "junior")),
    "cs": (("dr", "doktor"), ("ing", "inženýr"), ("p", "pan")),
    "ru": (("г-жа", "госпожа"), ("г-н", "господин"), ("д-р", "доктор")),
    "nl": (("dhr", "de heer"), ("mevr", "mevrouw"), ("dr", "dokter"), ("jhr", "jonkheer")),
    "tr": (("b", "bay"), ("byk", "büyük"), ("dr", "doktor")),
    "hu": (("dr", "doktor"), ("b", "bácsi"), ("nőv", "nővér")),
}
# Russian abbreviations end at a word boundary, the others at their full stop.
_ABBREVIATION_PATTERNS = {
    language: tuple(
        (re.compile(rf"\b{short}" + (r"\b" if language == "ru" else r"\."), re.IGNORECASE), long)
        for short, long in pairs
    )
    for language, pairs in _ABBREVIATIONS.items()
}

_SYMBOLS = "&@%#$£°"
_SYMBOL_WORDS = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}

_ORDINAL = {
    language: re.compile(pattern)
    for language, pattern in {
        "en": r"([0-9]+)(st|nd|rd|th)",
        "es": r"([0-9]+)(º|ª|er|o|a|os|as)",
        "fr": r"([0-9]+)(º|ª|er|re|e|ème)",
        "de": r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))",
        "pt": r"([0-9]+)(º|ª|o|a|os|as)",
        "it": r"([0-9]+)(º|°|ª|o|a|i|e)",
        "pl": r"([0-9]+)(º|ª|st|nd|rd|th)",
        "ar": r"([0-9]+)(ون|ين|ث|ر|ى)",
        "cs": r"([0-9]+)\.(?=\s|$)",
        "ru": r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)",
        "nl": r"([0-9]+)(de|ste|e)",
        "tr": r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)",
        "hu": r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)",
        "ko": r"([0-9]+)(번째|번|차|째)",
    }.items()
}
# Applied in this order: pounds, dollars, euros. Upstream writes the amount before a sign as
# [0-9.,]*[0-9]+ (sign); [0-9.,]*[0-9] (sign) matches the same text without cubic backtracking
# on a long run of digits.
_CURRENCIES = (
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]\$))")),
    ("EUR", re.compile(r"(([0-9\.\,]*[0-9]€)|((€[0-9\.\,]*[0-9]+)))")),
)
# Dropped from a whole-number amount: num2words says "twenty dollars, zero cents".
_CENTS_JOINER = {"es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e "}
_THOUSANDS_COMMA = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")
_THOUSANDS_DOT = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # sic: the unescaped dot matches any character
_DECIMAL = re.compile(r"([0-9]+[.,][0-9]+)")
_INTEGER = re.compile(r"[0-9]+")


def _words(number, language: str, **options) -> str:
    from num2words import num2words

    return num2words(number, lang="cz" if language == "cs" else language, **options)


def _currency(text: str, language: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", text.replace(",", ".")))
    spoken = _words(amount, language, to="currency", currency=currency)
    if amount.is_integer():
        joiner = spoken.rfind(_CENTS_JOINER.get(language, ", "))
        if joiner != -1:
            spoken = spoken[:joiner]
    return spoken


def _expand_numbers(text: str, language: str) -> str:
    if language == "zh":
        return normalize_chinese(text)
    separators = _THOUSANDS_COMMA if language in ("en", "ru") else _THOUSANDS_DOT
    text = separators.sub(lambda m: m.group(0).replace("," if language in ("en", "ru") else ".", ""), text)
    try:  # a malformed amount stops the currency pass but keeps the amounts already spelled
        for currency, pattern in _CURRENCIES:
            text = pattern.sub(lambda m, currency=currency: _currency(m.group(0), language, currency), text)
    except Exception:
        logger.debug("currency expansion stopped for %r", text, exc_info=True)
    if language != "tr":
        text = _DECIMAL.sub(lambda m: _words(float(m.group(1).replace(",", ".")), language), text)
    text = _ORDINAL[language].sub(lambda m: _words(int(m.group(1)), language, ordinal=True), text)
    return _INTEGER.sub(lambda m: _words(int(m.group(0)), language), text)


def _expand_abbreviations(text: str, language: str) -> str:
    for pattern, long in _ABBREVIATION_PATTERNS.get(language, ()):
        text = pattern.sub(long, text)
    return text


def _expand_symbols(text: str, language: str) -> str:
    for symbol, word in zip(_SYMBOLS, _SYMBOL_WORDS[language]):
        text = text.replace(symbol, f" {word} ").replace("  ", " ")
    return text.strip()


def clean_alphabetic(text: str, language: str) -> str:
    """Upstream's ``multilingual_cleaners``."""
    text = text.replace('"', "")
    if language == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    for stage in (_expand_numbers, _expand_abbreviations, _expand_symbols):
        try:
            text = stage(text, language)
        except Exception:
            logger.debug("%s skipped for %r (%s)", stage.__name__, text, language, exc_info=True)
    return re.sub(r"\s+", " ", text)


def pinyin(text: str) -> str:
    """Pinyin with tone numbers (neutral tone 5), other characters kept: "你好" → "ni3hao3"."""
    import pypinyin

    readings = pypinyin.pinyin(text, style=pypinyin.Style.TONE3, heteronym=False, neutral_tone_with_five=True)
    return "".join(reading[0] for reading in readings)


@cache
def _hangul_transliterator():
    from hangul_romanize import Transliter
    from hangul_romanize.rule import academic

    return Transliter(academic)


@cache
def _romaji_converter():
    import cutlet

    return cutlet.Cutlet()


def normalize(text: str, language: str) -> str:
    """``text`` as upstream's ``VoiceBpeTokenizer.preprocess_text`` gives it for ``language``."""
    if language in ALPHABETIC:
        text = clean_alphabetic(text, language)
        if language == "zh":
            return pinyin(text)
        if language == "ko":
            return _hangul_transliterator().translit(text)
        return text
    if language == "ja":
        return _romaji_converter().romaji(text).lower()
    if language == "hi":
        return re.sub(r"\s+", " ", text.lower())
    raise ValueError(f"no lyric normalisation for language {language!r}")
