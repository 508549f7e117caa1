"""Statistics of raw block times: median per call with a 95% CI, spread, and noise flags; ratio CIs."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

NOISY_REL_IQR = 0.10  # IQR/median at or above this: flag the result noisy
SHORT_BLOCK_S = 1e-3  # a block shorter than this is dominated by timer and sync overhead
OVERHEAD_BOUND_S = 50e-6  # a call this short measures framework dispatch more than the kernel
CONTENDED_SHARE = 0.25  # share of the usable CPUs' time that other processes took while timing: the blocks then
#                          include time the op waited for a core


@dataclass(frozen=True)
class Summary:
    median: float  # seconds per call
    ci_low: float  # 95% confidence interval of the median (order statistics; NaN with too few blocks)
    ci_high: float
    rel_iqr: float  # (Q3 - Q1) / median
    min: float
    mean: float
    blocks: int
    calls_per_block: int
    flags: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        data = asdict(self)
        data["flags"] = list(self.flags)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}


def format_seconds(seconds: float) -> str:
    """A time with three significant digits in s, ms, µs or ns; "–" when it is not a number."""
    if not math.isfinite(seconds):
        return "–"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def relative_iqr(values: np.ndarray | list[float] | tuple[float, ...]) -> float:
    """(Q3 - Q1) / median: the spread the timing loop stops on and the noise flag reads; inf for a zero median."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float((q3 - q1) / median) if median > 0 else math.inf


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[float, float]:
    """0-based ranks, in sorted order, of the two order statistics that bound the distribution-free CI of the median
    of ``n`` values (NaN where ``n`` is too small for the level): scipy's ``quantile_test`` interval of the values
    0…n-1, which are their own ranks. It depends on ``n`` alone, so it is computed once per count (scipy takes ~3 ms
    a call, a third of a 10 ms block, and the timing loop asks after every block)."""
    ci = sps.quantile_test(np.arange(n, dtype=float), q=(n - 1) / 2, p=0.5).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def median_ci(values: np.ndarray | list[float] | tuple[float, ...], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics (NaN when too few values for the level)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    low, high = median_ci_ranks(len(ordered), confidence)
    return (math.nan if math.isnan(low) else float(ordered[int(low)]),
            math.nan if math.isnan(high) else float(ordered[int(high)]))


def relative_ci_half_width(values: np.ndarray | list[float] | tuple[float, ...]) -> float:
    """How far the 95% CI of the median reaches from it, relative to it: max(median - low, high - median) / median,
    the number the timing loop stops on (inf without a CI or for a zero median)."""
    median = float(np.median(values))
    low, high = median_ci(values)
    if math.isnan(low) or math.isnan(high) or median <= 0:
        return math.inf
    return max(median - low, high - median) / median


def median_per_call(block_times: list[float] | tuple[float, ...], calls_per_block: int) -> float:
    """The median time per call: what every result reports (and what readers check stored stats against)."""
    return float(np.median(np.asarray(block_times, dtype=float) / calls_per_block))


def contended(others_cpu_s: float | None, wall_s: float, cpus: int) -> bool:
    """Whether other processes took at least ``CONTENDED_SHARE`` of the ``cpus`` usable CPUs' time during ``wall_s``
    of timing (unknown, e.g. without Linux /proc/stat, is not flagged). A framework's own threads queueing for the
    cores it was given are not contention: they are how that framework runs."""
    return others_cpu_s is not None and wall_s > 0 and others_cpu_s / (wall_s * cpus) >= CONTENDED_SHARE


def summarize(block_times: list[float] | tuple[float, ...], calls_per_block: int, stable: bool = True, *,
              contended: bool = False, device_timed: bool = False, throttled: bool = False) -> Summary:
    """Median per call with its CI, spread, and every flag, final: ``contended`` (other processes took the CPUs),
    ``throttled`` (the GPU ran below its clocks); ``device_timed`` blocks are single calls on the GPU's own clock,
    which no host timer or sync overhead shortens, so they are never ``short_blocks``."""
    per_call = np.asarray(block_times, dtype=float) / calls_per_block
    median = median_per_call(block_times, calls_per_block)
    low, high = median_ci(per_call)
    rel_iqr = relative_iqr(per_call)
    flags = []
    if not stable:
        flags.append("unstable")
    if rel_iqr >= NOISY_REL_IQR:
        flags.append("noisy")
    if min(block_times) < SHORT_BLOCK_S and not device_timed:
        flags.append("short_blocks")
    if median < OVERHEAD_BOUND_S:
        flags.append("overhead_bound")
    if math.isnan(low):
        flags.append("few_blocks")
    if contended:
        flags.append("contended")
    if throttled:
        flags.append("throttled")
    return Summary(median, low, high, rel_iqr, float(per_call.min()), float(per_call.mean()),
                   len(per_call), calls_per_block, tuple(flags))


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, confidence: float = 0.95,
             resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of medians (e.g. time of B / time of A = speedup of A) with a bootstrap percentile CI."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    point = float(np.median(num) / np.median(den))
    if len(num) < 2 or len(den) < 2:
        return point, math.nan, math.nan
    result = sps.bootstrap((num, den), lambda a, b, axis=-1: np.median(a, axis=axis) / np.median(b, axis=axis),
                           confidence_level=confidence, n_resamples=resamples, method="percentile",
                           vectorized=True, rng=np.random.default_rng(seed))
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)
