"""Bridge from a discrete DDPM (variance-preserving) diffusion model to our linear flow.

Lets TwinFlow start from an epsilon- or v-prediction checkpoint such as the original DiT-XL/2
(Peebles & Xie 2023: linear betas 1e-4..0.02, 1000 steps, epsilon prediction, learned sigma).
TwinFlow (arXiv:2512.05150) Sec. 2 defines everything on the linear path; this file only rewrites a
DDPM network's input and output in that path. Mirrors the facts of `facebookresearch/DiT`
`diffusion/gaussian_diffusion.py::get_beta_schedule("linear")`, `GaussianDiffusion.__init__`
(`alphas_cumprod`) and `_predict_xstart_from_eps`; the v-prediction algebra is Salimans & Ho 2022,
Sec. 4.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake
branch (the functions here take |t|; the caller keeps the sign for its own embeddings).

The two paths are the same up to a per-sample scale. DDPM at index k has
    x_ddpm = sqrt(alpha_bar) * x + sqrt(1 - alpha_bar) * z,
and dividing by (sqrt(alpha_bar) + sqrt(1 - alpha_bar)) gives our x_t with
    t = sqrt(1 - alpha_bar) / (sqrt(alpha_bar) + sqrt(1 - alpha_bar))
    <=> alpha_bar(t) = (1 - t)^2 / ((1 - t)^2 + t^2),
so x_ddpm = input_scale * x_t with input_scale = 1 / sqrt((1 - t)^2 + t^2).

Range of the table. Index 0 already carries noise (alpha_bar_0 = 1 - beta_0 = 0.9999) and index T -
1 still carries signal (alpha_bar_999 = 4.04e-5 for the DiT schedule), i.e. the table covers t in
about [0.0100, 0.9937]. Outside it the network index is clamped: t below the range is fed index 0
(the network's cleanest level), t above it index T - 1 (its noisiest). For epsilon prediction the
signal level used in the output algebra is floored at the table's last one for the same t, which
keeps F finite at t = 1 and equals what DDPM's own last step does; inside the range every conversion
is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from twinflow_min.transport import check_time, expand_time

# DDPM defaults of Ho et al. 2020 / DiT `create_diffusion(noise_schedule="linear",
# diffusion_steps=1000)`.
DDPM_NUM_STEPS = 1000
DDPM_BETA_START = 1e-4
DDPM_BETA_END = 0.02
SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def ddpm_alphas_cumprod(
    num_steps: int = DDPM_NUM_STEPS,
    beta_start: float = DDPM_BETA_START,
    beta_end: float = DDPM_BETA_END,
    schedule: str = "linear",
) -> Tensor:
    """alpha_bar_k = prod_{j <= k} (1 - beta_j), float64 of shape (num_steps,).

    Mirrors DiT `gaussian_diffusion.py::get_beta_schedule` ("linear": betas evenly spaced;
    "scaled_linear", Stable Diffusion's schedule and DiT's "quad": sqrt(betas) evenly spaced) and
    `np.cumprod(1 - betas)` in `GaussianDiffusion.__init__`. DiT's named "linear" schedule rescales
    both ends by 1000 / num_steps; pass the rescaled values yourself if you use another step count.
    """
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)  # (T,)
    elif schedule == "scaled_linear":
        betas = (
            torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
        )  # (T,)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    return torch.cumprod(1 - betas, dim=0)  # (T,)


def _check_table(alphas_cumprod: Tensor) -> None:
    """Raise unless `alphas_cumprod` is a 1-D strictly decreasing table inside (0, 1)."""
    if (
        not isinstance(alphas_cumprod, Tensor)
        or alphas_cumprod.dim() != 1
        or alphas_cumprod.numel() < 2
    ):
        raise ValueError(
            "alphas_cumprod must be a 1-D tensor with at least 2 entries; "
            "build it with ddpm_alphas_cumprod()"
        )
    if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()) or not bool(
        (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()
    ):
        raise ValueError(
            "alphas_cumprod must lie in (0, 1) and decrease strictly with the step index"
        )


def _check_t_abs(t_abs: Tensor) -> Tensor:
    """Raise unless t_abs is a (B,) tensor in [0, 1]."""
    check_time(t_abs, "t_abs")
    if t_abs.numel() and bool((t_abs < 0).any()):
        raise ValueError(
            "t_abs must be non-negative: pass t.abs() (the sign of t only selects the twin branch)"
        )
    return t_abs


def alpha_bar_of_flow_time(t_abs: Tensor) -> Tensor:
    """alpha_bar(t) = (1 - t)^2 / ((1 - t)^2 + t^2), the DDPM level whose rescaled x_ddpm equals our
    x_t."""
    t_abs = _check_t_abs(t_abs)
    return (1 - t_abs) ** 2 / ((1 - t_abs) ** 2 + t_abs**2)  # (B,)


def _log_alpha_bar_of_flow_time(t_abs: Tensor) -> Tensor:
    """log alpha_bar(t) written as a difference of logs (no 0 / 0 near t = 1; -inf at t = 1)."""
    return torch.log((1 - t_abs) ** 2) - torch.log((1 - t_abs) ** 2 + t_abs**2)  # (B,)


def flow_time_to_ddpm(t_abs: Tensor, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """Map our flow time |t| to the DDPM network's (continuous timestep index, input scale).

    timestep: the fractional index k with alpha_bar_k = alpha_bar(t), by piecewise-linear
    interpolation of the table in log(alpha_bar) (monotone, smooth where alpha_bar is tiny), clamped
    to [0, T - 1] (see the module docstring for what clamping means). input_scale = sqrt(alpha_bar)
    + sqrt(1 - alpha_bar) = 1 / sqrt((1 - t)^2 + t^2): feed the network x_ddpm = input_scale * x_t.
    Both are (B,) in t's dtype. The caller expands input_scale to x_t's shape. Inverse of
    `ddpm_timestep_to_flow_time` inside the table.
    """
    t_abs = _check_t_abs(t_abs)
    _check_table(alphas_cumprod)
    return _ddpm_index(t_abs, alphas_cumprod), ddpm_input_scale(t_abs)


def _ddpm_index(t_abs: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Fractional DDPM index of |t| (B,) in t's dtype, computed in float64 whatever t's dtype.

    In float32 the differences of -log(alpha_bar) near index 0 (about 1e-4 apart) lose about 4
    digits to cancellation, which moved the index of a float32 t by up to 5e-4 of a step.
    """
    wide = torch.float64
    t_wide = t_abs.to(wide)  # (B,)
    # -log alpha_bar increases with the index, so searchsorted applies to it directly
    table = -torch.log(alphas_cumprod.to(device=t_abs.device, dtype=wide))  # (T,)
    query = (-_log_alpha_bar_of_flow_time(t_wide)).clamp(table[0], table[-1])  # (B,)
    upper = torch.searchsorted(table, query).clamp(1, table.numel() - 1)  # (B,)
    lower = upper - 1  # (B,)
    fraction = (query - table[lower]) / (table[upper] - table[lower])  # (B,)
    timestep = (lower.to(wide) + fraction).clamp(0, table.numel() - 1)  # (B,)
    return timestep.to(t_abs.dtype)  # (B,)


def ddpm_input_scale(t_abs: Tensor) -> Tensor:
    """input_scale = 1 / sqrt((1 - t)^2 + t^2), (B,) in t's dtype: x_ddpm = input_scale * x_t.

    See the module docstring (docs/math.md#diffusion-bridge).
    """
    return torch.rsqrt((1 - t_abs) ** 2 + t_abs**2)  # (B,)


def ddpm_timestep_to_flow_time(timestep: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Flow time |t| of a (fractional) DDPM index, interpolating log(alpha_bar) as
    `flow_time_to_ddpm` does.

    t = sqrt(1 - alpha_bar) / (sqrt(alpha_bar) + sqrt(1 - alpha_bar)). Returns (B,) in timestep's
    dtype (integer indices give float64).
    """
    _check_table(alphas_cumprod)
    if not isinstance(timestep, Tensor) or timestep.dim() != 1:
        raise ValueError("timestep must be a 1-D tensor of shape (B,)")
    num_steps = alphas_cumprod.numel()
    if timestep.numel() and bool(((timestep < 0) | (timestep > num_steps - 1)).any()):
        raise ValueError(
            f"timestep must lie in [0, {num_steps - 1}] for a table of {num_steps} steps"
        )
    dtype = timestep.dtype if timestep.is_floating_point() else torch.float64
    timestep = timestep.to(dtype)
    log_table = torch.log(alphas_cumprod.to(device=timestep.device, dtype=dtype))  # (T,)
    lower = timestep.floor().long().clamp(0, num_steps - 2)  # (B,)
    fraction = timestep - lower.to(dtype)  # (B,)
    alpha_bar = torch.exp(torch.lerp(log_table[lower], log_table[lower + 1], fraction))  # (B,)
    # t = sqrt(1 - alpha_bar) / (sqrt(alpha_bar) + sqrt(1 - alpha_bar))   (module docstring)
    return (1 - alpha_bar).sqrt() / (alpha_bar.sqrt() + (1 - alpha_bar).sqrt())  # (B,)


def prediction_to_flow_velocity(
    prediction: Tensor, x_ddpm: Tensor, t_abs: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Tensor:
    """Turn a DDPM network output at x_ddpm = input_scale * x_t into our velocity F = z_hat - x_hat.

    alpha_bar comes from the closed form alpha_bar(t) (not the table), so the algebra is exact:
      epsilon:      x_hat = (x_ddpm - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)   (DiT
          `_predict_xstart_from_eps`)
                    F = eps - x_hat
      v_prediction: x_hat = sqrt(alpha_bar) x_ddpm - sqrt(1 - alpha_bar) v          (Salimans & Ho
          2022, Sec. 4)
                    z_hat = sqrt(1 - alpha_bar) x_ddpm + sqrt(alpha_bar) v,  F = z_hat - x_hat
    For epsilon, alpha_bar below the table's last entry (t past the noisy end) is raised to that
    entry, the level the network was trained on, which keeps F finite at t = 1. A learned-sigma
    output must be sliced to its first C channels by the caller. Works in the prediction's dtype.
    """
    t_abs = _check_t_abs(t_abs)
    _check_table(alphas_cumprod)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}"
        )
    if prediction.shape != x_ddpm.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and x_ddpm {tuple(x_ddpm.shape)} must have the "
            "same "
            f"shape; slice a learned-sigma output to its first C channels first"
        )
    alpha_bar = alpha_bar_of_flow_time(t_abs).to(prediction.dtype)  # (B,)
    if prediction_type == "epsilon":
        # floor at the table's noisiest trained level (module docstring)
        alpha_bar_min = alphas_cumprod.min().to(device=alpha_bar.device, dtype=alpha_bar.dtype)
        alpha_bar = torch.where(alpha_bar < alpha_bar_min, alpha_bar_min, alpha_bar)  # (B,)
    sqrt_alpha_bar = expand_time(alpha_bar.sqrt(), prediction)  # (B, 1, ..., 1)
    sqrt_one_minus_alpha_bar = expand_time((1 - alpha_bar).sqrt(), prediction)  # (B, 1, ..., 1)
    if prediction_type == "epsilon":
        epsilon = prediction
        # x_hat = (x_ddpm - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
        x_hat = (x_ddpm - sqrt_one_minus_alpha_bar * epsilon) / sqrt_alpha_bar  # (B, ...)
        z_hat = epsilon
    else:
        v = prediction
        # x_hat = sqrt(alpha_bar) x_ddpm - sqrt(1 - alpha_bar) v ; z_hat = sqrt(1 - alpha_bar)
        # x_ddpm + sqrt(alpha_bar) v
        x_hat = sqrt_alpha_bar * x_ddpm - sqrt_one_minus_alpha_bar * v  # (B, ...)
        z_hat = sqrt_one_minus_alpha_bar * x_ddpm + sqrt_alpha_bar * v  # (B, ...)
    # F = z - x  (our velocity, transport.velocity_target)
    return z_hat - x_hat  # (B, ...)
