"""The cost model, the simulated model it drives, and the load a replica reports from it."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading

import pytest
import soundfile as sf

from serve_app.generation.engine import EngineConfig, GenerationEngine
from serve_app.generation.load import key_id
from serve_app.ingress import planner as planner_module
from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline import registry
from serve_app.pipeline.cost import CostModel, latent_frames
from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.simulated import SAMPLE_RATE, SimulatedModel
from serve_app.schemas import GenerateRequest
from serve_app.storage import LocalStore

SIMULATED = "ace-step-simulated"


# ------------------------------------------------------------------ cost model


def upstream_run_s(cost: CostModel, steps: int) -> float:
    """Upstream's batch-1 run: default guidance (middle half of the steps), branches as separate passes."""
    guided = int(steps * 0.75) - int(steps * 0.25)
    frames = latent_frames(60)
    return (steps + guided) * cost.forward_s(1, frames) + cost.decode_items_s(1, frames)


@pytest.mark.parametrize(("steps", "published_s"), [(27, 2.20), (60, 4.89)])
def test_cost_model_reproduces_the_published_a100_timings(steps, published_s):
    assert upstream_run_s(CostModel(), steps) == pytest.approx(published_s, rel=0.05)


def test_a_pass_costs_more_with_rows_and_frames_but_batching_is_cheaper_than_one_at_a_time():
    cost, frames = CostModel(), latent_frames(60)
    assert cost.forward_s(2, frames) > cost.forward_s(1, frames)
    assert cost.forward_s(8, frames) < 8 * cost.forward_s(1, frames)
    assert cost.forward_s(1, 2 * frames) == pytest.approx(2 * cost.forward_s(1, frames))
    assert CostModel(scale=2.0).forward_s(3, frames) == pytest.approx(2 * cost.forward_s(3, frames))


def test_guided_steps_cost_their_extra_passes():
    cost, frames = CostModel(), latent_frames(30)
    plain = cost.batch_s(4, frames, steps=10, guided_steps=0, guidance_passes=2, decode=False)
    half = cost.batch_s(4, frames, steps=10, guided_steps=5, guidance_passes=2, decode=False)
    double = cost.batch_s(4, frames, steps=10, guided_steps=5, guidance_passes=3, decode=False)
    assert plain < half < double
    assert cost.batch_s(4, frames, 10, 5, 2) - half == pytest.approx(cost.decode_items_s(4, frames))


def test_cover_below_full_strength_costs_its_text2music_pass():
    from serve_app.pipeline.settings import ACESTEP_DEFAULTS, GenerationParams

    def settings(strength):
        params = GenerationParams(
            **{
                **ACESTEP_DEFAULTS,
                "model": "acestep-v15-turbo-tiny",
                "prompt": "x",
                "guidance_scale": 1.0,
                "actual_seeds": (1,),
                "task": "cover",
                "source": {"key": "k"},
                "source_samples": 30 * 48000,
                "audio_duration": 30.0,
                "audio_cover_strength": strength,
            }
        )
        return params.batch_settings()

    cost, items = CostModel(), 2
    full, blended = cost.estimate(settings(1.0), items), cost.estimate(settings(0.5), items)
    steps = settings(1.0).total_steps
    assert blended - full == pytest.approx(steps * cost.forward_s(items, latent_frames(30)))


# ------------------------------------------------------------------ simulated model


@pytest.fixture
def simulated_planner(monkeypatch):
    """The planner of a deployment started with ACESTEP_SIMULATED_MODELS=1."""
    monkeypatch.setattr(planner_module, "CATALOG", {**registry.CATALOG, **registry.SIMULATED_MODELS})
    return Planner(PresetBook.load(), served_models=[SIMULATED], default_model=SIMULATED)


def plan_for(planner: Planner, request_id: str, **fields):
    request = GenerateRequest(prompt="lofi", model=SIMULATED, sample_rate=16000, **fields)
    return planner.plan(request, request_id)


class RecordingSleep:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def simulated_pipeline(sleep) -> MusicPipeline:
    return MusicPipeline(SIMULATED, loader=lambda name, device, dtype: SimulatedModel(CostModel(), dtype, sleep))


@pytest.mark.parametrize("preset", ["balanced", "draft", "precision"])
def test_simulated_model_sleeps_what_the_cost_model_estimates(simulated_planner, preset):
    sleep = RecordingSleep()
    plan = plan_for(simulated_planner, "r1", preset=preset, audio_duration=30, actual_seeds=[1, 2, 3])
    settings = plan.params.batch_settings()
    simulated_pipeline(sleep)(settings, plan.params.items())
    assert sum(sleep.slept) == pytest.approx(CostModel().estimate(settings, 3))


def test_simulated_audio_is_deterministic_and_of_the_requested_length(simulated_planner):
    pipeline = simulated_pipeline(RecordingSleep())
    plan = plan_for(simulated_planner, "r1", audio_duration=7.5, actual_seeds=[1, 2])
    settings, items = plan.params.batch_settings(), plan.params.items()
    first, again = pipeline(settings, items), pipeline(settings, items[:1])
    waveforms = [item.waveform for item in first.items]
    assert [tuple(w.shape) for w in waveforms] == [(1, int(7.5 * SAMPLE_RATE))] * 2
    assert bool((waveforms[0] == again.items[0].waveform).all())
    assert not bool((waveforms[0] == waveforms[1]).all())


def test_simulated_models_are_served_only_when_the_flag_is_set():
    assert SIMULATED not in registry.CATALOG
    probe = "from serve_app.pipeline.registry import CATALOG; print('ace-step-simulated' in CATALOG)"
    env = {**os.environ, registry.SIMULATED_MODELS_ENV: "1"}
    answer = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "True"


# ------------------------------------------------------------------ load reported by the engine


def test_engine_reports_queued_and_running_work_and_room_in_forming_batches(simulated_planner, tmp_path):
    gate = threading.Event()

    async def main():
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def blocking_sleep(seconds: float) -> None:
            loop.call_soon_threadsafe(started.set)
            gate.wait()

        engine = GenerationEngine(
            {SIMULATED: simulated_pipeline(blocking_sleep)},
            LocalStore(tmp_path),
            EngineConfig(max_batch_size=4, batch_wait_s=0.0),
        )
        try:
            assert engine.load().backlog_s == 0.0
            running = plan_for(simulated_planner, "run", audio_duration=60, actual_seeds=[1])
            first = asyncio.ensure_future(engine.generate(running))
            await started.wait()  # the first batch holds the "GPU"
            queued = [
                plan_for(simulated_planner, f"q{n}", audio_duration=30, actual_seeds=[n, n + 100]) for n in range(3)
            ]
            rest = [asyncio.ensure_future(engine.generate(plan)) for plan in queued]
            settings = queued[0].params.batch_settings()
            one_batch_of_four_and_one_of_two = engine.estimate_s(settings, 4) + engine.estimate_s(settings, 2)
            while engine.load().backlog_s < one_batch_of_four_and_one_of_two:  # until all six items queued
                await asyncio.sleep(0)
            load = engine.load()
            running_estimate = engine.estimate_s(running.params.batch_settings(), 1)
            assert load.backlog_s <= one_batch_of_four_and_one_of_two + running_estimate
            assert load.requests == 4
            assert load.forming == {key_id(settings): 2}
            forming_alone = engine.estimate_s(settings, 2)
            assert load.forming_starts_in_s[key_id(settings)] == pytest.approx(load.backlog_s - forming_alone)
            gate.set()
            responses = await asyncio.gather(first, *rest)
            assert engine.load().backlog_s == 0.0 and engine.load().requests == 0
            return responses
        finally:
            gate.set()
            await engine.close()

    responses = asyncio.run(main())
    audio, rate = sf.read(io.BytesIO(LocalStore(tmp_path).get(responses[1].outputs[0].key)))
    assert (rate, len(audio)) == (16000, 30 * 16000)
