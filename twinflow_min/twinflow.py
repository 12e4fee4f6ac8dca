"""TwinFlow training losses, tutorial recipe, and the pieces both recipes share.

Paper: TwinFlow (arXiv:2512.05150), Sec. 3. L = L_base + L_TwinFlow, where L_base is the RCGM
any-step loss and L_TwinFlow = L_adv (flow matching on the model's own one-step samples at negative
time) + L_rectify (Eq. 9, driven by delta_v = v_fake - v_real of Eq. 7). The derivation, equation by
equation, is docs/math.md; the time convention is stated once in twinflow_min/transport.py.

Faithful to the official tutorial `tutorials/mnist/methodes.py` ("TUT"): `TwinFlow.training_step`
and its helpers `get_rcgm_target`, `multi_fwd`, `get_refer_predc`, `enhance_target`, `dist_match`,
`prepare_inputs`. The large-scale recipe (official `src/methodes/twinflow/twinflow.py`, "SRC") is
twinflow_large.py, which builds on this module and registers itself in `LARGE_RECIPE` when imported.

Read in this order: `TwinFlowOptions` (every option, its default and its range, once),
`tutorial_losses` (six numbered blocks in the paper's order), then the pure math it calls:
`rcgm_target`, `enhance_target`, `rectify_delta_v`. Official behaviours we change are listed in
docs/math.md#official-differences.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from twinflow_min.checks import is_count, is_int, is_real
from twinflow_min.rng import capture_rng_state, replay_rng_state
from twinflow_min.transport import check_time, expand_time, interpolate, invert, velocity_target

DELTA_T = 0.01  # RCGM step Delta (TUT `(t - 0.01).clamp_min(tt)`, `100 * (t - tt)`)
TARGET_CLAMP = 1.0  # TUT `.clamp(min=-1.0, max=1.0)` on the RCGM residual
BARRON_EPS = 1e-8  # SRC `barron_reweighting_loss`: `mse / (c**2 + 1e-8)`
BARRON_ALPHA_TWO_TOL = 1e-5  # SRC: `abs(alpha - 2.0) < 1e-5` means plain L2 weight 1
MIN_MATH_DTYPE = torch.float32  # targets and losses are computed in at least float32
RECIPE_NAMES = ("tutorial", "large")
LOSS_TYPES = ("l2", "barron")
NUM_GROUPS = 4  # row groups of the large recipe (e2e, mul, any, adv)

# recipe="large" is implemented in twinflow_large.py, which builds on this module and fills this
# table ({"losses": large_recipe_losses, "inputs": sample_large_inputs}) when imported; the package
# __init__ imports it, so the table is full whenever twinflow_min is importable.
LARGE_RECIPE: dict[str, Callable] = {}




def _large_recipe(part: str) -> Callable:
    if part not in LARGE_RECIPE:
        raise RuntimeError("recipe='large' is registered by twinflow_min.twinflow_large; import it "
                           "(the twinflow_min package does so when it is imported)")
    return LARGE_RECIPE[part]


# ---------- options ----------
class OptionError(ValueError):
    """A TwinFlow option outside its range: str(error) == f"{option} = {value!r} {rule}"."""

    def __init__(self, option: str, value, rule: str):
        super().__init__(f"{option} = {value!r} {rule}")
        self.option, self.value, self.rule = option, value, rule


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _at_least(low: float) -> Callable:
    return lambda value, options: is_real(value) and value >= low


def _is_range(value) -> bool:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return False
    low, high = value
    return is_real(low) and is_real(high) and 0 <= low < high <= 1


def _order_fits(value, options) -> bool:
    lowest = 0 if options.recipe == "large" else 1
    return is_int(value) and value >= lowest


# option -> (check(value, options), rule): the one place where a range is written. `recipe` comes
# first because the range of `estimate_order` depends on it.
OPTION_RULES: dict[str, tuple[Callable, str]] = {
    "recipe": (lambda v, o: v in RECIPE_NAMES, f"must be one of {RECIPE_NAMES}"),
    "estimate_order": (_order_fits, "must be an integer >= 1 (>= 0 with recipe='large': SRC's "
                                    "flow-matching mode); official 2"),
    "delta_t": (lambda v, o: is_real(v) and 0 < v < 0.5, "must lie in (0, 0.5); official 0.01"),
    "target_clamp": (lambda v, o: is_real(v) and v > 0, "must be a number > 0; official 1"),
    "enhanced_ratio": (_at_least(0), "must be a number >= 0 (0 = no CFG in the target)"),
    "adversarial_enabled": (lambda v, o: _is_bool(v), "must be True or False"),
    "adversarial_weight": (_at_least(0), "must be a number >= 0"),
    "rectify_weight": (_at_least(0), "must be a number >= 0"),
    "consistency_weight": (_at_least(0), "must be a number >= 0"),
    "realvel_weight": (_at_least(0), "must be a number >= 0"),
    "loss_type": (lambda v, o: v in LOSS_TYPES, f"must be one of {LOSS_TYPES}"),
    "barron_alpha": (lambda v, o: is_real(v), "must be a finite number; SRC 1"),
    "barron_c": (lambda v, o: is_real(v) and v > 0, "must be a number > 0; SRC 1e-3"),
    "time_weighting": (lambda v, o: _is_bool(v), "must be True or False"),
    "dist_match_cof": (_at_least(0), "must be a number >= 0; SRC 0.5"),
    "rectify_clip": (lambda v, o: v is None or (is_real(v, allow_inf=True) and v > 0),
                     "must be None (the recipe's default) or a number > 0"),
    "enhanced_range": (lambda v, o: _is_range(v), "must be two numbers lo < hi within [0, 1]"),
    "consistency_ratio": (lambda v, o: is_real(v) and 0 <= v <= 1,
                          "must lie in [0, 1] (SRC consistc_ratio); official 1"),
    "rcgm_teacher_is_student": (lambda v, o: _is_bool(v), "must be True or False"),
    "enhance_around_null": (lambda v, o: _is_bool(v), "must be True or False"),
    "frozen_teacher": (lambda v, o: _is_bool(v), "must be True or False"),
}

# SRC-only options: the tutorial recipe refuses any value but their default
LARGE_ONLY = ("time_weighting", "dist_match_cof", "enhanced_range", "consistency_ratio",
              "rcgm_teacher_is_student", "enhance_around_null", "frozen_teacher")


@dataclass(frozen=True)
class TwinFlowOptions:
    """Options of `twinflow_losses`; defaults reproduce the official tutorial loss (TUT).

    Build once per run: `__post_init__` checks every field against `OPTION_RULES` and raises
    `OptionError` naming the field; the options in `LARGE_ONLY` must keep their default with the
    tutorial recipe (TUT has none of them). `frozen_teacher=True` is kept for compatibility and
    means `rcgm_teacher_is_student=True` (SRC's ema_decay_rate == 1 on real data).
    """
    estimate_order: int = 2  # RCGM N, teacher jumps in the target (docs/math.md#rcgm-target)
    delta_t: float = DELTA_T  # RCGM step Delta
    target_clamp: float = TARGET_CLAMP  # clip of the RCGM residual
    enhanced_ratio: float = 0.0  # CFG weight w in v~ (TUT class default 0; MNIST main.py 0.5)
    adversarial_enabled: bool = True  # the fake (twin) branch; False: L_base + real velocity only
    adversarial_weight: float = 1.0
    rectify_weight: float = 1.0
    consistency_weight: float = 1.0
    realvel_weight: float = 1.0
    recipe: str = "tutorial"
    loss_type: str = "l2"  # "l2" (TUT) | "barron" (SRC default with alpha 1, c 1e-3)
    barron_alpha: float = 1.0
    barron_c: float = 1e-3
    time_weighting: bool = False  # large: SRC tan weight omega(t, t_tgt)
    dist_match_cof: float = 0.5  # large: SRC factor on loss_rectify
    rectify_clip: float | None = None  # None: tutorial no clip, large 1.0 (SRC); math.inf: no clip
    enhanced_range: tuple[float, float] = (0.0, 1.0)  # large: CFG only where lo < t < hi (SRC)
    consistency_ratio: float = 1.0  # large: SRC consistc_ratio (0: no RCGM; != 1: no rectify)
    rcgm_teacher_is_student: bool = False  # large: RCGM passes use the student (SRC decay 1)
    enhance_around_null: bool = False  # large: v~ = F_null + w (F_cond - F_null) (SRC decay 1 form)
    frozen_teacher: bool = False  # compatibility keyword: sets rcgm_teacher_is_student

    def __post_init__(self):
        for name, (fits, rule) in OPTION_RULES.items():
            if not fits(getattr(self, name), self):
                raise OptionError(name, getattr(self, name), rule)
        low, high = self.enhanced_range
        object.__setattr__(self, "enhanced_range", (float(low), float(high)))
        if self.recipe == "tutorial":
            for field in dataclasses.fields(self):
                value = getattr(self, field.name)
                if field.name in LARGE_ONLY and value != field.default:
                    raise OptionError(field.name, value, "is set, but large-recipe options only "
                                      "apply to recipe='large' (SRC); the tutorial mirrors TUT, "
                                      "which has none: use recipe='large' or reset it")
        if self.frozen_teacher:
            object.__setattr__(self, "rcgm_teacher_is_student", True)

    @classmethod
    def from_keywords(cls, **options) -> "TwinFlowOptions":
        """Build from keywords; an unknown keyword is a TypeError naming it and the valid ones."""
        valid = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"unknown TwinFlow option(s) {unknown}; valid options: "
                            f"{', '.join(valid)}")
        return cls(**options)


def uses_rcgm_target(options: TwinFlowOptions) -> bool:
    """True when the loss asks the model for F(x_t, t, t_tgt) with t_tgt != t (an RCGM target)."""
    return options.estimate_order >= 1 and options.consistency_ratio != 0


def check_model_fits(model, options: TwinFlowOptions) -> None:
    """Raise ValueError (one line, naming the fix) when `model` cannot represent what `options`
    train.

    (a) the adversarial branch needs a model that sees the sign of t: without it F(x, -t, -t) equals
    F(x, t, t), loss_rectify is exactly 0 and L_adv pulls the real branch toward the fake target;
    (b) an RCGM target needs the target-time embedding, else F cannot depend on t_tgt.
    Models without `.config` (test doubles, plain functions) pass; DDP / torch.compile wrappers are
    unwrapped.
    """
    for wrapper in ("module", "_orig_mod"):
        model = getattr(model, wrapper, model)
    config = getattr(model, "config", None)
    if config is None:
        return
    if options.adversarial_enabled and getattr(config, "use_time_sign", True) is False:
        raise ValueError("the adversarial (twin) branch needs a model that sees the sign of t, "
                         "but this model has use_time_sign=False: build it with "
                         "use_time_sign=True or set adversarial_enabled=False "
                         "(twinflow_adversarial_enabled false)")
    if uses_rcgm_target(options) and getattr(config, "use_target_time", True) is False:
        raise ValueError("RCGM targets need F(x_t, t, t_tgt) for t_tgt != t, but this model has "
                         "use_target_time=False: build it with use_target_time=True, or train "
                         "plain flow matching (twinflow_enabled false)")


# ---------- per-sample losses ----------
def l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error (B,), computed in >= float32, cast back (TUT/SRC `l2_loss`).

    docs/math.md#per-sample-losses."""
    dtype = torch.promote_types(pred.dtype, MIN_MATH_DTYPE)
    squared = (pred.to(dtype) - target.to(dtype)).square()  # (B, ...)
    return squared.flatten(1).mean(dim=1).to(pred.dtype)  # (B,)


def barron_loss(pred: Tensor, target: Tensor, alpha: float = 1.0, c: float = 1e-3) -> Tensor:
    """Per-sample Barron-reweighted L2 (B,) = m sg(w) / c with m the mean squared error.

    SRC `barron_reweighting_loss`; docs/math.md#per-sample-losses. alpha = 1 is about 1.005 RMSE.
    Computed in >= float32 like `l2_loss` (SRC computes in the input dtype)."""
    dtype = torch.promote_types(pred.dtype, MIN_MATH_DTYPE)
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


# ---------- checks at the door ----------
def check_batch(x) -> None:
    """x must be a float tensor (B, ...) with B >= 1."""
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a float batch tensor (B, ...) with B >= 1, got {got}")


def check_like(name: str, tensor, shape: tuple) -> None:
    """`tensor` must be a tensor of exactly `shape`."""
    if not isinstance(tensor, Tensor) or tuple(tensor.shape) != tuple(shape):
        got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must have the shape {tuple(shape)}, got {got}")


def check_labels(batch_size: int, **labels) -> None:
    """Each label tensor must be None or a LongTensor (batch_size,) of class ids."""
    for name, y in labels.items():
        if y is None:
            continue
        if not isinstance(y, Tensor) or y.dtype != torch.long or tuple(y.shape) != (batch_size,):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{name} must be None or a LongTensor ({batch_size},) of class ids, "
                             f"got {got}")


def check_times(batch_size: int, **times) -> None:
    """Each time must be a tensor (batch_size,) within [-1, 1] (transport.check_time)."""
    for name, tensor in times.items():
        if check_time(tensor, name).shape != (batch_size,):
            raise ValueError(f"{name} must have shape ({batch_size},), got {tuple(tensor.shape)}")


def check_cfg_labels(options: TwinFlowOptions, y, y_null) -> None:
    """A CFG target (enhanced_ratio > 0) needs class labels and null labels."""
    if options.enhanced_ratio == 0:
        return
    if y is None or y_null is None:
        raise ValueError(f"enhanced_ratio={options.enhanced_ratio} needs class labels y and null "
                         "labels y_null (the CFG branch); an unconditional model has no CFG "
                         "branch: set enhanced_ratio=0")


def _check_tutorial_inputs(x, y, *, z, t, t_tgt, z_rect, s_rect, y_null, groups, z_fake,
                           options: TwinFlowOptions) -> None:
    """Every argument of the tutorial loss, checked once (the math below trusts them)."""
    if groups is not None or z_fake is not None:
        raise ValueError("groups / z_fake belong to recipe='large'; draw the tutorial inputs with "
                         "sample_training_inputs(x, generator) or pass recipe='large'")
    check_batch(x)
    batch = x.shape[0]
    check_like("z", z, x.shape)
    check_like("z_rect", z_rect, x.shape)
    check_times(batch, t=t, t_tgt=t_tgt, s_rect=s_rect)
    check_labels(batch, y=y, y_null=y_null)
    check_cfg_labels(options, y, y_null)
    if bool((t_tgt < 0).any()):
        raise ValueError("t_tgt must lie in [0, 1]: the tutorial's base rows live on the real "
                         "trajectory (0 <= t_tgt <= t); draw them with sample_training_inputs")
    if bool((s_rect < 0).any()):
        raise ValueError("s_rect must lie in [0, 1]; draw it with sample_training_inputs")
    if bool((t_tgt > t).any()):
        raise ValueError("the RCGM target lives on the real trajectory: it needs 0 <= t_tgt <= t "
                         "for every row")


# ---------- shared pure math ----------
def rcgm_target(teacher, x_t: Tensor, t: Tensor, t_tgt: Tensor, F: Tensor, v_target: Tensor,
                y: Tensor | None = None, *, order: int = 2, delta_t: float = DELTA_T,
                clamp: float = TARGET_CLAMP, rng_state=None) -> Tensor:
    """Detached RCGM target sg(F) - clip(R, +-clamp) for the student output F = F(x_t, t, t_tgt).

    docs/math.md#rcgm-target (TUT `get_rcgm_target` + `multi_fwd`, SRC the same). Shapes: x_t, F,
    v_target (B, ...); t, t_tgt (B,) with 0 <= t_tgt <= t (checked by the callers' doors).
    t_mid = max(t - Delta, t_tgt), y_0 = x_t - Delta v; N = `order` teacher jumps on the uniform
    grid s_i from t_mid to t_tgt give D = sum_i (s_i - s_{i+1}) F^-(y_i, s_i, s_{i+1}); then
    R = (t - t_tgt)/Delta F - D/Delta - v, or R = F - v on near rows t < t_tgt + Delta (D = 0 there;
    the official form is NaN at t == t_tgt, we return its limit). Teacher passes run under no_grad,
    each replaying `rng_state` (docs/math.md#rng-replay), and are skipped only when every row is
    near. The arithmetic runs in at least float32 and the target is returned in that dtype (float32
    for bf16 / fp16 inputs): the residual cancels two terms about 1/Delta times larger than itself.
    """
    assert F.shape == x_t.shape and v_target.shape == x_t.shape, "F and v_target must match x_t"
    dtype = torch.promote_types(x_t.dtype, MIN_MATH_DTYPE)
    F, v_target = F.detach().to(dtype), v_target.detach().to(dtype)  # (B, ...)
    t, t_tgt = t.to(dtype), t_tgt.to(dtype)  # (B,)
    near = t < t_tgt + delta_t  # (B,) official `mask`
    with torch.no_grad():
        displacement = torch.zeros_like(F)  # (B, ...) D
        if not bool(near.all()):
            t_mid = torch.maximum(t - delta_t, t_tgt)  # (B,) official `t_m`
            y_i = x_t.to(dtype) - delta_t * v_target  # (B, ...) one exact step of length Delta
            for i in range(order):
                # s_i = t_mid (1 - i/N) + t_tgt (i/N)   (official `multi_fwd` grid)
                s_i = t_mid * (1 - i / order) + t_tgt * (i / order)  # (B,)
                s_next = t_mid * (1 - (i + 1) / order) + t_tgt * ((i + 1) / order)  # (B,)
                with replay_rng_state(rng_state):
                    inputs = (y_i.to(x_t.dtype), s_i.to(x_t.dtype), s_next.to(x_t.dtype))
                    F_teacher = teacher(*inputs, y)
                F_teacher = F_teacher.to(dtype)  # (B, ...)
                step = expand_time(s_i - s_next, F)  # (B, 1, ...)
                displacement = displacement + step * F_teacher
                y_i = y_i - step * F_teacher  # any-step jump to s_{i+1}
        gap = expand_time(t - t_tgt, F)  # (B, 1, ...)
        # R = cof_l F - cof_r D - v with cof_l = (t - t_tgt)/Delta, cof_r = 1/Delta (far) | R = F -
        # v (near)
        near_rows = near.reshape(-1, *([1] * (F.dim() - 1)))  # (B, 1, ...)
        residual = torch.where(near_rows, F - v_target,
                               gap / delta_t * F - displacement / delta_t - v_target)  # (B, ...)
        return F - residual.clamp(-clamp, clamp)  # (B, ...)


def enhance_target(teacher, x_t: Tensor, t: Tensor, v_target: Tensor, y, y_null, ratio: float, *,
                   rng_state=None, around_null: bool = False) -> Tensor:
    """CFG-enhanced target v~ = v + w (F^-(x_t, t, t | y) - F^-(x_t, t, t | y_null)), w = `ratio`.

    docs/math.md#cfg-target (TUT `get_refer_predc` + `enhance_target`; SRC the same). Shapes: x_t,
    v_target (B, ...); t, y, y_null (B,). Two teacher passes under no_grad, each replaying
    `rng_state` so they differ only by the class; ratio 0 returns `v_target` without a teacher pass.
    around_null=True gives SRC's frozen-teacher form F^-_null + w (F^-_y - F^-_null). Computed in at
    least float32 and returned in that dtype. TUT's "unconditional" labels were a shuffled batch; we
    take `y_null`.
    """
    if ratio == 0:
        return v_target
    dtype = torch.promote_types(v_target.dtype, MIN_MATH_DTYPE)
    with torch.no_grad():
        with replay_rng_state(rng_state):
            v_null = teacher(x_t, t, t, y_null).to(dtype)  # (B, ...)
        with replay_rng_state(rng_state):
            v_cond = teacher(x_t, t, t, y).to(dtype)  # (B, ...)
    base = v_null if around_null else v_target.detach().to(dtype)  # (B, ...)
    return base + ratio * (v_cond - v_null)  # (B, ...)


def rectify_delta_v(model, x_fake: Tensor, y, *, z: Tensor, s: Tensor,
                    clip: float | None = None) -> Tensor:
    """delta_v = F(y_s, -s, -s) - F(y_s, s, s) at y_s = s z + (1 - s) x_fake: paper Eq. 7, no grad.

    docs/math.md#rectify-loss (TUT `dist_match`; SRC also clips to +-1 in float32: pass clip=1.0).
    Shapes: x_fake, z (B, ...), s (B,) in [0, 1]. Both passes use the current student, as one
    batched call (rows are independent). Returned in at least float32.
    """
    with torch.no_grad():
        y_s = interpolate(x_fake.detach(), z, s)  # (B, ...) s z + (1 - s) x_fake
        both = forward_rows(model, {"fake": (y_s, -s, -s, y), "real": (y_s, s, s, y)})
        dtype = torch.promote_types(both["fake"].dtype, MIN_MATH_DTYPE)
        delta_v = both["fake"].to(dtype) - both["real"].to(dtype)  # (B, ...) v_fake - v_real
        if clip is not None:
            delta_v = delta_v.clamp(-clip, clip)
    return delta_v


def one_step_sample(z: Tensor, F_one_step: Tensor) -> Tensor:
    """sg(x_fake) = sg(z - F(z, 1, 0)): the one-step generator's sample
    (docs/math.md#one-step-generator)."""
    return (z - F_one_step).detach()  # (B, ...) = invert(z, F, 1)[0]


def forward_rows(model, rows: dict[str, tuple]) -> dict[str, Tensor]:
    """Evaluate independent row sets {name: (x, t, t_tgt, y)} in ONE model call; split by name."""
    if not rows:
        return {}
    xs, ts, t_tgts, ys = zip(*rows.values())
    y = None if ys[0] is None else torch.cat(ys)
    output = model(torch.cat(xs), torch.cat(ts), torch.cat(t_tgts), y)  # (sum of B_i, ...)
    return dict(zip(rows, output.split([x.shape[0] for x in xs])))


# ---------- the loss: both recipes ----------
def twinflow_losses(model, teacher, x: Tensor, y, *, z: Tensor, t: Tensor, t_tgt: Tensor,
                    z_rect: Tensor, s_rect: Tensor, y_null=None, groups=None, z_fake=None,
                    options: TwinFlowOptions | None = None, **keywords) -> dict[str, Tensor]:
    """Named, unweighted TwinFlow loss terms plus "loss" = their weighted sum (what training
    backpropagates).

    Pass either a prebuilt `options` (train.py builds one per run) or option keywords (see
    `TwinFlowOptions`; an unknown keyword is a TypeError, a bad value an OptionError). Shapes: x, z,
    z_rect (B, ...); t, t_tgt, s_rect (B,); y, y_null None or LongTensor (B,). recipe="tutorial":
    see `tutorial_losses`; recipe="large": twinflow_large.large_recipe_losses (needs `groups` and
    `z_fake`). Raises ValueError for a model that cannot represent the options (`check_model_fits`)
    or bad inputs.
    """
    if options is None:
        options = TwinFlowOptions.from_keywords(**keywords)
    elif keywords:
        raise TypeError("pass either options= or option keywords, not both (got "
                        f"{sorted(keywords)})")
    check_model_fits(model, options)
    if options.recipe == "large":
        return _large_recipe("losses")(model, teacher, x, y, z=z, t=t, t_tgt=t_tgt, groups=groups,
                                      z_fake=z_fake, z_rect=z_rect, s_rect=s_rect, y_null=y_null,
                                      options=options)
    _check_tutorial_inputs(x, y, z=z, t=t, t_tgt=t_tgt, z_rect=z_rect, s_rect=s_rect, y_null=y_null,
                           groups=groups, z_fake=z_fake, options=options)
    return tutorial_losses(model, teacher, x, y, z=z, t=t, t_tgt=t_tgt, z_rect=z_rect,
                           s_rect=s_rect, y_null=y_null, options=options)


def tutorial_losses(model, teacher, x: Tensor, y, *, z: Tensor, t: Tensor, t_tgt: Tensor,
                    z_rect: Tensor, s_rect: Tensor, y_null, options: TwinFlowOptions) -> dict:
    """The official tutorial loss (TUT `TwinFlow.training_step`) for the given draws, in paper
    order.

    Inputs are trusted (checked by `twinflow_losses`). Each numbered block adds one named term:
    loss = loss_base + realvel_weight loss_realvel + adversarial_weight loss_adv
           + rectify_weight loss_rectify + consistency_weight loss_consistency.
    adversarial_enabled=False keeps blocks 1-2; a term with weight 0 is absent.
    """
    x_t = interpolate(x, z, t)  # (B, ...) x_t = (1 - t) x + t z
    v = velocity_target(x, z).detach()  # (B, ...) v = z - x
    twin_branch = twin_branch_on(options)

    # 0. v~, the velocity target with CFG baked in (docs/math.md#cfg-target; TUT `enhance_target`).
    #    Teacher passes replay the RNG state of the student pass below (docs/math.md#rng-replay).
    rng_state = capture_rng_state(x.device)
    v_tilde = enhance_target(teacher, x_t, t, v, y, y_null, options.enhanced_ratio,
                             rng_state=rng_state)  # (B, ...)
    # Every student output and RCGM target the blocks read, batched by `tutorial_passes`
    F, rcgm = tutorial_passes(model, teacher, x_t, t, t_tgt, z, y, v_tilde, rng_state, options)

    # 1. L_base: any-step RCGM loss on (x_t, t -> t_tgt)  (paper Sec. 3; docs/math.md#rcgm-target;
    #    TUT `get_rcgm_target`)
    terms = {"loss_base": per_sample_loss(F["base"], rcgm["base"], options).mean()}

    # 2. Real velocity: flow matching on the diagonal, F(x_t, t, t) against v~
    #    (docs/math.md#real-velocity; TUT `training_step`, "real velocity" term)
    if options.realvel_weight > 0:
        terms["loss_realvel"] = per_sample_loss(F["realvel"], v_tilde, options).mean()
    if not twin_branch:
        return _weighted_sum(terms, options)

    # 3. One-step generator: x_fake = z - F(z, 1, 0); F keeps its grad for blocks 5 and 6
    #    (paper Sec. 3.1; docs/math.md#one-step-generator; TUT `forward(z, 1, 0)`)
    x_fake = one_step_sample(z, F["fake"])  # (B, ...) sg(x_fake)

    # 4. L_adv: flow matching on the fake trajectory at negative time, target z - sg(x_fake)
    #    (docs/math.md#adversarial-loss; TUT: same z as x_fake, coupled lines)
    if options.adversarial_weight > 0:
        terms["loss_adv"] = per_sample_loss(F["adv"], velocity_target(x_fake, z), options).mean()

    # 5. L_rectify (paper Eq. 9): ell(F_fake, sg(F_fake - delta_v)) with delta_v = v_fake - v_real
    #    (Eq. 7) at y_s = s z' + (1 - s) sg(x_fake)  (docs/math.md#rectify-loss; TUT `dist_match`)
    if options.rectify_weight > 0:
        delta_v = rectify_delta_v(model, x_fake, y, z=z_rect, s=s_rect, clip=options.rectify_clip)
        target_rectify = (F["fake"] - delta_v).detach()  # (B, ...)
        terms["loss_rectify"] = per_sample_loss(F["fake"], target_rectify, options).mean()

    # 6. Consistency 1 -> 0: the RCGM target of F(z, 1, 0), re-using v~ of (x_t, t)
    #    (docs/math.md#consistency; TUT's optional last term)
    if options.consistency_weight > 0:
        terms["loss_consistency"] = per_sample_loss(F["fake"], rcgm["fake"], options).mean()
    return _weighted_sum(terms, options)


def twin_branch_on(options: TwinFlowOptions) -> bool:
    """True when some fake-branch term (blocks 3-6 of `tutorial_losses`) is trained."""
    weights = (options.adversarial_weight, options.rectify_weight, options.consistency_weight)
    return options.adversarial_enabled and max(weights) > 0


def tutorial_passes(model, teacher, x_t, t, t_tgt, z, y, v_tilde, rng_state, options) -> tuple:
    """Student outputs F[name] and RCGM targets rcgm[name] of `tutorial_losses`, batched.

    Rows are independent, so batching changes no value, only the number of calls (TUT makes one call
    per term). Call 1 holds the rows that get an RCGM target: "base" (x_t, t, t_tgt) and, with the
    consistency term on, "fake" (z, 1, 0); one `rcgm_target` call serves both, so its teacher passes
    see exactly the rows of the student call whose RNG state they replay. Call 2 holds "realvel"
    (x_t, t, t) and "adv" (x_fake_t, -t, -t), x_fake_t = t z + (1 - t) sg(x_fake); when call 1 had
    no "fake" rows, they lead call 2 and the adv rows follow in a call of their own.
    """
    batch, ones, zeros = t.shape[0], torch.ones_like(t), torch.zeros_like(t)  # (B,)
    twin_branch = twin_branch_on(options)
    rcgm_rows = {"base": (x_t, t, t_tgt, y)}
    if twin_branch and options.consistency_weight > 0:
        rcgm_rows["fake"] = (z, ones, zeros, y)
    F = forward_rows(model, rcgm_rows)
    x_rows, t_rows, t_tgt_rows, y_rows = (torch.cat(column) if column[0] is not None else None
                                          for column in zip(*rcgm_rows.values()))
    targets = rcgm_target(teacher, x_rows, t_rows, t_tgt_rows, torch.cat(list(F.values())),
                          torch.cat([v_tilde] * len(F)), y_rows, order=options.estimate_order,
                          delta_t=options.delta_t, clamp=options.target_clamp, rng_state=rng_state)
    rcgm = dict(zip(F, targets.split(batch)))

    later = {"realvel": (x_t, t, t, y)} if options.realvel_weight > 0 else {}
    if twin_branch and "fake" not in F:
        F.update(forward_rows(model, {"fake": (z, ones, zeros, y), **later}))
        later = {}
    if twin_branch and options.adversarial_weight > 0:
        later["adv"] = (interpolate(one_step_sample(z, F["fake"]), z, t), -t, -t, y)
    F.update(forward_rows(model, later))
    return F, rcgm


def _weighted_sum(terms: dict, options: TwinFlowOptions) -> dict:
    """Add "loss" = sum of weight * term, in the order the terms were added."""
    weights = {"loss_base": 1.0, "loss_realvel": options.realvel_weight,
               "loss_adv": options.adversarial_weight, "loss_rectify": options.rectify_weight,
               "loss_consistency": options.consistency_weight}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms


# ---------- plain flow matching ----------
def flow_matching_loss(model, x: Tensor, y, *, z: Tensor, t: Tensor) -> dict[str, Tensor]:
    """Plain flow matching {"loss_fm", "loss"} = mean ell2(F(x_t, t, t), z - x), when TwinFlow is
    off.

    Shapes: x, z (B, ...); t (B,) in [0, 1]; y None or LongTensor (B,).
    docs/math.md#real-velocity."""
    check_batch(x)
    check_like("z", z, x.shape)
    check_times(x.shape[0], t=t)
    check_labels(x.shape[0], y=y)
    F = model(interpolate(x, z, t), t, t, y)  # (B, ...)
    loss_fm = l2_loss(F, velocity_target(x, z)).mean()
    return {"loss_fm": loss_fm, "loss": loss_fm}


def image_free_batch(model, z: Tensor, y) -> Tensor:
    """x = sg(z - F(z, 1, 0)): train on the model's own one-step samples (SRC `use_image_free`)."""
    ones = torch.ones(z.shape[0], device=z.device, dtype=z.dtype)  # (B,)
    with torch.no_grad():
        return invert(z, model(z, ones, torch.zeros_like(ones), y), ones)[0].detach()  # (B, ...)


# ---------- input sampling ----------
def _sample_gamma(concentration: float, n: int, generator: torch.Generator, device,
                  dtype) -> Tensor:
    """Gamma(concentration, 1) by Marsaglia & Tsang (2000) rejection; randomness from `generator`
    only."""
    boost = concentration < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1
    a = concentration + 1 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    draws = torch.empty(n, device=device, dtype=dtype)
    pending = torch.ones(n, dtype=torch.bool, device=device)
    while bool(pending.any()):
        rows = pending.nonzero().squeeze(1)
        normal = torch.randn(rows.numel(), generator=generator, device=device, dtype=dtype)
        uniform = torch.rand(rows.numel(), generator=generator, device=device, dtype=dtype)
        cube = (1 + c * normal) ** 3
        # accept when log U < x^2/2 + d - d v + d log v  (Marsaglia-Tsang test)
        log_v = cube.clamp_min(1e-30).log()
        accept = (cube > 0) & (uniform.log() < 0.5 * normal ** 2 + d - d * cube + d * log_v)
        draws[rows[accept]] = (d * cube)[accept]
        pending[rows[accept]] = False
    if boost:
        uniform = torch.rand(n, generator=generator, device=device, dtype=dtype)
        draws = draws * uniform ** (1.0 / concentration)
    return draws  # (n,)


def sample_beta(concentration1: float, concentration0: float, n: int, generator: torch.Generator,
                device=None, dtype=torch.float32) -> Tensor:
    """n draws of Beta(a, b) from `generator` (SRC `sample_beta` uses the hidden global RNG).

    Beta(1, 1) is drawn as U(0, 1) directly; otherwise Beta = G_a / (G_a + G_b)."""
    if not (concentration1 > 0 and concentration0 > 0):
        raise ValueError(f"Beta concentrations must be > 0, got ({concentration1}, "
                         f"{concentration0})")
    if concentration1 == 1 and concentration0 == 1:
        return torch.rand(n, generator=generator, device=device, dtype=dtype)  # (n,)
    gamma_a = _sample_gamma(concentration1, n, generator, device, dtype)
    gamma_b = _sample_gamma(concentration0, n, generator, device, dtype)
    return gamma_a / (gamma_a + gamma_b)  # (n,)


def _is_time_dist(time_dist) -> bool:
    if not isinstance(time_dist, (list, tuple)) or len(time_dist) != 3:
        return False
    a, b, scale = time_dist
    if not (is_real(a) and is_real(b) and is_real(scale)):
        return False
    return a > 0 and b > 0 and 0 < scale <= 1


def sample_time(n: int, time_dist, generator: torch.Generator, device=None,
                dtype=torch.float32) -> Tensor:
    """t = clamp(Beta(a, b), 0, 1) * scale, time_dist = (a, b, scale)  (SRC; (1, 1, 1) = U(0,
    1))."""
    if not _is_time_dist(time_dist):
        raise ValueError(f"time_dist must be (a, b, scale) with a, b > 0 and 0 < scale <= 1 "
                         f"(SRC time_dist_ctrl), got {time_dist!r}")
    a, b, scale = time_dist
    return sample_beta(a, b, n, generator, device, dtype).clamp(0, 1) * scale  # (n,)


def _check_sampler_inputs(x, generator, recipe, consistency_ratio, accumulation_index,
                          accumulation_steps) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    check_batch(x)
    if generator.device.type != x.device.type:
        raise ValueError(f"the generator lives on {generator.device} but x on {x.device}; create "
                         "it with torch.Generator(device=x.device)")
    if recipe not in RECIPE_NAMES:
        raise ValueError(f"recipe must be one of {RECIPE_NAMES}, got {recipe!r}")
    rule = OPTION_RULES["consistency_ratio"]
    if not rule[0](consistency_ratio, None):
        raise OptionError("consistency_ratio", consistency_ratio, rule[1])
    if not is_count(accumulation_steps):
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
    if not (is_count(accumulation_index, minimum=0) and accumulation_index < accumulation_steps):
        raise ValueError(f"accumulation_index must be an integer in [0, {accumulation_steps}), got "
                         f"{accumulation_index!r}")


def sample_training_inputs(x: Tensor, generator: torch.Generator, *, recipe: str = "tutorial",
                           group_proportions=(1, 1, 1, 1), time_dist=(1.0, 1.0, 1.0),
                           consistency_ratio: float = 1.0, accumulation_index: int = 0,
                           accumulation_steps: int = 1) -> dict[str, Tensor]:
    """Every random input of `twinflow_losses` (its keyword names: pass as `**inputs`), from
    `generator`.

    tutorial (TUT `prepare_inputs`, `dist_match`): z, z_rect ~ N(0, I) (B, ...); t ~ U(0, 1)
    (Beta(time_dist) * scale), t_tgt ~ U(0, t), s_rect ~ U(0, 1), each (B,). TUT has no group or
    consistency-ratio switch, so group_proportions and consistency_ratio must keep their defaults
    there. large: twinflow_large.sample_large_inputs, which also uses the accumulation position
    (micro-batch `accumulation_index` of `accumulation_steps`) when the micro-batch is smaller than
    the row groups.
    """
    _check_sampler_inputs(x, generator, recipe, consistency_ratio, accumulation_index,
                          accumulation_steps)
    if recipe == "large":
        return _large_recipe("inputs")(x, generator, group_proportions=group_proportions,
                                      time_dist=time_dist, consistency_ratio=consistency_ratio,
                                      accumulation_index=accumulation_index,
                                      accumulation_steps=accumulation_steps)
    if tuple(group_proportions) != (1, 1, 1, 1) or consistency_ratio != 1:
        raise ValueError("group_proportions and consistency_ratio only apply to recipe='large' "
                         "(the tutorial trains every term on every row); reset them or use "
                         "recipe='large'")
    batch, draw = x.shape[0], dict(generator=generator, device=x.device, dtype=x.dtype)
    t = sample_time(batch, time_dist, generator, x.device, x.dtype)  # (B,)
    t_tgt = t - torch.rand(batch, **draw) * consistency_ratio * t  # (B,) U(0, t)
    return {"z": torch.randn(x.shape, **draw), "t": t, "t_tgt": t_tgt,
            "z_rect": torch.randn(x.shape, **draw), "s_rect": torch.rand(batch, **draw)}

