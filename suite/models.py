"""Whole networks as one op kind: ResNet-50 v1.5 and BERT-base, defined once, framework-free.

A ``Model`` case times a whole network's inference (``forward``, eval mode: batch norm on its running statistics),
forward + loss + backward (``backward``: the gradients) and the training step (``step``: backward, then plain SGD
``w -= LEARNING_RATE * g`` of every parameter). This module holds the one definition every framework builds from:
the canonical parameter names and logical shapes (torchvision's and Hugging Face's names and layouts: conv weights
OIHW, dense weights (out, in) with y = x·Wᵀ + b), the parameter groups whose norms the check compares, the seeded
initial weights and synthetic batch, and the FLOPs. Each backend builds the network from its framework's own
building blocks and converts the canonical arrays into its layouts.

Exact semantics (what every framework and the float64 reference compute):

- ResNet-50 v1.5: stem conv 7×7/2 pad 3 → BN → ReLU → max pool 3×3/2 pad 1; stages of [3, 4, 6, 3] bottlenecks of
  widths [64, 128, 256, 512], expansion 4: conv1 1×1 → BN → ReLU → conv2 3×3 stride s pad 1 → BN → ReLU → conv3 1×1
  → BN; shortcut identity, or on each stage's first block downsample = 1×1 conv stride s → BN (s = 1 in layer1, 2
  in the first block of layers 2-4); out = ReLU(main + shortcut). Global average pool → fc (2048 → 1000) → logits.
  No conv bias; BN eps 1e-5; training mode normalizes with the batch mean and the biased batch variance over
  (N, H, W), eval mode with running_mean / running_var (running-statistics updates in training are allowed, not
  checked). 25,557,032 trainable parameters.
- BERT-base: hidden 768, 12 post-LN layers, 12 heads of 64, FFN 3072, vocabulary 30522, 512 positions, 2 token
  types, LayerNorm eps 1e-12, exact (erf) GELU, no dropout, no attention mask. 109,482,240 parameters of
  BertModel with its pooler + 1,538 of the 2-way classifier = 109,483,778 (every trainable array of
  BertForSequenceClassification; no MLM head).
- Loss: mean softmax cross-entropy over the batch. grad_norms / update_norms: the L2 norm per parameter group
  (``groups``, in order) of the gradients, or of w_after - w_before.

What the check sees: a step call changes the weights, so the numerical check compares the outputs of the FIRST call
of a freshly prepared model (``stateful``: ``backends.base.Backend.prepare`` keeps the first call's outputs for the
check, after timing it); every timed call after it trains on. The check runs on ``suite.reference.reduced(op)``
(batch 2, 64×64 images or 32 tokens) against ``suite.reference.expected`` (float64 NumPy).

Tolerance (fp32, relative error per output against the float64 reference; ``TOLERANCE``, with what was measured):
ResNet-50 logits and loss 1e-4, grad_norms and update_norms 1e-2 (53 batch norms' backward at the check's small
batch accumulates rounding, measured at batch 2 × 64²: torch 1.4e-3, JAX 1.4e-3, TensorFlow's CPU kernels 4.3e-3,
TF XLA 5e-4; the Keras model in float64 matches the reference to 5e-10, so it is float32 rounding, not definition);
BERT-base 1e-4 for every output (measured under 1e-6). fp16/bf16 (and TF32) take the dtype's
tolerance of ``suite.reference.TOLERANCE``, ResNet-50's loss and norms more (``REDUCED_TOLERANCE``: 5e-2, 1e-1;
bf16 measured 1.8e-2 and 3.7e-2).

FLOPs (``flops``): the sum of the network's GEMM/conv/attention FLOPs, the catalog layer set's convention (forward:
every layer's forward; backward and step: forward + dX of every layer but the first (ResNet's stem) + dW of every
layer, a weightless attention's dQ/dK/dV as its backward); the SGD update, batch/layer norm, activations, pooling,
softmax, the loss and BERT's embedding lookups are not counted. BERT counts the pooler and the classifier (two small
GEMMs the catalog's layer set leaves out: 0.003% of the forward at 8 × 128).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from suite.ops import Attention, Conv2d, Gemm, InvalidDims, OpKind, Pass, register_op

LEARNING_RATE = 0.01
NETWORKS = ("resnet50", "bert_base")
DEFAULT_SIZE = {"resnet50": 224, "bert_base": 128}  # image side; sequence length

# ResNet-50 v1.5
RESNET_STAGES = (3, 4, 6, 3)
RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_EXPANSION = 4
RESNET_STEM = 64
RESNET_CLASSES = 1000
RESNET_CHANNELS = 3
BN_EPS = 1e-5

# BERT-base
BERT_HIDDEN = 768
BERT_LAYERS = 12
BERT_HEADS = 12
BERT_HEAD_DIM = BERT_HIDDEN // BERT_HEADS
BERT_FFN = 3072
BERT_VOCAB = 30522
BERT_POSITIONS = 512
BERT_TYPES = 2
BERT_LABELS = 2
LN_EPS = 1e-12
BERT_GROUPS = ((0, 4), (4, 8), (8, 12))  # encoder layers per group: thirds

PARAMETER_COUNT = {"resnet50": 25_557_032, "bert_base": 109_483_778}


def _stage_blocks() -> list[tuple[int, int, int, int, int]]:
    """(stage 1..4, block j, input channels, width, stride) of every bottleneck, in order."""
    blocks, channels = [], RESNET_STEM
    for stage, (count, width) in enumerate(zip(RESNET_STAGES, RESNET_WIDTHS, strict=True), start=1):
        for j in range(count):
            stride = 2 if stage > 1 and j == 0 else 1
            blocks.append((stage, j, channels, width, stride))
            channels = width * RESNET_EXPANSION
    return blocks


def _bn(name: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (channels,), f"{name}.bias": (channels,)}


def _resnet_parameters() -> dict[str, tuple[int, ...]]:
    params: dict[str, tuple[int, ...]] = {"conv1.weight": (RESNET_STEM, RESNET_CHANNELS, 7, 7),
                                          **_bn("bn1", RESNET_STEM)}
    for stage, j, cin, width, _ in _stage_blocks():
        pre, out = f"layer{stage}.{j}", width * RESNET_EXPANSION
        params[f"{pre}.conv1.weight"] = (width, cin, 1, 1)
        params.update(_bn(f"{pre}.bn1", width))
        params[f"{pre}.conv2.weight"] = (width, width, 3, 3)
        params.update(_bn(f"{pre}.bn2", width))
        params[f"{pre}.conv3.weight"] = (out, width, 1, 1)
        params.update(_bn(f"{pre}.bn3", out))
        if j == 0:
            params[f"{pre}.downsample.0.weight"] = (out, cin, 1, 1)
            params.update(_bn(f"{pre}.downsample.1", out))
    final = RESNET_WIDTHS[-1] * RESNET_EXPANSION
    params["fc.weight"] = (RESNET_CLASSES, final)
    params["fc.bias"] = (RESNET_CLASSES,)
    return params


def _dense(name: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def _ln(name: str) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (BERT_HIDDEN,), f"{name}.bias": (BERT_HIDDEN,)}


def _bert_parameters() -> dict[str, tuple[int, ...]]:
    h = BERT_HIDDEN
    params: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (BERT_VOCAB, h),
        "embeddings.position_embeddings.weight": (BERT_POSITIONS, h),
        "embeddings.token_type_embeddings.weight": (BERT_TYPES, h),
        **_ln("embeddings.LayerNorm"),
    }
    for i in range(BERT_LAYERS):
        pre = f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            params.update(_dense(f"{pre}.attention.self.{proj}", h, h))
        params.update(_dense(f"{pre}.attention.output.dense", h, h))
        params.update(_ln(f"{pre}.attention.output.LayerNorm"))
        params.update(_dense(f"{pre}.intermediate.dense", BERT_FFN, h))
        params.update(_dense(f"{pre}.output.dense", h, BERT_FFN))
        params.update(_ln(f"{pre}.output.LayerNorm"))
    params.update(_dense("pooler.dense", h, h))
    params.update(_dense("classifier", BERT_LABELS, h))
    return params


_PARAMETERS = {"resnet50": _resnet_parameters(), "bert_base": _bert_parameters()}


@dataclass(frozen=True)
class Model(OpKind):
    """A whole network's inference, forward+backward or training step on one synthetic batch (module docstring).

    ``size`` is the image side (ResNet-50, default 224) or the sequence length (BERT-base, default 128).
    """

    network: str
    batch: int
    size: int | None = None

    kind = "model"
    varieties = {"model": ("whole models", "*")}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"network": NETWORKS}
    passes: ClassVar[tuple[Pass, ...]] = ("forward", "backward", "step")
    pass_labels = {"forward": "inference", "backward": "forward+backward", "step": "training step"}
    no_pass_reason: ClassVar[str] = ("a whole model has the passes forward (inference), backward (forward+backward) "
                                     "and step (training step); dX/dW alone do not apply")
    stateful: ClassVar[bool] = True  # a step call updates the weights: the check sees the first call (docstring)
    # Relative error allowed per network and output in fp32 (module docstring), about twice the largest seen.
    # Measured (torch 2.13 CPU, eager, NCHW and channels_last, at the checked size, against a float64 run of the same
    # module and batch): ResNet-50 logits 4.6e-7, loss 1.7e-6, grad/update norms up to 1.4e-3 (per group; the same at
    # 64² to 128² and batch 2 to 4: 53 batch norms whose backward subtracts means, gradients growing 20× from fc to
    # stem); BERT-base logits 8.6e-7, loss 2.2e-7, grad/update norms 1.9e-7 (BERT's values given 1e-4, ResNet's
    # logits and loss too: other frameworks' fused kernels round differently).
    TOLERANCE: ClassVar[dict[str, dict[str, float]]] = {
        "resnet50": {"logits": 1e-4, "loss": 1e-4, "grad_norms": 1e-2, "update_norms": 1e-2},
        "bert_base": {"logits": 1e-4, "loss": 1e-4, "grad_norms": 1e-4, "update_norms": 1e-4},
    }

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise InvalidDims("network", f"unknown network {self.network!r}; expected one of {', '.join(NETWORKS)}")
        if self.size is None:
            object.__setattr__(self, "size", DEFAULT_SIZE[self.network])
        for name in ("batch", "size"):
            if getattr(self, name) < 1:
                raise InvalidDims(name, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.network == "bert_base" and self.size > BERT_POSITIONS:  # type: ignore[operator]
            raise InvalidDims("size", f"BERT-base has {BERT_POSITIONS} positions; sequence length {self.size} "
                                      "is longer")
        if self.network == "resnet50" and self.size < 32:  # type: ignore[operator]
            raise InvalidDims("size", f"ResNet-50 downsamples 32×: an image of side {self.size} < 32 vanishes")

    def layouts(self, offered: tuple[str, ...]) -> tuple[str, ...]:
        """A layout is that of ResNet-50's image activations; BERT-base has none, so one (the default) variant."""
        return offered if self.network == "resnet50" else offered[:1]

    # --- the definition --------------------------------------------------------------------------
    def parameters(self) -> dict[str, tuple[int, ...]]:
        """Trainable parameters: canonical name -> logical shape, in definition order."""
        return dict(_PARAMETERS[self.network])

    def buffers(self) -> dict[str, tuple[int, ...]]:
        """Batch-norm running statistics (not parameters); BERT has none."""
        if self.network != "resnet50":
            return {}
        return {name.removesuffix(".weight") + stat: shape for name, shape in _PARAMETERS["resnet50"].items()
                if len(shape) == 1 and name.endswith(".weight") and name != "fc.weight"
                for stat in (".running_mean", ".running_var")}

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Parameter groups whose norms the check compares: name -> parameter names, in order."""
        names = list(_PARAMETERS[self.network])
        if self.network == "resnet50":
            prefixes = {"stem": ("conv1.", "bn1."), **{f"layer{i}": (f"layer{i}.",) for i in range(1, 5)},
                        "fc": ("fc.",)}
        else:
            prefixes = {"embeddings": ("embeddings.",),
                        **{f"encoder.{a}-{b - 1}": tuple(f"encoder.layer.{i}." for i in range(a, b))
                           for a, b in BERT_GROUPS},
                        "pooler": ("pooler.",), "classifier": ("classifier.",)}
        return {group: tuple(n for n in names if n.startswith(starts)) for group, starts in prefixes.items()}

    def batch_shapes(self) -> dict[str, tuple[int, ...]]:
        """The synthetic batch's arrays and shapes."""
        if self.network == "resnet50":
            return {"images": (self.batch, RESNET_CHANNELS, self.size, self.size), "labels": (self.batch,)}
        return {"tokens": (self.batch, self.size), "segments": (self.batch, self.size), "labels": (self.batch,)}

    @property
    def classes(self) -> int:
        return RESNET_CLASSES if self.network == "resnet50" else BERT_LABELS

    # --- what every op kind declares ---------------------------------------------------------------
    @property
    def operands(self) -> dict[str, tuple[int, ...]]:
        return {**self.parameters(), **self.buffers(), **self.batch_shapes()}

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.batch, self.classes)

    @property
    def input_elements(self) -> int:
        return math.prod(self.batch_shapes()["images" if self.network == "resnet50" else "tokens"])

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for shape in _PARAMETERS[self.network].values())

    def wrt(self, pass_: Pass) -> tuple[str, ...]:
        return tuple(self.parameters()) if pass_ in ("backward", "step") else ()

    def outputs(self, pass_: Pass) -> tuple[str, ...]:
        self._check(pass_)
        return {"forward": ("logits",), "backward": ("loss", "grad_norms"), "step": ("loss", "update_norms")}[pass_]

    # With reduced precision (fp16/bf16 autocast, TF32) the dtype's tolerance (suite.reference.TOLERANCE) applies,
    # except where a network needs more: ResNet-50 in bf16 (torch CPU autocast, at the checked size, against float64
    # with fp32 weights) measured logits 3.9e-3, loss 1.8e-2 and gradient norms 3.7e-2, over bf16's 3e-2.
    REDUCED_TOLERANCE: ClassVar[dict[str, dict[str, float]]] = {
        "resnet50": {"loss": 5e-2, "grad_norms": 1e-1, "update_norms": 1e-1},
    }

    def tolerance(self, output: str, reduced_precision: bool = False) -> float:
        """Relative error allowed for one output: in fp32 ``TOLERANCE``; with reduced precision
        ``REDUCED_TOLERANCE`` where a network has one (else 0: the dtype's own tolerance decides)."""
        if reduced_precision:
            return self.REDUCED_TOLERANCE.get(self.network, {}).get(output, 0.0)
        return self.TOLERANCE[self.network][output]

    def layers(self) -> tuple[tuple[OpKind, int, bool], ...]:
        """The network's GEMM/conv/attention layers: (op, how often, first layer), distinct ops with their counts."""
        found: dict[OpKind, list] = {}

        def add(op: OpKind, first: bool = False) -> None:
            found.setdefault(op, [0, first])[0] += 1

        b, s = self.batch, self.size
        if self.network == "resnet50":
            add(Conv2d(n=b, c=RESNET_CHANNELS, h=s, w=s, k=RESNET_STEM, r=7, s=7, stride=(2, 2), padding=(3,) * 4),
                first=True)
            side = (s + 2 * 3 - 7) // 2 + 1  # stem
            side = (side + 2 * 1 - 3) // 2 + 1  # max pool 3×3/2 pad 1
            for _, j, cin, width, stride in _stage_blocks():
                out = width * RESNET_EXPANSION
                add(Conv2d(n=b, c=cin, h=side, w=side, k=width, r=1, s=1))
                add(Conv2d(n=b, c=width, h=side, w=side, k=width, r=3, s=3, stride=(stride,) * 2, padding=(1,) * 4))
                if j == 0:
                    add(Conv2d(n=b, c=cin, h=side, w=side, k=out, r=1, s=1, stride=(stride,) * 2))
                side = (side - 1) // stride + 1
                add(Conv2d(n=b, c=width, h=side, w=side, k=out, r=1, s=1))
            add(Gemm(m=b, n=RESNET_CLASSES, k=RESNET_WIDTHS[-1] * RESNET_EXPANSION))
        else:
            tokens, h = b * s, BERT_HIDDEN
            for _ in range(BERT_LAYERS):  # QKV as one GEMM of 3·hidden outputs, as the catalog lists it
                add(Gemm(m=tokens, n=3 * h, k=h))
                add(Attention(batch=b, heads=BERT_HEADS, q_len=s, kv_len=s, head_dim=BERT_HEAD_DIM))  # type: ignore
                add(Gemm(m=tokens, n=h, k=h))
                add(Gemm(m=tokens, n=BERT_FFN, k=h))
                add(Gemm(m=tokens, n=h, k=BERT_FFN))
            add(Gemm(m=b, n=h, k=h))  # pooler
            add(Gemm(m=b, n=BERT_LABELS, k=h))  # classifier
        return tuple((op, count, first) for op, (count, first) in found.items())

    def flops(self, pass_: Pass = "forward") -> int:
        """Sum of the layers' FLOPs (module docstring): the SGD update is not counted, so step = backward."""
        self._check(pass_)
        total = 0
        for op, count, first in self.layers():
            total += count * op.flops("forward")
            if pass_ != "forward":
                if "backward_weight" in op.passes:
                    total += count * (op.flops("backward_weight") + (0 if first else op.flops("backward_data")))
                else:  # weightless (attention): its one backward is all data gradients
                    total += count * op.flops("backward")
        return total

    def min_bytes(self, pass_: Pass, itemsize: int) -> int:
        """Parameters read (forward), read and their gradients written (backward), read, gradients written and the
        new weights written (step); plus the batch and the logits. Activations are not counted."""
        self._check(pass_)
        params = self.parameter_count
        times = {"forward": 1, "backward": 2, "step": 3}[pass_]
        return itemsize * (times * params + self.input_elements + math.prod(self.out_shape))

    @property
    def working_elements(self) -> int:
        """Activations: each layer's output (and after it its norm and activation, and the gradients of all)
        kept for the backward, about 4× the layers' outputs; attention's scores and probabilities."""
        elements = 0
        for op, count, _ in self.layers():
            elements += count * (op.working_elements + 4 * math.prod(op.out_shape))  # type: ignore[attr-defined]
        return elements

    def describe(self) -> str:
        if self.network == "resnet50":
            return f"ResNet-50 B{self.batch} {self.size}×{self.size}"
        return f"BERT-base B{self.batch} L{self.size}"


register_op(Model)


def parameters(op: Model) -> dict[str, tuple[int, ...]]:
    """Trainable parameters of the op's network: canonical name -> logical shape, in definition order."""
    return op.parameters()


def buffers(op: Model) -> dict[str, tuple[int, ...]]:
    """Batch-norm running_mean / running_var (ResNet-50); none for BERT."""
    return op.buffers()


def groups(op: Model) -> dict[str, tuple[str, ...]]:
    """Parameter groups (ResNet: stem, layer1..layer4, fc; BERT: embeddings, encoder thirds, pooler, classifier)."""
    return op.groups()


def _init_scale(network: str, name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a parameter's or buffer's seeded normal values.

    ResNet: He-normal convs (std √(2/fan-in)); batch-norm γ ≈ 1 (the last of each block ≈ 0.25, so eval mode's
    residual sums grow slowly over 16 blocks), β, running means ≈ 0 and running variances ≈ 1, each with ±10% noise
    so a swapped γ/β or mean/variance shows; fc std 1/√fan-in. BERT: Hugging Face's std 0.02 for weights and
    embeddings, biases 0.02 too, LayerNorm γ ≈ 1 and β ≈ 0 with noise 0.02."""
    if network == "resnet50":
        if len(shape) == 4:
            return 0.0, math.sqrt(2.0 / math.prod(shape[1:]))
        if name == "fc.weight":
            return 0.0, 1.0 / math.sqrt(shape[1])
        if name == "fc.bias":
            return 0.0, 0.01
        if name.endswith(".running_var"):
            return 1.0, 0.1
        if name.endswith(".weight"):
            return (0.25 if ".bn3." in name or ".downsample.1." in name else 1.0), 0.1
        return 0.0, 0.1  # bias, running_mean
    if "LayerNorm" in name:
        return (1.0 if name.endswith(".weight") else 0.0), 0.02
    return 0.0, 0.02


def initial_weights(op: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Parameters and buffers as float32, seeded by the network and ``seed`` alone (every batch and size of a
    network starts from the same weights); the running variances are positive (|value|)."""
    rng = np.random.default_rng([seed, zlib.crc32(op.network.encode())])
    weights = {}
    for name, shape in {**op.parameters(), **op.buffers()}.items():
        mean, std = _init_scale(op.network, name, shape)
        array = rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean)
        weights[name] = np.abs(array) if name.endswith(".running_var") else array
    return weights


def synthetic_batch(op: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """ResNet: images (B, 3, S, S) float32 standard normal, NCHW, labels (B,) int64 in [0, 1000). BERT: tokens (B, L)
    int64 in [0, 30522), segments (B, L) int64 in {0, 1} (0 up to a random split per row, then 1), labels (B,)
    int64 in {0, 1}."""
    rng = np.random.default_rng([seed, zlib.crc32(repr(op).encode())])
    if op.network == "resnet50":
        images = rng.standard_normal((op.batch, RESNET_CHANNELS, op.size, op.size), dtype=np.float32)
        return {"images": images, "labels": rng.integers(0, RESNET_CLASSES, op.batch, dtype=np.int64)}
    tokens = rng.integers(0, BERT_VOCAB, (op.batch, op.size), dtype=np.int64)
    split = rng.integers(1, op.size + 1, (op.batch, 1))
    segments = (np.arange(op.size)[None, :] >= split).astype(np.int64)
    return {"tokens": tokens, "segments": segments, "labels": rng.integers(0, BERT_LABELS, op.batch, dtype=np.int64)}
