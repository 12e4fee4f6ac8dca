"""Tests for twinflow_min/ema.py: the EMA teacher, its official warm-up (G12), decay 0 / 1,
state_dict.

Time convention: see twinflow_min/transport.py. Expected values are hand recursions of
docs/math.md#ema-teacher (M18), float64.
"""

import pytest
import torch
from torch import nn

from twinflow_min.ema import EMATeacher

F64 = torch.float64


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2).double()
        self.register_buffer("counter", torch.zeros(1, dtype=F64))


def set_params(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model.counter.fill_(value)


def test_g12_warmup_decays():
    # G12 (M18): decays used at updates 0..5 for 0.99 and 0.999: d <- d + (1 - d)(decay
    # - d)/2
    for decay, expected in [
        (0.99, [0, 0.495, 0.6199875, 0.6902921876, 0.7367031131, 0.770049254]),
        (0.999, [0, 0.4995, 0.624499875, 0.6948122969, 0.7412294701, 0.7745811784]),
    ]:
        ema = EMATeacher(Net(), decay=decay)
        used = []
        for _ in expected:
            used.append(ema.decay_used)
            ema.update(Net())
        assert used == pytest.approx(expected, abs=1e-9)
    student = Net()
    ema = EMATeacher(student, decay=0.99)
    for _ in range(
        1000
    ):  # slow approach: after 1000 updates the decay in use is still 0.98994 (M18)
        ema.update(student)
    assert ema.decay_used == pytest.approx(0.98994, abs=1e-5) and ema.decay_used < 0.99


def test_update_averages_parameters_and_copies_buffers():
    # step 0 (d = 0) copies the student; step 1 (d = 0.495): 0.495 * 1 + 0.505 * 3 = 2.01
    student = Net()
    set_params(student, 0.0)
    ema = EMATeacher(student, decay=0.99)
    set_params(student, 1.0)
    ema.update(student)
    assert all(torch.all(p == 1.0) for p in ema.teacher.parameters())
    set_params(student, 3.0)
    ema.update(student)
    assert all(
        torch.allclose(p, torch.full_like(p, 2.01), rtol=0, atol=1e-12)
        for p in ema.teacher.parameters()
    )
    assert ema.teacher.counter.item() == 3.0  # buffer copied, not averaged
    assert ema.teacher is not student and not any(p.requires_grad for p in ema.teacher.parameters())
    assert ema.num_updates == 2


def test_constant_decay_option():
    # warmup=False: every update uses the decay itself: 0.9 * 0 + 0.1 * 1 = 0.1, then 0.9 * 0.1 +
    # 0.1 * 1 = 0.19
    student = Net()
    set_params(student, 0.0)
    ema = EMATeacher(student, decay=0.9, warmup=False)
    set_params(student, 1.0)
    ema.update(student)
    ema.update(student)
    assert all(
        torch.allclose(p, torch.full_like(p, 0.19), rtol=0, atol=1e-12)
        for p in ema.teacher.parameters()
    )


def test_decay_zero_is_the_student_and_decay_one_is_frozen():
    student = Net()
    live = EMATeacher(student, decay=0.0)
    assert live.teacher is student
    live.update(student)
    assert live.teacher is student and "teacher" not in live.state_dict()
    set_params(student, 0.5)
    frozen = EMATeacher(student, decay=1.0)
    set_params(student, 7.0)
    for _ in range(3):
        frozen.update(student)
    assert all(torch.all(p == 0.5) for p in frozen.teacher.parameters())


def test_state_dict_round_trip():
    student = Net()
    ema = EMATeacher(student, decay=0.99)
    set_params(student, 2.0)
    for _ in range(3):
        ema.update(student)
    state = ema.state_dict()
    restored = EMATeacher(Net(), decay=0.99)
    restored.load_state_dict(state)
    assert restored.decay_used == ema.decay_used and restored.num_updates == 3
    for a, b in zip(restored.teacher.state_dict().values(), ema.teacher.state_dict().values()):
        assert torch.equal(a, b)
    set_params(student, 4.0)  # the next update continues identically
    ema.update(student)
    restored.update(student)
    for a, b in zip(restored.teacher.parameters(), ema.teacher.parameters()):
        assert torch.equal(a, b)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        EMATeacher(Net(), decay=1.5)
    with pytest.raises(TypeError, match="nn.Module"):
        EMATeacher(lambda x: x)
    with pytest.raises(ValueError, match="float32 master weights"):
        EMATeacher(nn.Linear(2, 2).bfloat16(), decay=0.99)
    with pytest.raises(ValueError, match="different parameters"):
        EMATeacher(Net(), decay=0.99).update(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no teacher weights"):
        EMATeacher(Net(), decay=0.99).load_state_dict(EMATeacher(Net(), decay=0.0).state_dict())
