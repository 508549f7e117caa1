"""Seeded inputs shared by every backend, and the float64 NumPy reference the numerical check compares to.

Inputs are random normal (zeros make GPUs run faster at lower power, DeepBench issue #104), float32, in logical
layout: GEMM A and B as stored (transposed when the flags say so), conv input NCHW and filter KCRS.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from suite.ops import OUTPUTS, Conv2d, Gemm, Op, Pass

# Relative Frobenius error allowed per dtype (fp32 strict; TF32 and half precisions round inputs to ~10 or 8 bits).
TOLERANCE = {"fp32": 2e-5, "tf32": 5e-3, "fp16": 5e-3, "bf16": 3e-2}
# Above this forward FLOPs, check on a reduced batch (the float64 reference of a ResNet-50 layer at batch 8 takes
# seconds, once per framework variant; batch 1 has the same per-sample geometry).
CHECK_FLOP_LIMIT = 2.5e8


def make_inputs(op: Op, seed: int = 0) -> dict[str, np.ndarray]:
    """x, w and dy for an op, reproducible from the seed and the shape alone."""
    rng = np.random.default_rng([seed, zlib.crc32(repr(op).encode())])
    if isinstance(op, Gemm):
        shapes = {"x": op.a_shape, "w": op.b_shape, "dy": op.out_shape}
    else:
        shapes = {"x": op.input_shape, "w": op.weight_shape, "dy": op.out_shape}
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def reduced(op: Op) -> Op:
    """A cheaper op with the same per-sample geometry, for checking large cases."""
    if op.flops() <= CHECK_FLOP_LIMIT:
        return op
    if isinstance(op, Gemm):
        rows = max(1, int(op.m * CHECK_FLOP_LIMIT / op.flops()))
        return dataclasses.replace(op, m=rows)
    return dataclasses.replace(op, n=1)


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values a backend actually receives after casting float32 inputs to ``dtype``."""
    if dtype == "fp16":
        return array.astype(np.float16).astype(np.float64)
    if dtype == "bf16":  # round to nearest even on the top 16 bits of the float32 pattern
        bits = array.astype(np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return array.astype(np.float64)


def _gemm(op: Gemm, x: np.ndarray, w: np.ndarray, dy: np.ndarray, pass_: Pass) -> dict[str, np.ndarray]:
    a = x.T if op.transpose_a else x
    b = w.T if op.transpose_b else w
    da, db = dy @ b.T, a.T @ dy  # gradients of the logical A (M×K) and B (K×N)
    out = {"y": a @ b, "dx": da.T if op.transpose_a else da, "dw": db.T if op.transpose_b else db}
    return out


def _conv(op: Conv2d, x: np.ndarray, w: np.ndarray, dy: np.ndarray, pass_: Pass) -> dict[str, np.ndarray]:
    top, bottom, left, right = op.padding
    g, cg, kg = op.groups, op.c // op.groups, op.k // op.groups
    (sh, sw), (dh, dw_) = op.stride, op.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    # windows: N, C, P, Q, R, S (dilation by taking every dh-th row of a larger window)
    win = sliding_window_view(xp, ((op.r - 1) * dh + 1, (op.s - 1) * dw_ + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw_][:, :, : op.p, : op.q]
    win = win.reshape(op.n, g, cg, op.p, op.q, op.r, op.s)
    wg = w.reshape(g, kg, cg, op.r, op.s)
    dyg = dy.reshape(op.n, g, kg, op.p, op.q)
    out: dict[str, np.ndarray] = {}
    if pass_ == "forward":
        out["y"] = np.einsum("ngcpqrs,gkcrs->ngkpq", win, wg, optimize=True).reshape(op.out_shape)
    if pass_ in ("backward_weight", "backward"):
        out["dw"] = np.einsum("ngcpqrs,ngkpq->gkcrs", win, dyg, optimize=True).reshape(op.weight_shape)
    if pass_ in ("backward_data", "backward"):
        cols = np.einsum("ngkpq,gkcrs->ngcpqrs", dyg, wg, optimize=True).reshape(op.n, op.c, op.p, op.q,
                                                                                   op.r, op.s)
        dxp = np.zeros_like(xp)
        for r in range(op.r):  # scatter each filter tap back onto the padded input
            for s in range(op.s):
                h0, w0 = r * dh, s * dw_
                dxp[:, :, h0: h0 + sh * (op.p - 1) + 1: sh, w0: w0 + sw * (op.q - 1) + 1: sw] += cols[..., r, s]
        out["dx"] = dxp[:, :, top: top + op.h, left: left + op.w]
    return out


def reference(op: Op, inputs: dict[str, np.ndarray], pass_: Pass, dtype: str = "fp32") -> dict[str, np.ndarray]:
    """Float64 outputs of a pass, from the inputs as rounded to ``dtype``."""
    x, w, dy = (round_to(inputs[name], dtype) for name in ("x", "w", "dy"))
    compute = _gemm if isinstance(op, Gemm) else _conv
    full = compute(op, x, w, dy, pass_)  # type: ignore[arg-type]
    return {name: full[name] for name in OUTPUTS[pass_]}


@functools.lru_cache(maxsize=8)
def expected(op: Op, seed: int, pass_: Pass, dtype: str = "fp32") -> dict[str, np.ndarray]:
    """``reference`` on the op's seeded inputs, cached: the layouts and modes of a case that one worker measures in
    a row compare against one float64 result (read-only; do not modify the arrays)."""
    return reference(op, make_inputs(op, seed), pass_, dtype)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative Frobenius error ||actual - expected|| / ||expected||."""
    if actual.shape != expected.shape:
        return float("inf")
    norm = float(np.linalg.norm(expected))
    return float(np.linalg.norm(actual - expected)) / (norm if norm > 0 else 1.0)


def tolerance(dtype: str, math: str) -> float:
    return TOLERANCE["tf32"] if dtype == "fp32" and math == "tf32" else TOLERANCE[dtype]


def compare(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], dtype: str, math: str) -> dict:
    """The check record: per-output errors, the tolerance, and pass/fail."""
    errors = {name: relative_error(outputs[name], expected[name]) for name in expected}
    limit = tolerance(dtype, math)
    return {"status": "pass" if all(e <= limit for e in errors.values()) else "fail",
            "errors": errors, "tolerance": limit}
