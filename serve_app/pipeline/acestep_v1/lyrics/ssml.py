"""Upstream's segmenter reads four SSML-like tags as Chinese: <number>, <telephone>, <currency>, <date>.

Only the language ("zh") and the length of the reading matter to language detection, but the
length depends on the reading, so the readings follow upstream's rules.
"""

from __future__ import annotations

import re

from .zh_numbers import DIGITS, spell_with_units

_UNITS_TO_YI = ((1, "十"), (2, "百"), (3, "千"), (4, "万"), (8, "亿"))


def read_tag(name: str, content: str) -> tuple[str, str]:
    """Language and text of ``<name>content</name>`` when ``name`` is not a language code."""
    if name == "telephone":
        return "zh", _digit_by_digit(content.replace("+86", "")).replace("一", "幺")
    if name == "number":
        return "zh", _digit_by_digit(content)
    if name == "currency":
        return "zh", _as_amounts(content)
    if name == "date":
        return "zh", _as_date(content)
    return name, content


def _digit_by_digit(text: str) -> str:
    # Digits other than 0-9 (\d also matches other scripts' digits) are dropped, as upstream does.
    spelled = re.sub(r"\d+", lambda m: "".join(DIGITS[int(d)] if d in "0123456789" else "" for d in m.group()), text)
    return spelled.replace(".", "点")


def _amount(digits: str) -> str:
    if not digits.isascii():
        raise ValueError(f"cannot read digits {digits!r}")  # upstream fails here too
    digits = digits.lstrip("0")
    if not digits:
        return DIGITS[0]
    spelled = spell_with_units(digits, _UNITS_TO_YI)
    if spelled[:2] == ["一", "十"]:
        spelled = spelled[1:]
    return "".join(spelled)


def _as_amounts(text: str) -> str:
    return re.sub(r"\d+", lambda m: _amount(m.group()), text).replace(".", "点")


def _with_unit(value: str, unit: str, read) -> str:
    value = read(value)
    return f"{value}{unit}" if value not in ("", "0") else ""


def _as_date(text: str) -> str:
    """A date and/or time such as 2024/8/24, 2024-08, 08-24 10:30 read as 年月日 and 点分秒."""
    if not text.strip():
        return ""
    text = re.sub(r"日", "", re.sub(r"[\/\._|年|月]", "-", text))
    fields = text.split(" ")
    if len(fields) == 1 and ":" in fields[0]:
        date, clock = None, fields[0]
    else:
        date, clock = fields[0], fields[1] if len(fields) >= 2 else ""

    day_part = ""
    if date is not None:
        year = month = day = ""
        parts = date.split("-")
        if len(parts) == 3:
            year, month, day = parts
        elif len(parts) == 2:
            if len(parts[0]) == 4:
                year, month = parts
            else:
                month, day = parts
        elif parts[0]:
            if len(parts[0]) == 4:
                year = parts[0]
            else:
                day = parts[0]
        day_part = (
            _with_unit(year, "年", _digit_by_digit)
            + _with_unit(month, "月", _as_amounts)
            + _with_unit(day, "日", _as_amounts)
        )
        day_part = re.sub(r"([年|月|日])+", r"\1", day_part)

    clock_fields = re.sub(r"[\/\.\-：_]", ":", clock).split(":")
    hours = minutes = seconds = ""
    if len(clock_fields) == 3:
        hours, minutes, seconds = clock_fields
    elif len(clock_fields) == 2:
        hours, minutes = clock_fields
    elif clock_fields[0]:
        hours = f"{clock_fields[0]}点"  # a bare hour keeps its digits, as upstream does
    if len(clock_fields) > 1:
        hours = _with_unit(hours, "点", _as_amounts)
        minutes = _with_unit(minutes, "分", _as_amounts)
        seconds = _with_unit(seconds, "秒", _as_amounts)
    return day_part + re.sub(r"([点|分|秒])+", r"\1", hours + minutes + seconds)
