"""Schedules by optimizer step: the learning-rate factor (warm-up, constant, optional linear cool-down),
and the piecewise-constant lookups that the und:gen:text ratio (``data/mixing.py``) and the flow-time
mean (``stages/base.py``) share: both switch value at a list of start steps beginning at 0."""

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


def lr_factor(step: int, warmup: int, total: int = 0, cooldown: int = 0) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based): a linear warm-up from
    1/warmup (no wasted zero-lr step), then constant (Table 1), then, with ``cooldown`` > 0, a linear
    fall over the last ``cooldown`` of ``total`` steps to 1/cooldown at the last one."""
    factor = min(1.0, (step + 1) / warmup)
    if cooldown:
        factor = min(factor, (total - step) / cooldown)
    return max(factor, 0.0)


class TimeMeanSchedule:
    """Piecewise-constant mean of the logit-normal training times: ``[(start_step, mean), ...]``."""

    def __init__(self, entries: list[tuple[int, float]]):
        self.starts = [int(start) for start, _ in entries]
        check_start_steps(self.starts, "time_mean")
        self.means = [float(mean) for _, mean in entries]

    def at(self, step: int) -> float:
        return self.means[segment_at(self.starts, step)]
