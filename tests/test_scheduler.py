"""TwinFlowScheduler (twinflow_min/sampler.py, issue #4): the step-by-step form of the UCGM sampler.

Expected grids come from the reference doc (§3.2) or closed forms written here; the step-loop results are
compared with `ucgm_sample` on the same model, grid and seeded noise.
Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data.
"""

import pytest
import torch

from test_sampler import TinyModel
from twinflow_min.sampler import TwinFlowScheduler, preset_for_nfe, ucgm_sample, ucgm_time_grid

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def run_loop(scheduler, model, z, steps, generator=None):
    """The user-facing loop: set_timesteps, then one model call and one step per timestep."""
    scheduler.set_timesteps(steps)
    x = z
    for timestep in scheduler.timesteps:
        t, t_tgt = scheduler.model_times(timestep, z.shape[0], dtype=z.dtype)
        x = scheduler.step(model(x, t, t_tgt, None), timestep, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("nfe", [1, 2, 3, 4])
def test_loop_equals_ucgm_sample_with_presets(nfe):
    model, z = TinyModel(5), torch.randn(3, 5, generator=gen(0), dtype=F64)
    looped = run_loop(TwinFlowScheduler(), model, z, nfe, generator=gen(42))
    sampled = ucgm_sample(model, z, generator=gen(42), **preset_for_nfe(nfe))
    assert torch.allclose(looped, sampled, atol=1e-12, rtol=0)


@pytest.mark.parametrize("style, ratio, gaps", [("few", "SDE", (0.001, 0.5)), ("any", 0.0, (0.001, 0.5)),
                                                ("mul", 0.5, (0.0, 0.0))])
def test_loop_equals_ucgm_sample_explicit(style, ratio, gaps):
    model, z = TinyModel(4, seed=1), torch.randn(2, 2, 2, generator=gen(1), dtype=F64)
    scheduler = TwinFlowScheduler(style=style, stochastic_ratio=ratio, boundary_gaps=gaps)
    looped = run_loop(scheduler, model, z, 4, generator=[gen(7), gen(8)])
    sampled = ucgm_sample(model, z, steps=4, style=style, stochastic_ratio=ratio, boundary_gaps=gaps,
                          generator=[gen(7), gen(8)])
    assert torch.allclose(looped, sampled, atol=1e-12, rtol=0)


def test_default_grids_follow_official_configs():
    scheduler = TwinFlowScheduler()
    # reference §3.2: 1 NFE [1, 0]; 2 NFE [0.999, 0.6, 0]; 4 NFE 0.999 - k 0.499/3, then 0
    for steps, expected in ((1, [1.0, 0.0]), (2, [0.999, 0.6, 0.0]),
                            (4, [0.999 - k * 0.499 / 3 for k in range(4)] + [0.0])):
        scheduler.set_timesteps(steps)
        assert torch.allclose(scheduler.sigmas, torch.tensor(expected, dtype=F64), atol=1e-14, rtol=0)
        assert torch.allclose(scheduler.timesteps, 1000 * torch.tensor(expected[:-1], dtype=F64), atol=1e-11)
    assert scheduler.step_ratio == 1.0  # 4 NFE preset re-noises fully
    scheduler.set_timesteps(1)
    assert scheduler.step_ratio == 0.0  # tutorial 1 NFE
    mul = TwinFlowScheduler(style="mul", kumaraswamy_abc=(1.17, 0.8, 1.1))
    mul.set_timesteps(30)
    assert torch.allclose(mul.sigmas[:3], torch.tensor([0.99989, 0.98978, 0.97547], dtype=F64), atol=5e-6)


def test_shift_follows_sd3_formula():
    shifted = TwinFlowScheduler(shift=3.0)
    shifted.set_timesteps(2)
    # sigma' = 3 sigma / (1 + 2 sigma): 0.999 -> 2.997 / 2.998, 0.6 -> 1.8 / 2.2, 0 -> 0
    expected = torch.tensor([2.997 / 2.998, 1.8 / 2.2, 0.0], dtype=F64)
    assert torch.allclose(shifted.sigmas, expected, atol=1e-14, rtol=0)
    assert torch.allclose(shifted.timesteps, 1000 * expected[:-1], atol=1e-11)
    plain = TwinFlowScheduler(shift=1.0)
    plain.set_timesteps(2)
    assert torch.equal(plain.sigmas, ucgm_time_grid(2, boundary_gaps=(0.001, 0.6)))


@pytest.mark.parametrize("style", ["few", "any", "mul"])
def test_target_timestep_per_style(style):
    scheduler = TwinFlowScheduler(style=style, stochastic_ratio=0.0, boundary_gaps=(0.0, 0.0))
    scheduler.set_timesteps(4)  # grid [1, .75, .5, .25, 0]
    grid = [1.0, 0.75, 0.5, 0.25, 0.0]
    for i, timestep in enumerate(scheduler.timesteps):
        expected = {"few": 0.0, "any": grid[i + 1], "mul": grid[i]}[style]
        assert scheduler.target_timestep(timestep) == pytest.approx(1000 * expected, abs=1e-9)
        t, t_tgt = scheduler.model_times(timestep, 3)
        assert t.shape == t_tgt.shape == (3,) and t.dtype == torch.float32
        assert t_tgt[0].item() == pytest.approx(expected, abs=1e-7) and t[0].item() == pytest.approx(grid[i])


def test_step_output_fields():
    scheduler = TwinFlowScheduler(stochastic_ratio=0.0, boundary_gaps=(0.0, 0.0))
    scheduler.set_timesteps(4)  # grid [1, .75, .5, .25, 0]
    sample, F = torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([[0.2, 0.4]], dtype=F64)
    out = scheduler.step(F, scheduler.timesteps[1], sample)  # t = 0.75 -> 0.5
    # x_hat = x - t F = [0.35, -1.3]; z_hat = x + (1 - t) F = [0.55, -0.9]; x_next = 0.5 x_hat + 0.5 z_hat
    assert torch.allclose(out.pred_original_sample, torch.tensor([[0.35, -1.3]], dtype=F64), atol=1e-15)
    assert torch.allclose(out.prev_sample, torch.tensor([[0.45, -1.1]], dtype=F64), atol=1e-15)
    last = scheduler.step(F, scheduler.timesteps[-1], sample)  # the final step lands on x_hat
    assert torch.equal(last.prev_sample, last.pred_original_sample)
    assert out.prev_sample.dtype == F64
    assert scheduler.step(F.float(), scheduler.timesteps[0], sample.float()).prev_sample.dtype == torch.float32


def test_single_point_oracle_through_scheduler():
    # data = the point 0.3: F = (x - 0.3) / t is exact, so the loop returns 0.3 with or without re-noising
    z = torch.tensor([[-1.0], [0.0], [0.7], [2.0]], dtype=F64)
    model = lambda x, t, r, y: (x - 0.3) / t[:, None]
    for steps in (1, 2, 4):
        out = run_loop(TwinFlowScheduler(), model, z, steps, generator=gen(steps))
        assert torch.allclose(out, torch.full_like(z, 0.3), atol=1e-12)


def test_clear_errors():
    with pytest.raises(ValueError, match="prediction_type"):
        TwinFlowScheduler(prediction_type="epsilon")
    with pytest.raises(ValueError, match="shift"):
        TwinFlowScheduler(shift=0.0)
    with pytest.raises(ValueError, match="unknown style"):
        TwinFlowScheduler(style="euler")
    with pytest.raises(ValueError, match="stochastic_ratio"):
        TwinFlowScheduler(stochastic_ratio=2.0)
    with pytest.raises(ValueError, match="boundary_gaps"):
        TwinFlowScheduler(boundary_gaps=(0.5, 0.5))
    scheduler = TwinFlowScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 2), 999.0, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="not in this schedule"):
        scheduler.step(torch.zeros(1, 2), 500.0, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shaped like sample"):
        scheduler.step(torch.zeros(1, 3), scheduler.timesteps[0], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="needs fresh noise"):  # 2 NFE re-noises (rho = 1)
        scheduler.step(torch.zeros(1, 2), scheduler.timesteps[0], torch.zeros(1, 2))
