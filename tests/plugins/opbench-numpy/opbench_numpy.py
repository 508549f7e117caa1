"""opbench backend: NumPy on the CPU, a plain BLAS baseline.

GEMM is one ``matmul`` (BLAS sgemm; transposed operands are passed as transposed views, which BLAS takes as
flags), a batched GEMM one ``matmul`` on 3-D operands (a BLAS call per product). Attention is not offered (no layout
for it, so every attention case is unsupported): NumPy has no attention kernel, and a composition of matmul and
exp would time NumPy's loops, not a library's kernel. Recurrent layers (``rnn``) are not offered either, for the same
reason: a Python loop over time steps would time the interpreter.
conv2d is im2col + one batched matmul per pass, in float32:

- forward: the input's sliding windows (``sliding_window_view``, which handles stride, padding and dilation) are
  copied into a (groups, N·P·Q, C/g·R·S) column matrix, then multiplied by the (groups, K/g, C/g·R·S) filter;
- backward_weight: dYᵀ · columns (the columns are rebuilt from X, as frameworks do);
- backward_data: dY · W gives the column gradients, which are scattered back onto the padded input one filter tap
  at a time (col2im), then the padding is cropped.

Only the BLAS calls use several threads (set and read back through threadpoolctl); the copies run on one core.
fp16 and bf16 are unsupported: NumPy has no bfloat16, and its float16 matmul runs in slow non-BLAS loops.
NumPy is opbench's own dependency, so importing it at module top imports no extra framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from backends.base import Backend, DeviceMissing, Settings, Unsupported, Variant
from suite.ops import BatchedGemm, Conv2d, Gemm, Op

UNSUPPORTED_DTYPES = {
    "fp16": "NumPy's float16 matmul does not use BLAS (it runs in generic loops), so it would not time a kernel",
    "bf16": "NumPy has no bfloat16 type",
    "int8": "NumPy multiplies integers in generic loops, not BLAS, so it would not time a kernel",
}


class NumpyBackend(Backend):
    name = "numpy"
    modes = ("eager",)
    layouts = {"gemm": ("row-major",), "conv2d": ("NCHW",), "bgemm": ("row-major",)}  # no attention, no rnn: see above

    def __init__(self, settings: Settings | None = None):
        super().__init__(settings)
        self._limits: Any = None  # threadpoolctl's limiter, kept alive for the worker's lifetime

    def versions(self) -> dict[str, str]:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # the BLAS NumPy was built with
        return {"numpy": np.__version__, "blas": f"{blas['name']} {blas.get('version', '')}".strip()}

    def devices(self) -> list[str]:
        return ["cpu"]

    def configure(self, settings: Settings) -> dict[str, Any]:
        from threadpoolctl import threadpool_info, threadpool_limits

        self.settings = settings
        if settings.device != "cpu":
            raise DeviceMissing(f"numpy: NumPy runs on the CPU only (no {settings.device} build exists); "
                                "leave it out of GPU runs (--backend torch,tensorflow,jax)")
        if settings.threads:
            self._limits = threadpool_limits(limits=settings.threads, user_api="blas")
        blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
        return {
            "threads": min(info["num_threads"] for info in blas) if blas else None,
            "blas": ", ".join(f"{info['internal_api']} {info['version']}" for info in blas),
            "blas_architecture": ", ".join(str(info.get("architecture")) for info in blas),
            "fp32_math": "ieee",  # NumPy has no TF32: --math tf32 still runs IEEE fp32, and says so here
        }

    def tensor(self, array: np.ndarray, role: str, op: Op, variant: Variant) -> np.ndarray:
        if variant.dtype in UNSUPPORTED_DTYPES:
            raise Unsupported(f"numpy backend runs fp32 only: {UNSUPPORTED_DTYPES[variant.dtype]}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def step(self, op: Op, variant: Variant, args: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
        x, w, dy = args["x"], args["w"], args["dy"]
        if isinstance(op, Gemm | BatchedGemm):
            passes = gemm_passes(op, x, w, dy)
            algorithm = "matmul (BLAS sgemm)" + (", one per product" if isinstance(op, BatchedGemm) else "")
        else:
            passes = conv_passes(op, x, w, dy)
            algorithm = "im2col + batched matmul"
        if variant.pass_ == "backward":
            data, weight = passes["backward_data"], passes["backward_weight"]
            return (lambda: (data(), weight())), {"algorithm": algorithm}
        return passes[variant.pass_], {"algorithm": algorithm}

    def sync(self, out: Any) -> None:
        """NumPy computes synchronously: a call has finished when it returns."""

    def to_numpy(self, out: Any, name: str, op: Op, variant: Variant) -> np.ndarray:
        return np.asarray(out, dtype=np.float64)


def gemm_passes(op: Gemm | BatchedGemm, x: np.ndarray, w: np.ndarray,
                dy: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """C = A·B (each product of a batch) with A, B stored transposed when the flags say so; gradients in the
    operands' stored layout."""
    def t(array: np.ndarray) -> np.ndarray:  # a transposed view of each matrix
        return array.swapaxes(-1, -2)

    a = t(x) if op.transpose_a else x
    b = t(w) if op.transpose_b else w
    return {
        "forward": lambda: a @ b,
        "backward_data": (lambda: b @ t(dy)) if op.transpose_a else (lambda: dy @ t(b)),  # dA = dC·Bᵀ
        "backward_weight": (lambda: t(dy) @ a) if op.transpose_b else (lambda: t(a) @ dy),  # dB = Aᵀ·dC
    }


def conv_passes(op: Conv2d, x: np.ndarray, w: np.ndarray, dy: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """The three conv passes as im2col + batched matmul over the groups (NCHW input, KCRS filter)."""
    n, c, k, r, s, p, q, g = op.n, op.c, op.k, op.r, op.s, op.p, op.q, op.groups
    cg, kg = c // g, k // g
    top, bottom, left, right = op.padding
    (sh, sw), (dh, dw) = op.stride, op.dilation
    rows, taps = n * p * q, cg * r * s
    w_groups = w.reshape(g, kg, taps)  # a view

    def columns() -> np.ndarray:
        """im2col: (g, N·P·Q, C/g·R·S), one copy of the input's windows."""
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(op.padding) else x
        windows = sliding_window_view(padded, ((r - 1) * dh + 1, (s - 1) * dw + 1), axis=(2, 3))
        windows = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :p, :q]  # N, C, P, Q, R, S
        return windows.reshape(n, g, cg, p, q, r, s).transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, rows, taps)

    def dy_rows() -> np.ndarray:
        return dy.reshape(n, g, kg, p, q).transpose(1, 0, 3, 4, 2).reshape(g, rows, kg)

    def forward() -> np.ndarray:
        y = columns() @ w_groups.transpose(0, 2, 1)  # g, N·P·Q, K/g
        return np.ascontiguousarray(y.reshape(g, n, p, q, kg).transpose(1, 0, 4, 2, 3)).reshape(n, k, p, q)

    def backward_weight() -> np.ndarray:
        return (dy_rows().transpose(0, 2, 1) @ columns()).reshape(op.weight_shape)

    def backward_data() -> np.ndarray:
        grads = (dy_rows() @ w_groups).reshape(g, n, p, q, cg, r, s)
        padded = np.zeros((n, c, op.h + top + bottom, op.w + left + right), dtype=x.dtype)
        by_group = padded.reshape(n, g, cg, *padded.shape[2:])  # a view
        for i in range(r):  # col2im: add each filter tap's gradient back where that tap read the input
            for j in range(s):
                h0, w0 = i * dh, j * dw
                by_group[:, :, :, h0: h0 + sh * (p - 1) + 1: sh, w0: w0 + sw * (q - 1) + 1: sw] += \
                    grads[..., i, j].transpose(1, 0, 4, 2, 3)
        return np.ascontiguousarray(padded[:, :, top: top + op.h, left: left + op.w])

    return {"forward": forward, "backward_data": backward_data, "backward_weight": backward_weight}
