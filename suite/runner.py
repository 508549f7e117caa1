"""Plan measurements, run them in one worker process per backend, and append each result as it finishes.

A case that fails is recorded with its reason; a worker that dies is recorded against the case it was running
and restarted for the rest; a case past its time limit is killed and recorded as a timeout. With ``resume``,
measurements already in the results file are skipped, so an interrupted run continues where it stopped. A run on
a device some framework does not see (a CPU-only build asked for a GPU) is refused before anything is written.

An all-reduce runs across R processes (``suite.ranks``: torchrun, the runner, or srun start them); its tasks go to
those ranks as one list, each rank answers every task, and the runner writes ONE measurement per task: the ranks
timed the same blocks, each the slowest rank's (``suite.timing.measure``'s ``agree``), and the worst rank's status
and check stand for all. A rank that hangs past the case timeout, or dies, is recorded against its task, every rank
is stopped, and the remaining tasks start on fresh ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import backends
from suite import environment, ranks, results
from suite.catalog import Case, CatalogError, NetworkSet, load_catalog, network_sets, sets_touching
from suite.ops import DTYPE_BYTES, op_to_dict
from suite.results import (
    Measurement,
    MeasurementKey,
    ResultsError,
    ResultsWriter,
    RunHeader,
    WorkerInfo,
    read_results,
    schemas_migrated,
)
from suite.stats import format_seconds
from suite.timing import TimingConfig
from suite.variant import Settings, Variant

REPO = Path(__file__).resolve().parent.parent
WORKER_START_TIMEOUT_S = 300.0  # importing TensorFlow on a slow disk takes a while


@dataclass(frozen=True)
class Task:
    """One measurement to make: a case on a backend in one variant, under run-wide settings."""

    case: Case
    backend: str
    variant: Variant
    settings: Settings
    l2: str = "warm"  # cache state: "warm" (calls back to back) or "cold" (L2 cleared before every call)

    @property
    def key(self) -> MeasurementKey:
        """The identity of the measurement this task makes."""
        variant, settings = self.variant, self.settings
        return MeasurementKey(self.case.id, self.backend, settings.device, variant.dtype, variant.pass_, variant.mode,
                              variant.layout, settings.math, settings.threads,
                              tuple(sorted(settings.options.items())), self.l2)

    @property
    def group(self) -> tuple:
        """Tasks of one group share a worker process."""
        return (self.backend, self.settings)


def _pick(requested: Iterable[str], offered: tuple[str, ...]) -> list[str]:
    """'default' is the first offered, 'all' every one; names the backend does not offer are left out."""
    picked: list[str] = []
    for name in requested:
        names = offered[:1] if name == "default" else offered if name == "all" else (name,) if name in offered else ()
        picked += [n for n in names if n not in picked]
    return picked


def plan(cases: Iterable[Case], backend_names: Iterable[str], devices: Iterable[str], dtypes: Iterable[str],
         passes: Iterable[str], modes: Iterable[str] = ("default",), layouts: Iterable[str] = ("default",),
         math: str = "strict", threads: int | None = None, options: dict[str, str] | None = None,
         l2: str = "warm") -> list[Task]:
    """Every combination, ordered so one worker runs a backend's tasks case by case. A case's own ``dtypes`` (the
    main job's int8 GEMM) are added to the run's, with only the passes the op has in them (int8: the forward); a case
    with its own ``passes`` (an inference baseline) is measured in those of the run's passes only."""
    tasks = []
    cases, modes, layouts, dtypes, passes = list(cases), list(modes), list(layouts), list(dtypes), list(passes)
    for name in backend_names:
        cls = backends.backend_class(name)
        for device in devices:
            settings = Settings(device=device, threads=threads, math=math, options=dict(options or {}))
            for case in cases:
                for mode in _pick(modes, cls.modes):
                    offered = case.op.layouts(cls.layouts[case.op.kind]) if case.op.kind in cls.layouts else ("",)
                    for layout in _pick(layouts, offered):  # "": resolve() refuses
                        for dtype in dict.fromkeys([*dtypes, *case.dtypes]):
                            # a pass the op lacks is not planned (a GEMM has no step); the case's own dtype
                            # plans no refusal records
                            own = dtype not in dtypes
                            tasks += [Task(case, cls.name, Variant(p, dtype, mode, layout), settings, l2)
                                      for p in passes if p in case.op.passes
                                      and not (own and case.op.refusal(p, dtype))
                                      and (not case.passes or p in case.passes)]
    return tasks


def shard(tasks: list[Task], index: int, count: int) -> list[Task]:
    """Part ``index`` (1-based) of ``count``: whole cases go to one shard, round-robin in catalog order."""
    case_ids = list(dict.fromkeys(t.case.id for t in tasks))
    mine = {cid for i, cid in enumerate(case_ids) if i % count == index - 1}
    return [t for t in tasks if t.case.id in mine]


class WorkerProcess:
    """A ``python -m suite.worker`` child speaking JSON lines; its stderr goes to a log file."""

    def __init__(self, backend: str, settings: Settings, timing: TimingConfig | None, check: bool, seed: int,
                 log_path: Path):
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if settings.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(settings.threads)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("a")
        self._log.write(f"\n=== {datetime.now(UTC).isoformat()} worker for {backend} ({settings.device})\n")
        self._log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "suite.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
                                     start_new_session=True)  # Ctrl-C reaches the parent only; it stops us
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send({"backend": backend, "settings": dataclasses.asdict(settings),
                    "timing": timing and dataclasses.asdict(timing), "check": check, "seed": seed})

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message; None if the worker died or said nothing within ``timeout`` (then it is killed)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return None
        try:
            return json.loads(line) if line else None
        except ValueError:  # a line cut off by the worker's death
            return None

    def run(self, task: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            self._send(task)
        except (BrokenPipeError, OSError):
            return self.death_result()
        began = time.monotonic()
        message = self.receive(timeout)
        if message is not None:
            return message
        if time.monotonic() - began >= timeout:
            return {"status": "timeout", "reason": f"no result within {format_seconds(timeout)}; the worker was killed"}
        return self.death_result()

    def death_result(self) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # it closed its output but hangs: end it
            self.kill()
            code = self.proc.returncode
        if code < 0:
            try:
                how = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return {"status": "crashed", "reason": f"worker process {how}; last log lines: {self.log_tail()}"}

    def log_tail(self, lines: int = 5) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])[-1500:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin:
            self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self.kill()
        self._log.close()


class DeviceUnavailable(backends.BackendUnavailable):
    """A framework sees none of the device a run asks for, or its worker cannot start there; nothing was measured.
    The message says which and why."""


def preflight(groups: Iterable[tuple[str, Settings]], log_path: Path) -> None:
    """Start one worker per backend and non-CPU device, all at once, and refuse the run if any lacks the device or
    fails to start (answers ``fatal``, dies, or says nothing within WORKER_START_TIMEOUT_S).

    Either would otherwise write a header and then an error for every case; this costs one extra worker start per
    GPU backend (seconds) before hours of measuring.
    """
    started = [((backend, settings), WorkerProcess(backend, settings, None, False, 0, log_path))
               for backend, settings in dict.fromkeys(groups) if settings.device != "cpu"]
    try:
        problems = []
        for (backend, settings), worker in started:
            began = time.monotonic()
            hello = worker.receive(WORKER_START_TIMEOUT_S)
            kind = hello.get("type") if hello else None
            if kind == "no_device":
                problems.append(hello["reason"])
            elif kind == "fatal":
                problems.append(f"the {backend} worker on {settings.device} failed to start: {hello['reason']}")
            elif kind != "ready":
                if hello is not None:
                    why = f"answered {kind!r}"
                elif time.monotonic() - began >= WORKER_START_TIMEOUT_S:
                    why = f"said nothing within {WORKER_START_TIMEOUT_S:.0f} s"
                else:
                    why = "exited before it was ready"
                problems.append(f"the {backend} worker on {settings.device} {why}; its log "
                                f"({worker.log_path}) ends: {worker.log_tail()}")
        if problems:
            raise DeviceUnavailable("\n".join(problems))
    finally:
        for _, worker in started:
            worker.close()


@dataclass
class RunOptions:
    timing: TimingConfig | None = field(default_factory=TimingConfig)  # None: check only, no timing
    check: bool = True
    seed: int = 0
    case_timeout_s: float = 300.0  # whole case: compile + check + timing; past it the worker is killed
    run_time_cap_s: float | None = None  # stop starting new measurements after this long
    resume: bool = False
    retry_failed: bool = False  # with resume: measure again what failed; the new record supersedes the old
    preflight: bool = True  # False: the caller has run preflight() itself (the CLI, before its progress display)
    bandwidth: bool = False  # measure main-memory bandwidth into the header (environment.memory_bandwidth)
    link_gbps: float | None = None  # the user's link bandwidth, GB/s per direction, into the header (over NVML's)
    # The catalog's network sets the run's cases belong to, recorded in the header so a report judges networks by
    # the catalog the run used; None: those of the catalog folders the cases were loaded from.
    networks: tuple[NetworkSet, ...] | None = None


def is_default_variant(task: Task) -> bool:
    """Whether a task runs its backend's default mode and layout with no options (recorded for the report)."""
    cls, key = backends.backend_class(task.backend), task.key
    default_layout = cls.layouts.get(task.case.op.kind, ("",))[0]
    return key.mode == cls.modes[0] and key.layout == default_layout and not key.options


def measurement_of(task: Task, result: dict[str, Any], run_id: str, worker: dict[str, Any]) -> Measurement:
    """A self-contained measurement: what was measured, where the shape comes from, the raw times and statistics."""
    op, case = task.case.op, task.case
    record = {
        "record": "measurement", "run_id": run_id, **task.key.fields(),
        "op": op.kind, "dims": op_to_dict(op), "shape": op.describe(),
        "provenance": dataclasses.asdict(case.provenance), "count": case.count, "tags": list(case.tags),
        # None for a pass the op does not have (attention's backward_data): recorded as unsupported, with the reason
        "flops": op.flops(task.variant.pass_) if task.variant.pass_ in op.passes else None,
        "bytes": (op.min_bytes(task.variant.pass_, DTYPE_BYTES[task.variant.dtype])
                  if task.variant.pass_ in op.passes else None),
        "default_variant": is_default_variant(task),
        "versions": worker.get("versions", {}), "flags": worker.get("flags", {}),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record.update({k: v for k, v in result.items() if k not in ("type", "key")})
    return Measurement.from_record(record)


Reporter = Callable[[Task, Measurement], None]


def check_output(out: Path, resume: bool) -> dict[MeasurementKey, Measurement]:
    """Refuse an output that would lose or mix results; return the measurements it holds by key (with ``resume``)."""
    if out.is_dir():
        raise ResultsError(f"{out}: is a folder; -o takes a results file, e.g. {out / 'run.jsonl'}")
    if out.exists() and out.stat().st_size and not resume:
        raise FileExistsError(f"{out} already holds results: pass --resume to continue it, or choose another "
                              "output with -o")
    if resume and out.exists():
        existing = read_results(out)  # refuses a newer schema
        schemas = schemas_migrated(out)
        if schemas:
            raise ResultsError(f"{out}: written with results schema {', '.join(map(str, schemas))}; this opbench "
                               f"writes schema {results.SCHEMA_VERSION} and will not mix them in one file. Resume "
                               "with the opbench that started it, or write a new file with -o (old files still read)")
        return existing.latest()
    try:  # find out now, not after the first measurement; a run refused before it measures leaves no file
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        out.open("a").close()
        if not existed:
            out.unlink()
    except OSError as exc:
        raise ResultsError(f"{out}: cannot write results here: {exc.strerror or exc}") from None
    return {}


def run(tasks: list[Task], out: Path, options: RunOptions, report: Reporter | None = None,
        argv: list[str] | None = None) -> dict[str, int]:
    """Measure every task not yet in ``out``; return counts by status. Raises KeyboardInterrupt through.

    ``failed`` counts the requested measurements that failed (``Measurement.failed``), resumed ones included.
    """
    out = Path(out)
    held = check_output(out, options.resume)
    done = {key: m for key, m in held.items() if not (options.retry_failed and m.failed)}
    todo = [t for t in tasks if t.key not in done]
    counts: dict[str, int] = {"skipped_done": len(tasks) - len(todo),
                              "failed": sum(done[t.key].failed for t in tasks if t.key in done)}
    if not todo:
        return counts
    if options.preflight:  # before the header: a refusal writes nothing
        preflight((t.group for t in todo), out.with_suffix(".worker.log"))
    run_id = uuid.uuid4().hex[:12]
    began = time.monotonic()
    with ResultsWriter(out) as writer:
        if writer.warning:
            print(f"warning: {writer.warning}", file=sys.stderr)
        writer.write(RunHeader.from_record({
            "run_id": run_id, "created": datetime.now(UTC).isoformat(timespec="seconds"), "command": argv or sys.argv,
            "environment": environment.capture(options.bandwidth, options.link_gbps),
            "timing": options.timing and dataclasses.asdict(options.timing), "check": options.check,
            "seed": options.seed,
            "catalog": {"networks": [n.to_record() for n in _networks(tasks, options.networks)]}}).to_record())
        groups: dict[tuple, list[Task]] = {}
        for task in todo:
            groups.setdefault(task.group, []).append(task)
        log_path = out.with_suffix(".worker.log")
        for (backend, settings), group in groups.items():
            collective = [t for t in group if t.case.op.kind == "allreduce"]
            for count, processes in dict.fromkeys((t.case.op.ranks, _processes(t)) for t in collective):
                _run_ranks(writer, backend, settings, [t for t in collective if (t.case.op.ranks, _processes(t)) ==
                                                       (count, processes)], count, processes,
                           options, run_id, counts, report, held, log_path, began)
            pending = [t for t in group if t not in collective]
            while pending:
                if options.run_time_cap_s and time.monotonic() - began > options.run_time_cap_s:
                    counts["not_started"] = counts.get("not_started", 0) + len(pending)
                    break
                worker = WorkerProcess(backend, settings, options.timing, options.check, options.seed, log_path)
                try:
                    hello = worker.receive(WORKER_START_TIMEOUT_S)
                    if hello is None or hello.get("type") != "ready":
                        why = hello["reason"] if hello else f"worker did not start: {worker.log_tail()}"
                        for task in pending:
                            _finish(writer, task, {"status": "error", "reason": why}, run_id, {}, counts, report,
                                    held.get(task.key))
                        break
                    writer.write(WorkerInfo.from_record({
                        "run_id": run_id, "backend": backend, "device": settings.device,
                        "package": backends.REGISTRY[backend].package,  # which plugin (and version) ran
                        **{k: hello.get(k) for k in ("versions", "flags", "devices", "pid")}}).to_record())
                    while pending:
                        if options.run_time_cap_s and time.monotonic() - began > options.run_time_cap_s:
                            break
                        task = pending.pop(0)
                        message = {"key": task.key.label, "op": op_to_dict(task.case.op),
                                   "variant": dataclasses.asdict(task.variant), "l2": task.l2}
                        result = worker.run(message, options.case_timeout_s)
                        _finish(writer, task, result, run_id, hello, counts, report, held.get(task.key))
                        if result["status"] in ("crashed", "timeout", "oom"):
                            break  # start a fresh worker for the rest (after an OOM its allocator may be wedged)
                except BaseException:  # Ctrl-C: stop now; everything finished is already on disk
                    worker.kill()
                    raise
                finally:
                    worker.close()
    return counts


RANK_FLAGS = ("cpu_affinity",)  # flags that differ between ranks by design: recorded per rank in the details


def _rank_worker(hello: dict[str, Any], ranks_: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker record of R ranks: rank 0's (the first read here) versions and flags, less the per-rank ones."""
    return {**hello, "flags": {k: v for k, v in (hello.get("flags") or {}).items() if k not in RANK_FLAGS},
            "ranks": [{"rank": r.get("rank"), "pid": r.get("pid"), "cpus": r.get("cpus")} for r in ranks_]}


STATUS_ORDER = ("ok", "unsupported", "skipped", "error", "oom", "crashed", "timeout")  # worse to the right


def combine(results_: list[dict[str, Any]], hello: dict[str, Any]) -> dict[str, Any]:
    """One measurement from every rank's answer to a task: the ranks' times are already the slowest rank's (they
    agreed on every block); the worst status (with its rank), the worst check and every rank's flags stand for all."""
    worst = max(range(len(results_)), key=lambda i: STATUS_ORDER.index(results_[i].get("status", "error"))
                if results_[i].get("status") in STATUS_ORDER else len(STATUS_ORDER))
    combined = dict(results_[worst] if results_[worst].get("status") != "ok" else results_[0])
    if combined.get("status") in results.FAILED_STATUSES:  # which rank failed (a refusal is every rank's alike)
        combined["reason"] = f"rank {hello['ranks'][worst]['rank']}: {combined.get('reason')}"
    checks = [r["check"] for r in results_ if r.get("check")]
    if checks:
        combined["check"] = max(checks, key=lambda c: (c["status"] == "fail", max(c["errors"].values(), default=0)))
    if combined.get("stats"):
        flags = dict.fromkeys(f for r in results_ for f in (r.get("stats") or {}).get("flags", []))
        combined["stats"] = {**combined["stats"], "flags": list(flags)}
    combined["details"] = {**(combined.get("details") or {}), **(hello.get("joined") or {}),
                           "ranks": hello["ranks"]}
    return combined


ONE_PROCESS_LAYOUT = "devices"  # a collective's layout run by ONE process driving R devices (JAX's local psum)


def _processes(task: Task) -> int:
    """How many processes a collective task's ranks take: one per rank, or one for layout ``devices``."""
    return 1 if task.variant.layout == ONE_PROCESS_LAYOUT else task.case.op.ranks  # type: ignore[attr-defined]


def _run_ranks(writer: ResultsWriter, backend: str, settings: Settings, tasks: list[Task], count: int,
               processes: int, options: RunOptions, run_id: str, counts: dict[str, int], report: Reporter | None,
               held: dict[MeasurementKey, Measurement], log_path: Path, began: float) -> None:
    """The tasks of an all-reduce across ``count`` ranks in ``processes`` processes (one per rank, or one driving
    every rank's device, told by OPBENCH_LOCAL_DEVICES), as one list per start of the processes (``suite.ranks``);
    after a timeout or a death the rest start again on fresh ones."""
    pending = list(tasks)
    env = dict(os.environ)
    if processes != count:
        env["OPBENCH_LOCAL_DEVICES"] = str(count)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    setup = {"backend": backend, "settings": dataclasses.asdict(settings),
             "timing": options.timing and dataclasses.asdict(options.timing), "check": options.check,
             "seed": options.seed}
    while pending:
        if options.run_time_cap_s and time.monotonic() - began > options.run_time_cap_s:
            counts["not_started"] = counts.get("not_started", 0) + len(pending)
            return
        messages = [{"key": t.key.label, "op": op_to_dict(t.case.op), "variant": dataclasses.asdict(t.variant),
                     "l2": t.l2} for t in pending]
        folder = log_path.with_suffix("").with_name(f"{log_path.stem}.ranks-{uuid.uuid4().hex[:8]}")
        try:
            group = ranks.Ranks(backend, processes, setup, messages, folder, log_path, env)
        except ranks.RanksError as exc:
            for task in pending:
                _finish(writer, task, {"status": "error", "reason": str(exc)}, run_id, {}, counts, report,
                        held.get(task.key))
            return
        try:
            state, hellos = group.receive(0, WORKER_START_TIMEOUT_S)
            not_ready = next((h for h in hellos if h.get("type") != "ready"), None)
            if state != "ok" or not_ready is not None:
                if not_ready is not None and not_ready.get("type") == "unsupported":
                    result = {"status": "unsupported", "reason": not_ready["reason"]}
                else:
                    why = (not_ready["reason"] if not_ready else f"the {processes} processes of {count} ranks did "
                           f"not start ({state}: {group.exits()}): {group.log_tail()}")
                    result = {"status": "error", "reason": why}
                for task in pending:
                    _finish(writer, task, result, run_id, {}, counts, report, held.get(task.key))
                return
            hello = _rank_worker(hellos[0], hellos)
            writer.write(WorkerInfo.from_record({
                "run_id": run_id, "backend": backend, "device": settings.device,
                "package": backends.REGISTRY[backend].package,
                **{k: hello.get(k) for k in ("versions", "flags", "devices", "pid")}}).to_record())
            for index in range(1, len(messages) + 1):
                state, answers = group.receive(index, options.case_timeout_s)
                task = pending.pop(0)
                if state == "timeout":
                    result = {"status": "timeout", "reason": f"not every rank answered within "
                              f"{format_seconds(options.case_timeout_s)} (a rank hung or waits for one); every "
                              "rank was stopped"}
                elif state == "died":
                    result = {"status": "crashed", "reason": f"a rank's process ended ({group.exits()}); the "
                              f"others were stopped; last log lines: {group.log_tail()}"}
                else:
                    result = combine(answers, hello)
                _finish(writer, task, result, run_id, hello, counts, report, held.get(task.key))
                if state != "ok":
                    break
        except BaseException:  # Ctrl-C: stop every rank now; everything finished is already on disk
            group.stop()
            raise
        finally:
            group.close()
            shutil.rmtree(folder, ignore_errors=True)  # the ranks' messages are in the results now


def _networks(tasks: list[Task], given: tuple[NetworkSet, ...] | None) -> tuple[NetworkSet, ...]:
    """The network sets with a layer among the tasks' cases: ``given``, else those of the catalog folders the cases
    were loaded from (hand-made cases from no file belong to no set)."""
    cases = {t.case.id: t.case for t in tasks}
    if given is None:
        folders = sorted({str(Path(c.file).parent) for c in cases.values() if c.file})
        try:
            given = network_sets(load_catalog(folders).cases) if folders else ()
        except CatalogError:  # the files changed since the cases were loaded: record the sets of the cases alone
            given = network_sets(cases.values())
    return sets_touching(given, cases)


def _finish(writer: ResultsWriter, task: Task, result: dict[str, Any], run_id: str, worker: dict[str, Any],
            counts: dict[str, int], report: Reporter | None, superseded: Measurement | None = None) -> None:
    """Write one measurement; ``superseded``: the failed record it measures again (``--retry-failed``), named in
    ``retry_of`` so the earlier failure stays on record."""
    measurement = measurement_of(task, result, run_id, worker)
    if superseded is not None:
        measurement = dataclasses.replace(measurement, retry_of={
            "run_id": superseded.run_id, "status": superseded.status, "reason": superseded.reason,
            "finished": superseded.finished})
    writer.write(measurement.to_record())
    counts[measurement.status] = counts.get(measurement.status, 0) + 1
    counts["failed"] += measurement.failed
    if report:
        report(task, measurement)
