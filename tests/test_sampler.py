"""Each sampling control against its defining formula, on small tensors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from serve_app.pipeline.guidance import ApgGuidance, cfg, cfg_star, double_condition
from serve_app.pipeline.music_pipeline import NON_FINITE_MESSAGE, MusicPipeline
from serve_app.pipeline.sampler import Sampler
from serve_app.pipeline.schedules import AceStepV1Schedule, AceStepV15Schedule
from serve_app.pipeline.settings import BatchSettings, GuidanceWindow, ItemSettings
from serve_app.pipeline.steppers import EulerStepper, HeunStepper, PingPongStepper, omega_gain

from .fake_model import FakeModel


def shift3(sigma: float) -> float:
    return 3 * sigma / (1 + 2 * sigma)


def settings(**overrides) -> BatchSettings:
    values = dict(
        model="fake",
        audio_duration=2.0,
        infer_step=10,
        scheduler_type="euler",
        oss_steps=(),
        cfg_type="apg",
        guidance_interval=0.5,
        guided=True,
        double_guidance=False,
        use_erg_tag=False,
        use_erg_lyric=False,
        use_erg_diffusion=False,
        bf16=False,
        torch_compile=False,
    )
    values.update(overrides)
    return BatchSettings(**values)


def item(**overrides) -> ItemSettings:
    values = dict(
        prompt="lofi piano",
        lyrics="[verse]\nhello",
        seed=7,
        guidance_scale=15.0,
        omega_scale=10.0,
        guidance_interval_decay=0.0,
        min_guidance_scale=3.0,
        guidance_scale_text=0.0,
        guidance_scale_lyric=0.0,
    )
    values.update(overrides)
    return ItemSettings(**values)


def run(batch_settings, items, model=None, **kwargs):
    model = model or FakeModel()
    return Sampler(model, **kwargs)(batch_settings, items), model


# --- schedules -------------------------------------------------------------------------


def test_v1_schedule_shifts_the_linear_ramp_twice():
    sigma_min = shift3(0.001)
    expected = [shift3(1.0), shift3((1.0 + sigma_min) / 2), shift3(sigma_min)]
    assert AceStepV1Schedule().sigmas(3).tolist() == pytest.approx(expected, rel=1e-6)


def test_v1_oss_steps_pick_from_the_longest_schedule_and_shift_again():
    full = AceStepV1Schedule().sigmas(10)
    picked = AceStepV1Schedule().subset([1, 4, 10])
    assert picked.tolist() == pytest.approx([shift3(float(full[i])) for i in (0, 3, 9)], rel=1e-6)


def test_v15_schedule_is_shifted_once_without_the_terminal_zero():
    assert AceStepV15Schedule().sigmas(4).tolist() == pytest.approx(
        [shift3(1.0), shift3(0.75), shift3(0.5), shift3(0.25)], rel=1e-6
    )
    assert AceStepV15Schedule().subset([2, 4]).tolist() == pytest.approx([shift3(0.75), shift3(0.25)], rel=1e-6)


# --- update rules ----------------------------------------------------------------------


def test_omega_gain_is_acestep_logistic():
    gains = omega_gain(torch.tensor([0.0, 10.0, -100.0]))
    assert gains.tolist() == pytest.approx([1.0, 0.9 + 0.2 / (1 + math.exp(-1)), 0.9 + 0.2 / (1 + math.exp(10))])


def test_euler_step_scales_the_update_around_its_mean():
    sigmas = torch.tensor([1.0, 0.5])
    sample = torch.tensor([[[1.0, 2.0]]])
    velocity = torch.tensor([[[2.0, 4.0]]])
    gain = torch.tensor([1.1]).reshape(1, 1, 1)
    # update = -0.5 * v = [-1, -2], mean -1.5, deviations ±0.5 scaled by 1.1
    out = EulerStepper(sigmas).step(0, velocity, sample, gain, [])
    assert out.flatten().tolist() == pytest.approx([1.0 - 1.5 + 0.55, 2.0 - 1.5 - 0.55])
    # last step goes to sigma 0
    out = EulerStepper(sigmas).step(1, velocity, sample, torch.ones(1, 1, 1), [])
    assert out.flatten().tolist() == pytest.approx([0.0, 0.0])


def test_heun_evaluates_each_inner_sigma_twice_and_averages_slopes():
    stepper = HeunStepper(torch.tensor([1.0, 0.6, 0.2]))
    assert stepper.eval_sigmas.tolist() == pytest.approx([1.0, 0.6, 0.6, 0.2, 0.2])
    unit = torch.ones(1, 1, 1)
    x0 = torch.tensor([[[1.0, 3.0]]])
    v0 = torch.tensor([[[1.0, 1.0]]])
    predicted = stepper.step(0, v0, x0, unit, [])
    assert predicted.flatten().tolist() == pytest.approx([0.6, 2.6])
    v1 = torch.tensor([[[3.0, 3.0]]])
    corrected = stepper.step(1, v1, predicted, unit, [])
    assert corrected.flatten().tolist() == pytest.approx([1.0 - 0.4 * 2.0, 3.0 - 0.4 * 2.0])
    # the final interval is a single Euler step down to zero
    stepper.step(2, v0, corrected, unit, [])
    stepper.step(3, v0, corrected, unit, [])
    last = stepper.step(4, torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[5.0, 5.0]]]), unit, [])
    assert last.flatten().tolist() == pytest.approx([4.8, 4.8])


def test_pingpong_jumps_to_the_clean_estimate_and_renoises_from_the_items_generator():
    stepper = PingPongStepper(torch.tensor([1.0, 0.25]))
    sample = torch.tensor([[[2.0, 4.0]]])
    velocity = torch.tensor([[[1.0, 2.0]]])
    out = stepper.step(0, velocity, sample, torch.ones(1, 1, 1) * 5, [torch.Generator().manual_seed(3)])
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(3))
    expected = 0.75 * (sample - velocity) + 0.25 * noise
    assert torch.allclose(out, expected)


# --- guidance --------------------------------------------------------------------------


def test_guidance_window_is_centred_and_decays_toward_min():
    window = GuidanceWindow(60, 0.5)
    assert (window.start, window.end) == (15, 45)
    assert 14 not in window and 15 in window and 44 in window and 45 not in window
    assert GuidanceWindow(60, 1.0).start == 0 and GuidanceWindow(60, 0.0).end == 30
    scale = torch.tensor(15.0)
    low = torch.tensor(3.0)
    assert float(window.scale(15, scale, low, torch.tensor(1.0))) == pytest.approx(15.0)
    assert float(window.scale(44, scale, low, torch.tensor(1.0))) == pytest.approx(3.0)
    assert float(window.scale(44, scale, low, torch.tensor(0.5))) == pytest.approx(9.0)
    assert float(window.scale(30, scale, low, torch.tensor(0.0))) == pytest.approx(15.0)
    one_step = GuidanceWindow(3, 0.5)
    assert float(one_step.scale(one_step.start, scale, low, torch.tensor(1.0))) == pytest.approx(15.0)


COND = torch.tensor([[[3.0, 4.0]]])
UNCOND = torch.tensor([[[1.0, 0.0]]])


def test_cfg_extrapolates_from_uncond():
    assert cfg(COND, UNCOND, torch.tensor(2.0)).flatten().tolist() == pytest.approx([5.0, 8.0])


def test_cfg_star_uses_the_optimal_scale_and_zeroes_the_first_two_steps():
    alpha = 3.0 / (1.0 + 1e-8)
    expected = [alpha * 1 + 2 * (3 - alpha), 2 * 4.0]
    assert cfg_star(COND, UNCOND, torch.tensor(2.0), step=2).flatten().tolist() == pytest.approx(expected)
    assert cfg_star(COND, UNCOND, torch.tensor(2.0), step=1).abs().sum() == 0


def test_apg_keeps_only_the_orthogonal_part_of_a_clipped_momentum_difference():
    apg = ApgGuidance(norm_dims=(-1,))
    out = apg(COND, UNCOND, torch.tensor(3.0))
    diff = torch.tensor([2.0, 4.0])
    diff = diff * min(1.0, 2.5 / float(diff.norm()))
    direction = torch.tensor([3.0, 4.0]) / 5.0
    orthogonal = diff - (diff @ direction) * direction
    assert out.flatten().tolist() == pytest.approx((torch.tensor([3.0, 4.0]) + 2 * orthogonal).tolist(), rel=1e-5)
    # the second call adds momentum (-0.75) of the previous difference before clipping
    previous = torch.tensor([2.0, 4.0])
    second = apg(COND, UNCOND, torch.tensor(3.0))
    diff2 = previous - 0.75 * previous
    diff2 = diff2 * min(1.0, 2.5 / float(diff2.norm()))
    orthogonal2 = diff2 - (diff2 @ direction) * direction
    assert second.flatten().tolist() == pytest.approx((torch.tensor([3.0, 4.0]) + 2 * orthogonal2).tolist(), rel=1e-5)


def test_double_condition_weights_text_and_lyrics_separately():
    text_only = torch.tensor([[[2.0, 2.0]]])
    out = double_condition(COND, UNCOND, text_only, torch.tensor(5.0), torch.tensor(3.0))
    assert out.flatten().tolist() == pytest.approx([-4 * 1 + 2 * 2 + 3 * 3, -4 * 0 + 2 * 2 + 3 * 4])


# --- the loop --------------------------------------------------------------------------


def test_guided_steps_batch_all_branches_in_one_forward_inside_the_window_only():
    sampled, model = run(settings(infer_step=10, guidance_interval=0.6), [item(), item(seed=8)])
    rows = [call["rows"] for call in model.calls]
    window = GuidanceWindow(10, 0.6)
    assert rows == [4 if step in window else 2 for step in range(10)]
    assert sampled.latents.shape == (2, 2, 8)


def test_heun_window_is_sized_by_scheduled_sigmas_and_indexed_by_evaluation():
    # ACE-Step: start/end come from the 10 scheduled sigmas, the loop index runs over
    # heun's 19 evaluations, so evaluations 2..6 are guided.
    _, model = run(settings(infer_step=10, scheduler_type="heun", guidance_interval=0.5), [item()])
    rows = [call["rows"] for call in model.calls]
    assert len(rows) == 19
    assert rows == [2 if 2 <= step < 7 else 1 for step in range(19)]


def test_double_guidance_adds_the_text_only_branch():
    _, model = run(
        settings(double_guidance=True, guidance_interval=1.0), [item(guidance_scale_text=5, guidance_scale_lyric=2)]
    )
    assert {call["rows"] for call in model.calls} == {3}


def test_unguided_settings_run_conditional_passes_only():
    _, model = run(settings(guided=False), [item(guidance_scale=1.0)])
    assert {call["rows"] for call in model.calls} == {1}


def test_erg_diffusion_marks_only_the_unconditional_rows():
    _, model = run(settings(use_erg_diffusion=True, guidance_interval=1.0), [item(), item(seed=9)])
    assert model.calls[0]["erg_rows"].tolist() == [False, False, True, True]


def test_total_steps_counts_every_evaluation():
    for scheduler, expected in (("euler", 6), ("pingpong", 6), ("heun", 11)):
        batch = settings(infer_step=6, scheduler_type=scheduler)
        _, model = run(batch, [item()])
        assert len(model.calls) == batch.total_steps == expected
    _, model = run(settings(infer_step=9, oss_steps=(1, 5, 9)), [item()])
    assert len(model.calls) == 3
    assert model.calls[1]["sigma"] == pytest.approx(float(AceStepV1Schedule().subset([1, 5, 9])[1]))


def test_an_items_result_does_not_depend_on_its_batch_mates():
    alone, _ = run(settings(), [item(seed=5)])
    mates = [item(seed=1, prompt="metal", guidance_scale=4.0, omega_scale=-30.0), item(seed=5), item(seed=2)]
    together, _ = run(settings(), mates)
    assert torch.equal(alone.latents[0], together.latents[1])


@pytest.mark.parametrize(
    "change",
    [
        {"scheduler_type": "heun"},
        {"scheduler_type": "pingpong"},
        {"cfg_type": "cfg"},
        {"cfg_type": "cfg_star"},
        {"guidance_interval": 1.0},
        {"use_erg_diffusion": True},
        {"use_erg_lyric": True},
        {"oss_steps": (1, 3, 10)},
    ],
)
def test_each_batch_setting_changes_the_result(change):
    base, _ = run(settings(), [item()])
    changed, _ = run(dataclasses.replace(settings(), **change), [item()])
    assert not torch.allclose(base.latents, changed.latents)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 8},
        {"guidance_scale": 7.0},
        {"omega_scale": -20.0},
        {"guidance_interval_decay": 1.0},
    ],
)
def test_each_item_setting_changes_the_result(change):
    base, _ = run(settings(), [item()])
    changed, _ = run(settings(), [item(**change)])
    assert not torch.allclose(base.latents, changed.latents)


def test_min_guidance_scale_matters_only_with_decay():
    decayed = settings(cfg_type="cfg")
    a, _ = run(decayed, [item(guidance_interval_decay=1.0, min_guidance_scale=3.0)])
    b, _ = run(decayed, [item(guidance_interval_decay=1.0, min_guidance_scale=10.0)])
    c, _ = run(decayed, [item(guidance_interval_decay=0.0, min_guidance_scale=10.0)])
    d, _ = run(decayed, [item(guidance_interval_decay=0.0, min_guidance_scale=3.0)])
    assert not torch.allclose(a.latents, b.latents)
    assert torch.equal(c.latents, d.latents)


def test_erg_tag_changes_the_unconditional_branch_only_with_erg_lyric():
    with_lyric = settings(use_erg_lyric=True)
    a, _ = run(with_lyric, [item()])
    b, _ = run(dataclasses.replace(with_lyric, use_erg_tag=True), [item()])
    assert not torch.allclose(a.latents, b.latents)


def test_double_guidance_scales_change_the_result():
    double = settings(double_guidance=True)
    a, _ = run(double, [item(guidance_scale_text=5.0, guidance_scale_lyric=2.0)])
    b, _ = run(double, [item(guidance_scale_text=5.0, guidance_scale_lyric=4.0)])
    assert not torch.allclose(a.latents, b.latents)


def test_dropped_items_leave_the_rest_unaffected():
    solo, _ = run(settings(scheduler_type="heun"), [item(seed=5)])

    def cancel_second_after_three_steps(done, total, active):
        return {1} if done == 3 else ()

    model = FakeModel()
    sampled = Sampler(model)(
        settings(scheduler_type="heun"), [item(seed=5), item(seed=6)], cancel_second_after_three_steps
    )
    assert sampled.items == [0]
    assert torch.equal(sampled.latents[0], solo.latents[0])
    last_guided = GuidanceWindow(10, 0.5).end - 1
    assert last_guided > 3 and model.calls[last_guided]["rows"] == 2  # one item, two branches


def test_forward_chunking_does_not_change_results():
    whole, _ = run(settings(guidance_interval=1.0), [item(), item(seed=3)])
    chunked, model = run(settings(guidance_interval=1.0), [item(), item(seed=3)], max_rows_per_forward=3)
    assert torch.equal(whole.latents, chunked.latents)
    assert max(call["rows"] for call in model.calls) == 3


def test_pipeline_fails_only_the_non_finite_item_and_trims_to_the_exact_duration():
    pipeline = MusicPipeline("ace-step-v1-tiny", loader=lambda name, device, dtype: FakeModel())
    batch = settings(model="ace-step-v1-tiny", audio_duration=1.37)
    output = pipeline(batch, [item(prompt="nan"), item(seed=3)])
    assert output.items[0].error == NON_FINITE_MESSAGE and output.items[0].waveform is None
    assert output.items[1].error is None
    assert output.items[1].waveform.shape == (2, 137)
