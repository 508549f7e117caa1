"""``python -m suite selfcheck``: is opbench's timing trustworthy on this machine?

Times each op two ways in one process, in alternating rounds: opbench's ``prepare(...).run_block`` through the
PyTorch backend and ``measure``, and ``torch.utils.benchmark`` (an independent, well-kept timer) on the same call
written directly against torch, on tensors torch allocated itself, so input placement is part of the comparison.
The ratio per op is the median of the rounds' ratios. Small ops (a batch-1 dense layer, ~20 µs) are included:
there the harness's own per-call cost would show. Then it measures the harness's cost per call (a block of empty
steps) and the machine's noise (IQR/median of a fixed GEMM's blocks), so a user knows how far apart two results
must be to differ. An orchestration tool like the CLI: it imports torch and the torch backend inside functions.

On a GPU (``--device gpu``) each round also times opbench's own blocks with CUDA events (a start and an end event
around a block of the same calls, on the GPU's timeline), so host timing, its synchronizations and the GPU's own
clock are compared on the same work; torch.utils.benchmark synchronizes CUDA itself.

Where JAX is installed, the CPU run also cross-checks the JAX backend on ResNet-50's conv2_x forward (N16 C64 56²
K64 3×3), once with XLA's default YNNPACK conv fusion and once with ``ynn_conv=off``: opbench's blocks of
back-to-back calls against ``timeit`` of ``jax.block_until_ready(conv(x, w))``, a conv written directly against
``jax.lax`` on arrays JAX drew itself, waited for after EVERY call (JAX's documented way to time a call; no two calls
can overlap, as no two convs of a network step can, each consuming the last one's output). Each variant runs in a
child process (``python -m suite.selfcheck``) of its own: XLA reads its flags once, when its backend starts, and
JAX's thread pools must not share the CPUs with torch's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from suite.catalog import SHAPES_DIR, load_file
from suite.environment import run_queue_wait_s, usable_cpus
from suite.ops import WRT, Conv2d, Gemm, Op, Pass
from suite.reference import make_inputs
from suite.stats import format_seconds, summarize
from suite.timing import TimingConfig, measure
from suite.variant import Settings, Variant

ROUNDS = 3  # alternating opbench / torch.utils.benchmark rounds per op; the ratio is their median
TIMING = TimingConfig(max_time_s=1.0)  # opbench's timing, with a short cap so the check takes seconds
TORCH_MIN_RUN_S = 0.2  # torch.utils.benchmark's blocked_autorange default
NOISE_OP = Gemm(256, 256, 256)
OVERSUBSCRIBED = 0.10  # run-queue wait above this fraction of the wall time: the machine was not ours
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Check:
    label: str
    op: Op
    pass_: Pass


def checks() -> list[Check]:
    """The ops compared: the two small seed ops (overhead-bound) from the catalog, a GEMM and a conv."""
    seed = {case.id: case.op for case in load_file(SHAPES_DIR / "seed.yaml")}
    gemm, conv = Gemm(512, 512, 512), Conv2d(8, 64, 28, 28, 64, 3, 3, padding=(1, 1, 1, 1))
    return [Check("seed-dense-1024x512", seed["seed-dense-1024x512"], "forward"),
            Check("seed-conv-3x3", seed["seed-conv-3x3"], "forward"),
            Check("GEMM 512³", gemm, "forward"), Check("GEMM 512³", gemm, "backward"),
            Check("conv N8 C64 28² K64 3×3", conv, "forward"),
            Check("conv N8 C64 28² K64 3×3", conv, "backward_data")]


# JAX: XLA's default conv (a YNNPACK fusion) and with that fusion off, on ResNet-50's conv2_x forward; the layer where
# opbench once measured JAX's default conv 1.25-1.30x an independent timer (see the README's timing cross-check).
JAX_CHECK = Check("conv2_x N16 C64 56² K64 3×3", Conv2d(16, 64, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1)), "forward")
JAX_OPTIONS: tuple[dict[str, str], ...] = ({}, {"ynn_conv": "off"})
JAX_CHILD_TIMEOUT_S = 600.0  # import, two compiles and the rounds of one variant take ~20 s on 2 cores


def jax_variant_label(options: dict[str, str]) -> str:
    return "jax " + (", ".join(f"{key}={value}" for key, value in options.items()) or "default (YNNPACK conv)")


@dataclass(frozen=True)
class Comparison:
    """Medians per call of one op from each round: opbench's and torch.utils.benchmark's, in round order."""

    label: str
    pass_: str
    ours: tuple[float, ...]
    theirs: tuple[float, ...]
    events: tuple[float, ...] = ()  # GPU: opbench's blocks timed by CUDA events, per call

    @property
    def ratios(self) -> np.ndarray:
        return np.asarray(self.ours) / np.asarray(self.theirs)

    @property
    def ratio(self) -> float:
        """Median over rounds of opbench / torch.utils.benchmark (each round's pair ran back to back)."""
        return float(np.median(self.ratios))

    @property
    def events_ratio(self) -> float:
        """Median over rounds of opbench / CUDA events on the same blocks (NaN without events)."""
        return float(np.median(np.asarray(self.ours) / np.asarray(self.events))) if self.events else float("nan")

    def row(self) -> list[str]:
        low, high = self.ratios.min(), self.ratios.max()
        events = [format_seconds(float(np.median(self.events))), f"{self.events_ratio:.3f}"] if self.events else []
        return [self.label, self.pass_, format_seconds(float(np.median(self.ours))),
                format_seconds(float(np.median(self.theirs))), f"{self.ratio:.3f}", f"{low:.3f} – {high:.3f}",
                *events]


def comparison_table(comparisons: Sequence[Comparison], title: str, theirs: str = "torch.utils.benchmark") -> Table:
    """One row per comparison; ``theirs`` names the independent timer."""
    table = Table(title=title)
    rounds = max((len(c.ours) for c in comparisons), default=0)
    events = ("CUDA events median", "opbench / events") if any(c.events for c in comparisons) else ()
    for column in ("op", "pass", "opbench median", f"{theirs} median", f"ratio (median of {rounds})",
                   "ratio range", *events):
        table.add_column(column, justify="left" if column in ("op", "pass") else "right")
    for comparison in comparisons:
        table.add_row(*comparison.row())
    return table


def noise_summary(medians: Sequence[float], rel_iqrs: Sequence[float], worst_ratio: float) -> tuple[float, str]:
    """How much results move on this machine: the largest of the blocks' IQR/median, the drift of the median
    between repeated runs, and opbench's largest difference from an independent timer; and a sentence saying so."""
    drift = (max(medians) - min(medians)) / min(medians)
    noise = max(worst_ratio, drift, *rel_iqrs)
    text = (f"machine noise: IQR/median of a 256³ GEMM's blocks = {', '.join(f'{x:.1%}' for x in rel_iqrs)} "
            f"({len(rel_iqrs)} runs); the median moved {drift:.1%} between runs. Largest opbench / "
            f"independent timer difference: {worst_ratio:.1%}. Treat differences between results smaller than "
            f"about {noise:.0%} as noise on this machine.")
    return noise, text


def contention_note(waited: float | None, load: float, cpus: int, clock: str = "wall") -> str:
    """Whether the comparison ran on a machine to itself, from the time its threads waited for a CPU (as a fraction
    of the wall time); on an oversubscribed one, wall-clock block times include that wait, and each timer's figure
    depends on how often its blocks were preempted."""
    machine = f"1-minute load average {load:.1f} on {cpus} usable CPUs"
    if waited is None:
        return f"Waiting for a CPU: unknown here (no /proc/self/task/*/schedstat); {machine}."
    state = (f"Waiting for a CPU: while the comparison ran, this process's threads together waited {waited:.2f} s "
             f"per second for a CPU ({machine}).")
    if clock == "cpu":
        return f"{state} Timed by the thread's CPU time, which leaves that waiting out."
    if waited > OVERSUBSCRIBED:
        return (f"{state} The machine is oversubscribed: wall-clock times include waiting for a CPU, so these "
                "ratios say more about scheduling than about opbench; run selfcheck on a quiet machine, or with "
                "--threads 1 --clock cpu.")
    return state


def _median(samples: Any) -> float:
    return summarize(samples.block_times, samples.calls_per_block).median


def torch_statement(check: Check, device: str = "cpu") -> tuple[str, str, dict[str, Any]]:
    """The same call as opbench's step, written directly against torch on tensors torch allocates itself:
    (statement, setup, globals) for torch.utils.benchmark.Timer. Backward replays ``y``'s graph, as opbench does."""
    import torch

    op, grad = check.op, WRT.get(check.pass_, ())
    if isinstance(op, Gemm):  # the checked GEMMs are untransposed: logical shapes are the stored ones
        shapes, call = (op.a_shape, op.b_shape), "torch.matmul(x, w)"
    else:
        assert isinstance(op, Conv2d)
        shapes = (op.input_shape, op.weight_shape)
        call = (f"torch.nn.functional.conv2d(x, w, stride={op.stride}, padding={op.symmetric_padding}, "
                f"dilation={op.dilation}, groups={op.groups})")
    where = "cuda" if device == "gpu" else "cpu"
    x, w = (torch.randn(shape, device=where, requires_grad=name in grad)
            for name, shape in zip("xw", shapes, strict=True))
    names = {"torch": torch, "x": x, "w": w, "dy": torch.randn(op.out_shape, device=where)}
    if check.pass_ == "forward":
        return call, "pass", names
    names["wrt"] = tuple(names[name] for name in grad)
    return "torch.autograd.grad(y, wrt, dy, retain_graph=True)", f"y = {call}", names


def event_timer(run_block: Callable[[int], None], calls: int, blocks: int = 7) -> Callable[[], float]:
    """Median seconds per call of ``blocks`` blocks of ``calls`` calls, each block between two CUDA events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def per_call() -> float:
        times = []
        for _ in range(blocks):
            start.record()
            run_block(calls)  # ends with torch.cuda.synchronize(), after which the end event is at once reached
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        return float(np.median(times))

    return per_call


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}  # cpu: the calling thread's CPU time (one thread)
# JAX runs a call on XLA's own threads, not the caller's: by CPU time, count the whole process's (with --threads 1
# its pools have one CPU, so that is the op's time less any wait for the CPU).
JAX_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def jax_statement(check: Check, seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """The conv written directly against jax.lax (NCHW/OIHW, strict fp32), jitted and compiled once, on arrays JAX
    drew itself (jax.random): (statement, setup, globals) for timeit.Timer. The statement waits for every call."""
    import jax

    op = check.op
    assert isinstance(op, Conv2d) and check.pass_ == "forward", check
    top, bottom, left, right = op.padding

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, op.stride, [(top, bottom), (left, right)],
                                            rhs_dilation=op.dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                            feature_group_count=op.groups, precision=jax.lax.Precision.HIGHEST)

    key_x, key_w = jax.random.split(jax.random.key(seed))
    x, w = jax.random.normal(key_x, op.input_shape), jax.random.normal(key_w, op.weight_shape)
    jitted = jax.jit(conv)
    jax.block_until_ready(jitted(x, w))  # compiled here, outside the timing
    return "jax.block_until_ready(conv(x, w))", "pass", {"jax": jax, "conv": jitted, "x": x, "w": w}


def timeit_median(timer: timeit.Timer, repeat: int = 5) -> float:
    """Median seconds per call: timeit's autorange picks the calls per run (>= 0.2 s), then ``repeat`` runs."""
    number, _ = timer.autorange()
    return float(np.median(timer.repeat(repeat=repeat, number=number))) / number


def jax_rounds(options: dict[str, str], threads: int | None, clock: str = "wall",
               rounds: int = ROUNDS) -> dict[str, Any]:
    """In a process of its own: the JAX backend configured with ``options``, then alternating rounds of opbench's
    blocks and timeit on JAX_CHECK, fresh arrays on both sides every round; medians per call, in round order."""
    from backends.jax_backend import JaxBackend

    settings = Settings(threads=threads, options=options)
    backend = JaxBackend(settings)
    backend.configure(settings)
    check, timer_clock = JAX_CHECK, JAX_CLOCKS[clock]
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(rounds):
        prepared = backend.prepare(check.op, Variant(check.pass_), make_inputs(check.op, seed=round_))
        stmt, setup, names = jax_statement(check, seed=round_)
        timer = timeit.Timer(stmt, setup, timer=timer_clock, globals=names)
        first_ours = round_ % 2 == 0  # alternate which goes first, so a drift in time favours neither
        for side_is_ours in (first_ours, not first_ours):
            if side_is_ours:
                ours.append(_median(measure(prepared.run_block, TIMING, timer_clock)))
            else:
                theirs.append(timeit_median(timer))
    return {"ours": ours, "theirs": theirs, "jax": backend.versions()["jax"]}


def compare_jax(options: dict[str, str], threads: int | None, clock: str) -> tuple[Comparison, str]:
    """Run ``jax_rounds`` for one variant in a child process: the comparison and the child's jax version. Raises
    RuntimeError with the child's last words when it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    request = json.dumps({"options": options, "threads": threads, "clock": clock})
    try:
        proc = subprocess.run([sys.executable, "-m", "suite.selfcheck", request], capture_output=True, text=True,
                              env=env, timeout=JAX_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no answer within {JAX_CHILD_TIMEOUT_S:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(last)
    result = json.loads(lines[-1])
    return Comparison(f"{JAX_CHECK.label}, {jax_variant_label(options)}", JAX_CHECK.pass_, tuple(result["ours"]),
                      tuple(result["theirs"])), result["jax"]


def selfcheck(console: Console, progress_console: Console | None = None, threads: int | None = None,
              device: str = "cpu", clock: str = "wall") -> int:
    """Compare opbench with torch.utils.benchmark (and, on a GPU, CUDA events) on every check, then, on the CPU
    where JAX is installed, the JAX backend with timeit on JAX_CHECK (each variant of JAX_OPTIONS in a child process),
    then print the harness cost and machine noise. ``clock="cpu"`` times by CPU time (with one thread: the comparison
    on a busy machine, without the time spent waiting for a CPU). Returns 1 when a JAX child failed, else 0. Raises
    backends.base.DeviceMissing where torch sees no GPU."""
    import torch.utils.benchmark as tb

    from backends import is_available
    from backends.torch_backend import TorchBackend

    settings = Settings(device=device, threads=threads)
    backend = TorchBackend(settings)
    flags = backend.configure(settings)
    timer_clock = CLOCKS[clock]
    tb_clock = {"timer": timer_clock} if clock == "cpu" else {}  # tb's default timer synchronizes CUDA
    todo = checks()
    jax_options = JAX_OPTIONS if device == "cpu" and is_available("jax") else ()

    def contenders(check: Check) -> tuple[Callable[[], float], Callable[[], float], Callable[[], float] | None]:
        """opbench's, torch.utils.benchmark's and (on a GPU) the CUDA events' median per call, on fresh tensors:
        where a tensor lies in memory moves a ~20 µs op by up to ±10%, so each round draws new placements."""
        prepared = backend.prepare(check.op, Variant(check.pass_), make_inputs(check.op))
        stmt, setup, names = torch_statement(check, device)
        timer = tb.Timer(stmt, setup=setup, globals=names, num_threads=flags["threads"], **tb_clock)
        on_gpu = None
        if device == "gpu":  # the same blocks, timed on the GPU's clock
            on_gpu = event_timer(prepared.run_block, measure(prepared.run_block, TIMING).calls_per_block)
        return (lambda: _median(measure(prepared.run_block, TIMING, timer_clock)),
                lambda: timer.blocked_autorange(min_run_time=TORCH_MIN_RUN_S).median, on_gpu)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=progress_console or console, transient=True) as progress:
        bar = progress.add_task("selfcheck", total=len(todo) * ROUNDS + 2 + len(jax_options))
        ours: list[list[float]] = [[] for _ in todo]
        theirs: list[list[float]] = [[] for _ in todo]
        events: list[list[float]] = [[] for _ in todo]
        wait_before, started = run_queue_wait_s(), time.perf_counter()
        for round_ in range(ROUNDS):
            for i, check in enumerate(todo):
                progress.update(bar, description=f"round {round_ + 1}/{ROUNDS}: {check.label} {check.pass_}")
                time_ours, time_theirs, time_events = contenders(check)
                if round_ % 2:  # alternate which timer goes first, so a drift in time favours neither
                    theirs[i].append(time_theirs())
                    ours[i].append(time_ours())
                else:
                    ours[i].append(time_ours())
                    theirs[i].append(time_theirs())
                if time_events:
                    events[i].append(time_events())
                progress.advance(bar)

        wait_after, elapsed = run_queue_wait_s(), time.perf_counter() - started
        waited = None if wait_before is None or wait_after is None else (wait_after - wait_before) / elapsed
        progress.update(bar, description="harness cost per call")
        empty = measure(backend.block_runner(tuple), TimingConfig(max_time_s=0.5), timer_clock)  # tuple(): ~free
        progress.advance(bar)
        progress.update(bar, description="machine noise")
        prepared = backend.prepare(NOISE_OP, Variant("forward"), make_inputs(NOISE_OP))
        noise = [measure(prepared.run_block, TimingConfig(min_blocks=15, max_blocks=15, target_rel_ci=0.0,
                                           target_rel_iqr=0.0),
                         timer_clock) for _ in range(3)]
        progress.advance(bar)
        jax_comparisons: list[tuple[Comparison, str]] = []
        jax_failures: list[str] = []
        for options in jax_options:
            progress.update(bar, description=f"{jax_variant_label(options)}: {JAX_CHECK.label} (a process of its own)")
            try:
                jax_comparisons.append(compare_jax(options, threads, clock))
            except RuntimeError as error:
                jax_failures.append(f"JAX cross-check, {jax_variant_label(options)}, failed: {error}")
            progress.advance(bar)

    comparisons = [Comparison(check.label, check.pass_, tuple(o), tuple(t), tuple(e))
                   for check, o, t, e in zip(todo, ours, theirs, events, strict=True)]
    where = f"{flags['gpu']}, CUDA events too" if device == "gpu" else f"{flags['threads']} threads"
    where += ", the thread's CPU time" if clock == "cpu" else ""
    console.print(comparison_table(comparisons, f"opbench vs torch.utils.benchmark (torch {backend.versions()['torch']}"
                                                f", {where}, fp32, same process, {ROUNDS} rounds)"))
    console.print(f"harness cost per call: {format_seconds(_median(empty))} (opbench's block loop around an empty "
                  "step; torch.utils.benchmark's timeit loop costs about the same)")
    if jax_comparisons:
        jax_where = f"{flags['threads']} threads" + (", the process's CPU time" if clock == "cpu" else "")
        title = (f"opbench vs timeit with a wait after every call (jax {jax_comparisons[0][1]}, {jax_where}, fp32, "
                 f"a process per variant, {ROUNDS} rounds)")
        console.print(comparison_table([c for c, _ in jax_comparisons], title, theirs="timeit"))
    elif device == "cpu" and not jax_options:
        console.print("JAX cross-check skipped: JAX is not installed here (the jax extra or tox env jax-cpu has it).",
                      highlight=False)
    for failure in jax_failures:
        console.print(failure, highlight=False, markup=False)
    worst = max(abs(c.ratio - 1) for c in [*comparisons, *(c for c, _ in jax_comparisons)])
    _, text = noise_summary([_median(s) for s in noise],
                            [summarize(s.block_times, s.calls_per_block).rel_iqr for s in noise], worst)
    console.print(text, highlight=False)
    console.print(contention_note(waited, os.getloadavg()[0], usable_cpus(), clock), highlight=False)
    return 1 if jax_failures else 0


if __name__ == "__main__":  # the child of compare_jax: one JAX variant, its answer as one JSON line
    sys.stdout.write(json.dumps(jax_rounds(**json.loads(sys.argv[1]))) + "\n")
