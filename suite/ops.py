"""Framework-free op specs: shapes, FLOPs and minimum bytes of GEMM, batched GEMM, Conv2d, attention, recurrent
layers, sparse GEMM and all-reduce, per pass; the dtypes and which op and pass each one applies to.

FLOPs count the useful multiply-adds of the direct algorithm (2 per MAC), as DeepBench and CUTLASS do;
a Winograd or FFT kernel may do fewer and so appear to beat peak. Minimum bytes count every distinct tensor a
pass reads or writes once, which gives the arithmetic intensity of a roofline.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

Pass = Literal["forward", "backward_data", "backward_weight", "backward", "step"]
PASSES: tuple[Pass, ...] = get_args(Pass)
# The passes of a layer (GEMM, conv, RNN); "step" (forward, backward and the SGD update) belongs to a whole model
# (suite.models), and a pass an op lacks is never planned for it.
LAYER_PASSES: tuple[Pass, ...] = ("forward", "backward_data", "backward_weight", "backward")

# Which operands each pass differentiates with respect to, and the outputs it returns (what the check compares).
WRT: dict[str, tuple[str, ...]] = {"backward_data": ("x",), "backward_weight": ("w",), "backward": ("x", "w")}
OUTPUTS: dict[str, tuple[str, ...]] = {"forward": ("y",), "backward_data": ("dx",),
                                       "backward_weight": ("dw",), "backward": ("dx", "dw")}

# How a pass is named where an op's two operands are data x and weight w; a kind with other gradients names its
# own (``pass_labels``: attention's backward is dQ+dK+dV).
PASS_LABELS: dict[str, str] = {"forward": "forward", "backward_data": "dX", "backward_weight": "dW",
                               "backward": "dX+dW", "step": "training step"}

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
DTYPES = tuple(DTYPE_BYTES)
FLOAT_DTYPES = ("fp32", "fp16", "bf16")  # what `--dtype all` means: int8 is asked for by name
# int8: int8 × int8 products summed in int32 (DeepBench's inference minimum), forward only, on the kinds that set
# ``OpKind.int8``; its check against the integer reference is exact. opbench times the shape as given: it never
# pads a dimension to a kernel's multiple (DeepBench pads int8 GEMM's M and conv's C, H, W to multiples of 4); each
# int8 measurement records that as details["int8_padding"].
INT8_PADDING = "none"
INT8_FORWARD_ONLY = ("int8 is an inference dtype (int8 × int8 products summed in int32): it has no gradient, so "
                     "only the forward pass")


def _check_pass(pass_: str) -> None:
    """A layer's pass (a layer has no training step of its own)."""
    if pass_ not in LAYER_PASSES:
        raise ValueError(f"unknown pass {pass_!r} for a layer; expected one of {', '.join(LAYER_PASSES)}")


class InvalidDims(ValueError):
    """Dimensions that cannot form the op; ``field`` names the dimension at fault."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(problem)


class OpKind:
    """What every op kind declares once: its passes and their names, operands, outputs, and how the report names
    and draws it. A new kind subclasses this (a frozen dataclass of its dims, plus ``flops``, ``min_bytes``,
    ``operands``, ``out_shape``, ``input_elements`` and ``describe``) and registers with ``register_op``; its
    float64 reference goes in ``suite.reference``; nothing under ``reports/`` names a kind."""

    kind: ClassVar[str]
    passes: ClassVar[tuple[Pass, ...]] = LAYER_PASSES
    stateful: ClassVar[bool] = False  # a call changes state (a model's step trains): the check sees the first call
    inputs: ClassVar[tuple[str, ...]] = ("x", "w")  # the operands of the forward call, in call order
    pass_labels: ClassVar[dict[str, str]] = PASS_LABELS
    # variety -> (plural noun for sentences, matplotlib marker); the first is the kind itself
    varieties: ClassVar[dict[str, tuple[str, str]]] = {}
    main: ClassVar[bool] = False  # a kind of the seed questions (GEMM, conv); every other kind gets its own section
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # text dims (e.g. an RNN's cell): their allowed values
    no_pass_reason: ClassVar[str] = ""
    mutates_inputs: ClassVar[bool] = False  # a call may overwrite its inputs (an in-place all-reduce): the numerical
    #                                         check then runs on freshly placed inputs
    int8: ClassVar[bool] = False  # has an int8 form (int8 operands, int32 accumulation, int32 output)

    def refusal(self, pass_: str, dtype: str) -> str:
        """Why this op cannot run ``pass_`` in ``dtype`` by design (a pass it has not, int8 where it has none or for
        a backward pass); '' when it can. Such a record is "not applicable", never a gap."""
        if pass_ not in self.passes:
            return self.no_pass_reason or f"{self.kind} has no pass {pass_!r}"
        if dtype == "int8" and not self.int8:
            kinds = ", ".join(kind for kind, cls in OP_KINDS.items() if cls.int8)
            return f"{self.kind} has no int8 form in opbench: int8 (int8 × int8 → int32) is measured for {kinds}"
        if dtype == "int8" and pass_ != "forward":
            return INT8_FORWARD_ONLY
        return ""

    def dense(self) -> OpKind | None:
        """The dense op of the same shape that the report times this op against (a sparse GEMM's GEMM); None."""
        return None

    @property
    def variety(self) -> str:
        """The name the report groups this op under (a depthwise conv apart from dense convs); the kind by default."""
        return self.kind

    def layouts(self, offered: tuple[str, ...]) -> tuple[str, ...]:
        """Which of a backend's layouts for this kind give this op a distinct variant (all of them by default; a
        network without images has one)."""
        return offered

    def _check(self, pass_: str) -> None:
        """Refuse (ValueError) a pass that does not exist or that this kind has not, with the kind's reason."""
        if pass_ not in PASSES:
            raise ValueError(f"unknown pass {pass_!r}; expected one of {', '.join(PASSES)}")
        if pass_ not in self.passes:
            raise ValueError(self.no_pass_reason or f"{self.kind} has no pass {pass_!r}")

    def wrt(self, pass_: Pass) -> tuple[str, ...]:
        """The inputs a pass differentiates with respect to."""
        return WRT.get(pass_, ())

    def outputs(self, pass_: Pass) -> tuple[str, ...]:
        """What a pass returns, in order (what the numerical check compares)."""
        return OUTPUTS[pass_]

    @property
    def working_elements(self) -> int:
        """Elements a framework holds besides the operands and outputs while running every pass (the memory
        guard's estimate): none by default."""
        return 0


class _Operands(OpKind):
    """Operands and passes of an op with a data operand x and a weight w (GEMM, conv): all four passes."""



@dataclass(frozen=True)
class Gemm(_Operands):
    """C[M, N] = op(A) @ op(B), where op(A) is M×K and op(B) is K×N (transposed storage when the flag is set)."""

    m: int
    n: int
    k: int
    transpose_a: bool = False
    transpose_b: bool = False

    kind = "gemm"
    varieties = {"gemm": ("GEMMs", "o")}
    main = True
    int8 = True

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
    def operands(self) -> dict[str, tuple[int, ...]]:
        """Shape of every input tensor, dy included, by role."""
        return {"x": self.a_shape, "w": self.b_shape, "dy": self.out_shape}

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
class Conv2d(_Operands):
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
    varieties = {"conv2d": ("convs", "s"), "depthwise": ("depthwise convs", "D")}
    main = True
    int8 = True

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
    def variety(self) -> str:
        return "depthwise" if self.depthwise else self.kind

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
    def operands(self) -> dict[str, tuple[int, ...]]:
        return {"x": self.input_shape, "w": self.weight_shape, "dy": self.out_shape}

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


@dataclass(frozen=True)
class BatchedGemm(_Operands):
    """C[b] = op(A[b]) @ op(B[b]) for b < batch: ``batch`` independent M×N×K products (torch.bmm, tf.linalg.matmul
    and jnp.matmul on 3-D operands), A as batch×M×K (batch×K×M with transpose_a), B as batch×K×N (batch×N×K).

    FLOPs and bytes are ``batch`` times those of one product (2·M·N·K forward; backward = dA + dB).
    """

    batch: int
    m: int
    n: int
    k: int
    transpose_a: bool = False
    transpose_b: bool = False

    kind = "bgemm"
    varieties = {"bgemm": ("batched GEMMs", "P")}

    def __post_init__(self) -> None:
        for name in ("batch", "m", "n", "k"):
            if getattr(self, name) < 1:
                raise InvalidDims(name, f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def product(self) -> Gemm:
        """One of the ``batch`` products."""
        return Gemm(self.m, self.n, self.k, self.transpose_a, self.transpose_b)

    @property
    def operands(self) -> dict[str, tuple[int, ...]]:
        return {role: (self.batch, *shape) for role, shape in self.product.operands.items()}

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.m, self.n)

    @property
    def input_elements(self) -> int:
        return self.batch * self.m * self.k

    def flops(self, pass_: Pass = "forward") -> int:
        return self.batch * self.product.flops(pass_)

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        return self.batch * self.product.min_bytes(pass_, itemsize)

    def equivalent_gemm(self) -> Gemm:
        """One GEMM with the same FLOPs: the products stacked along M."""
        return Gemm(m=self.batch * self.m, n=self.n, k=self.k)

    def describe(self) -> str:
        return f"{self.batch}× {self.product.describe()}"


@dataclass(frozen=True)
class Attention(OpKind):
    """Scaled dot-product attention Y = softmax(Q·Kᵀ/√D [+ causal mask])·V over ``heads`` query heads.

    Q and dY are batch×heads×q_len×head_dim, K and V batch×kv_heads×kv_len×head_dim (logical layout); with
    grouped-query attention (kv_heads < heads) query head h reads KV head h // (heads / kv_heads). Causal attention
    masks key j > query i (top-left aligned) and is defined only for q_len == kv_len here.

    FLOPs count the two products' multiply-adds over the (query, key) pairs that are not masked: 4·B·H·pairs·D
    forward with pairs = Lq·Lk, or Lq·(Lq+1)/2 when causal (the exact useful work, slightly over half). The backward
    is the exact product count of dV = Pᵀ·dY, dP = dY·Vᵀ, dQ = dS·K, dK = dSᵀ·Q: 8·B·H·pairs·D (2× forward); a
    kernel that recomputes Q·Kᵀ in its backward (FlashAttention: 2.5×) does that work on top. Softmax, scaling and
    masking are not counted. Passes: forward, and backward (dQ, dK, dV together); attention has no weight, so
    backward_data/backward_weight do not apply.
    """

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    kv_heads: int | None = None  # None: as many as query heads (multi-head attention)
    causal: bool = False

    kind = "attention"
    varieties = {"attention": ("attention", "^")}
    passes: ClassVar[tuple[Pass, ...]] = ("forward", "backward")
    inputs: ClassVar[tuple[str, ...]] = ("q", "k", "v")
    pass_labels = {"forward": "forward", "backward": "dQ+dK+dV"}
    no_pass_reason: ClassVar[str] = ("attention has no weight operand: its backward computes dQ, dK and dV together "
                                     "(pass 'backward'); backward_data/backward_weight do not apply")

    def __post_init__(self) -> None:
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        for name in ("batch", "heads", "q_len", "kv_len", "head_dim", "kv_heads"):
            if getattr(self, name) < 1:
                raise InvalidDims(name, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heads % self.kv_heads:
            raise InvalidDims("kv_heads", f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads} "
                                          "(each KV head serves a group of query heads)")
        if self.causal and self.q_len != self.kv_len:
            raise InvalidDims("causal", f"causal attention needs q_len == kv_len (got {self.q_len} and {self.kv_len}): "
                                        "frameworks align a rectangular causal mask differently")

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads  # type: ignore[operator]

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    @property
    def operands(self) -> dict[str, tuple[int, ...]]:
        q = (self.batch, self.heads, self.q_len, self.head_dim)
        kv = (self.batch, self.kv_heads, self.kv_len, self.head_dim)
        return {"q": q, "k": kv, "v": kv, "dy": q}

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.q_len, self.head_dim)

    @property
    def input_elements(self) -> int:
        return self.batch * self.heads * self.q_len * self.head_dim

    @property
    def pairs(self) -> int:
        """Unmasked (query, key) pairs per batch and head."""
        return self.q_len * (self.q_len + 1) // 2 if self.causal else self.q_len * self.kv_len

    @property
    def score_elements(self) -> int:
        """Elements of the B·H·Lq·Lk score matrix that an unfused implementation materializes."""
        return self.batch * self.heads * self.q_len * self.kv_len

    @property
    def working_elements(self) -> int:
        """An unfused (math) kernel holds the scores and probabilities, and their gradients."""
        return 2 * self.score_elements

    def wrt(self, pass_: Pass) -> tuple[str, ...]:
        return self.inputs if pass_ == "backward" else ()

    def outputs(self, pass_: Pass) -> tuple[str, ...]:
        self._check(pass_)
        return ("dq", "dk", "dv") if pass_ == "backward" else ("y",)

    def flops(self, pass_: Pass = "forward") -> int:
        self._check(pass_)
        forward = 4 * self.batch * self.heads * self.pairs * self.head_dim
        return 2 * forward if pass_ == "backward" else forward

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        """Forward reads Q, K, V and writes Y; backward reads Q, K, V, dY and writes dQ, dK, dV."""
        self._check(pass_)
        q = self.input_elements
        kv = 2 * self.batch * self.kv_heads * self.kv_len * self.head_dim  # type: ignore[operator]
        return itemsize * (q + kv + q if pass_ == "forward" else 2 * (q + kv) + q)

    def describe(self) -> str:
        heads = f"H{self.heads}" + (f"/KV{self.kv_heads}" if self.kv_heads != self.heads else "")
        return f"B{self.batch} {heads} {self.q_len}×{self.kv_len} d{self.head_dim}" + (" causal" if self.causal else "")


# Recurrent cells: their gate count (GEMM rows per hidden unit). rnn_relu is DeepBench's "vanilla" (cuDNN
# CUDNN_RNN_RELU in its rnn_bench), rnn_tanh the common Elman RNN.
RNN_GATES = {"rnn_relu": 1, "rnn_tanh": 1, "lstm": 4, "gru": 3}


@dataclass(frozen=True)
class Rnn(OpKind):
    """One unidirectional recurrent layer with biases, run over ``timesteps`` steps from a zero state.

    x is batch×timesteps×input_size, y (every step's hidden state, the output a next layer reads) and dy are
    batch×timesteps×hidden; the weights w_ih (G·hidden × input_size) and w_hh (G·hidden × hidden) and the biases b_ih
    and b_hh (G·hidden each) are stored as torch stores them, gates in torch's order (LSTM i, f, g, o; GRU r, z, n
    with r applied to W_hn·h + b_hn, cuDNN's and Keras' reset_after form).

    Biases, as the frameworks' layers have them by default: Keras runs LSTM and GRU on cuDNN only with a bias, so a
    bias-free layer would pit its generic loop against torch's cuDNN. torch takes b_ih and b_hh; Keras' LSTM and
    SimpleRNN have one bias and are given b_ih + b_hh (the same layer), its GRU both rows. Biases are inputs that no
    pass differentiates (no bias gradient is returned; cuDNN's weight gradient computes one anyway, a sum over batch
    and steps), and the FLOP count leaves them out: a bias add is elementwise, like the gate maths.

    FLOPs count the GEMMs, 2 per multiply-add; elementwise gate maths and bias adds are not counted. Per step the
    input projection x_t·W_ihᵀ is 2·G·H·I·B and the recurrence h_{t-1}·W_hhᵀ 2·G·H·H·B, so forward = 2·G·H·(I+H)·B·T
    (T steps counted, the first one's zero state included). DeepBench's own figure counts only the recurrence,
    2·G·H²·B·T: it ran cuDNN with CUDNN_SKIP_INPUT and its README leaves the input projection out of a recurrent
    layer's time (one large GEMM for all steps; its published RNN TFLOPS fit only this count). The frameworks'
    standard layers always compute the projection, so it is counted here: twice DeepBench's figure on its shapes
    (I = H). Backward: the chain dh_{t-1} = dgates_t·W_hh (2·G·H²·B per step) is needed for either gradient; dx adds
    dgates·W_ih (2·G·H·I·B·T), dW adds dgatesᵀ·x and dgatesᵀ·h (2·G·H·(I+H)·B·T). So backward_data = forward,
    backward_weight = forward + 2·G·H²·B·T and backward (both) = 2× forward.
    """

    cell: str
    hidden: int
    batch: int
    timesteps: int
    input_size: int | None = None  # None: the hidden size, as in DeepBench (its x has hidden features)

    kind = "rnn"
    varieties = {"rnn": ("recurrent layers", "v")}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"cell": tuple(RNN_GATES)}  # text dims: their allowed values
    inputs: ClassVar[tuple[str, ...]] = ("x", "w_ih", "w_hh", "b_ih", "b_hh")

    def __post_init__(self) -> None:
        if self.input_size is None:
            object.__setattr__(self, "input_size", self.hidden)
        if self.cell not in RNN_GATES:
            raise InvalidDims("cell", f"unknown cell {self.cell!r}; expected one of {', '.join(RNN_GATES)}")
        for name in ("hidden", "batch", "timesteps", "input_size"):
            if getattr(self, name) < 1:
                raise InvalidDims(name, f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def gates(self) -> int:
        return RNN_GATES[self.cell]

    @property
    def working_elements(self) -> int:
        """The forward keeps every step's gate activations for the backward, its gradient as many."""
        return 2 * self.gates * self.batch * self.timesteps * self.hidden

    @property
    def operands(self) -> dict[str, tuple[int, ...]]:
        rows = self.gates * self.hidden
        return {"x": (self.batch, self.timesteps, self.input_size), "w_ih": (rows, self.input_size),
                "w_hh": (rows, self.hidden), "b_ih": (rows,), "b_hh": (rows,), "dy": self.out_shape}

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.timesteps, self.hidden)

    @property
    def input_elements(self) -> int:
        return self.batch * self.timesteps * self.input_size  # type: ignore[operator]

    def wrt(self, pass_: Pass) -> tuple[str, ...]:
        return {"backward_data": ("x",), "backward_weight": ("w_ih", "w_hh"),
                "backward": ("x", "w_ih", "w_hh")}.get(pass_, ())

    def outputs(self, pass_: Pass) -> tuple[str, ...]:
        _check_pass(pass_)
        return tuple(f"d{name}" for name in self.wrt(pass_)) or ("y",)

    def flops(self, pass_: Pass = "forward") -> int:
        _check_pass(pass_)
        per_unit = 2 * self.gates * self.hidden * self.batch * self.timesteps  # one multiply-add per weight and row
        forward = per_unit * (self.input_size + self.hidden)  # type: ignore[operator]
        return {"forward": forward, "backward_data": forward, "backward_weight": forward + per_unit * self.hidden,
                "backward": 2 * forward}[pass_]

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        """x, the weights and y once each per pass, and the biases in the forward; a backward also reads dy and the
        forward's states y (the gate activations a framework saves for its backward are not counted)."""
        _check_pass(pass_)
        x, y = self.input_elements, self.batch * self.timesteps * self.hidden
        w_ih, w_hh, b = (math.prod(self.operands[name]) for name in ("w_ih", "w_hh", "b_ih"))
        touched = {
            "forward": x + w_ih + w_hh + 2 * b + y,  # read x, W, b; write y
            "backward_data": 2 * y + w_ih + w_hh + x,  # read dy, y, W; write dx
            "backward_weight": 2 * y + x + w_hh + w_ih + w_hh,  # read dy, y, x, W_hh; write dW
            "backward": 2 * y + x + w_ih + w_hh + x + w_ih + w_hh,  # read dy, y, x, W; write dx, dW
        }[pass_]
        return itemsize * touched

    def describe(self) -> str:
        size = f"H{self.hidden}" + (f" I{self.input_size}" if self.input_size != self.hidden else "")
        return f"{self.cell} {size} B{self.batch} T{self.timesteps}"


class _ForwardOnly(OpKind):
    """A kind measured forward only (inference, a collective): one output y."""

    passes: ClassVar[tuple[Pass, ...]] = ("forward",)

    def outputs(self, pass_: Pass) -> tuple[str, ...]:
        self._check(pass_)
        return ("y",)


@dataclass(frozen=True)
class Spmm(_ForwardOnly):
    """Sparse × dense GEMM, Y[M, N] = A[M, K] · B[K, N], for inference (forward only), as DeepBench's sparse set
    has it: A is the sparse weight matrix, B the dense activations (N is the batch); no transposes (DeepBench's rows
    have none). ``sparsity`` is the fraction of A's entries that are zero, in (0, 1): exactly ``nnz`` =
    round((1 - sparsity)·M·K) entries are nonzero, at positions drawn uniformly without replacement from the seed
    and (M, K, sparsity) alone (``suite.reference.sparse_pattern``; each measurement records the seed, nnz and a
    digest of the positions), so every N of one weight matrix sees the same pattern.

    Operands as for GEMM: ``x`` is A (dense, its zeros in place; each backend builds its sparse format from it
    before timing), ``w`` is B. FLOPs are the useful work, 2·nnz·N (a dense GEMM of the shape does 2·M·N·K);
    minimum bytes read A's values with one 4-byte index each, B, and write Y. The report times each case against
    its ``dense()`` GEMM measured in the same run.
    """

    m: int
    n: int
    k: int
    sparsity: float

    kind = "spmm"
    varieties = {"spmm": ("sparse GEMMs", "X")}
    pass_labels = {"forward": "forward"}
    no_pass_reason: ClassVar[str] = ("sparse GEMM is measured for inference, as DeepBench's sparse set is: forward "
                                     "only")

    def __post_init__(self) -> None:
        for name in ("m", "n", "k"):
            if getattr(self, name) < 1:
                raise InvalidDims(name, f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.sparsity, bool) or not 0 < self.sparsity < 1:
            raise InvalidDims("sparsity", f"sparsity must lie strictly between 0 and 1 (the fraction of A's entries "
                                          f"that are zero), got {self.sparsity!r}")
        if self.nnz < 1:
            raise InvalidDims("sparsity", f"sparsity {self.sparsity} leaves no nonzero entry in a {self.m}×{self.k} "
                                          "matrix")

    @property
    def nnz(self) -> int:
        """Nonzero entries of A."""
        return round((1 - self.sparsity) * self.m * self.k)

    def dense(self) -> Gemm:
        return Gemm(self.m, self.n, self.k)

    @property
    def operands(self) -> dict[str, tuple[int, ...]]:
        return {"x": (self.m, self.k), "w": (self.k, self.n)}

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.m, self.n)

    @property
    def input_elements(self) -> int:
        return self.m * self.k

    def flops(self, pass_: Pass = "forward") -> int:
        self._check(pass_)
        return 2 * self.nnz * self.n

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        self._check(pass_)
        return itemsize * (self.nnz + self.k * self.n + self.m * self.n) + 4 * self.nnz

    def describe(self) -> str:
        return f"{self.m}×{self.n}×{self.k} {100 * self.sparsity:g}% sparse"


@dataclass(frozen=True)
class AllReduce(_ForwardOnly):
    """Sum of a buffer of ``elements`` values across ``ranks`` ranks (one process, or one device, each); every rank
    ends with the sum, in place where the framework allows (torch.distributed), otherwise in a new buffer.

    Rates as nccl-tests define them (its doc/PERFORMANCE.md): the message is S = elements × dtype bytes
    (``min_bytes``), the algorithm bandwidth algbw = S / t, and the bus bandwidth busbw = algbw · 2(R−1)/R
    (``bus_factor``): a ring all-reduce sends and receives 2(R−1)/R · S per rank, so busbw is comparable with the
    link's (or memory copy's) bandwidth whatever R. t is the slowest rank's time per call. FLOPs count the (R−1)
    additions per element that make the sum. Forward only: an all-reduce has no gradient pass of its own.

    ``ranks`` is set by the run (``run --ranks R``, ``with_ranks``); catalog entries give only ``elements``.
    """

    elements: int
    ranks: int = 2

    kind = "allreduce"
    varieties = {"allreduce": ("all-reduces", "X")}
    inputs: ClassVar[tuple[str, ...]] = ("x",)
    pass_labels = {"forward": "all-reduce"}
    no_pass_reason: ClassVar[str] = "an all-reduce has only its forward pass (the sum across ranks)"
    mutates_inputs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("elements", "ranks"):
            if getattr(self, name) < 1:
                raise InvalidDims(name, f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def operands(self) -> dict[str, tuple[int, ...]]:
        return {"x": (self.elements,)}

    @property
    def out_shape(self) -> tuple[int]:
        return (self.elements,)

    @property
    def input_elements(self) -> int:
        return self.elements

    @property
    def bus_factor(self) -> float:
        """busbw / algbw = 2(R−1)/R (nccl-tests' all-reduce factor; 0 for one rank, which moves nothing)."""
        return 2 * (self.ranks - 1) / self.ranks

    def flops(self, pass_: Pass = "forward") -> int:
        self._check(pass_)
        return (self.ranks - 1) * self.elements

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        """nccl-tests' message size S = elements × itemsize: what algbw divides by the time."""
        self._check(pass_)
        return self.elements * itemsize

    def describe(self) -> str:
        return f"{self.elements:,} elements × {self.ranks} ranks"


def with_ranks(op: OpKind, ranks: int) -> OpKind:
    """The op run across ``ranks`` ranks (an all-reduce); any other kind unchanged."""
    return dataclasses.replace(op, ranks=ranks) if isinstance(op, AllReduce) else op


Op = OpKind  # every op is an OpKind; the kinds are registered in OP_KINDS
OP_KINDS: dict[str, type[OpKind]] = {}


def register_op(cls: type[OpKind]) -> type[OpKind]:
    """Make an op kind known to the catalog, the results reader and the report (a plugin's or a test's kind too)."""
    OP_KINDS[cls.kind] = cls
    return cls


for _cls in (Gemm, Conv2d, BatchedGemm, Attention, Rnn, Spmm, AllReduce):
    register_op(_cls)


def varieties() -> dict[str, tuple[str, str]]:
    """variety -> (plural noun, marker) over every registered kind, in registration order."""
    return {name: facts for cls in OP_KINDS.values()
            for name, facts in (cls.varieties or {cls.kind: (cls.kind, "o")}).items()}


def pass_label(kind: str, pass_: str) -> str:
    """A pass's name for an op kind (attention's backward is dQ+dK+dV); the generic name for an unknown kind."""
    cls = OP_KINDS.get(kind)
    labels = cls.pass_labels if cls is not None else PASS_LABELS
    return labels.get(pass_, PASS_LABELS.get(pass_, pass_))


def op_to_dict(op: Op) -> dict:
    """A JSON-ready description: ``{"kind": ..., **dims}``."""
    return {"kind": op.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(op).items()}}


def op_from_dict(data: dict) -> Op:
    dims = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
    return OP_KINDS[data["kind"]](**dims)


from suite import models as _models  # noqa: E402, F401  (registers the whole-model kind; it builds on the kinds above)
