"""TwinFlow's large-scale recipe: one batch split into e2e / mul / any / adv row blocks.

Paper: TwinFlow (arXiv:2512.05150), Sec. 3.3 (practical mixed loss) and the released large-model recipe.
Faithful to the official `src/methodes/twinflow/twinflow.py` ("SRC"): `prepare_inputs` (L120-183),
`training_step` (L296-366), `dist_match` (L278-294), `l2_loss` / `barron_reweighting_loss` (L83-104), with the
per-row time weight of L345-346; reference doc §2.3-2.11. Shared math (RCGM target, CFG target, delta_v,
per-sample losses) comes from `twinflow.py`.

Time convention: x_t = (1 - t) * x + t * z, t = 1 is noise, t = 0 is data, negative t is the fake (twin) branch.

Row blocks (contiguous, in this order; SRC `probs = {"e2e": 1, "mul": 1, "any": 1, "adv": 1}`):
    e2e  t = 1, t_tgt = 0        one-step rows; RCGM target, and the rectify loss on their F(z, 1, 0)
    mul  t_tgt in [0.95 t, t]    near-diagonal rows; mostly clipped flow matching (plays the real-velocity role)
    any  t_tgt ~ U(0, t)         any-step RCGM rows
    adv  t = t_tgt = -t0 < 0     fake-branch rows: x = x_fake = z_fake - F(z_fake, 1, 0) (no grad), fresh z,
                                 target z - x_fake, time weight 1, no CFG, no RCGM
SRC loss = (1/B) sum_b omega_b ell_b + dist_match_cof * mean_{e2e} ell(F, sg(F - clip(delta_v, +-1))).
Named terms (each block's share of the first sum, so that with unit weights they add up to it exactly):
    loss_consistency = (1/B) sum_{e2e} omega ell,  loss_realvel = (1/B) sum_{mul},  loss_base = (1/B) sum_{any},
    loss_adv = (1/B) sum_{adv},  loss_rectify = mean_{e2e} ell(F, sg(F - clip(delta_v))) (SRC L358-365).
loss = consistency_weight * loss_consistency + realvel_weight * loss_realvel + loss_base
       + adversarial_weight * loss_adv + rectify_weight * dist_match_cof * loss_rectify.
SRC's `loss_func` is Barron and its time weight always on: pass loss_type="barron", time_weighting=True for it.
frozen_teacher=True is SRC's `ema_decay_rate == 1`: the RCGM target uses the student, v~ = F^-_e + w (F^-_c - F^-_e).

Official bugs touched: B6 (adv rows never get RCGM passes here; SRC ran N wasted, NaN teacher passes for them),
B8 (SRC's partition gives B = 6 no adv rows: `partition_batch` fixes it, `reference_partition` shows it),
B9 (CFG mask `lo < t < hi` is strict, so e2e rows (t = 1) are never enhanced: kept, SRC-faithful).
Not mirrored: SRC's `consistc_ratio == 0` / `!= 1` switches inside the loss (use estimate_order=0 or
flow_matching_loss); consistency_ratio only shapes the t_tgt draws here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from twinflow_min.rng import capture_rng_state
from twinflow_min.transport import check_time, interpolate, invert, velocity_target
from twinflow_min.twinflow import (TwinFlowOptions, barron_loss, enhance_target, l2_loss,  # noqa: F401
                                   per_sample_loss, rcgm_target, rectify_delta_v)

E2E, MUL, ANY, ADV = 0, 1, 2, 3  # row-block ids, SRC `probs` key order
GROUP_NAMES = ("e2e", "mul", "any", "adv")
MUL_WINDOW = 0.05  # SRC `t_min = t - rand * t * min(0.05, cor)`: mul rows have t_tgt in [0.95 t, t]
TAN_WEIGHT_DIVISOR = 2.5  # SRC L345: `tan((1 - (|t| - |tt|)) * pi / 2.5) + 1`
SRC_RECTIFY_CLIP = 1.0  # SRC dist_match: `F_grad.to(float32).clamp(min=-1.0, max=1.0)`


# ------------------------------------------------------------------------------------------ batch partition
def _check_proportions(batch_size: int, proportions) -> list[float]:
    values = list(proportions) if isinstance(proportions, (list, tuple)) else []
    if len(values) != len(GROUP_NAMES) or any(isinstance(p, bool) or not isinstance(p, (int, float))
                                               or not math.isfinite(p) or p < 0 for p in values) or sum(values) <= 0:
        raise ValueError(f"group proportions must be 4 non-negative numbers for {GROUP_NAMES} with a positive sum, "
                         f"got {proportions!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [float(p) for p in values]


def reference_partition(batch_size: int, proportions=(1, 1, 1, 1)) -> list[int]:
    """SRC-faithful split (L132-135): round(B p_k / sum p) with Python's banker's rounding, last block = rest.

    Kept to show reference bug B8: B = 6 with equal proportions gives [2, 2, 2, 0], i.e. no adv rows.
    """
    values = _check_proportions(batch_size, proportions)
    lengths = [int(round(batch_size * p / sum(values))) for p in values]
    lengths[-1] = batch_size - sum(lengths[:-1])
    return lengths


def partition_batch(batch_size: int, proportions=(1, 1, 1, 1)) -> list[int]:
    """Rows per block (e2e, mul, any, adv) by the largest-remainder method (fix of B8).

    Quotas q_k = B p_k / sum p get their floors, the leftover rows go to the largest fractional parts (ties:
    the earlier block). Then every block with p_k > 0 and no row takes one from the block with the largest
    surplus over its quota, so all positive blocks get >= 1 row whenever B >= their number.
    """
    values = _check_proportions(batch_size, proportions)
    quotas = [batch_size * p / sum(values) for p in values]
    lengths = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (-(quotas[k] - lengths[k]), k))
    for k in by_remainder[: batch_size - sum(lengths)]:
        lengths[k] += 1
    positive = [k for k, p in enumerate(values) if p > 0]
    if batch_size < len(positive):
        raise ValueError(f"batch_size {batch_size} is smaller than the {len(positive)} row blocks with a positive "
                         f"proportion {proportions!r}: raise the batch size or zero some proportions")
    for k in positive:
        if lengths[k] == 0:
            donor = max((j for j in range(len(lengths)) if lengths[j] > 1), key=lambda j: lengths[j] - quotas[j])
            lengths[donor] -= 1
            lengths[k] = 1
    return lengths


# ------------------------------------------------------------------------------------------- time sampling
def tan_time_weight(t: Tensor, t_tgt: Tensor) -> Tensor:
    """omega(t, t_tgt) = tan((1 - (|t| - |t_tgt|)) pi / 2.5) + 1 in [1, 4.0777]  (SRC L345, reference G11).

    1 for the one-step pair (1, 0), 4.0777 on the diagonal; `large_recipe_losses` forces 1 on adv rows.
    """
    return torch.tan((1 - (t.abs() - t_tgt.abs())) * math.pi / TAN_WEIGHT_DIVISOR) + 1  # (B,)


def _sample_gamma(concentration: float, n: int, generator: torch.Generator, device, dtype) -> Tensor:
    """Gamma(concentration, 1) draws by Marsaglia & Tsang (2000) rejection, all randomness from `generator`."""
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
        # accept when log U < x^2/2 + d - d v + d log v  (Marsaglia-Tsang squeeze-free test)
        accept = (cube > 0) & (uniform.log() < 0.5 * normal ** 2 + d - d * cube + d * cube.clamp_min(1e-30).log())
        draws[rows[accept]] = (d * cube)[accept]
        pending[rows[accept]] = False
    if boost:
        draws = draws * torch.rand(n, generator=generator, device=device, dtype=dtype) ** (1.0 / concentration)
    return draws  # (n,)


def sample_beta(concentration1: float, concentration0: float, n: int, generator: torch.Generator,
                device=None, dtype=torch.float32) -> Tensor:
    """n draws of Beta(a, b) from `generator` (SRC `sample_beta`, which uses the hidden global RNG).

    Beta(1, 1) is drawn as U(0, 1) directly; otherwise Beta = G_a / (G_a + G_b) from two Gamma draws.
    """
    if not (concentration1 > 0 and concentration0 > 0):
        raise ValueError(f"Beta concentrations must be > 0, got ({concentration1}, {concentration0})")
    if concentration1 == 1 and concentration0 == 1:
        return torch.rand(n, generator=generator, device=device, dtype=dtype)  # (n,)
    gamma_a = _sample_gamma(concentration1, n, generator, device, dtype)
    gamma_b = _sample_gamma(concentration0, n, generator, device, dtype)
    return gamma_a / (gamma_a + gamma_b)  # (n,)


def sample_time(n: int, time_dist, generator: torch.Generator, device=None, dtype=torch.float32) -> Tensor:
    """t = clamp(Beta(a, b), 0, 1) * scale with time_dist = (a, b, scale)  (SRC L126; default U(0, 1))."""
    values = list(time_dist) if isinstance(time_dist, (list, tuple)) else []
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
            or not (values[0] > 0 and values[1] > 0 and 0 < values[2] <= 1):
        raise ValueError(f"time_dist must be (a, b, scale) with a, b > 0 and 0 < scale <= 1 (SRC time_dist_ctrl), "
                         f"got {time_dist!r}")
    return sample_beta(values[0], values[1], n, generator, device, dtype).clamp(0, 1) * values[2]  # (n,)


def sample_large_inputs(x: Tensor, generator: torch.Generator, *, group_proportions=(1, 1, 1, 1),
                        time_dist=(1.0, 1.0, 1.0), consistency_ratio: float = 1.0) -> dict[str, Tensor]:
    """Random inputs of the large recipe (SRC `prepare_inputs` + `dist_match` draws), all from `generator`.

    groups: (B,) block ids in contiguous blocks; t: (B,) signed (adv rows carry -t0, the time the network sees);
    t_tgt: e2e 0, mul t - U t min(0.05, cor), any t - U cor t, adv -t0; z: (B, ...);
    z_fake: (n_adv, ...) noise for the adv rows' fake samples; z_rect: (n_e2e, ...), s_rect: (n_e2e,) U(0, 1)
    for delta_v on the e2e rows (SRC draws s ~ Beta(1, 1), the same law).
    """
    batch, draw = x.shape[0], dict(generator=generator, device=x.device, dtype=x.dtype)
    lengths = partition_batch(batch, group_proportions)
    groups = torch.repeat_interleave(torch.arange(len(GROUP_NAMES), device=x.device),
                                     torch.tensor(lengths, device=x.device))  # (B,)
    t = sample_time(batch, time_dist, generator, x.device, x.dtype)  # (B,)
    t_tgt = t - torch.rand(batch, **draw) * consistency_ratio * t  # (B,) any rows: U(0, t) for ratio 1
    t_min = t - torch.rand(batch, **draw) * t * min(MUL_WINDOW, consistency_ratio)  # (B,) mul rows
    t = torch.where(groups == E2E, torch.ones_like(t), t)
    t_tgt = torch.where(groups == E2E, torch.zeros_like(t), torch.where(groups == MUL, t_min, t_tgt))
    t = torch.where(groups == ADV, -t, t)  # adv: the network sees (-t0, -t0); x_t is built with |t|
    t_tgt = torch.where(groups == ADV, t, t_tgt)
    n_e2e, n_adv = lengths[E2E], lengths[ADV]
    return {"z": torch.randn(x.shape, **draw), "t": t, "t_tgt": t_tgt, "groups": groups,
            "z_fake": torch.randn((n_adv, *x.shape[1:]), **draw),
            "z_rect": torch.randn((n_e2e, *x.shape[1:]), **draw), "s_rect": torch.rand(n_e2e, **draw)}


# ------------------------------------------------------------------------------------------------- losses
def _check_large_inputs(x, y, z, t, t_tgt, groups, z_fake, z_rect, s_rect) -> None:
    batch = x.shape[0] if isinstance(x, Tensor) and x.dim() >= 2 else None
    if batch is None or not isinstance(z, Tensor) or z.shape != x.shape:
        raise ValueError(f"x must be a batch (B, ...) and z the same shape; got {getattr(x, 'shape', x)} and "
                         f"{getattr(z, 'shape', z)}")
    if not isinstance(groups, Tensor) or groups.dtype != torch.long or groups.shape != (batch,) \
            or bool(((groups < E2E) | (groups > ADV)).any()):
        raise ValueError(f"recipe='large' needs groups: a LongTensor ({batch},) of block ids 0..3 "
                         f"{GROUP_NAMES}; draw it with sample_training_inputs(x, generator, recipe='large')")
    for name, tensor in (("t", t), ("t_tgt", t_tgt)):
        if check_time(tensor, name).shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(tensor.shape)}")
    adv, real = groups == ADV, groups != ADV
    if bool((t[adv] > 0).any()) or not torch.equal(t[adv], t_tgt[adv]):
        raise ValueError("adv rows must carry the fake-branch diagonal t = t_tgt = -t0 <= 0 (sample_large_inputs)")
    if bool((t_tgt[real] < 0).any()) or bool((t_tgt[real] > t[real]).any()):
        raise ValueError("e2e / mul / any rows need 0 <= t_tgt <= t (the real trajectory; sample_large_inputs)")
    counts = {"z_fake": int(adv.sum()), "z_rect": int((groups == E2E).sum())}
    for name, tensor in (("z_fake", z_fake), ("z_rect", z_rect)):
        if not isinstance(tensor, Tensor) or tensor.shape != (counts[name], *x.shape[1:]):
            raise ValueError(f"{name} must have shape {(counts[name], *x.shape[1:])} (one row per "
                             f"{'adv' if name == 'z_fake' else 'e2e'} row), got {getattr(tensor, 'shape', tensor)}")
    if not isinstance(s_rect, Tensor) or s_rect.shape != (counts["z_rect"],):
        raise ValueError(f"s_rect must have shape ({counts['z_rect']},) (one per e2e row), got "
                         f"{getattr(s_rect, 'shape', s_rect)}")
    if y is not None and (not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (batch,)):
        raise ValueError(f"y must be None or a LongTensor of shape ({batch},)")


def _labels_of(y, rows: Tensor):
    """The class labels of a subset of rows (None stays None for an unconditional model)."""
    return None if y is None else y[rows]


def large_recipe_losses(model, teacher, x: Tensor, y, *, z: Tensor, t: Tensor, t_tgt: Tensor, groups: Tensor,
                        z_fake: Tensor, z_rect: Tensor, s_rect: Tensor, y_null=None,
                        options: TwinFlowOptions) -> dict[str, Tensor]:
    """Named terms and weighted "loss" of the SRC `training_step` for the given draws (see the module docstring)."""
    _check_large_inputs(x, y, z, t, t_tgt, groups, z_fake, z_rect, s_rect)
    opts = options
    is_adv, real = groups == ADV, groups != ADV  # (B,)
    if not bool(real.any()):
        raise ValueError("recipe='large' needs at least one e2e, mul or any row; check group_proportions")
    if bool(is_adv.any()) and not opts.adversarial_enabled:
        raise ValueError("adversarial_enabled=False but the batch has adv rows: set the adv group proportion to 0 "
                         "(the RCGM recipe is group_proportions=(1, 1, 1, 0)) or enable the adversarial loss")

    # SRC prepare_inputs L163-173: adv rows train on the student's own one-step samples (no grad, fresh noise)
    x_used = x
    if bool(is_adv.any()):
        ones = torch.ones(z_fake.shape[0], device=x.device, dtype=x.dtype)  # (n_adv,)
        with torch.no_grad():
            x_fake = invert(z_fake, model(z_fake, ones, torch.zeros_like(ones), _labels_of(y, is_adv)), ones)[0]
        x_used = x.clone()
        x_used[is_adv] = x_fake.detach()  # (B, ...) a copy: the caller's batch is not modified
    # SRC L176-178: x_t = |t| z + (1 - |t|) x, v = z - x (adv rows: the fake line)
    x_t = interpolate(x_used, z, t)  # (B, ...)
    v = velocity_target(x_used, z).detach()  # (B, ...)

    # student passes: real rows in one call (its RNG state is replayed for the teacher passes), adv rows apart
    x_t_r, t_r, t_tgt_r, y_r, groups_r = x_t[real], t[real], t_tgt[real], _labels_of(y, real), groups[real]
    rng_state = capture_rng_state(x.device)
    F_r = model(x_t_r, t_r, t_tgt_r, y_r)  # (n_real, ...)
    F_adv = model(x_t[is_adv], t[is_adv], t_tgt[is_adv], _labels_of(y, is_adv)) if bool(is_adv.any()) else None

    # SRC L316-325: CFG on real rows with lo < t < hi (strict: e2e rows at t = 1 are not enhanced, B9)
    v_tilde = v[real]  # (n_real, ...)
    low, high = opts.enhanced_range
    enhance = (t_r > low) & (t_r < high)  # (n_real,)
    if opts.enhanced_ratio != 0 and bool(enhance.any()):
        if y_null is None:
            raise ValueError(f"enhanced_ratio={opts.enhanced_ratio} needs class labels y and null labels y_null; an "
                             f"unconditional model has no CFG branch: set enhanced_ratio=0")
        # SRC: v~ = v + w (F^-_c - F^-_e); with a frozen teacher (ema_decay_rate == 1): v~ = F^-_e + w (F^-_c - F^-_e)
        guided = enhance_target(teacher, x_t_r, t_r, v_tilde, y_r, y_null[real], opts.enhanced_ratio,
                                rng_state=rng_state, frozen_teacher=opts.frozen_teacher)  # (n_real, ...)
        v_tilde = torch.where(enhance.reshape(-1, *([1] * (x.dim() - 1))), guided, v_tilde)

    # SRC L327-341: RCGM target on every real row when e2e or any rows exist; the student itself when frozen
    use_rcgm = opts.estimate_order >= 1 and bool(((groups_r == E2E) | (groups_r == ANY)).any())
    target_r = v_tilde
    if use_rcgm:
        target_r = rcgm_target(model if opts.frozen_teacher else teacher, x_t_r, t_r, t_tgt_r, F_r, v_tilde, y_r,
                               order=opts.estimate_order, delta_t=opts.delta_t, clamp=opts.target_clamp,
                               rng_state=rng_state)

    # SRC L344-355: omega_b ell_b, then the mean over all B rows (over mul | adv rows when estimate_order = 0)
    loss_r = per_sample_loss(F_r, target_r, opts)  # (n_real,)
    if opts.time_weighting:
        loss_r = loss_r * tan_time_weight(t_r, t_tgt_r).to(loss_r.dtype)
    rows = {E2E: loss_r[groups_r == E2E], MUL: loss_r[groups_r == MUL], ANY: loss_r[groups_r == ANY]}
    if F_adv is not None:
        rows[ADV] = per_sample_loss(F_adv, v[is_adv], opts)  # adv rows: weight forced to 1 (SRC L346)
    counted = [MUL, ADV] if opts.estimate_order == 0 else [E2E, MUL, ANY, ADV]
    denominator = sum(rows[k].numel() for k in counted if k in rows)
    names = {E2E: "loss_consistency", MUL: "loss_realvel", ANY: "loss_base", ADV: "loss_adv"}
    terms = {names[k]: rows[k].sum() / denominator for k in counted if k in rows and rows[k].numel() > 0}

    # SRC L358-365: rectify the e2e rows' one-step samples x_hat = z - F(z, 1, 0); delta_v clipped (+-1 default)
    e2e_r = groups_r == E2E
    if opts.adversarial_enabled and opts.rectify_weight > 0 and bool(e2e_r.any()):
        F_e2e = F_r[e2e_r]  # (n_e2e, ...) with grad
        x_hat = invert(x_t_r[e2e_r], F_e2e, t_r[e2e_r])[0].detach()  # (n_e2e, ...)
        clip = SRC_RECTIFY_CLIP if opts.rectify_clip is None else opts.rectify_clip
        delta_v = rectify_delta_v(model, x_hat, _labels_of(y_r, e2e_r), z=z_rect, s=s_rect, clip=clip)
        terms["loss_rectify"] = per_sample_loss(F_e2e, (F_e2e - delta_v).detach(), opts).mean()

    if not terms:
        raise ValueError("no loss term is active: with estimate_order=0 only mul and adv rows count (SRC); "
                         "give them a positive group proportion or raise estimate_order")
    weights = {"loss_consistency": opts.consistency_weight, "loss_realvel": opts.realvel_weight, "loss_base": 1.0,
               "loss_adv": opts.adversarial_weight,
               "loss_rectify": opts.rectify_weight * opts.dist_match_cof}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms
