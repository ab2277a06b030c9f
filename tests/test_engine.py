"""The generator's engine without Ray: batching by key, outputs, storage faults, cancellation.

Runs the tiny test model through the real pipeline; plans come from the real
planner, so these are the plans the service sends.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import numpy as np
import pytest
import soundfile as sf

from serve_app.errors import Unavailable
from serve_app.generation.engine import EngineConfig, GenerationEngine
from serve_app.ingress.planner import Planner
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.progress import Progress
from serve_app.schemas import GenerateRequest, GenerationPlan
from serve_app.storage import LocalStore, StorageUnavailableError

from .conftest import TEST_MODEL
from .fake_clock import FakeClock, settled

FAST = {"model": TEST_MODEL, "infer_step": 3, "audio_duration": 1.0, "bf16": False}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "outputs")


_ids = iter(range(10**6))


def make_plan(planner: Planner, **fields) -> GenerationPlan:
    request = GenerateRequest(**{"prompt": "ambient pads", **FAST, **fields})
    return planner.plan(request, f"req{next(_ids)}")


def run(engine: GenerationEngine, *plans: GenerationPlan, **kwargs):
    async def main():
        try:
            return await asyncio.gather(*(engine.generate(plan, **kwargs) for plan in plans), return_exceptions=True)
        finally:
            await engine.close()

    return asyncio.run(main())


def read_audio(store: LocalStore, key: str) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(store.get(key)), dtype="float32", always_2d=True)


def test_same_key_shares_a_batch_and_durations_never_mix(pipeline, planner, store):
    engine = GenerationEngine({TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.2))
    one_second = [make_plan(planner, actual_seeds=[seed], prompt=f"song {seed}") for seed in (1, 2, 3)]
    two_seconds = [make_plan(planner, actual_seeds=[seed], audio_duration=2.0) for seed in (4, 5)]
    responses = run(engine, *one_second, *two_seconds)

    assert [response.outputs[0].batch_size for response in responses] == [3, 3, 3, 2, 2]
    for response, duration in zip(responses, [1.0, 1.0, 1.0, 2.0, 2.0]):
        output = response.outputs[0]
        audio, rate = read_audio(store, output.key)
        assert (rate, audio.shape) == (48000, (int(duration * 48000), 2))
        assert output.duration == duration and output.url == f"/outputs/{output.key}"


def test_batch_cap_follows_the_duration(pipeline, planner, store):
    # 3 s of audio per batch: five 1 s items run as 3 + 2, 2 s items one at a time.
    engine = GenerationEngine({TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.2, max_batch_audio_s=3.0))
    short = make_plan(planner, actual_seeds=[1, 2, 3, 4, 5])
    long = make_plan(planner, actual_seeds=[6, 7], audio_duration=2.0)
    short_response, long_response = run(engine, short, long)
    assert sorted(output.batch_size for output in short_response.outputs) == [2, 2, 3, 3, 3]
    assert [output.batch_size for output in long_response.outputs] == [1, 1]


def test_outputs_carry_a_sidecar_that_repeats_the_request(pipeline, planner, store):
    engine = GenerationEngine({TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.0))
    plan = make_plan(planner, actual_seeds=[11, 12], format="flac", output_name="albums/demo/")
    (response,) = run(engine, plan)
    assert [output.seed for output in response.outputs] == [11, 12]
    for output in response.outputs:
        assert output.key.startswith("albums/demo/") and output.key.endswith(f"/{output.seed}.flac")
        sidecar = json.loads(store.get(output.sidecar_key))
        assert sidecar["params"] == response.params
        assert sidecar["object"]["key"] == output.key
    assert response.params["actual_seeds"] == [11, 12] and response.params["format"] == "flac"


def test_a_failed_upload_fails_the_request_and_removes_what_it_wrote(pipeline, planner, tmp_path):
    class LosesSeedTwelve(LocalStore):
        def put(self, key, data, content_type):
            if key.endswith("/12.wav"):
                raise StorageUnavailableError("connection refused")
            super().put(key, data, content_type)

    store = LosesSeedTwelve(tmp_path / "outputs")
    engine = GenerationEngine({TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.0))
    (result,) = run(engine, make_plan(planner, actual_seeds=[11, 12]))
    assert isinstance(result, Unavailable) and result.status == 503
    assert "connection refused" not in result.message  # store details stay in the log
    assert store.list() == []


def test_cancelling_a_request_withdraws_it_from_its_queue_and_its_batch_mates_carry_on(pipeline, planner, store):
    events = []

    async def main():
        clock = FakeClock()
        engine = GenerationEngine(
            {TEST_MODEL: pipeline}, store, EngineConfig(batch_wait_s=0.5), clock=clock, sleep=clock.sleep
        )
        try:
            kept = make_plan(planner, actual_seeds=[1])
            dropped = make_plan(planner, actual_seeds=[2])
            tasks = [asyncio.create_task(engine.generate(plan, events.append)) for plan in (kept, dropped)]
            await settled(lambda: engine._batcher.queued() == 2)  # both queued, waiting for batch-mates
            tasks[1].cancel()
            await settled(tasks[1].done)
            clock.advance(0.5)  # the batch wait ends: the batch forms without the cancelled item
            return await asyncio.gather(*tasks, return_exceptions=True), kept, dropped
        finally:
            await engine.close()

    (kept_response, dropped_result), kept, dropped = asyncio.run(main())
    assert isinstance(dropped_result, asyncio.CancelledError)
    assert kept_response.outputs[0].batch_size == 1  # the cancelled item left the queue before the batch formed
    stages = [event.stage for event in events if event.request_id == kept.request_id]
    assert stages[0] == "queued" and stages[-2:] == ["encoding", "done"] and "running" in stages
    steps = [event.step for event in events if event.stage == "running" and event.request_id == kept.request_id]
    assert steps[-1] == 3
    assert not [key for key in store.list() if dropped.request_id in key]


@pytest.mark.parametrize("settle", ["drain", "close"])  # close() is what the deployment calls on shutdown
def test_a_request_cancelled_while_its_files_are_written_leaves_none(pipeline, planner, store, monkeypatch, settle):
    import threading

    writing, release = threading.Event(), threading.Event()
    engine = GenerationEngine({TEST_MODEL: pipeline}, store)
    real_write = engine.outputs.write

    def slow_write(*args):
        writing.set()
        release.wait(10)
        return real_write(*args)

    monkeypatch.setattr(engine.outputs, "write", slow_write)
    plan = make_plan(planner, actual_seeds=[1])

    async def main():
        try:
            task = asyncio.create_task(engine.generate(plan))
            await asyncio.to_thread(writing.wait, 10)
            task.cancel()
            release.set()
            await asyncio.gather(task, return_exceptions=True)
            await getattr(engine, settle)()  # the write lands, then its removal runs on the I/O pool
            return store.list()
        finally:
            await engine.close()

    assert [key for key in asyncio.run(main()) if plan.request_id in key] == []


# -------------------------------------------- inert parameters are really inert


def first_waveform(pipeline, planner, **fields) -> tuple[np.ndarray, set[str]]:
    plan = make_plan(planner, actual_seeds=[5], infer_step=4, **fields)
    output = pipeline(plan.params.batch_settings(), plan.params.items())
    return output.items[0].waveform.numpy(), {warning.field for warning in plan.warnings}


@pytest.mark.parametrize(
    "base, field, values",
    [
        ({"guidance_scale": 1.0}, "cfg_type", ("apg", "cfg")),
        ({"scheduler_type": "pingpong"}, "omega_scale", (10.0, 3.0)),
        ({"guidance_interval_decay": 0.0}, "min_guidance_scale", (3.0, 8.0)),
        ({"guidance_scale_text": 2.0, "guidance_scale_lyric": 3.0}, "guidance_scale", (5.0, 9.0)),
        ({"guidance_scale_lyric": 0.0}, "guidance_scale_text", (0.0, 3.0)),
        ({"use_erg_lyric": False}, "use_erg_tag", (False, True)),
    ],
)
def test_a_warned_parameter_does_not_change_the_audio(pipeline, planner, base, field, values):
    first, _ = first_waveform(pipeline, planner, **base, **{field: values[0]})
    second, warned = first_waveform(pipeline, planner, **base, **{field: values[1]})
    assert field in warned
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "base, field, values",
    [
        ({"guidance_scale": 5.0}, "cfg_type", ("apg", "cfg")),
        ({"scheduler_type": "euler"}, "omega_scale", (10.0, 3.0)),
        ({"guidance_interval_decay": 1.0, "guidance_interval": 1.0}, "min_guidance_scale", (3.0, 8.0)),
        ({}, "guidance_scale", (5.0, 9.0)),
        ({"use_erg_lyric": True}, "use_erg_tag", (False, True)),
    ],
)
def test_the_same_parameter_counts_when_not_warned(pipeline, planner, base, field, values):
    first, warned_first = first_waveform(pipeline, planner, **base, **{field: values[0]})
    second, warned_second = first_waveform(pipeline, planner, **base, **{field: values[1]})
    assert field not in warned_first | warned_second
    assert not np.array_equal(first, second)


def test_events_stream_progress_then_the_response_and_closing_early_cancels(pipeline, planner, store):
    from serve_app.responses import GenerateResponse

    engine = GenerationEngine({TEST_MODEL: pipeline}, store)
    plan = make_plan(planner, actual_seeds=[1, 2], infer_step=4)

    async def collect():
        return [event async for event in engine.events(plan)]

    abandoned = make_plan(planner, actual_seeds=[3], infer_step=50)

    async def abandon():
        stream = engine.events(abandoned)
        async for event in stream:
            if any(update.stage == "running" and update.step >= 1 for update in event):
                break
        await stream.aclose()
        # The GPU runs one batch at a time: this one starts once the abandoned batch stopped.
        await engine.generate(make_plan(planner, actual_seeds=[4]))
        await engine.drain()
        return store.list()

    async def main():
        try:
            return await collect(), await abandon()
        finally:
            await engine.close()

    events, stored_after_abandon = asyncio.run(main())
    *progress, response = events
    assert isinstance(response, GenerateResponse) and len(response.outputs) == 2
    updates = [update for batch in progress for update in batch]
    assert all(isinstance(update, Progress) for update in updates)
    for item in (0, 1):
        steps = [(update.stage, update.step) for update in updates if update.item == item]
        assert steps[0][0] == "queued" and ("running", 4) in steps and steps[-1][0] in ("encoding", "done")
    # The abandoned request stopped at a step boundary and wrote nothing.
    assert stored_after_abandon and not [key for key in stored_after_abandon if abandoned.request_id in key]


def test_loading_a_model_logs_that_it_is_ready_with_its_dtype_device_and_load_time(models_root, caplog):
    caplog.set_level(logging.INFO, logger="serve_app.pipeline")
    pipeline = MusicPipeline(TEST_MODEL, "cpu", models_root=models_root)
    pipeline.model(bf16=False)
    pipeline.model(bf16=False)  # already loaded: no second line
    (line,) = [message for message in caplog.messages if message.startswith(f"model {TEST_MODEL} ready")]
    assert re.fullmatch(rf"model {TEST_MODEL} ready: float32 on cpu, loaded in \d+\.\d s", line)
