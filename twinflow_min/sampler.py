"""The UCGM sampler used by TwinFlow, its time grid, presets, and a step-by-step scheduler.

Paper: TwinFlow (arXiv:2512.05150) samples with the UCGM sampler (UCGM, arXiv:2505.07447) at
1/2/4 NFE. Faithful to the official `sampling_loop` and `kumaraswamy_transform` of
`src/methodes/twinflow/twinflow.py` (the MNIST tutorial and `unified_sampler.py` carry the same
loop), see docs/math.md#ucgm-sampler, with these official bugs fixed
(docs/math.md#official-differences):
  B3  the order-2 corrector passes a target time to the model (the official call crashes
      without it);
  B4  the order-2 update is our own trapezoid rule on x_hat, skipped on the final step to t = 0;
      it never divides by gamma(1) = 1 - 1 = 0 (the official update gives NaN when the grid
      starts at t = 1), see `ucgm_sample`;
  B5  stochastic_ratio="SDE" is recomputed at every step (official: the step-0 value is reused).
Kept on purpose (B7): the exact float test `boundary_gaps[1] == 0` that switches between two grid
rules; the published configs depend on it (see `ucgm_time_grid`).

Time convention: see twinflow_min/transport.py (t = 1 noise, t = 0 data; the sampler walks the real
branch from t ~ 1 down to 0). The model F(x_t, t, t_tgt, y) is the average velocity from t to t_tgt;
(x_hat, z_hat) come from `transport.invert`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from twinflow_min.checks import INT64_MAX, is_count, is_real
from twinflow_min.transport import invert

STYLES = ("few", "any", "mul")  # target time t_tgt = 0 | t_next | t_cur (official `sampling_style`)
SDE = "SDE"  # stochastic_ratio that follows the SDE noise level per step (official "SDE")
# Official `buffer_freq = 1` and `if i > buffer_freq`: extrapolation starts at the third step.
EXTRAPOLATION_FIRST_STEP = 2
TIMESTEP_TOLERANCE = 1e-6  # a scheduler timestep matches a grid time within this (units of t)
MAX_STEPS = 100_000  # more grid points than any sampler uses; a typo cannot allocate 2^60 floats

# Published argument names (official `sampling_loop`) -> the readable names used here.
OFFICIAL_ARGUMENT_NAMES = {
    "sampling_steps": "steps",
    "sampling_style": "style",
    "stochast_ratio": "stochastic_ratio",
    "extrapol_ratio": "extrapolation_ratio",
    "sampling_order": "order",
    "time_dist_ctrl": "kumaraswamy_abc",
    "rfba_gap_steps": "boundary_gaps",
}

# The one table of named sampler settings (docs/math.md#sampler-presets). Sources: MNIST
# tutorial `main.py` (1 NFE), `inference.py` (2 and 4 NFE), the training yaml configs
# `src/configs/*` (few-step 2 NFE with gaps (0.001, 0.7), any-step 4 and 8, multi-step 30).
# UNIFORM = no Kumaraswamy warp.
UNIFORM = (1.0, 1.0, 1.0)
# fmt: off
PRESETS = {
    "1nfe": dict(steps=1, style="few", stochastic_ratio=0.0, kumaraswamy_abc=UNIFORM,
                 boundary_gaps=(0.0, 0.0)),
    "2nfe": dict(steps=2, style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM,
                 boundary_gaps=(0.001, 0.6)),
    "4nfe": dict(steps=4, style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM,
                 boundary_gaps=(0.001, 0.5)),
    "2nfe-train": dict(steps=2, style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM,
                       boundary_gaps=(0.001, 0.7)),
    "any4": dict(steps=4, style="any", stochastic_ratio=0.0, kumaraswamy_abc=UNIFORM,
                 boundary_gaps=(0.001, 0.5)),
    "any8": dict(steps=8, style="any", stochastic_ratio=0.0, kumaraswamy_abc=UNIFORM,
                 boundary_gaps=(0.001, 0.5)),
    "mul30": dict(steps=30, style="mul", stochastic_ratio=0.0, kumaraswamy_abc=(1.17, 0.8, 1.1),
                  boundary_gaps=(0.001, 0.0)),
}
# fmt: on
PRESET_SOURCES = {
    "1nfe": "official MNIST tutorial main.py",
    "2nfe": "official inference.py, 2 NFE",
    "4nfe": "official inference.py, 4 NFE",
    "2nfe-train": "training yaml configs, few-step sampler",
    "any4": "training yaml configs, any-step sampler",
    "any8": "training yaml configs, any-step sampler, 8 steps",
    "mul30": "training yaml configs, multi-step sampler",
}
# Few-step defaults for NFE counts without an official config: re-noise fully, 4-NFE boundary gaps.
OTHER_NFE_DEFAULTS = dict(
    style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM, boundary_gaps=(0.001, 0.5)
)
# Every `ucgm_sample` knob a user can set, with its default when no preset names it
# (sample.py builds one flag per entry from this table).
KNOB_DEFAULTS = dict(
    steps=1,
    style="few",
    order=1,
    stochastic_ratio=0.0,
    extrapolation_ratio=0.0,
    kumaraswamy_abc=UNIFORM,
    boundary_gaps=(0.0, 0.0),
    cfg_scale=0.0,
    cfg_interval=(0.0, 1.0),
)


# ---------- Argument checks (the door: every public entry calls these once) ----------


def _check_int(value, name: str, minimum: int = 1, maximum: int = INT64_MAX) -> int:
    if not is_count(value, minimum=minimum) or value > maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def _check_style(style) -> str:
    if style not in STYLES:
        raise ValueError(
            f"unknown style {style!r}; use one of {STYLES} (few: t_tgt = 0, "
            f"any: t_tgt = t_next, mul: t_tgt = t_cur)"
        )
    return style


def _check_ratio(stochastic_ratio):
    if stochastic_ratio == SDE:
        return SDE
    if not is_real(stochastic_ratio) or not 0.0 <= stochastic_ratio <= 1.0:
        raise ValueError(
            f"stochastic_ratio must be a number in [0, 1] or {SDE!r}, got {stochastic_ratio!r}"
        )
    return float(stochastic_ratio)


def _check_extrapolation(extrapolation_ratio) -> float:
    if not is_real(extrapolation_ratio) or extrapolation_ratio < 0:
        raise ValueError(f"extrapolation_ratio must be a number >= 0, got {extrapolation_ratio!r}")
    return float(extrapolation_ratio)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else ()


def _check_grid_options(order, kumaraswamy_abc, boundary_gaps) -> tuple[tuple, tuple]:
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 1 (UCGM step) or 2 (Heun-type corrector), got {order!r}")
    abc, gaps = _pair(kumaraswamy_abc), _pair(boundary_gaps)
    if len(abc) != 3 or not all(is_real(v) and v > 0 for v in abc):
        raise ValueError(
            f"kumaraswamy_abc must be three positive numbers (a, b, c), got {kumaraswamy_abc!r}"
        )
    gaps_ok = len(gaps) == 2 and all(is_real(v) and 0 <= v < 1 for v in gaps)
    if not gaps_ok or gaps[0] + gaps[1] >= 1:
        raise ValueError(
            f"boundary_gaps must be two numbers (start, end) in [0, 1) with "
            f"start + end < 1, got {boundary_gaps!r}; the official 4-NFE config uses "
            f"(0.001, 0.5)"
        )
    return tuple(float(v) for v in abc), tuple(float(v) for v in gaps)


def _check_guidance(cfg_scale, cfg_interval) -> tuple[float, tuple[float, float]]:
    if not is_real(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a number >= 0 (0 = no guidance), got {cfg_scale!r}")
    window = _pair(cfg_interval)
    if len(window) != 2 or not all(is_real(v) and 0 <= v <= 1 for v in window):
        raise ValueError(
            f"cfg_interval must be two times (low, high) in [0, 1], got {cfg_interval!r}"
        )
    if window[0] > window[1]:
        raise ValueError(f"cfg_interval must have low <= high, got {cfg_interval!r}")
    return float(cfg_scale), (float(window[0]), float(window[1]))


def _check_generator(generator, batch: int, needed: bool) -> None:
    if generator is None and needed:
        raise ValueError(
            "stochastic_ratio > 0 needs fresh noise: pass "
            "generator=torch.Generator().manual_seed(s) or a list with one generator "
            "per sample"
        )
    if generator is None or isinstance(generator, torch.Generator):
        return
    is_list = isinstance(generator, (list, tuple))
    if (
        not is_list
        or len(generator) != batch
        or not all(isinstance(g, torch.Generator) for g in generator)
    ):
        count = len(generator) if is_list else type(generator).__name__
        raise ValueError(
            f"generator must be a torch.Generator or a list of {batch} generators "
            f"(one per sample), got {count}"
        )


# ---------- Time grid (docs/math.md#ucgm-sampler, steps 1-2) ----------


def ucgm_time_grid(
    steps: int, *, order: int = 1, kumaraswamy_abc=(1, 1, 1), boundary_gaps=(0, 0)
) -> Tensor:
    """The decreasing float64 grid t_0 > ... > t_n = 0 (official `sampling_loop`, Kumaraswamy).

    n = steps for order 1 and n = ceil(steps / 2) for order 2. With boundary_gaps = (g0, g1):
      u = linspace(g0, 1, n + 1)[:-1]   if g1 == 0 exactly,   else   u = linspace(g0, 1 - g1, n);
      t_i = 1 - K(u_i) with the Kumaraswamy warp K(u) = (1 - (1 - u^a)^b)^c, then t_n = 0.
    Known quirk kept on purpose (B7, docs/math.md#official-differences): the two rules meet
    discontinuously; g1 = 0 gives evenly spaced points down to ~1/n, while any tiny g1 > 0 puts
    the last point at ~g1. The published multi-step config relies on the g1 = 0 rule.
    Returns shape (n + 1,).
    Raises ValueError for steps outside [1, MAX_STEPS], order not 1/2, or bad abc / gaps.
    """
    n = _check_int(steps, "steps", maximum=MAX_STEPS)
    abc, (gap_start, gap_end) = _check_grid_options(order, kumaraswamy_abc, boundary_gaps)
    n = grid_intervals(n, order)
    # official: `num_steps + 1 if rfba_gap_steps[1] == 0.0`, then drop the last point
    if gap_end == 0.0:
        u = torch.linspace(gap_start, 1.0, n + 1, dtype=torch.float64)[:-1]  # (n,)
    else:
        u = torch.linspace(gap_start, 1.0 - gap_end, n, dtype=torch.float64)  # (n,)
    a, b, c = abc
    warped = (1 - (1 - u**a) ** b) ** c  # (n,) Kumaraswamy warp K(u)
    return torch.cat([1 - warped, torch.zeros(1, dtype=torch.float64)])  # (n + 1,)


# ---------- One UCGM step, shared by `ucgm_sample` and `TwinFlowScheduler` ----------


def step_stochastic_ratio(stochastic_ratio, t_cur: float, t_next: float) -> float:
    """rho for one step: the number itself, or for "SDE" clip(2 |t_next - t_cur| t_cur / t_next^2).

    Official "SDE" branch ((sqrt|dt| sqrt(2 alpha(t_cur)) / alpha(t_next))^2 clipped to [0, 1]),
    recomputed at every step here (fixes B5). t_next = 0 gives rho = 1, unused since alpha(0) = 0.
    """
    if stochastic_ratio != SDE:
        return float(stochastic_ratio)
    if t_next == 0.0:
        return 1.0
    return min(max(2 * abs(t_next - t_cur) * t_cur / t_next**2, 0.0), 1.0)


def draw_noise(like: Tensor, generator) -> Tensor:
    """Fresh eps ~ N(0, I) in float64 shaped like `like` (B, ...), from a generator or a list of B.

    With a list, row i comes from generator i alone, so sample i depends only on its own seed (EDM
    `StackedRandomGenerator`). The noise is drawn on the generator's device and moved to `like`'s,
    so a CPU generator gives the same numbers on every device. The hidden global RNG is never used.
    """
    _check_generator(generator, like.shape[0], needed=True)
    if isinstance(generator, torch.Generator):
        return torch.randn(
            like.shape, generator=generator, dtype=torch.float64, device=generator.device
        ).to(like.device)
    rows = [
        torch.randn((1, *like.shape[1:]), generator=g, dtype=torch.float64, device=g.device).to(
            like.device
        )
        for g in generator
    ]
    return torch.cat(rows)  # (B, ...)


def renoise(x_hat: Tensor, z_hat: Tensor, t_next: float, rho: float, generator) -> Tensor:
    """x_next = (1 - t_next) x_hat + t_next (sqrt(1 - rho) z_hat + sqrt(rho) eps).

    docs/math.md#ucgm-sampler step 3. rho = 0 is the deterministic (DDIM-like) jump and draws no
    noise; at t_next = 0 this is x_hat and no noise is drawn either (alpha(0) = 0).
    """
    if t_next == 0.0:
        return x_hat
    if rho == 0.0:
        z_mix = z_hat
    else:  # official: z_hat * (1 - rho) ** 0.5 + noise * rho ** 0.5
        z_mix = math.sqrt(1 - rho) * z_hat + math.sqrt(rho) * draw_noise(z_hat, generator)
    return (1 - t_next) * x_hat + t_next * z_mix  # (B, ...)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance over a time window (UCGM `forward_with_cfg`).

    Inside low <= t <= high (model time t, both ends included, t = 1 noise):
    F = F(x, t, t_tgt, y_null) + scale (F(x, t, t_tgt, y) - F(x, t, t_tgt, y_null)), one batched
    call of 2B rows; outside the window the conditional F alone (B rows).
    """

    scale: float
    low: float
    high: float
    y_null: Tensor

    def applies(self, t: float) -> bool:
        return self.low <= t <= self.high


def _velocity(model, x: Tensor, t: float, t_tgt: float, y, dtype, guidance) -> Tensor:
    """F(x, t, t_tgt, y) in float64 from a model call in `dtype`, guided when the window holds t."""
    batch = x.shape[0]
    guided = guidance is not None and guidance.applies(t)
    rows = 2 * batch if guided else batch
    t_vec, t_tgt_vec = (
        torch.full((rows,), value, dtype=dtype, device=x.device) for value in (t, t_tgt)
    )
    if guided:
        both = model(torch.cat([x, x]).to(dtype), t_vec, t_tgt_vec, torch.cat([y, guidance.y_null]))
        _check_output(both, (rows, *x.shape[1:]))
        F_cond, F_null = both.to(torch.float64).chunk(2)  # (B, ...) each
        return F_null + guidance.scale * (F_cond - F_null)
    F = model(x.to(dtype), t_vec, t_tgt_vec, y)  # (B, ...)
    _check_output(F, tuple(x.shape))
    return F.to(torch.float64)


def _check_output(F, shape: tuple) -> None:
    if not isinstance(F, Tensor) or tuple(F.shape) != shape:
        got = tuple(F.shape) if isinstance(F, Tensor) else type(F).__name__
        raise ValueError(
            f"model(x_t, t, t_tgt, y) must return a velocity shaped like x_t {shape}, got {got}"
        )


def _estimate(model, x: Tensor, t: float, t_tgt: float, y, dtype, guidance=None):
    """(x_hat, z_hat) in float64 from one (guided) model call (official `forward`)."""
    F = _velocity(model, x, t, t_tgt, y, dtype, guidance)
    return invert(x, F, torch.full(x.shape[:1], t, dtype=torch.float64, device=x.device))


def _target_time(style: str, grid: list[float], i: int) -> float:
    """t_tgt for a call at grid[i]: few 0, any grid[i + 1], mul grid[i] (official loop)."""
    if style == "few":
        return 0.0
    return grid[i + 1] if style == "any" else grid[i]


def _make_guidance(cfg_scale, cfg_interval, y, y_null, batch: int):
    scale, (low, high) = _check_guidance(cfg_scale, cfg_interval)
    if scale == 0.0:
        return None
    for name, labels in (("y", y), ("y_null", y_null)):
        if not isinstance(labels, Tensor) or labels.shape != (batch,):
            raise ValueError(
                f"cfg_scale > 0 needs {name} as a LongTensor of shape ({batch},) "
                f"(y_null: the null class id, num_classes for our DiT)"
            )
    return Guidance(scale, low, high, y_null)


# ---------- The sampler (docs/math.md#ucgm-sampler) ----------


@torch.no_grad()
def ucgm_sample(
    model,
    z: Tensor,
    *,
    steps: int,
    style: str = "few",
    stochastic_ratio=0.0,
    extrapolation_ratio: float = 0.0,
    order: int = 1,
    kumaraswamy_abc=(1, 1, 1),
    boundary_gaps=(0, 0),
    y: Tensor | None = None,
    generator=None,
    cfg_scale: float = 0.0,
    cfg_interval=(0.0, 1.0),
    y_null: Tensor | None = None,
    return_trajectory: bool = False,
):
    """Sample from noise z (B, ...) with the UCGM sampler (official `TwinFlow.sampling_loop`).

    For each grid interval (t_cur -> t_next) of `ucgm_time_grid`:
      (x_hat, z_hat) = invert(F(x, t_cur, t_tgt)), t_tgt by `style`;  x_hat is recorded;
      from the third step on, if extrapolation_ratio = e > 0: x_hat += e (x_hat - previous x_hat),
      same for z_hat;
      x = (1 - t_next) x_hat + t_next (sqrt(1 - rho) z_hat + sqrt(rho) eps), rho from
      `stochastic_ratio`.
    The result is the last recorded x_hat, in z's dtype. The state and the grid are float64
    (official: the grid in z's dtype); the model sees z's dtype, its output is cast to float64.

    order = 2 (ours; B3/B4, docs/math.md#official-differences): the predictor is the deterministic
    jump x_pred = (1 - t_next) x_hat + t_next z_hat; the corrector calls the model at (x_pred,
    t_next, the style's t_tgt at t_next) and applies the trapezoid rule to d(x/t)/d(1/t) = x_hat:
    x_hat <- (x_hat + x_hat_pred) / 2, z_hat <- (x - (1 - t_cur) x_hat) / t_cur; then the step
    re-noises as above. It divides only by t_cur > 0 (a grid from t = 1 is fine) and is skipped on
    the final step to t = 0. NFE: steps for order 1; for order 2, n = ceil(steps / 2) intervals and
    2n - 1 model calls.

    cfg_scale > 0 (UCGM `forward_with_cfg`; for models trained without TwinFlow, which bakes
    guidance into training and samples at 0): every call whose time t lies in cfg_interval =
    (low, high), both ends included, uses F_null + cfg_scale (F_cond - F_null) with labels y and
    y_null (B,) (one batched call of 2B rows); other calls use F_cond. cfg_scale = 0 means no
    guidance (the official switch is `cfg_scale > 0`).

    generator: a torch.Generator, or a list of B generators (sample i then depends only on generator
    i); needed only when rho > 0. Returns the sample, or (sample, trajectory) with trajectory =
    stack([z, x_hat_1, ..., x_hat_n]) of shape (n + 1, B, ...) when return_trajectory.
    Raises TypeError for a z that is not a floating tensor, ValueError for any bad option.
    """
    if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() < 1:
        raise TypeError(
            f"z must be a floating-point tensor of shape (B, ...), got {type(z).__name__}"
        )
    _check_style(style)
    stochastic_ratio = _check_ratio(stochastic_ratio)
    extrapolation_ratio = _check_extrapolation(extrapolation_ratio)
    if y is not None and (not isinstance(y, Tensor) or y.shape[:1] != z.shape[:1]):
        raise ValueError(
            f"y must be None or a LongTensor of shape ({z.shape[0]},) with one class "
            f"label per sample"
        )
    guidance = _make_guidance(cfg_scale, cfg_interval, y, y_null, z.shape[0])
    _check_generator(generator, z.shape[0], needed=stochastic_ratio != 0.0)
    grid = ucgm_time_grid(
        steps, order=order, kumaraswamy_abc=kumaraswamy_abc, boundary_gaps=boundary_gaps
    ).tolist()
    dtype = z.dtype
    x = z.to(torch.float64)  # (B, ...)
    trajectory, previous = [z] if return_trajectory else None, None
    for i in range(len(grid) - 1):
        t_cur, t_next = grid[i], grid[i + 1]
        x_hat, z_hat = _estimate(model, x, t_cur, _target_time(style, grid, i), y, dtype, guidance)
        sample = x_hat.to(dtype)  # the answer is the last (raw) x_hat
        if return_trajectory:
            trajectory.append(sample)
        raw = (x_hat, z_hat)
        # extrapolation against the previous raw estimates (official buffer, `i > buffer_freq`)
        if extrapolation_ratio > 0 and i >= EXTRAPOLATION_FIRST_STEP:
            x_hat = x_hat + extrapolation_ratio * (x_hat - previous[0])
            z_hat = z_hat + extrapolation_ratio * (z_hat - previous[1])
        previous = raw
        # order-2 corrector: trapezoid rule on d(x/t)/d(1/t) = x_hat, skipped when t_next = 0 (B4)
        if order == 2 and t_next > 0.0:
            x_pred = (1 - t_next) * x_hat + t_next * z_hat  # (B, ...) deterministic predictor
            x_hat_pred, _ = _estimate(
                model, x_pred, t_next, _target_time(style, grid, i + 1), y, dtype, guidance
            )
            x_hat = 0.5 * (x_hat + x_hat_pred)
            z_hat = (x - (1 - t_cur) * x_hat) / t_cur  # invert x = (1 - t_cur) x_hat + t_cur z_hat
        rho = step_stochastic_ratio(stochastic_ratio, t_cur, t_next)
        x = renoise(x_hat, z_hat, t_next, rho, generator)
    return (sample, torch.stack(trajectory)) if return_trajectory else sample


def grid_intervals(steps: int, order: int) -> int:
    """Number of grid intervals (t_cur -> t_next) that `ucgm_sample` walks: steps for order 1,
    ceil(steps / 2) for order 2 (official `sampling_loop`). Arguments are checked by the caller."""
    return math.ceil(steps / 2) if order == 2 else steps


def inert_knobs(*, steps: int, order: int, stochastic_ratio, extrapolation_ratio) -> list[str]:
    """The knobs among order, stochastic_ratio, extrapolation_ratio that cannot change the samples
    of `ucgm_sample` on this grid, in that order (a knob at its off value 1 / 0 / 0 is never named).

    With n = `grid_intervals(steps, order)`:
      order 2           inert when steps == 1 (n = 1, and the corrector is skipped on the final
                        step to t = 0);
      stochastic_ratio  inert when n == 1 (the only re-noising is at t_next = 0, where
                        `renoise` returns x_hat);
      extrapolation     inert when n <= EXTRAPOLATION_FIRST_STEP + 1 (it starts at the third
                        step, and the sample is the last step's raw x_hat, so it acts only through
                        a later step's input: n >= 4).
    The samples are then bit-identical to those with the knob off; tests/test_sample_cli.py runs
    the sampler both ways to check each rule.
    """
    n = grid_intervals(steps, order)
    inert = []
    if order == 2 and steps == 1:
        inert.append("order")
    if stochastic_ratio != 0.0 and n == 1:
        inert.append("stochastic_ratio")
    if extrapolation_ratio != 0.0 and n <= EXTRAPOLATION_FIRST_STEP + 1:
        inert.append("extrapolation_ratio")
    return inert


# ---------- Presets and published argument names ----------


def preset_for_nfe(nfe: int) -> dict:
    """`ucgm_sample` keywords for `nfe` model calls: the official 1/2/4-NFE configs (`PRESETS`).

    Any other nfe >= 1 gets a few-step config with rho = 1.0 and boundary_gaps = (0.001, 0.5) (the
    4-NFE gaps; not an official config). Named settings (training configs, any-step, multi-step) are
    in `PRESETS`. Raises ValueError for nfe outside [1, MAX_STEPS].
    """
    nfe = _check_int(nfe, "nfe", maximum=MAX_STEPS)
    if nfe in (1, 2, 4):
        return dict(PRESETS[f"{nfe}nfe"])
    return dict(OTHER_NFE_DEFAULTS, steps=nfe)


def from_official_arguments(**kwargs) -> dict:
    """Translate official `sampling_loop` keywords (e.g. a published yaml) into `ucgm_sample`'s.

    Official names are renamed by `OFFICIAL_ARGUMENT_NAMES`; names already in the readable form pass
    through; lists become tuples. Anything else is an error, e.g. `cfg_scale` (TwinFlow samples at
    guidance 0; pass `cfg_scale=` to `ucgm_sample` directly for other models).
    """
    readable = set(OFFICIAL_ARGUMENT_NAMES.values())
    out = {}
    for key, value in kwargs.items():
        name = OFFICIAL_ARGUMENT_NAMES.get(key, key if key in readable else None)
        if name is None:
            raise ValueError(
                f"unknown sampler argument {key!r}; official names are "
                f"{sorted(OFFICIAL_ARGUMENT_NAMES)} (or the readable names "
                f"{sorted(readable)})"
            )
        if name in out:
            raise ValueError(
                f"sampler argument {name!r} given twice (as {key!r} and under another name)"
            )
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


# ---------- Step-by-step scheduler with the diffusers flow-matching interface ----------


@dataclass
class TwinFlowSchedulerOutput:
    """`prev_sample`: x at the next grid time; `pred_original_sample`: x_hat at the current time."""

    prev_sample: Tensor
    pred_original_sample: Tensor


class SchedulerConfig(dict):
    """The scheduler's settings as a read-only mapping with `.get` and attribute access (diffusers
    `FrozenDict`): pipelines read `scheduler.config.get("use_dynamic_shifting")`, `config.shift`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("the scheduler config is read-only; build a new TwinFlowScheduler instead")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _read_only


class TwinFlowScheduler:
    """The order-1 UCGM sampler as a diffusers-style flow-matching scheduler (drop-in for
    `FlowMatchEulerDiscreteScheduler` in a pipeline such as Stable Diffusion 3).

        pipe.scheduler = TwinFlowScheduler(num_train_timesteps=1000,
                                           prediction_type="flow_matching", shift=1.0)
        pipe.scheduler.set_timesteps(num_inference_steps=2, device=pipe.device)
        image = pipe(prompt=..., guidance_scale=0.0, num_inference_steps=2).images[0]

    What it computes: for grid times sigmas[i] -> sigmas[i + 1] (model times t, see
    twinflow_min/transport.py; timesteps = float32 sigmas[:-1] * num_train_timesteps) and a model
    output F, one UCGM step: x_hat = x - t F, z_hat = x + (1 - t) F, x_next = (1 - t_next) x_hat +
    t_next (sqrt(1 - rho) z_hat + sqrt(rho) eps). A pipeline's model gives only the instantaneous
    velocity F(x_t, t) (no target time), so this is exactly the order-1 `ucgm_sample` with that
    velocity; with rho = 0 it is the flow-matching Euler step. A twinflow-min checkpoint sampled
    with sample.py also gets the target time (F(x_t, t, t_tgt): the any-step jump of the few/any/mul
    styles), the order-2 corrector, extrapolation and per-sample seeds; `model_times` gives
    (t, t_tgt) for a hand-written loop.

    Defaults per style when boundary_gaps / stochastic_ratio are None: few uses `preset_for_nfe(n)`
    (official 1/2/4-NFE configs), any `PRESETS["any4"]`'s gaps and rho, mul `PRESETS["mul30"]`'s.
    `shift` warps the grid as in SD3: sigma' = shift sigma / (1 + (shift - 1) sigma); with
    use_dynamic_shifting=True, set_timesteps needs `mu` and sigma' = e^mu / (e^mu + 1/sigma - 1).

    Noise: `step(..., generator=g)` draws from g; without a generator (pipelines never pass one) it
    draws from the scheduler's own CPU generator, restarted from `seed` at every `set_timesteps`
    (change it with TwinFlowScheduler(seed=...) or set_timesteps(..., seed=...)), so a pipeline call
    with the same latents repeats exactly. Errors: ValueError for bad settings, RuntimeError when
    stepping before set_timesteps.
    """

    order = 1  # one model call per step (pipelines read it for progress bars and warm-up steps)
    init_noise_sigma = 1.0  # x at t = 1 is the noise itself

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        prediction_type: str = "flow_matching",
        shift: float = 1.0,
        style: str = "few",
        stochastic_ratio=None,
        boundary_gaps=None,
        kumaraswamy_abc=(1, 1, 1),
        use_dynamic_shifting: bool = False,
        seed: int = 0,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
    ):
        if prediction_type != "flow_matching":
            raise ValueError(
                f"prediction_type {prediction_type!r} is not supported: TwinFlow "
                f"models predict the velocity F, use prediction_type='flow_matching'"
            )
        if not is_real(shift) or shift <= 0:
            raise ValueError(f"shift must be a positive number (1 = no shift), got {shift!r}")
        if not isinstance(use_dynamic_shifting, bool):
            raise ValueError(
                f"use_dynamic_shifting must be True or False, got {use_dynamic_shifting!r}"
            )
        _check_style(style)
        ratio = None if stochastic_ratio is None else _check_ratio(stochastic_ratio)
        abc = _check_grid_options(1, kumaraswamy_abc, (0, 0))[0]
        gaps = None if boundary_gaps is None else _check_grid_options(1, abc, boundary_gaps)[1]
        self.config = SchedulerConfig(
            num_train_timesteps=_check_int(num_train_timesteps, "num_train_timesteps"),
            prediction_type=prediction_type,
            shift=float(shift),
            style=style,
            stochastic_ratio=ratio,
            boundary_gaps=gaps,
            kumaraswamy_abc=abc,
            use_dynamic_shifting=use_dynamic_shifting,
            seed=_check_int(seed, "seed", minimum=0),
            base_shift=base_shift,
            max_shift=max_shift,
            base_image_seq_len=base_image_seq_len,
            max_image_seq_len=max_image_seq_len,
            time_shift_type="exponential",
            invert_sigmas=False,
            shift_terminal=None,
            use_karras_sigmas=False,
            use_exponential_sigmas=False,
            use_beta_sigmas=False,
            stochastic_sampling=False,
        )
        self.num_train_timesteps, self.shift, self.style = num_train_timesteps, float(shift), style
        self.sigmas = self.timesteps = self.num_inference_steps = None
        self.step_ratio, self.generator = None, None
        self._step_index = self._begin_index = None

    def __len__(self) -> int:
        return self.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        """Index of the next step in `timesteps` (None before the first `step`)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index a pipeline starts from (image-to-image), set by `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next `step` / `scale_noise` at timesteps[begin_index] (image-to-image)."""
        self._begin_index = _check_int(begin_index, "begin_index", minimum=0)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device=None,
        sigmas=None,
        mu: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Build sigmas (n + 1 model times ending at 0, float64) and timesteps (n, float32).

        Without `sigmas`: the UCGM grid of `num_inference_steps` steps. With `sigmas` (n decreasing
        times in (0, 1]): those times replace the grid (n = len(sigmas); num_inference_steps, if
        also given, must equal it). Then the shift: `mu` when use_dynamic_shifting is on (required
        there), else `shift`; a `mu` passed while dynamic shifting is off is ignored with a warning
        (as diffusers does; Flux-style pipelines always pass one). Restarts the step counter and the
        noise generator (from `seed`, default the constructor's). ValueError for bad arguments.
        """
        config = self.config
        if sigmas is None:
            n = _check_int(num_inference_steps, "num_inference_steps", maximum=MAX_STEPS)
        else:
            sigmas = self._check_sigmas(sigmas, num_inference_steps)
            n = len(sigmas)
        if config.use_dynamic_shifting and not is_real(mu):
            raise ValueError(f"mu must be a number when use_dynamic_shifting is True, got {mu!r}")
        if mu is not None and not config.use_dynamic_shifting:
            warnings.warn(
                "TwinFlowScheduler: mu is ignored because use_dynamic_shifting is False "
                "(the shift is config.shift)",
                stacklevel=2,
            )
        defaults = {"few": preset_for_nfe(n), "any": PRESETS["any4"], "mul": PRESETS["mul30"]}
        preset = defaults[self.style]
        gaps = config.boundary_gaps if config.boundary_gaps is not None else preset["boundary_gaps"]
        ratio = config.stochastic_ratio
        self.step_ratio = ratio if ratio is not None else preset["stochastic_ratio"]
        if sigmas is None:
            grid = ucgm_time_grid(n, kumaraswamy_abc=config.kumaraswamy_abc, boundary_gaps=gaps)
        else:
            grid = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])  # (n + 1,)
        if config.use_dynamic_shifting:  # diffusers exponential time shift with exponent 1
            grid = math.exp(mu) / (math.exp(mu) + 1 / grid - 1)  # 1/0 = inf keeps t = 0 at 0
        else:  # SD3 time shift: sigma' = s sigma / (1 + (s - 1) sigma)
            grid = self.shift * grid / (1 + (self.shift - 1) * grid)
        self.sigmas = grid.to(device)  # (n + 1,) float64
        self.timesteps = (grid[:-1] * self.num_train_timesteps).to(torch.float32).to(device)
        self.num_inference_steps = n
        seed = config.seed if seed is None else _check_int(seed, "seed", minimum=0)
        self.generator = torch.Generator().manual_seed(seed)
        self._step_index = self._begin_index = None

    @staticmethod
    def _check_sigmas(sigmas, num_inference_steps) -> Tensor:
        values = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()  # (n,)
        ok = values.numel() >= 1 and bool(torch.isfinite(values).all())
        if not ok or bool((values <= 0).any() | (values > 1).any()):
            raise ValueError(f"sigmas must be times in (0, 1] (t = 1 noise), got {sigmas!r}")
        if bool((values[1:] >= values[:-1]).any()):
            raise ValueError(f"sigmas must decrease strictly, got {values.tolist()}")
        if num_inference_steps is not None and num_inference_steps != values.numel():
            raise ValueError(
                f"num_inference_steps={num_inference_steps!r} but {values.numel()} "
                f"sigmas were given; pass one of the two"
            )
        return values

    def _require_timesteps(self) -> None:
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before using the scheduler")

    def index_for_timestep(self, timestep) -> int:
        """Position of `timestep` (an element of `timesteps`); ValueError if it is not there."""
        self._require_timesteps()
        distance = (self.timesteps.cpu().double() - float(timestep)).abs()  # (n,)
        index = int(distance.argmin())
        if distance[index] > TIMESTEP_TOLERANCE * self.num_train_timesteps:
            raise ValueError(
                f"timestep {float(timestep)} is not in this schedule "
                f"{self.timesteps.tolist()}; pass the elements of scheduler.timesteps"
            )
        return index

    def _index_for_step(self, timestep) -> int:
        """The step counter when `timestep` is the expected one, else the timestep's own index."""
        self._require_timesteps()
        if self._step_index is None:
            self._step_index = (
                self._begin_index
                if self._begin_index is not None
                else self.index_for_timestep(timestep)
            )
        inside = self._step_index < len(self.timesteps)
        expected = float(self.timesteps[self._step_index]) if inside else math.nan
        if not abs(expected - float(timestep)) <= TIMESTEP_TOLERANCE * self.num_train_timesteps:
            self._step_index = self.index_for_timestep(timestep)
        return self._step_index

    def target_timestep(self, timestep) -> float:
        """The t_tgt to feed the model, in timestep units: 0 (few), the next timestep (any), itself
        (mul)."""
        index = self.index_for_timestep(timestep)
        return _target_time(self.style, self.sigmas.tolist(), index) * self.num_train_timesteps

    def model_times(self, timestep, batch_size: int, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """(t, t_tgt) as (B,) model times in [0, 1] for `model(x_t, t, t_tgt, y)`."""
        index, grid = self.index_for_timestep(timestep), self.sigmas.tolist()
        return tuple(
            torch.full((batch_size,), value, dtype=dtype, device=self.sigmas.device)
            for value in (grid[index], _target_time(self.style, grid, index))
        )

    def scale_noise(self, sample: Tensor, timestep, noise: Tensor) -> Tensor:
        """x_t = (1 - t) sample + t noise at the time of `timestep` (B,) or scalar (image-to-image).

        Like diffusers: with a begin index set, the current step index (or the begin index) is used;
        otherwise each timestep is looked up. Returns a tensor in sample's dtype.
        """
        self._require_timesteps()
        steps = torch.as_tensor(timestep).flatten()
        if self._begin_index is None:
            indices = [self.index_for_timestep(value) for value in steps.tolist()]
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
            indices = [index] * steps.numel()
        t = self.sigmas.cpu()[indices].to(device=sample.device, dtype=torch.float64)  # (B,)
        t = t.reshape(-1, *([1] * (sample.dim() - 1)))
        return ((1 - t) * sample.double() + t * noise.double()).to(sample.dtype)

    def step(
        self,
        model_output: Tensor,
        timestep,
        sample: Tensor,
        generator=None,
        return_dict: bool = True,
        **unused,
    ):
        """One UCGM step from sigmas[i] to sigmas[i + 1] given F = model_output (B, ...).

        i is the step counter (diffusers semantics: initialised from `timestep` or the begin index,
        then advanced), or `timestep`'s own index when it is not the expected one. Noise comes from
        `generator` or, if None, the scheduler's own (see the class docstring). Returns
        TwinFlowSchedulerOutput, or with return_dict=False the tuple (prev_sample,
        pred_original_sample); both in sample's dtype. Extra diffusers keywords (s_churn, ...) are
        accepted only at their defaults.
        """
        if any(value not in (None, 0.0, float("inf"), 1.0) for value in unused.values()):
            raise ValueError(f"TwinFlowScheduler.step does not support {sorted(unused)}")
        if not isinstance(model_output, Tensor) or model_output.shape != sample.shape:
            raise ValueError(f"model_output must be shaped like sample {tuple(sample.shape)}")
        index = self._index_for_step(timestep)
        t_cur, t_next = float(self.sigmas[index]), float(self.sigmas[index + 1])
        x = sample.to(torch.float64)  # (B, ...)
        t_vec = torch.full((x.shape[0],), t_cur, dtype=torch.float64, device=x.device)  # (B,)
        x_hat, z_hat = invert(x, model_output.to(torch.float64), t_vec)
        rho = step_stochastic_ratio(self.step_ratio, t_cur, t_next)
        x_next = renoise(
            x_hat, z_hat, t_next, rho, generator if generator is not None else self.generator
        )
        self._step_index = index + 1
        out = (x_next.to(sample.dtype), x_hat.to(sample.dtype))
        return TwinFlowSchedulerOutput(*out) if return_dict else out
