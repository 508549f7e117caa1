"""Faults during real runs (torch on tiny shapes, `python -m suite run` subprocesses, no mocks): failing cases,
out of memory, time limits, dying workers, Ctrl-C and kill -9 lose no finished measurement and repeat none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from suite.results import measurement_key, read_results

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BASE = ["--catalog", "smoke", "--backend", "torch", "--pass", "forward", "--time-cap", "0.3"]
SMOKE = [*BASE, "--id", "smoke-gemm*", "--id", "smoke-conv*"]
SMOKE_CASES = 5  # smoke-gemm-64, smoke-gemm-transposed and three convs


def _ctrl_c_as_at_a_terminal() -> None:
    """A shell's background job (as a CI runner may start the tests) inherits SIGINT ignored, and Python keeps it
    ignored; the run under test gets Ctrl-C as a user at a terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(tmp_path: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = (tmp_path / f"{out.stem}.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "suite", "run", "-o", str(out), *args], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=_ctrl_c_as_at_a_terminal)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    code = proc.wait(timeout=timeout)
    log = Path(proc.args[proc.args.index("-o") + 1])
    return code, (log.parent / f"{log.stem}.log").read_text()


def records(out: Path, kind: str = "measurement") -> list[dict[str, Any]]:
    return [r for r in map(json.loads, out.read_text().splitlines()) if r["record"] == kind] if out.exists() else []


def wait_for(condition: Callable[[], Any], proc: subprocess.Popen, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        assert proc.poll() is None, "the run ended before the condition held"
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def tmp_catalog(tmp_path: Path) -> Path:
    prov = {"network": "test", "layer": "test", "source": "test"}
    cases = [
        {"id": "asymmetric", "op": "conv2d", "provenance": prov,
         "dims": {"n": 1, "c": 2, "h": 6, "w": 6, "k": 2, "r": 3, "s": 3, "padding": [0, 1, 1, 0]}},
        {"id": "huge", "op": "conv2d", "provenance": prov,  # terabytes: the memory guard must skip it
         "dims": {"n": 4096, "c": 1024, "h": 512, "w": 512, "k": 1024, "r": 3, "s": 3, "padding": 1}},
        {"id": "tiny", "op": "gemm", "dims": {"m": 8, "n": 8, "k": 8}, "provenance": prov},
    ]
    folder = tmp_path / "shapes"
    folder.mkdir()
    (folder / "cases.yaml").write_text(yaml.safe_dump({"cases": cases}))
    return folder


def test_failing_cases_are_recorded_with_their_reason_and_the_run_goes_on(tmp_path):
    out = tmp_path / "fail.jsonl"
    proc = start(tmp_path, out, "--shapes", str(tmp_catalog(tmp_path)), "--catalog", "all", "--backend", "torch",
                 "--mode", "eager,compile", "--pass", "forward", "--time-cap", "0.2",
                 env={"TORCHINDUCTOR_CACHE_DIR": "/dev/null/cache"})  # torch.compile cannot write its code: fails
    code, log = finish(proc)
    assert code == 1, log  # one measurement errored; the run still finished
    got = {(m["case"], m["mode"]): m for m in records(out)}
    assert {k: m["status"] for k, m in got.items()} == {
        ("asymmetric", "eager"): "unsupported", ("asymmetric", "compile"): "unsupported",
        ("huge", "eager"): "skipped", ("huge", "compile"): "skipped",
        ("tiny", "eager"): "ok", ("tiny", "compile"): "error"}
    assert "asymmetric padding" in got["asymmetric", "eager"]["reason"]
    huge = got["huge", "eager"]
    assert "memory guard" in huge["reason"] and "MemAvailable" in huge["reason"] and "not allocated" in huge["reason"]
    assert huge["memory"]["need_bytes"] > huge["memory"]["free_bytes"] and "wall_s" in huge
    assert "/dev/null/cache" in got["tiny", "compile"]["reason"] and got["tiny", "compile"]["traceback"]
    assert got["tiny", "eager"]["stats"]["median"] > 0
    assert len(records(out, "worker")) == 1  # none of this needed a new worker


def test_a_case_past_its_time_limit_is_killed_and_the_rest_measured(tmp_path):
    out = tmp_path / "timeout.jsonl"
    proc = start(tmp_path, out, *BASE, "--id", "smoke-gemm*", "--mode", "eager,compile", "--case-timeout", "2",
                 env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})  # cold: compiling takes longer
    code, log = finish(proc)
    assert code == 1, log  # timeouts are failures
    got = [(m["case"], m["mode"], m["status"]) for m in records(out)]
    assert got == [("smoke-gemm-64", "eager", "ok"), ("smoke-gemm-64", "compile", "timeout"),
                   ("smoke-gemm-transposed", "eager", "ok"), ("smoke-gemm-transposed", "compile", "timeout")]
    assert "no result within 2 s; the worker was killed" in records(out)[1]["reason"]
    workers = records(out, "worker")
    assert len(workers) == 2 and all(gone(w["pid"]) for w in workers)  # killed, restarted once, none left


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_worker_that_dies_is_recorded_against_its_case_and_restarted(tmp_path, sig):
    out = tmp_path / "crash.jsonl"
    proc = start(tmp_path, out, *SMOKE)
    pid = wait_for(lambda: records(out) and records(out, "worker")[0]["pid"], proc)  # busy with case 2
    os.kill(pid, sig)
    code, log = finish(proc)
    assert code == 1, log  # a crash is a failure
    statuses = Counter(m["status"] for m in records(out))
    assert statuses == {"ok": SMOKE_CASES - 1, "crashed": 1}, statuses
    crashed = next(m for m in records(out) if m["status"] == "crashed")
    assert f"worker process killed by signal {sig.name}" in crashed["reason"]
    assert len({measurement_key(m) for m in records(out)}) == SMOKE_CASES
    workers = records(out, "worker")
    assert len(workers) == 2 and workers[0]["pid"] == pid != workers[1]["pid"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; kill or a cancelled Slurm job
def test_ctrl_c_exits_130_keeps_what_finished_and_resume_completes(tmp_path, sig):
    out = tmp_path / "int.jsonl"
    long = [*SMOKE, "--pass", "all", "--time-cap", "1"]  # 20 measurements, several seconds: the signal lands mid-run
    proc = start(tmp_path, out, *long)
    wait_for(lambda: records(out), proc)
    proc.send_signal(sig)
    code, log = finish(proc)
    assert code == 130 and "interrupted: every finished measurement is in" in log and "--resume" in log, log
    assert "Traceback" not in log
    before = read_results(out).measurements
    assert 1 <= len(before) < 4 * SMOKE_CASES
    assert gone(records(out, "worker")[0]["pid"])  # the worker did not outlive the run
    code, log = finish(start(tmp_path, out, *long, "--resume"))
    assert code == 0, log
    after = read_results(out).measurements
    assert len(after) == 4 * SMOKE_CASES == len({m.key for m in after})
    assert after[:len(before)] == before  # kept as they were, not measured again


def test_resume_after_kill_9_of_the_run_and_its_worker(tmp_path):
    out = tmp_path / "kill9.jsonl"
    proc = start(tmp_path, out, *SMOKE)
    wait_for(lambda: len(records(out)) >= 2, proc)
    proc.kill()  # the parent, as a crash of the machine would ...
    os.killpg(records(out, "worker")[0]["pid"], signal.SIGKILL)  # ... and the worker's own process group
    proc.wait()
    before = read_results(out).measurements
    code, log = finish(start(tmp_path, out, *SMOKE, "--resume"))
    assert code == 0, log
    results = read_results(out)
    keys = [m.key for m in results.measurements]
    assert len(keys) == SMOKE_CASES == len(set(keys)), Counter(keys)
    assert results.measurements[:len(before)] == before
    assert len(results.headers) == 2 and not [m for m in results.measurements if m.status != "ok"]


def test_concurrent_runs_into_two_files_and_every_line_is_durable(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    procs = [start(tmp_path, one, *SMOKE), start(tmp_path, two, *BASE, "--id", "smoke-conv*")]
    seen = 0
    while procs[0].poll() is None:  # each line that appears is a whole record the reader accepts
        text = one.read_text() if one.exists() else ""
        if text.count("\n") > seen:
            seen = text.count("\n")
            results = read_results(one)
            assert len(results.headers) + len(results.workers) + len(results.measurements) >= seen
        time.sleep(0.02)
    for proc in procs:
        code, log = finish(proc)
        assert code == 0, log
    assert len(read_results(one).measurements) == SMOKE_CASES and not read_results(one).warnings
    assert [m.case for m in read_results(two).measurements] == ["smoke-conv-3x3", "smoke-conv-strided",
                                                                "smoke-conv-depthwise"]
    assert {m.run_id for m in read_results(one).measurements}.isdisjoint(
        m.run_id for m in read_results(two).measurements)


def test_max_run_time_stops_starting_measurements_and_says_resume_continues(tmp_path):
    out = tmp_path / "cap.jsonl"
    code, log = finish(start(tmp_path, out, *BASE, "--id", "smoke-gemm*", "--max-run-time", "0.001"))
    assert code == 0, log
    assert "2 measurements not started" in " ".join(log.split()) and "--resume to continue" in log
    assert records(out) == []
    code, log = finish(start(tmp_path, out, *BASE, "--id", "smoke-gemm*", "--resume"))
    assert code == 0 and len(records(out)) == 2, log


def test_retry_failed_measures_again_only_what_failed_and_the_new_record_supersedes(tmp_path):
    out = tmp_path / "retry.jsonl"
    args = [*BASE, "--id", "smoke-gemm-64", "--mode", "eager,compile"]
    code, log = finish(start(tmp_path, out, *args, env={"TORCHINDUCTOR_CACHE_DIR": "/dev/null/cache"}))
    assert code == 1 and "--retry-failed measures them again" in " ".join(log.split()), log
    assert [(m["mode"], m["status"]) for m in records(out)] == [("eager", "ok"), ("compile", "error")]
    code, log = finish(start(tmp_path, out, *args, "--retry-failed",
                             env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}), timeout=300)
    assert code == 0, log  # the failure is gone: it was measured again, and nothing else was
    raw = records(out)
    assert [(m["mode"], m["status"]) for m in raw] == [("eager", "ok"), ("compile", "error"), ("compile", "ok")]
    assert raw[2]["retry_of"]["status"] == "error" and "/dev/null/cache" in raw[2]["retry_of"]["reason"]
    assert raw[2]["retry_of"]["run_id"] == raw[1]["run_id"] != raw[2]["run_id"]
    assert [(m.key.mode, m.status) for m in read_results(out).measurements] == [("eager", "ok"), ("compile", "ok")]
    code, log = finish(start(tmp_path, out, *args, "--retry-failed"))
    assert code == 0 and len(records(out)) == 3, log  # nothing failed: nothing to measure again
