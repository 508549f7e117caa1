"""Worker process: one backend, many measurements, JSON lines in and out (pyperf's parent/worker model).

The parent sends a setup line, then one task per line; the worker answers ``ready`` (versions, flags read back)
and one ``result`` per task. Protocol messages go to the original stdout; everything the frameworks print is
sent to stderr, which the parent keeps in a log. A task that raises becomes a result with its reason; only a
hard crash (segfault, kill) ends the worker, and the parent records that.

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

from suite.environment import available_memory_bytes
from suite.ops import DTYPE_BYTES, Op, op_from_dict
from suite.reference import compare, make_inputs, reduced, reference
from suite.stats import summarize
from suite.timing import TimingConfig, measure
from suite.variant import Settings, Variant

MEMORY_HEADROOM = 1.5  # workspaces, allocator slack: a case needs this much more than its tensors


def tensor_bytes(op: Op, dtype: str) -> int:
    """Bytes of every tensor a case holds at once: float32 host copies plus device copies and outputs."""
    elements = op.min_bytes("backward", 1) + op.min_bytes("forward", 1)  # x, w, dy, dx, dw + x, w, y
    return elements * (DTYPE_BYTES[dtype] + 4)


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "resourceexhausted" in text


def run_task(backend: Any, task: dict[str, Any], timing: TimingConfig | None, check: bool, seed: int
             ) -> dict[str, Any]:
    """Prepare, check against the float64 reference, and time one measurement (unless timing is None)."""
    from backends.base import Unsupported

    op = op_from_dict(task["op"])
    variant = Variant(**task["variant"])
    result: dict[str, Any] = {"status": "ok", "reason": None}
    started = time.perf_counter()
    prepared = None
    try:
        free = backend.free_memory_bytes()  # the device's own count (GPU); 0 means full, not unknown
        source = "free on the device"
        if free is None:
            free, source = available_memory_bytes(), "available on the host (MemAvailable)"
        need = int(tensor_bytes(op, variant.dtype) * MEMORY_HEADROOM)
        if free is not None and need > free:
            result.update(status="skipped", reason=f"memory guard: needs about {need / 2**30:.1f} GiB, only "
                          f"{free / 2**30:.1f} GiB {source} ({backend.settings.device}); not allocated",
                          memory={"need_bytes": need, "free_bytes": free})
            return result  # the finally below still adds wall_s
        inputs = make_inputs(op, seed)
        prepared = backend.prepare(op, variant, inputs)
        result.update(first_call_s=prepared.first_call_s, details=prepared.details)
        if check:
            small = reduced(op)
            if small == op:
                outputs, small_inputs = prepared.outputs(), inputs
            else:
                small_inputs = make_inputs(small, seed)
                outputs = backend.prepare(small, variant, small_inputs).outputs()
            result["check"] = {**compare(outputs, reference(small, small_inputs, variant.pass_, variant.dtype),
                                         variant.dtype, backend.settings.math),
                               "reduced": small != op}
        if timing is None:  # `suite check`: numerical agreement only
            return result
        samples = measure(prepared.run_block, timing)
        summary = summarize(samples.block_times, samples.calls_per_block, samples.stable)
        result.update(
            block_times=list(samples.block_times), calls_per_block=samples.calls_per_block,
            warmup_calls=samples.warmup_calls, warmup_s=samples.warmup_s, stop_reason=samples.stop_reason,
            stats=summary.as_dict(),
        )
    except Unsupported as exc:
        result.update(status="unsupported", reason=str(exc))
    except Exception as exc:  # a failing case is a result, not the end of the run
        result.update(status="oom" if _is_oom(exc) else "error", reason=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
    finally:
        del prepared
        gc.collect()
        backend.release()
        result["wall_s"] = time.perf_counter() - started
    return result


def send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message, default=str) + "\n")
    channel.flush()


def main() -> int:
    channel = os.fdopen(os.dup(1), "w")  # the protocol keeps the real stdout ...
    os.dup2(2, 1)  # ... and anything a framework prints goes to stderr
    sys.stdout = sys.stderr
    setup = json.loads(sys.stdin.readline())
    try:
        import backends

        settings = Settings(**setup["settings"])
        backend = backends.load(setup["backend"], settings)
        flags = backend.configure(settings)
        send(channel, {"type": "ready", "versions": backend.versions(), "flags": flags,
                       "devices": backend.devices(), "pid": os.getpid()})
    except Exception as exc:
        send(channel, {"type": "fatal", "reason": f"{type(exc).__name__}: {exc}"})
        return 1
    timing = TimingConfig(**setup["timing"]) if setup["timing"] else None
    for line in sys.stdin:
        task = json.loads(line)
        result = run_task(backend, task, timing, setup["check"], setup["seed"])
        send(channel, {"type": "result", "key": task["key"], **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
