"""UCGM sampler (twinflow_min/sampler.py): grids, exact oracles, bug fixes B3/B4/B5/B7, presets,
aliases.

Golden values come from the grid rule (M19) of docs/math.md#ucgm-sampler, the preset grids of
docs/math.md#sampler-presets, two closed-form oracles written out below (data = one point b, and
Gaussian data N(mu, sigma^2), whose flow map is exact), or float64 hand computations written here
from the equations; none were copied from the code's output. B3, B4, B5, B7 are the labels of
docs/math.md#official-differences. Time convention: see twinflow_min/transport.py.
"""

import math

import pytest
import torch

from twinflow_min.sampler import (
    OFFICIAL_ARGUMENT_NAMES,
    PRESETS,
    from_official_arguments,
    preset_for_nfe,
    step_stochastic_ratio,
    ucgm_sample,
    ucgm_time_grid,
)

F64 = torch.float64
Z4 = torch.tensor([-1.0, 0.0, 0.7, 2.0], dtype=F64)  # the z of both exact oracles
POINT = 0.3  # single-point data b
MU, SIGMA = 2.0, 0.5  # Gaussian data N(mu, sigma^2)


def _col(t, like):
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def single_point_model(x_t, t, t_tgt, y=None):
    """Exact F for data = the point b (closed form): F(x, t, r) = (x - b) / |t| for every r."""
    return (x_t - POINT) / _col(t, x_t).abs()


def _s(u):
    return torch.sqrt(torch.as_tensor(u**2 + (1 - u) ** 2 * SIGMA**2, dtype=F64))


def gaussian_flow_map(x, t, r):
    """Phi_{t->r}(x) = (1 - r) mu + (s(r) / s(t)) (x - (1 - t) mu) for data N(mu, sigma^2), with
    s(u) = sqrt(u^2 + (1 - u)^2 sigma^2) the standard deviation of x_u (closed form)."""
    return (1 - r) * MU + (_s(r) / _s(t)) * (x - (1 - t) * MU)


def gaussian_model(x_t, t, t_tgt, y=None):
    """Exact mean velocity of the Gaussian, (x_t - Phi_{t->r}(x_t)) / (t - r); the instantaneous
    velocity on the diagonal t = r."""
    t, r = _col(t, x_t), _col(t_tgt, x_t)
    instantaneous = -MU + ((t - (1 - t) * SIGMA**2) / _s(t) ** 2) * (x_t - (1 - t) * MU)
    same = t == r
    average = (x_t - gaussian_flow_map(x_t, t, r)) / torch.where(same, torch.ones_like(t), t - r)
    return torch.where(same, instantaneous, average)


class TinyModel(torch.nn.Module):
    """A small nonlinear per-sample velocity model with the model(x_t, t, t_tgt, y) signature."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(0.5 * torch.randn(dim, dim, generator=g, dtype=F64))
        self.time = torch.nn.Parameter(torch.randn(3, dim, generator=g, dtype=F64))

    def forward(self, x_t, t, t_tgt, y=None):
        flat = x_t.flatten(1)  # (B, D)
        w, c = self.weight.to(x_t.dtype), self.time.to(x_t.dtype)
        h = torch.tanh(flat @ w + t[:, None] * c[0] + t_tgt[:, None] * c[1]) + c[2]  # (B, D)
        return h.reshape(x_t.shape)


class Recorder:
    """Wraps a model and records (t, t_tgt, x_t, dtype) of every call (one entry per NFE)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x_t, t, t_tgt, y=None):
        self.calls.append((t[0].item(), t_tgt[0].item(), x_t.clone(), x_t.dtype, y))
        return self.model(x_t, t, t_tgt, y)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------- grids (docs/math.md#ucgm-sampler, M19) ----------


def _linear_grid(start, stop, count):
    """Hand rule (M19) with K = identity: t_i = 1 - u_i for u = linspace(start, stop, count),
    then 0."""
    return [
        1 - (start + (stop - start) * i / (count - 1)) if count > 1 else 1 - start
        for i in range(count)
    ] + [0.0]


@pytest.mark.parametrize(
    "steps, gaps, expected",
    [
        (1, (0, 0), [1.0, 0.0]),  # MNIST tutorial default
        (2, (0.001, 0.6), [0.999, 0.6, 0.0]),  # inference.py 2-NFE
        # inference.py 4-NFE (doc values, 5 digits)
        (4, (0.001, 0.5), [0.999, 0.83267, 0.66633, 0.5, 0.0]),
        (2, (0.001, 0.7), [0.999, 0.7, 0.0]),  # yaml few-step
        (1, (0.001, 0.7), [0.999, 0.0]),  # yaml few-step, 1 step
        (8, (0.001, 0.5), _linear_grid(0.001, 0.5, 8)),  # yaml any-step, 8 points from 0.999 to 0.5
        (2, (0.001, 0.3), [0.999, 0.3, 0.0]),  # UCGM few-step IN256
        (2, (0.001, 0.75), [0.999, 0.75, 0.0]),  # UCGM tuned REPA-E
    ],
)
def test_official_grids(steps, gaps, expected):
    grid = ucgm_time_grid(steps, boundary_gaps=gaps)
    assert grid.dtype == F64 and grid.shape == (steps + 1,)
    assert torch.allclose(grid, torch.tensor(expected, dtype=F64), atol=5e-6, rtol=0)
    assert bool((grid[1:] < grid[:-1]).all()) and grid[-1] == 0


def test_four_nfe_grid_exact():
    # u = linspace(0.001, 0.5, 4): t_k = 0.999 - k * 0.499 / 3 exactly
    expected = [0.999 - k * 0.499 / 3 for k in range(4)] + [0.0]
    assert torch.allclose(
        ucgm_time_grid(4, boundary_gaps=(0.001, 0.5)),
        torch.tensor(expected, dtype=F64),
        atol=1e-14,
        rtol=0,
    )


def test_multistep_kumaraswamy_grid():
    grid = ucgm_time_grid(30, kumaraswamy_abc=(1.17, 0.8, 1.1), boundary_gaps=(0.001, 0.0))
    assert grid.shape == (31,)
    # the grid of docs/math.md#sampler-presets (multi-step row, 5 digits)
    doc_head, doc_tail = [0.99989, 0.98978, 0.97547], [0.14118, 0.08152, 0.0]
    assert torch.allclose(grid[:3], torch.tensor(doc_head, dtype=F64), atol=5e-6, rtol=0)
    assert torch.allclose(grid[-3:], torch.tensor(doc_tail, dtype=F64), atol=5e-6, rtol=0)
    # every point by hand: u_i = 0.001 + i * 0.999 / 30 (i < 30), t_i = 1 - (1 - (1 - u^a)^b)^c
    u = [0.001 + i * 0.999 / 30 for i in range(30)]
    hand = [1 - (1 - (1 - u_i**1.17) ** 0.8) ** 1.1 for u_i in u] + [0.0]
    assert torch.allclose(grid, torch.tensor(hand, dtype=F64), atol=1e-13, rtol=0)


def test_kumaraswamy_doc_values():
    # (M19): K(0.25), K(0.5), K(0.75) = 0.134497, 0.340085, 0.604546 for (1.17, 0.8, 1.1);
    # u = linspace(0.25, 0.75, 3) with gaps (0.25, 0.25)
    grid = ucgm_time_grid(3, kumaraswamy_abc=(1.17, 0.8, 1.1), boundary_gaps=(0.25, 0.25))
    expected = [1 - 0.134497, 1 - 0.340085, 1 - 0.604546, 0.0]
    assert torch.allclose(grid, torch.tensor(expected, dtype=F64), atol=1e-6, rtol=0)


def test_order_two_grid_has_half_the_intervals():
    # n = ceil(steps / 2): steps 4 -> 2 intervals, steps 5 -> 3
    assert torch.allclose(ucgm_time_grid(4, order=2), torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    assert torch.allclose(
        ucgm_time_grid(5, order=2), torch.tensor([1.0, 2 / 3, 1 / 3, 0.0], dtype=F64)
    )


def test_b7_grid_rule_switch_is_kept_and_discontinuous():
    # B7 (docs/math.md#official-differences): g1 == 0 exactly -> u = linspace(0.001, 1, 5)[:-1],
    # t = 0.999, 0.74925, 0.4995, 0.24975
    at_zero = ucgm_time_grid(4, boundary_gaps=(0.001, 0.0))
    assert torch.allclose(
        at_zero, torch.tensor([0.999, 0.74925, 0.4995, 0.24975, 0.0], dtype=F64), atol=1e-12
    )
    # g1 = 1e-9 -> u = linspace(0.001, 1 - 1e-9, 4): the last point jumps to ~1e-9 (its NFE lands
    # next to t = 0)
    tiny = ucgm_time_grid(4, boundary_gaps=(0.001, 1e-9))
    expected = [0.999, 0.999 - 0.999 / 3, 0.999 - 2 * 0.999 / 3, 1e-9, 0.0]
    assert torch.allclose(tiny, torch.tensor(expected, dtype=F64), atol=1e-9)
    assert at_zero[-2] - tiny[-2] > 0.24  # a 1e-9 change of g1 moves a grid point by ~0.25


# ---------- exact oracles: one-point data, Gaussian data ----------


@pytest.mark.parametrize("style", ["few", "any", "mul"])
@pytest.mark.parametrize("ratio", [0.0, 1.0])
@pytest.mark.parametrize("order", [1, 2])
def test_single_point_oracle(style, ratio, order):
    # one-point data: x_hat = b at every call, so every configuration returns b
    for steps in (1, 2, 4):
        for gaps in ((0, 0), (0.001, 0.5), (0.001, 0.0)):
            for extrapolation in (0.0, 0.5):
                out = ucgm_sample(
                    single_point_model,
                    Z4,
                    steps=steps,
                    style=style,
                    stochastic_ratio=ratio,
                    order=order,
                    boundary_gaps=gaps,
                    extrapolation_ratio=extrapolation,
                    generator=gen(steps),
                )
                assert torch.allclose(out, torch.full_like(Z4, POINT), atol=1e-12, rtol=0), (
                    steps,
                    gaps,
                )


@pytest.mark.parametrize(
    "options, expected",
    [
        # few S=1 grid [1, 0]: x_hat = Phi_{1->0}(z) = mu + sigma z exactly
        (dict(steps=1, boundary_gaps=(0, 0)), [1.5, 2.0, 2.35, 3.0]),
        (dict(steps=4, style="any", boundary_gaps=(0, 0.5)), [1.5, 2.0, 2.35, 3.0]),
        # the grid starts at t = 0.999: x_hat = Phi_{0.999->0}(z), the closed form above
        (
            dict(steps=4, style="any", boundary_gaps=(0.001, 0.5)),
            [1.4984985613, 1.9989989991, 2.3493493056, 2.9999998747],
        ),
        (
            dict(steps=1, boundary_gaps=(0.001, 0.6)),
            [1.4984985613, 1.9989989991, 2.3493493056, 2.9999998747],
        ),
        (
            dict(steps=2, boundary_gaps=(0.001, 0.6)),
            [1.3658833431, 1.9987342981, 2.4417299666, 3.2644362081],
        ),
        (
            dict(steps=4, style="mul", boundary_gaps=(0, 0)),
            [1.6594594595, 2.0, 2.2383783784, 2.6810810811],
        ),
        (
            dict(steps=100, style="mul", boundary_gaps=(0, 0)),
            [1.5073545237, 2.0, 2.3448518334, 2.9852909526],
        ),
    ],
)
def test_gaussian_closed_form(options, expected):
    out = ucgm_sample(gaussian_model, Z4, **options)
    assert torch.allclose(out, torch.tensor(expected, dtype=F64), atol=1e-9, rtol=0)


def test_gaussian_start_at_0999_hand_value():
    # z is read as x_0.999: Phi_{0.999->0}(z) = mu + (sigma / s(0.999)) (z - 0.001 mu), s(0.999)^2 =
    # 0.999^2 + 1e-6/4
    s = math.sqrt(0.999**2 + 0.001**2 * 0.25)
    expected = torch.tensor([2.0 + 0.5 / s * (v - 0.002) for v in Z4.tolist()], dtype=F64)
    out = ucgm_sample(gaussian_model, Z4, steps=1, boundary_gaps=(0.001, 0.6))
    assert torch.allclose(out, expected, atol=1e-12, rtol=0)


# ---------- return value ----------


@pytest.mark.parametrize("steps, order, n", [(1, 1, 1), (4, 1, 4), (4, 2, 2), (5, 2, 3)])
def test_trajectory_shape_and_first_entry(steps, order, n):
    z = torch.randn(3, 2, 5, generator=gen(1), dtype=torch.float32)
    sample, trajectory = ucgm_sample(
        TinyModel(10), z, steps=steps, order=order, return_trajectory=True
    )
    assert trajectory.shape == (n + 1, 3, 2, 5) and trajectory.dtype == torch.float32
    assert torch.equal(trajectory[0], z) and torch.equal(trajectory[-1], sample)
    assert sample.dtype == torch.float32


def test_model_sees_z_dtype_and_labels():
    z, y = torch.randn(2, 3, generator=gen(2), dtype=torch.float32), torch.tensor([3, 7])
    recorder = Recorder(TinyModel(3))
    ucgm_sample(recorder, z, steps=2, y=y)
    assert [c[3] for c in recorder.calls] == [torch.float32] * 2 and all(
        c[4] is y for c in recorder.calls
    )


def test_extrapolation_starts_at_third_step():
    # F = x (ident model), few style, rho = 0, grid [1, .75, .5, .25, 0], z = 1, e = 0.5. By hand:
    # i=0 (t=1):   x_hat=0,      z_hat=1       -> x=0.75
    # i=1 (t=.75): x_hat=.1875,  z_hat=.9375   -> x=.5625            (no extrapolation yet)
    # i=2 (t=.5):  x_hat=.28125, z_hat=.84375; extrapolated .328125, .796875 -> x=.4453125
    # i=3 (t=.25): x_hat=.75 * .4453125 = .333984375 (the recorded x_hat is the raw one)
    z = torch.ones(1, dtype=F64)
    sample, trajectory = ucgm_sample(
        lambda x, t, r, y: x.clone(), z, steps=4, extrapolation_ratio=0.5, return_trajectory=True
    )
    expected = torch.tensor([1.0, 0.0, 0.1875, 0.28125, 0.333984375], dtype=F64)
    assert torch.allclose(trajectory[:, 0], expected, atol=1e-15, rtol=0)


# ---------- B5 ----------


def test_sde_ratio_is_recomputed_every_step():
    grid = ucgm_time_grid(4, boundary_gaps=(0.001, 0.5)).tolist()
    # rho = clip(2 |dt| t_cur / t_next^2, 0, 1) on [0.999, 0.83267, 0.66633, 0.5, 0], dt = 0.499 / 3
    dt = 0.499 / 3
    hand = [
        2 * dt * 0.999 / (0.999 - dt) ** 2,
        2 * dt * (0.999 - dt) / (0.999 - 2 * dt) ** 2,
        min(2 * dt * (0.999 - 2 * dt) / 0.25, 1.0),
        1.0,
    ]
    rho = [step_stochastic_ratio("SDE", a, b) for a, b in zip(grid[:-1], grid[1:])]
    assert rho == pytest.approx(hand, abs=1e-12)
    assert rho == pytest.approx([0.479328, 0.624, 0.887, 1.0], abs=1e-3)  # the hand values, rounded
    assert step_stochastic_ratio(0.3, 0.9, 0.5) == 0.3

    # through the sampler: b = 0 single-point data, so x_hat = 0 and z_hat = x / t; each state must
    # be x_next = t_next (sqrt(1 - rho) x / t + sqrt(rho) eps) with the per-step rho (noise replayed
    # from the seed)
    recorder = Recorder(lambda x, t, r, y: x / _col(t, x))
    z = torch.randn(64, generator=gen(3), dtype=F64)
    ucgm_sample(
        recorder, z, steps=4, stochastic_ratio="SDE", boundary_gaps=(0.001, 0.5), generator=gen(9)
    )
    replay = gen(9)
    states = [c[2] for c in recorder.calls]
    for k in range(3):
        eps = torch.randn(64, generator=replay, dtype=F64)

        def step(r, k=k, eps=eps):
            return grid[k + 1] * (math.sqrt(1 - r) * states[k] / grid[k] + math.sqrt(r) * eps)

        assert torch.allclose(states[k + 1], step(hand[k]), atol=1e-12)
        if k > 0:  # the official code would reuse the step-0 ratio
            assert not torch.allclose(states[k + 1], step(hand[0]), atol=1e-3)


# ---------- B3 / B4 ----------


@pytest.mark.parametrize(
    "steps, gaps, nfe", [(1, (0, 0), 1), (4, (0, 0), 3), (5, (0, 0), 5), (6, (0.001, 0.5), 5)]
)
def test_order_two_nfe_count(steps, gaps, nfe):
    # n = ceil(steps / 2) intervals, corrector skipped on the final interval (B4): 2n - 1 calls
    recorder = Recorder(gaussian_model)
    ucgm_sample(recorder, Z4, steps=steps, order=2, boundary_gaps=gaps)
    assert len(recorder.calls) == nfe


@pytest.mark.parametrize("style", ["few", "any", "mul"])
def test_order_two_corrector_target_times(style):
    # grid [1, 2/3, 1/3, 0] (steps 6, n = 3); calls: (g0) (g1 corrector) (g1) (g2 corrector) (g2)
    g = [1.0, 2 / 3, 1 / 3, 0.0]
    target = {"few": lambda i: 0.0, "any": lambda i: g[i + 1], "mul": lambda i: g[i]}[style]
    recorder = Recorder(gaussian_model)
    out = ucgm_sample(recorder, Z4, steps=6, order=2, style=style, boundary_gaps=(0, 0))
    expected = [value for i in (0, 1, 1, 2, 2) for value in (g[i], target(i))]
    assert [value for c in recorder.calls for value in c[:2]] == pytest.approx(expected, abs=1e-12)
    # the grid starts at t = 1: no division by gamma(1) = 0 (official: NaN)
    assert torch.isfinite(out).all()


def test_order_two_converges_quadratically():
    # mul style on the Gaussian, grid from t = 1 to t_end = 0.5 (gaps (0, 0.5)). The exact answer is
    # the denoiser at the exact ODE state: x_end = Phi_{1->0.5}(z), sample = x_end - 0.5 F(x_end,
    # 0.5, 0.5).
    t_end = torch.full((4,), 0.5, dtype=F64)
    x_end = gaussian_flow_map(Z4, 1.0, 0.5)
    exact = x_end - 0.5 * gaussian_model(x_end, t_end, t_end)
    errors = {}
    for order in (1, 2):
        # order 2: 3, 5, 9, 17 grid points -> 2, 4, 8, 16 ODE intervals
        for steps in (5, 9, 17, 33):
            out = ucgm_sample(
                gaussian_model, Z4, steps=steps, style="mul", order=order, boundary_gaps=(0, 0.5)
            )
            errors[order, steps] = (out - exact).abs().max().item()
    for steps in (5, 9, 17, 33):
        assert errors[2, steps] < errors[1, steps] / 3  # more accurate at equal steps
    for a, b in ((9, 17), (17, 33)):
        # halving h divides the error by ~4: second order
        assert 3.5 < errors[2, a] / errors[2, b] < 4.5
        assert 1.7 < errors[1, a] / errors[1, b] < 2.3  # order 1: by ~2


# ---------- smoke ----------


@pytest.mark.parametrize("style", ["few", "any", "mul"])
@pytest.mark.parametrize("ratio", [0.0, 1.0, "SDE"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_smoke_every_option(steps, order, ratio, style):
    z = torch.randn(3, 2, 4, generator=gen(0), dtype=torch.float32)
    out = ucgm_sample(
        TinyModel(8),
        z,
        steps=steps,
        order=order,
        stochastic_ratio=ratio,
        style=style,
        boundary_gaps=(0.001, 0.5),
        generator=gen(1),
    )
    assert out.shape == z.shape and out.dtype == z.dtype and torch.isfinite(out).all()


# ---------- noise ----------


@pytest.mark.parametrize("ratio, order", [(1.0, 1), ("SDE", 1), (0.5, 2)])
def test_per_sample_generators(ratio, order):
    model, z = TinyModel(6), torch.randn(4, 6, generator=gen(5), dtype=F64)
    options = dict(steps=4, order=order, stochastic_ratio=ratio, boundary_gaps=(0.001, 0.5))
    batch = ucgm_sample(model, z, generator=[gen(100 + i) for i in range(4)], **options)
    for i in range(4):
        single = ucgm_sample(model, z[i : i + 1], generator=gen(100 + i), **options)
        assert torch.allclose(batch[i : i + 1], single, atol=1e-12, rtol=0)
    # sample 0 does not depend on the other samples' seeds
    other = ucgm_sample(model, z, generator=[gen(100)] + [gen(7 + i) for i in range(3)], **options)
    assert torch.allclose(other[0], batch[0], atol=1e-12) and not torch.allclose(other[1], batch[1])


def test_zero_ratio_draws_no_noise():
    g = gen(11)
    before = g.get_state()
    ucgm_sample(TinyModel(4), torch.randn(2, 4, generator=gen(0), dtype=F64), steps=4, generator=g)
    assert torch.equal(g.get_state(), before)
    # the only step of a 1-step sampler lands on t = 0 (alpha(0) = 0): no noise is drawn either
    ucgm_sample(
        TinyModel(4),
        torch.randn(2, 4, generator=gen(0), dtype=F64),
        steps=1,
        stochastic_ratio=1.0,
        generator=g,
    )
    assert torch.equal(g.get_state(), before)


# ---------- presets and aliases ----------


def test_presets_match_official_configs():
    assert ucgm_time_grid(
        **{k: v for k, v in PRESETS["1nfe"].items() if k in ("steps", "boundary_gaps")}
    ).tolist() == [1.0, 0.0]
    assert PRESETS["2nfe"] == dict(
        steps=2,
        style="few",
        stochastic_ratio=1.0,
        kumaraswamy_abc=(1.0, 1.0, 1.0),
        boundary_gaps=(0.001, 0.6),
    )
    assert (
        PRESETS["4nfe"]["boundary_gaps"] == (0.001, 0.5)
        and PRESETS["4nfe"]["stochastic_ratio"] == 1.0
    )
    assert PRESETS["mul30"] == dict(
        steps=30,
        style="mul",
        stochastic_ratio=0.0,
        kumaraswamy_abc=(1.17, 0.8, 1.1),
        boundary_gaps=(0.001, 0.0),
    )
    for nfe in (1, 2, 4):
        assert preset_for_nfe(nfe) == PRESETS[f"{nfe}nfe"]
    other = preset_for_nfe(3)
    assert other == dict(
        steps=3,
        style="few",
        stochastic_ratio=1.0,
        kumaraswamy_abc=(1.0, 1.0, 1.0),
        boundary_gaps=(0.001, 0.5),
    )
    preset_for_nfe(2)["steps"] = 99  # a copy: the table is not mutated
    assert PRESETS["2nfe"]["steps"] == 2
    with pytest.raises(ValueError, match="nfe"):
        preset_for_nfe(0)


def test_official_argument_translation():
    published = dict(
        sampling_steps=4,
        sampling_style="few",
        stochast_ratio=1.0,
        extrapol_ratio=0.0,
        sampling_order=1,
        time_dist_ctrl=[1.0, 1.0, 1.0],
        rfba_gap_steps=[0.001, 0.5],
    )
    options = from_official_arguments(**published)
    assert set(options) == set(OFFICIAL_ARGUMENT_NAMES.values())
    assert options == dict(PRESETS["4nfe"], extrapolation_ratio=0.0, order=1)
    z = torch.randn(2, 3, generator=gen(0), dtype=F64)
    assert torch.equal(
        ucgm_sample(TinyModel(3), z, generator=gen(4), **options),
        ucgm_sample(TinyModel(3), z, generator=gen(4), **PRESETS["4nfe"]),
    )
    assert from_official_arguments(steps=2, rfba_gap_steps=[0.001, 0.6]) == dict(
        steps=2, boundary_gaps=(0.001, 0.6)
    )
    with pytest.raises(ValueError, match="cfg_scale"):
        from_official_arguments(cfg_scale=0.0)
    with pytest.raises(ValueError, match="twice"):
        from_official_arguments(sampling_steps=2, steps=2)


# ---------- errors ----------


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(steps=2, style="fast"), "unknown style"),
        (dict(steps=0), "steps must be an integer"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(steps=True), "steps must be an integer"),
        (dict(steps=2, stochastic_ratio=1.5), "stochastic_ratio"),
        (dict(steps=2, stochastic_ratio=-0.1), "stochastic_ratio"),
        (dict(steps=2, stochastic_ratio="sde"), "stochastic_ratio"),
        (dict(steps=2, stochastic_ratio=1.0), "needs fresh noise"),
        (dict(steps=2, stochastic_ratio=1.0, generator=[gen(0)] * 3), "list of 4 generators"),
        (dict(steps=2, generator="seed"), "list of 4 generators"),
        (dict(steps=2, order=3), "order"),
        (dict(steps=2, boundary_gaps=(0.6, 0.5)), "boundary_gaps"),
        (dict(steps=2, boundary_gaps=(0.001,)), "boundary_gaps"),
        (dict(steps=2, kumaraswamy_abc=(1, 0, 1)), "kumaraswamy_abc"),
        (dict(steps=2, extrapolation_ratio=-1), "extrapolation_ratio"),
        (dict(steps=2, y=torch.tensor([1, 2])), "one class label per sample"),
    ],
)
def test_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        ucgm_sample(gaussian_model, Z4, **options)


def test_clear_errors_for_bad_model_and_noise():
    with pytest.raises(ValueError, match="shaped like x_t"):
        ucgm_sample(lambda x, t, r, y: x[:2], Z4, steps=1)
    with pytest.raises(TypeError, match="floating-point tensor"):
        ucgm_sample(gaussian_model, [0.0, 1.0], steps=1)
