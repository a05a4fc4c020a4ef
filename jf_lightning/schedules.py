"""Piecewise-constant schedules by optimizer step: the und:gen:text ratio (``data/mixing.py``) and the
flow-time mean (``stages/base.py``) both switch value at a list of start steps beginning at 0."""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Sequence


def check_start_steps(starts: Sequence[int], name: str) -> None:
    """One-line errors for start steps that do not begin at 0 or do not increase."""
    if not starts or starts[0] != 0:
        raise ValueError(f"{name} must start at step 0, got start steps {list(starts)}")
    if any(b <= a for a, b in itertools.pairwise(starts)):
        raise ValueError(f"{name} start steps must increase, got {list(starts)}")


def segment_at(starts: Sequence[int], step: int) -> int:
    """Index of the entry in force at ``step``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return bisect_right(starts, step) - 1
