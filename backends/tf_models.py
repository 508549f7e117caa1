"""Whole models in TensorFlow from Keras' own layers: ResNet-50 v1.5 and BERT-base (suite.models' definition).

Built as subclassed ``keras.Model``s of standard layers, the canonical (torch-named) weights loaded into their
variables with the layout conversions Keras needs: conv kernels OIHW -> HWIO (activations NHWC), dense (out, in) ->
(in, out), MultiHeadAttention's projections split per head ((in, heads, head_dim), output (heads, head_dim, out)).

Exact semantics of the contract, in Keras terms:
- torch's symmetric conv padding where TF's "same" pads differently (the 7×7/2 stem, the strided 3×3s) is
  ``ZeroPadding2D`` + a "valid" conv, as keras.applications' ResNet does; stride-1 3×3s use "same" (equal to pad 1).
  The 3×3/2 max pool after a ReLU pads with zeros (``ZeroPadding2D(1)``): its inputs are >= 0 and every window holds
  one real element, so zeros never win over a real value, the same as -inf padding.
- BatchNormalization(epsilon=1e-5, momentum=0.9): Keras' momentum is the weight of the old running value, torch's
  0.1 the weight of the new one. Training normalizes with the batch's biased variance, as torch does.
- LayerNormalization(epsilon=1e-12); GELU exact (``keras.activations.gelu(approximate=False)``); MultiHeadAttention
  (no dropout, no mask).
- Loss: ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)`` (mean over the batch) on float32 logits.
- SGD: ``variable.assign_sub(LEARNING_RATE * gradient)`` for every trainable variable; an embedding's gradient is
  ``IndexedSlices`` (the rows looked up), applied by ``scatter_sub`` as Keras' own optimizers apply it.

Mixed precision as Keras recommends: each layer takes the ``DTypePolicy`` "mixed_bfloat16" / "mixed_float16"
(float32 variables, computations in 16 bits); float16 needs loss scaling, which plain SGD here does not do, so it is
refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from suite import models
from suite.models import _stage_blocks

BN_MOMENTUM = 0.1  # torch's weight of the batch statistic in the running one; Keras takes 1 - this
# Every variable is assigned its canonical weights right after the build (``Loader.load``): Keras' random initial
# values would be drawn only to be overwritten (about 1 s of BERT-base's build), so the weights start as zeros.
PLACEHOLDER = "zeros"


def _conv_kernel(array: np.ndarray) -> np.ndarray:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _dense_kernel(array: np.ndarray) -> np.ndarray:
    return array.T  # (out, in) -> (in, out)


def _same(array: np.ndarray) -> np.ndarray:
    return array


class Loader:
    """canonical name -> (Keras variable, conversion from the canonical layout), filled while the model is built."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Callable[[], Any], Callable[[np.ndarray], np.ndarray]]] = {}

    def add(self, name: str, variable: Callable[[], Any], convert: Callable[[np.ndarray], np.ndarray]) -> None:
        self.entries[name] = (variable, convert)

    def conv(self, prefix: str, layer: Any) -> None:
        self.add(f"{prefix}.weight", lambda: layer.kernel, _conv_kernel)

    def bn(self, prefix: str, layer: Any) -> None:
        for name, attr in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                           ("running_var", "moving_variance")):
            self.add(f"{prefix}.{name}", lambda attr=attr: getattr(layer, attr), _same)

    def dense(self, prefix: str, layer: Any) -> None:
        self.add(f"{prefix}.weight", lambda: layer.kernel, _dense_kernel)
        self.add(f"{prefix}.bias", lambda: layer.bias, _same)

    def layer_norm(self, prefix: str, layer: Any) -> None:
        self.add(f"{prefix}.weight", lambda: layer.gamma, _same)
        self.add(f"{prefix}.bias", lambda: layer.beta, _same)

    def variable(self, name: str) -> Any:
        return self.entries[name][0]()

    def load(self, weights: dict[str, np.ndarray]) -> None:
        """Assign every canonical array to its variable (after the model is built); names must match exactly."""
        missing = sorted(set(self.entries) - set(weights))
        if missing:
            raise KeyError(f"weights lack {missing[:3]}")
        for name, (variable, convert) in self.entries.items():
            target = variable()
            array = convert(weights[name])
            if tuple(target.shape) != array.shape:
                raise ValueError(f"{name}: Keras variable {tuple(target.shape)}, canonical -> {array.shape}")
            target.assign(array)


def resnet50(keras: Any, loader: Loader, policy: Any) -> Any:
    """ResNet-50 v1.5 of Keras layers (suite.models' stages, widths and classes)."""
    layers = keras.layers

    def bn(prefix: str) -> Any:
        layer = layers.BatchNormalization(epsilon=models.BN_EPS, momentum=1 - BN_MOMENTUM, dtype=policy)
        loader.bn(prefix, layer)
        return layer

    def conv(prefix: str, filters: int, size: int, stride: int = 1) -> list[Any]:
        """A bias-free conv with torch's padding (size // 2 on every side): padding layer + valid conv if strided."""
        pad = size // 2
        padding = "same" if stride == 1 or pad == 0 else "valid"
        layer = layers.Conv2D(filters, size, strides=stride, padding=padding, use_bias=False,
                              kernel_initializer=PLACEHOLDER, dtype=policy)
        loader.conv(prefix, layer)
        return [layers.ZeroPadding2D(pad, dtype=policy), layer] if padding == "valid" and pad else [layer]

    class Bottleneck(layers.Layer):
        def __init__(self, prefix: str, width: int, stride: int, downsample: bool):
            super().__init__(dtype=policy)
            out = models.RESNET_EXPANSION * width
            self.main = [*conv(f"{prefix}.conv1", width, 1), bn(f"{prefix}.bn1"), layers.ReLU(dtype=policy),
                         *conv(f"{prefix}.conv2", width, 3, stride), bn(f"{prefix}.bn2"), layers.ReLU(dtype=policy),
                         *conv(f"{prefix}.conv3", out, 1), bn(f"{prefix}.bn3")]
            self.shortcut = ([*conv(f"{prefix}.downsample.0", out, 1, stride), bn(f"{prefix}.downsample.1")]
                             if downsample else [])
            self.add = layers.Add(dtype=policy)
            self.relu = layers.ReLU(dtype=policy)

        def call(self, x, training=False):
            y, short = x, x
            for layer in self.main:
                y = layer(y, training=training)
            for layer in self.shortcut:
                short = layer(short, training=training)
            return self.relu(self.add([y, short]))

    class ResNet50(keras.Model):
        def __init__(self):
            super().__init__(dtype=policy)
            self.stem = [*conv("conv1", models.RESNET_STEM, 7, 2), bn("bn1"), layers.ReLU(dtype=policy),
                         layers.ZeroPadding2D(1, dtype=policy), layers.MaxPooling2D(3, 2, dtype=policy)]
            self.blocks = [Bottleneck(f"layer{stage}.{j}", width, stride, j == 0)
                           for stage, j, _, width, stride in _stage_blocks()]
            self.pool = layers.GlobalAveragePooling2D(dtype=policy)
            self.fc = layers.Dense(models.RESNET_CLASSES, kernel_initializer=PLACEHOLDER, dtype=policy)
            loader.dense("fc", self.fc)

        def call(self, images, training=False):
            x = images
            for layer in [*self.stem, *self.blocks]:
                x = layer(x, training=training)
            return self.fc(self.pool(x))

    return ResNet50()


def bert(keras: Any, loader: Loader, policy: Any) -> Any:
    """BERT-base for sequence classification of Keras layers (post-LN, no dropout, no mask)."""
    layers, ops = keras.layers, keras.ops
    hidden, heads, head = models.BERT_HIDDEN, models.BERT_HEADS, models.BERT_HEAD_DIM

    def dense(prefix: str, units: int, activation: Any = None) -> Any:
        layer = layers.Dense(units, activation=activation, kernel_initializer=PLACEHOLDER, dtype=policy)
        loader.dense(prefix, layer)
        return layer

    def layer_norm(prefix: str) -> Any:
        layer = layers.LayerNormalization(epsilon=models.LN_EPS, dtype=policy)
        loader.layer_norm(prefix, layer)
        return layer

    def embedding(prefix: str, rows: int) -> Any:
        layer = layers.Embedding(rows, hidden, embeddings_initializer=PLACEHOLDER, dtype=policy)
        loader.add(f"{prefix}.weight", lambda: layer.embeddings, _same)
        return layer

    def gelu(x):
        return keras.activations.gelu(x, approximate=False)

    def attention(prefix: str) -> Any:
        layer = layers.MultiHeadAttention(heads, head, kernel_initializer=PLACEHOLDER, dtype=policy)
        for name, part in (("query", "query"), ("key", "key"), ("value", "value")):
            loader.add(f"{prefix}.self.{name}.weight", lambda part=part: getattr(layer, f"_{part}_dense").kernel,
                       lambda w: w.T.reshape(hidden, heads, head))
            loader.add(f"{prefix}.self.{name}.bias", lambda part=part: getattr(layer, f"_{part}_dense").bias,
                       lambda b: b.reshape(heads, head))
        loader.add(f"{prefix}.output.dense.weight", lambda: layer._output_dense.kernel,
                   lambda w: w.T.reshape(heads, head, hidden))
        loader.add(f"{prefix}.output.dense.bias", lambda: layer._output_dense.bias, _same)
        return layer

    class Layer(layers.Layer):
        def __init__(self, prefix: str):
            super().__init__(dtype=policy)
            self.attention = attention(f"{prefix}.attention")
            self.attention_norm = layer_norm(f"{prefix}.attention.output.LayerNorm")
            self.intermediate = dense(f"{prefix}.intermediate.dense", models.BERT_FFN, gelu)
            self.output_dense = dense(f"{prefix}.output.dense", hidden)
            self.output_norm = layer_norm(f"{prefix}.output.LayerNorm")

        def call(self, x):
            x = self.attention_norm(x + self.attention(x, x))
            return self.output_norm(x + self.output_dense(self.intermediate(x)))

    class Bert(keras.Model):
        def __init__(self):
            super().__init__(dtype=policy)
            self.word = embedding("embeddings.word_embeddings", models.BERT_VOCAB)
            self.position = embedding("embeddings.position_embeddings", models.BERT_POSITIONS)
            self.token_type = embedding("embeddings.token_type_embeddings", models.BERT_TYPES)
            self.embedding_norm = layer_norm("embeddings.LayerNorm")
            self.encoder = [Layer(f"encoder.layer.{i}") for i in range(models.BERT_LAYERS)]
            self.pooler = dense("pooler.dense", hidden, "tanh")
            self.classifier = dense("classifier", models.BERT_LABELS)

        def call(self, tokens, segments, training=False):
            positions = ops.arange(ops.shape(tokens)[1])
            x = self.word(tokens) + self.position(positions)[None] + self.token_type(segments)
            x = self.embedding_norm(x)
            for layer in self.encoder:
                x = layer(x)
            return self.classifier(self.pooler(x[:, 0]))

    return Bert()


def build(keras: Any, op: models.Model, policy: Any) -> tuple[Any, Loader]:
    """The op's network of Keras layers (unbuilt) and the loader of its canonical weights."""
    loader = Loader()
    model = resnet50(keras, loader, policy) if op.network == "resnet50" else bert(keras, loader, policy)
    return model, loader


def trainable_count(model: Any) -> int:
    """Trainable parameters as Keras counts them (its trainable weights; the BN running statistics are not)."""
    return sum(int(np.prod(variable.shape)) for variable in model.trainable_weights)


def model_step(tf: Any, op: models.Model, variant: Any, arrays: dict[str, np.ndarray],
               device: str) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The callable of one pass of the op's network built of Keras layers with the canonical ``arrays`` loaded, in
    the variant's mode (tf.function, eager, XLA); and details.

    forward: eval mode, the logits. backward: training mode, the loss and its gradients. step: the same, then
    ``assign_sub(LEARNING_RATE * gradient)`` of every variable: every call trains on. As in the torch backend, only
    the FIRST call returns the check's outputs, the loss with the L2 norm per group (float64) of the gradients or of
    w_after - w_before (from a float64 copy taken before the update); every later call is the bare pass, so no timed
    call pays for the norms or the copy."""
    import keras

    from backends.base import Unsupported

    if variant.dtype == "fp16":
        raise Unsupported("TensorFlow model fp16: Keras' mixed_float16 needs loss scaling (LossScaleOptimizer), "
                          "which the plain SGD step does not do; bf16 (mixed_bfloat16) runs")
    policy = keras.DTypePolicy({"fp32": "float32", "bf16": "mixed_bfloat16"}[variant.dtype])
    with tf.device(device):
        model, loader = build(keras, op, policy)
        if op.network == "resnet50":  # NCHW -> NHWC, Keras' channels_last
            inputs = (tf.constant(np.ascontiguousarray(arrays["images"].transpose(0, 2, 3, 1))),)
        else:
            inputs = (tf.constant(arrays["tokens"]), tf.constant(arrays["segments"]))
        labels = tf.constant(arrays["labels"])
        model(*inputs, training=False)  # builds the variables; eval mode leaves the running statistics alone
        loader.load(arrays)
    variables = [loader.variable(name) for name in op.parameters()]
    index = {name: i for i, name in enumerate(op.parameters())}
    groups = [[index[name] for name in names] for names in op.groups().values()]
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # mean over the batch
    rate = models.LEARNING_RATE

    def norms(tensors: list[Any]) -> Any:
        """L2 norm per group, accumulated in float64 (only for the check's call)."""
        dense = [tf.cast(tf.convert_to_tensor(tensor), tf.float64) for tensor in tensors]  # embeddings: IndexedSlices
        return tf.stack([tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(dense[i])) for i in group])) for group in groups])

    def gradients(*batch: Any) -> tuple[Any, list[Any]]:
        *data, target = batch
        with tf.GradientTape() as tape:
            loss = cross_entropy(target, tf.cast(model(*data, training=True), tf.float32))
        return loss, tape.gradient(loss, variables)

    def forward(*batch: Any) -> Any:
        return tf.cast(model(*batch[:-1], training=False), tf.float32)

    def backward(*batch: Any) -> tuple[Any, list[Any]]:
        return gradients(*batch)  # the gradients are returned, so a traced function cannot prune them

    def step(*batch: Any) -> Any:
        loss, grads = gradients(*batch)
        for variable, grad in zip(variables, grads, strict=True):
            if isinstance(grad, tf.IndexedSlices):  # an embedding's rows: a sparse update, as Keras' optimizers do
                variable.value.scatter_sub(tf.IndexedSlices(rate * grad.values, grad.indices, grad.dense_shape))
            else:
                variable.assign_sub(rate * grad)
        return loss

    body = {"forward": forward, "backward": backward, "step": step}[variant.pass_]
    if variant.mode != "eager":  # the batch enters as arguments, not as captured constants
        body = tf.function(body, jit_compile=variant.mode == "xla", autograph=False)
    batch = (*inputs, labels)
    details = {"implementation": f"Keras layers ({type(model).__name__}), policy {policy.name}",
               "parameters": trainable_count(model)}
    if variant.pass_ == "forward":
        return (lambda: body(*batch)), details
    first = [True]

    def train() -> Any:
        """The bare pass; on the first call only, also the check's norms (suite.models: what the check sees)."""
        if not first[0]:
            return body(*batch)
        first[0] = False
        if variant.pass_ == "backward":
            loss, grads = body(*batch)
            return loss, norms(grads)
        before = [tf.cast(variable, tf.float64) for variable in variables]  # a copy: the update is in place
        loss = body(*batch)
        return loss, norms([tf.cast(variable, tf.float64) - old for variable, old in zip(variables, before,
                                                                                          strict=True)])

    return train, details
