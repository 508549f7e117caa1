"""Whole models in JAX from jax.lax / jax.nn / jnp on a params pytree: ResNet-50 v1.5 and BERT-base (suite.models).

The params pytree is a flat dict keyed by the canonical (torch) names, in JAX's layouts: conv kernels HWIO on NHWC
activations (``lax.conv_general_dilated``), dense kernels (in, out). Exact semantics of the contract:
- convs pad symmetrically as torch does (explicit (pad, pad) pairs); batch norm normalizes with the batch mean and
  biased variance over (N, H, W) in training, with the running statistics in eval, eps 1e-5; the 3×3/2 max pool is
  ``lax.reduce_window`` with -inf padding.
- BERT: ``jax.nn.dot_product_attention`` (no mask, scale 1/√64), exact GELU (``jax.nn.gelu(approximate=False)``),
  layer norm eps 1e-12 over the last axis, post-LN, no dropout; pooler tanh on token 0.
- Loss: mean softmax cross-entropy (``jax.nn.log_softmax``) on float32 logits. SGD: params - LEARNING_RATE · grad.

Mixed precision (bf16, fp16): the float32 params are the master copy; the function casts them and the data to the
16-bit dtype and computes in it, batch and layer norm statistics and the loss in float32 (as Keras' mixed policies
and flax's norm layers do). fp16 would need loss scaling, which plain SGD here does not do: refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from suite import models
from suite.models import _stage_blocks

BN_MOMENTUM = 0.1  # torch's: running = (1 - m) · running + m · batch statistic (unbiased variance)


def to_jax_layout(name: str, array: np.ndarray, inverse: bool = False) -> np.ndarray:
    """A canonical array in JAX's layout: conv OIHW -> HWIO, dense (out, in) -> (in, out), the rest unchanged;
    ``inverse``: back to the canonical layout."""
    if array.ndim == 4:
        return array.transpose((3, 2, 0, 1) if inverse else (2, 3, 1, 0))
    if array.ndim == 2 and name.endswith(".weight") and "embeddings" not in name:
        return array.T
    return array


def from_jax_layout(name: str, array: np.ndarray) -> np.ndarray:
    """The inverse of to_jax_layout."""
    return to_jax_layout(name, array, inverse=True)


def pytree(op: models.Model, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The params pytree of the op's network from the canonical arrays: every parameter, in JAX's layout."""
    return {name: np.ascontiguousarray(to_jax_layout(name, arrays[name])) for name in op.parameters()}


def apply(jax: Any, op: models.Model, precision: Any) -> Callable[..., Any]:
    """(params, buffers, batch, training) -> (logits, batch statistics) of the op's network; ``batch`` = (images
    NHWC,) or (tokens, segments)."""
    if op.network == "resnet50":
        resnet = resnet50(jax, precision)
        return lambda params, buffers, batch, training: resnet(params, buffers, batch[0], training)
    encoder = bert(jax, precision)
    return lambda params, buffers, batch, training: (encoder(params, *batch), {})


def resnet50(jax: Any, precision: Any) -> Callable[..., Any]:
    """(params, buffers, images NHWC, training) -> (logits, batch statistics {bn prefix: (mean, var, count)})."""
    jnp, lax = jax.numpy, jax.lax

    def conv(params, name, x, stride=1):
        kernel = params[f"{name}.weight"]
        pad = kernel.shape[0] // 2
        return lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad), (pad, pad)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)

    def bn(params, buffers, name, x, training, stats):
        x32 = x.astype(jnp.float32)
        if training:
            mean = jnp.mean(x32, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
            stats[name] = (mean, var, x.shape[0] * x.shape[1] * x.shape[2])
        else:
            mean, var = buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"]
        scale = params[f"{name}.weight"].astype(jnp.float32) * lax.rsqrt(var + models.BN_EPS)
        out = (x32 - mean) * scale + params[f"{name}.bias"].astype(jnp.float32)
        return out.astype(x.dtype)

    def apply(params, buffers, images, training):
        stats: dict[str, Any] = {}
        x = jax.nn.relu(bn(params, buffers, "bn1", conv(params, "conv1", images, 2), training, stats))
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
        for stage, j, _, _, s in _stage_blocks():
            p = f"layer{stage}.{j}"
            y = jax.nn.relu(bn(params, buffers, f"{p}.bn1", conv(params, f"{p}.conv1", x), training, stats))
            y = jax.nn.relu(bn(params, buffers, f"{p}.bn2", conv(params, f"{p}.conv2", y, s), training, stats))
            y = bn(params, buffers, f"{p}.bn3", conv(params, f"{p}.conv3", y), training, stats)
            if j == 0:
                x = bn(params, buffers, f"{p}.downsample.1", conv(params, f"{p}.downsample.0", x, s), training, stats)
            x = jax.nn.relu(y + x)
        pooled = jnp.mean(x, axis=(1, 2))
        return jnp.dot(pooled, params["fc.weight"], precision=precision) + params["fc.bias"], stats

    return apply


def bert(jax: Any, precision: Any) -> Callable[..., Any]:
    """(params, tokens, segments) -> logits."""
    jnp = jax.numpy
    hidden, heads, head = models.BERT_HIDDEN, models.BERT_HEADS, models.BERT_HEAD_DIM

    def dense(params, name, x):
        return jnp.dot(x, params[f"{name}.weight"], precision=precision) + params[f"{name}.bias"]

    def layer_norm(params, name, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        out = (x32 - mean) * jax.lax.rsqrt(var + models.LN_EPS) * params[f"{name}.weight"].astype(jnp.float32)
        return (out + params[f"{name}.bias"].astype(jnp.float32)).astype(x.dtype)

    def apply(params, tokens, segments):
        batch, length = tokens.shape
        x = (params["embeddings.word_embeddings.weight"][tokens]
             + params["embeddings.position_embeddings.weight"][:length][None]
             + params["embeddings.token_type_embeddings.weight"][segments])
        x = layer_norm(params, "embeddings.LayerNorm", x)
        for i in range(models.BERT_LAYERS):
            p = f"encoder.layer.{i}"
            q, k, v = (dense(params, f"{p}.attention.self.{name}", x).reshape(batch, length, heads, head)
                       for name in ("query", "key", "value"))
            context = jax.nn.dot_product_attention(q, k, v).reshape(batch, length, hidden)
            x = layer_norm(params, f"{p}.attention.output.LayerNorm",
                           x + dense(params, f"{p}.attention.output.dense", context))
            h = jax.nn.gelu(dense(params, f"{p}.intermediate.dense", x), approximate=False)
            x = layer_norm(params, f"{p}.output.LayerNorm", x + dense(params, f"{p}.output.dense", h))
        pooled = jnp.tanh(dense(params, "pooler.dense", x[:, 0]))
        return dense(params, "classifier", pooled)

    return apply


def model_step(jax: Any, op: models.Model, variant: Any, arrays: dict[str, np.ndarray], device: Any,
               precision: Any) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The callable of one pass (forward: logits; backward: loss, grad_norms; step: loss, update_norms) of the
    op's network on a params pytree placed on ``device``, compiled ahead of time; and details (``compile_s``).

    forward: eval mode, the logits. backward: training mode, the loss and the gradients. step: one jitted function
    (params, buffers, batch) -> (new params, new buffers, loss) that donates the old params and buffers; each call
    feeds the last call's new ones in, so every call trains on (the running statistics too, as torch's). As in the
    torch backend, only the FIRST call returns the check's outputs (loss and the L2 norm per group of the gradients
    or of w_after - w_before); every later call is the bare pass, so no timed call pays for the norms."""
    from backends.base import Unsupported

    jnp = jax.numpy
    if variant.dtype == "fp16":
        raise Unsupported("JAX model fp16 needs loss scaling, which the plain SGD step does not do; bf16 runs "
                          "(float32 master params, bf16 compute)")
    compute = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[variant.dtype]
    params = {name: jax.device_put(array, device) for name, array in pytree(op, arrays).items()}
    buffers = {name: jax.device_put(arrays[name], device) for name in op.buffers()}
    labels = jax.device_put(arrays["labels"], device)
    network = apply(jax, op, precision)
    if op.network == "resnet50":
        batch: tuple[Any, ...] = (jax.device_put(np.ascontiguousarray(arrays["images"].transpose(0, 2, 3, 1)),
                                                 device),)
    else:
        batch = (jax.device_put(arrays["tokens"], device), jax.device_put(arrays["segments"], device))

    def logits_of(params, buffers, batch, training):  # images in the compute dtype; tokens stay integers
        return network(params, buffers, tuple(x.astype(compute) if x.dtype.kind == "f" else x for x in batch),
                       training)

    def cast(params):  # the float32 master params in the compute dtype (a no-op in fp32)
        return jax.tree.map(lambda array: array.astype(compute), params)

    def loss_of(params, buffers, batch, labels):
        logits, stats = logits_of(cast(params), buffers, batch, True)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), stats

    def norms(tree):
        return jnp.stack([jnp.sqrt(sum(jnp.sum(jnp.square(tree[name].astype(jnp.float32))) for name in group))
                          for group in op.groups().values()])

    def running(buffers, stats):  # torch's update: the unbiased batch variance
        new = dict(buffers)
        for bn, (mean, var, count) in stats.items():
            new[f"{bn}.running_mean"] = (1 - BN_MOMENTUM) * buffers[f"{bn}.running_mean"] + BN_MOMENTUM * mean
            new[f"{bn}.running_var"] = ((1 - BN_MOMENTUM) * buffers[f"{bn}.running_var"]
                                        + BN_MOMENTUM * var * count / max(count - 1, 1))
        return new

    def forward(params, buffers, batch, labels):
        return logits_of(cast(params), buffers, batch, False)[0].astype(jnp.float32)

    def backward(params, buffers, batch, labels):  # the gradients are returned: XLA cannot drop them as dead code
        (loss, _), grads = jax.value_and_grad(loss_of, has_aux=True)(params, buffers, batch, labels)
        return loss, grads

    def step(params, buffers, batch, labels):
        (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(params, buffers, batch, labels)
        new = {name: params[name] - models.LEARNING_RATE * grads[name] for name in params}
        return new, running(buffers, stats), loss

    body = {"forward": forward, "backward": backward, "step": step}[variant.pass_]
    donate = (0, 1) if variant.pass_ == "step" else ()
    start = time.perf_counter()
    compiled = jax.jit(body, donate_argnums=donate).lower(params, buffers, batch, labels).compile()
    details: dict[str, Any] = {"compile_s": time.perf_counter() - start,
                               "implementation": f"jax.lax/jax.nn on a params pytree, compute {variant.dtype}",
                               "parameters": sum(int(np.prod(array.shape)) for array in jax.tree.leaves(params))}
    if variant.pass_ == "forward":
        return (lambda: compiled(params, buffers, batch, labels)), details
    # The check's norms, for the first call only: of the gradients, or of w_after - w_before (exact in float32
    # where the update is small beside the weight), summed in float32 (JAX runs without float64 by default).
    group_norms = jax.jit(norms)
    difference_norms = jax.jit(lambda new, old: norms({name: new[name] - old[name] for name in new}))
    state = [params, buffers]
    first = [True]

    def train() -> Any:
        """The bare pass; on the first call only, also the check's norms (suite.models: what the check sees)."""
        checked, first[0] = first[0], False
        if variant.pass_ == "backward":
            loss, grads = compiled(state[0], state[1], batch, labels)
            return (loss, group_norms(grads)) if checked else (loss, grads)
        before = jax.tree.map(jnp.copy, state[0]) if checked else None  # the step donates (overwrites) state[0]
        state[0], state[1], loss = compiled(state[0], state[1], batch, labels)
        return (loss, difference_norms(state[0], before)) if checked else loss

    return train, details
