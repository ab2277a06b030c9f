"""Chinese text normalisation before pinyin: numbers, dates, money, phone numbers in words.

Behaves as the ``TextNorm()`` (default options) that upstream's tokenizer applies to Chinese
lines: the same rewrites in the same order (date, money, mobile and landline numbers,
fractions, percentages, counted quantities, long digit strings, plain numbers), each
rewriting the first occurrence of every match found in the text as it stood before that
rewrite, and every punctuation mark becomes an ASCII comma.
"""

from __future__ import annotations

import re
import string

DIGITS = "零一二三四五六七八九"
# "Mid" numbering: 十百千万, then each larger unit is 10^4 times the previous one (亿 = 10^8).
_UNITS = ((1, "十"), (2, "百"), (3, "千"), (4, "万")) + tuple(
    (8 + 4 * index, unit) for index, unit in enumerate("亿兆京垓秭穰沟涧正载")
)
_UNIT_CHARS = {unit for _, unit in _UNITS}

_CURRENCY_UNIT = "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
# Measure words after which a number is read as a quantity.
_MEASURE_WORDS = (
    "(?:[丈世丘丝两个丸代令件伏位冬出刀分刻勺匹升单卮厘双叠口只合名周啖回场块坡堂堆墙壳壶夏夜天头季客家寸对寻尺尾层山岁岭"
    "常幢年座张忽户手扎打担挑捆撮支斗斛斤日旬时春曲更月本条杯板枝根桶棵毫江泡溪炮煲片瓶盆盏盒盘石砣碗碟秋秒程窠笼管箩箱"
    "篮簋粒纪线罐网罗群脚腔袋袭课贯贴跳身辆辈道里针钟钧钱钵铢铺锅锱阙队阵面页顶颗首]|千克|千米|微克|微米)"
)

_DATE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
_MONEY = re.compile(r"\D+((\d+(\.\d+)?)[多余几]?" + _CURRENCY_UNIT + r"(\d" + _CURRENCY_UNIT + r"?)?)")
_MOBILE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_LANDLINE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION = re.compile(r"(\d+/\d+)")
_PERCENTAGE = re.compile(r"(\d+(\.\d+)?%)")
_QUANTITY = re.compile(r"(\d+(\.\d+)?)[多余几]?" + _MEASURE_WORDS)
_DIGIT_STRING = re.compile(r"(\d{4,32})")
_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_LETTERS_TWO_LETTERS = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")

_CHINESE_PUNCTUATION = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
_PUNCTUATION_TO_COMMA = str.maketrans(dict.fromkeys(_CHINESE_PUNCTUATION + string.punctuation, ","))


def spell_with_units(digits: str, units=_UNITS) -> list[str]:
    """Characters of a digit string read with place units: "105" → 一 百 零 五."""
    significant = digits.lstrip("0")
    if not significant:
        return []
    if len(significant) == 1:
        zero = [DIGITS[0]] if len(significant) < len(digits) else []
        return zero + [DIGITS[int(significant)]]
    power, unit = next((power, unit) for power, unit in reversed(units) if power < len(significant))
    return spell_with_units(digits[:-power], units) + [unit] + spell_with_units(significant[-power:], units)


def spell_number(number: str, *, place_units: bool = True, liang: bool = True) -> str:
    """A number such as "12.5" in Chinese characters; digit by digit when ``place_units`` is False."""
    whole, point, fraction = number.partition(".")
    if "." in fraction:
        raise ValueError(f"more than one decimal point in {number!r}")
    if place_units and len(whole) > 1:
        chars = spell_with_units(whole)
    else:
        chars = [DIGITS[int(digit)] for digit in whole]
    if fraction:
        chars += ["点"] + [DIGITS[int(digit)] for digit in fraction]
    if liang:
        # 2 before a unit larger than 十, not after 十 or a digit, reads 两: 两百, 一千两百, but 二十.
        for index, char in enumerate(chars):
            after = chars[index + 1] if index + 1 < len(chars) else None
            before = chars[index - 1] if index > 0 else None
            if (
                char == "二"
                and after in _UNIT_CHARS
                and after != "十"
                and (before is None or (before in _UNIT_CHARS and before != "十"))
            ):
                chars[index] = "两"
    result = "".join(chars)
    if result.startswith("点"):
        return DIGITS[0] + result
    if result[:2] == "一十":
        return result[1:]  # 十二, not 一十二
    return result


def _spell_date(date: str) -> str:
    year, has_year, rest = date.strip().partition("年")
    if has_year:
        year = spell_number(year, place_units=False, liang=False) + "年"
    else:
        year, rest = "", date
    if not rest:
        return year
    month, has_month, day = rest.strip().partition("月")
    if has_month:
        month = spell_number(month) + "月"
    else:
        month, day = "", date
    if day:
        day = spell_number(day[:-1]) + day[-1]
    return year + month + day


def _spell_money(money: str) -> str:
    for amount, _ in _NUMBER.findall(money):
        money = money.replace(amount, spell_number(amount))
    return money


def _spell_phone(number: str, separator: str | None) -> str:
    parts = number.split(separator) if separator else number.strip("+").split()
    return "".join(spell_number(part, place_units=False, liang=False) for part in parts)


def _spell_fraction(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return spell_number(denominator) + "分之" + spell_number(numerator)


def _rewrite(text: str, pattern: re.Pattern[str], spell) -> str:
    for match in pattern.findall(text):
        found = match[0] if isinstance(match, tuple) else match
        text = text.replace(found, spell(found), 1)
    return text


def normalize_chinese(text: str) -> str:
    """Numbers and symbols of a (lowercased) Chinese line in words, punctuation as commas."""
    text = "^" + text + "$"  # anchors that the patterns' \D can match at either end
    text = _rewrite(text, _DATE, _spell_date)
    text = _rewrite(text, _MONEY, _spell_money)
    text = _rewrite(text, _MOBILE, lambda number: _spell_phone(number, None))
    text = _rewrite(text, _LANDLINE, lambda number: _spell_phone(number, "-"))
    text = _rewrite(text, _FRACTION, _spell_fraction)
    text = text.replace("％", "%")
    text = _rewrite(text, _PERCENTAGE, lambda percentage: "百分之" + spell_number(percentage.strip().strip("%")))
    text = _rewrite(text, _QUANTITY, spell_number)
    text = _rewrite(text, _DIGIT_STRING, lambda digits: spell_number(digits, place_units=False, liang=False))
    text = _rewrite(text, _NUMBER, spell_number)
    for whole, left, right in _LETTERS_TWO_LETTERS.findall(text):
        text = text.replace(whole, f"{left}2{right}", 1)  # P2P, B2B: the 2 is a letter here
    return text.lstrip("^").rstrip("$").translate(_PUNCTUATION_TO_COMMA)
