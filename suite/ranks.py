"""The ranks of a collective (an all-reduce across R processes): started with the framework's own launcher, or by
Slurm's srun, and followed as one worker.

Each rank is ``python -m suite.worker SPEC`` (suite/worker.py: the setup and the tasks in the SPEC file; its messages,
the worker protocol's, to ``rank-<rank>.jsonl`` beside it). Who starts the ranks:

- torch: ``torchrun`` (``python -m torch.distributed.run``), R ranks on this machine; it ends every rank when one
  dies (no restarts);
- a framework without a launcher of its own (JAX, TensorFlow): R worker processes started here, with the variables
  torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so a rank reads one
  contract whoever started it;
- under ``srun`` (SLURM_PROCID and SLURM_NTASKS set, more than one task): srun has started one ``suite run`` per rank
  on the nodes; each starts its own rank's worker only, with those variables taken from Slurm's (MASTER_ADDR and
  MASTER_PORT from the job script) and follows that one; each rank writes its own results file.

On one machine the ranks are pinned to disjoint shares of the usable CPUs (the worker pins itself by local rank);
under srun, Slurm places them. Framework-free: no framework is imported here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LAUNCHERS = {"torch": ["-m", "torch.distributed.run"]}  # the framework's own launcher, where it has one
POLL_S = 0.05
PORT_STRIDE = 64  # under srun, each start of ranks rendezvouses MASTER_PORT + PORT_STRIDE·n (TensorFlow's workers
#                   take the ports after it, one per task on a node): a port of the last start may still be held
STOP_GRACE_S = 10.0  # after SIGTERM, how long a launcher has to end its ranks before every process is killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tasks_per_node(text: str) -> list[int]:
    """Slurm's compressed task counts per node ("2(x3),1" → [2, 2, 2, 1])."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise RanksError(f"cannot read Slurm's tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slurm_rank(env: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The rank variables of this task of an srun step of several tasks (None elsewhere, the batch script itself
    included). MASTER_ADDR and MASTER_PORT come from the job script (the first node's name, and a port), as
    torch.distributed's env:// rendezvous wants them."""
    tasks = env.get("SLURM_STEP_NUM_TASKS")
    if "SLURM_PROCID" not in env or tasks is None or int(tasks) < 2:
        return None
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
    if missing:
        raise RanksError(f"under srun a collective needs {' and '.join(missing)} set in the job script (the first "
                         "node's host name and a free port; README: \"All-reduce across ranks\")")
    per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", tasks))
    local_ranks = per_node[min(int(env.get("SLURM_NODEID", "0")), len(per_node) - 1)]
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": tasks, "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(local_ranks), "MASTER_ADDR": env["MASTER_ADDR"], "MASTER_PORT": env["MASTER_PORT"],
            "OPBENCH_LAUNCHER": "srun"}


class RanksError(RuntimeError):
    """A collective cannot start as asked; the message says why."""


class Ranks:
    """The worker processes of R ranks running one list of tasks, read as they answer."""

    _starts = itertools.count()  # starts of ranks under srun in this process (each srun task runs the same plan)

    def __init__(self, backend: str, ranks: int, setup: dict[str, Any], tasks: list[dict[str, Any]], folder: Path,
                 log_path: Path, env: dict[str, str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        slurm = slurm_rank()
        if slurm is not None and int(slurm["WORLD_SIZE"]) != ranks:
            raise RanksError(f"--ranks {ranks} but srun started {slurm['WORLD_SIZE']} tasks: give srun one task "
                             "per rank (--ntasks)")
        self.mine = [int(slurm["RANK"])] if slurm else list(range(ranks))  # the ranks whose messages are read here
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"setup": setup, "tasks": tasks, "pin": slurm is None}))
        self._log = log_path.open("a")
        self._log.write(f"\n=== {ranks} ranks of {backend} ({'srun' if slurm else 'this machine'})\n")
        self._log.flush()
        env = {**env, "OPBENCH_RANKS_DIR": str(folder)}
        worker = [sys.executable, "-m", "suite.worker", str(spec)]
        self.procs: list[subprocess.Popen] = []
        if slurm is not None:
            port = str(int(slurm["MASTER_PORT"]) + PORT_STRIDE * next(Ranks._starts))  # every rank counts alike
            self._start(worker, {**env, **slurm, "MASTER_PORT": port})
        else:
            port = str(free_port())
            local = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(ranks),
                     "LOCAL_WORLD_SIZE": str(ranks)}
            if backend in LAUNCHERS:
                self._start([sys.executable, *LAUNCHERS[backend], f"--nproc-per-node={ranks}", "--nnodes=1",
                             "--max-restarts=0", "--master-addr=127.0.0.1", f"--master-port={port}",
                             *worker[1:]], {**env, "OPBENCH_LAUNCHER": "torchrun"})
            else:
                for rank in range(ranks):
                    self._start(worker, {**env, **local, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                         "OPBENCH_LAUNCHER": "runner"})
        self._offsets = dict.fromkeys(self.mine, 0)
        self._lines: dict[int, list[dict[str, Any]]] = {rank: [] for rank in self.mine}
        self.pids: set[int] = set()  # every rank's pid, as its ready message says (torchrun's children too)

    def _start(self, command: list[str], env: dict[str, str]) -> None:
        self.procs.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                           env=env, start_new_session=True))

    def _read(self) -> None:
        for rank in self.mine:
            path = self.folder / f"rank-{rank}.jsonl"
            if not path.exists():
                continue
            with path.open("rb") as f:
                f.seek(self._offsets[rank])
                data = f.read()
            end = data.rfind(b"\n") + 1  # whole lines only: a rank may be writing the next one
            self._offsets[rank] += end
            for line in data[:end].splitlines():
                message = json.loads(line)
                self._lines[rank].append(message)
                if "pid" in message:
                    self.pids.add(int(message["pid"]))

    def receive(self, index: int, timeout: float) -> tuple[str, list[dict[str, Any]]]:
        """Message ``index`` (0: ready, then one per task) of every rank read here: ("ok", messages by rank),
        ("timeout", []) after ``timeout`` s (then every process is stopped), or ("died", []) when a process ended
        first."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            if all(len(lines) > index for lines in self._lines.values()):
                return "ok", [self._lines[rank][index] for rank in self.mine]
            if any(p.poll() is not None for p in self.procs):
                time.sleep(POLL_S)  # a last line written just before the exit
                self._read()
                if all(len(lines) > index for lines in self._lines.values()):
                    return "ok", [self._lines[rank][index] for rank in self.mine]
                self.stop()
                return "died", []
            if time.monotonic() > deadline:
                self.stop()
                return "timeout", []
            time.sleep(POLL_S)

    def exits(self) -> str:
        """How the processes ended, e.g. "exited with code 1; killed by signal SIGKILL"."""
        parts = []
        for p in self.procs:
            code = p.poll()
            if code is None:
                parts.append("running")
            elif code < 0:
                try:
                    parts.append(f"killed by signal {signal.Signals(-code).name}")
                except ValueError:
                    parts.append(f"killed by signal {-code}")
            else:
                parts.append(f"exited with code {code}")
        return "; ".join(dict.fromkeys(parts))

    def log_tail(self, lines: int = 5) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])[-1500:]

    def stop(self) -> None:
        """End every process: SIGTERM first (torchrun then ends its ranks), SIGKILL after STOP_GRACE_S, and the ranks'
        own pids too (torchrun starts each in a session of its own)."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for pid in self.pids:  # a rank torchrun did not end
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def close(self, timeout: float = 60.0) -> None:
        """Wait for the processes to finish their tasks and exit; stop them past ``timeout``."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        self.stop()
        self._log.close()
