"""Checks shared by every door of the project: numbers, integers, and the error raised for bad files.

Values are checked once, where they enter (config, command line, file loaders, the first line of a public
function); the math underneath trusts them. This module is the one home of the small predicates those doors
share, so "a number, but not a bool" is written once.
"""

from __future__ import annotations

import math

INT64_MAX = 2**63 - 1  # the largest seed or count a torch tensor / generator can hold


class CheckpointError(ValueError):
    """A file that cannot be read as what it claims to be (checkpoint, pretrained model, converted file).

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
    """True for an integer in [minimum, INT64_MAX]: a batch size, a step count, a number of samples."""
    return is_int(value) and minimum <= value <= INT64_MAX
