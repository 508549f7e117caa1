"""Many machines, for real: the README's sbatch script as a Slurm job array on a one-node cluster started here.

The cluster needs no systemd: munged, then ``slurmctld -i`` and ``slurmd`` with a minimal slurm.conf in a temporary
folder, on free ports (Debian packages slurm-wlm and munge; .ci/run installs them). Skipped, with the reason, where
Slurm is not installed or does not start. The daemons it started are stopped at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from suite.catalog import load_catalog
from suite.results import read_many, read_results

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol")
# Small on purpose: one backend, the smoke catalog, forward only, short timing.
RUN_ARGS = "--backend torch --catalog smoke --pass forward --time-cap 0.2 --threads 1"


def _program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def readme_sbatch_script(holding: str = "--shard") -> str:
    """The README's sbatch script that holds ``holding``: the bash block that starts with ``#!/bin/bash`` and holds
    ``#SBATCH`` (the job array's holds --shard, the all-reduce's srun)."""
    blocks = [b.split("```")[0] for b in (REPO / "README.md").read_text().split("```bash\n")[1:]]
    scripts = [b for b in blocks if b.startswith("#!/bin/bash") and "#SBATCH" in b and holding in b]
    assert len(scripts) == 1, f"the README should hold exactly one sbatch script with {holding}"
    return scripts[0]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _slurm_conf(folder: Path) -> str:
    ctld_port, d_port = _free_ports(2)
    host = socket.gethostname()
    return f"""\
ClusterName=opbench-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.sock
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=opbench Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except (OSError, IndexError):
        return False


def _stop(folder: Path, env: dict[str, str]) -> None:
    """Stop the daemons this test started (by their pid files, never by name): Slurm's own way first."""
    subprocess.run([_program("scontrol"), "shutdown"], env=env, capture_output=True, timeout=30)
    for name in ("slurmd", "slurmctld", "munged"):
        try:
            pid = int((folder / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        deadline = time.monotonic() + (10 if name != "munged" else 0)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)


def _log_tail(folder: Path) -> str:
    return " | ".join(f"{p.name}: {p.read_text(errors='replace').strip().splitlines()[-1:]}"
                      for p in sorted(folder.glob("*.log")))


@pytest.fixture
def slurm() -> Iterator[dict[str, str]]:
    """A one-node Slurm cluster; yields the environment its clients need (SLURM_CONF)."""
    missing = [name for name in PROGRAMS if _program(name) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not found): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root here (it runs the jobs as their user)")
    folder = Path(tempfile.mkdtemp(prefix="opbench-slurm-"))  # short: a unix socket path is at most 107 bytes
    folder.chmod(0o755)
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    (folder / "munge.key").write_bytes(os.urandom(1024))
    (folder / "munge.key").chmod(0o600)
    (folder / "slurm.conf").write_text(_slurm_conf(folder))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        for command in ([_program("munged"), "--force", f"--socket={folder}/munge.sock",
                         f"--key-file={folder}/munge.key", f"--log-file={folder}/munged.log",
                         f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed"],
                        [_program("slurmctld"), "-i"], [_program("slurmd")]):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            if started.returncode:
                pytest.skip(f"Slurm did not start: {Path(command[0]).name} exited {started.returncode}: "
                            f"{(started.stderr or started.stdout).strip()[-300:]} {_log_tail(folder)}")
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run([_program("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            pytest.skip(f"the Slurm node did not become idle within 60 s (state {state!r}): {_log_tail(folder)}")
        yield env
    finally:
        _stop(folder, env)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_readme_sbatch_script_as_an_array_of_two_then_merge_and_report(slurm, tmp_path):
    script = tmp_path / "opbench.sbatch"
    script.write_text(readme_sbatch_script())
    env = {**slurm, "OPBENCH_PYTHON": sys.executable, "OPBENCH_ARGS": RUN_ARGS}
    submitted = subprocess.run([_program("sbatch"), "--parsable", "--wait", "--array=1-2", str(script)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(tmp_path.glob("opbench-*.out")))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr + logs
    job = re.match(r"\d+", submitted.stdout.strip())[0]
    shards = sorted((tmp_path / "results" / f"slurm-{job}").glob("shard-*.jsonl"))
    assert [p.name for p in shards] == ["shard-1.jsonl", "shard-2.jsonl"], logs

    cases = [{m.case for m in read_results(p).measurements} for p in shards]
    assert cases[0] and cases[1] and not cases[0] & cases[1]  # disjoint parts, whole cases
    assert cases[0] | cases[1] == {c.id for c in load_catalog().subset("smoke")}

    python = [sys.executable, "-m", "suite"]
    merged = subprocess.run([*python, "merge", f"results/slurm-{job}", "-o", "results/torch.jsonl"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    measurements = read_many([tmp_path / "results" / "torch.jsonl"]).measurements
    assert {m.case for m in measurements} == cases[0] | cases[1]
    assert all(m.status in ("ok", "unsupported") for m in measurements)
    report = subprocess.run([*python, "report", "results/torch.jsonl", "-o", "build/report"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "torch" in (tmp_path / "build" / "report" / "index.html").read_text()


def test_readme_script_runs_one_shard_per_array_task():
    script = readme_sbatch_script()
    assert "--shard \"${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}\"" in script
    assert "OPBENCH_PYTHON" in script and "OPBENCH_ARGS" in script


# The README's all-reduce example, small: torch on the CPU, the smallest sweep size, forward, short timing.
ALLREDUCE_ARGS = "--backend torch --id allreduce-sweep-2e10 --device cpu --pass forward --time-cap 0.3"


@pytest.mark.slow
def test_readme_allreduce_script_as_two_srun_tasks_each_writing_its_records_then_merge(slurm, tmp_path):
    script = tmp_path / "opbench-allreduce.sbatch"
    script.write_text(readme_sbatch_script("srun"))
    env = {**slurm, "OPBENCH_PYTHON": sys.executable, "OPBENCH_ARGS": ALLREDUCE_ARGS,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    submitted = subprocess.run([_program("sbatch"), "--parsable", "--wait", "--nodes=1", "--ntasks=2", str(script)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("opbench-allreduce-*.out")))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr + logs
    job = re.match(r"\d+", submitted.stdout.strip())[0]
    ranks = sorted((tmp_path / "results" / f"allreduce-{job}").glob("rank-*.jsonl"))
    assert [p.name for p in ranks] == ["rank-0.jsonl", "rank-1.jsonl"], logs  # each rank wrote its records
    per_rank = [read_results(p).measurements for p in ranks]
    for measurements in per_rank:
        (m,) = measurements
        assert m.case == "allreduce-sweep-2e10-r2" and m.status == "ok" and not m.check.failed, m.reason
        assert [r["rank"] for r in m.details["ranks"]] == [int(ranks[per_rank.index(measurements)].stem[5:])]
    assert per_rank[0][0].block_times == per_rank[1][0].block_times  # both ranks kept the slowest rank's times
    merged = read_results(tmp_path / "results" / f"allreduce-{job}.jsonl")  # the script's merge
    assert [m.case for m in merged.measurements] == ["allreduce-sweep-2e10-r2"]
    assert len(merged.headers) == 2
