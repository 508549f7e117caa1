"""Worker process: one backend, many measurements, JSON lines in and out (pyperf's parent/worker model).

The parent sends a setup line, then one task per line; the worker answers ``ready`` (versions, flags read back)
and one ``result`` per task, or ``no_device`` (why, and how to install a build that has it) when the framework
sees no such device. Protocol messages go to the original stdout; everything the frameworks print is
sent to stderr, which the parent keeps in a log. A task that raises becomes a result with its reason; only a
hard crash (segfault, kill) ends the worker, and the parent records that.

Ranks of a collective (an all-reduce across R processes) run the same worker, ``python -m suite.worker SPEC``, one
process per rank, started by the framework's launcher (torchrun) or by the runner: each reads the setup and its
tasks from the SPEC file instead of stdin, learns its rank from the launcher's variables (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT: torchrun's), joins the others, and writes the same messages
to ``rank-<rank>.jsonl`` in the SPEC's folder. Every rank checks its own result and times the same blocks.

Run as ``python -m suite.worker`` by the runner, never by hand.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from typing import IO, Any

import numpy as np

from suite.environment import available_memory_bytes, cpu_busy_s, usable_cpus
from suite.gpu_state import GpuMonitor, measurement_state, open_monitor
from suite.ops import DTYPE_BYTES, Op, op_from_dict
from suite.reference import compare, expected, input_record, make_inputs, reduced, seeded_inputs
from suite.stats import contended, summarize
from suite.timing import Samples, TimingConfig, clear_buffer_bytes, measure, measure_per_call
from suite.variant import Settings, Variant

MEMORY_HEADROOM = 1.5  # workspaces, allocator slack: a case needs this much more than its tensors


def tensor_bytes(op: Op, dtype: str) -> int:
    """Bytes of every tensor a case holds at once: float32 host copies plus device copies and outputs."""
    passes = [p for p in ("backward", "forward") if p in op.passes]
    elements = sum(op.min_bytes(p, 1) for p in passes) + op.working_elements  # x, w, dy, dx, dw + x, w, y
    return elements * (DTYPE_BYTES[dtype] + 4)


def memory_budget(device: str, device_free: int | None) -> tuple[int | None, str]:
    """Free bytes the guard compares a case's need with, and where the figure comes from.

    The framework's own count on a GPU (0 means full, not unknown); the host's MemAvailable only on the CPU: host
    memory says nothing about a GPU's, so a GPU whose framework cannot tell goes unguarded (None).
    """
    if device_free is not None:
        return device_free, "free on the device"
    if device == "cpu":
        return available_memory_bytes(), "available on the host (MemAvailable)"
    return None, "not reported by the framework"


def _time(backend: Any, prepared: Any, timing: TimingConfig, l2: str) -> tuple[Samples, dict[str, Any]]:
    """Warm cache: blocks of back-to-back calls. Cold: a buffer larger than the cache written before every call,
    each call timed on its own (device events where the framework has them); the buffer is freed on return.

    The first write says where the framework put the buffer: a buffer outside GPU memory (TensorFlow keeps int32
    outputs in host memory) would leave the L2 warm, so the measurement fails instead of passing as cold."""
    if l2 == "warm":
        return measure(prepared.run_block, timing, agree=backend.agree), {}
    cache = backend.cache_bytes()
    nbytes = clear_buffer_bytes(cache)
    clear = backend.cache_clearer(nbytes)  # raises Unsupported where the backend cannot clear
    placed = clear()
    if not placed.on_gpu:
        raise RuntimeError(f"--l2 cold: {backend.name} put its clearing buffer in {placed.device}, not in GPU memory; "
                           "writing it would not clear the GPU's L2")
    samples = measure_per_call(prepared.run_one, clear, timing)
    return samples, {"cache_bytes": cache, "clear_bytes": nbytes, "buffer_device": placed.device,
                     "timer": prepared.timer}


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "resourceexhausted" in text


def run_task(backend: Any, task: dict[str, Any], timing: TimingConfig | None, check: bool, seed: int,
             gpu: tuple[GpuMonitor | None, str | None] | None = None) -> dict[str, Any]:
    """Prepare, check against the float64 reference, and time one measurement (unless timing is None).

    ``gpu``: on a GPU, the NVML monitor (or None and why there is none) sampled at the start and end of timing.
    """
    from backends.base import Unsupported

    op = op_from_dict(task["op"])
    variant = Variant(**task["variant"])
    result: dict[str, Any] = {"status": "ok", "reason": None}
    started = time.perf_counter()
    prepared = None
    try:
        refusal = op.refusal(variant.pass_, variant.dtype)  # by design (int8 backward): before making any input
        if refusal:
            raise Unsupported(refusal)
        free, source = memory_budget(backend.settings.device, backend.free_memory_bytes())
        # ranks of a collective all skip, or none: the least free memory decides (a duck-typed backend has none)
        if free is not None and getattr(backend, "ranks", 1) > 1:
            free = int(-backend.agree(-float(free)))
        need = int(tensor_bytes(op, variant.dtype) * MEMORY_HEADROOM)
        if task.get("l2") == "cold" and timing is not None:  # the clearing buffer lives beside the operands
            need += clear_buffer_bytes(backend.cache_bytes())
        if free is not None and need > free:
            result.update(status="skipped", reason=f"memory guard: needs about {need / 2**30:.1f} GiB, only "
                          f"{free / 2**30:.1f} GiB {source} ({backend.settings.device}); not allocated",
                          memory={"need_bytes": need, "free_bytes": free})
            return result  # the finally below still adds wall_s
        held = backend.ranks_held(op, variant)
        inputs = (seeded_inputs(op, seed, held[0]) if len(held) == 1 else  # one process driving several ranks' devices
                  {name: np.stack([make_inputs(op, seed, r)[name] for r in held]) for name in op.operands})
        prepared = backend.prepare(op, variant, inputs)
        result.update(first_call_s=prepared.first_call_s, details={**prepared.details, **input_record(op, seed)})
        if check:
            small = reduced(op)
            if small == op:
                outputs, small_inputs = prepared.outputs(), inputs
            else:
                small_inputs = seeded_inputs(small, seed)
                outputs = backend.prepare(small, variant, small_inputs).outputs()
            result["check"] = {**compare(outputs, expected(small, seed, variant.pass_, variant.dtype),
                                         variant.dtype, backend.settings.math, small),
                               "reduced": small != op}
        if timing is None:  # `suite check`: numerical agreement only
            return result
        monitor, missing = gpu or (None, None)
        state_start = monitor.sample() if monitor is not None else {}
        l2 = task.get("l2", "warm")
        busy_before, own_before, timing_began = cpu_busy_s(), time.process_time(), time.perf_counter()
        samples, cold = _time(backend, prepared, timing, l2)
        busy_after, own_after, timing_s = cpu_busy_s(), time.process_time(), time.perf_counter() - timing_began
        others = None if busy_before is None or busy_after is None else max(
            0.0, (busy_after - busy_before) - (own_after - own_before))
        gpu_state = (measurement_state(state_start, monitor.sample(), monitor.matched_by, monitor.device)
                     if monitor is not None else {"unavailable": missing} if gpu is not None else None)
        summary = summarize(samples.block_times, samples.calls_per_block, samples.stable,
                            contended=contended(others, timing_s, usable_cpus()),
                            device_timed=cold.get("timer") == "cuda events",
                            throttled=bool(gpu_state and gpu_state.get("throttled")))
        result.update(
            block_times=list(samples.block_times), calls_per_block=samples.calls_per_block,
            warmup_calls=samples.warmup_calls, warmup_s=samples.warmup_s, stop_reason=samples.stop_reason,
            stats=summary.as_dict(), **({"cold_cache": cold} if cold else {}),
            others_cpu_s=others,  # CPU-seconds other processes took on our CPUs while timing
            **({"gpu_state": gpu_state} if gpu_state is not None else {}),
        )
    except Unsupported as exc:
        result.update(status="unsupported", reason=str(exc))
    except Exception as exc:  # a failing case is a result, not the end of the run
        result.update(status="oom" if _is_oom(exc) else "error", reason=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
    finally:
        del prepared
        gc.collect()
        # What outlives a case is the framework's, not the case's (modules a first call imported lazily, kernel
        # caches): freeze it too, so the next collection scans only what the next case makes (torch imports sympy
        # at its first conv; unfrozen, every later collection took 50 ms of a 2-core machine)
        gc.freeze()
        backend.release()
        result["wall_s"] = time.perf_counter() - started
    return result


def send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message, default=str) + "\n")
    channel.flush()


def start(setup: dict[str, Any], channel: IO[str], group: Any = None) -> tuple[Any, Any] | None:
    """Load and configure the backend (joining ``group``'s ranks first), and say ``ready``; None when it cannot (the
    message sent says why)."""
    try:
        import backends
        from backends.base import DeviceMissing, Unsupported

        settings = Settings(**setup["settings"])
        backend = backends.load(setup["backend"], settings)
        joined: dict[str, Any] = {}
        if group is not None:
            try:
                joined = backend.join(group)
            except Unsupported as exc:
                send(channel, {"type": "unsupported", "reason": str(exc), "versions": backend.versions()})
                return None
        try:
            flags = backend.configure(settings)
        except DeviceMissing as exc:
            send(channel, {"type": "no_device", "reason": str(exc), "versions": backend.versions()})
            return None
        gpu = open_monitor(backend.gpu_id()) if settings.device == "gpu" else None
        # The framework's import-time objects never become garbage: freeze them, so the collection after every
        # case scans only what the cases made (with TensorFlow loaded a full collection took 0.15 s per case).
        gc.freeze()
        send(channel, {"type": "ready", "versions": backend.versions(), "flags": flags,
                       "devices": backend.devices(), "pid": os.getpid(),
                       **({"rank": group.rank, "joined": joined, "cpus": sorted(os.sched_getaffinity(0))}
                          if group is not None else {})})
    except Exception as exc:
        send(channel, {"type": "fatal", "reason": f"{type(exc).__name__}: {exc}"})
        return None
    return backend, gpu


def main() -> int:
    channel = os.fdopen(os.dup(1), "w")  # the protocol keeps the real stdout ...
    os.dup2(2, 1)  # ... and anything a framework prints goes to stderr
    sys.stdout = sys.stderr
    setup = json.loads(sys.stdin.readline())
    started = start(setup, channel)
    if started is None:
        return 1
    backend, gpu = started
    timing = TimingConfig(**setup["timing"]) if setup["timing"] else None
    for line in sys.stdin:
        task = json.loads(line)
        result = run_task(backend, task, timing, setup["check"], setup["seed"], gpu)
        send(channel, {"type": "result", "key": task["key"], **result})
    return 0


def rank_group() -> Any:
    """This process's place among the ranks, from the variables torchrun sets (the runner sets the same)."""
    from backends.base import RankGroup

    env = os.environ
    ranks = int(env["WORLD_SIZE"])
    return RankGroup(rank=int(env["RANK"]), ranks=ranks, local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                     local_ranks=int(env.get("LOCAL_WORLD_SIZE", ranks)), address=env["MASTER_ADDR"],
                     port=int(env["MASTER_PORT"]), launcher=env.get("OPBENCH_LAUNCHER", "runner"))


def pin(local_rank: int, local_ranks: int) -> list[int]:
    """Pin this process to its own share of the CPUs it may use, disjoint from the other local ranks' (the first
    ``len // local_ranks`` CPUs to local rank 0, and so on; one CPU each when there are fewer CPUs than ranks)."""
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // local_ranks)
    mine = cpus[local_rank * share:(local_rank + 1) * share] or [cpus[local_rank % len(cpus)]]
    os.sched_setaffinity(0, mine)
    return mine


def rank_main(spec_path: str) -> int:
    """One rank of a collective: setup and tasks from the SPEC file, messages to ``rank-<rank>.jsonl`` beside it."""
    with open(spec_path) as f:
        spec = json.load(f)
    group = rank_group()
    setup = spec["setup"]
    if spec.get("pin"):  # before the framework starts its threads
        cpus = pin(group.local_rank, group.local_ranks)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(len(cpus))
        threads = setup["settings"].get("threads")  # no more threads than the rank's own CPUs
        setup["settings"]["threads"] = min(threads, len(cpus)) if threads else len(cpus)
    os.dup2(2, 1)  # anything a framework prints goes to stderr
    sys.stdout = sys.stderr
    with open(os.path.join(os.path.dirname(spec_path), f"rank-{group.rank}.jsonl"), "a") as channel:
        started = start(setup, channel, group)
        if started is None:
            return 1
        backend, gpu = started
        timing = TimingConfig(**setup["timing"]) if setup["timing"] else None
        for task in spec["tasks"]:
            result = run_task(backend, task, timing, setup["check"], setup["seed"], gpu)
            send(channel, {"type": "result", "key": task["key"], **result})
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1]) if len(sys.argv) > 1 else main())
