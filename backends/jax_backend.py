"""JAX: jax.jit, compiled ahead of time; conv in logical NCHW/OIHW (default) or NHWC/HWIO dimension numbers.

(Batched) GEMM is ``lax.dot_general``; attention is ``jax.nn.dot_product_attention`` on its native
batch×length×heads×head_dim layout ("BLHD"; KV heads fewer than query heads are grouped by JAX itself), with JAX's
own choice of implementation, recorded as ``implementation`` ("cudnn" when the compiled program calls cuDNN's
fused attention, else "xla"). A recurrent layer is the input projection of every step as one GEMM (plus b_ih), then
``lax.scan`` over the recurrent step (h·W_hhᵀ + b_hh and the cell's gate maths, torch's gate order and equations):
the usual way to write the layer in JAX, as cuDNN and torch's CPU kernels also hoist the projection; recorded as
``implementation`` "lax.scan". JAX's only cuDNN layer, ``jax.experimental.rnn.lstm``, is experimental, LSTM- and
float32-only, and its backward computes dx and dW together (no dx alone): not used, so JAX runs lax.scan everywhere.

A sparse GEMM is ``A @ B`` under jit with A a ``jax.experimental.sparse`` BCOO or BCSR matrix (layouts "BCOO",
"BCSR"), built from the dense A before timing with exactly nnz stored entries. int8 GEMM and conv are
``lax.dot_general`` and ``lax.conv_general_dilated`` on int8 operands with ``preferred_element_type=int32``.

Backward is ``jax.vjp`` inside the jitted function, w.r.t. x, w or both (attention: q, k, v), so the forward's
output is dead code that XLA removes. Each step is compiled explicitly (``jit(f).lower(*args).compile()``) and
the compile time is recorded as ``compile_s``. XLA picks the physical layouts itself; the layout names only the
logical dimension order the operands are handed over in.

Whole models (op kind ``model``): ResNet-50 v1.5 and BERT-base of jax.lax/jax.nn on a params pytree, jitted, in
``backends/jax_models.py``; the training step donates the old params and feeds the new ones to the next call.

XLA:CPU has no thread setter: its pool is sized from the CPU affinity when the backend starts, so configure()
narrows the affinity to the first ``threads`` CPUs (before any device use) and records it.

All-reduce: ``jax.lax.psum`` under ``jax.shard_map`` over a mesh of one device per process, the processes joined by
``jax.distributed.initialize`` (JAX has no launcher: the runner or srun starts them); on the CPU over gloo
(``jax_cpu_collectives_implementation``), on GPUs over NCCL through XLA. Layout ``devices``: ONE process drives every
rank's device (the runner says how many in OPBENCH_LOCAL_DEVICES; on the CPU XLA is asked for that many host devices
with ``--xla_force_host_platform_device_count``), JAX's single-process psum; its input is every rank's row. The sum
goes to a new buffer (no donation).

GPU memory: JAX preallocates 75% of the GPU when its backend starts; the worker sets
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless the user set it) so the memory guard sees what is really free, and
records it with ``XLA_PYTHON_CLIENT_MEM_FRACTION``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from backends.base import Backend, DeviceMissing, Placement, RankGroup, Settings, Unsupported, Variant
from suite.models import Model
from suite.ops import AllReduce, Attention, BatchedGemm, Conv2d, Op, Rnn, Spmm
from suite.reference import to_int8

COLLECTIVE_TIMEOUT_S = 300  # jax.distributed.initialize: how long to wait for every process

# jaxlib 0.10.2 on CPU lowers a lone conv to a YNNPACK fusion that ran on ONE core here (backward ~3x slower);
# option ynn_conv="off" removes that fusion type. XLA reads XLA_FLAGS once, when the backend starts.
YNN_OFF_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_DIMENSIONS = {"NCHW": ("NCHW", "OIHW", "NCHW"), "NHWC": ("NHWC", "HWIO", "NHWC")}
_TO_NHWC = {"x": (0, 2, 3, 1), "w": (2, 3, 1, 0), "dy": (0, 2, 3, 1)}  # from logical NCHW / KCRS / NKPQ
_ROLE = {"dx": "x", "dw": "w", "y": "dy"}


def jax_cuda_install(version: str, driver_cuda: tuple[int, int] | None) -> str:
    """How to install the CUDA build of jax ``version`` that fits the driver: the extra of the newest CUDA it runs
    (jax[cuda13] needs a CUDA 13 driver, jax[cuda12] a CUDA 12 one, which CUDA 13 drivers also run)."""
    extras = {13: "cuda13", 12: "cuda12"}
    if driver_cuda is None:
        return (f"no NVIDIA driver found to fit a CUDA build to: with a CUDA 12 driver pip install "
                f"'jax[cuda12]=={version}', with a CUDA 13 one 'jax[cuda13]=={version}', or run tox -e jax-gpu")
    major, minor = driver_cuda
    fits = [extra for cuda, extra in sorted(extras.items(), reverse=True) if cuda <= major]
    if not fits:
        return (f"the NVIDIA driver supports CUDA {major}.{minor}, older than any CUDA build of jax {version} (12 or "
                "13): upgrade the driver, then pip install 'jax[cuda12]'")
    return (f"the driver supports CUDA {major}.{minor}; install the CUDA build that fits it: pip install "
            f"'jax[{fits[0]}]=={version}', or run tox -e jax-gpu (jax[cuda12], which CUDA 12 and 13 drivers run)")


class JaxBackend(Backend):
    name = "jax"
    modes = ("jit",)
    int8 = True  # GEMM and conv (see the module docstring)
    layouts = {"gemm": ("row-major",), "conv2d": ("NCHW", "NHWC"), "bgemm": ("row-major",), "attention": ("BLHD",),
               "rnn": ("BTI",), "spmm": ("BCOO", "BCSR"), "allreduce": ("processes", "devices"),
               "model": ("NHWC",)}

    def __init__(self, settings: Settings | None = None):
        super().__init__(settings)
        self._xla_flags(self.settings)  # before jax is imported, so before its backend can start
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # also a CPU run: it would start the GPU
        import jax

        self.jax = jax

    @staticmethod
    def _xla_flags(settings: Settings) -> None:
        """Append the flags that settings.options ask for to XLA_FLAGS (idempotent)."""
        flags = os.environ.get("XLA_FLAGS", "")
        if settings.options.get("ynn_conv") == "off" and YNN_OFF_FLAG not in flags.split():
            os.environ["XLA_FLAGS"] = flags = f"{flags} {YNN_OFF_FLAG}".strip()
        devices = os.environ.get("OPBENCH_LOCAL_DEVICES")  # one process driving R ranks' devices (suite.runner)
        if devices and settings.device == "cpu" and "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(devices)}".strip()

    def versions(self) -> dict[str, str]:
        import jaxlib

        out = {"jax": self.jax.__version__, "jaxlib": jaxlib.__version__}
        if "gpu" in self.devices():
            out["gpu_platform_version"] = self.jax.devices("gpu")[0].client.platform_version
        return out

    def devices(self) -> list[str]:
        try:
            self.jax.devices("gpu")
        except RuntimeError:  # no GPU plugin or no device
            return ["cpu"]
        return ["cpu", "gpu"]

    def configure(self, settings: Settings) -> dict[str, Any]:
        from jax._src import xla_bridge

        jax = self.jax
        self.settings = settings
        started = xla_bridge.backends_are_initialized()
        before = os.environ.get("XLA_FLAGS", "")
        self._xla_flags(settings)
        if started and os.environ.get("XLA_FLAGS", "") != before:
            raise RuntimeError("JAX's backend already started; XLA_FLAGS from settings.options would be ignored")
        cpus = sorted(os.sched_getaffinity(0))
        if settings.threads and cpus[: settings.threads] != cpus:  # (a rank is pinned to its threads' CPUs already)
            if started:
                raise RuntimeError("JAX's backend already started; its CPU thread pool is sized, set threads first")
            os.sched_setaffinity(0, cpus[: settings.threads])
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if settings.math == "tf32" else "float32")
        if settings.device not in self.devices():
            raise DeviceMissing(self._no_gpu())
        self.device = jax.local_devices(backend=settings.device)[0]  # this process's own (all of them, alone)
        flags: dict[str, Any] = {
            "threads": len(os.sched_getaffinity(0)),  # XLA:CPU sizes its pool from the affinity; no getter
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "ynn_conv": settings.options.get("ynn_conv", "default"),
            "device_kind": self.device.device_kind,
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
            "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
        }
        return flags

    def _no_gpu(self) -> str:
        from importlib import metadata

        import jaxlib

        from suite.gpu_state import driver_cuda_version

        plugins = []
        for dist in ("jax-cuda12-plugin", "jax-cuda13-plugin"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                plugins.append(f"{dist} {metadata.version(dist)}")
        build = (f"jax {self.jax.__version__} with {', '.join(plugins)} sees no GPU (no NVIDIA driver, a driver "
                 "older than the plugin's CUDA, or CUDA_VISIBLE_DEVICES hides every GPU)" if plugins else
                 f"jaxlib {jaxlib.__version__} is CPU-only (no jax-cuda12-plugin or jax-cuda13-plugin installed)")
        return f"{build}; {jax_cuda_install(self.jax.__version__, driver_cuda_version())}"

    def free_memory_bytes(self) -> int | None:
        """The GPU allocator's limit less what is in use (device.memory_stats(); None on CPU)."""
        if self.settings.device != "gpu":
            return None
        stats = self.device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        return max(stats["bytes_limit"] - stats.get("bytes_in_use", 0), 0)

    def gpu_id(self) -> str | None:
        """The device's CUDA ordinal (``local_hardware_id``; jax_cuda_visible_devices keeps the ordinals it selects)
        in the visible device list: JAX tells neither UUID nor PCI bus id."""
        if self.settings.device != "gpu":
            return None
        from suite.gpu_state import visible_gpu_id

        return visible_gpu_id(self.device.local_hardware_id)

    def cache_clearer(self, nbytes: int):
        if self.settings.device != "gpu":
            return super().cache_clearer(nbytes)
        jax = self.jax
        bump = jax.jit(lambda buffer: buffer + 1, donate_argnums=0)  # reads and writes the buffer in place
        state = [jax.device_put(np.zeros(nbytes // 4, np.int32), self.device)]

        def clear() -> Placement:
            state[0] = jax.block_until_ready(bump(state[0]))
            (device,) = state[0].devices()
            return Placement(str(device), device.platform == "gpu")

        return clear

    def _dtype(self, variant: Variant) -> Any:
        jnp = self.jax.numpy
        return {"fp32": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}[variant.dtype]

    def _perm(self, role: str, op: Op, variant: Variant) -> tuple[int, ...] | None:
        if op.kind == "attention":  # every operand and gradient: B, H, L, D -> B, L, H, D
            return (0, 2, 1, 3)
        return _TO_NHWC[_ROLE.get(role, role)] if op.kind == "conv2d" and variant.layout == "NHWC" else None

    def tensor(self, array: np.ndarray, role: str, op: Op, variant: Variant) -> Any:
        if isinstance(op, Model):  # the canonical arrays as they are: step() builds the params pytree from them
            return array
        perm = self._perm(role, op, variant)
        native = np.ascontiguousarray(array if perm is None else array.transpose(perm))
        if variant.dtype == "int8":  # the integers suite.reference multiplies
            return self.jax.block_until_ready(self.jax.device_put(to_int8(native), self.device))
        if isinstance(op, Spmm) and role == "x":
            return self._sparse(native, variant)
        # The cast runs on the device (round to nearest even, as suite.reference.round_to assumes).
        return self.jax.block_until_ready(self.jax.device_put(native, self.device).astype(self._dtype(variant)))

    def _sparse(self, dense: np.ndarray, variant: Variant) -> Any:
        """A in the layout's sparse format (BCOO or BCSR), every nonzero stored, its indices found on the host
        (``fromdense`` on the device took seconds at DeepBench's sizes)."""
        from jax.experimental import sparse

        jnp = self.jax.numpy
        rows, cols = np.nonzero(dense)
        values = self.jax.device_put(dense[rows, cols], self.device).astype(self._dtype(variant))
        if variant.layout == "BCOO":
            indices = np.stack([rows, cols], axis=1).astype(np.int32)
            matrix = sparse.BCOO((values, self.jax.device_put(indices, self.device)), shape=dense.shape)
        else:  # BCSR: column indices and row pointers
            indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))]).astype(np.int32)
            matrix = sparse.BCSR((values, jnp.asarray(cols.astype(np.int32)), jnp.asarray(indptr)), shape=dense.shape)
        return self.jax.block_until_ready(matrix)

    def _forward(self, op: Op, variant: Variant) -> Callable[..., Any]:
        lax = self.jax.lax
        if isinstance(op, Attention):
            def attention(q, k, v):
                return self.jax.nn.dot_product_attention(q, k, v, is_causal=op.causal)

            return attention
        if isinstance(op, Spmm):
            def spmm(a, b):
                return a @ b

            return spmm
        # Explicit precision from the configured math mode: "float32" -> HIGHEST, "tensorfloat32" -> HIGH.
        precision = lax.Precision(self.jax.config.jax_default_matmul_precision)
        # int8: int32 accumulation and output
        wide = {"preferred_element_type": self.jax.numpy.int32} if variant.dtype == "int8" else {}
        if isinstance(op, Rnn):
            return self._rnn(op, precision)
        if isinstance(op, Conv2d):
            top, bottom, left, right = op.padding

            def conv(x, w):
                return lax.conv_general_dilated(
                    x, w, op.stride, [(top, bottom), (left, right)], rhs_dilation=op.dilation,
                    dimension_numbers=_DIMENSIONS[variant.layout], feature_group_count=op.groups,
                    precision=precision, **wide)

            return conv
        # Contract A's K dim with B's K dim wherever the stored layout puts them (no transpose op); a batched GEMM
        # has its batch as dim 0 of both.
        lead = 1 if isinstance(op, BatchedGemm) else 0
        contract = ((lead + (0 if op.transpose_a else 1),), (lead + (1 if op.transpose_b else 0),))
        batch = ((0,), (0,)) if lead else ((), ())

        def gemm(x, w):
            return lax.dot_general(x, w, (contract, batch), precision=precision, **wide)

        return gemm

    def _rnn(self, op: Rnn, precision: Any) -> Callable[..., Any]:
        """(x, w_ih, w_hh, b_ih, b_hh) -> every step's hidden state, B×T×H."""
        jax, jnp, lax = self.jax, self.jax.numpy, self.jax.lax
        hid = op.hidden
        by_rows = (((1,), (1,)), ((), ()))  # h @ W_hhᵀ for the G·H × H weight, as torch stores it

        def gates(a, hh, k):  # gate k's slice of the input and the recurrent projections
            return a[:, k * hid:(k + 1) * hid], hh[:, k * hid:(k + 1) * hid]

        def rnn(x, w_ih, w_hh, b_ih, b_hh):
            def cell(carry, a):  # one step: the state (h, c) and x_t·W_ihᵀ + b_ih -> the new state, and h
                h, c = carry
                hh = lax.dot_general(h, w_hh, by_rows, precision=precision) + b_hh
                if op.cell == "lstm":
                    i, f, g, o = (sum(gates(a, hh, k)) for k in range(4))
                    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                    h = jax.nn.sigmoid(o) * jnp.tanh(c)
                elif op.cell == "gru":
                    r, z = (jax.nn.sigmoid(sum(gates(a, hh, k))) for k in (0, 1))
                    a_n, hh_n = gates(a, hh, 2)
                    h = (1 - z) * jnp.tanh(a_n + r * hh_n) + z * h
                else:
                    h = jax.nn.relu(a + hh) if op.cell == "rnn_relu" else jnp.tanh(a + hh)
                return (h, c), h

            projected = lax.dot_general(x, w_ih, (((2,), (1,)), ((), ())), precision=precision) + b_ih  # B, T, G·H
            zeros = jnp.zeros((op.batch, hid), x.dtype)
            _, ys = lax.scan(cell, (zeros, zeros), jnp.swapaxes(projected, 0, 1))  # over time: T, B, H
            return jnp.swapaxes(ys, 0, 1)

        return rnn

    def join(self, group: RankGroup) -> dict[str, Any]:
        """jax.distributed across the processes (before the backend starts), gloo collectives on the CPU."""
        jax = self.jax
        gpu = self.settings.device == "gpu"
        if group.ranks == 1:  # one process: the devices it drives are the ranks (layout devices)
            return {"communication": "XLA within one process", "local_devices": os.environ.get(
                "OPBENCH_LOCAL_DEVICES", "1")}
        if not gpu:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"{group.address}:{group.port}", num_processes=group.ranks,
                                   process_id=group.rank, local_device_ids=[group.local_rank] if gpu else None,
                                   initialization_timeout=COLLECTIVE_TIMEOUT_S)
        self.rank, self.ranks = group.rank, group.ranks
        return {"communication": "nccl (XLA)" if gpu else f"{jax.config.jax_cpu_collectives_implementation} (XLA)",
                "jax.process_count": jax.process_count()}

    def agree(self, value: float) -> float:
        if self.ranks == 1:
            return value
        from jax.experimental import multihost_utils

        # float32 (JAX without x64): 7 significant digits of a time or a byte count
        return float(np.max(multihost_utils.process_allgather(np.array([value], dtype=np.float32))))

    def ranks_held(self, op: Op, variant: Variant) -> tuple[int, ...]:
        if isinstance(op, AllReduce) and variant.layout == "devices":
            return tuple(range(op.ranks))
        return (self.rank,)

    def _allreduce(self, op: AllReduce, variant: Variant, args: dict[str, Any]):
        """psum of every rank's buffer, as one global array of one row per rank: a row per process (each its own
        device), or every row in this process, one per local device (layout devices)."""
        jax = self.jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        rows = PartitionSpec("ranks")
        if variant.layout == "devices":
            devices = jax.local_devices(backend=self.device.platform)
            if len(devices) < op.ranks:
                raise Unsupported(f"{op.ranks} ranks in one process need {op.ranks} local {self.device.platform} "
                                  f"devices; JAX sees {len(devices)}")
            mesh = Mesh(np.array(devices[:op.ranks]), ("ranks",))
            array = jax.block_until_ready(jax.device_put(args["x"], NamedSharding(mesh, rows)))
        elif not self.jax.distributed.is_initialized():
            raise Unsupported("the JAX all-reduce runs across processes: start it with run --ranks R")
        else:
            mesh = Mesh(np.array(jax.devices(self.device.platform)), ("ranks",))
            array = jax.make_array_from_single_device_arrays((self.ranks, op.elements), NamedSharding(mesh, rows),
                                                             [args["x"].reshape(1, op.elements)])
        summed = jax.shard_map(lambda rows_: jax.lax.psum(rows_, "ranks"), mesh=mesh, in_specs=rows, out_specs=rows)
        start = time.perf_counter()
        compiled = jax.jit(summed).lower(array).compile()
        details = {"compile_s": time.perf_counter() - start, "in_place": False}
        if variant.layout == "devices" and self.device.platform == "cpu":
            # XLA:CPU's in-process collective deadlocks when calls are queued back to back (measured on 2 cores, 2
            # host devices: the second call's rendezvous never completes, and XLA aborts after 40 s); each call
            # waits for its own sum, a host round trip per call that a GPU's queued calls do not pay.
            details["waits_each_call"] = True
            return (lambda: jax.block_until_ready(compiled(array))), details
        return (lambda: compiled(array)), details

    def step(self, op: Op, variant: Variant, args: dict[str, Any]):
        jax = self.jax
        if isinstance(op, AllReduce):
            return self._allreduce(op, variant, args)
        if isinstance(op, Model):
            from backends.jax_models import model_step

            return model_step(jax, op, variant, args, self.device,
                              jax.lax.Precision(jax.config.jax_default_matmul_precision))
        forward = self._forward(op, variant)
        names, wrt = op.inputs, op.wrt(variant.pass_)

        def run(*operands):  # vjp w.r.t. only the wanted operands; the primal output is unused, so DCE'd
            *inputs, dy = operands
            if not wrt:
                return forward(*inputs)
            given = dict(zip(names, inputs, strict=True))

            def of_wrt(*varied):  # the forward as a function of the differentiated operands alone
                return forward(*(varied[wrt.index(name)] if name in wrt else given[name] for name in names))

            grads = jax.vjp(of_wrt, *(given[name] for name in wrt))[1](dy)
            return grads if len(grads) > 1 else grads[0]

        operands = (*(args[name] for name in names), args.get("dy"))
        start = time.perf_counter()
        try:
            compiled = jax.jit(run).lower(*operands).compile()
        except (jax.errors.JaxRuntimeError, NotImplementedError, ValueError) as error:  # no kernel or lowering
            if isinstance(error, ValueError) and "not supported" not in str(error):  # only XLA's own refusal, e.g.
                raise  # fp16 attention on CPU: "The precision 'F16_F16_F32' is not supported by dot_general"
            raise Unsupported(f"XLA could not compile {op.kind} {variant.pass_} {variant.dtype} on "
                              f"{self.settings.device}: {type(error).__name__}: {error}") from None
        compile_s = time.perf_counter() - start
        details: dict[str, Any] = {"compile_s": compile_s}
        if isinstance(op, Attention):  # cuDNN's fused attention shows as a custom call in the compiled program
            details["implementation"] = "cudnn" if "cudnn$fmha" in compiled.as_text() else "xla"
        if isinstance(op, Rnn):
            details["implementation"] = "lax.scan"
        if isinstance(op, Spmm):
            details["implementation"] = f"jax.experimental.sparse {variant.layout} @ dense"
        return (lambda: compiled(*operands)), details

    def sync(self, out: Any) -> None:
        """Wait for ``out``. JAX dispatches CPU work asynchronously too, but XLA:CPU starts a device's executions
        one after another in dispatch order, so the last output's readiness means the whole block ran, one call at a
        time (tests/test_backend_contract.py checks the completion order)."""
        self.jax.block_until_ready(out)

    def to_numpy(self, out: Any, name: str, op: Op, variant: Variant) -> np.ndarray:
        if isinstance(op, AllReduce):  # this process's rows of the global sum, which must all be equal: rows that
            rows = [np.asarray(s.data, dtype=np.float64).reshape(op.elements) for s in out.addressable_shards]
            same = all(np.array_equal(row, rows[0]) for row in rows)  # differ fail the check (NaN), whichever is off
            return rows[0] if same else np.full(op.elements, np.nan)
        array = np.asarray(out).astype(np.float64)
        perm = self._perm(name, op, variant)
        return array if perm is None else array.transpose(np.argsort(perm))
