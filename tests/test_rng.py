"""Tests for twinflow_min/rng.py: replaying the student pass's RNG state for its teacher passes (fix
of B2, docs/math.md#official-differences; docs/math.md#rng-replay).

Time convention: see twinflow_min/transport.py. Models here have dropout, so every call draws a mask
from the global CPU generator.
"""

import pytest
import torch
from torch import nn

from twinflow_min.rng import RNGState, capture_rng_state, replay_rng_state
from twinflow_min.twinflow import rcgm_target, sample_training_inputs, twinflow_losses

F64 = torch.float64


class MaskOnly(nn.Module):
    """F = dropout(ones) / 4: each element is 0 or 0.5, fixed by the dropout mask alone."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x_t, t, t_tgt, y=None):
        return self.dropout(torch.ones_like(x_t)) / 4


class DropoutNet(nn.Module):
    def __init__(self, dim=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = nn.Linear(dim + 2, 16).double()
        self.labels = nn.Embedding(4, 16).double()
        self.out = nn.Sequential(nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, dim)).double()

    def forward(self, x_t, t, t_tgt, y=None):
        return self.out(
            self.hidden(torch.cat([x_t, t[:, None], t_tgt[:, None]], 1)) + self.labels(y)
        )


def test_replay_gives_the_teacher_pass_the_student_mask_and_does_not_rewind():
    torch.manual_seed(0)
    model, x = MaskOnly(), torch.zeros(4, 8, dtype=F64)
    state = capture_rng_state(x.device)
    student = model(x, None, None)
    after_student = torch.get_rng_state()
    with replay_rng_state(state):
        teacher = model(x, None, None)
    assert torch.equal(student, teacher)  # same mask
    with replay_rng_state(state):
        model(
            x[:1], None, None
        )  # a smaller pass: a bare set_rng_state (B2) would leave the stream elsewhere
    assert torch.equal(
        torch.get_rng_state(), after_student
    )  # global stream neither consumed nor rewound
    assert not torch.equal(
        model(x, None, None), student
    )  # without replay the next mask is a fresh one


def test_rcgm_target_with_replay_lines_masks_up():
    # teacher = student = MaskOnly: with replay every teacher pass returns the student's F, so R = F
    # - v for
    # every row (G2 with a per-element constant) and the target is F - clip(F - v) = v (|F - v| <=
    # 0.3);
    # without replay the masks differ, the residual is amplified by (t - t_tgt)/Delta and the target
    # is not v
    torch.manual_seed(1)
    model, x_t = MaskOnly(), torch.zeros(3, 64, dtype=F64)
    t, t_tgt = torch.tensor([0.9, 0.6, 0.3], dtype=F64), torch.tensor([0.1, 0.2, 0.0], dtype=F64)
    v = torch.full_like(x_t, 0.3)
    state = capture_rng_state(x_t.device)
    F = model(x_t, t, t_tgt)
    expected = F - (F - v).clamp(-1, 1)
    torch.testing.assert_close(
        rcgm_target(model, x_t, t, t_tgt, F, v, rng_state=state), expected, rtol=0, atol=1e-12
    )
    assert not torch.allclose(rcgm_target(model, x_t, t, t_tgt, F, v), expected)


def test_global_stream_after_the_losses_ignores_teacher_passes():
    # student passes consume the stream (dropout); teacher passes must not (not consumed, not
    # rewound):
    # the state after twinflow_losses is the same for N = 1 and N = 3, with or without the
    # (half-size) CFG passes, and with a teacher that has no dropout at all
    x, y, y_null = (
        torch.linspace(-1, 1, 16, dtype=F64).view(8, 2),
        torch.arange(8) % 3,
        torch.full((8,), 3),
    )
    inputs = sample_training_inputs(x, torch.Generator().manual_seed(0))
    student = DropoutNet(seed=1)
    states = []
    for order, ratio, teacher in [
        (1, 0.0, DropoutNet(seed=2)),
        (3, 0.5, DropoutNet(seed=2)),
        (2, 0.5, DropoutNet(seed=2).eval()),
    ]:
        torch.manual_seed(123)
        start = torch.get_rng_state()
        twinflow_losses(
            student,
            teacher,
            x,
            y,
            y_null=y_null,
            **inputs,
            estimate_order=order,
            enhanced_ratio=ratio,
        )
        states.append(torch.get_rng_state())
    assert all(torch.equal(states[0], s) for s in states[1:])
    assert not torch.equal(states[0], start)  # the student passes did draw masks


def test_replay_of_none_and_bad_state():
    with replay_rng_state(None):
        pass
    with pytest.raises(TypeError, match="RNGState"):
        with replay_rng_state(torch.get_rng_state()):
            pass
    assert (
        isinstance(capture_rng_state("cpu"), RNGState)
        and capture_rng_state("cpu").accelerator is None
    )
