"""The rules for a client-chosen output name, and the keys the generator builds from one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from serve_app.ingress.output_names import split_output_name, validate_output_name
from serve_app.storage import build_output_key

WHEN = datetime(2025, 3, 4, 23, 30, tzinfo=UTC)


def key_for(name: str, ext: str = "flac") -> str:
    folders, stem = split_output_name(validate_output_name(name), ext)
    return build_output_key("outputs", "req-1", 7, ext, folders=folders, stem=stem, when=WHEN)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("track", "outputs/2025-03-04/req-1/track-7.flac"),
        ("albums/summer/track", "outputs/albums/summer/2025-03-04/req-1/track-7.flac"),
        ("albums/summer/", "outputs/albums/summer/2025-03-04/req-1/7.flac"),
        ("track.flac", "outputs/2025-03-04/req-1/track-7.flac"),
        ("track.FLAC", "outputs/2025-03-04/req-1/track-7.flac"),
        ("track.v2", "outputs/2025-03-04/req-1/track.v2-7.flac"),
        ("Summer Song (live)", "outputs/2025-03-04/req-1/Summer Song (live)-7.flac"),
        ("música/canción", "outputs/música/2025-03-04/req-1/canción-7.flac"),
        ("cafe\u0301", "outputs/2025-03-04/req-1/caf\u00e9-7.flac"),  # NFC-normalised
    ],
)
def test_a_client_name_becomes_folders_and_a_file_stem(name, expected):
    assert key_for(name) == expected


@pytest.mark.parametrize(
    "name,ext,expected",
    [
        ("track", "mp3", ([], "track")),
        ("albums/summer/track.MP3", "mp3", (["albums", "summer"], "track")),
        ("albums/summer/", "wav", (["albums", "summer"], None)),
        ("take.2", "wav", ([], "take.2")),
    ],
)
def test_split_output_name(name, ext, expected):
    assert split_output_name(name, ext) == expected


def test_split_output_name_refuses_another_audio_extension():
    with pytest.raises(ValueError, match=r"ends with '\.wav' but the output format is mp3"):
        split_output_name("albums/song.wav", "mp3")


@pytest.mark.parametrize(
    "name,match",
    [
        ("../etc/passwd", r"'\.\.' path segments"),
        ("a/../../b", r"'\.\.' path segments"),
        ("a/./b", r"'\.' path segments"),
        ("..", r"'\.\.' path segments"),
        ("/etc/passwd", "must be relative"),
        ("C:/Windows/x", "drive letter"),
        ("c:track", "drive letter"),
        ("~/music", "'~'"),
        ("a~b", "'~'"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("a\x00b", r"control or invisible character \(U\+0000\)"),
        ("a\nb", r"U\+000A"),
        ("a\x7fb", r"U\+007F"),
        ("evil\u202e3pm.exe", r"U\+202E"),
        ("zero\u200bwidth", r"U\+200B"),
        ("x" * 201, "longer than 200 characters"),
        ("a/" + "b" * 101, "longer than 100 characters"),
        ("曲" * 67 + "/x", "200 bytes"),
        ("/".join("a" * 9), "more than 8 path segments"),
        ("a//b", "empty path segment"),
        ("a/b//", "empty path segment"),
        (".hidden", "must not start with '.'"),
        ("a/.git/config", "must not start with '.'"),
        ("", "empty"),
        ("   ", "empty"),
        (" lead", "whitespace"),
        ("a/trail ", "whitespace"),
        ("what?", r"contains '\?'"),
        ("100%", "contains '%'"),
        ("a#b", "contains '#'"),
        ("ab:c", "contains ':'"),
        ("a*b", r"contains '\*'"),
        ('a"b', "contains '\"'"),
        ("a<b>", "contains '<'"),
        ("a|b", r"contains '\|'"),
        ("a&b", "contains '&'"),
        (42, "must be a string"),
    ],
)
def test_output_name_rejections_say_why(name, match):
    with pytest.raises(ValueError, match=match):
        validate_output_name(name)
