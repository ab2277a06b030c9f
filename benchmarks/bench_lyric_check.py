"""How long the ingress takes to accept or refuse lyrics: hostile inputs and a long legitimate one.

Plans one request per case through the ``Planner`` (the ingress's checks, the lyric token count
included) and prints the wall-clock and CPU time and the outcome.

    python benchmarks/bench_lyric_check.py                         # ace-step-v1-tiny (tiny vocabulary)
    python benchmarks/bench_lyric_check.py --model ace-step-v1-3.5b  # the real vocabulary (downloaded once)
"""

from __future__ import annotations

import argparse
import itertools
import string
import time

from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline.invalid_field import InvalidField
from serve_app.schemas import MAX_LYRIC_LINE_CHARS, MAX_LYRICS_CHARS, GenerateRequest


def in_lines(text: str) -> str:
    """``text`` cut into the longest lines allowed, within the request's character limit."""
    width = MAX_LYRIC_LINE_CHARS
    return "\n".join(text[start : start + width] for start in range(0, len(text), width + 1))[:MAX_LYRICS_CHARS]


def cases() -> dict[str, str]:
    words = ("".join(letters) for letters in itertools.product(string.ascii_lowercase, repeat=3))
    verse = "[verse]\nNeon lights on an empty road, we ride tonight\nHold on to me when the morning comes\n"
    return {
        "10k emoji, one line": "😀" * MAX_LYRICS_CHARS,
        "10k digits, one line": "1" * MAX_LYRICS_CHARS,
        "emoji in long lines": in_lines("😀" * MAX_LYRICS_CHARS),
        "digits in long lines": in_lines("1" * MAX_LYRICS_CHARS),
        "quotes in long lines": in_lines('"' * MAX_LYRICS_CHARS),
        "distinct pieces": in_lines("".join(f"{next(words)}1" for _ in range(MAX_LYRICS_CHARS // 4))),
        "a real verse, repeated": (verse * 200)[: MAX_LYRICS_CHARS - 100],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ace-step-v1-tiny")
    model = parser.parse_args().model
    planner = Planner(PresetBook.load(), served_models=[model], default_model=model)
    planner.plan(GenerateRequest(prompt="x", lyrics="warm up"), "warmup")  # loads the tokenizer
    for name, lyrics in cases().items():
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            planner.plan(GenerateRequest(prompt="x", lyrics=lyrics), "bench")
            outcome = "accepted"
        except InvalidField as error:
            outcome = f"422 {error.field}: {error.reason[:60]}"
        print(f"{name:24s} wall {time.perf_counter() - wall:6.3f} s  cpu {time.process_time() - cpu:6.3f} s  {outcome}")


if __name__ == "__main__":
    main()
