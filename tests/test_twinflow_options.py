"""Options, doors and official switches of twinflow.py / twinflow_large.py (issues 11 and 12).

Time convention: see twinflow_min/transport.py. Expected values are closed forms written in the
comments (float64 where it says so), never values printed by the code under test.
"""

from types import SimpleNamespace

import pytest
import torch
from test_twinflow import F64, TOL, Const, TinyNet, col, golden_inputs
from test_twinflow_large import golden_large_inputs

from twinflow_min.twinflow import (
    OptionError,
    TwinFlowOptions,
    check_model_fits,
    enhance_target,
    l2_loss,
    rcgm_target,
    sample_training_inputs,
    twinflow_losses,
)
from twinflow_min.twinflow_large import ADV, ANY, E2E, MUL, micro_batch_groups


def call(model, teacher, inputs, **options):
    inputs = dict(inputs)
    x, y = inputs.pop("x"), inputs.pop("y")
    return twinflow_losses(model, teacher, x, y, **inputs, **options)


# ---------- one source of truth ----------
@pytest.mark.parametrize("option, value, rule", [
    ("delta_t", 0.5, "must lie in (0, 0.5); official 0.01"),
    ("delta_t", True, "must lie in (0, 0.5); official 0.01"),  # a bool is not a number
    ("target_clamp", 0.0, "must be a number > 0; official 1"),
    ("enhanced_ratio", -0.1, "must be a number >= 0 (0 = no CFG in the target)"),
    ("estimate_order", 0, "must be an integer >= 1 (>= 0 with recipe='large': SRC's flow-matching "
                          "mode); official 2"),
    ("consistency_ratio", 1.5, "must lie in [0, 1] (SRC consistc_ratio); official 1"),
    ("adversarial_enabled", 1, "must be True or False"),
])
def test_option_error_names_the_option_the_value_and_the_rule(option, value, rule):
    with pytest.raises(OptionError) as caught:
        TwinFlowOptions(**{option: value})
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.option, error.value, error.rule) == (option, value, rule)
    assert str(error) == f"{option} = {value!r} {rule}"


def test_option_ranges_accept_their_edges_and_large_only_options():
    TwinFlowOptions(delta_t=0.49, target_clamp=1e-6, enhanced_ratio=0.0)
    TwinFlowOptions(recipe="large", estimate_order=0, consistency_ratio=0.0)
    for option, value in [("time_weighting", True), ("consistency_ratio", 0.5),
                          ("rcgm_teacher_is_student", True), ("enhance_around_null", True),
                          ("frozen_teacher", True)]:
        TwinFlowOptions(recipe="large", **{option: value})
        with pytest.raises(OptionError, match="only apply to recipe='large'") as caught:
            TwinFlowOptions(**{option: value})
        assert caught.value.option == option


def test_frozen_teacher_keyword_sets_only_the_rcgm_switch():
    # compatibility: frozen_teacher=True is SRC's ema_decay_rate == 1 on real data
    options = TwinFlowOptions(recipe="large", frozen_teacher=True)
    assert options.rcgm_teacher_is_student is True and options.enhance_around_null is False


def test_prebuilt_options_equal_keywords_and_not_both():
    inputs, student, teacher = golden_inputs(), TinyNet(6, seed=1), TinyNet(6, seed=2)
    by_keywords = call(student, teacher, inputs, enhanced_ratio=0.5)
    prebuilt = call(student, teacher, inputs, options=TwinFlowOptions(enhanced_ratio=0.5))
    assert all(torch.equal(by_keywords[name], prebuilt[name]) for name in by_keywords)
    with pytest.raises(TypeError, match="either options= or option keywords"):
        call(student, teacher, inputs, options=TwinFlowOptions(), enhanced_ratio=0.5)


# ---------- issue 11 item 1: CFG forms ----------
def test_cfg_target_real_data_and_around_null_scalar_check():
    # v = 1, F_cond = 0.3, F_null = 0.1, w = 4: v + w (F_cond - F_null) = 1.8 (real data);
    # F_null + w (F_cond - F_null) = 0.9 (SRC ema_decay 1 with image-free data)
    def teacher(x, t, t_tgt, y):
        return torch.where((y == 1).view(-1, 1), torch.full_like(x, 0.3), torch.full_like(x, 0.1))

    x_t, v = torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64)
    y, y_null = torch.tensor([1]), torch.tensor([0])
    real = enhance_target(teacher, x_t, col(0.5), v, y, y_null, 4.0)
    around_null = enhance_target(teacher, x_t, col(0.5), v, y, y_null, 4.0, around_null=True)
    torch.testing.assert_close(real, torch.full_like(v, 1.8), **TOL)
    torch.testing.assert_close(around_null, torch.full_like(v, 0.9), **TOL)


def test_rcgm_teacher_is_student_moves_the_rcgm_passes_to_the_student():
    class Counting(TinyNet):
        def forward(self, x_t, t, t_tgt, y=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().forward(x_t, t, t_tgt, y)

    inputs = golden_large_inputs()
    for switch, teacher_calls in ((False, 2 + 2), (True, 2)):  # CFG 2 passes + RCGM N = 2 passes
        student, teacher = TinyNet(3, seed=1), Counting(3, seed=2)
        call(student, teacher, inputs, recipe="large", enhanced_ratio=0.5,
             rcgm_teacher_is_student=switch)
        assert teacher.calls == teacher_calls


# ---------- issue 11 item 4: target precision ----------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rcgm_target_in_half_precision_matches_the_closed_form(dtype):
    # A model returning the constant c has D = (t_mid - t_tgt) c, so R = c - v exactly on far rows
    # and
    # the target is c - clip(c - v, +-1) = 1.25 for c = 1.5, v = 1.25, whatever x_t, t, t_tgt, N.
    # Before the fix (arithmetic in bf16) the error was 0.75; float32 arithmetic on terms up to
    # (t - t_tgt)/Delta c = 150 leaves a few float32 ulps of 150 (1.5e-5 each): tolerance 1e-4.
    batch, c, v = 64, 1.5, 1.25
    t = torch.linspace(0.2, 1.0, batch)
    t_tgt = t * torch.linspace(0.0, 0.9, batch)
    x_t = torch.linspace(-2, 2, batch * 4).view(batch, 4)
    F, v_target = torch.full((batch, 4), c), torch.full((batch, 4), v)
    target = rcgm_target(Const(c), x_t.to(dtype), t.to(dtype), t_tgt.to(dtype), F.to(dtype),
                         v_target.to(dtype))
    assert target.dtype == torch.float32  # the loss compares it with F in float32 anyway
    assert (target.double() - 1.25).abs().max().item() < 1e-4


# ---------- issue 11 item 5: SRC's official switches ----------
def test_consistency_ratio_zero_turns_rcgm_off_and_below_one_turns_rectify_off():
    inputs, student, teacher = golden_large_inputs(), TinyNet(3, seed=1), TinyNet(3, seed=2)
    full = call(student, teacher, inputs, recipe="large")
    partial = call(student, teacher, inputs, recipe="large", consistency_ratio=0.5)
    assert "loss_rectify" in full and "loss_rectify" not in partial
    assert partial["loss_base"].item() == pytest.approx(full["loss_base"].item(), abs=1e-14)
    off = call(student, teacher, inputs, recipe="large", consistency_ratio=0.0)
    # no RCGM: every real row regresses F(x_t, t, t_tgt) on v = z - x; (1/B) sum over the any rows
    x, z, t, t_tgt = inputs["x"], inputs["z"], inputs["t"], inputs["t_tgt"]
    rows = inputs["groups"] == ANY
    x_t = (1 - t[rows, None]) * x[rows] + t[rows, None] * z[rows]
    F = student(x_t, t[rows], t_tgt[rows], inputs["y"][rows])
    expected = ((F - (z[rows] - x[rows])) ** 2).mean(dim=1).sum() / x.shape[0]
    assert off["loss_base"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_estimate_order_zero_counts_only_mul_and_adv_rows():
    # SRC flow-matching mode: no RCGM target, the first sum is averaged over the mul and adv rows
    # only
    inputs, student = golden_large_inputs(), TinyNet(3, seed=1)
    terms = call(student, student, inputs, recipe="large", estimate_order=0)
    assert set(terms) == {"loss_realvel", "loss_adv", "loss_rectify", "loss"}
    x, z, t, t_tgt = inputs["x"], inputs["z"], inputs["t"], inputs["t_tgt"]
    rows = inputs["groups"] == MUL
    x_t = (1 - t[rows, None]) * x[rows] + t[rows, None] * z[rows]
    F = student(x_t, t[rows], t_tgt[rows], inputs["y"][rows])
    expected = ((F - (z[rows] - x[rows])) ** 2).mean(dim=1).sum() / 4  # 2 mul + 2 adv rows
    assert terms["loss_realvel"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_consistency_ratio_shapes_the_large_draws_and_is_refused_by_the_tutorial():
    x = torch.zeros(16, 2, dtype=F64)
    draws = sample_training_inputs(x, torch.Generator().manual_seed(0), recipe="large",
                                   consistency_ratio=0.0)
    real = draws["groups"] != E2E
    real &= draws["groups"] != ADV
    assert torch.equal(draws["t"][real], draws["t_tgt"][real])  # ratio 0: t_tgt = t
    with pytest.raises(ValueError, match="only apply to recipe='large'"):
        sample_training_inputs(x, torch.Generator(), consistency_ratio=0.5)
    with pytest.raises(OptionError, match="consistency_ratio = 2"):
        sample_training_inputs(x, torch.Generator(), recipe="large", consistency_ratio=2)


# ---------- issue 11 item 6: groups in turn, tiny batches ----------
@pytest.mark.parametrize("batch, steps, proportions, expected", [
    (1, 4, (1, 1, 1, 1), [[E2E], [MUL], [ANY], [ADV]]),
    (2, 4, (1, 1, 1, 1), [[E2E, E2E], [MUL, MUL], [ANY, ANY], [ADV, ADV]]),
    (3, 2, (1, 1, 1, 1), [[E2E, E2E, MUL], [MUL, ANY, ADV]]),  # partition of 6 rows: 2, 2, 1, 1
    (1, 3, (1, 1, 1, 0), [[E2E], [MUL], [ANY]]),
    (4, 3, (1, 1, 1, 1), [[E2E, MUL, ANY, ADV]] * 3),  # B >= groups: unchanged, own partition
])
def test_micro_batches_take_the_groups_in_turn(batch, steps, proportions, expected):
    got = [micro_batch_groups(batch, proportions, k, steps) for k in range(steps)]
    assert got == expected
    x = torch.zeros(batch, 2, dtype=F64)
    for k in range(steps):
        draws = sample_training_inputs(x, torch.Generator().manual_seed(k), recipe="large",
                                       group_proportions=proportions, accumulation_index=k,
                                       accumulation_steps=steps)
        assert draws["groups"].tolist() == expected[k]
        assert draws["z_fake"].shape[0] == expected[k].count(ADV)
        assert draws["s_rect"].shape[0] == expected[k].count(E2E)


def test_large_loss_accepts_micro_batches_with_some_groups_only():
    # B = 1 per micro-batch: each term is its single row's loss (SRC's 1/B with B = 1)
    student, teacher = TinyNet(2, seed=1), TinyNet(2, seed=2)
    x = torch.linspace(-1, 1, 2, dtype=F64).view(1, 2)
    names = {E2E: "loss_consistency", MUL: "loss_realvel", ANY: "loss_base", ADV: "loss_adv"}
    for k in range(4):
        draws = sample_training_inputs(x, torch.Generator().manual_seed(k), recipe="large",
                                       accumulation_index=k, accumulation_steps=4)
        terms = twinflow_losses(student, teacher, x, None, recipe="large", **draws)
        assert names[k] in terms and torch.isfinite(terms["loss"])
        assert set(terms) <= {names[k], "loss_rectify", "loss"}
    with pytest.raises(ValueError, match="accumulation step"):
        sample_training_inputs(x, torch.Generator(), recipe="large", accumulation_steps=2)


# ---------- issue 11 item 3: models that cannot fit ----------
def test_check_model_fits_refuses_blind_models_and_unwraps_wrappers():
    blind = SimpleNamespace(config=SimpleNamespace(use_time_sign=False, use_target_time=True))
    no_target = SimpleNamespace(config=SimpleNamespace(use_time_sign=True, use_target_time=False))
    with pytest.raises(ValueError, match="use_time_sign=False"):
        check_model_fits(blind, TwinFlowOptions())
    with pytest.raises(ValueError, match="use_time_sign=False"):
        check_model_fits(SimpleNamespace(module=blind), TwinFlowOptions())  # DDP-style wrapper
    check_model_fits(blind, TwinFlowOptions(adversarial_enabled=False))
    with pytest.raises(ValueError, match="use_target_time=False"):
        check_model_fits(no_target, TwinFlowOptions(adversarial_enabled=False))
    check_model_fits(no_target, TwinFlowOptions(recipe="large", estimate_order=0))
    check_model_fits(Const(0.5), TwinFlowOptions())  # no .config: nothing to check


def test_twinflow_losses_checks_the_model_first():
    class Blind(TinyNet):
        config = SimpleNamespace(use_time_sign=False, use_target_time=True)

    inputs = golden_inputs()
    with pytest.raises(ValueError, match="use_time_sign"):
        call(Blind(6, seed=1), TinyNet(6, seed=2), inputs)
    terms = call(Blind(6, seed=1), TinyNet(6, seed=2), inputs, adversarial_enabled=False)
    assert set(terms) == {"loss_base", "loss_realvel", "loss"}
    assert l2_loss(torch.ones(1, 2), torch.zeros(1, 2)).item() == 1.0
