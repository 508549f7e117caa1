"""A measurement timed while other processes took the CPUs is flagged `contended` (from /proc/stat less the worker's
own CPU time), so a report never presents an oversubscribed timing as clean; a framework's own threads are not
contention."""

from __future__ import annotations

import itertools
import time

import pytest

import suite.worker
from suite.environment import cpu_busy_s
from suite.stats import CONTENDED_SHARE, contended
from tests.test_gpu import FAST, TASK, NumpyGpu


@pytest.mark.parametrize("others, wall, cpus, flagged", [
    (None, 1.0, 2, False),  # unknown: not flagged
    (0.0, 1.0, 2, False),
    (CONTENDED_SHARE * 2 * 2.0 - 1e-9, 2.0, 2, False),  # just under the share of 2 CPUs over 2 s
    (CONTENDED_SHARE * 2 * 2.0, 2.0, 2, True),  # at it
    (1.0, 1.0, 2, True),  # one of two CPUs taken
    (1.0, 1.0, 8, False),  # one of eight
    (1.0, 0.0, 2, False),  # no timing at all
])
def test_contended_is_the_share_of_the_usable_cpus_other_processes_took(others, wall, cpus, flagged):
    assert contended(others, wall, cpus) is flagged


def test_the_busy_time_of_our_cpus_counts_our_own_work():
    first = cpu_busy_s()
    if first is None:
        pytest.skip("this kernel has no /proc/stat")
    own, began = time.process_time(), time.perf_counter()
    while time.perf_counter() - began < 0.2:  # keep one CPU busy
        pass
    assert cpu_busy_s() - first >= 0.5 * (time.process_time() - own) > 0


@pytest.mark.parametrize("busy, flagged", [((0.0, 0.0), False), ((0.0, 1000.0), True)])
def test_the_worker_records_what_others_took_and_flags_a_contended_timing(monkeypatch, busy, flagged):
    readings = itertools.chain(busy, itertools.repeat(busy[-1]))
    monkeypatch.setattr(suite.worker, "cpu_busy_s", lambda: next(readings))
    result = suite.worker.run_task(NumpyGpu(), TASK, FAST, check=False, seed=0)
    assert result["status"] == "ok", result.get("reason")
    assert result["others_cpu_s"] == pytest.approx(max(0.0, busy[1] - busy[0]), abs=0.5)  # less our own CPU time
    assert ("contended" in result["stats"]["flags"]) is flagged


def test_unknown_busy_time_is_recorded_as_unknown_and_not_flagged(monkeypatch):
    monkeypatch.setattr(suite.worker, "cpu_busy_s", lambda: None)
    result = suite.worker.run_task(NumpyGpu(), TASK, FAST, check=False, seed=0)
    assert result["others_cpu_s"] is None and "contended" not in result["stats"]["flags"]
