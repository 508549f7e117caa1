"""The float64 NumPy reference of a whole model (``suite.models``): ResNet-50 v1.5 and BERT-base forward, backward
and SGD step, exactly the semantics the frameworks implement, from the canonical weights and synthetic batch.

A small reverse mode: each layer is a function returning its output and a ``backward`` closure that maps the
gradient of its output to the gradient of its input (and of its parameters); ``Layers`` names the parameters by
their canonical names and keeps each gradient's squared norm; a network chains the layers and replays their
closures in reverse. Convolutions and the attention core reuse the per-op references of ``suite.reference``. Every
array is float64; nothing here imports a framework.

Passes (``Model.outputs``): ``forward`` = eval mode (batch norm on its running statistics) → logits; ``backward`` =
training mode (batch statistics) → mean softmax cross-entropy and the L2 norm of the gradients per parameter group;
``step`` = the same loss and the norm of each group's SGD update (``step_outputs``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf, log_softmax, softmax

from suite import models
from suite.ops import Attention, Conv2d, Pass

Backward = Callable[[np.ndarray], np.ndarray]
Weights = dict[str, np.ndarray]


# ---- layers: pure functions of arrays; each returns (output, backward) and backward returns the input gradient
# followed by the parameter gradients.

def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> tuple[np.ndarray, Callable]:
    """Cross-correlation of NCHW ``x`` with OIHW ``w`` (no bias); backward(dy, input_grad) → (dx or None, dw)."""
    from suite.reference import _conv  # here: suite.reference imports this module for its table of references

    n, c, h, width = x.shape
    k, _, r, s = w.shape
    op = Conv2d(n, c, h, width, k, r, s, stride=(stride, stride), padding=(pad,) * 4)
    y = _conv(op, {"x": x, "w": w}, "forward")["y"]

    def backward(dy: np.ndarray, input_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        grads = _conv(op, {"x": x, "w": w, "dy": dy}, "backward" if input_grad else "backward_weight")
        return grads.get("dx"), grads["dw"]
    return y, backward


def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, train: bool,
               eps: float) -> tuple[np.ndarray, Callable]:
    """Per-channel batch norm of NCHW ``x``: over (N, H, W) with the biased batch variance when training, else with
    the running statistics; backward(dy) → (dx, dgamma, dbeta)."""
    axes = (0, 2, 3)
    if train:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean[:, None, None]) * inv[:, None, None]
    y = gamma[:, None, None] * xhat + beta[:, None, None]

    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dbeta, dgamma = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
        scale = (gamma * inv)[:, None, None]
        if not train:  # the statistics are constants
            return dy * scale, dgamma, dbeta
        count = x.size // x.shape[1]  # the mean and variance also depend on x
        dx = scale * (dy - (dbeta[:, None, None] + xhat * dgamma[:, None, None]) / count)
        return dx, dgamma, dbeta
    return y, backward


def relu(x: np.ndarray) -> tuple[np.ndarray, Callable]:
    positive = x > 0
    return x * positive, lambda dy: (dy * positive,)


def max_pool(x: np.ndarray, size: int = 3, stride: int = 2, pad: int = 1) -> tuple[np.ndarray, Callable]:
    """Max pooling of NCHW ``x`` (padding never wins); backward routes each output's gradient to its window's first
    maximum (row-major), summing where windows overlap."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = sliding_window_view(xp, (size, size), axis=(2, 3))[:, :, ::stride, ::stride]
    p, q = win.shape[2:4]
    flat = win.reshape(n, c, p, q, size * size)
    arg = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(dy: np.ndarray) -> tuple[np.ndarray]:
        dxp = np.zeros_like(xp)
        for tap in range(size * size):  # each window position in turn, onto the padded input
            r, s = divmod(tap, size)
            dxp[:, :, r: r + stride * (p - 1) + 1: stride, s: s + stride * (q - 1) + 1: stride] += dy * (arg == tap)
        return (dxp[:, :, pad: pad + h, pad: pad + w],)
    return y, backward


def global_average_pool(x: np.ndarray) -> tuple[np.ndarray, Callable]:
    """NCHW → NC, the mean over H and W."""
    hw = x.shape[2] * x.shape[3]
    return x.mean(axis=(2, 3)), lambda dy: (np.broadcast_to(dy[:, :, None, None] / hw, x.shape),)


def dense(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Callable]:
    """y = x·Wᵀ + b over the last axis, W stored (out, in); backward(dy) → (dx, dW, db).

    The products run on 2-D rows with the weight as the left operand (W·xᵀ, then transposed): with few rows
    (a checked batch of 64 tokens) OpenBLAS runs it 2-3× faster than x·Wᵀ or a batched 3-D product."""
    lead, x_rows = x.shape[:-1], x.reshape(-1, x.shape[-1])

    def backward(dy: np.ndarray, weight_grad: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        rows = dy.reshape(-1, dy.shape[-1])
        dw = rows.T @ x_rows if weight_grad else None
        return (w.T @ rows.T).T.reshape(*lead, w.shape[1]), dw, rows.sum(axis=0)
    return (w @ x_rows.T).T.reshape(*lead, w.shape[0]) + b, backward


def product_squared_norm(a: np.ndarray, b: np.ndarray) -> float:
    """‖aᵀ·b‖² (Frobenius) over the rows of ``a`` and ``b`` (leading axes flattened), as ⟨a·aᵀ, b·bᵀ⟩: a dense
    layer's weight gradient dyᵀ·x without forming it, cheaper when the rows are fewer than in·out / (in + out)."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(np.vdot(a @ a.T, b @ b.T))


def embedding(ids: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, Callable]:
    """Rows of ``table`` by integer ``ids``; backward(dy) → (the gradient of the rows ``used``, ``used``): the
    distinct ids, repeated ids summed; every other row's gradient is zero (BERT's 30522 × 768 table is not built)."""
    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        used, where = np.unique(ids, return_inverse=True)
        rows = np.zeros((len(used), table.shape[1]))
        np.add.at(rows, where.ravel(), dy.reshape(-1, table.shape[1]))
        return rows, used
    return table[ids], backward


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, Callable]:
    """Normalization over the last axis (biased variance); backward(dy) → (dx, dgamma, dbeta)."""
    mean = x.mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * inv

    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lead = tuple(range(dy.ndim - 1))
        g = dy * gamma
        dx = inv * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)
    return gamma * xhat + beta, backward


def gelu(x: np.ndarray) -> tuple[np.ndarray, Callable]:
    """Exact GELU x·Φ(x) (the erf form)."""
    cdf = 0.5 * (1.0 + erf(x / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    return x * cdf, lambda dy: (dy * (cdf + x * pdf),)


def tanh(x: np.ndarray) -> tuple[np.ndarray, Callable]:
    y = np.tanh(x)
    return y, lambda dy: (dy * (1.0 - y * y),)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, Callable]:
    """softmax(Q·Kᵀ/√D)·V over batch×heads×length×head_dim, no mask; backward(dy) → (dq, dk, dv)."""
    batch, heads, length, head_dim = q.shape
    from suite.reference import _attention

    op = Attention(batch, heads, length, length, head_dim)
    y = _attention(op, {"q": q, "k": k, "v": v}, "forward")["y"]

    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grads = _attention(op, {"q": q, "k": k, "v": v, "dy": dy}, "backward")
        return grads["dq"], grads["dk"], grads["dv"]
    return y, backward


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch, and its gradient with respect to the logits."""
    rows = np.arange(len(labels))
    loss = -log_softmax(logits, axis=-1)[rows, labels].mean()
    dlogits = softmax(logits, axis=-1)
    dlogits[rows, labels] -= 1.0
    return float(loss), dlogits / len(labels)


# ---- the same layers reading their parameters by canonical name and keeping their gradients' norms by that name

class Layers:
    """A network's parameterized layers: weights (and batch-norm buffers) by canonical name, train or eval mode,
    and the squared L2 norm of each parameter's gradient, which the backward closures store under its name (the
    check compares norms only: BERT's 110M float64 gradients are never kept)."""

    def __init__(self, weights: Weights, train: bool):
        self.weights, self.train = weights, train
        self.squared_norms: dict[str, float] = {}

    def _store(self, names: tuple[str, ...], grads: tuple[np.ndarray, ...]) -> None:
        for name, grad in zip(names, grads, strict=True):
            self._store_squared(name, float(np.vdot(grad, grad)))

    def _store_squared(self, name: str, squared_norm: float) -> None:
        if name in self.squared_norms:  # a shared weight would need its gradients summed before squaring
            raise ValueError(f"parameter {name!r} is used twice; its gradient norm needs the summed gradient")
        self.squared_norms[name] = squared_norm

    def conv(self, name: str, x: np.ndarray, stride: int, pad: int, input_grad: bool = True
             ) -> tuple[np.ndarray, Backward]:
        y, back = conv2d(x, self.weights[name + ".weight"], stride, pad)

        def backward(dy: np.ndarray) -> np.ndarray:
            dx, dw = back(dy, input_grad)
            self._store((name + ".weight",), (dw,))
            return dx
        return y, backward

    def batch_norm(self, name: str, x: np.ndarray) -> tuple[np.ndarray, Backward]:
        w = self.weights
        y, back = batch_norm(x, w[name + ".weight"], w[name + ".bias"], w[name + ".running_mean"],
                             w[name + ".running_var"], self.train, models.BN_EPS)
        return y, self._with_params(name, back)

    def dense(self, name: str, x: np.ndarray) -> tuple[np.ndarray, Backward]:
        """A dense layer; with few rows (BERT's checked 64 tokens) its weight gradient's norm comes from the rows'
        Gram matrices (``product_squared_norm``) instead of the gradient: a third of the float64 FLOPs saved."""
        w = self.weights[name + ".weight"]
        y, back = dense(x, w, self.weights[name + ".bias"])

        def backward(dy: np.ndarray) -> np.ndarray:
            gram = dy.size // dy.shape[-1] * sum(w.shape) < w.size
            dx, dw, db = back(dy, weight_grad=not gram)
            self._store_squared(name + ".weight", product_squared_norm(dy, x) if gram else float(np.vdot(dw, dw)))
            self._store((name + ".bias",), (db,))
            return dx
        return y, backward

    def layer_norm(self, name: str, x: np.ndarray) -> tuple[np.ndarray, Backward]:
        y, back = layer_norm(x, self.weights[name + ".weight"], self.weights[name + ".bias"], models.LN_EPS)
        return y, self._with_params(name, back)

    def embedding(self, name: str, ids: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], None]]:
        y, back = embedding(ids, self.weights[name + ".weight"])
        return y, lambda dy: self._store((name + ".weight",), back(dy)[:1])  # the used rows: the whole norm

    def _with_params(self, name: str, back: Callable) -> Backward:
        """A backward that stores the weight and bias gradients of layer ``name`` and returns the input's."""
        def backward(dy: np.ndarray) -> np.ndarray:
            dx, *grads = back(dy)
            self._store((name + ".weight", name + ".bias"), tuple(grads))
            return dx
        return backward


def _chain(steps: list[Backward]) -> Backward:
    """The backward of layers applied in sequence: theirs in reverse order."""
    def backward(dy: np.ndarray) -> np.ndarray:
        for step in reversed(steps):
            dy = step(dy)
        return dy
    return backward


def _unary(layer: Callable[[np.ndarray], tuple[np.ndarray, Callable]], x: np.ndarray) -> tuple[np.ndarray, Backward]:
    """A parameter-free layer whose backward returns only the input gradient."""
    y, back = layer(x)
    return y, lambda dy: back(dy)[0]


# ---- ResNet-50 v1.5

def _bottleneck(layers: Layers, name: str, x: np.ndarray, stride: int, downsample: bool
                ) -> tuple[np.ndarray, Backward]:
    """conv1 1×1 → BN → ReLU → conv2 3×3 (the stride) → BN → ReLU → conv3 1×1 → BN, plus the shortcut, → ReLU."""
    main: list[Backward] = []
    y = x
    for index, (conv_stride, pad) in enumerate(((1, 0), (stride, 1), (1, 0)), start=1):
        y, back = layers.conv(f"{name}.conv{index}", y, conv_stride, pad)
        main.append(back)
        y, back = layers.batch_norm(f"{name}.bn{index}", y)
        main.append(back)
        if index < 3:
            y, back = _unary(relu, y)
            main.append(back)
    shortcut: list[Backward] = []
    skip = x
    if downsample:
        skip, back = layers.conv(f"{name}.downsample.0", x, stride, 0)
        shortcut.append(back)
        skip, back = layers.batch_norm(f"{name}.downsample.1", skip)
        shortcut.append(back)
    out, back_relu = _unary(relu, y + skip)
    main_back, shortcut_back = _chain(main), _chain(shortcut)

    def backward(dout: np.ndarray) -> np.ndarray:
        dsum = back_relu(dout)
        return main_back(dsum) + shortcut_back(dsum)
    return out, backward


def resnet50(layers: Layers, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, Backward]:
    """Logits of ResNet-50 v1.5 on NCHW images, and the backward from the logits' gradient."""
    steps: list[Backward] = []

    def add(result: tuple[np.ndarray, Backward]) -> np.ndarray:
        steps.append(result[1])
        return result[0]
    x = add(layers.conv("conv1", batch["images"], 2, 3, input_grad=False))  # the data needs no gradient
    x = add(layers.batch_norm("bn1", x))
    x = add(_unary(relu, x))
    x = add(_unary(max_pool, x))
    for stage, block, _, _, stride in models._stage_blocks():
        x = add(_bottleneck(layers, f"layer{stage}.{block}", x, stride, downsample=block == 0))
    x = add(_unary(global_average_pool, x))
    return add(layers.dense("fc", x)), _chain(steps)


# ---- BERT-base

def _heads(x: np.ndarray) -> np.ndarray:
    """batch × length × hidden → batch × heads × length × head_dim."""
    batch, length, hidden = x.shape
    return x.reshape(batch, length, models.BERT_HEADS, hidden // models.BERT_HEADS).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """batch × heads × length × head_dim → batch × length × hidden."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


def _encoder_layer(layers: Layers, name: str, x: np.ndarray) -> tuple[np.ndarray, Backward]:
    """Post-LN transformer layer: x = LN(x + attention(x)); x = LN(x + FFN(x)) with an exact-GELU FFN."""
    projections = [layers.dense(f"{name}.attention.self.{p}", x) for p in ("query", "key", "value")]
    context, back_attention = attention(*(_heads(y) for y, _ in projections))
    attended, back_out = layers.dense(f"{name}.attention.output.dense", _merge_heads(context))
    x1, back_ln1 = layers.layer_norm(f"{name}.attention.output.LayerNorm", x + attended)
    inner, back_inner = layers.dense(f"{name}.intermediate.dense", x1)
    activated, back_gelu = _unary(gelu, inner)
    ffn, back_ffn = layers.dense(f"{name}.output.dense", activated)
    x2, back_ln2 = layers.layer_norm(f"{name}.output.LayerNorm", x1 + ffn)

    def backward(dx2: np.ndarray) -> np.ndarray:
        dsum2 = back_ln2(dx2)
        dx1 = back_ln1(dsum2 + back_inner(back_gelu(back_ffn(dsum2))))
        dq, dk, dv = back_attention(_heads(back_out(dx1)))
        return dx1 + sum(back(_merge_heads(d)) for (_, back), d in zip(projections, (dq, dk, dv), strict=True))
    return x2, backward


def bert_base(layers: Layers, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, Backward]:
    """Logits of BERT-base for sequence classification (no dropout, no attention mask), and the backward."""
    tokens, segments = batch["tokens"], batch["segments"]
    words, back_words = layers.embedding("embeddings.word_embeddings", tokens)
    positions, back_positions = layers.embedding("embeddings.position_embeddings", np.arange(tokens.shape[1]))
    types, back_types = layers.embedding("embeddings.token_type_embeddings", segments)
    x, back_ln = layers.layer_norm("embeddings.LayerNorm", words + positions[None] + types)
    steps: list[Backward] = []
    for index in range(models.BERT_LAYERS):
        x, back = _encoder_layer(layers, f"encoder.layer.{index}", x)
        steps.append(back)
    encoder_back = _chain(steps)
    pooled_in, back_pool_dense = layers.dense("pooler.dense", x[:, 0])
    pooled, back_tanh = _unary(tanh, pooled_in)
    logits, back_classifier = layers.dense("classifier", pooled)

    def backward(dlogits: np.ndarray) -> np.ndarray:
        dfirst = back_pool_dense(back_tanh(back_classifier(dlogits)))
        dx = np.zeros_like(x)
        dx[:, 0] = dfirst
        dembed = back_ln(encoder_back(dx))
        back_words(dembed)
        back_positions(dembed.sum(axis=0))
        back_types(dembed)
        return dembed
    return logits, backward


NETWORKS: dict[str, Callable[[Layers, dict[str, np.ndarray]], tuple[np.ndarray, Backward]]] = {
    "resnet50": resnet50, "bert_base": bert_base}


def group_norms(op: models.Model, squared_norms: dict[str, float]) -> np.ndarray:
    """The L2 norm of the gradients of each parameter group, in ``groups(op)`` order."""
    return np.sqrt([sum(squared_norms[name] for name in names) for names in models.groups(op).values()])


def step_outputs(backward: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The step's outputs from the backward's: the same loss (computed before the update), and per group the norm
    of the update w_after - w_before = -LEARNING_RATE·grad, i.e. LEARNING_RATE·‖grad‖ (exact in real arithmetic; a
    framework's fp32 difference of weights rounds it)."""
    return {"loss": backward["loss"], "update_norms": models.LEARNING_RATE * backward["grad_norms"]}


def passes(op: models.Model, inputs: dict[str, np.ndarray], wanted: tuple[Pass, ...] = models.Model.passes
           ) -> dict[str, dict[str, np.ndarray]]:
    """The outputs of each wanted pass by name (``Model.outputs``), from the canonical weights and batch of
    ``make_inputs``: one eval-mode forward for ``forward``, one training forward+backward for both ``backward`` and
    ``step``."""
    arrays = {name: array if array.dtype.kind in "iu" else array.astype(np.float64, copy=False)
              for name, array in inputs.items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    if "forward" in wanted:
        out["forward"] = {"logits": NETWORKS[op.network](Layers(arrays, train=False), arrays)[0]}
    if "backward" in wanted or "step" in wanted:
        layers = Layers(arrays, train=True)
        logits, backward = NETWORKS[op.network](layers, arrays)
        loss, dlogits = cross_entropy(logits, arrays["labels"])
        backward(dlogits)
        out["backward"] = {"loss": np.asarray(loss), "grad_norms": group_norms(op, layers.squared_norms)}
        out["step"] = step_outputs(out["backward"])
    return {pass_: out[pass_] for pass_ in wanted}


def model(op: models.Model, inputs: dict[str, np.ndarray], pass_: Pass) -> dict[str, np.ndarray]:
    """One pass's outputs (``passes``): the op kind's entry in ``suite.reference.REFERENCES``."""
    return passes(op, inputs, (pass_,))[pass_]
