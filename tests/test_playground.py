"""The playground page in a real browser: Playwright driving Debian's chromium.

End to end against the dev-style app (Ray Serve, the tiny model, the local
store): submit, watch progress, play, cancel, copy a curl command that
reproduces the output, upload a source, and run a task on an output. With ``PLAYGROUND_SCREENSHOTS=<folder>`` the end-to-end
test also saves the page's screenshots there (docs/ holds the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from deployments.app import build_app
from serve_app.audio import encode_audio

from .conftest import TEST_MODEL, free_port, run_app

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
APP = "acestep-playground"
DURATION = 2.0
TIMEOUT_MS = 180_000

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"needs chromium at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def base_url(serve_instance, tmp_path_factory):
    from ray import serve

    outputs = tmp_path_factory.mktemp("playground-outputs")
    app = build_app({"models": [TEST_MODEL], "num_gpus": 0, "storage": {"kind": "local", "local_root": str(outputs)}})
    run_app(app, APP, "/")
    yield serve_instance
    serve.delete(APP)


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def record_progress(page) -> None:
    """Every value the progress bar takes, in order, in ``window.progressSeen``."""
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.querySelector('#progress');
            new MutationObserver(() => window.progressSeen.push([bar.value, bar.max]))
                .observe(bar, {attributes: true, attributeFilter: ['value']});
        }"""
    )


def set_field(page, field: str, value: str) -> None:
    control = page.locator(f'[data-field="{field}"]')
    if control.evaluate("element => element.tagName") == "SELECT":
        control.select_option(value)
    else:
        control.fill(value)


def screenshot(page, name: str) -> None:
    folder = os.environ.get("PLAYGROUND_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def tone_wav(folder: Path) -> Path:
    path = folder / "tone.wav"
    t = np.arange(48000) / 48000
    path.write_bytes(encode_audio((0.3 * np.sin(2 * np.pi * 220 * t))[None, :].astype(np.float32), 48000, "wav"))
    return path


def test_the_playground_generates_plays_cancels_copies_a_curl_and_chains_a_task(page, base_url, tmp_path):
    requested: list[str] = []
    partial: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: partial.append(response.url) if response.status == 206 else None)

    page.goto("/")
    assert page.url == f"{base_url}/playground"
    page.wait_for_selector(f'#model option[value="{TEST_MODEL}"]', state="attached")
    page.fill("#prompt", "lofi hip hop, mellow piano, 80 bpm")
    page.select_option("#preset", "precision")
    page.fill("#audio_duration", str(DURATION))
    page.fill("#actual_seeds", "42")
    page.click("#advanced summary")
    set_field(page, "infer_step", "100")
    set_field(page, "bf16", "false")

    record_progress(page)
    page.click("#submit")
    page.wait_for_selector("#job-status.running")
    if os.environ.get("PLAYGROUND_SCREENSHOTS"):
        page.wait_for_function("document.querySelector('#progress').value >= 10")
        screenshot(page, "playground-running.png")
    page.wait_for_selector("#job-status.succeeded")
    seen = page.evaluate("window.progressSeen")
    steps = [value for value, _ in seen]
    assert len(set(steps)) >= 3, seen  # the bar rose through the stream's updates, not in one jump
    assert steps == sorted(steps) and steps[-1] == seen[-1][1] > 0, seen
    first_job = page.text_content("#job-id")

    audio = page.locator("#outputs audio")
    page.wait_for_function("document.querySelector('#outputs audio').readyState >= 1")
    assert audio.evaluate("element => element.duration") == pytest.approx(DURATION, abs=1e-3)
    audio.evaluate("element => element.play()")
    page.wait_for_function("document.querySelector('#outputs audio').currentTime > 0")
    audio.evaluate("element => { element.currentTime = 1.5; }")  # seeking in the stream, through Range
    page.wait_for_function("document.querySelector('#outputs audio').currentTime >= 1.5")
    output_url = audio.evaluate("element => element.currentSrc")
    assert any(url == output_url for url in partial), partial
    screenshot(page, "playground.png")

    page.click("#copy-curl")
    command = page.evaluate("navigator.clipboard.readText()")
    assert command.startswith(f"curl -s {base_url}/generate ")
    again = json.loads(subprocess.run(["bash", "-c", command], capture_output=True, check=True, timeout=600).stdout)
    with httpx.Client(base_url=base_url, timeout=60) as client:
        first_bytes = client.get(output_url).content
        assert client.get(again["outputs"][0]["url"]).content == first_bytes

    set_field(page, "infer_step", "200")
    set_field(page, "scheduler_type", "heun")
    page.fill("#audio_duration", "4")
    page.click("#submit")
    page.wait_for_function(f"document.querySelector('#job-id').textContent !== '{first_job}'")
    page.wait_for_function("document.querySelector('#progress').value > 0")
    page.click("#cancel")
    page.wait_for_selector("#job-status.cancelled")
    second_job = page.text_content("#job-id")

    page.reload()  # the recent jobs are this browser's, kept across visits
    recent = page.locator("#recent li").evaluate_all("items => items.map(item => item.dataset.jobId)")
    assert recent[:2] == [second_job, first_job]
    page.click(f'#recent li[data-job-id="{first_job}"] button')
    page.wait_for_selector("#job-status.succeeded")

    # The first output becomes the source of an audio2audio job; an upload is offered beside it.
    assert page.is_hidden("#task-fields")
    set_field(page, "task", "audio2audio")
    assert page.is_visible("#source") and page.is_hidden("#audio_duration")
    page.set_input_files("#source-file", str(tone_wav(tmp_path)))
    page.wait_for_function("document.querySelector('#source').selectedOptions[0]?.value.startsWith('uploads/')")
    page.click("#outputs .use-source")
    first_key = urlparse(output_url).path.removeprefix("/outputs/")
    assert page.input_value("#source") == first_key
    set_field(page, "ref_audio_strength", "0.5")
    page.click("#advanced summary")  # closed again since the reload
    set_field(page, "infer_step", "10")
    set_field(page, "scheduler_type", "pingpong")
    page.click("#submit")
    page.wait_for_function(f"document.querySelector('#job-id').textContent !== '{first_job}'")
    page.wait_for_selector("#job-status.succeeded")
    params = json.loads(page.text_content("#params"))
    assert (params["task"], params["source"], params["scheduler_type"]) == (
        "audio2audio",
        {"key": first_key},
        "pingpong",
    )
    page.wait_for_function("document.querySelector('#outputs audio').readyState >= 1")
    assert page.locator("#outputs audio").evaluate("element => element.duration") == pytest.approx(DURATION, abs=1e-3)
    screenshot(page, "playground-task.png")

    foreign = [url for url in requested if not url.startswith((base_url, "blob:", "data:"))]
    assert foreign == []


@pytest.fixture
def locked_server(monkeypatch, tmp_path):
    """The ingress's HTTP app alone, in this process, with API keys on: enough to drive the key flow."""
    import uvicorn

    from serve_app.ingress.api import create_app
    from serve_app.ingress.auth import API_KEYS_ENV
    from serve_app.ingress.frontend import Frontend
    from serve_app.ingress.planner import Planner
    from serve_app.ingress.presets import PresetBook
    from serve_app.storage import LocalStore

    from .test_openapi import UnusedGenerator

    monkeypatch.setenv(API_KEYS_ENV, "secret-key")
    planner = Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)
    app = create_app(Frontend(planner, UnusedGenerator(), LocalStore(tmp_path)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    while not started.wait(0.05):  # uvicorn has no start callback; it raises the flag once listening
        if server.started or not thread.is_alive():
            started.set()
    assert server.started
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join()


def test_with_keys_on_the_page_asks_for_a_key_once_and_keeps_it(browser, locked_server):
    context = browser.new_context(base_url=locked_server)
    page = context.new_page()
    page.goto("/playground")
    page.wait_for_selector("#key-box:not([hidden])")
    assert page.locator(f'#model option[value="{TEST_MODEL}"]').count() == 0
    page.fill("#api-key", "secret-key")
    page.click("#save-key")
    page.wait_for_selector(f'#model option[value="{TEST_MODEL}"]', state="attached")
    assert page.is_hidden("#key-box")

    page.reload()
    page.wait_for_selector(f'#model option[value="{TEST_MODEL}"]', state="attached")
    assert page.is_hidden("#key-box")
    assert page.evaluate("localStorage.getItem('acestep.playground.apiKey')") == "secret-key"
    context.close()
