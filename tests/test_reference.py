"""The float64 NumPy reference, checked without any framework: direct loops and adjoint identities."""

import dataclasses
import math

import numpy as np
import pytest

from suite.ops import Conv2d, Gemm
from suite.reference import (
    CHECK_FLOP_LIMIT,
    compare,
    expected,
    make_inputs,
    reduced,
    reference,
    relative_error,
    round_to,
    seeded_inputs,
)

CONVS = [
    Conv2d(n=2, c=4, h=7, w=6, k=6, r=3, s=2, stride=(2, 1), padding=(1, 0, 2, 1)),
    Conv2d(n=1, c=6, h=8, w=8, k=6, r=3, s=3, padding=(1, 1, 1, 1), groups=3, dilation=(2, 1)),
]


def direct_conv(op: Conv2d, x, w):
    top, _, left, _ = op.padding
    y = np.zeros(op.out_shape)
    cg, kg = op.c // op.groups, op.k // op.groups
    for n in range(op.n):
        for k in range(op.k):
            g = k // kg
            for p in range(op.p):
                for q in range(op.q):
                    for c in range(cg):
                        for r in range(op.r):
                            for s in range(op.s):
                                h = p * op.stride[0] - top + r * op.dilation[0]
                                v = q * op.stride[1] - left + s * op.dilation[1]
                                if 0 <= h < op.h and 0 <= v < op.w:
                                    y[n, k, p, q] += x[n, g * cg + c, h, v] * w[k, c, r, s]
    return y


@pytest.mark.parametrize("op", CONVS)
def test_conv_forward_matches_direct_loops(op):
    inputs = make_inputs(op)
    y = reference(op, inputs, "forward")["y"]
    assert np.allclose(y, direct_conv(op, inputs["x"].astype(float), inputs["w"].astype(float)))


@pytest.mark.parametrize("op", [*CONVS, Gemm(5, 3, 4, transpose_a=True), Gemm(2, 6, 3, transpose_b=True)])
def test_gradients_are_adjoints_of_the_forward(op):
    """<dy, f(x, w)> = <dx, x> = <dw, w> for a bilinear f, so dx and dw are exact gradients."""
    inputs = make_inputs(op)
    x, w, dy = (inputs[k].astype(float) for k in ("x", "w", "dy"))
    out = reference(op, inputs, "backward")
    y = reference(op, inputs, "forward")["y"]
    assert np.vdot(dy, y) == pytest.approx(np.vdot(out["dx"], x)) == pytest.approx(np.vdot(out["dw"], w))
    assert out["dx"].shape == x.shape and out["dw"].shape == w.shape


def test_inputs_are_seeded_random_normal_and_differ_by_shape():
    a, b = make_inputs(Gemm(64, 64, 64)), make_inputs(Gemm(64, 64, 64))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert abs(a["x"].mean()) < 0.1 and 0.9 < a["x"].std() < 1.1 and a["x"].dtype == np.float32
    assert not np.array_equal(make_inputs(Gemm(64, 64, 64), seed=1)["x"], a["x"])


def test_bf16_rounding_keeps_eight_significant_bits():
    values = np.array([1.0, 1 + 2**-8, 1 + 2**-7, 3.14159], dtype=np.float32)
    assert list(round_to(values, "bf16")) == [1.0, 1.0, 1 + 2**-7, 3.140625]


def test_compare_flags_a_wrong_result():
    expected = {"y": np.ones((4, 4))}
    assert compare({"y": np.ones((4, 4)) * (1 + 1e-6)}, expected, "fp32", "strict")["status"] == "pass"
    assert compare({"y": np.ones((4, 4)) * 1.01}, expected, "fp32", "strict")["status"] == "fail"
    assert compare({"y": np.ones((4, 4)) * 1.01}, expected, "bf16", "strict")["status"] == "pass"
    assert compare({"y": np.ones((4, 5))}, expected, "fp32", "strict")["status"] == "fail"


def test_large_cases_are_checked_on_a_reduced_batch():
    big = Conv2d(n=64, c=256, h=56, w=56, k=256, r=3, s=3, padding=(1, 1, 1, 1))
    assert reduced(big).n == 1 and reduced(big).c == 256
    assert reduced(Gemm(8192, 8192, 8192)).flops() <= 2e9
    assert reduced(Gemm(64, 64, 64)) == Gemm(64, 64, 64)


def test_expected_is_the_reference_of_the_seeded_inputs_computed_once():
    op = Conv2d(n=2, c=3, h=9, w=9, k=4, r=3, s=3, padding=(1, 1, 1, 1))
    first = expected(op, 7, "backward", "fp32")
    direct = reference(op, make_inputs(op, 7), "backward", "fp32")
    assert set(first) == set(direct) and all(np.array_equal(first[k], direct[k]) for k in direct)
    again = expected(op, 7, "backward", "fp32")  # a second variant of the case reuses the same arrays
    assert all(again[name] is first[name] for name in first)
    assert not np.array_equal(expected(op, 8, "backward", "fp32")["dx"], first["dx"])  # the seed is part of the key


@pytest.mark.parametrize(("op", "computations"), [
    (Conv2d(n=2, c=3, h=9, w=9, k=4, r=3, s=3, padding=(1, 1, 1, 1), dilation=(1, 2)), 2),  # backward, forward
    (Gemm(m=16, n=12, k=8, transpose_a=True), 1),  # the GEMM reference gives y, dX and dW at once
])
def test_every_pass_of_a_case_shares_one_float64_computation(monkeypatch, op, computations):
    # A worker checks a case's four passes in a row: backward_data and backward_weight are parts of backward, so
    # the reference runs once for the gradients and once for y (a conv), not once per pass
    import suite.reference as ref

    calls = []
    real = ref.REFERENCES[op.kind]
    monkeypatch.setitem(ref.REFERENCES, op.kind, lambda o, t, p: calls.append(p) or real(o, t, p))
    got = {p: expected(op, 11, p, "fp32") for p in ("forward", "backward_data", "backward_weight", "backward")}
    assert len(calls) == computations
    for pass_, outputs in got.items():  # each pass still gets exactly its outputs, equal to its own reference
        direct = reference(op, make_inputs(op, 11), pass_, "fp32")
        assert set(outputs) == set(direct) and all(np.array_equal(outputs[k], direct[k]) for k in direct)
        assert not any(array.flags.writeable for array in outputs.values())  # shared: nobody may change them


def test_seeded_inputs_are_made_once_and_read_only():
    op = Gemm(m=8, n=8, k=8)
    first = seeded_inputs(op, 3)
    assert seeded_inputs(op, 3)["x"] is first["x"]  # every variant of the case places the same arrays
    assert all(np.array_equal(first[k], v) for k, v in make_inputs(op, 3).items())
    with pytest.raises(ValueError, match="read-only"):
        first["x"][0, 0] = 1.0


def test_reduced_gemm_keeps_the_most_rows_under_the_limit():
    at_limit = Gemm(1, 2, int(CHECK_FLOP_LIMIT // 4))
    side = 512
    assert at_limit.flops() == CHECK_FLOP_LIMIT and reduced(at_limit) == at_limit  # at the limit: full size
    big = Gemm(64 * side, side, side)
    small = reduced(big)
    assert small.n == big.n and small.k == big.k
    assert small.flops() <= CHECK_FLOP_LIMIT < dataclasses.replace(small, m=small.m + 1).flops()
    assert reduced(Gemm(2, 100 * side, 100 * side)).m == 1  # never fewer than one row


def test_relative_error_by_hand():
    assert relative_error(np.array([3.0, 4.0]), np.array([0.0, 0.0])) == 5.0  # zero reference: absolute error
    assert relative_error(np.array([1.0]), np.array([0.5])) == 1.0  # a norm below 1 still divides
    assert relative_error(np.ones((2, 3)), np.ones((3, 2))) == math.inf


def test_an_error_exactly_at_the_tolerance_passes():
    result = compare({"y": np.array([1.0, 2e-5])}, {"y": np.array([1.0, 0.0])}, "fp32", "strict")
    assert result["errors"]["y"] == 2e-5 == result["tolerance"] and result["status"] == "pass"


def test_bf16_rounds_to_nearest_even_not_truncates():
    values = np.array([1 + 2**-8 + 2**-9, 1 + 2**-7 + 2**-8, -(1 + 2**-8 + 2**-9), 2**-8 + 2**-16 + 2**-17],
                      dtype=np.float32)
    # above half an ulp rounds up; a tie rounds to the even mantissa (here up); the sign is kept
    assert list(round_to(values, "bf16")) == [1 + 2**-7, 1 + 2**-6, -(1 + 2**-7), 2**-8 + 2**-15]
    assert list(round_to(np.array([1 + 2**-11], dtype=np.float32), "fp16")) == [1.0]  # fp16: 10 mantissa bits


def test_a_kind_without_a_reference_is_refused_not_checked_against_a_gemm():
    from suite.ops import OpKind

    @dataclasses.dataclass(frozen=True)
    class Unknown(OpKind):
        size: int
        kind = "unknown-kind"

    with pytest.raises(NotImplementedError, match="no float64 reference for op kind 'unknown-kind'"):
        reference(Unknown(3), {}, "forward")
