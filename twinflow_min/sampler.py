"""The UCGM sampler used by TwinFlow, its time grid, presets, and a step-by-step scheduler.

Paper: TwinFlow (arXiv:2512.05150) samples with the UCGM sampler (UCGM, arXiv:2505.07447) at 1/2/4 NFE.
Faithful to the official `sampling_loop` and `kumaraswamy_transform` of `src/methodes/twinflow/twinflow.py`
(the MNIST tutorial and `unified_sampler.py` carry the same loop), reference §3, with these bugs fixed:
  B3  the order-2 corrector now passes a target time to the model (the official call crashes without it);
  B4  the corrector is skipped on the final step to t = 0 and never divides by gamma(1) = 0 (official: NaN
      when the grid starts at t = 1), see `ucgm_sample` for the update;
  B5  stochastic_ratio="SDE" is recomputed at every step (official: the step-0 value is reused).
Kept on purpose (B7): the exact float test `boundary_gaps[1] == 0` that switches between two grid rules; the
published configs depend on it (see `ucgm_time_grid`).

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake (twin)
branch (the sampler only walks the real branch, t from ~1 down to 0). The model F(x_t, t, t_tgt, y) is the
average velocity from t to t_tgt; (x_hat, z_hat) come from `transport.invert`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from twinflow_min.transport import invert

STYLES = ("few", "any", "mul")  # target time t_tgt = 0 | t_next | t_cur (official `sampling_style`)
SDE = "SDE"  # stochastic_ratio that follows the SDE noise level per step (official `stochast_ratio="SDE"`)
# Official `buffer_freq = 1` and `if i > buffer_freq`: extrapolation starts at the third step (i = 2).
EXTRAPOLATION_FIRST_STEP = 2
TIMESTEP_TOLERANCE = 1e-6  # a scheduler timestep matches a grid time within this (in units of t), float32-safe

# Published argument names (official `sampling_loop`) -> the readable names used here (conventions #8).
OFFICIAL_ARGUMENT_NAMES = {
    "sampling_steps": "steps",
    "sampling_style": "style",
    "stochast_ratio": "stochastic_ratio",
    "extrapol_ratio": "extrapolation_ratio",
    "sampling_order": "order",
    "time_dist_ctrl": "kumaraswamy_abc",
    "rfba_gap_steps": "boundary_gaps",
}

# Official configs, reference §3.2: MNIST tutorial `main.py` (1 NFE), `inference.py` (2 and 4 NFE),
# `src/configs/*` multi-step yaml (30 steps, mul style). UNIFORM = no Kumaraswamy warp.
UNIFORM = (1.0, 1.0, 1.0)
PRESETS = {
    "1nfe": dict(steps=1, style="few", stochastic_ratio=0.0, kumaraswamy_abc=UNIFORM, boundary_gaps=(0.0, 0.0)),
    "2nfe": dict(steps=2, style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM, boundary_gaps=(0.001, 0.6)),
    "4nfe": dict(steps=4, style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM, boundary_gaps=(0.001, 0.5)),
    "mul30": dict(steps=30, style="mul", stochastic_ratio=0.0, kumaraswamy_abc=(1.17, 0.8, 1.1),
                  boundary_gaps=(0.001, 0.0)),
}
# Few-step defaults for NFE counts without an official config: re-noise fully, 4-NFE boundary gaps.
OTHER_NFE_DEFAULTS = dict(style="few", stochastic_ratio=1.0, kumaraswamy_abc=UNIFORM, boundary_gaps=(0.001, 0.5))


# ---------- Argument checks ----------

def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_style(style) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES} (few: t_tgt = 0, any: t_tgt = t_next, "
                         f"mul: t_tgt = t_cur)")
    return style


def _check_ratio(stochastic_ratio):
    if stochastic_ratio == SDE:
        return SDE
    if (isinstance(stochastic_ratio, bool) or not isinstance(stochastic_ratio, Real)
            or not 0.0 <= stochastic_ratio <= 1.0):
        raise ValueError(f"stochastic_ratio must be a number in [0, 1] or {SDE!r}, got {stochastic_ratio!r}")
    return float(stochastic_ratio)


def _check_grid_options(order, kumaraswamy_abc, boundary_gaps) -> tuple[tuple, tuple]:
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 1 (UCGM step) or 2 (Heun-type corrector), got {order!r}")
    abc, gaps = (tuple(v) if isinstance(v, (tuple, list)) else () for v in (kumaraswamy_abc, boundary_gaps))
    if len(abc) != 3 or not all(isinstance(v, Real) and v > 0 for v in abc):
        raise ValueError(f"kumaraswamy_abc must be three positive numbers (a, b, c), got {kumaraswamy_abc!r}")
    if (len(gaps) != 2 or not all(isinstance(v, Real) and 0 <= v < 1 for v in gaps)
            or gaps[0] + gaps[1] >= 1):
        raise ValueError(f"boundary_gaps must be two numbers (start, end) in [0, 1) with start + end < 1, "
                         f"got {boundary_gaps!r}; the official 4-NFE config uses (0.001, 0.5)")
    return tuple(float(v) for v in abc), tuple(float(v) for v in gaps)


def _check_generator(generator, batch: int, needed: bool) -> None:
    if generator is None and needed:
        raise ValueError("stochastic_ratio > 0 needs fresh noise: pass generator=torch.Generator().manual_seed(s) "
                         "or a list with one generator per sample")
    if generator is None or isinstance(generator, torch.Generator):
        return
    if (not isinstance(generator, (list, tuple)) or len(generator) != batch
            or not all(isinstance(g, torch.Generator) for g in generator)):
        count = len(generator) if isinstance(generator, (list, tuple)) else type(generator).__name__
        raise ValueError(f"generator must be a torch.Generator or a list of {batch} generators (one per sample), "
                         f"got {count}")


# ---------- Time grid (reference §3.1 steps 1-2) ----------

def ucgm_time_grid(steps: int, *, order: int = 1, kumaraswamy_abc=(1, 1, 1), boundary_gaps=(0, 0)) -> Tensor:
    """The decreasing float64 grid t_0 > t_1 > ... > t_n = 0 (official `sampling_loop` + `kumaraswamy_transform`).

    n = steps for order 1 and n = ceil(steps / 2) for order 2. With boundary_gaps = (g0, g1):
      u = linspace(g0, 1, n + 1)[:-1]   if g1 == 0 exactly,   else   u = linspace(g0, 1 - g1, n);
      t_i = 1 - K(u_i) with the Kumaraswamy warp K(u) = (1 - (1 - u^a)^b)^c, then t_n = 0 is appended.
    Known quirk kept on purpose (reference B7): the two rules meet discontinuously; g1 = 0 gives evenly spaced
    points down to ~1/n, while any tiny g1 > 0 puts the last point at ~g1 (so its NFE lands next to t = 0).
    The published multi-step config relies on the g1 = 0 rule, so it is reproduced exactly.
    """
    n = _check_int(steps, "steps")
    abc, (gap_start, gap_end) = _check_grid_options(order, kumaraswamy_abc, boundary_gaps)
    if order == 2:
        n = math.ceil(n / 2)
    # reference §3.1 step 1 (official: `num_steps + 1 if rfba_gap_steps[1] == 0.0`)
    if gap_end == 0.0:
        u = torch.linspace(gap_start, 1.0, n + 1, dtype=torch.float64)[:-1]  # (n,)
    else:
        u = torch.linspace(gap_start, 1.0 - gap_end, n, dtype=torch.float64)  # (n,)
    a, b, c = abc
    # reference §3.1 step 2: Kumaraswamy warp K(u) = (1 - (1 - u^a)^b)^c
    warped = (1 - (1 - u ** a) ** b) ** c  # (n,)
    return torch.cat([1 - warped, torch.zeros(1, dtype=torch.float64)])  # (n + 1,)


# ---------- One UCGM step, shared by `ucgm_sample` and `TwinFlowScheduler` ----------

def step_stochastic_ratio(stochastic_ratio, t_cur: float, t_next: float) -> float:
    """rho for one step: the number itself, or for "SDE" rho = clip(2 |t_next - t_cur| t_cur / t_next^2, 0, 1).

    Official `sampling_loop` "SDE" branch ((sqrt|dt| sqrt(2 alpha(t_cur)) / alpha(t_next))^2), recomputed at
    every step here (fixes B5). t_next = 0 gives rho = 1 (the clip of +inf), unused since alpha(0) = 0.
    """
    if stochastic_ratio != SDE:
        return float(stochastic_ratio)
    if t_next == 0.0:
        return 1.0
    return min(max(2 * abs(t_next - t_cur) * t_cur / t_next ** 2, 0.0), 1.0)


def draw_noise(like: Tensor, generator) -> Tensor:
    """Fresh eps ~ N(0, I) in float64 shaped like `like` (B, ...), from one generator or a list of B generators.

    With a list, row i comes from generator i alone, so sample i depends only on its own seed (EDM
    `StackedRandomGenerator`). The hidden global RNG is never used.
    """
    _check_generator(generator, like.shape[0], needed=True)
    if isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, dtype=torch.float64,
                           device=generator.device).to(like.device)
    rows = [torch.randn((1, *like.shape[1:]), generator=g, dtype=torch.float64, device=g.device).to(like.device)
            for g in generator]
    return torch.cat(rows)  # (B, ...)


def renoise(x_hat: Tensor, z_hat: Tensor, t_next: float, rho: float, generator) -> Tensor:
    """x_next = (1 - t_next) x_hat + t_next (sqrt(1 - rho) z_hat + sqrt(rho) eps)  (reference §3.1 step 3).

    rho = 0 is the deterministic (DDIM-like) jump and draws no noise; at t_next = 0 this is x_hat and no noise
    is drawn either (alpha(0) = 0).
    """
    if t_next == 0.0:
        return x_hat
    # official: z_hat * (1 - rho) ** 0.5 + noise * rho ** 0.5
    z_mix = z_hat if rho == 0.0 else math.sqrt(1 - rho) * z_hat + math.sqrt(rho) * draw_noise(z_hat, generator)
    return (1 - t_next) * x_hat + t_next * z_mix  # (B, ...)


def _estimate(model, x: Tensor, t: float, t_tgt: float, y, dtype) -> tuple[Tensor, Tensor]:
    """(x_hat, z_hat) in float64 from one model call in `dtype` (official `forward`, TUT L268-274)."""
    t_vec, t_tgt_vec = (torch.full(x.shape[:1], value, dtype=dtype, device=x.device) for value in (t, t_tgt))
    F = model(x.to(dtype), t_vec, t_tgt_vec, y)  # (B, ...)
    if not isinstance(F, Tensor) or F.shape != x.shape:
        got = tuple(F.shape) if isinstance(F, Tensor) else type(F).__name__
        raise ValueError(f"model(x_t, t, t_tgt, y) must return a velocity shaped like x_t {tuple(x.shape)}, got {got}")
    return invert(x, F.to(torch.float64), torch.full(x.shape[:1], t, dtype=torch.float64, device=x.device))


def _target_time(style: str, grid: list[float], i: int) -> float:
    """t_tgt for a call at grid[i]: few 0, any grid[i + 1], mul grid[i] (official `sampling_loop`)."""
    return 0.0 if style == "few" else grid[i + 1] if style == "any" else grid[i]


# ---------- The sampler (reference §3.1) ----------

@torch.no_grad()
def ucgm_sample(model, z: Tensor, *, steps: int, style: str = "few", stochastic_ratio=0.0,
                extrapolation_ratio: float = 0.0, order: int = 1, kumaraswamy_abc=(1, 1, 1),
                boundary_gaps=(0, 0), y: Tensor | None = None, generator=None, return_trajectory: bool = False):
    """Sample from noise z with the UCGM sampler (official `TwinFlow.sampling_loop`, reference §3.1).

    For each grid interval (t_cur -> t_next) of `ucgm_time_grid`:
      (x_hat, z_hat) = invert(F(x, t_cur, t_tgt)), t_tgt by `style`;  x_hat is recorded;
      from the third step on, if extrapolation_ratio = e > 0: x_hat += e (x_hat - previous x_hat), same for z_hat;
      x = (1 - t_next) x_hat + t_next (sqrt(1 - rho) z_hat + sqrt(rho) eps), rho from `stochastic_ratio`.
    The result is the last recorded x_hat (reference §3.1 step 4), in z's dtype. The state and the grid are float64
    (official: the grid in z's dtype); the model sees z's dtype and its output is cast back to float64.

    order = 2 (Heun-type, fixes B3/B4): the rho = 0 step is Euler for the probability-flow ODE written as
    d(x/t)/d(1/t) = x_hat, i.e. x_pred = (t_next/t_cur) x + (1 - t_next/t_cur) x_hat. The corrector calls the model
    at (x_pred, t_next, the style's t_tgt at t_next) and applies the trapezoid rule, x_hat <- (x_hat + x_hat_pred)/2,
    z_hat <- (x - (1 - t_cur) x_hat) / t_cur, then re-noises as above. It divides only by t_cur > 0 (a grid from
    t = 1 is fine) and is skipped on the final step to t = 0. Second order in `mul` style; exact when x_hat is
    constant along the path (single-point data). NFE: steps for order 1; for order 2, n = ceil(steps / 2) grid
    intervals and 2n - 1 model calls.

    generator: a torch.Generator, or a list of B generators (sample i then depends only on generator i); needed
    only when rho > 0. Returns the sample, or (sample, trajectory) with trajectory = stack([z, x_hat_1, ...,
    x_hat_n]) of shape (n + 1, B, ...) when return_trajectory.
    """
    if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() < 1:
        raise TypeError(f"z must be a floating-point tensor of shape (B, ...), got {type(z).__name__}")
    _check_style(style)
    stochastic_ratio = _check_ratio(stochastic_ratio)
    if isinstance(extrapolation_ratio, bool) or not isinstance(extrapolation_ratio, Real) or extrapolation_ratio < 0:
        raise ValueError(f"extrapolation_ratio must be a number >= 0, got {extrapolation_ratio!r}")
    if y is not None and (not isinstance(y, Tensor) or y.shape[:1] != z.shape[:1]):
        raise ValueError(f"y must be None or a LongTensor of shape ({z.shape[0]},) with one class label per sample")
    _check_generator(generator, z.shape[0], needed=stochastic_ratio != 0.0)
    grid = ucgm_time_grid(steps, order=order, kumaraswamy_abc=kumaraswamy_abc,
                          boundary_gaps=boundary_gaps).tolist()
    dtype = z.dtype
    x = z.to(torch.float64)  # (B, ...)
    trajectory, previous = [z] if return_trajectory else None, None
    for i in range(len(grid) - 1):
        t_cur, t_next = grid[i], grid[i + 1]
        # reference §3.1 step 3: first-order estimate at t_cur
        x_hat, z_hat = _estimate(model, x, t_cur, _target_time(style, grid, i), y, dtype)
        sample = x_hat.to(dtype)  # reference §3.1 step 4: the answer is the last (raw) x_hat
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
            x_hat_pred, _ = _estimate(model, x_pred, t_next, _target_time(style, grid, i + 1), y, dtype)
            x_hat = 0.5 * (x_hat + x_hat_pred)
            z_hat = (x - (1 - t_cur) * x_hat) / t_cur  # invert x = (1 - t_cur) x_hat + t_cur z_hat
        rho = step_stochastic_ratio(stochastic_ratio, t_cur, t_next)
        x = renoise(x_hat, z_hat, t_next, rho, generator)
    return (sample, torch.stack(trajectory)) if return_trajectory else sample


# ---------- Presets and published argument names ----------

def preset_for_nfe(nfe: int) -> dict:
    """`ucgm_sample` keywords for `nfe` model calls: the official 1/2/4-NFE configs (`PRESETS`).

    Any other nfe >= 1 gets a few-step config with rho = 1.0 and boundary_gaps = (0.001, 0.5) (the 4-NFE
    gaps; not an official config). The 30-step multi-step config is `PRESETS["mul30"]`.
    """
    nfe = _check_int(nfe, "nfe")
    if nfe in (1, 2, 4):
        return dict(PRESETS[f"{nfe}nfe"])
    return dict(OTHER_NFE_DEFAULTS, steps=nfe)


def from_official_arguments(**kwargs) -> dict:
    """Translate official `sampling_loop` keywords (e.g. a published yaml) into `ucgm_sample` keywords.

    Official names are renamed by `OFFICIAL_ARGUMENT_NAMES`; names already in the readable form pass through;
    lists become tuples. Anything else is an error, e.g. `cfg_scale` (TwinFlow samples at guidance 0).
    """
    readable = set(OFFICIAL_ARGUMENT_NAMES.values())
    out = {}
    for key, value in kwargs.items():
        name = OFFICIAL_ARGUMENT_NAMES.get(key, key if key in readable else None)
        if name is None:
            raise ValueError(f"unknown sampler argument {key!r}; official names are {sorted(OFFICIAL_ARGUMENT_NAMES)} "
                             f"(or the readable names {sorted(readable)})")
        if name in out:
            raise ValueError(f"sampler argument {name!r} given twice (as {key!r} and under another name)")
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


# ---------- Step-by-step scheduler (issue #4) ----------

@dataclass
class TwinFlowSchedulerOutput:
    """`prev_sample`: x at the next grid time; `pred_original_sample`: x_hat at the current time."""

    prev_sample: Tensor
    pred_original_sample: Tensor


class TwinFlowScheduler:
    """The order-1 UCGM sampler as a step-by-step scheduler (familiar `set_timesteps` / `step` loop).

        scheduler.set_timesteps(4)
        for timestep in scheduler.timesteps:
            t, t_tgt = scheduler.model_times(timestep, batch_size)  # (B,) model times in [0, 1]
            x = scheduler.step(model(x, t, t_tgt, y), timestep, x, generator=g).prev_sample

    model_output = F(sample, t, t_tgt), t_tgt from `target_timestep` / `model_times` (0 for few style).
    sigmas: the model times t_i (float64, n + 1 values ending at 0); timesteps = sigmas[:-1] * num_train_timesteps.
    `shift` warps the grid as in SD3: sigma' = shift sigma / (1 + (shift - 1) sigma) (1 keeps the UCGM grid).
    When boundary_gaps / stochastic_ratio are None, few style uses `preset_for_nfe(n)` (official 1/2/4-NFE
    configs); any style the yaml any-step config (gaps (0.001, 0.5), rho 0); mul style the multi-step one
    (gaps (0.001, 0), rho 0). With shift = 1 and float64 samples, the loop equals `ucgm_sample(order=1)`.
    """

    def __init__(self, num_train_timesteps: int = 1000, prediction_type: str = "flow_matching", shift: float = 1.0,
                 style: str = "few", stochastic_ratio=None, boundary_gaps=None, kumaraswamy_abc=(1, 1, 1)):
        if prediction_type != "flow_matching":
            raise ValueError(f"prediction_type {prediction_type!r} is not supported: TwinFlow models predict the "
                             f"average velocity F, use prediction_type='flow_matching'")
        if isinstance(shift, bool) or not isinstance(shift, Real) or shift <= 0:
            raise ValueError(f"shift must be a positive number (1 = no shift), got {shift!r}")
        self.num_train_timesteps = _check_int(num_train_timesteps, "num_train_timesteps")
        self.prediction_type, self.shift, self.style = prediction_type, float(shift), _check_style(style)
        self.stochastic_ratio = None if stochastic_ratio is None else _check_ratio(stochastic_ratio)
        self.boundary_gaps = None if boundary_gaps is None else _check_grid_options(1, kumaraswamy_abc, boundary_gaps)[1]
        self.kumaraswamy_abc = _check_grid_options(1, kumaraswamy_abc, (0, 0))[0]
        self.sigmas = self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Build sigmas (the UCGM grid, then the shift) and timesteps for `num_inference_steps` model calls."""
        n = _check_int(num_inference_steps, "num_inference_steps")
        defaults = {"few": preset_for_nfe(n), "any": dict(stochastic_ratio=0.0, boundary_gaps=(0.001, 0.5)),
                    "mul": dict(stochastic_ratio=0.0, boundary_gaps=(0.001, 0.0))}[self.style]
        gaps = self.boundary_gaps if self.boundary_gaps is not None else defaults["boundary_gaps"]
        self.step_ratio = self.stochastic_ratio if self.stochastic_ratio is not None else defaults["stochastic_ratio"]
        sigmas = ucgm_time_grid(n, kumaraswamy_abc=self.kumaraswamy_abc, boundary_gaps=gaps)  # (n + 1,)
        # SD3 time shift (diffusers FlowMatchEulerDiscreteScheduler): sigma' = s sigma / (1 + (s - 1) sigma)
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        self.sigmas = sigmas.to(device)
        self.timesteps = self.sigmas[:-1] * self.num_train_timesteps

    def index_for_timestep(self, timestep) -> int:
        """Position of `timestep` (an element of `timesteps`) in the schedule."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before using the scheduler")
        distance = (self.timesteps.cpu() - float(timestep)).abs()  # (n,)
        index = int(distance.argmin())
        if distance[index] > TIMESTEP_TOLERANCE * self.num_train_timesteps:
            raise ValueError(f"timestep {float(timestep)} is not in this schedule {self.timesteps.tolist()}; "
                             f"pass the elements of scheduler.timesteps")
        return index

    def target_timestep(self, timestep) -> float:
        """The t_tgt to feed the model, in timestep units: 0 (few), the next timestep (any), itself (mul)."""
        return _target_time(self.style, self.sigmas.tolist(), self.index_for_timestep(timestep)) * self.num_train_timesteps

    def model_times(self, timestep, batch_size: int, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """(t, t_tgt) as (B,) model times in [0, 1] for `model(x_t, t, t_tgt, y)`."""
        index, grid = self.index_for_timestep(timestep), self.sigmas.tolist()
        return tuple(torch.full((batch_size,), value, dtype=dtype, device=self.sigmas.device)
                     for value in (grid[index], _target_time(self.style, grid, index)))

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None) -> TwinFlowSchedulerOutput:
        """One UCGM step from sigmas[i] to sigmas[i + 1] given F = model_output (reference §3.1 step 3)."""
        index = self.index_for_timestep(timestep)
        if not isinstance(model_output, Tensor) or model_output.shape != sample.shape:
            raise ValueError(f"model_output must be shaped like sample {tuple(sample.shape)}")
        grid = self.sigmas.tolist()
        t_cur, t_next = grid[index], grid[index + 1]
        x = sample.to(torch.float64)  # (B, ...)
        t_vec = torch.full((x.shape[0],), t_cur, dtype=torch.float64, device=x.device)  # (B,)
        x_hat, z_hat = invert(x, model_output.to(torch.float64), t_vec)
        rho = step_stochastic_ratio(self.step_ratio, t_cur, t_next)
        x_next = renoise(x_hat, z_hat, t_next, rho, generator)
        return TwinFlowSchedulerOutput(prev_sample=x_next.to(sample.dtype),
                                       pred_original_sample=x_hat.to(sample.dtype))
