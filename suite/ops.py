"""Framework-free op specs: shapes, FLOPs and minimum bytes of GEMM and Conv2d, per pass.

FLOPs count the useful multiply-adds of the direct algorithm (2 per MAC), as DeepBench and CUTLASS do;
a Winograd or FFT kernel may do fewer and so appear to beat peak. Minimum bytes count every distinct tensor a
pass reads or writes once, which gives the arithmetic intensity of a roofline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Pass = Literal["forward", "backward_data", "backward_weight", "backward"]
PASSES: tuple[Pass, ...] = get_args(Pass)

# Which operands each pass differentiates with respect to, and the outputs it returns (what the check compares).
WRT: dict[str, tuple[str, ...]] = {"backward_data": ("x",), "backward_weight": ("w",), "backward": ("x", "w")}
OUTPUTS: dict[str, tuple[str, ...]] = {"forward": ("y",), "backward_data": ("dx",),
                                       "backward_weight": ("dw",), "backward": ("dx", "dw")}

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
DTYPES = tuple(DTYPE_BYTES)


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {', '.join(PASSES)}")


@dataclass(frozen=True)
class Gemm:
    """C[M, N] = op(A) @ op(B), where op(A) is M×K and op(B) is K×N (transposed storage when the flag is set)."""

    m: int
    n: int
    k: int
    transpose_a: bool = False
    transpose_b: bool = False

    kind = "gemm"

    def __post_init__(self) -> None:
        for name in ("m", "n", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.k, self.m) if self.transpose_a else (self.m, self.k)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (self.n, self.k) if self.transpose_b else (self.k, self.n)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.m, self.n)

    @property
    def input_elements(self) -> int:
        """Elements of the data operand A, the 'input size' a dense layer is compared on."""
        return self.m * self.k

    def flops(self, pass_: Pass = "forward") -> int:
        _check_pass(pass_)
        one = 2 * self.m * self.n * self.k
        return 2 * one if pass_ == "backward" else one

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        _check_pass(pass_)
        a, b, c = self.m * self.k, self.k * self.n, self.m * self.n
        touched = {
            "forward": a + b + c,  # read A, B; write C
            "backward_data": c + b + a,  # read dC, B; write dA
            "backward_weight": a + c + b,  # read A, dC; write dB
            "backward": c + a + b + a + b,  # read dC, A, B; write dA, dB
        }[pass_]
        return itemsize * touched

    def equivalent_gemm(self) -> Gemm:
        return self

    def describe(self) -> str:
        flags = "".join(f for f, on in (("ᵀA", self.transpose_a), ("ᵀB", self.transpose_b)) if on)
        return f"{self.m}×{self.n}×{self.k}" + (f" {flags}" if flags else "")


@dataclass(frozen=True)
class Conv2d:
    """2-D cross-correlation of input N×C×H×W with K filters of (C/groups)×R×S (R = height, S = width).

    ``padding`` is (top, bottom, left, right); ``stride`` and ``dilation`` are (height, width).
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    kind = "conv2d"

    def __post_init__(self) -> None:
        for name in ("n", "c", "h", "w", "k", "r", "s", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.stride) != 2 or min(self.stride) < 1:
            raise ValueError(f"stride must be two integers >= 1, got {self.stride}")
        if len(self.dilation) != 2 or min(self.dilation) < 1:
            raise ValueError(f"dilation must be two integers >= 1, got {self.dilation}")
        if len(self.padding) != 4 or min(self.padding) < 0:
            raise ValueError(f"padding must be four integers >= 0 (top, bottom, left, right), got {self.padding}")
        if self.c % self.groups or self.k % self.groups:
            raise ValueError(f"channels c={self.c} and filters k={self.k} must be divisible by groups={self.groups}")
        if self.p < 1 or self.q < 1:
            raise ValueError(
                f"the {self.r}×{self.s} filter (dilation {self.dilation}) does not fit the padded "
                f"{self.h}×{self.w} input (padding {self.padding}): output would be {self.p}×{self.q}"
            )

    @property
    def p(self) -> int:
        """Output height."""
        top, bottom, _, _ = self.padding
        return (self.h + top + bottom - self.dilation[0] * (self.r - 1) - 1) // self.stride[0] + 1

    @property
    def q(self) -> int:
        """Output width."""
        _, _, left, right = self.padding
        return (self.w + left + right - self.dilation[1] * (self.s - 1) - 1) // self.stride[1] + 1

    @property
    def symmetric_padding(self) -> tuple[int, int] | None:
        """(pad_h, pad_w) when top == bottom and left == right, else None."""
        top, bottom, left, right = self.padding
        return (top, left) if top == bottom and left == right else None

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.s)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.p, self.q)

    @property
    def input_elements(self) -> int:
        return self.n * self.c * self.h * self.w

    def flops(self, pass_: Pass = "forward") -> int:
        _check_pass(pass_)
        one = 2 * self.n * self.k * self.p * self.q * (self.c // self.groups) * self.r * self.s
        return 2 * one if pass_ == "backward" else one

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        _check_pass(pass_)
        x = self.n * self.c * self.h * self.w
        wt = self.k * (self.c // self.groups) * self.r * self.s
        y = self.n * self.k * self.p * self.q
        touched = {
            "forward": x + wt + y,
            "backward_data": y + wt + x,
            "backward_weight": y + x + wt,
            "backward": y + x + wt + x + wt,
        }[pass_]
        return itemsize * touched

    def equivalent_gemm(self) -> Gemm:
        """The im2col GEMM with the same FLOPs per group: M = N·P·Q, N = K/groups·groups, K = (C/g)·R·S.

        For grouped convs the FLOPs equal ``groups`` GEMMs of N·P·Q × K/g × (C/g)·R·S; returned as one GEMM with
        N = K so that 2·M·N·K still equals the conv's FLOPs.
        """
        return Gemm(m=self.n * self.p * self.q, n=self.k, k=(self.c // self.groups) * self.r * self.s)

    def describe(self) -> str:
        text = f"N{self.n} C{self.c} {self.h}×{self.w} → K{self.k} {self.r}×{self.s}"
        if self.stride != (1, 1):
            text += f" /{self.stride[0]}" if self.stride[0] == self.stride[1] else f" /{self.stride}"
        if self.groups > 1:
            text += " dw" if self.depthwise else f" g{self.groups}"
        return text


Op = Gemm | Conv2d
OP_KINDS: dict[str, type[Gemm] | type[Conv2d]] = {"gemm": Gemm, "conv2d": Conv2d}


def op_to_dict(op: Op) -> dict:
    """A JSON-ready description: ``{"kind": ..., **dims}``."""
    return {"kind": op.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(op).items()}}


def op_from_dict(data: dict) -> Op:
    dims = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
    return OP_KINDS[data["kind"]](**dims)
