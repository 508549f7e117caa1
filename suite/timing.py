"""Framework-free timing: warm-up by time, block-size calibration, adaptive stopping.

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

from suite.stats import relative_iqr

Clock = Callable[[], float]


@dataclass(frozen=True)
class TimingConfig:
    warmup_s: float = 0.05  # >= 25 ms (triton do_bench) absorbs primitive JIT, allocator growth, autotuning
    target_block_s: float = 0.025  # blocks of 10-100 ms keep one sync per block negligible
    min_blocks: int = 7  # fewest blocks that give a 95% order-statistic CI of the median
    max_blocks: int = 60
    target_rel_iqr: float = 0.05  # stop once IQR/median of the blocks falls below this
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
    stop_reason: str  # "stable", "time_cap" or "max_blocks"

    @property
    def stable(self) -> bool:
        return self.stop_reason == "stable"

    @property
    def per_call(self) -> np.ndarray:
        return np.asarray(self.block_times) / self.calls_per_block


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
    # then once more from a real block, which is less noisy.
    calls = _calls_for(config, fastest)
    probe = timed(calls)
    if probe < config.target_block_s / 2:
        calls = _calls_for(config, probe / calls)

    blocks: list[float] = []
    while True:
        blocks.append(timed(calls))
        enough = len(blocks) >= config.min_blocks
        if enough and relative_iqr(blocks) <= config.target_rel_iqr:
            reason = "stable"
            break
        if elapsed() >= config.max_time_s:
            reason = "time_cap"
            break
        if len(blocks) >= config.max_blocks:
            reason = "max_blocks"
            break
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
    larger than the cache and waits for it. Warm-up by time, then calls until IQR/median of the calls falls below
    the target, the time cap or ``max_single_calls``. Returns one "block" per call (``calls_per_block`` = 1).
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
    while True:
        clear()
        calls.append(run_one())
        if len(calls) >= config.min_blocks and relative_iqr(calls) <= config.target_rel_iqr:
            reason = "stable"
            break
        if elapsed() >= config.max_time_s:
            reason = "time_cap"
            break
        if len(calls) >= config.max_single_calls:
            reason = "max_blocks"
            break
    return Samples(tuple(calls), 1, warmup_calls, warmup_s, reason)
