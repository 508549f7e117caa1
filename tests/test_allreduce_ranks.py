"""All-reduce across 2 ranks on this CPU, for real (`python -m suite run` subprocesses, no mocks): torch through
torchrun over gloo, JAX through jax.distributed over gloo, TensorFlow through MultiWorkerMirroredStrategy; a rank
that dies or hangs is recorded against its case and the run goes on on fresh ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FAST = ["--op", "allreduce", "--ranks", "2", "--device", "cpu", "--pass", "forward", "--time-cap", "0.3"]


def records(out: Path, kind: str = "measurement") -> list[dict[str, Any]]:
    return [r for r in map(json.loads, out.read_text().splitlines()) if r["record"] == kind]


def suite(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_two_ranks_in_every_framework_sum_exactly_and_record_both_rates(tmp_path):
    for name in ("torch", "jax", "tensorflow"):
        pytest.importorskip(name)
    out = tmp_path / "allreduce.jsonl"
    run = suite("run", *FAST, "--id", "allreduce-sweep-2e10", "--backend", "torch,jax,tensorflow", "-o", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    measured = records(out)
    assert sorted(m["backend"] for m in measured) == ["jax", "tensorflow", "torch"]
    for m in measured:
        assert m["status"] == "ok", (m["backend"], m["reason"])
        assert m["case"] == "allreduce-sweep-2e10-r2" and m["dims"]["ranks"] == 2
        assert m["check"]["status"] == "pass" and m["check"]["errors"]["y"] == 0.0  # the exact sum
        assert m["busbw_gbps"] == pytest.approx(m["algbw_gbps"] * 2 * (2 - 1) / 2)
        assert m["algbw_gbps"] == pytest.approx(m["bytes"] / m["stats"]["median"] / 1e9)
        ranks = m["details"]["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
        if len(os.sched_getaffinity(0)) >= 2:  # pinned to disjoint CPUs
            assert not set(ranks[0]["cpus"]) & set(ranks[1]["cpus"])
    assert {m["backend"]: m["details"]["in_place"] for m in measured} == {"torch": True, "jax": False,
                                                                          "tensorflow": False}
    assert len(records(out, "worker")) == 3
    assert not list(tmp_path.glob("*.ranks-*"))  # the ranks' messages are in the results, their files gone
    report = suite("report", str(out), "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "what bus bandwidth, by message size and rank count?" in page
    assert (tmp_path / "report" / "figures" / "kind-allreduce.png").exists()


def _rank_pid(tmp_path: Path, rank: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    """The pid rank ``rank`` announced in its ready message (its messages file beside the results)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in tmp_path.glob(f"*.ranks-*/rank-{rank}.jsonl"):
            lines = path.read_text().splitlines()
            if lines and lines[0].endswith("}"):
                return json.loads(lines[0])["pid"]
        assert proc.poll() is None, "the run ended before its ranks were ready"
        time.sleep(0.05)
    raise AssertionError("no rank became ready")


@pytest.mark.parametrize(("backend", "how"), [("torch", signal.SIGKILL), ("jax", signal.SIGSTOP)])
def test_a_rank_that_dies_or_hangs_is_recorded_and_the_rest_run_on_fresh_ranks(tmp_path, backend, how):
    pytest.importorskip(backend)
    out = tmp_path / "r.jsonl"
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "suite", "run", *FAST, "--backend", backend, "--time-cap", "8",
                             "--block-time", "2", "--case-timeout", "60", "--id", "allreduce-sweep-2e10",
                             "--id", "allreduce-sweep-2e12", "-o", str(out)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    pid = _rank_pid(tmp_path, 1, proc)
    # into the first case: blocks of 2 s for 8 s, well within the case timeout of 60 s (which also covers the second
    # case's fresh ranks starting on a loaded machine)
    time.sleep(1.0)
    os.kill(pid, how)
    code = proc.wait(timeout=300)
    measured = {m["case"]: m for m in records(out)}
    first, second = measured["allreduce-sweep-2e10-r2"], measured["allreduce-sweep-2e12-r2"]  # catalog order
    expected = {signal.SIGKILL: "crashed", signal.SIGSTOP: "timeout"}[how]
    assert first["status"] == expected, first["reason"]
    assert second["status"] == "ok" and second["check"]["status"] == "pass", second["reason"]
    assert code == 1  # a failure was recorded; the run still finished
    with pytest.raises(ProcessLookupError):  # the hung rank was ended with the others
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_jax_psum_across_the_local_devices_of_one_process(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "devices.jsonl"
    run = suite("run", *FAST, "--id", "allreduce-sweep-2e10", "--backend", "jax", "--layout", "devices", "-o",
                str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    (m,) = records(out)
    assert m["status"] == "ok" and m["layout"] == "devices" and m["check"]["errors"]["y"] == 0.0, m["reason"]
    assert m["details"]["communication"] == "XLA within one process" and len(m["details"]["ranks"]) == 1
    assert m["details"]["waits_each_call"] is True  # XLA:CPU's in-process collective, one call at a time
    (worker,) = records(out, "worker")
    assert "--xla_force_host_platform_device_count=2" in worker["flags"]["XLA_FLAGS"]
