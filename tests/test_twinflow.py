"""Tests for twinflow_min/twinflow.py: RCGM target, CFG target, delta_v, the tutorial losses, input
sampling.

Time convention: see twinflow_min/transport.py; the math is docs/math.md. Golden cases G2-G9 and
G18 (each derived in its test's comment) run in float64 with tolerance 1e-10 on tiny test doubles
with the model signature F(x_t, t, t_tgt, y). `ref_*` below is an independent re-implementation of
the official tutorial formulas (TUT `forward`, `multi_fwd`, `get_rcgm_target`, `training_step`) in
the official code's own structure (division form of cof_r, x_hat / z_hat re-noising), never by
calling twinflow_min; the literal golden values were produced by these `ref_*` functions.
"""

import math

import pytest
import torch
from torch import nn

from twinflow_min.twinflow import (
    TwinFlowOptions,
    enhance_target,
    flow_matching_loss,
    image_free_batch,
    l2_loss,
    rcgm_target,
    rectify_delta_v,
    sample_training_inputs,
    twinflow_losses,
)

F64 = torch.float64
TOL = dict(rtol=0, atol=1e-10)


# ---------- test doubles ----------
def col(*values):
    return torch.tensor(values, dtype=F64)


class Const:
    """F = c everywhere."""

    def __init__(self, c):
        self.c, self.calls = c, 0

    def __call__(self, x, t, t_tgt, y=None):
        self.calls += 1
        return torch.full_like(x, self.c)


class LinT:
    """F = a * t (broadcast over the sample)."""

    def __init__(self, a=1.0):
        self.a = a

    def __call__(self, x, t, t_tgt, y=None):
        return self.a * t.view(-1, *[1] * (x.dim() - 1)).expand_as(x).to(x.dtype)


def identity_model(x, t, t_tgt, y=None):
    """F = x."""
    return x.clone()


class SinglePoint:
    """Exact average velocity of the single-point data set {b}: F(x, t, r) = (x - b) / |t| (both
    branches)."""

    def __init__(self, b):
        self.b = b

    def __call__(self, x, t, t_tgt, y=None):
        return (x - self.b) / t.abs().view(-1, *[1] * (x.dim() - 1))


class GaussianMeanVelocity:
    """Exact mean velocity of N(mu, sigma^2) data (docs/math.md#rcgm-target): flow map
    Phi_{t->r}."""

    def __init__(self, mu=0.0, sigma=1.0):
        self.mu, self.sigma = mu, sigma

    def scale(self, u):
        return torch.sqrt(u**2 + (1 - u) ** 2 * self.sigma**2)

    def __call__(self, x, t, r, y=None):
        t, r = t.view(-1, 1), r.view(-1, 1)
        mu = self.mu
        phi = (1 - r) * mu + self.scale(r) / self.scale(t) * (x - (1 - t) * mu)
        diag = -mu + (t - (1 - t) * self.sigma**2) / self.scale(t) ** 2 * (x - (1 - t) * mu)
        return torch.where(t == r, diag, (x - phi) / torch.where(t == r, torch.ones_like(t), t - r))


class TwoPoint:
    """G8 double: F = x - b on the real branch (t > 0), x - a on the fake branch (t < 0)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __call__(self, x, t, t_tgt, y=None):
        fake = (t < 0).view(-1, *[1] * (x.dim() - 1))
        return torch.where(fake, x - self.a, x - self.b)


class TinyNet(nn.Module):
    """A seeded 2-layer float64 MLP on (x, t, t_tgt) plus a class embedding (id num_classes = null
    class)."""

    def __init__(self, dim, seed, hidden=16, num_classes=3):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = nn.Linear(dim + 2, hidden)
        self.labels = nn.Embedding(num_classes + 1, hidden)
        self.out = nn.Linear(hidden, dim)
        self.double()

    def forward(self, x_t, t, t_tgt, y=None):
        h = self.hidden(
            torch.cat([x_t.flatten(1), t[:, None].to(x_t.dtype), t_tgt[:, None].to(x_t.dtype)], 1)
        )
        if y is not None:
            h = h + self.labels(y)
        return self.out(torch.tanh(h)).view_as(x_t)


# ---------- reference (TUT formulas) ----------
def ref_l2(pred, target):
    return ((pred - target) ** 2).flatten(1).mean(dim=1)


def ref_forward(model, x_t, t, tt, y):
    F = model(x_t, t, tt, y)
    ta = t.abs().view(-1, *[1] * (x_t.dim() - 1))
    return x_t - ta * F, x_t + (1 - ta) * F, F  # x_hat, z_hat, F  (dent = -1 algebra)


def ref_rcgm_target(teacher, F, target, x_t, t, tt, y, N, clamp=1.0):
    """TUT get_rcgm_target + multi_fwd, literally (NaN when t == tt, bug B6)."""
    view = lambda u: u.view(-1, *[1] * (x_t.dim() - 1))  # noqa: E731
    with torch.no_grad():
        t_m = (t - 0.01).clamp_min(tt)
        x_c = x_t - target * 0.01
        pred = 0
        ts = [t_m * (1 - i / N) + tt * (i / N) for i in range(N + 1)]
        for t_c, t_n in zip(ts[:-1], ts[1:]):
            hx, hz, F_c = ref_forward(teacher, x_c, t_c, t_n, y)
            x_c = view(t_n) * hz + (1 - view(t_n)) * hx
            pred = pred + F_c * view(t_c - t_n)
        mask = view(t < tt + 0.01)
        cof_l = torch.where(mask, torch.ones_like(view(t)), 100 * view(t - tt))
        cof_r = torch.where(mask, 1 / view(t - tt), torch.ones_like(view(t)) * 100)
        residual = (F * cof_l - pred * cof_r) - target
        return F.detach() - residual.clamp(-clamp, clamp)


def ref_tut_terms(student, teacher, x, y, y_null, z, t, tt, z2, s, enr, N=2, clamp=1.0):
    """TUT TwinFlow.training_step (using_twinflow=True) for given draws; returns the five unweighted
    terms."""
    view = lambda u: u.view(-1, *[1] * (x.dim() - 1))  # noqa: E731
    x_t = z * view(t) + x * (1 - view(t))
    target = z - x
    F = student(x_t, t, tt, y)
    if enr > 0:
        with torch.no_grad():
            refer_v = teacher(x_t, t, t, y_null)
            predc_v = teacher(x_t, t, t, y)
        target = target + enr * (predc_v - refer_v)
    terms = {
        "loss_base": ref_l2(F, ref_rcgm_target(teacher, F, target, x_t, t, tt, y, N, clamp)).mean()
    }
    terms["loss_realvel"] = ref_l2(student(x_t, t, t, y), target).mean()
    ones = torch.ones_like(t)
    x_fake, _, F_fake = ref_forward(student, z, ones, ones * 0, y)
    x_t_fake = z * view(t) + x_fake.detach() * (1 - view(t))
    terms["loss_adv"] = ref_l2(student(x_t_fake, -t, -t, y), z - x_fake.detach()).mean()
    with torch.no_grad():
        x_s = z2 * view(s) + x_fake * (1 - view(s))
        F_grad = student(x_s, -s, -s, y) - student(x_s, s, s, y)
    terms["loss_rectify"] = ref_l2(F_fake, (F_fake - F_grad).detach()).mean()
    cm_target = ref_rcgm_target(teacher, F_fake, target, z, ones, ones * 0, y, N, clamp)
    terms["loss_consistency"] = ref_l2(F_fake, cm_target).mean()
    return terms


def golden_inputs():
    """Deterministic float64 inputs (B = 4, samples of shape (2, 3)); row 3 is in the near
    branch."""
    x = torch.linspace(-1, 1, 24, dtype=F64).view(4, 2, 3)
    return dict(
        x=x,
        y=torch.tensor([0, 1, 2, 1]),
        y_null=torch.full((4,), 3),
        z=torch.cos(torch.arange(24, dtype=F64)).view(4, 2, 3),
        t=col(0.9, 0.6, 0.35, 0.05),
        t_tgt=col(0.2, 0.3, 0.345, 0.0),
        z_rect=torch.sin(0.7 * torch.arange(24, dtype=F64)).view(4, 2, 3),
        s_rect=col(0.3, 0.5, 0.7, 0.9),
    )


def call_losses(student, teacher, inputs, **options):
    inputs = dict(inputs)
    x, y = inputs.pop("x"), inputs.pop("y")
    return twinflow_losses(student, teacher, x, y, **inputs, **options)


# ---------- RCGM golden cases ----------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize(
    "c, v, t, r, expected",
    [
        (0.5, 1.0, 0.5, 0.2, 1.0),
        (3.0, 1.0, 0.5, 0.2, 2.0),
        (-2.0, 0.3, 1.0, 0.0, -1.0),  # far branch
        (0.5, 1.0, 0.5, 0.495, 1.0),
        (3.0, 1.0, 0.3, 0.295, 2.0),
    ],
)  # near branch
def test_g2_const_model(order, c, v, t, r, expected):
    # G2: D = (t_mid - r) c, so R = c - v in both branches; target = c - clip(c - v, +-1)
    x_t = torch.full((1, 3), 0.7, dtype=F64)
    target = rcgm_target(
        Const(c), x_t, col(t), col(r), torch.full_like(x_t, c), torch.full_like(x_t, v), order=order
    )
    torch.testing.assert_close(target, torch.full_like(x_t, expected), **TOL)


@pytest.mark.parametrize(
    "order, v, expected", [(1, 1.0, 0.71), (2, 1.0, -0.5), (3, 1.0, -0.5), (1, 0.5, 0.21)]
)
def test_g3_linear_in_t(order, v, expected):
    # G3, F = t, t = 0.5, r = 0.2: N=1: D = 0.29 * 0.49 = 0.1421, R = (0.15 - 0.1421)/0.01 - 1 =
    # -0.21 -> 0.71;
    # N=2: D = 0.145 (0.49 + 0.345) = 0.121075, R = 1.8925 -> clip 1 -> -0.5; v = 0.5: R = 0.29 ->
    # 0.21
    x_t = torch.full((1, 1), 0.3, dtype=F64)
    F = torch.full_like(x_t, 0.5)
    target = rcgm_target(LinT(), x_t, col(0.5), col(0.2), F, torch.full_like(x_t, v), order=order)
    assert target.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("order, expected", [(1, 2.0), (2, 0.090575)])
def test_g4_identity_model(order, expected):
    # G4, F = x, x_t = 1, v = 3, t = 0.5, r = 0.2: y0 = 0.97; N=1: D = 0.97 * 0.29, R = -1.13 ->
    # clip -> 2.0; N=2: D = 0.97 (1 - 0.855^2) = 0.26090575, R = 0.909425 -> 1 - 0.909425 = 0.090575
    x_t = torch.ones(1, 1, dtype=F64)
    target = rcgm_target(
        identity_model, x_t, col(0.5), col(0.2), x_t.clone(), torch.full_like(x_t, 3.0), order=order
    )
    assert target.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("order", [1, 2, 4])
def test_g5_single_point_exact_model_has_zero_residual(order):
    # G5: b = 0.3, z = 1.7, exact F = (x - b)/|t| = z - b = 1.4 on the line; the target equals F (R
    # = 0)
    b, z = 0.3, 1.7
    t, r = col(0.8, 1.0, 0.5, 0.02), col(0.3, 0.0, 0.495, 0.0)
    x_t = (t * z + (1 - t) * b).view(4, 1)
    F = SinglePoint(b)(x_t, t, r)
    torch.testing.assert_close(F, torch.full_like(F, 1.4), **TOL)
    target = rcgm_target(SinglePoint(b), x_t, t, r, F, torch.full_like(F, z - b), order=order)
    torch.testing.assert_close(target, torch.full_like(F, 1.4), rtol=0, atol=3e-14)


@pytest.mark.parametrize("order", [1, 2])
def test_g6_gaussian_mean_velocity(order):
    # G6 (values of the exact flow map above): N(0, 1) data, x = 0.5, z = 1, t = 0.8, r = 0.3 -> x_t
    # = 0.9, v = 0.5
    model = GaussianMeanVelocity()
    x_t, v = torch.full((1, 1), 0.9, dtype=F64), torch.full((1, 1), 0.5, dtype=F64)
    F = model(x_t, col(0.8), col(0.3))
    assert F.item() == pytest.approx(0.1376133387, abs=1e-10)
    target = rcgm_target(model, x_t, col(0.8), col(0.3), F, v, order=order)
    assert target.item() == pytest.approx(-0.1272593579, abs=1e-10)
    # (t, r) = (1, 0), x_t = z = 1, N = 2: F = 0, target = -0.4999236119
    x_1 = torch.ones(1, 1, dtype=F64)
    F_1 = model(x_1, col(1.0), col(0.0))
    assert F_1.item() == pytest.approx(0.0, abs=1e-12)
    assert rcgm_target(model, x_1, col(1.0), col(0.0), F_1, v, order=2).item() == pytest.approx(
        -0.4999236119, abs=1e-10
    )


def test_g7_diagonal_rows_get_the_flow_matching_target_not_nan():
    # G7 / B6: the official formula is NaN at t == t_tgt (1/(t - tt) * 0); we return sg(F) - clip(F
    # - v)
    x_t = torch.full((2, 2), 0.4, dtype=F64)
    F, v = torch.full_like(x_t, 0.5), torch.full_like(x_t, 2.0)
    t = col(0.6, 0.6)
    assert torch.isnan(ref_rcgm_target(Const(0.5), F, v, x_t, t, t, None, 2)).all()
    teacher = Const(0.5)
    target = rcgm_target(teacher, x_t, t, t.clone(), F, v)
    torch.testing.assert_close(
        target, torch.full_like(x_t, 1.5), **TOL
    )  # 0.5 - clip(0.5 - 2) = 1.5
    assert teacher.calls == 0  # no teacher pass is wasted on rows with t == t_tgt
    # mixed batch: one diagonal row, one far row; the far row still follows G2 (c = 0.5, v = 2 ->
    # 1.5)
    target = rcgm_target(teacher, x_t, col(0.6, 0.9), col(0.6, 0.1), F, v, order=2)
    assert torch.isfinite(target).all() and teacher.calls == 2
    torch.testing.assert_close(target, torch.full_like(x_t, 1.5), **TOL)


def test_rcgm_target_matches_reference_formula_on_a_network():
    # reference parity on a tiny network, far and near rows, (B, 2, 3) samples
    inputs, teacher = golden_inputs(), TinyNet(6, seed=2)
    F = TinyNet(6, seed=1)(inputs["x"], inputs["t"], inputs["t_tgt"], inputs["y"])
    for order in (1, 2, 3):
        expected = ref_rcgm_target(
            teacher, F, inputs["z"], inputs["x"], inputs["t"], inputs["t_tgt"], inputs["y"], order
        )
        got = rcgm_target(
            teacher,
            inputs["x"],
            inputs["t"],
            inputs["t_tgt"],
            F,
            inputs["z"],
            inputs["y"],
            order=order,
        )
        torch.testing.assert_close(got, expected, **TOL)
        assert not got.requires_grad


def test_rcgm_target_clamp_and_delta_options():
    # G2 with clamp 0.25: target = c - clip(c - v, +-0.25) = 3 - 0.25; any delta_t keeps R = c - v
    # for const F
    x_t = torch.zeros(1, 2, dtype=F64)
    target = rcgm_target(
        Const(3.0),
        x_t,
        col(0.5),
        col(0.1),
        torch.full_like(x_t, 3.0),
        torch.ones_like(x_t),
        clamp=0.25,
        delta_t=0.05,
    )
    torch.testing.assert_close(target, torch.full_like(x_t, 2.75), **TOL)


# ---------- CFG and delta_v ----------
def test_enhance_target_formula_and_ratio_zero_skips_teacher():
    class LabelShift:  # F = x + y: the CFG difference is y - y_null
        calls = 0

        def __call__(self, x, t, t_tgt, y=None):
            LabelShift.calls += 1
            return x + y.view(-1, 1).to(x.dtype)

    x_t, v = torch.zeros(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64)
    y, y_null = torch.tensor([1, 2]), torch.tensor([3, 3])
    got = enhance_target(LabelShift(), x_t, col(0.5, 0.2), v, y, y_null, 0.5)
    # v~ = 1 + 0.5 (y - 3) = [0, 0.5]
    torch.testing.assert_close(got, torch.tensor([[0.0] * 3, [0.5] * 3], dtype=F64), **TOL)
    assert LabelShift.calls == 2
    assert enhance_target(LabelShift(), x_t, col(0.5, 0.2), v, None, None, 0.0) is v
    assert LabelShift.calls == 2  # missing null labels are refused at the door: test_bad_inputs_...


def test_g8_delta_v_two_point_model():
    # G8: fake branch x - a, real branch x - b -> delta_v = (x - a) - (x - b) = b - a = 0.7; SRC
    # clip: 2 -> 1
    x_fake, z = torch.linspace(-1, 1, 6, dtype=F64).view(3, 2), torch.ones(3, 2, dtype=F64)
    s = col(0.2, 0.5, 0.9)
    delta_v = rectify_delta_v(TwoPoint(-0.4, 0.3), x_fake, None, z=z, s=s)
    torch.testing.assert_close(delta_v, torch.full_like(x_fake, 0.7), **TOL)
    clipped = rectify_delta_v(TwoPoint(-1.0, 1.0), x_fake, None, z=z, s=s, clip=1.0)
    torch.testing.assert_close(clipped, torch.full_like(x_fake, 1.0), **TOL)


def test_g9_rectify_moves_the_fake_sample_toward_the_data():
    # G9: generator F(z, 1, 0) = z - theta (x_fake = theta = -1); real data {b = 1}: real branch (x
    # - b)/s,
    # fake branch (x - theta)/s. delta_v = (b - theta)/s = 4 at s = 0.5 and dL/dtheta = -2 delta_v /
    # d = -8 < 0
    theta = torch.tensor(-1.0, dtype=F64, requires_grad=True)

    def model(x, t, t_tgt, y=None):
        s = t.abs().view(-1, 1)
        one_step = (t == 1) & (t_tgt == 0)
        branch = torch.where((t < 0).view(-1, 1), (x - theta.detach()) / s, (x - 1.0) / s)
        return torch.where(one_step.view(-1, 1), x - theta, branch)

    z = torch.full((1, 1), 0.5, dtype=F64)
    terms = twinflow_losses(
        model,
        model,
        torch.ones(1, 1, dtype=F64),
        None,
        z=z,
        t=col(0.5),
        t_tgt=col(0.2),
        z_rect=torch.full_like(z, 0.3),
        s_rect=col(0.5),
        realvel_weight=0.0,
        adversarial_weight=0.0,
        consistency_weight=0.0,
    )
    (grad,) = torch.autograd.grad(terms["loss_rectify"], theta)
    assert grad.item() == pytest.approx(-8.0, abs=1e-10)


def test_rectify_gradient_is_two_delta_v_over_d():
    # dL_rect / dF_fake = 2 delta_v / (B d) for L2 with a detached target (paper Eq. 9;
    # docs/math.md#rectify-loss)
    batch, dim = 2, 3
    F_fake = torch.linspace(-0.5, 0.5, batch * dim, dtype=F64).view(batch, dim).requires_grad_(True)
    real = TwoPoint(-0.4, 0.3)

    def model(
        x, t, t_tgt, y=None
    ):  # F(z, 1, 0) = F_fake (its own call: consistency is off), else G8 double
        return F_fake if bool(((t == 1) & (t_tgt == 0)).all()) else real(x, t, t_tgt)

    z = torch.zeros(batch, dim, dtype=F64)
    terms = twinflow_losses(
        model,
        model,
        torch.zeros(batch, dim, dtype=F64),
        None,
        z=z,
        t=col(0.5, 0.6),
        t_tgt=col(0.1, 0.2),
        z_rect=torch.ones_like(z),
        s_rect=col(0.3, 0.8),
        realvel_weight=0.0,
        adversarial_weight=0.0,
        consistency_weight=0.0,
    )
    (grad,) = torch.autograd.grad(terms["loss_rectify"], F_fake)
    torch.testing.assert_close(grad, torch.full_like(F_fake, 2 * 0.7 / (batch * dim)), **TOL)
    assert terms["loss_rectify"].item() == pytest.approx(0.49, abs=1e-12)  # mean of 0.7^2


# ---------- the tutorial loss ----------
# (enhanced_ratio, target_clamp) -> ref_tut_terms(TinyNet(6, 1), TinyNet(6, 2), golden_inputs())
GOLDEN_TUT = {
    (0.0, 1.0): {
        "loss_base": 0.821286615940341,
        "loss_realvel": 1.35557243671486,
        "loss_adv": 0.0323041873891152,
        "loss_rectify": 0.0396997028456404,
        "loss_consistency": 1.0,
    },  # (z, 1 -> 0) residual saturates
    (0.5, 1.0): {
        "loss_base": 0.86013460816072,
        "loss_realvel": 1.33310010106343,
        "loss_adv": 0.0323041873891152,
        "loss_rectify": 0.0396997028456404,
        "loss_consistency": 1.0,
    },
    (0.5, 1000.0): {
        "loss_base": 384.752105242788,
        "loss_realvel": 1.33310010106343,
        "loss_adv": 0.0323041873891152,
        "loss_rectify": 0.0396997028456404,
        "loss_consistency": 3487.30893074156,
    },  # unclipped R
}


@pytest.mark.parametrize("ratio, clamp", list(GOLDEN_TUT))
def test_tutorial_terms_golden_and_equal_to_reference(ratio, clamp):
    inputs = golden_inputs()
    student, teacher = TinyNet(6, seed=1), TinyNet(6, seed=2)
    reference = ref_tut_terms(
        student,
        teacher,
        inputs["x"],
        inputs["y"],
        inputs["y_null"],
        inputs["z"],
        inputs["t"],
        inputs["t_tgt"],
        inputs["z_rect"],
        inputs["s_rect"],
        ratio,
        clamp=clamp,
    )
    terms = call_losses(student, teacher, inputs, enhanced_ratio=ratio, target_clamp=clamp)
    golden = GOLDEN_TUT[(ratio, clamp)]
    assert set(terms) == set(golden) | {"loss"}
    for name, literal in golden.items():
        assert reference[name].item() == pytest.approx(literal, rel=1e-13, abs=1e-10), (
            name
        )  # literal = reference
        assert terms[name].item() == pytest.approx(literal, rel=1e-13, abs=1e-10), name
    # weighted sum with unit weights == the official tutorial loss
    assert terms["loss"].item() == pytest.approx(
        sum(reference.values()).item(), rel=1e-13, abs=1e-10
    )
    # same gradients as the reference, whose targets are detached exactly where TUT detaches them
    got = torch.autograd.grad(terms["loss"], list(student.parameters()))
    expected = torch.autograd.grad(sum(reference.values()), list(student.parameters()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOL)


def test_term_weights_and_switches():
    inputs, student, teacher = golden_inputs(), TinyNet(6, seed=1), TinyNet(6, seed=2)
    full = call_losses(student, teacher, inputs)
    weighted = call_losses(
        student,
        teacher,
        inputs,
        adversarial_weight=2.0,
        rectify_weight=0.5,
        consistency_weight=3.0,
        realvel_weight=0.25,
    )
    expected = (
        full["loss_base"]
        + 0.25 * full["loss_realvel"]
        + 2.0 * full["loss_adv"]
        + 0.5 * full["loss_rectify"]
        + 3.0 * full["loss_consistency"]
    )
    assert weighted["loss"].item() == pytest.approx(expected.item(), abs=1e-12)
    rcgm_only = call_losses(student, teacher, inputs, adversarial_enabled=False)
    assert set(rcgm_only) == {"loss_base", "loss_realvel", "loss"}
    assert rcgm_only["loss"].item() == pytest.approx(
        (full["loss_base"] + full["loss_realvel"]).item(), abs=1e-12
    )
    no_consistency = call_losses(
        student, teacher, inputs, consistency_weight=0.0
    )  # F_fake from the 2nd call
    assert "loss_consistency" not in no_consistency
    for name in ("loss_base", "loss_adv", "loss_rectify", "loss_realvel"):
        assert no_consistency[name].item() == pytest.approx(full[name].item(), abs=1e-12)


def test_base_target_is_detached_when_the_residual_saturates():
    # const student F = P with P - v = 2 > clamp: target = sg(P) - 1, so dL_base/dP = 2 * 1 / (B d)
    # per element.
    # A target that kept its graph would give 0 here (F - target = clip(R) is flat in P).
    P = torch.full((2, 3), 3.0, dtype=F64, requires_grad=True)

    def model(x, t, t_tgt, y=None):
        return P.expand_as(x)

    x, z = torch.zeros(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64)  # v = 1
    terms = twinflow_losses(
        model,
        model,
        x,
        None,
        z=z,
        t=col(0.7, 0.4),
        t_tgt=col(0.1, 0.39),
        z_rect=z,
        s_rect=col(0.5, 0.5),
        adversarial_enabled=False,
        realvel_weight=0.0,
    )
    (grad,) = torch.autograd.grad(terms["loss_base"], P)
    torch.testing.assert_close(grad, torch.full_like(P, 2.0 / 6), **TOL)


@pytest.mark.parametrize("adversarial, ratio", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_g18_fixed_point_single_point_data(adversarial, ratio):
    # G18: single-point data b with its exact model: every residual vanishes, total loss 0
    b = 0.3
    x = torch.full((4, 2), b, dtype=F64)
    inputs = dict(
        z=torch.linspace(-1.5, 1.5, 8, dtype=F64).view(4, 2),
        t=col(0.9, 0.5, 0.2, 0.05),
        t_tgt=col(0.1, 0.495, 0.0, 0.02),
        z_rect=torch.ones(4, 2, dtype=F64),
        s_rect=col(0.3, 0.6, 0.8, 1.0),
    )
    terms = twinflow_losses(
        SinglePoint(b),
        SinglePoint(b),
        x,
        torch.zeros(4, dtype=torch.long),
        y_null=torch.ones(4, dtype=torch.long),
        adversarial_enabled=adversarial,
        enhanced_ratio=ratio,
        **inputs,
    )
    for name, value in terms.items():
        assert abs(value.item()) < 1e-24, name


def test_model_call_count_of_the_default_recipe():
    # passes per step (N = 2): student 3 calls (base+fake, realvel+adv, delta_v pair), teacher N
    # calls
    class Counting(TinyNet):
        def forward(self, *args):
            self.rows = getattr(self, "rows", []) + [args[0].shape[0]]
            return super().forward(*args)

    student, teacher = Counting(6, seed=1), Counting(6, seed=2)
    call_losses(student, teacher, golden_inputs())
    assert student.rows == [8, 8, 8] and teacher.rows == [8, 8]


# ---------- other helpers ----------
def test_flow_matching_loss_and_image_free_batch():
    # F = c: loss_fm = mean (c - (z - x))^2 ; image-free x = z - F(z, 1, 0) = z - c
    x, z = torch.zeros(2, 2, dtype=F64), torch.full((2, 2), 2.0, dtype=F64)
    terms = flow_matching_loss(Const(0.5), x, None, z=z, t=col(0.3, 0.7))
    assert set(terms) == {"loss_fm", "loss"} and terms["loss"].item() == pytest.approx(
        2.25, abs=1e-12
    )
    torch.testing.assert_close(
        image_free_batch(Const(0.5), z, None), torch.full_like(z, 1.5), **TOL
    )


def test_sample_training_inputs_tutorial():
    x = torch.zeros(64, 2, dtype=F64)
    before = torch.get_rng_state()
    inputs = sample_training_inputs(x, torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())  # only the explicit generator is used
    assert set(inputs) == {"z", "t", "t_tgt", "z_rect", "s_rect"}
    assert (
        inputs["z"].shape == x.shape
        and inputs["z"].dtype == F64
        and inputs["s_rect"].shape == (64,)
    )
    assert bool(
        ((inputs["t_tgt"] >= 0) & (inputs["t_tgt"] <= inputs["t"]) & (inputs["t"] < 1)).all()
    )
    again = sample_training_inputs(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    terms = twinflow_losses(
        TinyNet(2, seed=1), TinyNet(2, seed=2), x, None, **inputs
    )  # keys == keywords
    assert torch.isfinite(terms["loss"])


# ---------- bad inputs ----------
def test_bad_inputs_give_clear_errors():
    inputs, student = golden_inputs(), TinyNet(6, seed=1)
    with pytest.raises(TypeError, match="unknown TwinFlow option.*estimate_ordr.*valid options"):
        call_losses(student, student, inputs, estimate_ordr=2)
    with pytest.raises(ValueError, match="y_null"):
        call_losses(student, student, {**inputs, "y_null": None}, enhanced_ratio=0.5)
    with pytest.raises(ValueError, match="z must have the shape"):
        call_losses(student, student, {**inputs, "z": inputs["z"][:2]})
    with pytest.raises(ValueError, match="t_tgt must have shape"):
        call_losses(student, student, {**inputs, "t_tgt": inputs["t_tgt"][:3]})
    with pytest.raises(ValueError, match="0 <= t_tgt <= t"):
        call_losses(student, student, {**inputs, "t_tgt": inputs["t"] + 0.05})
    with pytest.raises(ValueError, match="LongTensor"):
        call_losses(student, student, {**inputs, "y": inputs["y"].double()})
    with pytest.raises(ValueError, match="only apply to recipe='large'"):
        call_losses(student, student, inputs, time_weighting=True)
    with pytest.raises(ValueError, match="estimate_order"):
        TwinFlowOptions(estimate_order=0)
    with pytest.raises(ValueError, match="generator lives on"):
        sample_training_inputs(torch.zeros(2, 2, device="meta"), torch.Generator())
    with pytest.raises(ValueError, match="group_proportions"):
        sample_training_inputs(torch.zeros(2, 2), torch.Generator(), group_proportions=(1, 1, 1, 0))
    assert math.isfinite(l2_loss(torch.ones(2, 2), torch.zeros(2, 2)).sum().item())
