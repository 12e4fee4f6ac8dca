"""TwinFlowScheduler (twinflow_min/sampler.py, issues #4, #18): the step-by-step UCGM sampler.

Expected grids come from the official configs (docs/math.md#sampler-presets) or closed forms
written here; the step-loop results are compared with `ucgm_sample` on the same model, grid and
seeded noise.
The pipeline tests drive the scheduler the way a diffusers flow-matching pipeline does (config.get,
order, set_timesteps, step(..., return_dict=False)[0] without a generator), without diffusers.
Time convention: see twinflow_min/transport.py.
"""

import math

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


@pytest.mark.parametrize(
    "style, ratio, gaps",
    [("few", "SDE", (0.001, 0.5)), ("any", 0.0, (0.001, 0.5)), ("mul", 0.5, (0.0, 0.0))],
)
def test_loop_equals_ucgm_sample_explicit(style, ratio, gaps):
    model, z = TinyModel(4, seed=1), torch.randn(2, 2, 2, generator=gen(1), dtype=F64)
    scheduler = TwinFlowScheduler(style=style, stochastic_ratio=ratio, boundary_gaps=gaps)
    looped = run_loop(scheduler, model, z, 4, generator=[gen(7), gen(8)])
    sampled = ucgm_sample(
        model,
        z,
        steps=4,
        style=style,
        stochastic_ratio=ratio,
        boundary_gaps=gaps,
        generator=[gen(7), gen(8)],
    )
    assert torch.allclose(looped, sampled, atol=1e-12, rtol=0)


def test_default_grids_follow_official_configs():
    scheduler = TwinFlowScheduler()
    # docs/math.md#sampler-presets: 1 NFE [1, 0]; 2 NFE [0.999, 0.6, 0]; 4 NFE 0.999 - k 0.499/3, 0
    for steps, expected in (
        (1, [1.0, 0.0]),
        (2, [0.999, 0.6, 0.0]),
        (4, [0.999 - k * 0.499 / 3 for k in range(4)] + [0.0]),
    ):
        scheduler.set_timesteps(steps)
        assert torch.allclose(
            scheduler.sigmas, torch.tensor(expected, dtype=F64), atol=1e-14, rtol=0
        )
        # timesteps are float32 (diffusers): 1000 t to float32 precision (spacing 6.1e-5 near 1000)
        assert scheduler.timesteps.dtype == torch.float32
        assert torch.allclose(
            scheduler.timesteps.double(),
            1000 * torch.tensor(expected[:-1], dtype=F64),
            atol=1e-4,
            rtol=0,
        )
    assert scheduler.step_ratio == 1.0  # 4 NFE preset re-noises fully
    scheduler.set_timesteps(1)
    assert scheduler.step_ratio == 0.0  # tutorial 1 NFE
    mul = TwinFlowScheduler(style="mul", kumaraswamy_abc=(1.17, 0.8, 1.1))
    mul.set_timesteps(30)
    assert torch.allclose(
        mul.sigmas[:3], torch.tensor([0.99989, 0.98978, 0.97547], dtype=F64), atol=5e-6
    )


def test_shift_follows_sd3_formula():
    shifted = TwinFlowScheduler(shift=3.0)
    shifted.set_timesteps(2)
    # sigma' = 3 sigma / (1 + 2 sigma): 0.999 -> 2.997 / 2.998, 0.6 -> 1.8 / 2.2, 0 -> 0
    expected = torch.tensor([2.997 / 2.998, 1.8 / 2.2, 0.0], dtype=F64)
    assert torch.allclose(shifted.sigmas, expected, atol=1e-14, rtol=0)
    assert torch.allclose(shifted.timesteps.double(), 1000 * expected[:-1], atol=1e-4, rtol=0)
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
        assert t_tgt[0].item() == pytest.approx(expected, abs=1e-7) and t[
            0
        ].item() == pytest.approx(grid[i])


def test_step_output_fields():
    scheduler = TwinFlowScheduler(stochastic_ratio=0.0, boundary_gaps=(0.0, 0.0))
    scheduler.set_timesteps(4)  # grid [1, .75, .5, .25, 0]
    sample, F = torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([[0.2, 0.4]], dtype=F64)
    out = scheduler.step(F, scheduler.timesteps[1], sample)  # t = 0.75 -> 0.5
    # x_hat = x - t F = [0.35, -1.3]; z_hat = x + (1 - t) F = [0.55, -0.9];
    # x_next = 0.5 x_hat + 0.5 z_hat
    assert torch.allclose(
        out.pred_original_sample, torch.tensor([[0.35, -1.3]], dtype=F64), atol=1e-15
    )
    assert torch.allclose(out.prev_sample, torch.tensor([[0.45, -1.1]], dtype=F64), atol=1e-15)
    last = scheduler.step(F, scheduler.timesteps[-1], sample)  # the final step lands on x_hat
    assert torch.equal(last.prev_sample, last.pred_original_sample)
    assert out.prev_sample.dtype == F64
    assert (
        scheduler.step(F.float(), scheduler.timesteps[0], sample.float()).prev_sample.dtype
        == torch.float32
    )


def test_single_point_oracle_through_scheduler():
    # data = the point 0.3: F = (x - 0.3) / t is exact, so the loop returns 0.3 with or without
    # re-noising
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
    with pytest.raises(ValueError, match="num_inference_steps=3 but 2 sigmas"):
        scheduler.set_timesteps(3, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="decrease"):
        scheduler.set_timesteps(sigmas=[0.5, 0.9])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        scheduler.set_timesteps(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="mu must be a number"):
        TwinFlowScheduler(use_dynamic_shifting=True).set_timesteps(2)
    with pytest.raises(ValueError, match="seed"):
        TwinFlowScheduler(seed=-1)
    with pytest.raises(TypeError, match="read-only"):
        scheduler.config["shift"] = 3.0


# ---------- issue 18: the diffusers pipeline interface ----------


class InstantaneousModel:
    """A pipeline's transformer: F(x_t, timestep) with timestep = 1000 t, no target time."""

    def __init__(self, dim):
        self.inner = TinyModel(dim, seed=3)

    def __call__(self, hidden_states, timestep):
        t = timestep.double() / 1000  # the float32 timestep, read in float64
        return self.inner(hidden_states, t, t, None)


def as_pipeline_time(t):
    """The model time a pipeline's transformer sees: the float32 timestep 1000 t, over 1000."""
    return (1000 * t).float().double() / 1000


def instantaneous(model):
    """`ucgm_sample` form of the pipeline's model: F(x, t, t_tgt) = F(x, t) at its time."""
    return lambda x, t, r, y: model.inner(x, as_pipeline_time(t), as_pipeline_time(t), None)


def pipeline_call(scheduler, model, latents, num_inference_steps, sigmas=None):
    """What SD3's __call__ does with its scheduler (guidance 0): config.get, order, set_timesteps,
    a loop of transformer calls and step(..., return_dict=False)[0] without a generator."""
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting", None):
        kwargs["mu"] = 0.5
    if sigmas is None:
        scheduler.set_timesteps(num_inference_steps, device=latents.device, **kwargs)
    else:
        scheduler.set_timesteps(sigmas=sigmas, device=latents.device, **kwargs)
    timesteps = scheduler.timesteps
    num_warmup_steps = max(len(timesteps) - num_inference_steps * scheduler.order, 0)
    assert num_warmup_steps == 0
    latents_dtype = latents.dtype
    for t in timesteps:
        noise_pred = model(latents, t.expand(latents.shape[0]))
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        assert latents.dtype == latents_dtype
    return latents


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_pipeline_loop_equals_ucgm_sample(steps):
    model, z = InstantaneousModel(6), torch.randn(3, 6, generator=gen(5), dtype=F64)
    scheduler = TwinFlowScheduler(
        num_train_timesteps=1000, prediction_type="flow_matching", shift=1.0
    )
    assert scheduler.order == 1 and scheduler.config.get("use_dynamic_shifting") is False
    assert scheduler.config.get("num_train_timesteps") == 1000 and scheduler.config.shift == 1.0
    assert scheduler.config.get("prediction_type") == "flow_matching"
    out = pipeline_call(scheduler, model, z, steps)
    # the pipeline's model has no target time: ucgm_sample with F(x, t) = the same network at
    # t_tgt = t; generator seed 0 = the scheduler's default noise seed
    reference = ucgm_sample(instantaneous(model), z, generator=gen(0), **preset_for_nfe(steps))
    assert torch.allclose(out, reference, atol=1e-12, rtol=0)
    again = pipeline_call(scheduler, model, z, steps)  # a second seeded call repeats exactly
    assert torch.equal(out, again)


def test_pipeline_seed_and_custom_sigmas():
    model, z = InstantaneousModel(4), torch.randn(2, 4, generator=gen(6), dtype=F64)
    first = pipeline_call(TwinFlowScheduler(seed=11), model, z, 2)
    assert torch.equal(first, pipeline_call(TwinFlowScheduler(seed=11), model, z, 2))
    assert not torch.allclose(first, pipeline_call(TwinFlowScheduler(seed=12), model, z, 2))
    scheduler = TwinFlowScheduler(seed=11)
    scheduler.set_timesteps(2, seed=12)  # a seed given to set_timesteps restarts the noise there
    assert torch.equal(scheduler.generator.get_state(), gen(12).get_state())
    # custom sigmas (a Flux-style pipeline passes linspace(1, 1/n, n)) replace the UCGM grid
    custom = TwinFlowScheduler(stochastic_ratio=0.0)
    out = pipeline_call(custom, model, z, 2, sigmas=[1.0, 0.5])
    assert torch.equal(custom.sigmas, torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    assert torch.equal(custom.timesteps, torch.tensor([1000.0, 500.0]))
    reference = ucgm_sample(
        instantaneous(model), z, steps=2, style="few", boundary_gaps=(0.0, 0.0)
    )  # grid [1, 0.5, 0] (g1 = 0 rule)
    assert torch.allclose(out, reference, atol=1e-12, rtol=0)


def test_pipeline_float32_latents_keep_dtype():
    model, z = InstantaneousModel(4), torch.randn(2, 4, generator=gen(8), dtype=torch.float32)
    out = pipeline_call(TwinFlowScheduler(), model, z, 2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_dynamic_shifting_and_ignored_mu():
    dynamic = TwinFlowScheduler(use_dynamic_shifting=True, stochastic_ratio=0.0)
    dynamic.set_timesteps(sigmas=[1.0, 0.5], mu=math.log(3.0))
    # sigma' = e^mu / (e^mu + 1/sigma - 1): 1 -> 1, 0.5 -> 3 / 4, 0 -> 0
    assert torch.allclose(dynamic.sigmas, torch.tensor([1.0, 0.75, 0.0], dtype=F64), atol=1e-15)
    plain = TwinFlowScheduler()
    with pytest.warns(UserWarning, match="mu is ignored"):
        plain.set_timesteps(2, mu=0.7)
    assert torch.equal(plain.sigmas, ucgm_time_grid(2, boundary_gaps=(0.001, 0.6)))


def test_step_counter_begin_index_and_scale_noise():
    scheduler = TwinFlowScheduler(stochastic_ratio=0.0, boundary_gaps=(0.0, 0.0))
    scheduler.set_timesteps(4)  # grid [1, .75, .5, .25, 0]
    assert scheduler.step_index is None and scheduler.begin_index is None and len(scheduler) == 1000
    sample, noise = torch.full((2, 3), 0.4, dtype=F64), torch.full((2, 3), -1.0, dtype=F64)
    # scale_noise looks each timestep up: x_t = (1 - t) x + t z at t = 0.5 and 0.25
    scaled = scheduler.scale_noise(sample, scheduler.timesteps[2:4], noise)
    assert torch.allclose(
        scaled[:, 0], torch.tensor([0.5 * 0.4 - 0.5, 0.75 * 0.4 - 0.25], dtype=F64)
    )
    scheduler.set_begin_index(1)  # image-to-image: start at t = 0.75
    scaled = scheduler.scale_noise(sample, scheduler.timesteps[1:2], noise)
    assert torch.allclose(scaled, torch.full_like(sample, 0.25 * 0.4 - 0.75))
    F = torch.zeros_like(sample)
    prev, x_hat = scheduler.step(F, scheduler.timesteps[1], scaled, return_dict=False)
    assert scheduler.step_index == 2 and torch.equal(prev, x_hat)  # F = 0: x_hat = z_hat = x
    scheduler.step(F, scheduler.timesteps[2], prev)
    assert scheduler.step_index == 3
    with pytest.raises(ValueError, match="begin_index"):
        scheduler.set_begin_index(-1)
