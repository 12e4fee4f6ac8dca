"""Tests for twinflow_min/transport.py: interpolation, velocity target, inversion, any-step jump,
time checks.

Time convention: see twinflow_min/transport.py. All values are float64 hand computations of
docs/math.md#time-convention and #inversion (golden case G1).
"""

import pytest
import torch

from twinflow_min.transport import (
    check_time,
    expand_time,
    interpolate,
    invert,
    jump,
    velocity_target,
)

F64 = torch.float64


@pytest.mark.parametrize("t_value", [0.4, -0.4])
def test_g1_inversion_golden(t_value):
    # G1: x_t = 1, F = 0.5, t = +-0.4 -> x_hat = 1 - 0.4 * 0.5 = 0.8, z_hat = 1 + 0.6 * 0.5 = 1.3
    # (sign ignored)
    x_t = torch.ones(1, 1, dtype=F64)
    x_hat, z_hat = invert(
        x_t, torch.full((1, 1), 0.5, dtype=F64), torch.tensor([t_value], dtype=F64)
    )
    assert x_hat.item() == pytest.approx(0.8, abs=1e-12)
    assert z_hat.item() == pytest.approx(1.3, abs=1e-12)


def test_interpolate_and_velocity_closed_form():
    # x_t = (1 - |t|) x + |t| z for each row; v = z - x (hand computed)
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=F64)
    z = torch.tensor([[0.0, 2.0], [-1.5, 4.0], [1.0, 1.0]], dtype=F64)
    t = torch.tensor([0.25, -0.5, 1.0], dtype=F64)
    expected = torch.tensor([[0.75, -1.0], [-0.5, 2.0], [1.0, 1.0]], dtype=F64)
    torch.testing.assert_close(interpolate(x, z, t), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        velocity_target(x, z),
        torch.tensor([[-1.0, 4.0], [-2.0, 4.0], [-2.0, 0.0]], dtype=F64),
        rtol=0,
        atol=0,
    )


def test_round_trip_recovers_data_and_noise_for_any_shape():
    # with F = z - x exactly, invert(x_t, F, t) returns (x, z) up to float64 rounding
    # (docs/math.md#inversion)
    x = torch.linspace(-2, 2, 2 * 3 * 4, dtype=F64).view(2, 3, 4)
    z = torch.cos(torch.arange(24, dtype=F64)).view(2, 3, 4)
    t = torch.tensor([0.3, -0.9], dtype=F64)
    x_hat, z_hat = invert(interpolate(x, z, t), velocity_target(x, z), t)
    torch.testing.assert_close(x_hat, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(z_hat, z, rtol=0, atol=1e-14)


def test_jump_identity_matches_reinterpolation():
    # any-step jump: alpha(s) z_hat + gamma(s) x_hat = x_t - (t - s) F  (docs/math.md#inversion,
    # exact algebra)
    x_t = torch.tensor([[0.7, -0.2]], dtype=F64)
    F = torch.tensor([[1.5, 0.25]], dtype=F64)
    t, s = torch.tensor([0.8], dtype=F64), torch.tensor([0.3], dtype=F64)
    x_hat, z_hat = invert(x_t, F, t)
    expected = 0.3 * z_hat + 0.7 * x_hat  # = x_t - 0.5 F = [-0.05, -0.325]
    torch.testing.assert_close(jump(x_t, F, t, s), expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        expected, torch.tensor([[-0.05, -0.325]], dtype=F64), rtol=0, atol=1e-14
    )


def test_expand_time_broadcasts_and_checks_batch():
    like = torch.zeros(3, 2, 5)
    assert expand_time(torch.ones(3), like).shape == (3, 1, 1)
    with pytest.raises(ValueError, match="3 samples"):
        expand_time(torch.ones(2), like)


@pytest.mark.parametrize(
    "bad, message",
    [(torch.ones(2, 1), "1-D"), (torch.tensor([0.5, 1.5]), r"\[-1, 1\]"), (0.5, "1-D")],
)
def test_check_time_rejects_bad_times(bad, message):
    with pytest.raises(ValueError, match=message):
        check_time(bad)
