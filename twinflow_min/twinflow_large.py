"""TwinFlow's large-scale recipe: one batch split into e2e / mul / any / adv row groups.

Paper: TwinFlow (arXiv:2512.05150), Sec. 3.3 (practical mixed loss) and the released large-model
recipe; derivation in docs/math.md#large-recipe, time convention in twinflow_min/transport.py.
Faithful to the official `src/methodes/twinflow/twinflow.py` ("SRC"): `prepare_inputs`,
`training_step`, `dist_match`, `l2_loss` / `barron_reweighting_loss` and the per-row tan time
weight. Builds on twinflow.py (options, RCGM target, CFG target, delta_v, per-sample losses) and
registers itself there as recipe="large".

Row groups (contiguous, in this order; SRC `probs = {"e2e": 1, "mul": 1, "any": 1, "adv": 1}`):
    e2e  t = 1, t_tgt = 0        one-step rows: RCGM target, and the rectify loss on their F(z, 1,
    0) mul  t_tgt in [0.95 t, t]    near-diagonal rows: mostly clipped flow matching (the real
    velocity) any  t_tgt ~ U(0, t)         any-step RCGM rows
    adv  t = t_tgt = -t0 < 0     fake-branch rows: x = z_fake - F(z_fake, 1, 0) (no grad), fresh z,
                                 target z - x_fake, time weight 1, no CFG, no RCGM
SRC loss = (1/B) sum_b omega_b ell_b + dist_match_cof mean_{e2e} ell(F, sg(F - clip(delta_v, +-1))).
Named terms, each group's share of the first sum (with unit weights they add up to it exactly):
    loss_consistency = (1/B) sum_{e2e},  loss_realvel = (1/B) sum_{mul},  loss_base = (1/B)
    sum_{any}, loss_adv = (1/B) sum_{adv},  loss_rectify = mean_{e2e} ell(F, sg(F - clip(delta_v))).
loss = consistency_weight loss_consistency + realvel_weight loss_realvel + loss_base
       + adversarial_weight loss_adv + rectify_weight dist_match_cof loss_rectify.
SRC's loss is Barron with the time weight always on: pass loss_type="barron", time_weighting=True.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from twinflow_min.checks import is_real
from twinflow_min.rng import capture_rng_state
from twinflow_min.transport import interpolate, invert, velocity_target
from twinflow_min.twinflow import (  # noqa: F401
    LARGE_RECIPE,
    NUM_GROUPS,
    TwinFlowOptions,
    barron_loss,
    check_cfg_labels,
    check_labels,
    check_like,
    check_times,
    enhance_target,
    l2_loss,
    per_sample_loss,
    rcgm_target,
    rectify_delta_v,
    sample_beta,
    sample_time,
    uses_rcgm_target,
)

E2E, MUL, ANY, ADV = 0, 1, 2, 3  # row-group ids, SRC `probs` key order
GROUP_NAMES = ("e2e", "mul", "any", "adv")
MUL_WINDOW = 0.05  # SRC `t_min = t - rand * t * min(0.05, cor)`: mul rows have t_tgt in [0.95 t, t]
TAN_WEIGHT_DIVISOR = 2.5  # SRC: `tan((1 - (|t| - |tt|)) * pi / 2.5) + 1`
SRC_RECTIFY_CLIP = 1.0  # SRC dist_match: `F_grad.to(float32).clamp(min=-1.0, max=1.0)`
TERM_OF_GROUP = {E2E: "loss_consistency", MUL: "loss_realvel", ANY: "loss_base", ADV: "loss_adv"}


# ---------- batch partition ----------
def _check_proportions(batch_size: int, proportions) -> list[float]:
    values = list(proportions) if isinstance(proportions, (list, tuple)) else []
    valid = len(values) == NUM_GROUPS and all(is_real(p) and p >= 0 for p in values)
    if not valid or sum(values) <= 0:
        raise ValueError(f"group proportions must be 4 non-negative numbers for {GROUP_NAMES} "
                         f"with a positive sum, got {proportions!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [float(p) for p in values]


def reference_partition(batch_size: int, proportions=(1, 1, 1, 1)) -> list[int]:
    """SRC-faithful split: round(B p_k / sum p) with Python's banker's rounding, last group = rest.

    Kept to show official bug B8: B = 6 with equal proportions gives [2, 2, 2, 0], no adv rows.
    """
    values = _check_proportions(batch_size, proportions)
    lengths = [int(round(batch_size * p / sum(values))) for p in values]
    lengths[-1] = batch_size - sum(lengths[:-1])
    return lengths


def partition_batch(batch_size: int, proportions=(1, 1, 1, 1)) -> list[int]:
    """Rows per group (e2e, mul, any, adv) by the largest-remainder method (fix of B8).

    Quotas q_k = B p_k / sum p get their floors, the leftover rows go to the largest fractional
    parts (ties: the earlier group). Then every group with p_k > 0 and no row takes one from the
    group with the largest surplus over its quota, so all positive groups get >= 1 row whenever B >=
    their number.
    """
    values = _check_proportions(batch_size, proportions)
    quotas = [batch_size * p / sum(values) for p in values]
    lengths = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (-(quotas[k] - lengths[k]), k))
    for k in by_remainder[: batch_size - sum(lengths)]:
        lengths[k] += 1
    positive = [k for k, p in enumerate(values) if p > 0]
    if batch_size < len(positive):
        raise ValueError(f"batch_size {batch_size} is smaller than the {len(positive)} row groups "
                         f"with a positive proportion {proportions!r}: raise the batch size or "
                         "zero some proportions")
    for k in positive:
        if lengths[k] == 0:
            donors = [j for j in range(len(lengths)) if lengths[j] > 1]
            donor = max(donors, key=lambda j: lengths[j] - quotas[j])
            lengths[donor] -= 1
            lengths[k] = 1
    return lengths


def micro_batch_groups(batch_size: int, proportions, accumulation_index: int = 0,
                       accumulation_steps: int = 1) -> list[int]:
    """The group id of each row of one micro-batch (docs/math.md#large-recipe).

    When the micro-batch B has at least as many rows as there are groups with a positive proportion,
    it is partitioned on its own (`partition_batch`). Otherwise the B * accumulation_steps rows of
    one optimizer step are partitioned, laid out in group order, and micro-batch k takes rows
    [k B, (k + 1) B): every optimizer step sees every group in its proportion (e.g. B = 1 with 4
    accumulation steps: e2e, mul, any, adv, one row each).
    """
    values = _check_proportions(batch_size, proportions)
    positive = sum(p > 0 for p in values)
    if batch_size >= positive:
        lengths = partition_batch(batch_size, proportions)
        return [k for k, n in enumerate(lengths) for _ in range(n)]
    rows = batch_size * accumulation_steps
    if rows < positive:
        raise ValueError(f"a micro-batch of {batch_size} row(s) x {accumulation_steps} "
                         f"accumulation step(s) = {rows} row(s) per optimizer step, fewer than "
                         f"the {positive} row groups with a positive proportion {proportions!r}: "
                         "raise the batch size or the gradient accumulation steps, or zero some "
                         "proportions")
    lengths = partition_batch(rows, proportions)
    step_groups = [k for k, n in enumerate(lengths) for _ in range(n)]
    start = accumulation_index * batch_size
    return step_groups[start: start + batch_size]


# ---------- time sampling ----------
def tan_time_weight(t: Tensor, t_tgt: Tensor) -> Tensor:
    """omega(t, t_tgt) = tan((1 - (|t| - |t_tgt|)) pi / 2.5) + 1 in [1, 4.0777]  (SRC).

    1 for the one-step pair (1, 0), 4.0777 on the diagonal; `large_recipe_losses` forces 1 on adv
    rows. docs/math.md#per-sample-losses.
    """
    return torch.tan((1 - (t.abs() - t_tgt.abs())) * math.pi / TAN_WEIGHT_DIVISOR) + 1  # (B,)


def sample_large_inputs(x: Tensor, generator: torch.Generator, *, group_proportions=(1, 1, 1, 1),
                        time_dist=(1.0, 1.0, 1.0), consistency_ratio: float = 1.0,
                        accumulation_index: int = 0, accumulation_steps: int = 1) -> dict:
    """Random inputs of the large recipe (SRC `prepare_inputs` + `dist_match` draws), from
    `generator`.

    groups: (B,) group ids in contiguous runs (`micro_batch_groups`); t: (B,) signed (adv rows carry
    -t0, the time the network sees); t_tgt: e2e 0, mul t - U t min(0.05, ratio), any t - U ratio t,
    adv -t0; z: (B, ...); z_fake: (n_adv, ...) noise for the adv rows' fake samples; z_rect: (n_e2e,
    ...), s_rect: (n_e2e,) U(0, 1) for delta_v on the e2e rows (SRC draws Beta(1, 1), the same law).
    """
    batch, draw = x.shape[0], dict(generator=generator, device=x.device, dtype=x.dtype)
    group_list = micro_batch_groups(batch, group_proportions, accumulation_index,
                                    accumulation_steps)
    groups = torch.tensor(group_list, dtype=torch.long, device=x.device)  # (B,)
    t = sample_time(batch, time_dist, generator, x.device, x.dtype)  # (B,)
    t_tgt = t - torch.rand(batch, **draw) * consistency_ratio * t  # (B,) any rows: U(0, t) at 1
    t_min = t - torch.rand(batch, **draw) * t * min(MUL_WINDOW, consistency_ratio)  # (B,) mul rows
    t = torch.where(groups == E2E, torch.ones_like(t), t)
    t_tgt = torch.where(groups == MUL, t_min, t_tgt)
    t_tgt = torch.where(groups == E2E, torch.zeros_like(t), t_tgt)
    t = torch.where(groups == ADV, -t, t)  # adv: the network sees (-t0, -t0); x_t is built with |t|
    t_tgt = torch.where(groups == ADV, t, t_tgt)
    n_e2e, n_adv = group_list.count(E2E), group_list.count(ADV)
    return {"z": torch.randn(x.shape, **draw), "t": t, "t_tgt": t_tgt, "groups": groups,
            "z_fake": torch.randn((n_adv, *x.shape[1:]), **draw),
            "z_rect": torch.randn((n_e2e, *x.shape[1:]), **draw),
            "s_rect": torch.rand(n_e2e, **draw)}


# ---------- the loss ----------
def _check_large_inputs(x, y, *, z, t, t_tgt, groups, z_fake, z_rect, s_rect, y_null,
                        options: TwinFlowOptions) -> None:
    """Every argument of the large recipe, checked once (the math below trusts them)."""
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch tensor (B, ...), got {getattr(x, 'shape', type(x))}")
    batch, sample = x.shape[0], tuple(x.shape[1:])
    check_like("z", z, x.shape)
    if not isinstance(groups, Tensor) or groups.dtype != torch.long or groups.shape != (batch,):
        raise ValueError(f"recipe='large' needs groups: a LongTensor ({batch},) of group ids 0..3 "
                         f"{GROUP_NAMES}; draw it with sample_training_inputs(x, generator, "
                         f"recipe='large')")
    if bool(((groups < E2E) | (groups > ADV)).any()):
        raise ValueError(f"groups must hold group ids 0..3 {GROUP_NAMES}")
    check_times(batch, t=t, t_tgt=t_tgt)
    adv, real = groups == ADV, groups != ADV
    if bool((t[adv] > 0).any()) or not torch.equal(t[adv], t_tgt[adv]):
        raise ValueError("adv rows must carry the fake-branch diagonal t = t_tgt = -t0 <= 0 "
                         "(sample_large_inputs)")
    if bool((t_tgt[real] < 0).any()) or bool((t_tgt[real] > t[real]).any()):
        raise ValueError("e2e / mul / any rows need 0 <= t_tgt <= t (the real trajectory; "
                         "sample_large_inputs)")
    n_e2e, n_adv = int((groups == E2E).sum()), int(adv.sum())
    expected = {"z_fake": (n_adv, *sample), "z_rect": (n_e2e, *sample), "s_rect": (n_e2e,)}
    for name, tensor in (("z_fake", z_fake), ("z_rect", z_rect), ("s_rect", s_rect)):
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != expected[name]:
            got = getattr(tensor, "shape", type(tensor).__name__)
            raise ValueError(f"{name} must have shape {expected[name]} (one row per "
                             f"{'adv' if name == 'z_fake' else 'e2e'} row), got {got}")
    check_labels(batch, y=y, y_null=y_null)
    check_cfg_labels(options, y, y_null)
    if n_adv > 0 and not options.adversarial_enabled:
        raise ValueError("adversarial_enabled=False but the batch has adv rows: set the adv group "
                         "proportion to 0 (the RCGM recipe is group_proportions=(1, 1, 1, 0)) or "
                         "enable the adversarial loss")


def _labels_of(y, rows: Tensor):
    """The class labels of a subset of rows (None stays None for an unconditional model)."""
    return None if y is None else y[rows]


def large_recipe_losses(model, teacher, x: Tensor, y, *, z: Tensor, t: Tensor, t_tgt: Tensor,
                        groups: Tensor, z_fake: Tensor, z_rect: Tensor, s_rect: Tensor, y_null=None,
                        options: TwinFlowOptions) -> dict[str, Tensor]:
    """Named terms and weighted "loss" of SRC `training_step` for the given draws (module
    docstring).

    Shapes as drawn by `sample_large_inputs`. A micro-batch may hold any subset of the groups (small
    micro-batches take the groups in turn); the normalisation stays SRC's 1/B over the micro-batch.
    consistency_ratio follows SRC's consistc_ratio: 0 turns the RCGM target off (every real row then
    regresses on v~), anything but 1 turns the rectify loss off. estimate_order 0 is SRC's
    flow-matching mode: no RCGM target, and only mul and adv rows count.
    """
    _check_large_inputs(x, y, z=z, t=t, t_tgt=t_tgt, groups=groups, z_fake=z_fake, z_rect=z_rect,
                        s_rect=s_rect, y_null=y_null, options=options)
    is_adv, real = groups == ADV, groups != ADV  # (B,)
    has_adv, has_real = bool(is_adv.any()), bool(real.any())

    # Inputs (SRC prepare_inputs): adv rows train on the student's own one-step samples (no grad,
    # fresh noise z_fake); x_t = |t| z + (1 - |t|) x, v = z - x  (docs/math.md#large-recipe)
    x_used = x
    if has_adv:
        ones = torch.ones(z_fake.shape[0], device=x.device, dtype=x.dtype)  # (n_adv,)
        with torch.no_grad():
            F_one_step = model(z_fake, ones, torch.zeros_like(ones), _labels_of(y, is_adv))
            x_fake = invert(z_fake, F_one_step, ones)[0]  # (n_adv, ...)
        x_used = x.clone()
        x_used[is_adv] = x_fake.detach()  # (B, ...) a copy: the caller's batch is not modified
    x_t = interpolate(x_used, z, t)  # (B, ...)
    v = velocity_target(x_used, z).detach()  # (B, ...)

    # Student passes: real rows in one call (the teacher replays its RNG state), adv rows apart
    x_t_r, t_r, t_tgt_r, y_r = x_t[real], t[real], t_tgt[real], _labels_of(y, real)
    groups_r = groups[real]  # (n_real,)
    rng_state = capture_rng_state(x.device)
    F_r = model(x_t_r, t_r, t_tgt_r, y_r) if has_real else None  # (n_real, ...)
    F_adv = model(x_t[is_adv], t[is_adv], t_tgt[is_adv], _labels_of(y, is_adv)) if has_adv else None

    rows = {}  # group id -> per-row losses
    if has_real:
        y_null_r = _labels_of(y_null, real)
        target_r = _real_row_targets(model, teacher, x_t_r, t_r, t_tgt_r, groups_r, F_r, v[real],
                                     y_r, y_null_r, rng_state, options)
        loss_r = per_sample_loss(F_r, target_r, options)  # (n_real,)
        if options.time_weighting:
            loss_r = loss_r * tan_time_weight(t_r, t_tgt_r).to(loss_r.dtype)
        rows = {k: loss_r[groups_r == k] for k in (E2E, MUL, ANY)}
    if has_adv:
        rows[ADV] = per_sample_loss(F_adv, v[is_adv], options)  # adv rows: time weight 1 (SRC)

    # Mean over the micro-batch (SRC: over mul | adv rows only when estimate_order = 0)
    counted = [MUL, ADV] if options.estimate_order == 0 else [E2E, MUL, ANY, ADV]
    denominator = sum(rows[k].numel() for k in counted if k in rows)
    terms = {TERM_OF_GROUP[k]: rows[k].sum() / denominator
             for k in counted if k in rows and rows[k].numel() > 0}

    # Rectify (paper Eq. 9, SRC dist_match): the e2e rows' one-step samples x_hat = z - F(z, 1, 0),
    # delta_v clipped (+-1 by default); only with consistency_ratio == 1 (SRC)
    e2e_r = groups_r == E2E if has_real else None
    rectify_on = options.adversarial_enabled and options.rectify_weight > 0
    if rectify_on and options.consistency_ratio == 1 and has_real and bool(e2e_r.any()):
        F_e2e = F_r[e2e_r]  # (n_e2e, ...) with grad
        x_hat = invert(x_t_r[e2e_r], F_e2e, t_r[e2e_r])[0].detach()  # (n_e2e, ...)
        clip = SRC_RECTIFY_CLIP if options.rectify_clip is None else options.rectify_clip
        y_e2e = _labels_of(y_r, e2e_r)
        delta_v = rectify_delta_v(model, x_hat, y_e2e, z=z_rect, s=s_rect, clip=clip)
        target_rectify = (F_e2e - delta_v).detach()  # (n_e2e, ...)
        terms["loss_rectify"] = per_sample_loss(F_e2e, target_rectify, options).mean()

    if not terms:
        raise ValueError("no loss term is active for this micro-batch: with estimate_order=0 "
                         "only mul and adv rows count (SRC); give them a positive group "
                         "proportion or raise estimate_order")
    weights = {"loss_consistency": options.consistency_weight,
               "loss_realvel": options.realvel_weight, "loss_base": 1.0,
               "loss_adv": options.adversarial_weight,
               "loss_rectify": options.rectify_weight * options.dist_match_cof}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms


def _real_row_targets(model, teacher, x_t_r, t_r, t_tgt_r, groups_r, F_r, v_r, y_r, y_null_r,
                      rng_state, options: TwinFlowOptions) -> Tensor:
    """Targets of the e2e / mul / any rows: v~ (CFG, SRC range mask), then the RCGM target of it."""
    # CFG on rows with lo < t < hi (strict: e2e rows at t = 1 are not enhanced, B9);
    # docs/math.md#cfg-target. enhance_around_null: v~ = F^-_null + w (F^-_cond - F^-_null)
    v_tilde = v_r  # (n_real, ...)
    low, high = options.enhanced_range
    enhance = (t_r > low) & (t_r < high)  # (n_real,)
    if options.enhanced_ratio != 0 and bool(enhance.any()):
        guided = enhance_target(teacher, x_t_r, t_r, v_tilde, y_r, y_null_r, options.enhanced_ratio,
                                rng_state=rng_state, around_null=options.enhance_around_null)
        v_tilde = torch.where(enhance.reshape(-1, *([1] * (x_t_r.dim() - 1))), guided, v_tilde)

    # RCGM target on every real row when e2e or any rows exist (SRC); rcgm_teacher_is_student: the
    # teacher passes use the student (SRC ema_decay_rate == 1); docs/math.md#rcgm-target
    has_rcgm_rows = bool(((groups_r == E2E) | (groups_r == ANY)).any())
    if not (uses_rcgm_target(options) and has_rcgm_rows):
        return v_tilde
    rcgm_teacher = model if options.rcgm_teacher_is_student else teacher
    return rcgm_target(rcgm_teacher, x_t_r, t_r, t_tgt_r, F_r, v_tilde, y_r,
                       order=options.estimate_order, delta_t=options.delta_t,
                       clamp=options.target_clamp, rng_state=rng_state)


LARGE_RECIPE.update(losses=large_recipe_losses, inputs=sample_large_inputs)
