"""The numerical check catches a backend that gets the geometry wrong.

The smoke catalog holds a dilated, a grouped (not depthwise), an asymmetrically padded conv and a square GEMM with both
transposes (issue 10, item 9). A "backend" that drops one of those arguments is fed to the same comparison
(``suite.reference.compare``) that ``suite check`` and every run use: first framework-free (the float64 reference of
the corrupted op stands in for the backend), then with real PyTorch whose step is given the corrupted op.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from suite.catalog import load_catalog
from suite.ops import LAYER_PASSES, OUTPUTS, Conv2d, Gemm, Op
from suite.reference import compare, make_inputs, reference
from suite.variant import Variant

SMOKE = load_catalog().subset("smoke")


def smoke_op(where) -> Op:
    """The smoke case with this geometry; the test fails if the catalog stops having one."""
    found = [case.op for case in SMOKE if where(case.op)]
    assert found, "the smoke catalog lost the case this check depends on"
    return found[0]


def dilated() -> Conv2d:
    """Dilated along both axes by different rates, so a dilation applied to the wrong axis shows too."""
    return smoke_op(lambda op: op.kind == "conv2d" and min(op.dilation) > 1 and op.dilation[0] != op.dilation[1])


def without_dilation(op: Conv2d) -> Conv2d:
    """The op a backend runs when it drops the dilation, padded (like TF's SAME) to keep the output size, so only
    the values can tell."""
    pad_h, pad_w = (op.r - 1) // 2, (op.s - 1) // 2
    wrong = dataclasses.replace(op, dilation=(1, 1), padding=(pad_h, pad_h, pad_w, pad_w))
    assert wrong.out_shape == op.out_shape
    return wrong


def dilation_axes_swapped(op: Conv2d) -> Conv2d:
    top, bottom, left, right = op.padding
    wrong = dataclasses.replace(op, dilation=op.dilation[::-1], padding=(left, right, top, bottom))
    assert wrong.out_shape == op.out_shape
    return wrong


def grouped() -> Conv2d:
    return smoke_op(lambda op: op.kind == "conv2d" and 1 < op.groups < op.c)


def asymmetric() -> Conv2d:
    return smoke_op(lambda op: op.kind == "conv2d" and op.symmetric_padding is None)


def square_transposed() -> Gemm:
    return smoke_op(lambda op: op.kind == "gemm" and op.m == op.n == op.k and op.transpose_a and op.transpose_b)


def corruptions() -> list[tuple[str, Op, Op]]:
    """(what the backend got wrong, the catalog op, the op it ran instead); every pair keeps all tensor shapes."""
    conv, gemm = asymmetric(), square_transposed()
    top, bottom, left, right = conv.padding
    return [
        ("dropped dilation", dilated(), without_dilation(dilated())),
        ("dilation axes swapped", dilated(), dilation_axes_swapped(dilated())),
        ("padding sides swapped", conv, dataclasses.replace(conv, padding=(bottom, top, right, left))),
        ("transpose_a ignored", gemm, dataclasses.replace(gemm, transpose_a=False)),
        ("transpose_b ignored", gemm, dataclasses.replace(gemm, transpose_b=False)),
    ]


@pytest.mark.parametrize("pass_", LAYER_PASSES)
@pytest.mark.parametrize(("what", "op", "wrong"), corruptions(), ids=lambda v: v if isinstance(v, str) else "")
def test_check_fails_when_the_backend_runs_another_geometry(what, op, wrong, pass_):
    inputs = make_inputs(op)
    expected = reference(op, inputs, pass_)
    assert compare(expected, expected, "fp32", "strict")["status"] == "pass"
    result = compare(reference(wrong, inputs, pass_), expected, "fp32", "strict")
    assert result["status"] == "fail", (what, pass_, result)
    assert set(result["errors"]) == set(OUTPUTS[pass_])
    assert max(result["errors"].values()) > 0.1  # a gross error, far from rounding


@pytest.mark.parametrize("pass_", LAYER_PASSES)
def test_check_fails_when_groups_are_mixed_up(pass_):
    # A backend that ran the grouped conv's groups in the wrong order: the filter blocks of the groups swapped.
    op = grouped()
    inputs = make_inputs(op)
    expected = reference(op, inputs, pass_)
    kg = op.k // op.groups
    swapped = {**inputs, "w": np.roll(inputs["w"], kg, axis=0)}
    wrong = reference(op, swapped, pass_)
    if pass_ == "backward_weight":  # dW does not read w; a wrong dW is the roll of the right one
        wrong = {"dw": np.roll(expected["dw"], kg, axis=0)}
    assert compare(wrong, expected, "fp32", "strict")["status"] == "fail"


def test_a_wrong_dw_fails_the_backward_check():
    op = dilated()
    inputs = make_inputs(op)
    expected = reference(op, inputs, "backward")
    assert list(expected) == ["dx", "dw"]
    for name in ("dx", "dw"):  # each output alone: a checker that looks at one of them only lets the other through
        outputs = {**expected, name: expected[name] * (1 + 1e-3)}
        result = compare(outputs, expected, "fp32", "strict")
        assert result["status"] == "fail", name
        assert result["errors"][name] == pytest.approx(1e-3)
        other = "dw" if name == "dx" else "dx"
        assert result["errors"][other] == 0.0


def test_a_wrong_second_output_of_a_gemm_backward_fails():
    op = square_transposed()
    inputs = make_inputs(op)
    expected = reference(op, inputs, "backward")
    result = compare({"dx": expected["dx"], "dw": expected["dw"].T}, expected, "fp32", "strict")  # dW untransposed
    assert result["status"] == "fail" and result["errors"]["dx"] == 0.0 and result["errors"]["dw"] > 0.5


def test_tolerances_are_per_dtype_and_math():
    expected = {"y": np.ones((8, 8))}
    near = {"y": np.ones((8, 8)) * (1 + 1e-4)}  # 1e-4: above fp32's 2e-5, within TF32's and bf16's
    assert compare(near, expected, "fp32", "strict") == {"status": "fail", "errors": {"y": pytest.approx(1e-4)},
                                                          "tolerance": 2e-5}
    assert compare(near, expected, "fp32", "tf32")["status"] == "pass"
    assert compare(near, expected, "bf16", "strict")["status"] == "pass"
    at = {"y": np.ones((8, 8)) * (1 + 2e-5)}
    assert compare(at, expected, "fp32", "strict")["status"] == "pass"  # at the tolerance still passes


# ------------------------------------------------------------------------------------------------ real PyTorch
@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    from backends.torch_backend import TorchBackend

    class DropsDilation(TorchBackend):
        """PyTorch as a backend with the planted bug: its step never sees the dilation."""

        def step(self, op, variant, args):
            return super().step(without_dilation(op) if isinstance(op, Conv2d) else op, variant, args)

    return TorchBackend(), DropsDilation()


@pytest.mark.parametrize("pass_", LAYER_PASSES)
def test_torch_dropping_its_dilation_fails_the_check(torch_backend, pass_):
    honest, buggy = torch_backend
    op = dilated()
    inputs = make_inputs(op)
    expected = reference(op, inputs, pass_)
    good = compare(honest.prepare(op, Variant(pass_), inputs).outputs(), expected, "fp32", "strict")
    assert good["status"] == "pass", good
    bad = compare(buggy.prepare(op, Variant(pass_), inputs).outputs(), expected, "fp32", "strict")
    assert bad["status"] == "fail", bad
    assert max(bad["errors"].values()) > 0.1
