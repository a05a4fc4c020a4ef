"""The understanding : generation : text mixing ratio, as a step schedule, and exact per-batch counts.

Rounding each batch on its own (largest remainder per batch) is biased whenever the quotas do not tie:
30:50:20 at 4 samples a batch rounds to 1:2:1 every time, a 25:50:25 mix forever. So a batch's counts
are the difference of two cumulative apportionments instead: the first ``m * B`` samples since the
ratio took effect are apportioned to the kinds, then the first ``(m + 1) * B``, and batch ``m`` gets
the difference. The apportionment is the sequential Sainte-Lague (Webster) method: sample after sample
goes to the kind with the largest ``r_k / (2 c_k + 1)`` (``c_k`` = what it has so far), ties to the
kind listed first. Being sequential it only ever adds samples, so the differences are never negative;
cumulative counts stay within 2 of the exact share (exactly equal whenever the sample count is a
multiple of the reduced ratio's sum, e.g. every 10 samples for 30:50:20), so the long-run ratio is
exact; and equal shares rotate batch by batch (1:1:1 at B = 4 gives 2:1:1, 1:2:1, 1:1:2, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from jf_lightning.data.sources import KINDS, Kind
from jf_lightning.schedules import check_start_steps, segment_at


def integer_ratio(ratio: Sequence[float]) -> tuple[int, ...]:
    """(0.3, 0.5, 0.2) or (30, 50, 20) -> (3, 5, 2): exact integers so priorities compare exactly."""
    fracs = [Fraction(r).limit_denominator(10**6) for r in ratio]
    scale = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * scale) for f in fracs]
    divisor = math.gcd(*ints)
    return tuple(i // divisor for i in ints)


def apportion(total: int, ratio: Sequence[int]) -> list[int]:
    """Counts per kind after ``total`` samples of sequential Sainte-Lague, in closed form.

    Start from a vector known to be inside the answer, then add samples greedily. Safe start: with
    ``K`` kinds, Webster never falls more than ``(K + 1) / 2`` below the exact quota.
    """
    weight_sum, num = sum(ratio), len(ratio)
    counts = [max(0, total * r // weight_sum - num) if r > 0 else 0 for r in ratio]
    for _ in range(total - sum(counts)):
        # argmax of r_k / (2 c_k + 1) by cross-multiplication (exact); strict > keeps the first on ties
        best = -1
        for k, r in enumerate(ratio):
            if r > 0 and (best < 0 or r * (2 * counts[best] + 1) > ratio[best] * (2 * counts[k] + 1)):
                best = k
        counts[best] += 1
    return counts


class RatioSchedule:
    """Piecewise-constant und:gen:text ratio: ``[(start_step, (und, gen, text)), ...]``.

    Stage 2 of the paper: ``RatioSchedule([(0, (30, 50, 20)), (10000, (14, 80, 6))])``. The first entry
    must start at step 0; kinds with ratio 0 are never drawn (and need no sources).
    """

    def __init__(self, entries: Sequence[tuple[int, Sequence[float]]]):
        entries = [(int(start), tuple(float(r) for r in ratio)) for start, ratio in entries]
        starts = [start for start, _ in entries]
        check_start_steps(starts, "ratio schedule")
        for start, ratio in entries:
            if len(ratio) != len(KINDS) or min(ratio) < 0 or sum(ratio) <= 0:
                raise ValueError(
                    f"ratio at step {start} must be 3 non-negative numbers (und, gen, text) "
                    f"with a positive sum, got {ratio}"
                )
        self.starts = starts
        self.ratios = [integer_ratio(ratio) for _, ratio in entries]

    def _segment(self, step: int) -> int:
        return segment_at(self.starts, step)

    def ratio_at(self, step: int) -> dict[Kind, float]:
        """Fractions of each kind at ``step`` (they sum to 1)."""
        ratio = self.ratios[self._segment(step)]
        return {kind: r / sum(ratio) for kind, r in zip(KINDS, ratio)}

    def kind_counts(self, step: int, batch_size: int) -> dict[Kind, int]:
        """Exact integer counts per kind for the batch at ``step``; they sum to ``batch_size``."""
        segment = self._segment(step)
        ratio, local = self.ratios[segment], step - self.starts[segment]
        before = apportion(local * batch_size, ratio)
        after = apportion((local + 1) * batch_size, ratio)
        return {kind: a - b for kind, a, b in zip(KINDS, after, before)}

    def kinds_used(self) -> set[Kind]:
        """Kinds drawn at some step: these need sources."""
        return {kind for ratio in self.ratios for kind, r in zip(KINDS, ratio) if r > 0}

    def scaled(self, factor: int) -> RatioSchedule:
        """The same schedule counted in units ``factor`` times smaller (optimizer steps -> batches)."""
        return RatioSchedule([(start * factor, ratio) for start, ratio in zip(self.starts, self.ratios)])
