"""suite.stats on skewed samples, against values computed by hand (constant samples cannot tell a median from a
mean, or one pair of percentiles from another)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from suite.stats import (
    NOISY_REL_IQR,
    OVERHEAD_BOUND_S,
    SHORT_BLOCK_S,
    format_seconds,
    median_ci,
    median_ci_ranks,
    ratio_ci,
    relative_ci_half_width,
    relative_iqr,
    summarize,
)

MS = 1e-3
# Nine per-call times with one stall: sorted, so the k-th order statistic is SKEWED[k - 1].
SKEWED = [1, 2, 3, 4, 5, 6, 7, 8, 100]


def test_summary_of_a_skewed_sample_by_hand():
    calls = 4
    summary = summarize([t * MS * calls for t in SKEWED], calls)
    assert summary.median == pytest.approx(5 * MS)  # the 5th of 9; the mean is 15.1 ms
    assert summary.mean == pytest.approx(136 / 9 * MS)
    assert summary.min == pytest.approx(1 * MS)
    # numpy's linear percentiles of 9 values: Q1 is the 3rd value (3), Q3 the 7th (7); (7 - 3) / 5
    assert summary.rel_iqr == pytest.approx(0.8)
    # 95% CI of the median of 9 from order statistics: P(x_(2) <= median <= x_(8)) = 1 - 2·P(Bin(9, ½) <= 1)
    # = 1 - 2·10/512 = 0.961 >= 0.95, while (x_(3), x_(7)) covers only 1 - 2·46/512 = 0.82
    assert (summary.ci_low, summary.ci_high) == pytest.approx((2 * MS, 8 * MS))
    assert summary.blocks == 9 and summary.calls_per_block == calls
    assert summary.flags == ("noisy",)


def test_median_ci_order_statistics_by_hand():
    # 8 values: (x_(1), x_(8)) covers 1 - 2/256 = 0.992; (x_(2), x_(7)) only 1 - 2·9/256 = 0.93
    assert median_ci(np.array([1.0, 1, 2, 3, 5, 8, 13, 21])) == (1.0, 21.0)
    assert median_ci(np.array([4.0, 1, 3, 2, 6, 5])) == (1.0, 6.0)  # 6 values: 1 - 2/64 = 0.969, unsorted input
    low, high = median_ci(np.arange(1.0, 6.0))  # 5 values: at best 1 - 2/32 = 0.94 < 0.95
    assert math.isnan(low) and math.isnan(high)


def test_even_count_median_is_the_mean_of_the_middle_two():
    summary = summarize([1.0, 1, 2, 3, 5, 8, 13, 21], 1)
    assert summary.median == 4.0 and summary.mean == pytest.approx(54 / 8)
    assert (summary.ci_low, summary.ci_high) == (1.0, 21.0)


@pytest.mark.parametrize(("q3", "noisy"), [(10.5, True), (10.499, False), (10.75, True)])
def test_noisy_threshold_is_exactly_a_tenth(q3, noisy):
    # Q1 = 9.5 and Q3 = q3 are the 3rd and 7th of 9 values, the median 10: rel. IQR (q3 - 9.5) / 10
    blocks = [8.0, 9.0, 9.5, 9.75, 10.0, 10.25, q3, 11.0, 12.0]
    summary = summarize(blocks, 1)
    assert summary.rel_iqr == pytest.approx((q3 - 9.5) / 10)
    assert ("noisy" in summary.flags) is noisy
    assert NOISY_REL_IQR == 0.10


def test_overhead_and_short_block_thresholds():
    at = summarize([OVERHEAD_BOUND_S * 100] * 7, 100)  # exactly 50 µs per call in 5 ms blocks: not overhead-bound
    assert at.flags == ()
    below = summarize([OVERHEAD_BOUND_S * 0.99 * 100] * 7, 100)
    assert below.flags == ("overhead_bound",)
    assert summarize([SHORT_BLOCK_S] * 7, 1).flags == ()  # a 1 ms block is long enough
    assert summarize([SHORT_BLOCK_S * 0.99, *[SHORT_BLOCK_S] * 6], 1).flags == ("short_blocks",)


def test_flags_in_order_and_as_dict():
    summary = summarize([0.5e-3, 1e-3, 1e-3], 100, stable=False)  # 5-10 µs per call, 3 short blocks
    assert summary.flags == ("unstable", "noisy", "short_blocks", "overhead_bound", "few_blocks")
    data = summary.as_dict()
    assert data["ci_low"] is None and data["ci_high"] is None  # NaN is not JSON
    assert data["flags"] == list(summary.flags) and data["median"] == pytest.approx(1e-5)
    assert data["blocks"] == 3 and data["calls_per_block"] == 100


def test_relative_iqr_by_hand():
    assert relative_iqr([1, 2, 3, 4, 100]) == pytest.approx((4 - 2) / 3)  # the outlier moves neither quartile
    assert relative_iqr([0.0, 0.0, 0.0]) == math.inf


def test_ratio_of_medians_not_of_means():
    slow = np.array([3.0, 1, 2, 4, 100])  # median 3, mean 22
    fast = np.array([2.0, 1, 1, 50, 50])  # median 2, mean 20.8
    point, low, high = ratio_ci(slow, fast)
    assert point == 1.5
    assert low <= point <= high
    point, low, high = ratio_ci(np.array([2.0]), np.array([4.0]))
    assert point == 0.5 and math.isnan(low) and math.isnan(high)


def test_ratio_ci_is_seeded_and_narrows_with_more_blocks():
    rng = np.random.default_rng(3)
    a, b = 2 + rng.normal(0, 0.1, 8), 1 + rng.normal(0, 0.05, 8)
    few = ratio_ci(a, b)
    assert ratio_ci(a, b) == few  # same seed, same interval
    assert ratio_ci(a, b, seed=1) != few
    rng = np.random.default_rng(4)
    many = ratio_ci(2 + rng.normal(0, 0.1, 200), 1 + rng.normal(0, 0.05, 200))
    assert many[2] - many[1] < few[2] - few[1]
    assert many[1] < 2.0 < many[2]


@pytest.mark.parametrize(("seconds", "text"), [
    (1.5, "1.5 s"), (1.0, "1 s"), (0.00815313, "8.15 ms"), (1e-3, "1 ms"), (8.1531e-6, "8.15 µs"),
    (1e-6, "1 µs"), (2.5e-9, "2.5 ns"), (math.nan, "–"), (math.inf, "–"),
])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_ratio_ci_needs_two_blocks_on_each_side():
    assert all(np.isfinite(ratio_ci(np.array([1.0, 2.0]), np.array([1.0, 3.0]))))
    for num, den in (([1.0, 2.0, 3.0], [2.0]), ([2.0], [1.0, 2.0, 3.0])):
        point, low, high = ratio_ci(np.array(num), np.array(den))
        assert point == np.median(num) / np.median(den) and math.isnan(low) and math.isnan(high)


def test_ratio_ci_is_a_seeded_95_percent_percentile_bootstrap_of_the_median_ratio():
    rng = np.random.default_rng(7)
    slow, fast = rng.lognormal(1.0, 0.3, 15), rng.lognormal(0.0, 0.3, 12)
    expected = sps.bootstrap((slow, fast), lambda a, b, axis=-1: np.median(a, axis=axis) / np.median(b, axis=axis),
                             confidence_level=0.95, n_resamples=2000, method="percentile", vectorized=True,
                             rng=np.random.default_rng(0)).confidence_interval
    point, low, high = ratio_ci(slow, fast)
    assert point == np.median(slow) / np.median(fast)
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    narrower = ratio_ci(slow, fast, confidence=0.5)
    assert low < narrower[1] < narrower[2] < high


def test_summarize_sets_every_flag_once_and_finally():
    """The worker hands its facts to summarize; it does not edit the flags afterwards."""
    short = [5e-4] * 10  # 0.5 ms blocks of one call
    assert "short_blocks" in summarize(short, 1).flags
    device = summarize(short, 1, contended=True, device_timed=True, throttled=True)
    assert "short_blocks" not in device.flags  # one call on the GPU's clock: no host timer in it
    assert device.flags[-2:] == ("contended", "throttled")
    assert summarize(short, 1).flags.count("contended") == 0


def test_median_ci_from_cached_ranks_equals_scipys_quantile_test():
    # the ranks are computed once per count from 0…n-1; on any values they must pick what quantile_test picks
    rng = np.random.default_rng(3)
    for n in range(1, 130):
        values = rng.lognormal(size=n)
        direct = sps.quantile_test(values, q=float(np.median(values)), p=0.5).confidence_interval(0.95)
        assert median_ci(values) == pytest.approx((direct.low, direct.high), nan_ok=True), n
    assert median_ci_ranks(9) == (1.0, 7.0)  # (x_(2), x_(8)) of 9, as by hand above


def test_relative_ci_half_width_by_hand():
    # 9 values: the median 5 and its CI (x_(2), x_(8)) = (2, 8): 3 below and 3 above, relative 0.6
    assert relative_ci_half_width(SKEWED) == pytest.approx(0.6)
    assert relative_ci_half_width([1.0, 1, 1, 1, 1, 1, 1.5]) == pytest.approx(0.5)  # the wider side counts
    assert relative_ci_half_width([1.0] * 5) == math.inf  # no 95% CI of 5 values
    assert relative_ci_half_width([0.0] * 9) == math.inf
