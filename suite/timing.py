"""Framework-free timing: warm-up by time, block-size calibration, adaptive stopping.

The stopping rule is on the confidence interval of the median, as pyperf and nvbench stop on noise rather than on a
fixed count: blocks are collected until the 95% order-statistic CI of their median lies within ±``target_rel_ci`` of
it or their IQR/median falls to ``target_rel_iqr`` (at least ``min_blocks``), or until ``max_blocks`` or the time
cap, which leave the result unsettled (flagged ``unstable``). The median's CI narrows as blocks accumulate even when
the spread does not, so a noisy machine still settles, later, while a rule on the spread alone (IQR/median) never
does. It complements the spread rule (IQR/median <= 5%), which still stops a quiet measurement at 7 blocks. Replayed
on block sequences recorded here (2-core machine, 10 ms blocks): 36 smoke measurements took 24.3 blocks on average
instead of 34.3, 7 left unsettled instead of 18; 322 of the main job's torch measurements 26.0 instead of 33.0, 79
unsettled instead of 148. ±2.5% alone took more blocks than the spread rule.

A backend hands over ``run_block(n)``: n back-to-back calls closed by ONE device synchronization. This module
decides how many calls and blocks to run and keeps every block time; it never looks at a framework, and tests
drive it with a fake clock. For a cold cache (``--l2 cold``), ``measure_per_call`` takes ``run_one()`` (one call,
returning its own time) and ``clear()`` (a write larger than the cache) and times every call on its own.

Ranks of a collective (an all-reduce across processes) must run the same calls in step, or one waits forever for
the others: ``measure`` then takes ``agree``, the maximum of a number over the ranks, and passes every time it
decides on through it. Every rank so takes the same decisions from the same numbers, and each block's time is the
slowest rank's, as nccl-tests records it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from suite.stats import relative_ci_half_width, relative_iqr

Clock = Callable[[], float]


@dataclass(frozen=True)
class TimingConfig:
    warmup_s: float = 0.025  # triton do_bench's 25 ms after the first call: primitive JIT, allocator growth, autotuning
    target_block_s: float = 0.025  # blocks of 10-100 ms keep one sync per block negligible
    min_blocks: int = 7  # fewest blocks before stopping (6 give a 95% order-statistic CI of the median at all)
    max_blocks: int = 60
    target_rel_ci: float = 0.05  # stop once the 95% CI of the median lies within ±5% of it ...
    target_rel_iqr: float = 0.05  # ... or once IQR/median of the blocks falls below this (the earlier rule alone)
    max_time_s: float = 10.0  # per-case cap on warm-up + calibration + blocks; hitting it marks the result unstable
    max_calls_per_block: int = 1_000_000
    max_single_calls: int = 1000  # cold-cache mode (one call at a time): stop after this many calls


@dataclass(frozen=True)
class Samples:
    """Raw timing of one case: every block time, in seconds, of ``calls_per_block`` calls each."""

    block_times: tuple[float, ...]
    calls_per_block: int
    warmup_calls: int
    warmup_s: float
    stop_reason: str  # "stable" (the median's CI reached the target), "time_cap" or "max_blocks"

    @property
    def stable(self) -> bool:
        return self.stop_reason == "stable"

    @property
    def per_call(self) -> np.ndarray:
        return np.asarray(self.block_times) / self.calls_per_block


def settled(times: list[float], config: TimingConfig) -> bool:
    """Whether the times so far (blocks, or single calls) answer the median well enough to stop: at least
    ``config.min_blocks`` of them, and the 95% CI of their median within ±``config.target_rel_ci`` of it or their
    spread (IQR/median) at most ``config.target_rel_iqr``."""
    return len(times) >= config.min_blocks and (relative_ci_half_width(times) <= config.target_rel_ci
                                                or relative_iqr(times) <= config.target_rel_iqr)


def _stop(times: list[float], config: TimingConfig, elapsed: float, limit: int) -> str:
    """Why to stop collecting: "stable" (``settled``), "time_cap", "max_blocks" (``limit`` times); "" to go on."""
    if settled(times, config):
        return "stable"
    if elapsed >= config.max_time_s:
        return "time_cap"
    return "max_blocks" if len(times) >= limit else ""


def _timed(run_block: Callable[[int], None], n: int, clock: Clock) -> float:
    start = clock()
    run_block(n)
    return clock() - start


def same(value: float) -> float:
    """``agree`` of a single process: its own number."""
    return value


def measure(run_block: Callable[[int], None], config: TimingConfig = TimingConfig(),
            clock: Clock = time.perf_counter, agree: Callable[[float], float] = same) -> Samples:
    """Warm up for ``config.warmup_s``, calibrate the calls per block, then collect blocks adaptively.

    ``agree``: the maximum over the ranks of a collective (``same`` for one process); every elapsed time and block
    time goes through it, so all ranks time the same blocks and keep the slowest rank's times."""
    began = clock()

    def elapsed() -> float:
        return agree(clock() - began)

    def timed(n: int) -> float:
        return agree(_timed(run_block, n, clock))

    warmup_calls, fastest = 0, float("inf")
    while warmup_calls == 0 or elapsed() < config.warmup_s:
        fastest = min(fastest, timed(1))
        warmup_calls += 1
        if elapsed() >= config.max_time_s:
            break
    warmup_s = elapsed()

    # Calibrate from the fastest warm-up call (one stalled call must not shrink every block to a single call),
    # then once more from a real block, which is less noisy. A probe that keeps the calibration is a block like
    # every later one (same calls, after the warm-up) and counts as the first: a call of 0.1 s is not run for nothing.
    calls = _calls_for(config, fastest)
    probe = timed(calls)
    blocks: list[float] = [probe]
    if probe < config.target_block_s / 2:
        calls, blocks = _calls_for(config, probe / calls), []
    reason = ""
    while not blocks or not (reason := _stop(blocks, config, elapsed(), config.max_blocks)):
        blocks.append(timed(calls))
    return Samples(tuple(blocks), calls, warmup_calls, warmup_s, reason)


def _calls_for(config: TimingConfig, seconds_per_call: float) -> int:
    if seconds_per_call <= 0:
        return config.max_calls_per_block
    return int(min(config.max_calls_per_block, max(1, round(config.target_block_s / seconds_per_call))))


# ---------------------------------------------------------------------------------------------- cold cache
CLEAR_MIN_BYTES = 256 * 2**20  # triton do_bench's cache-clearing buffer: larger than any GPU's L2 today


def clear_buffer_bytes(cache_bytes: int | None) -> int:
    """Bytes to write between calls so that nothing a call left in a cache of ``cache_bytes`` survives to the next.

    Twice the cache (a write of the cache's size can leave lines behind under non-LRU replacement), and never less
    than triton's 256 MB, which also covers a cache whose size the framework does not report (None).
    """
    return max(CLEAR_MIN_BYTES, 2 * cache_bytes) if cache_bytes else CLEAR_MIN_BYTES


def host_timed(call: Callable[[], None], clock: Clock = time.perf_counter) -> Callable[[], float]:
    """A ``run_one`` for frameworks without device events: one call and its sync, on the host clock.

    The time includes the call's dispatch and the sync (tens of microseconds on a GPU), which blocks amortize but
    a single call cannot; ``measure_per_call`` records which timer ran.
    """

    def run_one() -> float:
        start = clock()
        call()
        return clock() - start

    return run_one


def measure_per_call(run_one: Callable[[], float], clear: Callable[[], object], config: TimingConfig = TimingConfig(),
                     clock: Clock = time.perf_counter) -> Samples:
    """Cold-cache timing: ``clear()`` before every call, and every call timed on its own by ``run_one``.

    ``run_one`` runs ONE call and returns its seconds, from device events where the framework has them (triton's
    do_bench: the clearing write stays outside the timed region) or from ``host_timed``; ``clear`` writes a buffer
    larger than the cache and waits for it. Warm-up by time, then calls until the CI of their median reaches the
    target (``settled``), the time cap or ``max_single_calls``. Returns one "block" per call (``calls_per_block`` = 1).
    """
    began = clock()

    def elapsed() -> float:
        return clock() - began

    warmup_calls = 0
    while warmup_calls == 0 or elapsed() < config.warmup_s:
        clear()
        run_one()
        warmup_calls += 1
        if elapsed() >= config.max_time_s:
            break
    warmup_s = elapsed()
    calls: list[float] = []
    reason = ""
    while not calls or not (reason := _stop(calls, config, elapsed(), config.max_single_calls)):
        clear()
        calls.append(run_one())
    return Samples(tuple(calls), 1, warmup_calls, warmup_s, reason)
