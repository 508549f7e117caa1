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
- SGD: ``variable.assign_sub(LEARNING_RATE * gradient)`` for every trainable variable.

Mixed precision as Keras recommends: each layer takes the ``DTypePolicy`` "mixed_bfloat16" / "mixed_float16"
(float32 variables, computations in 16 bits); float16 needs loss scaling, which plain SGD here does not do, so it is
refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


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


def resnet50(keras: Any, loader: Loader, policy: Any, stages: tuple[tuple[int, int, int], ...],
             classes: int) -> Any:
    """ResNet-50 v1.5 of Keras layers; ``stages`` = (blocks, width, stride) per stage, expansion 4."""
    layers = keras.layers

    def bn(prefix: str) -> Any:
        layer = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=policy)
        loader.bn(prefix, layer)
        return layer

    def conv(prefix: str, filters: int, size: int, stride: int = 1) -> list[Any]:
        """A bias-free conv with torch's padding (size // 2 on every side): padding layer + valid conv if strided."""
        pad = size // 2
        padding = "same" if stride == 1 or pad == 0 else "valid"
        layer = layers.Conv2D(filters, size, strides=stride, padding=padding, use_bias=False, dtype=policy)
        loader.conv(prefix, layer)
        return [layers.ZeroPadding2D(pad, dtype=policy), layer] if padding == "valid" and pad else [layer]

    class Bottleneck(layers.Layer):
        def __init__(self, prefix: str, width: int, stride: int, downsample: bool):
            super().__init__(dtype=policy)
            self.main = [*conv(f"{prefix}.conv1", width, 1), bn(f"{prefix}.bn1"), layers.ReLU(dtype=policy),
                         *conv(f"{prefix}.conv2", width, 3, stride), bn(f"{prefix}.bn2"), layers.ReLU(dtype=policy),
                         *conv(f"{prefix}.conv3", 4 * width, 1), bn(f"{prefix}.bn3")]
            self.shortcut = ([*conv(f"{prefix}.downsample.0", 4 * width, 1, stride), bn(f"{prefix}.downsample.1")]
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
            self.stem = [*conv("conv1", 64, 7, 2), bn("bn1"), layers.ReLU(dtype=policy),
                         layers.ZeroPadding2D(1, dtype=policy), layers.MaxPooling2D(3, 2, dtype=policy)]
            self.blocks = [Bottleneck(f"layer{i + 1}.{j}", width, stride if j == 0 else 1, j == 0)
                           for i, (blocks, width, stride) in enumerate(stages) for j in range(blocks)]
            self.pool = layers.GlobalAveragePooling2D(dtype=policy)
            self.fc = layers.Dense(classes, dtype=policy)
            loader.dense("fc", self.fc)

        def call(self, images, training=False):
            x = images
            for layer in [*self.stem, *self.blocks]:
                x = layer(x, training=training)
            return self.fc(self.pool(x))

    return ResNet50()


def bert(keras: Any, loader: Loader, policy: Any, config: dict[str, int]) -> Any:
    """BERT-base for sequence classification of Keras layers (post-LN, no dropout, no mask)."""
    layers, ops = keras.layers, keras.ops
    hidden, heads = config["hidden"], config["heads"]

    def dense(prefix: str, units: int, activation: Any = None) -> Any:
        layer = layers.Dense(units, activation=activation, dtype=policy)
        loader.dense(prefix, layer)
        return layer

    def layer_norm(prefix: str) -> Any:
        layer = layers.LayerNormalization(epsilon=1e-12, dtype=policy)
        loader.layer_norm(prefix, layer)
        return layer

    def embedding(prefix: str, rows: int) -> Any:
        layer = layers.Embedding(rows, hidden, dtype=policy)
        loader.add(f"{prefix}.weight", lambda: layer.embeddings, _same)
        return layer

    def gelu(x):
        return keras.activations.gelu(x, approximate=False)

    def attention(prefix: str) -> Any:
        layer = layers.MultiHeadAttention(heads, hidden // heads, dtype=policy)
        head = hidden // heads
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
            self.intermediate = dense(f"{prefix}.intermediate.dense", config["ffn"], gelu)
            self.output_dense = dense(f"{prefix}.output.dense", hidden)
            self.output_norm = layer_norm(f"{prefix}.output.LayerNorm")

        def call(self, x):
            x = self.attention_norm(x + self.attention(x, x))
            return self.output_norm(x + self.output_dense(self.intermediate(x)))

    class Bert(keras.Model):
        def __init__(self):
            super().__init__(dtype=policy)
            self.word = embedding("embeddings.word_embeddings", config["vocab"])
            self.position = embedding("embeddings.position_embeddings", config["positions"])
            self.token_type = embedding("embeddings.token_type_embeddings", config["token_types"])
            self.embedding_norm = layer_norm("embeddings.LayerNorm")
            self.encoder = [Layer(f"encoder.layer.{i}") for i in range(config["layers"])]
            self.pooler = dense("pooler.dense", hidden, "tanh")
            self.classifier = dense("classifier", config["labels"])

        def call(self, tokens, segments, training=False):
            positions = ops.arange(ops.shape(tokens)[1])
            x = self.word(tokens) + self.position(positions)[None] + self.token_type(segments)
            x = self.embedding_norm(x)
            for layer in self.encoder:
                x = layer(x)
            return self.classifier(self.pooler(x[:, 0]))

    return Bert()
