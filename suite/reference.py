"""Seeded inputs shared by every backend, and the float64 NumPy reference the numerical check compares to.

Inputs are random normal (zeros make GPUs run faster at lower power, DeepBench issue #104), float32, in logical
layout: (batched) GEMM A and B as stored (transposed when the flags say so), conv input NCHW and filter KCRS,
attention Q, K, V as batch×heads×length×head_dim, a recurrent layer's x as batch×time×input and its weights and
biases as torch stores them (gates × hidden rows), a sparse GEMM's A dense with its zeros in place.

int8 inputs are the same arrays mapped to integers by ``to_int8`` (every backend converts with it), and the
reference is the exact integer product: the check's tolerance for int8 is zero. An all-reduce's buffer differs per
rank and holds small integers (``rank_buffer``), so that every partial sum, in any order and in fp32, bf16 or fp16, is
exact.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import softmax

from suite import model_reference
from suite.models import Model, initial_weights, synthetic_batch
from suite.ops import AllReduce, Attention, BatchedGemm, Conv2d, Gemm, Op, Pass, Rnn, Spmm

# Relative Frobenius error allowed per dtype (fp32 strict; TF32 and half precisions round inputs to ~10 or 8 bits;
# int8 sums integers in int32, exactly).
TOLERANCE = {"fp32": 2e-5, "tf32": 5e-3, "fp16": 5e-3, "bf16": 3e-2, "int8": 0.0}
# int8 inputs: round(16·x) clipped to ±63 for the seeded normal x. Seven bits, as fbgemm's reduce_range keeps them:
# x86 int8 kernels without VNNI add pairs of u8·s8 products in int16 (vpmaddubsw), which saturates on full-range
# values and would make an exact check fail by design of the kernel, not of the framework.
INT8_SCALE, INT8_LIMIT = 16.0, 63
# Above this forward FLOPs, check on a reduced batch (the float64 reference of a ResNet-50 layer at batch 8 takes
# seconds, once per framework variant; batch 1 has the same per-sample geometry).
CHECK_FLOP_LIMIT = 2.5e8
# A whole model is checked at this batch and size (image side, sequence length): every layer kind and every stage's
# geometry (ResNet-50 still reaches layer4 at 2×2), a float64 step in seconds.
MODEL_CHECK = {"resnet50": (2, 64), "bert_base": (2, 32)}


def to_int8(array: np.ndarray) -> np.ndarray:
    """A float32 input as the int8 array every backend measures int8 with (and the reference multiplies)."""
    return np.clip(np.rint(array * INT8_SCALE), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)


@functools.lru_cache(maxsize=4)
def sparse_pattern(m: int, k: int, sparsity: float, seed: int) -> np.ndarray:
    """The flat positions (row-major, ascending) of a sparse M×K operand's nonzeros: exactly round((1 - sparsity)·M·K)
    of them, uniformly at random without replacement, from the seed and (M, K, sparsity) alone (the same pattern for
    every N). Cached (read-only): every variant of a case uses one pattern."""
    nnz = Spmm(m, 1, k, sparsity).nnz
    keys = np.random.default_rng([seed, zlib.crc32(f"spmm {m}x{k} {sparsity!r}".encode())]).random(m * k)
    # the positions of the nnz smallest keys
    positions = np.arange(m * k) if nnz == m * k else np.sort(np.argpartition(keys, nnz)[:nnz])
    positions.flags.writeable = False
    return positions


def pattern_record(op: Spmm, seed: int) -> dict[str, object]:
    """What a sparse measurement records of its pattern: how it was drawn, the seed, nnz and a CRC-32 of the
    positions (two runs with the same digest timed the same matrix)."""
    positions = sparse_pattern(op.m, op.k, op.sparsity, seed)
    return {"rule": "uniform without replacement", "seed": seed, "nnz": int(positions.size),
            "crc32": zlib.crc32(positions.astype("<i8").tobytes())}


def input_record(op: Op, seed: int) -> dict[str, object]:
    """Facts of the seeded inputs a measurement records beside its details (a sparse operand's pattern); {}."""
    return {"pattern": pattern_record(op, seed)} if isinstance(op, Spmm) else {}


# An all-reduce rank's values: integers in [-ALLREDUCE_BOUND, ALLREDUCE_BOUND]. A partial sum of R ranks is at most
# R·bound in magnitude, an integer that fp32 holds exactly up to 2**24 and bf16 (8 significant bits) up to 256: exact
# for up to 128 ranks in every dtype, whatever order the collective adds in.
ALLREDUCE_BOUND = 2


def rank_buffer(op: AllReduce, seed: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s all-reduce input: float32 integers, reproducible from the seed, the shape and the rank."""
    rng = np.random.default_rng([seed, zlib.crc32(repr(op).encode()), rank])
    return rng.integers(-ALLREDUCE_BOUND, ALLREDUCE_BOUND + 1, op.elements, dtype=np.int8).astype(np.float32)


def make_inputs(op: Op, seed: int = 0, rank: int = 0) -> dict[str, np.ndarray]:
    """Every input of an op (x, w, dy; attention's q, k, v, dy; a model's initial weights and synthetic batch),
    reproducible from the seed and the shape alone; an all-reduce's is rank ``rank``'s buffer."""
    if isinstance(op, AllReduce):
        return {"x": rank_buffer(op, seed, rank)}
    if isinstance(op, Model):
        return {**_initial_weights(op.network, seed), **synthetic_batch(op, seed)}
    rng = np.random.default_rng([seed, zlib.crc32(repr(op).encode())])
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in op.operands.items()}
    if isinstance(op, Spmm):  # A keeps its values at the pattern's positions, zeros elsewhere
        dense = np.zeros(op.m * op.k, dtype=np.float32)
        positions = sparse_pattern(op.m, op.k, op.sparsity, seed)
        dense[positions] = arrays["x"].reshape(-1)[positions]
        arrays["x"] = dense.reshape(op.m, op.k)
    if isinstance(op, Rnn):  # weights ~ N(0, 1/fan-in), torch's init scale: gates neither saturate nor, for ReLU,
        for name in ("w_ih", "w_hh"):  # does the state grow without bound over the time steps
            arrays[name] *= np.float32(arrays[name].shape[1] ** -0.5)
        for name in ("b_ih", "b_hh"):  # biases at torch's scale too, 1/√hidden
            arrays[name] *= np.float32(op.hidden ** -0.5)
    return arrays


@functools.lru_cache(maxsize=2)
def _initial_weights(network: str, seed: int) -> Mapping[str, np.ndarray]:
    """A network's initial weights, drawn once per network and seed (read-only): every batch and size of it, the
    timed model and the smaller one its check runs, start from them (BERT-base: 110M values, seconds to draw)."""
    weights = initial_weights(Model(network=network, batch=1), seed)
    for array in weights.values():
        array.setflags(write=False)
    return MappingProxyType(weights)


@functools.lru_cache(maxsize=4)
def seeded_inputs(op: Op, seed: int = 0, rank: int = 0) -> Mapping[str, np.ndarray]:
    """``make_inputs``, made once per op, seed (and all-reduce rank) and read-only: a worker measures a case's
    variants in a row (every pass, layout and mode), and each places its tensors from, and is checked against, the
    same arrays."""
    arrays = make_inputs(op, seed, rank)
    for array in arrays.values():
        array.setflags(write=False)
    return MappingProxyType(arrays)


def reduced(op: Op) -> Op:
    """A cheaper op with the same per-sample geometry, for checking large cases (a model: ``MODEL_CHECK``, never
    larger than the op itself)."""
    if isinstance(op, Model):
        batch, size = MODEL_CHECK[op.network]
        return dataclasses.replace(op, batch=min(op.batch, batch), size=min(op.size, size))  # type: ignore[type-var]
    if op.flops() <= CHECK_FLOP_LIMIT or isinstance(op, AllReduce):  # a collective is checked on what it times
        return op
    if isinstance(op, Gemm):
        rows = max(1, int(op.m * CHECK_FLOP_LIMIT / op.flops()))
        return dataclasses.replace(op, m=rows)
    if isinstance(op, Spmm):  # fewer columns of B: the same sparse A
        return dataclasses.replace(op, n=max(1, int(op.n * CHECK_FLOP_LIMIT / op.flops())))
    if isinstance(op, BatchedGemm):  # fewer products, then fewer rows of each
        small = dataclasses.replace(op, batch=max(1, int(op.batch * CHECK_FLOP_LIMIT / op.flops())))
        return dataclasses.replace(small, m=max(1, int(op.m * CHECK_FLOP_LIMIT / small.flops())))
    if isinstance(op, Rnn):  # one sample, then fewer steps (the per-step geometry is the hidden size)
        small = dataclasses.replace(op, batch=1)
        steps = int(op.timesteps * min(1.0, CHECK_FLOP_LIMIT / small.flops()))
        return dataclasses.replace(small, timesteps=max(1, steps))
    if isinstance(op, Attention):  # one sample, one KV group; then shorter sequences (same ratio, same mask kind)
        small = dataclasses.replace(op, batch=1, heads=op.group, kv_heads=1)
        factor = min(1.0, (CHECK_FLOP_LIMIT / small.flops()) ** 0.5)
        while True:  # FLOPs grow as length² (causal: L·(L+1)/2, so the first factor can fall just short)
            shorter = dataclasses.replace(small, q_len=max(1, int(op.q_len * factor)),
                                          kv_len=max(1, int(op.kv_len * factor)))
            if shorter.flops() <= CHECK_FLOP_LIMIT or shorter.q_len == shorter.kv_len == 1:
                return shorter
            factor *= 0.99
    return dataclasses.replace(op, n=1)


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values a backend actually receives after casting float32 inputs to ``dtype``; integer arrays
    (a model's labels and tokens) as they are."""
    if np.issubdtype(array.dtype, np.integer):
        return array
    if dtype == "int8":
        return to_int8(array).astype(np.float64)
    if dtype == "fp16":
        return array.astype(np.float16).astype(np.float64)
    if dtype == "bf16":  # round to nearest even on the top 16 bits of the float32 pattern
        bits = array.astype(np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return array.astype(np.float64)


def _t(array: np.ndarray) -> np.ndarray:
    """Transpose the last two axes (a matrix, or each matrix of a batch)."""
    return array.swapaxes(-1, -2)


def _gemm(op: Gemm | BatchedGemm, t: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    x, w, dy = t["x"], t["w"], t["dy"]
    a = _t(x) if op.transpose_a else x
    b = _t(w) if op.transpose_b else w
    da, db = dy @ _t(b), _t(a) @ dy  # gradients of the logical A (M×K) and B (K×N)
    out = {"y": a @ b, "dx": _t(da) if op.transpose_a else da, "dw": _t(db) if op.transpose_b else db}
    return out


def _spmm(op: Spmm, t: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    """A (its zeros in place) times B: the dense product is the sparse one."""
    return {"y": t["x"] @ t["w"]}


def _attention(op: Attention, t: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    """softmax(Q·Kᵀ·scale + mask)·V and its gradients; each KV head serves ``group`` consecutive query heads."""
    q = t["q"]
    k, v = (np.repeat(t[name], op.group, axis=1) for name in ("k", "v"))
    scores = q @ _t(k) * op.scale
    if op.causal:
        scores = np.where(np.tril(np.ones((op.q_len, op.kv_len), dtype=bool)), scores, -np.inf)
    p = softmax(scores, axis=-1)
    if pass_ == "forward":
        return {"y": p @ v}
    dy = t["dy"]
    dp = dy @ _t(v)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # softmax's backward
    grouped = (op.batch, op.kv_heads, op.group, op.kv_len, op.head_dim)
    return {"dq": ds @ k * op.scale,
            "dk": (_t(ds) @ q * op.scale).reshape(grouped).sum(axis=2),  # a shared KV head sums its group's gradients
            "dv": (_t(p) @ dy).reshape(grouped).sum(axis=2)}


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _rnn(op: Rnn, t: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    """The layer step by step from h_0 = 0 (torch's equations, biases b_ih and b_hh), then backpropagation through
    time (the biases are constants: no gradient).

    Per step the input side gets gate gradients gi and the recurrent side gh (equal except GRU's candidate gate,
    whose recurrent part, b_hn included, is scaled by r); then dx = gi·W_ih, dW_ih = Σ giᵀ·x_t, dW_hh = Σ ghᵀ·h_{t-1}.
    """
    x, w_ih, w_hh, b_hh, dy = t["x"], t["w_ih"], t["w_hh"], t["b_hh"], t["dy"]
    hid, steps = op.hidden, op.timesteps
    xi = x @ w_ih.T + t["b_ih"]  # the input projection of every step: B, T, G·H
    h = np.zeros((op.batch, steps + 1, hid))  # h[:, t + 1] is the state after step t
    saved = []
    c = np.zeros((op.batch, hid))
    for step in range(steps):
        a, hh = xi[:, step], h[:, step] @ w_hh.T + b_hh
        if op.cell == "lstm":
            i, f, o = (_sigmoid(a[:, k * hid:(k + 1) * hid] + hh[:, k * hid:(k + 1) * hid]) for k in (0, 1, 3))
            g = np.tanh(a[:, 2 * hid:3 * hid] + hh[:, 2 * hid:3 * hid])
            c_prev, c = c, f * c + i * g
            h[:, step + 1] = o * np.tanh(c)
            saved.append((i, f, g, o, c_prev, np.tanh(c)))
        elif op.cell == "gru":
            r, z = (_sigmoid(a[:, k * hid:(k + 1) * hid] + hh[:, k * hid:(k + 1) * hid]) for k in (0, 1))
            n = np.tanh(a[:, 2 * hid:] + r * hh[:, 2 * hid:])
            h[:, step + 1] = (1 - z) * n + z * h[:, step]
            saved.append((r, z, n, hh[:, 2 * hid:]))
        else:
            pre = a + hh
            h[:, step + 1] = np.maximum(pre, 0) if op.cell == "rnn_relu" else np.tanh(pre)
    y = h[:, 1:]
    if pass_ == "forward":
        return {"y": y}
    gi, gh = np.zeros_like(xi), np.zeros_like(xi)
    dh, dc = np.zeros((op.batch, hid)), np.zeros((op.batch, hid))
    for step in reversed(range(steps)):
        dh = dh + dy[:, step]
        out = h[:, step + 1]
        if op.cell == "lstm":
            i, f, g, o, c_prev, tanh_c = saved[step]
            dc = dc + dh * o * (1 - tanh_c**2)
            gi[:, step] = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g**2),
                                          dh * tanh_c * o * (1 - o)], axis=1)
            dc = dc * f
            gh[:, step] = gi[:, step]
            dh = gi[:, step] @ w_hh
        elif op.cell == "gru":
            r, z, n, hn = saved[step]
            dn = dh * (1 - z) * (1 - n**2)
            dr, dz = dn * hn * r * (1 - r), dh * (h[:, step] - n) * z * (1 - z)
            gi[:, step] = np.concatenate([dr, dz, dn], axis=1)
            gh[:, step] = np.concatenate([dr, dz, dn * r], axis=1)
            dh = gh[:, step] @ w_hh + dh * z
        else:
            gi[:, step] = dh * ((out > 0) if op.cell == "rnn_relu" else (1 - out**2))
            gh[:, step] = gi[:, step]
            dh = gi[:, step] @ w_hh
    return {"dx": gi @ w_ih, "dw_ih": np.einsum("btg,bti->gi", gi, x),
            "dw_hh": np.einsum("btg,bth->gh", gh, h[:, :-1])}


def _conv(op: Conv2d, t: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    x, w = t["x"], t["w"]
    top, bottom, left, right = op.padding
    g, cg, kg = op.groups, op.c // op.groups, op.k // op.groups
    (sh, sw), (dh, dw_) = op.stride, op.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    # windows: N, C, P, Q, R, S (dilation by taking every dh-th row of a larger window)
    win = sliding_window_view(xp, ((op.r - 1) * dh + 1, (op.s - 1) * dw_ + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw_][:, :, : op.p, : op.q]
    win = win.reshape(op.n, g, cg, op.p, op.q, op.r, op.s)
    wg = w.reshape(g, kg, cg, op.r, op.s)
    out: dict[str, np.ndarray] = {}
    if pass_ == "forward":  # needs no dy (a whole model's reference runs its convs forward on their own)
        out["y"] = np.einsum("ngcpqrs,gkcrs->ngkpq", win, wg, optimize=True).reshape(op.out_shape)
        return out
    dyg = t["dy"].reshape(op.n, g, kg, op.p, op.q)
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


def _allreduce(op: AllReduce, t: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    """The sum itself: ``reference_inputs`` already holds every rank's buffer summed."""
    return {"y": t["x"]}


# op kind -> its float64 reference (every output of every pass); a new kind adds its own here.
REFERENCES = {"gemm": _gemm, "bgemm": _gemm, "conv2d": _conv, "attention": _attention, "rnn": _rnn,
              "spmm": _spmm, "allreduce": _allreduce}
REFERENCES["model"] = model_reference.model  # a whole network: suite/model_reference.py


def reference_inputs(op: Op, seed: int) -> Mapping[str, np.ndarray]:
    """What the float64 reference reads: the op's seeded inputs; for an all-reduce, every rank's buffer summed
    (one rank's buffer at a time, so memory stays at two buffers whatever the rank count)."""
    if not isinstance(op, AllReduce):
        return seeded_inputs(op, seed)
    total = np.zeros(op.elements, dtype=np.float64)
    for rank in range(op.ranks):
        total += rank_buffer(op, seed, rank)
    return {"x": total}


def _computed(op: Op, inputs: Mapping[str, np.ndarray], pass_: Pass, dtype: str) -> dict[str, np.ndarray]:
    """What the op kind's reference computes for a pass, from the inputs as rounded to ``dtype``: at least the
    pass's outputs, and whatever else it had to compute on the way (the GEMM reference gives y, dX and dW at once)."""
    rounded = {name: round_to(array, dtype) for name, array in inputs.items()}
    compute = REFERENCES.get(op.kind)
    if compute is None:
        raise NotImplementedError(f"no float64 reference for op kind {op.kind!r}: add one to "
                                  "suite.reference.REFERENCES")
    return compute(op, rounded, pass_)  # type: ignore[operator]


def reference(op: Op, inputs: Mapping[str, np.ndarray], pass_: Pass, dtype: str = "fp32") -> dict[str, np.ndarray]:
    """Float64 outputs of a pass, from the inputs as rounded to ``dtype``."""
    full = _computed(op, inputs, pass_, dtype)
    return {name: full[name] for name in op.outputs(pass_)}


@functools.lru_cache(maxsize=4)
def _every_output(op: Op, seed: int, dtype: str) -> Mapping[str, np.ndarray]:
    """Every output of every pass of ``op`` (y, dX, dW, ...) on its seeded inputs, each computed once: the passes
    are visited from the most outputs down, and a pass whose outputs are all known adds nothing (a conv's
    ``backward`` gives dX and dW, so ``backward_data`` and ``backward_weight`` cost nothing more)."""
    inputs = reference_inputs(op, seed)
    known: dict[str, np.ndarray] = {}
    for pass_ in sorted(op.passes, key=lambda p: -len(op.outputs(p))):
        if not set(op.outputs(pass_)) <= known.keys():
            known.update(_computed(op, inputs, pass_, dtype))
    for array in known.values():
        array.setflags(write=False)
    return MappingProxyType(known)


def expected(op: Op, seed: int, pass_: Pass, dtype: str = "fp32") -> dict[str, np.ndarray]:
    """``reference`` of a pass on the op's seeded inputs, from one float64 computation per op, seed and dtype
    (cached): every pass, layout and mode of a case that one worker measures in a row compares against it
    (read-only arrays). A whole model's three passes come from one eval forward and one training pass."""
    if isinstance(op, Model):
        return _model_expected(op, seed, dtype)[pass_]
    known = _every_output(op, seed, dtype)
    return {name: known[name] for name in op.outputs(pass_)}


@functools.lru_cache(maxsize=2)
def _model_expected(op: Model, seed: int, dtype: str) -> dict[str, dict[str, np.ndarray]]:
    """Every pass of a whole model from one set of inputs (BERT-base: 110M weights to draw and convert) and one
    float64 training pass for both backward and step."""
    return model_reference.passes(op, {name: round_to(array, dtype)
                                       for name, array in seeded_inputs(op, seed).items()})


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative Frobenius error ||actual - expected|| / ||expected||."""
    if actual.shape != expected.shape:
        return float("inf")
    norm = float(np.linalg.norm(expected))
    return float(np.linalg.norm(actual - expected)) / (norm if norm > 0 else 1.0)


def tolerance(dtype: str, math: str, op: Op | None = None, output: str = "") -> float:
    """The relative error allowed: per dtype and math mode; a whole model's fp32 outputs have their own
    (``Model.TOLERANCE``: a deep net accumulates rounding), never below the dtype's."""
    limit = TOLERANCE["tf32"] if dtype == "fp32" and math == "tf32" else TOLERANCE[dtype]
    if isinstance(op, Model):
        return max(limit, op.tolerance(output, reduced_precision=limit > TOLERANCE["fp32"]))
    return limit


def compare(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], dtype: str, math: str,
            op: Op | None = None) -> dict:
    """The check record: per-output errors, the tolerance (the largest, where outputs have their own), and
    pass/fail."""
    errors = {name: relative_error(outputs[name], expected[name]) for name in expected}
    limits = {name: tolerance(dtype, math, op, name) for name in expected}
    record = {"status": "pass" if all(errors[name] <= limits[name] for name in errors) else "fail",
              "errors": errors, "tolerance": max(limits.values(), default=tolerance(dtype, math))}
    if len(set(limits.values())) > 1:
        record["tolerances"] = limits
    return record
