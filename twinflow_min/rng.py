"""Capture the global RNG state before a student pass and replay it for the teacher passes that it
is compared with.

Paper: TwinFlow (arXiv:2512.05150), Sec. 3 (the RCGM base loss compares a student pass with teacher
passes). Mirrors the official TwinFlow CUDA `rng_state = get_rng_state()` before the student forward
and `set_rng_state(rng_state)` before every teacher pass (`tutorials/mnist/methodes.py`
`TwinFlow.training_step`, `multi_fwd`, `get_refer_predc`; `src/methodes/twinflow/twinflow.py`
`get_refer_predc`, `multi_fwd`, `training_step`); docs/math.md#rng-replay.

Why: a network with dropout (or any other layer that draws from the global generator) draws a fresh
mask on every call. Replaying the student pass's generator state before each teacher pass gives the
teacher passes the same masks, so the RCGM residual `cof_l * F - cof_r * D - v` compares like with
like, and the two CFG passes (conditional / null class) differ only by the class. The masks line up
only when the teacher pass has the same batch shape as the student pass it replays, so callers keep
those two at the same number of rows.

Fix of official bug B2 (docs/math.md#official-differences): the official code calls the CUDA
`get/set_rng_state` unconditionally (a crash on a CPU-only build) and leaves the global CUDA
generator rewound after each teacher pass, so later draws re-use numbers that were already consumed.
Here the replay runs inside `torch.random.fork_rng`, which puts the global streams back where they
were when the teacher pass started: teacher passes consume nothing from the global stream and never
rewind it. Non-CPU devices go through `torch.get_device_module(device.type)`.

Time convention (for the passes this wraps): see twinflow_min/transport.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


@dataclass(frozen=True)
class RNGState:
    """Global generator states: the CPU one always, plus the accelerator one when the tensors live
    there."""
    cpu: Tensor
    device: torch.device | None = None
    accelerator: Tensor | None = None


def capture_rng_state(device: torch.device | str = "cpu") -> RNGState:
    """Snapshot the global CPU generator and, for a non-CPU `device`, that device's global
    generator.

    Official counterpart: CUDA `rng_state = get_rng_state()` right before the student forward (B2
    fixed: works on CPU, and on any accelerator through `torch.get_device_module`).
    """
    device = torch.device(device)
    if device.type in ("cpu", "meta"):
        return RNGState(cpu=torch.get_rng_state())
    module = torch.get_device_module(device.type)
    return RNGState(
        cpu=torch.get_rng_state(), device=device, accelerator=module.get_rng_state(device)
    )


@contextmanager
def replay_rng_state(state: RNGState | None) -> Iterator[None]:
    """Run the block with the global generators set to `state`; afterwards they are where they were
    before.

    Official counterpart: CUDA `set_rng_state(rng_state)` before each teacher pass, but inside
    `torch.random.fork_rng`, so the global stream is neither consumed nor rewound by the block (fix
    of B2). `state=None` runs the block unchanged (no replay).
    """
    if state is None:
        yield
        return
    if not isinstance(state, RNGState):
        raise TypeError(
            "rng_state must be an RNGState from capture_rng_state(device), got "
            f"{type(state).__name__}"
        )
    if state.device is None:
        with torch.random.fork_rng(devices=[], device_type="cpu"):
            torch.set_rng_state(state.cpu)
            yield
        return
    module = torch.get_device_module(state.device.type)
    with torch.random.fork_rng(devices=[state.device], device_type=state.device.type):
        torch.set_rng_state(state.cpu)
        module.set_rng_state(state.accelerator, state.device)
        yield
