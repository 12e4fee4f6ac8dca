"""TwinFlow training losses (tutorial recipe) and the pure functions both recipes share.

Paper: TwinFlow (arXiv:2512.05150), Sec. 3: L = L_base (RCGM any-step loss) + L_TwinFlow, L_TwinFlow = L_adv (flow
matching on the model's own one-step samples at negative time) + L_rectify (velocity matching, Eq. 7:
delta_v = v_fake - v_real). Faithful to the official `tutorials/mnist/methodes.py` ("TUT") `TwinFlow.training_step`
and its helpers `get_rcgm_target`, `multi_fwd`, `get_refer_predc`, `enhance_target`, `dist_match`,
`prepare_inputs` (reference doc §2.1-2.11). The SRC large-scale recipe is in `twinflow_large.py`.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake (twin) branch.
The model F(x_t, t, t_tgt, y) is the average velocity from t to t_tgt.

Official bugs touched: B6 (NaN RCGM target at t == t_tgt: guarded), B10 (L_consistency re-uses v~ of (x_t, t) at
(z, 1): kept, documented), B11 (L_adv on coupled lines, delta_v on independent noise: kept), B12 (shuffled labels
as "unconditional": we take `y_null`), B16 (Barron loss without float32 upcast: upcast). B2 is fixed in `rng.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from twinflow_min.rng import capture_rng_state, replay_rng_state
from twinflow_min.transport import check_time, expand_time, interpolate, invert, velocity_target

DELTA_T = 0.01  # RCGM step Delta (official `(t - 0.01).clamp_min(tt)`, `100 * (t - tt)`)
TARGET_CLAMP = 1.0  # official `.clamp(min=-1.0, max=1.0)` on the RCGM residual
BARRON_EPS = 1e-8  # SRC `barron_reweighting_loss`: `mse / (c**2 + 1e-8)`
BARRON_ALPHA_TWO_TOL = 1e-5  # SRC: `abs(alpha - 2.0) < 1e-5` means plain L2 weight 1
MIN_LOSS_DTYPE = torch.float32  # official l2_loss computes in float32 (we keep float64 as float64)
RECIPES = ("tutorial", "large")
LOSS_TYPES = ("l2", "barron")
LARGE_ONLY = ("time_weighting", "dist_match_cof", "enhanced_range", "frozen_teacher")  # SRC-only options
POSITIVE_OPTIONS = ("delta_t", "target_clamp", "barron_c")
NON_NEGATIVE_OPTIONS = ("enhanced_ratio", "adversarial_weight", "rectify_weight", "consistency_weight",
                        "realvel_weight", "dist_match_cof")


def _is_number(value, kinds=(int, float), allow_inf: bool = False) -> bool:
    """A real number of the given kinds (bool excluded), finite unless allow_inf."""
    return isinstance(value, kinds) and not isinstance(value, bool) and (allow_inf or math.isfinite(value))


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class TwinFlowOptions:
    """Keyword options of `twinflow_losses`. Defaults reproduce the official tutorial (TUT) loss."""
    estimate_order: int = 2  # RCGM N (TUT / SRC default 2); the large recipe also allows 0 (SRC flow-matching mode)
    delta_t: float = DELTA_T
    target_clamp: float = TARGET_CLAMP
    enhanced_ratio: float = 0.0  # CFG weight w baked into the target (TUT class default 0.0; MNIST main.py 0.5)
    adversarial_enabled: bool = True  # False: only L_base + L_realvel (RCGM + real velocity)
    adversarial_weight: float = 1.0
    rectify_weight: float = 1.0
    consistency_weight: float = 1.0
    realvel_weight: float = 1.0
    recipe: str = "tutorial"
    loss_type: str = "l2"  # "l2" (TUT) | "barron" (SRC default, alpha 1, c 1e-3)
    barron_alpha: float = 1.0
    barron_c: float = 1e-3
    time_weighting: bool = False  # large recipe: SRC tan weight omega(t, t_tgt)
    dist_match_cof: float = 0.5  # large recipe: SRC `dist_match_cof` on loss_rectify
    rectify_clip: float | None = None  # None: recipe default (tutorial no clip, large 1.0 like SRC); math.inf = off
    enhanced_range: tuple[float, float] = (0.0, 1.0)  # large recipe: CFG only on rows lo < t < hi (SRC, B9)
    frozen_teacher: bool = False  # large recipe: SRC `ema_decay_rate == 1` (RCGM uses the student)

    def __post_init__(self):
        for name in ("adversarial_enabled", "time_weighting", "frozen_teacher"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name, allowed in (("recipe", RECIPES), ("loss_type", LOSS_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        lowest = 1 if self.recipe == "tutorial" else 0
        if not _is_number(self.estimate_order, int) or self.estimate_order < lowest:
            raise ValueError(f"estimate_order must be an integer >= {lowest} for recipe={self.recipe!r} (the number N "
                             f"of teacher jumps in the RCGM target; official 2), got {self.estimate_order!r}")
        for name in (*POSITIVE_OPTIONS, *NON_NEGATIVE_OPTIONS, "barron_alpha"):
            value, positive = getattr(self, name), name in POSITIVE_OPTIONS
            if not _is_number(value) or (positive and value <= 0) or (name in NON_NEGATIVE_OPTIONS and value < 0):
                bound = " > 0" if positive else " >= 0" if name in NON_NEGATIVE_OPTIONS else ""
                raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
        if self.delta_t >= 1 or not (self.rectify_clip is None or _is_number(self.rectify_clip, (int, float), True)
                                     and self.rectify_clip > 0):
            raise ValueError(f"need 0 < delta_t < 1 (official 0.01) and rectify_clip None or > 0, got delta_t="
                             f"{self.delta_t!r}, rectify_clip={self.rectify_clip!r}")
        low_high = tuple(self.enhanced_range) if isinstance(self.enhanced_range, (tuple, list)) else ()
        if len(low_high) != 2 or not all(_is_number(v) for v in low_high) or not 0 <= low_high[0] < low_high[1] <= 1:
            raise ValueError(f"enhanced_range must be two numbers lo < hi within [0, 1], got {self.enhanced_range!r}")
        object.__setattr__(self, "enhanced_range", (float(low_high[0]), float(low_high[1])))
        changed = [f.name for f in dataclasses.fields(self)
                   if f.name in LARGE_ONLY and getattr(self, f.name) != f.default]
        if self.recipe == "tutorial" and changed:
            raise ValueError(f"option(s) {changed} only apply to recipe='large' (official SRC); the tutorial recipe "
                             f"mirrors TUT, which has none of them: use recipe='large' or reset them")

    @classmethod
    def from_keywords(cls, **options) -> "TwinFlowOptions":
        """Build from keywords; an unknown keyword is a TypeError that names it and lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"unknown TwinFlow option(s) {unknown}; valid options: {', '.join(valid)}")
        return cls(**options)


# ----------------------------------------------------------------------------------------- per-sample losses
def l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error (B,), computed in at least float32 and cast back (TUT/SRC `l2_loss`)."""
    dtype = torch.promote_types(pred.dtype, MIN_LOSS_DTYPE)
    return (pred.to(dtype) - target.to(dtype)).square().flatten(1).mean(dim=1).to(pred.dtype)  # (B,)


def barron_loss(pred: Tensor, target: Tensor, alpha: float = 1.0, c: float = 1e-3) -> Tensor:
    """Per-sample Barron-reweighted L2 (B,) = m * sg(w) / c, m = mean sq. error (SRC `barron_reweighting_loss`).

    Reference §2.8, G10; alpha = 1 is about 1.005 * RMSE. Computed in >= float32 like `l2_loss` (B16 fix)."""
    dtype = torch.promote_types(pred.dtype, MIN_LOSS_DTYPE)
    mse = (pred.to(dtype) - target.to(dtype)).square().flatten(1).mean(dim=1)  # (B,)
    if abs(alpha - 2.0) < BARRON_ALPHA_TWO_TOL:
        weight = torch.ones_like(mse)
    else:
        # w = ((m / c^2) / |alpha - 2| + 1)^((alpha - 2) / 2), detached (SRC `weight.data`)
        weight = (mse / (c ** 2 + BARRON_EPS) / abs(alpha - 2.0) + 1.0).pow((alpha - 2.0) / 2.0)
    return (mse * weight.detach() / c).to(pred.dtype)  # (B,)


def per_sample_loss(pred: Tensor, target: Tensor, options: TwinFlowOptions) -> Tensor:
    """The chosen per-sample loss ell(pred, target) -> (B,)."""
    if options.loss_type == "barron":
        return barron_loss(pred, target, options.barron_alpha, options.barron_c)
    return l2_loss(pred, target)


# ------------------------------------------------------------------------------------------- small helpers
def _check_batch(x) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a float batch tensor (B, ...) with B >= 1, got {getattr(x, 'shape', type(x))}")


def _check_like(name: str, tensor, like: Tensor) -> None:
    if not isinstance(tensor, Tensor) or tensor.shape != like.shape:
        got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must have the shape of the batch {tuple(like.shape)}, got {got}")


def _check_labels(batch_size: int, **labels) -> None:
    for name, y in labels.items():
        if y is not None and (not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (batch_size,)):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{name} must be None or a LongTensor ({batch_size},) of class ids, got {got}")


def _check_unit_times(batch_size: int, **times) -> None:
    for name, tensor in times.items():
        if check_time(tensor, name).shape[0] != batch_size or bool((tensor < 0).any()):
            raise ValueError(f"{name} must have shape ({batch_size},) with values in [0, 1], got {tuple(tensor.shape)}")


def _concat_rows(rows: list[tuple]) -> tuple:
    """Concatenate row sets (x, t, t_tgt, y) along the batch; y stays None when every y is None."""
    xs, ts, t_tgts, ys = zip(*rows)
    y = None if ys[0] is None else torch.cat(ys)
    return torch.cat(xs), torch.cat(ts), torch.cat(t_tgts), y


def forward_rows(model, rows: dict[str, tuple]) -> dict[str, Tensor]:
    """Evaluate independent row sets {name: (x, t, t_tgt, y)} in ONE model call and split the output by name."""
    if not rows:
        return {}
    output = model(*_concat_rows(list(rows.values())))  # (sum of B_i, ...)
    return dict(zip(rows, output.split([row[0].shape[0] for row in rows.values()])))


# --------------------------------------------------------------------------------------- shared pure math
def rcgm_target(teacher, x_t: Tensor, t: Tensor, t_tgt: Tensor, F: Tensor, v_target: Tensor, y: Tensor | None = None,
                *, order: int = 2, delta_t: float = DELTA_T, clamp: float = TARGET_CLAMP, rng_state=None) -> Tensor:
    """Detached RCGM target sg(F) - clip(R, +-clamp) for the student output F = F(x_t, t, t_tgt) (reference §2.1).

    Official `get_rcgm_target` + `multi_fwd` (TUT; SRC L216-260): t_mid = max(t - Delta, t_tgt), y_0 = x_t - Delta v,
    N = `order` teacher jumps on the uniform grid s_i from t_mid to t_tgt give D = sum_i (s_i - s_{i+1})
    F^-(y_i, s_i, s_{i+1}); R = (t - t_tgt)/Delta F - D/Delta - v, or R = F - v on rows with t < t_tgt + Delta
    (there D = 0). The official `F - D / (t - t_tgt) - v` is NaN at t == t_tgt (B6); we return its limit. Teacher
    passes run under no_grad with `rng_state` replayed (rng.py), none when every row is near. Any shape (B, ...).
    """
    for name, tensor in (("F", F), ("v_target", v_target)):
        _check_like(name, tensor, x_t)
    _check_unit_times(x_t.shape[0], t=t, t_tgt=t_tgt)
    if bool((t_tgt > t).any()):
        raise ValueError("the RCGM target lives on the real trajectory: it needs 0 <= t_tgt <= t for every row "
                         "(fake-branch rows with negative time get a plain flow-matching target instead)")
    if not _is_number(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1 (the number N of teacher jumps), got {order!r}")
    F, v_target = F.detach(), v_target.detach()
    t, t_tgt = t.to(x_t.dtype), t_tgt.to(x_t.dtype)
    near = t < t_tgt + delta_t  # (B,) official `mask`
    with torch.no_grad():
        displacement = torch.zeros_like(F)  # (B, ...) D
        if not bool(near.all()):
            t_mid = torch.maximum(t - delta_t, t_tgt)  # (B,) official `t_m`
            y_i = x_t - delta_t * v_target  # (B, ...) one exact conditional Euler step of length Delta
            for i in range(order):
                # s_i = t_mid (1 - i/N) + t_tgt (i/N)   (official `multi_fwd` grid)
                s_i = t_mid * (1 - i / order) + t_tgt * (i / order)  # (B,)
                s_next = t_mid * (1 - (i + 1) / order) + t_tgt * ((i + 1) / order)  # (B,)
                with replay_rng_state(rng_state):
                    F_teacher = teacher(y_i, s_i, s_next, y)  # (B, ...)
                step = expand_time(s_i - s_next, F)  # (B, 1, ...)
                displacement = displacement + step * F_teacher
                y_i = y_i - step * F_teacher  # any-step jump to s_{i+1} (= alpha(s) z_hat + gamma(s) x_hat)
        gap = expand_time(t - t_tgt, F)  # (B, 1, ...)
        # R = cof_l F - cof_r D - v   with cof_l = (t - t_tgt)/Delta, cof_r = 1/Delta (far) | R = F - v (near)
        near_rows = near.reshape(-1, *([1] * (F.dim() - 1)))  # (B, 1, ...)
        residual = torch.where(near_rows, F - v_target,
                               gap / delta_t * F - displacement / delta_t - v_target)  # (B, ...)
        return F - residual.clamp(-clamp, clamp)  # (B, ...)


def enhance_target(teacher, x_t: Tensor, t: Tensor, v_target: Tensor, y, y_null, ratio: float, *,
                   rng_state=None, frozen_teacher: bool = False) -> Tensor:
    """CFG-enhanced target v~ = v + ratio * (F^-(x_t,t,t|y) - F^-(x_t,t,t|y_null))  (reference §2.7).

    Official `get_refer_predc` + `enhance_target` (TUT; SRC L186-200, L316-325): two teacher passes under no_grad,
    each with `rng_state` replayed so they differ only by the class. ratio 0 returns `v_target` without teacher
    calls. frozen_teacher=True gives SRC's `ema_decay_rate == 1` form F^-_null + ratio * (F^-_y - F^-_null).
    The tutorial's "unconditional" labels were a shuffled batch (B12); pass the null class as `y_null`.
    """
    if ratio == 0:
        return v_target
    if y is None or y_null is None:
        raise ValueError(f"enhanced_ratio={ratio} needs class labels y and null labels y_null (the CFG branch); "
                         f"an unconditional model has no CFG branch: set enhanced_ratio=0")
    _check_like("v_target", v_target, x_t)
    _check_labels(x_t.shape[0], y=y, y_null=y_null)
    with torch.no_grad():
        with replay_rng_state(rng_state):
            v_null = teacher(x_t, t, t, y_null)  # (B, ...)
        with replay_rng_state(rng_state):
            v_cond = teacher(x_t, t, t, y)  # (B, ...)
    return (v_null if frozen_teacher else v_target.detach()) + ratio * (v_cond - v_null)  # (B, ...)


def rectify_delta_v(model, x_fake: Tensor, y, *, z: Tensor, s: Tensor, clip: float | None = None) -> Tensor:
    """delta_v = F(y_s, -s, -s) - F(y_s, s, s), y_s = s z + (1 - s) x_fake: Eq. 7 v_fake - v_real, no grad.

    Official `dist_match` (TUT; SRC L278-294, which also clips +-1 in float32: pass `clip=1.0`). Both passes
    use the current student and run as one batched call (rows are independent).
    """
    _check_like("z", z, x_fake)
    _check_unit_times(x_fake.shape[0], s=s)
    with torch.no_grad():
        y_s = interpolate(x_fake.detach(), z, s)  # (B, ...) s z + (1 - s) x_fake
        both = forward_rows(model, {"fake": (y_s, -s, -s, y), "real": (y_s, s, s, y)})
        delta_v = both["fake"] - both["real"]  # (B, ...) v_fake - v_real
        if clip is not None:
            delta_v = delta_v.to(torch.promote_types(delta_v.dtype, MIN_LOSS_DTYPE)).clamp(-clip, clip)
    return delta_v


# ------------------------------------------------------------------------------------------------- losses
def twinflow_losses(model, teacher, x: Tensor, y, *, z: Tensor, t: Tensor, t_tgt: Tensor, z_rect: Tensor,
                    s_rect: Tensor, y_null=None, groups=None, z_fake=None, **options) -> dict[str, Tensor]:
    """Named, unweighted TwinFlow loss terms plus "loss" = their weighted sum (what train.py backpropagates).

    Tutorial recipe = official TUT `TwinFlow.training_step` (reference §2.11) for the same draws:
      loss_base        mean ell(F(x_t, t, t_tgt), rcgm_target)                        (L_base, §2.1)
      loss_realvel     mean ell(F(x_t, t, t), v~)                                      (§2.2)
      loss_adv         mean ell(F(x_fake_t, -t, -t), z - sg(x_fake)),  x_fake = z - F(z, 1, 0),
                       x_fake_t = t z + (1 - t) sg(x_fake) with the same z (coupled noise, B11)   (§2.4)
      loss_rectify     mean ell(F_fake, sg(F_fake - delta_v)), delta_v = rectify_delta_v(sg(x_fake), z_rect, s_rect)
      loss_consistency mean ell(F_fake, rcgm_target(z, 1 -> 0)); TUT re-uses the v~ of (x_t, t) here (B10)  (§2.6)
    loss = loss_base + realvel_weight * loss_realvel + adversarial_weight * loss_adv
           + rectify_weight * loss_rectify + consistency_weight * loss_consistency.
    adversarial_enabled=False keeps only loss_base and loss_realvel; a term with weight 0 is skipped (absent).
    recipe="large" dispatches to `twinflow_large.large_recipe_losses` (needs `groups` and `z_fake`).
    Options: see `TwinFlowOptions`; an unknown keyword is a TypeError.
    """
    opts = TwinFlowOptions.from_keywords(**options)
    if opts.recipe == "large":
        from twinflow_min import twinflow_large  # imported here: twinflow_large builds on this module
        return twinflow_large.large_recipe_losses(model, teacher, x, y, z=z, t=t, t_tgt=t_tgt, groups=groups,
                                                  z_fake=z_fake, z_rect=z_rect, s_rect=s_rect, y_null=y_null,
                                                  options=opts)
    if groups is not None or z_fake is not None:
        raise ValueError("groups / z_fake belong to recipe='large'; draw the tutorial inputs with "
                         "sample_training_inputs(x, generator) or pass recipe='large'")
    _check_batch(x)
    for name, tensor in (("z", z), ("z_rect", z_rect)):
        _check_like(name, tensor, x)
    _check_unit_times(x.shape[0], t=t, t_tgt=t_tgt, s_rect=s_rect)
    _check_labels(x.shape[0], y=y, y_null=y_null)
    ones, zeros = torch.ones_like(t), torch.zeros_like(t)  # (B,)

    # TUT prepare_inputs: x_t = t z + (1 - t) x, v = z - x
    x_t = interpolate(x, z, t)  # (B, ...)
    v = velocity_target(x, z).detach()  # (B, ...)
    use_fake = opts.adversarial_enabled and max(opts.adversarial_weight, opts.rectify_weight,
                                                opts.consistency_weight) > 0
    use_consistency = opts.adversarial_enabled and opts.consistency_weight > 0

    # student rows that get an RCGM target share one call; the teacher passes replay its RNG state (rng.py)
    rcgm_rows = {"base": (x_t, t, t_tgt, y)}
    if use_consistency:
        rcgm_rows["fake"] = (z, ones, zeros, y)  # F_fake = F(z, 1, 0), with grad
    rng_state = capture_rng_state(x.device)
    out = forward_rows(model, rcgm_rows)

    # §2.7: v~ = v + w (F^-(x_t,t,t|y) - F^-(x_t,t,t|y_null))
    v_tilde = enhance_target(teacher, x_t, t, v, y, y_null, opts.enhanced_ratio, rng_state=rng_state)
    # §2.1 on the base rows and §2.6 on the (z, 1 -> 0) rows, which re-use v~ of (x_t, t) (B10): one RCGM call
    x_rows, t_rows, t_tgt_rows, y_rows = _concat_rows(list(rcgm_rows.values()))
    targets = rcgm_target(teacher, x_rows, t_rows, t_tgt_rows, torch.cat(list(out.values())),
                          torch.cat([v_tilde] * len(out)), y_rows, order=opts.estimate_order, delta_t=opts.delta_t,
                          clamp=opts.target_clamp, rng_state=rng_state).split(x.shape[0])
    terms = {"loss_base": per_sample_loss(out["base"], targets[0], opts).mean()}

    # the remaining student passes: the real-velocity rows, F_fake if not yet computed, then the adv rows
    late = {"realvel": (x_t, t, t, y)} if opts.realvel_weight > 0 else {}
    if use_fake and "fake" not in out:
        out.update(forward_rows(model, {"fake": (z, ones, zeros, y), **late}))
        late = {}
    if use_fake:
        x_fake = invert(z, out["fake"], ones)[0].detach()  # (B, ...) sg(x_fake) = sg(z - F(z, 1, 0))
        if opts.adversarial_weight > 0:
            late["adv"] = (interpolate(x_fake, z, t), -t, -t, y)  # x_fake_t = t z + (1 - t) sg(x_fake)
    out.update(forward_rows(model, late))

    if "realvel" in out:
        terms["loss_realvel"] = per_sample_loss(out["realvel"], v_tilde, opts).mean()
    if "adv" in out:
        # §2.4: flow matching on the fake line, target z - sg(x_fake)
        terms["loss_adv"] = per_sample_loss(out["adv"], velocity_target(x_fake, z), opts).mean()
    if use_fake and opts.rectify_weight > 0:
        # §2.5, Eq. 7: delta_v = v_fake - v_real at y_s = s z' + (1 - s) sg(x_fake); grad of ell is 2 delta_v / d
        delta_v = rectify_delta_v(model, x_fake, y, z=z_rect, s=s_rect, clip=opts.rectify_clip)
        F_fake = out["fake"]
        terms["loss_rectify"] = per_sample_loss(F_fake, (F_fake - delta_v).detach(), opts).mean()
    if use_consistency:
        terms["loss_consistency"] = per_sample_loss(out["fake"], targets[1], opts).mean()
    weights = {"loss_base": 1.0, "loss_realvel": opts.realvel_weight, "loss_adv": opts.adversarial_weight,
               "loss_rectify": opts.rectify_weight, "loss_consistency": opts.consistency_weight}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms


def flow_matching_loss(model, x: Tensor, y, *, z: Tensor, t: Tensor) -> dict[str, Tensor]:
    """Plain flow matching {"loss_fm", "loss"} = mean ell2(F(x_t, t, t), z - x), used when TwinFlow is off."""
    _check_like("z", z, x)
    _check_unit_times(x.shape[0], t=t)
    _check_labels(x.shape[0], y=y)
    F = model(interpolate(x, z, t), t, t, y)  # (B, ...)
    loss_fm = l2_loss(F, velocity_target(x, z)).mean()
    return {"loss_fm": loss_fm, "loss": loss_fm}


def image_free_batch(model, z: Tensor, y) -> Tensor:
    """x = sg(z - F(z, 1, 0)): train on the model's own one-step samples (SRC `use_image_free`, L152-160)."""
    ones = torch.ones(z.shape[0], device=z.device, dtype=z.dtype)  # (B,)
    with torch.no_grad():
        return invert(z, model(z, ones, torch.zeros_like(ones), y), ones)[0].detach()  # (B, ...)


# ----------------------------------------------------------------------------------------- input sampling
def sample_training_inputs(x: Tensor, generator: torch.Generator, *, recipe: str = "tutorial",
                           group_proportions=(1, 1, 1, 1), time_dist=(1.0, 1.0, 1.0),
                           consistency_ratio: float = 1.0) -> dict[str, Tensor]:
    """Every random input of `twinflow_losses` (its keyword names: pass as `**inputs`), drawn from `generator`.

    tutorial (TUT `prepare_inputs`, `dist_match`): z, z_rect ~ N(0, I), t ~ U(0, 1) (Beta(time_dist) * scale),
    t_tgt = t - U consistency_ratio t, s_rect ~ U(0, 1). large: `twinflow_large.sample_large_inputs`."""
    from twinflow_min import twinflow_large  # imported here: twinflow_large builds on this module
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    _check_batch(x)
    if generator.device.type != x.device.type:
        raise ValueError(f"the generator lives on {generator.device} but x on {x.device}; create it with "
                         f"torch.Generator(device=x.device)")
    if isinstance(consistency_ratio, bool) or not 0.0 <= consistency_ratio <= 1.0:
        raise ValueError(f"consistency_ratio must lie in [0, 1] (SRC consistc_ratio), got {consistency_ratio!r}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if recipe == "large":
        return twinflow_large.sample_large_inputs(x, generator, group_proportions=group_proportions,
                                                  time_dist=time_dist, consistency_ratio=consistency_ratio)
    if tuple(group_proportions) != (1, 1, 1, 1):
        raise ValueError("group_proportions only apply to recipe='large' (the tutorial trains every term on "
                         "every row); reset them or use recipe='large'")
    batch, draw = x.shape[0], dict(generator=generator, device=x.device, dtype=x.dtype)
    t = twinflow_large.sample_time(batch, time_dist, generator, x.device, x.dtype)  # (B,)
    t_tgt = t - torch.rand(batch, **draw) * consistency_ratio * t  # (B,) U(0, t) for ratio 1
    return {"z": torch.randn(x.shape, **draw), "t": t, "t_tgt": t_tgt,
            "z_rect": torch.randn(x.shape, **draw), "s_rect": torch.rand(batch, **draw)}
