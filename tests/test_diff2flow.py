"""Tests for twinflow_min/diff2flow.py: the DDPM -> linear-flow bridge.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data. Every expected value is
derived in the test from the DDPM definitions (a plain-Python float64 product for the table, the
closed forms alpha_bar(t) = (1 - t)^2 / ((1 - t)^2 + t^2), x_ddpm = sqrt(a) x + sqrt(1 - a) z, v =
sqrt(a) z - sqrt(1 - a) x), never from the code under test.
"""

import bisect
import math

import pytest
import torch

from twinflow_min.diff2flow import (
    alpha_bar_of_flow_time,
    ddpm_alphas_cumprod,
    ddpm_timestep_to_flow_time,
    flow_time_to_ddpm,
    prediction_to_flow_velocity,
)

DTYPE = torch.float64


def python_linear_table(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """alpha_bar_k = prod_{j<=k} (1 - beta_j) with beta_j = beta_start + j (beta_end - beta_start) /
    (T - 1)."""
    table, running = [], 1.0
    for j in range(num_steps):
        running *= 1.0 - (beta_start + j * (beta_end - beta_start) / (num_steps - 1))
        table.append(running)
    return table


def flow_time_of_alpha_bar(a):
    """t = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)) (DDPM level -> our time, hand formula)."""
    return math.sqrt(1 - a) / (math.sqrt(a) + math.sqrt(1 - a))


@pytest.fixture(scope="module")
def table():
    return ddpm_alphas_cumprod()


def test_table_matches_python_product(table):
    expected = torch.tensor(python_linear_table(), dtype=DTYPE)
    assert table.dtype == DTYPE and table.shape == (1000,)
    torch.testing.assert_close(table, expected, rtol=1e-12, atol=0)
    # first entry by hand: 1 - beta_0 = 1 - 1e-4
    assert table[0].item() == pytest.approx(0.9999, abs=1e-15)


def test_scaled_linear_table_by_hand():
    # Stable Diffusion's schedule: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2
    got = ddpm_alphas_cumprod(1000, 0.00085, 0.012, schedule="scaled_linear")
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    running = 1.0
    for j in range(3):
        running *= 1 - (lo + j * (hi - lo) / 999) ** 2
    assert got[2].item() == pytest.approx(running, rel=1e-13)


def test_zero_time_is_timestep_zero_and_unit_scale(table):
    timestep, input_scale = flow_time_to_ddpm(torch.zeros(3, dtype=DTYPE), table)
    assert torch.equal(timestep, torch.zeros(3, dtype=DTYPE))
    assert torch.equal(input_scale, torch.ones(3, dtype=DTYPE))


def test_input_scale_closed_form(table):
    # input_scale = sqrt(a) + sqrt(1 - a) = 1 / sqrt((1 - t)^2 + t^2); at t = 0.5 that is sqrt(2)
    t = torch.tensor([0.5, 0.2], dtype=DTYPE)
    _, input_scale = flow_time_to_ddpm(t, table)
    a = [(1 - s) ** 2 / ((1 - s) ** 2 + s**2) for s in (0.5, 0.2)]
    expected = torch.tensor([math.sqrt(x) + math.sqrt(1 - x) for x in a], dtype=DTYPE)
    torch.testing.assert_close(input_scale, expected, rtol=1e-14, atol=0)
    assert input_scale[0].item() == pytest.approx(math.sqrt(2), abs=1e-14)


def test_integer_steps_map_back_exactly(table):
    # t_k computed by hand from the python table must land on index k
    python_table = python_linear_table()
    steps = [0, 1, 10, 250, 500, 998, 999]
    t = torch.tensor([flow_time_of_alpha_bar(python_table[k]) for k in steps], dtype=DTYPE)
    timestep, _ = flow_time_to_ddpm(t, table)
    torch.testing.assert_close(timestep, torch.tensor(steps, dtype=DTYPE), rtol=0, atol=1e-8)


def test_fractional_step_interpolates_in_log_alpha_bar(table):
    # t whose log alpha_bar sits 30 % of the way from index 400 to 401 -> timestep 400.3 (documented
    # rule)
    python_table = python_linear_table()
    log_a = 0.7 * math.log(python_table[400]) + 0.3 * math.log(python_table[401])
    t = torch.tensor([flow_time_of_alpha_bar(math.exp(log_a))], dtype=DTYPE)
    timestep, _ = flow_time_to_ddpm(t, table)
    assert timestep.item() == pytest.approx(400.3, abs=1e-8)


def test_round_trip_of_times(table):
    t = torch.linspace(0.02, 0.99, 97, dtype=DTYPE)
    timestep, _ = flow_time_to_ddpm(t, table)
    torch.testing.assert_close(ddpm_timestep_to_flow_time(timestep, table), t, rtol=0, atol=1e-10)
    steps = torch.linspace(0, 999, 53, dtype=DTYPE)
    back, _ = flow_time_to_ddpm(ddpm_timestep_to_flow_time(steps, table), table)
    torch.testing.assert_close(back, steps, rtol=0, atol=1e-6)


def test_monotone_and_clamped_outside_the_table(table):
    t = torch.linspace(0, 1, 2001, dtype=DTYPE)
    timestep, _ = flow_time_to_ddpm(t, table)
    assert bool((timestep[1:] >= timestep[:-1]).all())
    # range ends by hand: t_min = t(alpha_bar_0), t_max = t(alpha_bar_999)
    python_table = python_linear_table()
    t_min, t_max = flow_time_of_alpha_bar(python_table[0]), flow_time_of_alpha_bar(python_table[-1])
    inside = (t > t_min) & (t < t_max)
    assert bool(
        (timestep[1:][inside[1:] & inside[:-1]] > timestep[:-1][inside[1:] & inside[:-1]]).all()
    )
    assert bool((timestep[t <= t_min] == 0).all()) and bool((timestep[t >= t_max] == 999).all())
    assert timestep[-1].item() == 999  # t = 1 (pure noise) is fed the noisiest trained index


@pytest.mark.parametrize("t_value", [0.0, 0.05, 0.3, 0.5, 0.8, 0.99])
def test_true_epsilon_gives_exact_flow_velocity(table, t_value):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=generator, dtype=DTYPE)
    z = torch.randn(3, 2, 4, 4, generator=generator, dtype=DTYPE)
    t = torch.full((3,), t_value, dtype=DTYPE)
    x_t = (1 - t_value) * x + t_value * z
    _, input_scale = flow_time_to_ddpm(t, table)
    x_ddpm = input_scale.view(-1, 1, 1, 1) * x_t
    a = (1 - t_value) ** 2 / ((1 - t_value) ** 2 + t_value**2)
    # the rescaled input is exactly the DDPM marginal sample
    torch.testing.assert_close(
        x_ddpm, math.sqrt(a) * x + math.sqrt(1 - a) * z, rtol=1e-13, atol=1e-13
    )
    velocity = prediction_to_flow_velocity(z, x_ddpm, t, table, "epsilon")
    torch.testing.assert_close(velocity, z - x, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("t_value", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_true_v_gives_exact_flow_velocity(table, t_value):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 2, generator=generator, dtype=DTYPE)
    z = torch.randn(2, 3, 2, 2, generator=generator, dtype=DTYPE)
    t = torch.full((2,), t_value, dtype=DTYPE)
    a = (1 - t_value) ** 2 / ((1 - t_value) ** 2 + t_value**2)
    x_ddpm = math.sqrt(a) * x + math.sqrt(1 - a) * z
    v = math.sqrt(a) * z - math.sqrt(1 - a) * x  # v-prediction target (Salimans & Ho 2022)
    velocity = prediction_to_flow_velocity(v, x_ddpm, t, table, "v_prediction")
    torch.testing.assert_close(velocity, z - x, rtol=1e-12, atol=1e-12)


def test_epsilon_at_pure_noise_is_finite_and_uses_the_last_level(table):
    # t = 1: alpha_bar(1) = 0 is below the table, so the last level a_999 is used (documented floor)
    a_last = python_linear_table()[-1]
    epsilon = torch.tensor([[0.3, -1.2]], dtype=DTYPE)
    x_ddpm = torch.tensor([[0.5, 0.25]], dtype=DTYPE)
    velocity = prediction_to_flow_velocity(
        epsilon, x_ddpm, torch.ones(1, dtype=DTYPE), table, "epsilon"
    )
    x_hat = (x_ddpm - math.sqrt(1 - a_last) * epsilon) / math.sqrt(a_last)
    torch.testing.assert_close(velocity, epsilon - x_hat, rtol=1e-12, atol=1e-12)


def test_alpha_bar_closed_form_golden():
    # t = 0.25: (0.75^2) / (0.75^2 + 0.25^2) = 0.5625 / 0.625 = 0.9
    got = alpha_bar_of_flow_time(torch.tensor([0.25, 0.0, 1.0], dtype=DTYPE))
    torch.testing.assert_close(
        got, torch.tensor([0.9, 1.0, 0.0], dtype=DTYPE), rtol=1e-15, atol=1e-15
    )


def test_float32_stays_float32(table):
    t = torch.tensor([0.3, 0.7])
    timestep, input_scale = flow_time_to_ddpm(t, table)
    assert timestep.dtype == torch.float32 and input_scale.dtype == torch.float32
    x_ddpm = torch.ones(2, 4)
    assert prediction_to_flow_velocity(x_ddpm, x_ddpm, t, table, "epsilon").dtype == torch.float32


def hand_ddpm_index(t: float, log_table: list[float]) -> float:
    """Fractional index k with -log alpha_bar_k = -log alpha_bar(t), linear between table entries,
    in plain-Python float64 (the same rule as the module docstring, written out by hand)."""
    query = -(math.log((1 - t) ** 2) - math.log((1 - t) ** 2 + t * t))
    query = min(max(query, log_table[0]), log_table[-1])
    upper = min(max(bisect.bisect_left(log_table, query), 1), len(log_table) - 1)
    return upper - 1 + (query - log_table[upper - 1]) / (log_table[upper] - log_table[upper - 1])


def test_float32_time_gets_the_float64_step(table):
    """Issue 11 item 4: the index of a float32 t is the float64 index of that t, rounded once.

    Taking the log of the table after casting it to float32 moved it by up to 4.8e-4 of a step near
    t = 0 (index ~1, where float32 rounds to 1.2e-7); the bound here is a few float32 roundings.
    """
    log_table = [-math.log(a) for a in python_linear_table()]
    for low, high in ((0.0, 0.02), (0.02, 0.99)):
        t = torch.linspace(low, high, 2001, dtype=torch.float32)
        got = flow_time_to_ddpm(t, table)[0]
        assert got.dtype == torch.float32
        for value, step in zip(t.tolist(), got.tolist()):
            expected = hand_ddpm_index(value, log_table)
            assert abs(step - expected) <= 1e-6 + 2.4e-7 * expected, (value, step, expected)


def test_errors(table):
    with pytest.raises(ValueError, match="t.abs"):
        flow_time_to_ddpm(torch.tensor([-0.5]), table)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        flow_time_to_ddpm(torch.tensor([1.5]), table)
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_to_flow_velocity(
            torch.ones(1, 2), torch.ones(1, 2), torch.ones(1), table, "sample"
        )
    with pytest.raises(ValueError, match="learned-sigma"):
        prediction_to_flow_velocity(
            torch.ones(1, 4), torch.ones(1, 2), torch.ones(1), table, "epsilon"
        )
    with pytest.raises(ValueError, match="decrease"):
        flow_time_to_ddpm(torch.ones(1), table.flip(0))
    with pytest.raises(ValueError, match="schedule"):
        ddpm_alphas_cumprod(schedule="cosine")
    with pytest.raises(ValueError, match="beta_start"):
        ddpm_alphas_cumprod(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="timestep must lie"):
        ddpm_timestep_to_flow_time(torch.tensor([1000.0]), table)
