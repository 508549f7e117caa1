"""One contract for every registered backend: smoke cases × passes × layouts agree with the float64 reference,
blocks run, settings read back, impossible combinations raise Unsupported with a reason.

Each backend is created and configured ONCE per test session (module-scoped fixture), with threads=1 and strict
math: TensorFlow's threads can be set only before its runtime starts, and XLA sizes its CPU pool from the CPU
affinity when its backend starts, so a second configure() in the same process could not take effect. The JAX
fixture narrows the process's affinity to one CPU and restores it afterwards. A framework already started by
another test in this process makes its backend skip with that reason. Non-default modes (torch.compile, TF eager
and XLA) run on one case each to keep the file fast.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from backends import REGISTRY, backend_class, is_available, load
from backends.base import Backend, Settings, Unsupported, Variant
from suite.catalog import load_catalog
from suite.ops import LAYER_PASSES, PASSES, Conv2d, Op
from suite.reference import compare, make_inputs, reference

SETTINGS = Settings(device="cpu", threads=1, math="strict")
SMOKE = load_catalog().subset("smoke")
ASYMMETRIC = Conv2d(n=2, c=4, h=9, w=11, k=6, r=3, s=3, stride=(2, 1), padding=(0, 1, 2, 0))
ASYMMETRIC_GAPS = {"torch"}  # backends without asymmetric conv padding
# Flags that configure(SETTINGS) must read back, per backend.
EXPECTED_FLAGS: dict[str, dict[str, Any]] = {
    "torch": {"threads": 1, "mkldnn.matmul.fp32_precision": "ieee", "cuda.matmul.fp32_precision": "ieee",
              "cudnn.rnn.fp32_precision": "ieee"},
    "tensorflow": {"intra_op_threads": 1, "inter_op_threads": 1, "tensor_float_32_execution": False},
    "jax": {"threads": 1, "jax_default_matmul_precision": "float32"},
    "numpy": {"threads": 1, "fp32_math": "ieee"},  # the example plugin (tests/plugins/opbench-numpy)
}
# Combinations each backend must reject, as (why, op, variant); the message must say why.
GEMM = next(case.op for case in SMOKE if case.op.kind == "gemm")
CONV = next(case.op for case in SMOKE if case.op.kind == "conv2d")
ATTENTION = next(case.op for case in SMOKE if case.op.kind == "attention")
IMPOSSIBLE: dict[str, list[tuple[str, Op, Variant]]] = {
    "torch": [("asymmetric padding", ASYMMETRIC, Variant("forward"))],
    "tensorflow": [("NCHW conv on CPU outside XLA", CONV, Variant("backward_data", mode="function", layout="NCHW"))],
    "jax": [("fp16 attention on CPU (no F16_F16_F32 dot_general)", ATTENTION, Variant("forward", dtype="fp16"))],
    "numpy": [("bf16", GEMM, Variant("forward", dtype="bf16")), ("fp16", CONV, Variant("backward", dtype="fp16"))],
}
COMMON_IMPOSSIBLE = [("unknown mode", GEMM, Variant("forward", mode="no-such-mode")),
                     ("unknown layout", CONV, Variant("forward", layout="NCWH")),
                     ("attention has no dX-only pass", ATTENTION, Variant("backward_data"))]


def params() -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.skipif(not is_available(name), reason=f"{name} is not installed"))
            for name in REGISTRY]


@pytest.fixture(scope="module", params=params())
def configured(request) -> tuple[Backend, dict[str, Any]]:
    affinity = os.sched_getaffinity(0)
    backend = load(request.param, SETTINGS)
    try:
        flags = backend.configure(SETTINGS)
    except RuntimeError as error:  # the framework's runtime was started earlier in this process
        pytest.skip(f"{request.param} cannot be configured in this process: {error}")
    yield backend, flags
    os.sched_setaffinity(0, affinity)  # jax narrows it; keep it from slowing the other backends' tests


def check(backend: Backend, op: Op, variant: Variant) -> dict[str, Any]:
    """Prepare, compare with the reference, run a block of 3; returns the prepared details."""
    inputs = make_inputs(op)
    prepared = backend.prepare(op, variant, inputs)
    result = compare(prepared.outputs(), reference(op, inputs, variant.pass_, variant.dtype), variant.dtype,
                     SETTINGS.math, op)  # the op: a whole model's outputs have their own tolerances
    assert result["status"] == "pass", (backend.name, op, variant, result)
    prepared.run_block(3)
    assert prepared.first_call_s > 0
    return prepared.details


def test_configure_reads_back_threads_and_strict_math(configured):
    backend, flags = configured
    for key, value in EXPECTED_FLAGS.get(backend.name, {}).items():  # a new plugin: add its flags here
        assert flags[key] == value, (backend.name, key, flags)


@pytest.mark.parametrize("case", SMOKE, ids=lambda case: case.id)
@pytest.mark.parametrize("pass_", PASSES)
def test_smoke_cases_match_reference(configured, case, pass_):
    backend, _ = configured
    for layout in backend_class(backend.name).layouts.get(case.op.kind, (None,)):  # None: a kind it lacks
        variant = Variant(pass_, "fp32", layout=layout)
        try:
            details = check(backend, case.op, variant)
        except Unsupported as reason:  # e.g. TF's NCHW conv on CPU: recorded as a gap, must say why
            assert str(reason), (backend.name, case.id, layout)
            continue
        assert details["layout"] == layout and details["mode"] == backend.modes[0]


def test_other_modes_on_one_case(configured):
    backend, _ = configured
    case = next(case for case in SMOKE if case.id == "smoke-conv-strided")
    for mode in backend.modes[1:]:
        check(backend, case.op, Variant("backward", mode=mode))


def test_asymmetric_padding_runs_or_is_unsupported(configured):
    backend, _ = configured
    for pass_ in LAYER_PASSES:
        try:
            details = check(backend, ASYMMETRIC, Variant(pass_))
        except Unsupported:
            assert backend.name in ASYMMETRIC_GAPS
            continue
        assert backend.name not in ASYMMETRIC_GAPS
        if backend.name == "tensorflow":
            assert details["padding_form"] == "explicit"


def test_impossible_combinations_raise_unsupported(configured):
    backend, _ = configured
    for why, op, variant in COMMON_IMPOSSIBLE + IMPOSSIBLE.get(backend.name, []):
        with pytest.raises(Unsupported) as raised:
            backend.prepare(op, variant, make_inputs(op))
        assert len(str(raised.value)) > 10, (backend.name, why)


def test_bf16_gemm_forward_within_tolerance_or_unsupported(configured):
    backend, _ = configured
    try:
        check(backend, GEMM, Variant("forward", dtype="bf16"))
    except Unsupported as reason:
        assert str(reason)


def test_bf16_recurrent_layers_within_tolerance_or_unsupported(configured):
    """bf16 through every time step (Keras' own weight initializer once had no bf16 kernel: the layer never ran)."""
    backend, _ = configured
    for op in (case.op for case in SMOKE if case.op.kind == "rnn"):
        try:
            check(backend, op, Variant("backward", dtype="bf16"))
        except Unsupported as reason:
            assert str(reason) and backend.name not in ("torch", "tensorflow", "jax"), (backend.name, op, reason)


# The kernel each backend records for a recurrent layer on this CPU: torch's oneDNN has an LSTM only; Keras' cuDNN
# path needs a GPU; JAX runs lax.scan everywhere.
RNN_ON_CPU = {"torch": {"lstm": "onednn"}, "tensorflow": {}, "jax": {}}
RNN_ON_CPU_OTHERWISE = {"torch": "generic loop", "tensorflow": "generic loop", "jax": "lax.scan"}


def test_recurrent_layers_record_the_implementation_that_ran(configured):
    backend, _ = configured
    if backend.name not in RNN_ON_CPU:
        pytest.skip(f"{backend.name} has no recurrent layers")
    for op in (case.op for case in SMOKE if case.op.kind == "rnn"):
        expected = RNN_ON_CPU[backend.name].get(op.cell, RNN_ON_CPU_OTHERWISE[backend.name])
        for pass_ in ("forward", "backward"):
            assert check(backend, op, Variant(pass_))["implementation"] == expected, (backend.name, op.cell, pass_)


@pytest.mark.parametrize(("op", "form"), [
    (Conv2d(1, 1, 8, 8, 1, 3, 3, padding=(1, 1, 1, 1)), "SAME"),  # stride 1, pad (R-1)/2
    (Conv2d(1, 1, 8, 8, 1, 3, 3), "VALID"),
    (Conv2d(1, 1, 15, 15, 1, 3, 3, stride=(2, 2), padding=(1, 1, 1, 1)), "SAME"),  # odd size: SAME pads 1 + 1
    (Conv2d(1, 1, 16, 16, 1, 3, 3, stride=(2, 2), padding=(1, 1, 1, 1)), "explicit"),  # SAME would pad 0 + 1
    (Conv2d(1, 1, 8, 8, 1, 3, 3, padding=(2, 2, 2, 2), dilation=(2, 2)), "SAME"),
    (Conv2d(1, 1, 8, 8, 1, 5, 5, padding=(1, 1, 1, 1)), "explicit"),  # output size differs from SAME's
])
def test_tf_padding_form(op, form):  # framework-free: tf_backend imports TF only when instantiated
    from backends.tf_backend import padding_form

    assert padding_form(op) == form


def test_jax_cpu_completes_calls_in_order(configured):
    """Backend.block_runner syncs only a block's last output; that proves the block done only if calls finish in
    order. Checked here for JAX's asynchronous CPU client (torch and TF run CPU ops synchronously)."""
    backend, _ = configured
    if backend.name != "jax":
        pytest.skip("only JAX dispatches CPU work asynchronously")
    jax = pytest.importorskip("jax")
    for op, pass_ in ((GEMM, "forward"), (CONV, "backward_data")):
        variant = backend.resolve(op, Variant(pass_))
        args = {role: backend.tensor(a, role, op, variant) for role, a in make_inputs(op).items()}
        step, _ = backend.step(op, variant, args)
        for _ in range(20):
            outputs = [step() for _ in range(8)]
            jax.block_until_ready(outputs[-1])
            assert all(out.is_ready() for out in outputs), "an earlier call finished after the last one"


# Inference kinds (issue 21): which int8 kernels each framework has on a CPU (torch and TensorFlow have no public
# int8 × int8 → int32 conv); a plugin without int8 refuses it with a reason.
INT8_CONV_ON_CPU = {"torch": False, "tensorflow": False, "jax": True}
SPMM = next(case.op for case in SMOKE if case.op.kind == "spmm")
INT8_GEMM = next(case.op for case in SMOKE if case.op.kind == "gemm" and "int8" in case.dtypes)
INT8_CONV = next(case.op for case in SMOKE if case.op.kind == "conv2d" and "int8" in case.dtypes)


def test_sparse_gemm_in_every_format_matches_reference_and_records_its_pattern(configured):
    backend, _ = configured
    layouts = backend_class(backend.name).layouts.get("spmm")
    if layouts is None:
        with pytest.raises(Unsupported, match="no spmm op"):
            check(backend, SPMM, Variant("forward"))
        return
    for layout in layouts:
        details = check(backend, SPMM, Variant("forward", layout=layout))
        assert details["layout"] == layout and layout in details["implementation"]


def test_int8_gemm_is_exact_and_int8_conv_exact_or_unsupported_with_the_reason(configured):
    backend, _ = configured
    try:
        details = check(backend, INT8_GEMM, Variant("forward", dtype="int8"))
    except Unsupported as reason:
        assert backend.name not in INT8_CONV_ON_CPU and str(reason), (backend.name, reason)
        return
    assert details["int8_padding"] == "none"
    try:
        check(backend, INT8_CONV, Variant("forward", dtype="int8"))
        assert INT8_CONV_ON_CPU.get(backend.name, True), backend.name
    except Unsupported as reason:
        assert not INT8_CONV_ON_CPU.get(backend.name, False) and "int8" in str(reason), (backend.name, reason)
    for op in (INT8_GEMM, INT8_CONV):
        with pytest.raises(Unsupported, match="only the forward pass"):
            backend.prepare(op, Variant("backward_data", dtype="int8"), make_inputs(op))


def test_torch_int_mm_shapes_refused_on_cuda_are_named():  # framework-free: the check runs before any CUDA call
    from backends.torch_backend import int_mm_refusal
    from suite.ops import Gemm

    assert int_mm_refusal(Gemm(7680, 1, 2560), "cpu") == ""
    assert int_mm_refusal(Gemm(32, 16, 64), "gpu") == ""
    for op in (Gemm(16, 16, 64), Gemm(32, 12, 64), Gemm(32, 16, 60), Gemm(7680, 1, 2560)):
        reason = int_mm_refusal(op, "gpu")
        assert "does not pad" in reason and f"M={op.m} N={op.n} K={op.k}" in reason
