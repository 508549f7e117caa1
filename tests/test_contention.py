"""A measurement timed while other processes held the cores is flagged `contended`, from the time the worker's
threads waited for a core (Linux schedstat), so a report never presents an oversubscribed timing as clean."""

from __future__ import annotations

import itertools

import pytest

import suite.worker
from suite.environment import run_queue_wait_s
from suite.stats import CONTENDED_WAIT, contended
from tests.test_gpu import FAST, TASK, NumpyGpu


@pytest.mark.parametrize("waited, wall, flagged", [
    (None, 1.0, False),  # unknown: not flagged
    (0.0, 1.0, False),
    (CONTENDED_WAIT * 2.0 - 1e-9, 2.0, False),  # just under the threshold
    (CONTENDED_WAIT * 2.0, 2.0, True),  # at it
    (0.5, 1.0, True),
    (1.0, 0.0, False),  # no timing at all
])
def test_contended_is_a_wait_per_second_of_timing_at_or_above_the_threshold(waited, wall, flagged):
    assert contended(waited, wall) is flagged


def test_the_run_queue_wait_of_this_process_is_seconds_that_never_decrease():
    first = run_queue_wait_s()
    if first is None:
        pytest.skip("this kernel has no /proc/self/task/*/schedstat")
    sum(range(200_000))  # run a little
    assert 0.0 <= first <= run_queue_wait_s()


@pytest.mark.parametrize("waits, flagged", [((0.0, 0.0), False), ((1.0, 1000.0), True)])
def test_the_worker_records_the_wait_and_flags_a_contended_timing(monkeypatch, waits, flagged):
    readings = itertools.chain(waits, itertools.repeat(waits[-1]))
    monkeypatch.setattr(suite.worker, "run_queue_wait_s", lambda: next(readings))
    result = suite.worker.run_task(NumpyGpu(), TASK, FAST, check=False, seed=0)
    assert result["status"] == "ok", result.get("reason")
    assert result["cpu_wait_s"] == pytest.approx(waits[1] - waits[0])
    assert ("contended" in result["stats"]["flags"]) is flagged


def test_an_unknown_wait_is_recorded_as_unknown_and_not_flagged(monkeypatch):
    monkeypatch.setattr(suite.worker, "run_queue_wait_s", lambda: None)
    result = suite.worker.run_task(NumpyGpu(), TASK, FAST, check=False, seed=0)
    assert result["cpu_wait_s"] is None and "contended" not in result["stats"]["flags"]
