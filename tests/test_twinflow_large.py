"""Tests for twinflow_min/twinflow_large.py: the SRC large-scale recipe (row blocks, Barron loss,
tan weight).

Time convention: see twinflow_min/transport.py; the math is docs/math.md#large-recipe. Golden cases
G10, G11, G13, G18 (derived in their tests' comments), float64, tolerance 1e-10.
`ref_src_*` is an independent re-implementation of the official SRC `prepare_inputs` (given draws) +
`training_step` written in SRC's own structure (one student call for the
whole batch, RCGM on every row then masked, in-place row edits), never by calling twinflow_min; the
literal golden values were produced by it.
"""

import math

import pytest
import torch
from test_twinflow import TOL, SinglePoint, TinyNet, col, ref_forward, ref_rcgm_target

from twinflow_min.twinflow import twinflow_losses
from twinflow_min.twinflow_large import (
    ADV,
    E2E,
    MUL,
    barron_loss,
    l2_loss,
    partition_batch,
    reference_partition,
    sample_beta,
    sample_large_inputs,
    tan_time_weight,
)

F64 = torch.float64


# ---------- reference (SRC) ----------
def ref_barron(pred, target, alpha=1.0, c=1e-3):
    mse = ((pred - target) ** 2).flatten(1).mean(dim=1)
    weight = (
        torch.ones_like(mse)
        if abs(alpha - 2) < 1e-5
        else (mse / (c**2 + 1e-8) / abs(alpha - 2) + 1) ** ((alpha - 2) / 2)
    )
    return mse * weight.detach() / c


def ref_l2(pred, target):
    return ((pred - target) ** 2).flatten(1).mean(dim=1)


def ref_src_rows(
    student,
    teacher,
    x,
    y,
    y_null,
    z,
    t,
    t_tgt,
    groups,
    z_fake,
    z_rect,
    s_rect,
    *,
    loss_fn,
    weighting,
    enr,
    frozen,
    N=2,
    eng=(0.0, 1.0),
    clamp=1.0,
):
    """SRC training_step for given draws: per-row weighted losses (B,) and the e2e rectify loss
    (n_e2e,)."""
    view = lambda u: u.view(-1, *[1] * (x.dim() - 1))  # noqa: E731
    adv, e2e, tt = groups == 3, groups == 0, t_tgt
    x = x.clone()
    with torch.no_grad():  # prepare_inputs: adv rows take the student's one-step samples
        ones = torch.ones(int(adv.sum()), dtype=x.dtype)
        x[adv] = ref_forward(student, z_fake, ones, ones * 0, y[adv])[0]
    t_pos = t.abs()
    x_t = z * view(t_pos) + x * (1 - view(t_pos))
    target = z - x
    F = student(x_t, t, tt, y)  # one call for all rows
    if enr != 0:
        with torch.no_grad():
            refer_v, predc_v = teacher(x_t, t, t, y_null), teacher(x_t, t, t, y)
        idx = (t < eng[1]) & (t > eng[0]) & ~adv
        target_ = target.clone()
        target[idx] = target[idx] + enr * (predc_v - refer_v)[idx]
        if frozen:
            target[idx] = (target - target_)[idx] + refer_v[idx]
    if ((groups == 0) | (groups == 2)).any():
        rcgm = ref_rcgm_target(
            student if frozen else teacher, F, target, x_t, t, tt, y, N, clamp
        )  # NaN: adv rows
        target[~adv] = rcgm[~adv]
    weight = (
        torch.tan((1 - (t.abs() - tt.abs())) * math.pi / 2.5) + 1
        if weighting
        else torch.ones_like(t)
    )
    weight[adv] = 1
    rows = loss_fn(F, target) * weight
    x_e2e = (x_t - view(t_pos) * F)[e2e]  # x_wc_t of the base forward
    with torch.no_grad():
        x_s = z_rect * view(s_rect) + x_e2e * (1 - view(s_rect))
        F_grad = (
            student(x_s, -s_rect, -s_rect, y[e2e]) - student(x_s, s_rect, s_rect, y[e2e])
        ).clamp(-1, 1)
    rectify = loss_fn(F[e2e], (F[e2e] - F_grad).detach())
    return rows, rectify


def golden_large_inputs():
    """B = 8: two rows per block (e2e, mul, any, adv); mul row 3 is near-diagonal (t - t_tgt <
    0.01)."""
    x = torch.linspace(-1, 1, 24, dtype=F64).view(8, 3)
    return dict(
        x=x,
        y=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
        y_null=torch.full((8,), 3),
        z=torch.cos(torch.arange(24, dtype=F64)).view(8, 3),
        t=col(1.0, 1.0, 0.7, 0.4, 0.8, 0.5, -0.6, -0.3),
        t_tgt=col(0.0, 0.0, 0.68, 0.395, 0.1, 0.25, -0.6, -0.3),
        groups=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
        z_fake=torch.sin(torch.arange(6, dtype=F64)).view(2, 3),
        z_rect=torch.sin(0.7 * torch.arange(6, dtype=F64)).view(2, 3),
        s_rect=col(0.3, 0.8),
    )


def ref_terms(student, teacher, inputs, **kwargs):
    rows, rectify = ref_src_rows(student, teacher, **inputs, **kwargs)
    groups, batch = inputs["groups"], rows.numel()
    names = {0: "loss_consistency", 1: "loss_realvel", 2: "loss_base", 3: "loss_adv"}
    terms = {name: rows[groups == k].sum() / batch for k, name in names.items()}
    terms["loss_rectify"] = rectify.mean()
    return terms, rows.mean() + 0.5 * rectify.mean()  # SRC total with dist_match_cof 0.5


def call_large(student, teacher, inputs, **options):
    inputs = dict(inputs)
    x, y = inputs.pop("x"), inputs.pop("y")
    return twinflow_losses(student, teacher, x, y, **inputs, recipe="large", **options)


# ---------- G10, G11, G13 ----------
@pytest.mark.parametrize(
    "d, expected",
    [
        (0.0, 0.0),
        (1e-3, 0.0007088636),
        (0.1, 0.1004936814),
        (1.0, 1.0049870546),
        (2.0, 2.0099748705),
    ],
)
def test_g10_barron_values(d, expected):
    # G10: alpha = 1, c = 1e-3, every element differs by d: m = d^2, loss = m (m/(c^2 + 1e-8) +
    # 1)^(-1/2) / c
    pred = torch.full((1, 4), d, dtype=F64)
    assert barron_loss(pred, torch.zeros_like(pred)).item() == pytest.approx(expected, abs=1e-10)


def test_g10_barron_alpha_two_and_gradient():
    # alpha = 2: loss = m / c = 0.01 / 1e-3 = 10; gradient with the detached weight (d = 0.5, 4
    # elements):
    # d loss / d p_j = (2 d / 4) w / c with w = (0.25 / (1e-6 + 1e-8) + 1)^(-1/2) -> 0.5024927660
    # each
    pred = torch.full((1, 4), 0.1, dtype=F64)
    assert barron_loss(pred, torch.zeros_like(pred), alpha=2.0).item() == pytest.approx(
        10.0, abs=1e-10
    )
    pred = torch.full((1, 4), 0.5, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(barron_loss(pred, torch.zeros_like(pred)).sum(), pred)
    torch.testing.assert_close(grad, torch.full_like(pred, 0.5024927660), rtol=0, atol=1e-10)


def test_per_sample_losses_keep_float64_and_upcast_half():
    # l2: per-sample mean of squares; float64 stays exact, bfloat16 is computed in float32 and cast
    # back
    pred = torch.tensor([[1.0, 3.0], [0.5, 0.5]], dtype=F64)
    torch.testing.assert_close(l2_loss(pred, torch.zeros_like(pred)), col(5.0, 0.25), **TOL)
    half = l2_loss(pred.bfloat16(), torch.zeros(2, 2, dtype=torch.bfloat16))
    assert (
        half.dtype == torch.bfloat16
        and barron_loss(pred.bfloat16(), pred.bfloat16() * 0).dtype == torch.bfloat16
    )


@pytest.mark.parametrize(
    "t, t_tgt, expected",
    [
        (1.0, 0.0, 1.0),
        (0.5, 0.5, 4.0776835372),
        (0.8, 0.3, 1.7265425280),
        (0.5, 0.0, 1.7265425280),
        (-0.6, -0.6, 4.0776835372),
    ],
)
def test_g11_tan_time_weight(t, t_tgt, expected):
    # G11: tan((1 - (|t| - |t_tgt|)) pi / 2.5) + 1 (hand values: tan(0.4 pi) + 1 = 4.0776835372,
    # tan(0.2 pi) + 1)
    assert tan_time_weight(col(t), col(t_tgt)).item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(
    "batch, reference, fixed",
    [
        (4, [1, 1, 1, 1], [1, 1, 1, 1]),
        (5, [1, 1, 1, 2], [2, 1, 1, 1]),
        (6, [2, 2, 2, 0], [2, 2, 1, 1]),
        (7, [2, 2, 2, 1], [2, 2, 2, 1]),
        (8, [2, 2, 2, 2], [2, 2, 2, 2]),
        (10, [2, 2, 2, 4], [3, 3, 2, 2]),
        (16, [4, 4, 4, 4], [4, 4, 4, 4]),
    ],
)
def test_g13_partition(batch, reference, fixed):
    # G13: SRC banker's rounding (B = 6 -> no adv rows, bug B8) vs largest remainder (ties to the
    # earlier block)
    assert reference_partition(batch, (1, 1, 1, 1)) == reference
    assert partition_batch(batch, (1, 1, 1, 1)) == fixed


def test_partition_gives_every_positive_block_a_row():
    for batch in range(3, 40):
        for proportions in [
            (1, 1, 1, 1),
            (100, 1, 1, 1),
            (1, 0, 5, 1),
            (0, 1, 0, 0),
            (1, 1, 1, 0),
            (3, 2, 7, 0.5),
        ]:
            positive = [p > 0 for p in proportions]
            if batch < sum(positive):
                with pytest.raises(ValueError, match="smaller than"):
                    partition_batch(batch, proportions)
                continue
            lengths = partition_batch(batch, proportions)
            assert sum(lengths) == batch
            assert all((n >= 1) if p else (n == 0) for n, p in zip(lengths, positive)), (
                batch,
                proportions,
                lengths,
            )
    assert partition_batch(100, (100, 1, 1, 1)) == [97, 1, 1, 1]  # quotas 97.09, 0.97 x 3
    with pytest.raises(ValueError, match="4 non-negative"):
        partition_batch(8, (1, 1, 1))


# ---------- sampling ----------
def test_sample_large_inputs_blocks_and_times():
    x = torch.zeros(64, 3, dtype=F64)
    inputs = sample_large_inputs(x, torch.Generator().manual_seed(0))
    groups, t, t_tgt = inputs["groups"], inputs["t"], inputs["t_tgt"]
    assert groups.tolist() == [0] * 16 + [1] * 16 + [2] * 16 + [3] * 16
    assert bool((t[groups == E2E] == 1).all()) and bool((t_tgt[groups == E2E] == 0).all())
    mul, anyrows, adv = groups == MUL, groups == 2, groups == ADV
    assert bool(((t_tgt[mul] <= t[mul]) & (t_tgt[mul] >= 0.95 * t[mul])).all())
    assert bool(((t_tgt[anyrows] <= t[anyrows]) & (t_tgt[anyrows] >= 0)).all())
    assert bool((t[adv] <= 0).all()) and torch.equal(t[adv], t_tgt[adv])
    assert (
        inputs["z_fake"].shape == (16, 3)
        and inputs["z_rect"].shape == (16, 3)
        and inputs["s_rect"].shape == (16,)
    )
    assert torch.isfinite(
        call_large(TinyNet(3, 1), TinyNet(3, 2), {"x": x, "y": None, **inputs})["loss"]
    )


def test_beta_sampling_moments_and_generator_only():
    # Beta(2, 5): mean 2/7, variance ab / ((a+b)^2 (a+b+1)) = 10/392; Beta(0.5, 0.5): mean 1/2,
    # variance 1/8
    before = torch.get_rng_state()
    for a, b in [(2.0, 5.0), (0.5, 0.5)]:
        draws = sample_beta(a, b, 40000, torch.Generator().manual_seed(1), dtype=F64)
        mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
        assert draws.mean().item() == pytest.approx(mean, abs=0.01)
        assert draws.var().item() == pytest.approx(var, rel=0.05)
        assert bool(((draws >= 0) & (draws <= 1)).all())
    assert torch.equal(before, torch.get_rng_state())


# ---------- losses ----------
# (loss_type, time_weighting, enhanced_ratio, SRC ema_decay 1, target_clamp) -> ref_terms literals
GOLDEN_LARGE = {
    ("l2", False, 0.0, False, 1.0): {  # e2e residuals saturate: 2 rows * 1.0 / 8
        "loss_consistency": 0.25,
        "loss_realvel": 0.0954936721947236,
        "loss_base": 0.208681692497719,
        "loss_adv": 0.0646049253593877,
        "loss_rectify": 0.0371416623924541,
    },
    ("barron", True, 0.0, False, 1.0): {
        "loss_consistency": 0.251246763648439,
        "loss_realvel": 0.604814251855829,
        "loss_base": 0.419618092841518,
        "loss_adv": 0.125664593675625,
        "loss_rectify": 0.163779281068249,
    },
    (
        "barron",
        True,
        0.8,
        False,
        1.0,
    ): {  # CFG never touches e2e rows (strict t < 1, B9) nor adv rows
        "loss_consistency": 0.251246763648439,
        "loss_realvel": 0.802163546569523,
        "loss_base": 0.422118179369148,
        "loss_adv": 0.125664593675625,
        "loss_rectify": 0.163779281068249,
    },
    ("l2", True, 0.8, True, 1.0): {
        "loss_consistency": 0.25,
        "loss_realvel": 0.153189398591761,
        "loss_base": 0.194567766676359,
        "loss_adv": 0.0646049253593877,
        "loss_rectify": 0.0371416623924541,
    },
    ("barron", True, 0.8, False, 1000.0): {  # unclipped RCGM residuals
        "loss_consistency": 15.1000821887788,
        "loss_realvel": 0.910233037143912,
        "loss_base": 6.74523739505368,
        "loss_adv": 0.125664593675625,
        "loss_rectify": 0.163779281068249,
    },
}


@pytest.mark.parametrize("loss_type, weighting, ratio, frozen, clamp", list(GOLDEN_LARGE))
def test_large_terms_golden_and_equal_to_src(loss_type, weighting, ratio, frozen, clamp):
    inputs, student, teacher = golden_large_inputs(), TinyNet(3, seed=1), TinyNet(3, seed=2)
    loss_fn = ref_barron if loss_type == "barron" else ref_l2
    reference, total = ref_terms(
        student,
        teacher,
        inputs,
        loss_fn=loss_fn,
        weighting=weighting,
        enr=ratio,
        frozen=frozen,
        clamp=clamp,
    )
    # SRC's ema_decay_rate == 1 does both things the reference `frozen` does: the two switches
    terms = call_large(
        student,
        teacher,
        inputs,
        loss_type=loss_type,
        time_weighting=weighting,
        enhanced_ratio=ratio,
        rcgm_teacher_is_student=frozen,
        enhance_around_null=frozen,
        target_clamp=clamp,
    )
    golden = GOLDEN_LARGE[(loss_type, weighting, ratio, frozen, clamp)]
    assert set(terms) == set(golden) | {"loss"}
    for name, literal in golden.items():
        assert reference[name].item() == pytest.approx(literal, rel=1e-12, abs=1e-10), (
            name
        )  # literal = reference
        assert terms[name].item() == pytest.approx(literal, rel=1e-12, abs=1e-10), name
    assert terms["loss"].item() == pytest.approx(
        total.item(), rel=1e-12, abs=1e-10
    )  # == SRC training_step loss
    got = torch.autograd.grad(terms["loss"], list(student.parameters()))
    expected = torch.autograd.grad(total, list(student.parameters()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_large_weights_rectify_clip_and_no_teacher_passes_on_adv_rows():
    inputs, student = golden_large_inputs(), TinyNet(3, seed=1)

    class Counting(TinyNet):
        def forward(self, x_t, t, t_tgt, y=None):
            self.rows = getattr(self, "rows", []) + [(t < 0).sum().item()]
            return super().forward(x_t, t, t_tgt, y)

    teacher = Counting(3, seed=2)
    full = call_large(student, teacher, inputs, enhanced_ratio=0.5)
    assert teacher.rows == [0, 0, 0, 0]  # 2 CFG + N = 2 RCGM passes, never on an adv row (B6)
    weighted = call_large(
        student,
        teacher,
        inputs,
        enhanced_ratio=0.5,
        consistency_weight=2.0,
        realvel_weight=0.5,
        adversarial_weight=3.0,
        rectify_weight=4.0,
        dist_match_cof=0.25,
    )
    expected = (
        2 * full["loss_consistency"]
        + 0.5 * full["loss_realvel"]
        + full["loss_base"]
        + 3 * full["loss_adv"]
        + 4 * 0.25 * full["loss_rectify"]
    )
    assert weighted["loss"].item() == pytest.approx(expected.item(), abs=1e-12)
    # |delta_v| < 1 for this network, so the SRC clip (default) and no clip agree; a clip of 1e-3
    # binds: every element of the target gap is +-1e-3, so loss_rectify = (1e-3)^2 exactly (l2)
    unclipped = call_large(student, teacher, inputs, rectify_clip=math.inf)
    assert unclipped["loss_rectify"].item() == pytest.approx(full["loss_rectify"].item(), abs=1e-14)
    tight = call_large(student, teacher, inputs, rectify_clip=1e-3)
    assert tight["loss_rectify"].item() == pytest.approx(1e-6, abs=1e-16)


def test_large_fixed_point_g18():
    # G18: single-point data with its exact model -> l2 loss exactly 0, Barron <= 1e-24
    inputs = golden_large_inputs()
    inputs["x"] = torch.full_like(inputs["x"], 0.3)
    for loss_type, bound in (("l2", 1e-24), ("barron", 1e-24)):
        terms = call_large(
            SinglePoint(0.3),
            SinglePoint(0.3),
            inputs,
            loss_type=loss_type,
            time_weighting=True,
            enhanced_ratio=0.5,
        )
        assert all(abs(v.item()) <= bound for v in terms.values()), terms


def test_large_bad_inputs_and_no_mutation():
    inputs, model = golden_large_inputs(), TinyNet(3, seed=1)
    x_before = inputs["x"].clone()
    call_large(model, model, inputs)
    assert torch.equal(inputs["x"], x_before)  # adv rows are replaced in a copy
    with pytest.raises(ValueError, match="adversarial_enabled=False"):
        call_large(model, model, inputs, adversarial_enabled=False)
    with pytest.raises(ValueError, match="needs groups"):
        call_large(model, model, {**inputs, "groups": None})
    with pytest.raises(ValueError, match="z_fake must have shape"):
        call_large(model, model, {**inputs, "z_fake": inputs["z_fake"][:1]})
    with pytest.raises(ValueError, match="adv rows"):
        call_large(model, model, {**inputs, "t": inputs["t"].abs()})
    with pytest.raises(ValueError, match="0 <= t_tgt <= t"):
        call_large(
            model,
            model,
            {
                **inputs,
                "t_tgt": torch.where(inputs["groups"] == 2, inputs["t"] + 0.1, inputs["t_tgt"]),
            },
        )
    with pytest.raises(ValueError, match="y_null"):
        call_large(model, model, {**inputs, "y_null": None}, enhanced_ratio=0.5)
