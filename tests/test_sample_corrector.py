"""Order-2 corrector: ours against the official update on Gaussian data (issue #11 item 9).

Ours (`ucgm_sample`, order 2): deterministic predictor x_pred = (1 - t_n) x_hat + t_n z_hat,
trapezoid on the data prediction x_hat <- (x_hat + x_hat(x_pred, t_n)) / 2,
z_hat <- (x - (1 - t_c) x_hat) / t_c, then the usual re-noising; skipped on the last step to t = 0.
Official (`sampling_loop`, `sampling_order == 2`), written here from its formula: the predictor is
the re-noised x_next; the corrector evaluates z' at (x_next, t_n) and replaces x_next by the DDIM
update x_next = x (1 - t_n) / (1 - t_c) + (t_n - (1 - t_n) t_c / (1 - t_c)) (z_hat + z') / 2, which
divides by gamma(t_c) = 1 - t_c (NaN at t_c = 1); it is skipped on the last step only when
boundary_gaps[1] != 0.
The exact answer comes from the closed-form flow map of N(mu, sigma^2) data (test_sampler), not from
either sampler. Time convention: see twinflow_min/transport.py.
"""

import torch

from test_sampler import Z4, gaussian_flow_map, gaussian_model
from twinflow_min.sampler import ucgm_sample, ucgm_time_grid
from twinflow_min.transport import invert

F64 = torch.float64


def official_order_two(model, z, grid, last_corrected):
    """The official order-2 loop, mul style, rho = 0, from its published update formula."""
    x = z.clone()
    n = len(grid) - 1
    for i in range(n):
        t_c, t_n = grid[i], grid[i + 1]
        t_vec = torch.full((z.shape[0],), t_c, dtype=F64)
        x_hat, z_hat = invert(x, model(x, t_vec, t_vec), t_vec)
        sample = x_hat
        x_next = (1 - t_n) * x_hat + t_n * z_hat
        if i < n - 1 or last_corrected:
            t_vec = torch.full((z.shape[0],), t_n, dtype=F64)
            _, z_pri = invert(x_next, model(x_next, t_vec, t_vec), t_vec)
            gamma_c = torch.tensor(1 - t_c, dtype=F64)  # a tensor, as officially: 0 / 0 = NaN
            x_next = x * (1 - t_n) / gamma_c + (t_n - (1 - t_n) * t_c / gamma_c) * 0.5 * (
                z_hat + z_pri
            )
        x = x_next
    return sample


def exact_sample(t_start, t_end):
    """Last x_hat of an exact ODE solve: x_end = Phi_{t_start -> t_end}(z), x_hat(x_end, t_end)."""
    x_end = gaussian_flow_map(Z4, t_start, t_end)
    t = torch.full((4,), t_end, dtype=F64)
    return x_end - t_end * gaussian_model(x_end, t, t)


def errors(intervals, gaps):
    grid = ucgm_time_grid(2 * intervals + 1, order=2, boundary_gaps=gaps).tolist()
    exact = exact_sample(grid[0], grid[-2])
    ours = ucgm_sample(
        gaussian_model, Z4, steps=2 * intervals + 1, style="mul", order=2, boundary_gaps=gaps
    )
    euler = ucgm_sample(gaussian_model, Z4, steps=intervals + 1, style="mul", boundary_gaps=gaps)
    official = official_order_two(gaussian_model, Z4, grid, last_corrected=False)
    return [(value - exact).abs().max().item() for value in (ours, official, euler)]


def test_both_correctors_converge_ours_is_more_accurate_from_0999():
    # grid 0.999 -> 0.5 in k intervals (then the last step to 0): halve the step, watch the error
    table = {k: errors(k + 1, (0.001, 0.5)) for k in (2, 4, 8, 16, 32, 64)}
    for coarse, fine in ((16, 32), (32, 64)):
        ours, official, euler = (a / b for a, b in zip(table[coarse], table[fine]))
        assert 3.5 < ours < 4.5  # error / 4 per halving: second order
        assert official > 3.5  # at least second order asymptotically
        assert 1.7 < euler < 2.3  # first order for reference
    for ours, official, euler in table.values():
        assert ours < official and ours < euler
    # the official update multiplies by 1 / gamma(0.999) = 1000 on the first step: worse than
    # Euler until 16 intervals
    assert table[2][1] > 10 * table[2][2] and table[16][1] < table[16][2]


def test_official_corrector_is_nan_from_t1_ours_is_finite():
    grid = ucgm_time_grid(5, order=2, boundary_gaps=(0.0, 0.5)).tolist()  # [1, 0.75, 0.5, 0]
    assert grid[0] == 1.0
    with torch.no_grad():
        official = official_order_two(gaussian_model, Z4, grid, last_corrected=False)
    assert torch.isnan(official).all()  # 0 / 0 from gamma(1) = 0 at the first correction
    ours = ucgm_sample(gaussian_model, Z4, steps=5, style="mul", order=2, boundary_gaps=(0.0, 0.5))
    assert torch.isfinite(ours).all()
    assert (ours - exact_sample(1.0, 0.5)).abs().max().item() < 0.01


def test_official_last_step_correction_is_wasted_with_zero_end_gap():
    # boundary_gaps[1] == 0: the official loop runs the corrector on the last step too (num_steps =
    # n + 1), an extra model call whose result is never returned (the answer is the last x_hat)
    grid = ucgm_time_grid(7, order=2, boundary_gaps=(0.001, 0.0)).tolist()
    calls = []

    def counting(x, t, r):
        calls.append(t[0].item())
        return gaussian_model(x, t, r)

    a = official_order_two(counting, Z4, grid, last_corrected=True)
    n_with = len(calls)
    b = official_order_two(gaussian_model, Z4, grid, last_corrected=False)
    assert n_with == 2 * (len(grid) - 1) and torch.equal(a, b)
