"""Checks shared by every door of the project: numbers, devices, the error raised for bad files.

Values are checked once, where they enter (config, command line, file loaders, the first line of a
public function); the math underneath trusts them. This module is the one home of the small
predicates those doors share, so "a number, but not a bool" is written once.
"""

from __future__ import annotations

import math

import torch

INT64_MAX = 2**63 - 1  # the largest seed or count a torch tensor / generator can hold
EXIT_REFUSED = 2  # exit code of every entry point (train, sample, toy, tools) for a refused input


class CheckpointError(ValueError):
    """A file that cannot be read as what it claims to be (checkpoint, pretrained model, ...).

    The message names the file and the fix in one line; entry points print it without a traceback.
    """


def is_real(value, *, allow_inf: bool = False) -> bool:
    """True for an int or float that is not a bool, finite unless `allow_inf`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return allow_inf or math.isfinite(value)


def is_int(value) -> bool:
    """True for an int that is not a bool (numpy integers excluded: convert them at the door)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value, *, minimum: int = 1) -> bool:
    """True for an integer in [minimum, INT64_MAX]: a batch size, a step count, a sample count."""
    return is_int(value) and minimum <= value <= INT64_MAX


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what a device name may start with, besides "auto"


def available_devices() -> list[str]:
    """The devices this machine has, e.g. ['cpu', 'cuda:0', 'cuda:1'] (for error messages)."""
    names = ["cpu"]
    names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        names += [f"xpu:{index}" for index in range(torch.xpu.device_count())]
    return names


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; otherwise the named device if this machine has it.

    Raises ValueError with one line that lists the devices this machine has, for a malformed name
    ('gpu', 'cuda:x') or a device that is not here ('cuda' without CUDA, 'mps' off a Mac,
    'cuda:3' on a machine with 2 GPUs).
    """
    have = available_devices()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    well_formed = kind in DEVICE_TYPES and (index == "" or index.isdigit())
    if not well_formed:
        raise ValueError(f"device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or "
                         f"mps (this machine has: {', '.join(have)})")
    wanted = name if index or kind == "mps" else f"{kind}:0"
    if kind == "cpu":
        wanted = "cpu"
    if wanted not in have:
        raise ValueError(f"device {name!r} is not on this machine (it has: {', '.join(have)}); "
                         f"use --device auto or one of those")
    return torch.device(name)
