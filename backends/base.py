"""The backend protocol: what a framework adapter provides, and the framework-free glue around it.

A backend turns (op, pass, dtype, mode, layout) into a zero-argument ``step`` that runs one call of the pass on
tensors already on the device, plus a ``sync`` that waits for it. Everything else (inputs, blocks, first-call
timing, output conversion for the numerical check) is written once here. Operands are named generically:
``x`` is the data operand (GEMM's A, the conv input), ``w`` the weight (GEMM's B, the conv filter), ``dy`` the
gradient of the output. Logical layouts are row-major A/B, NCHW input and KCRS (OIHW) filter.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from suite.ops import OUTPUTS, WRT, Op
from suite.timing import host_timed
from suite.variant import Settings, Variant

__all__ = ["OUTPUTS", "WRT", "Backend", "DeviceMissing", "Placement", "Prepared", "Settings", "Unsupported",
           "Variant"]


class Unsupported(Exception):
    """This backend cannot run this combination; the message says why."""


class DeviceMissing(Unsupported):
    """The framework sees no such device; the message names the installed build and the install line that has it."""


@dataclass(frozen=True)
class Placement:
    """Where a framework says a buffer's memory is: its own name for the device, and whether that is GPU memory."""

    device: str  # e.g. "cuda:0", TensorFlow's "/job:localhost/replica:0/task:0/device:GPU:0"
    on_gpu: bool  # by the framework's own device type, not by the device that was asked for


@dataclass
class Prepared:
    run_block: Callable[[int], None]  # n calls back to back, then ONE synchronization
    first_call_s: float  # first call (compilation, autotuning, primitive creation) with its sync
    outputs: Callable[[], dict[str, np.ndarray]]  # one more call (a stateful op: its first call), logical, float64
    details: dict[str, Any] = field(default_factory=dict)  # e.g. which padding form ran; recorded
    run_one: Callable[[], float] | None = None  # ONE call, returning its seconds (cold-cache timing)
    timer: str = ""  # what times run_one: "cuda events" or "host clock"


class Backend(ABC):
    """One framework. Subclasses import their framework inside methods, never at module top."""

    name: ClassVar[str]
    modes: ClassVar[tuple[str, ...]]  # the first is the default
    layouts: ClassVar[dict[str, tuple[str, ...]]]  # op kind -> layouts, the first is the default

    # --- what each framework provides -------------------------------------------------------------
    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Framework and library versions (BLAS, oneDNN, CUDA, cuDNN where known)."""

    @abstractmethod
    def devices(self) -> list[str]:
        """Devices usable here: "cpu" and, where present, "gpu"."""

    @abstractmethod
    def configure(self, settings: Settings) -> dict[str, Any]:
        """Apply threads and math mode for the whole worker; return the flags read back from the framework."""

    @abstractmethod
    def tensor(self, array: np.ndarray, role: str, op: Op, variant: Variant) -> Any:
        """Put a float32 array in logical layout on the device, in the variant's dtype and native layout."""

    @abstractmethod
    def step(self, op: Op, variant: Variant, args: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
        """Build the callable that runs one call of the pass on ``args``; also return details to record."""

    @abstractmethod
    def sync(self, out: Any) -> None:
        """Wait until ``out`` (the result of the last call) and everything before it has been computed."""

    @abstractmethod
    def to_numpy(self, out: Any, name: str, op: Op, variant: Variant) -> np.ndarray:
        """One output of a call as a float64 array in logical layout."""

    def free_memory_bytes(self) -> int | None:
        """Free memory of the device in use, where the framework can tell (GPU); None means ask the host."""
        return None

    def release(self) -> None:
        """Return cached device memory between cases (e.g. a caching allocator's pool)."""

    # --- GPU hooks (cold cache, NVML); the defaults fit a framework that cannot tell -------------
    def gpu_id(self) -> str | None:
        """The GPU's "GPU-<uuid>" or PCI bus id, or ``suite.gpu_state.visible_gpu_id(<its CUDA ordinal>)`` where the
        framework tells neither, so NVML samples the device the framework uses."""
        return None

    def cache_bytes(self) -> int | None:
        """Size of the device cache that cold-cache timing clears (the GPU's L2), where the framework tells."""
        return None

    def cache_clearer(self, nbytes: int) -> Callable[[], Placement]:
        """A function that writes ``nbytes`` on the device, leaves the write ordered before the next call and returns
        where the framework put the buffer (the worker refuses a buffer outside GPU memory: it would clear no L2)."""
        raise Unsupported(f"{self.name} has no cache clearing on {self.settings.device}")

    def single_call_timer(self, step: Callable[[], Any]) -> tuple[Callable[[], float], str]:
        """``run_one`` timing ONE call, and the timer's name; without device events, the call and sync on the host."""
        return host_timed(lambda: self.sync(step())), "host clock"

    # --- written once ----------------------------------------------------------------------------
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()

    def resolve(self, op: Op, variant: Variant) -> Variant:
        """Fill in the default mode and layout, and reject what this backend does not offer."""
        if op.kind not in self.layouts:
            raise Unsupported(f"{self.name} has no {op.kind} op; it runs {', '.join(self.layouts)}")
        if variant.pass_ not in op.passes:
            raise Unsupported(op.no_pass_reason or f"{op.kind} has no pass {variant.pass_!r}; it has "
                              f"{', '.join(op.passes)}")
        mode = variant.mode or self.modes[0]
        layouts = self.layouts[op.kind]
        layout = variant.layout or layouts[0]
        if mode not in self.modes:
            raise Unsupported(f"{self.name} has no mode {mode!r}; modes: {', '.join(self.modes)}")
        if layout not in layouts:
            raise Unsupported(f"{self.name} has no {op.kind} layout {layout!r}; layouts: {', '.join(layouts)}")
        return Variant(variant.pass_, variant.dtype, mode, layout)

    def prepare(self, op: Op, variant: Variant, arrays: dict[str, np.ndarray]) -> Prepared:
        """Place the inputs, build the step, run it once (timed apart), and return the block runner."""
        variant = self.resolve(op, variant)
        args = {role: self.tensor(array, role, op, variant) for role, array in arrays.items()}
        step, details = self.step(op, variant, args)
        start = time.perf_counter()
        first = step()
        self.sync(first)
        first_call_s = time.perf_counter() - start

        def convert(out: Any) -> dict[str, np.ndarray]:
            names = op.outputs(variant.pass_)
            parts = out if len(names) > 1 else (out,)
            return {name: self.to_numpy(part, name, op, variant) for name, part in zip(names, parts, strict=True)}

        # A stateful op (a model's training step updates its weights) is checked on its FIRST call, the one the
        # float64 reference computes from the initial weights: converted here, after its timing; every later call
        # (warm-up, timed blocks) keeps training. Any other op's outputs come from one more call.
        kept = convert(first) if op.stateful else None
        del first

        def outputs() -> dict[str, np.ndarray]:
            if kept is not None:
                return kept
            out = step()
            self.sync(out)
            return convert(out)

        details = {"mode": variant.mode, "layout": variant.layout, **details}
        run_one, timer = self.single_call_timer(step)
        return Prepared(self.block_runner(step), first_call_s, outputs, details, run_one, timer)

    def block_runner(self, step: Callable[[], Any]) -> Callable[[int], None]:
        """n back-to-back calls closed by one sync of the last output (in-order devices finish the rest first).

        What a network sees: in a step, each layer's call runs after the one whose output it consumes, never beside
        it, and nothing waits on the host in between. Every backend here runs a device's calls one at a time in
        the order they were issued: a CUDA stream; XLA:CPU, whose asynchronous dispatch makes each execution wait
        for the device's previous one (pjrt/cpu/cpu_client.cc, the "last enqueue event"); torch and TensorFlow,
        which return from a CPU op when it is done. So n calls back to back are n sequential calls, dispatch
        hidden behind the device's work as in a step; a wait after every call would add a host round trip per
        call that no step pays. Measured for JAX on a 2-core CPU (ResNet-50 conv2_x forward, XLA's one-core
        YNNPACK conv, interleaved in one process): a block ran at 1.00 CPU per wall second, as calls waited for
        one at a time did (two overlapping calls would use both cores), and timed 0.95-1.00x the per-call waits
        and a chain of calls each consuming the last output. ``suite selfcheck`` repeats that comparison.

        Each output but the last is dropped at once, as a training step drops a consumed gradient: keeping it
        alive while the next call allocates makes the allocator hand out fresh pages every call (measured here:
        conv dX 2.1 ms instead of 1.5 ms, the figure torch.utils.benchmark gives).
        """

        def run_block(n: int) -> None:
            for _ in range(n - 1):
                step()
            self.sync(step())

        return run_block

