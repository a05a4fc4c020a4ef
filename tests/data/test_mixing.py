import itertools
import random
import time

import pytest

from jf_lightning.data.mixing import RatioSchedule, apportion

STAGE2 = [(0, (30, 50, 20)), (10000, (14, 80, 6))]


def test_ratio_at_follows_the_schedule():
    s = RatioSchedule(STAGE2)
    assert s.ratio_at(0) == pytest.approx({"und": 0.3, "gen": 0.5, "text": 0.2})
    assert s.ratio_at(9999) == s.ratio_at(0)
    assert s.ratio_at(10000) == pytest.approx({"und": 0.14, "gen": 0.8, "text": 0.06})


@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_counts_are_exact_per_batch_and_over_many_batches(batch_size):
    s = RatioSchedule(STAGE2)
    totals = dict.fromkeys(("und", "gen", "text"), 0)
    for step in range(100):
        counts = s.kind_counts(step, batch_size)
        assert sum(counts.values()) == batch_size and min(counts.values()) >= 0
        for k, v in counts.items():
            totals[k] += v
        n = (step + 1) * batch_size
        for k, share in s.ratio_at(step).items():  # cumulative error stays bounded
            assert abs(totals[k] - share * n) <= 2
    # 100 batches of any size is a multiple of 10 samples (3:5:2): exactly proportional
    assert totals == {"und": 30 * batch_size, "gen": 50 * batch_size, "text": 20 * batch_size}


def test_per_batch_rounding_bias_is_gone():
    """Per-batch largest remainder would give 30:50:20 at B=4 as 1:2:1 forever (25% text)."""
    counts = [RatioSchedule(STAGE2).kind_counts(step, 4) for step in range(5)]
    assert sum(c["text"] for c in counts) == 4 and sum(c["und"] for c in counts) == 6


def test_equal_shares_rotate_by_batch_index():
    s = RatioSchedule([(0, (1, 1, 1))])
    seq = [tuple(s.kind_counts(step, 4).values()) for step in range(3)]
    assert seq == [(2, 1, 1), (1, 2, 1), (1, 1, 2)]


def test_schedule_switch_restarts_the_count_and_zero_kinds_are_never_drawn():
    s = RatioSchedule([(0, (50, 50, 0)), (5, (0, 1, 0))])
    assert s.kinds_used() == {"und", "gen"}
    assert all(s.kind_counts(step, 3)["text"] == 0 for step in range(5))
    assert all(s.kind_counts(step, 3) == {"und": 0, "gen": 3, "text": 0} for step in range(5, 50))


def test_float_and_integer_ratios_agree():
    a, b = RatioSchedule([(0, (0.3, 0.5, 0.2))]), RatioSchedule([(0, (30, 50, 20))])
    assert all(a.kind_counts(step, 7) == b.kind_counts(step, 7) for step in range(30))


def test_closed_form_matches_the_sequential_method():
    rng = random.Random(0)
    for _ in range(20):
        ratio = [rng.randint(0, 9) for _ in range(3)]
        if sum(ratio) == 0:
            continue
        counts = [0, 0, 0]
        for n in range(1, 200):
            # sequential Sainte-Lague, first kind on ties
            k = max((k for k in range(3) if ratio[k]), key=lambda k: (ratio[k] / (2 * counts[k] + 1), -k))
            counts[k] += 1
            assert apportion(n, ratio) == counts, (ratio, n)


def test_late_steps_are_cheap():
    s = RatioSchedule(STAGE2)
    t0 = time.perf_counter()
    for step in itertools.islice(itertools.count(390_000 * 8), 200):
        assert sum(s.kind_counts(step, 512).values()) == 512
    assert time.perf_counter() - t0 < 1.0


def test_scaled_stretches_start_steps():
    s = RatioSchedule(STAGE2).scaled(4)
    assert s.starts == [0, 40000]


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [(1, (1, 1, 1))],
        [(0, (1, 1))],
        [(0, (-1, 1, 1))],
        [(0, (0, 0, 0))],
        [(0, (1, 1, 1)), (0, (1, 1, 1))],
    ],
)
def test_bad_schedules_are_refused(entries):
    with pytest.raises(ValueError):
        RatioSchedule(entries)
