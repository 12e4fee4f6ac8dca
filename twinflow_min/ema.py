"""The EMA teacher F^- of TwinFlow / RCGM, with the official warm-up of the decay.

Paper: TwinFlow (arXiv:2512.05150), Sec. 3 (the RCGM base loss and the CFG-enhanced target use a
teacher). Mirrors the official `update_ema` + `RCGM.update_ema` (`tutorials/mnist/methodes.py`) and
`TwinFlow.update_ema` (`src/methodes/twinflow/twinflow.py`); docs/math.md#ema-teacher (M18).

    decay = 0      the teacher IS the student (no copy; passes run under no_grad)
    0 < decay < 1  theta_ema <- d * theta_ema + (1 - d) * theta, with the decay in use warmed up:
                   d_0 = 0,  d <- d + (1 - d) * (decay - d) / 2
                   (decays used 0, 0.495, 0.6199875, ... for 0.99)
    decay = 1      a frozen copy of the initial student, never updated

Only parameters are averaged; buffers are copied from the student. Call `update(model)` once per
optimizer step, right before computing the losses: the parameters have not changed since the last
optimizer step, so this equals the official "update right after the student forward". The teacher is
checkpointed (`state_dict`), unlike the official code where it hides inside the loss object.
Averaging runs in the parameters' own dtype, so keep float32 master weights (use autocast for bf16 /
fp16 compute); half-precision parameters are refused for 0 < decay < 1.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

WARMUP_RATE = 0.5  # official `self.cmd += (1 - self.cmd) * (self.emd - self.cmd) * 0.5`
HALF_DTYPES = (torch.float16, torch.bfloat16)


class EMATeacher:
    """EMA copy of a student network used as the TwinFlow teacher (see the module docstring)."""

    def __init__(self, model: nn.Module, decay: float = 0.99, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"EMATeacher needs the student nn.Module, got {type(model).__name__}")
        if (
            isinstance(decay, bool)
            or not isinstance(decay, (int, float))
            or not 0.0 <= decay <= 1.0
            or not math.isfinite(decay)
        ):
            raise ValueError(
                "EMA decay must be a number in [0, 1] (0 = the student is its own "
                f"teacher, 1 = frozen initial copy), got {decay!r}"
            )
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.decay_used = 0.0 if self.warmup else self.decay  # the decay the next update applies
        self.num_updates = 0
        self._model = model
        self._copy: nn.Module | None = None
        if self.decay > 0.0:
            if self.decay < 1.0:
                half = [name for name, p in model.named_parameters() if p.dtype in HALF_DTYPES]
                if half:
                    raise ValueError(
                        f"EMA with decay {self.decay} needs float32 (or float64) "
                        f"parameters, but {half[0]} is "
                        f"{dict(model.named_parameters())[half[0]].dtype}: keep "
                        "float32 master weights and train with autocast for bf16 / "
                        "fp16 compute"
                    )
            self._copy = copy.deepcopy(model).requires_grad_(False)
            self._copy.train(model.training)

    @property
    def teacher(self) -> nn.Module:
        """The teacher network: the student itself for decay 0, else the averaged (or frozen)
        copy."""
        return self._model if self._copy is None else self._copy

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step: theta_ema <- d * theta_ema + (1 - d) * theta, then warm d up (official
        `update_ema`)."""
        if self._copy is None:  # decay 0: the teacher is the live student
            self._model = model
            return
        self._copy.train(
            model.training
        )  # same train/eval mode as the student, so dropout masks can line up
        if self.decay >= 1.0:  # frozen teacher: official `ema_decay_rate == 1` never updates
            return
        teacher_params, student_params = (
            dict(self._copy.named_parameters()),
            dict(model.named_parameters()),
        )
        if teacher_params.keys() != student_params.keys():
            differing = sorted(set(teacher_params) ^ set(student_params))[:5]
            raise ValueError(
                "EMATeacher.update got a model with different parameters than the "
                f"one it copied (e.g. {differing}); pass the same (uncompiled) "
                "student every step"
            )
        d = self.decay_used
        # theta_ema <- d * theta_ema + (1 - d) * theta  (official `update_ema`), i.e. lerp towards
        # theta by 1 - d
        torch._foreach_lerp_(
            list(teacher_params.values()),
            [
                p.detach().to(e.dtype)
                for p, e in zip(student_params.values(), teacher_params.values())
            ],
            1.0 - d,
        )
        for ema_buffer, buffer in zip(self._copy.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)  # buffers are copied, not averaged
        if self.warmup:
            # d <- d + (1 - d) * (decay - d) / 2   (official warm-up of `cmd`, M18)
            self.decay_used = d + (1.0 - d) * (self.decay - d) * WARMUP_RATE
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """{"teacher": weights (absent for decay 0), "decay", "decay_used", "warmup",
        "num_updates"}."""
        state: dict[str, Any] = {
            "decay": self.decay,
            "decay_used": self.decay_used,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
        }
        if self._copy is not None:
            state["teacher"] = {k: v.detach().clone() for k, v in self._copy.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore teacher weights and the warm-up state. The decay set in the constructor (the
        config) is kept."""
        missing = [key for key in ("decay_used", "num_updates") if key not in state]
        if missing:
            raise ValueError(
                f"EMA state is missing {missing}; it must come from EMATeacher.state_dict()"
            )
        if self._copy is not None:
            if "teacher" not in state:
                raise ValueError(
                    "EMA state has no teacher weights, but this EMATeacher (decay "
                    f"{self.decay}) keeps a copy; the checkpoint was written with "
                    "decay 0: resume with ema decay 0"
                )
            self._copy.load_state_dict(state["teacher"])
        self.decay_used = float(state["decay_used"])
        self.num_updates = int(state["num_updates"])
