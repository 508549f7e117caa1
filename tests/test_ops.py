"""Op specs against hand-computed shapes, FLOPs and bytes."""

import pytest

from suite.ops import PASSES, Conv2d, Gemm, op_from_dict, op_to_dict


def test_gemm_flops_bytes_and_shapes():
    gemm = Gemm(m=3, n=5, k=7, transpose_a=True)
    assert gemm.a_shape == (7, 3) and gemm.b_shape == (7, 5) and gemm.out_shape == (3, 5)
    assert gemm.flops("forward") == 2 * 3 * 5 * 7 == 210
    assert gemm.flops("backward_data") == gemm.flops("backward_weight") == 210
    assert gemm.flops("backward") == 420
    # forward reads A (21) and B (35), writes C (15); fp16 = 2 bytes
    assert gemm.min_bytes("forward", 2) == 2 * (21 + 35 + 15)
    assert gemm.min_bytes("backward", 4) == 4 * (15 + 21 + 35 + 21 + 35)


def test_conv_resnet_stem():
    stem = Conv2d(n=1, c=3, h=224, w=224, k=64, r=7, s=7, stride=(2, 2), padding=(3, 3, 3, 3))
    assert (stem.p, stem.q) == (112, 112)
    assert stem.flops() == 2 * 64 * 112 * 112 * 3 * 7 * 7 == 236_027_904
    assert stem.equivalent_gemm() == Gemm(m=112 * 112, n=64, k=3 * 7 * 7)
    assert stem.equivalent_gemm().flops() == stem.flops()


def test_conv_stride_two_asymmetric_padding():
    # 15 rows padded 0 on top and 1 below, 3-tall filter, stride 2: floor((15 + 1 - 3) / 2) + 1 = 7
    # 10 columns padded 2 left and 0 right, 5-wide filter, stride 2: floor((10 + 2 - 5) / 2) + 1 = 4
    conv = Conv2d(n=2, c=4, h=15, w=10, k=6, r=3, s=5, stride=(2, 2), padding=(0, 1, 2, 0))
    assert (conv.p, conv.q) == (7, 4)
    assert conv.symmetric_padding is None
    assert conv.flops() == 2 * 2 * 6 * 7 * 4 * 4 * 3 * 5
    assert conv.flops("backward") == 2 * conv.flops("backward_weight")


def test_grouped_and_depthwise_conv():
    grouped = Conv2d(n=1, c=8, h=4, w=4, k=12, r=3, s=3, padding=(1, 1, 1, 1), groups=4)
    assert grouped.weight_shape == (12, 2, 3, 3)
    assert grouped.flops() == 2 * 1 * 12 * 4 * 4 * 2 * 3 * 3
    assert not grouped.depthwise
    depthwise = Conv2d(n=1, c=32, h=8, w=8, k=32, r=3, s=3, padding=(1, 1, 1, 1), groups=32)
    assert depthwise.depthwise and depthwise.flops() == 2 * 32 * 8 * 8 * 3 * 3
    assert depthwise.min_bytes("forward", 4) == 4 * (32 * 64 + 32 * 9 + 32 * 64)


def test_dilation():
    conv = Conv2d(n=1, c=1, h=10, w=10, k=1, r=3, s=3, dilation=(2, 2))
    assert (conv.p, conv.q) == (6, 6)  # effective filter 5×5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 9}, "does not fit"),
        ({"groups": 3}, "divisible by groups"),
        ({"stride": (0, 1)}, "stride"),
        ({"h": 0}, "h must be >= 1"),
        ({"padding": (-1, 0, 0, 0)}, "padding"),
        ({"dilation": (0, 1)}, "dilation must be two integers >= 1"),
        ({"dilation": (2,)}, "dilation must be two integers >= 1"),
        ({"groups": 2, "k": 5}, "divisible by groups"),  # channels divide, filters do not
    ],
)
def test_impossible_convs_are_rejected(kwargs, message):
    dims = {"n": 1, "c": 4, "h": 5, "w": 5, "k": 4, "r": 3, "s": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        Conv2d(**dims)


def test_unknown_pass_is_rejected():
    with pytest.raises(ValueError, match="unknown pass"):
        Gemm(1, 1, 1).flops("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pass"):  # a layer has no training step of its own
        Gemm(1, 1, 1).flops("step")
    assert PASSES == ("forward", "backward_data", "backward_weight", "backward", "step")


def test_round_trip_through_dict():
    conv = Conv2d(n=1, c=2, h=8, w=8, k=4, r=3, s=3, stride=(2, 1), padding=(1, 0, 1, 1), groups=2)
    assert op_from_dict(op_to_dict(conv)) == conv
    assert op_from_dict(op_to_dict(Gemm(2, 3, 4, transpose_b=True))) == Gemm(2, 3, 4, transpose_b=True)


def test_equivalent_gemm_of_a_grouped_conv():
    # 4 groups of C/g = 2 channels: M = N·P·Q = 2·4·4, N = K = 12, K = (C/g)·R·S = 2·3·3
    grouped = Conv2d(n=2, c=8, h=4, w=4, k=12, r=3, s=3, padding=(1, 1, 1, 1), groups=4)
    assert grouped.equivalent_gemm() == Gemm(m=32, n=12, k=18)
    assert grouped.equivalent_gemm().flops() == grouped.flops() == 2 * 32 * 12 * 18


def test_edge_shapes_and_descriptions():
    assert Conv2d(n=1, c=4, h=5, w=3, k=4, r=3, s=3).out_shape == (1, 4, 3, 1)  # a one-wide output is a valid conv
    with pytest.raises(ValueError, match="m must be >= 1, got 0"):
        Gemm(0, 1, 1)
    with pytest.raises(ValueError, match="k must be >= 1, got -2"):
        Gemm(1, 1, -2)
    assert Gemm(3, 5, 7).describe() == "3×5×7" and Gemm(3, 5, 7, True, True).describe() == "3×5×7 ᵀAᵀB"
    grouped = Conv2d(n=1, c=4, h=8, w=8, k=4, r=3, s=3, stride=(2, 2), groups=2)
    assert grouped.describe() == "N1 C4 8×8 → K4 3×3 /2 g2"
    assert Conv2d(n=1, c=4, h=8, w=8, k=4, r=3, s=3, groups=4).describe().endswith(" dw")
