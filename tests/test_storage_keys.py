"""Object keys: the output key layout, what a safe key is, sidecar keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from serve_app.storage import build_output_key, sidecar_key, validate_key

WHEN = datetime(2025, 3, 4, 23, 30, tzinfo=UTC)


def test_build_output_key_default_layout():
    assert build_output_key("outputs", "req-1", 42, "mp3", when=WHEN) == "outputs/2025-03-04/req-1/42.mp3"
    assert build_output_key("", "r", 0, "wav", when=WHEN) == "2025-03-04/r/0.wav"
    assert build_output_key("a/b/", "r", 1, "ogg", when=WHEN) == "a/b/2025-03-04/r/1.ogg"


@pytest.mark.parametrize(
    "folders,stem,expected",
    [
        ([], "track", "outputs/2025-03-04/req-1/track-7.flac"),
        (["albums", "summer"], "track", "outputs/albums/summer/2025-03-04/req-1/track-7.flac"),
        (["albums", "summer"], None, "outputs/albums/summer/2025-03-04/req-1/7.flac"),
        (["música"], "canción", "outputs/música/2025-03-04/req-1/canción-7.flac"),
    ],
)
def test_build_output_key_puts_client_folders_first_and_the_stem_before_the_seed(folders, stem, expected):
    assert build_output_key("outputs", "req-1", 7, "flac", folders=folders, stem=stem, when=WHEN) == expected


def test_build_output_key_date_is_utc():
    tokyo = timezone(timedelta(hours=9))
    when = datetime(2025, 3, 5, 8, 30, tzinfo=tokyo)  # 2025-03-04 23:30 UTC
    assert build_output_key("p", "r", 1, "wav", when=when).startswith("p/2025-03-04/")


def test_two_requests_never_share_a_key():
    a = build_output_key("p", "req-a", 1, "wav", folders=["x"], stem="y", when=WHEN)
    b = build_output_key("p", "req-b", 1, "wav", folders=["x"], stem="y", when=WHEN)
    assert a != b


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(when=datetime(2025, 1, 1)), "timezone-aware"),
        (dict(request_id="../x"), "request_id"),
        (dict(request_id=""), "request_id"),
        (dict(request_id="a/b"), "request_id"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(seed=1.0), "seed"),
        (dict(ext="MP3"), "extension"),
        (dict(ext="mp3/../x"), "extension"),
        (dict(prefix="../up"), "'..' path segment"),
        (dict(prefix="/abs"), "relative"),
        # Whatever a caller passes as folders, the key stays inside the bucket/root.
        (dict(folders=[".."]), "'..' path segment"),
        (dict(folders=["a/../../b"]), "'..' path segment"),
        (dict(stem="a\x00b"), "control"),
    ],
)
def test_build_output_key_rejects(kwargs, match):
    args = dict(prefix="outputs", request_id="r1", seed=1, ext="mp3", when=WHEN) | kwargs
    with pytest.raises(ValueError, match=match):
        build_output_key(args.pop("prefix"), args.pop("request_id"), args.pop("seed"), args.pop("ext"), **args)


@pytest.mark.parametrize(
    "key,match",
    [
        ("", "empty"),
        ("/abs", "relative"),
        ("../x", r"'\.\.'"),
        ("a/../../x", r"'\.\.'"),
        ("a/./x", r"'\.'"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a\\b", "backslash"),
        ("a\x00b", "control"),
        ("a/.tmp-123", "reserved"),
        ("x" * 256, "255 bytes"),
        ("a/" * 600 + "b", "1024 bytes"),
        (None, "must be a string"),
    ],
)
def test_validate_key_rejections(key, match):
    with pytest.raises(ValueError, match=match):
        validate_key(key)


def test_validate_key_accepts_server_keys():
    key = build_output_key("outputs", "r", 3, "mp3", folders=["albums"], stem="Summer Song (v2)", when=WHEN)
    assert validate_key(key) == key
    assert sidecar_key(key) == key + ".json"
