"""Whole models in TensorFlow (Keras layers, backends/tf_models.py) and JAX (a params pytree, backends/jax_models.py):
their parameter counts, counted from each framework's own model, and agreement with the float64 reference
(suite/model_reference.py) at the check's reduced size within suite.models' tolerances; the step trains on."""

from __future__ import annotations

import numpy as np
import pytest

from suite.models import LEARNING_RATE, PARAMETER_COUNT, Model
from suite.reference import compare, expected, make_inputs, reduced
from suite.variant import Settings, Variant

SMALL = {"resnet50": 32, "bert_base": 8}  # the smallest size of each network: the parameters do not depend on it


@pytest.fixture(scope="module")
def tf_backend():
    pytest.importorskip("tensorflow")
    from backends.tf_backend import TensorFlowBackend

    backend = TensorFlowBackend()
    backend.configure(Settings())
    return backend


@pytest.fixture(scope="module")
def jax_backend():
    pytest.importorskip("jax")
    from backends.jax_backend import JaxBackend

    backend = JaxBackend()
    backend.configure(Settings())
    return backend


@pytest.mark.parametrize("network", ["resnet50", "bert_base"])
def test_keras_model_has_the_published_parameter_count(tf_backend, network):
    """Keras' own count of the built model's trainable weights; its variables are exactly the canonical names."""
    import keras

    from backends import tf_models

    op = Model(network, 1, SMALL[network])
    model, loader = tf_models.build(keras, op, keras.DTypePolicy("float32"))
    batch = {name: np.zeros(shape, dtype=np.float32 if name == "images" else np.int64)
             for name, shape in op.batch_shapes().items()}
    inputs = (batch["images"].transpose(0, 2, 3, 1),) if network == "resnet50" else (batch["tokens"],
                                                                                         batch["segments"])
    assert tuple(model(*inputs).shape) == (1, op.classes)
    assert tf_models.trainable_count(model) == PARAMETER_COUNT[network]
    assert set(loader.entries) == set(op.parameters()) | set(op.buffers())
    assert len(model.non_trainable_weights) == len(op.buffers())  # BN running statistics (none in BERT)


@pytest.mark.parametrize("network", ["resnet50", "bert_base"])
def test_jax_pytree_has_the_published_parameter_count_and_uses_every_leaf(jax_backend, network):
    """The params pytree's leaves sum to the count, and the traced network reads every one of them."""
    import jax

    from backends import jax_models

    op = Model(network, 1, SMALL[network])
    arrays = {name: np.broadcast_to(np.float32(0), shape) for name, shape in op.operands.items()}  # no memory
    params = {name: jax.ShapeDtypeStruct(array.shape, np.float32)
              for name, array in jax_models.pytree(op, arrays).items()}
    buffers = {name: jax.ShapeDtypeStruct(shape, np.float32) for name, shape in op.buffers().items()}
    assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)) == PARAMETER_COUNT[network]
    if network == "resnet50":
        batch = (jax.ShapeDtypeStruct((1, op.size, op.size, 3), np.float32),)
    else:
        batch = (jax.ShapeDtypeStruct((1, op.size), np.int32),) * 2
    network_fn = jax_models.apply(jax, op, jax.lax.Precision.HIGHEST)
    traced = jax.make_jaxpr(lambda p, b: network_fn(p, buffers, b, True)[0])(params, batch)
    assert traced.out_avals[0].shape == (1, op.classes)
    used = {id(var) for eqn in traced.jaxpr.eqns for var in eqn.invars}
    leaves = traced.jaxpr.invars[:len(params)]  # the params' leaves come first, in sorted key order
    unused = [name for name, var in zip(sorted(params), leaves, strict=True) if id(var) not in used]
    assert not unused


# (backend, mode, pass): every pass in each backend's default mode, the step in the others (each compile of a
# reduced ResNet-50 step takes up to a minute on a 2-core CPU).
CASES = [("tensorflow", "function", "forward"), ("tensorflow", "function", "backward"),
         ("tensorflow", "function", "step"), ("tensorflow", "eager", "step"), ("tensorflow", "xla", "step"),
         ("jax", "jit", "forward"), ("jax", "jit", "backward"), ("jax", "jit", "step")]


@pytest.mark.slow
@pytest.mark.parametrize("network", ["resnet50", "bert_base"])
@pytest.mark.parametrize(("backend_name", "mode", "pass_"), CASES)
def test_model_agrees_with_float64(request, network, backend_name, mode, pass_):
    """The first call's outputs (logits; loss and gradient or update norms per group) at the check's reduced size
    against the float64 reference, within the network's fp32 tolerances."""
    backend = request.getfixturevalue("tf_backend" if backend_name == "tensorflow" else "jax_backend")
    op = reduced(Model(network, 8))
    prepared = backend.prepare(op, Variant(pass_, "fp32", mode, None), make_inputs(op, 0))
    outputs = prepared.outputs()
    record = compare(outputs, expected(op, 0, pass_, "fp32"), "fp32", "strict", op)
    assert record["status"] == "pass", record
    assert prepared.details["parameters"] == PARAMETER_COUNT[network]
    if pass_ != "forward":
        assert np.all(outputs[f"{'grad' if pass_ == 'backward' else 'update'}_norms"] > 0)  # every group learns


@pytest.mark.slow
def test_keras_model_in_float64_is_exact(tf_backend):
    """The Keras ResNet-50 built in float64 differentiates exactly as the float64 reference: its float32 error is
    rounding in TensorFlow's kernels, not a difference of definition (padding, batch norm, pooling, loss)."""
    import keras

    from backends import tf_models

    tf = tf_backend.tf
    op = reduced(Model("resnet50", 8))
    arrays = {name: array.astype(np.float64) if array.dtype == np.float32 else array
              for name, array in make_inputs(op, 0).items()}
    model, loader = tf_models.build(keras, op, keras.DTypePolicy("float64"))
    images = tf.constant(arrays["images"].transpose(0, 2, 3, 1))
    model(images)
    loader.load(arrays)
    variables = [loader.variable(name) for name in op.parameters()]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(arrays["labels"],
                                                                             model(images, training=True)))
    grads = dict(zip(op.parameters(), tape.gradient(loss, variables), strict=True))
    norms = np.array([np.sqrt(sum(np.sum(grads[name].numpy() ** 2) for name in names))
                      for names in op.groups().values()])
    reference = expected(op, 0, "backward", "fp32")
    assert float(loss) == pytest.approx(float(reference["loss"]), rel=1e-12)
    np.testing.assert_allclose(norms, reference["grad_norms"], rtol=1e-8)


def first_loss(out) -> float:
    """The loss of a call's outputs: the first call returns (loss, norms), later ones the bare pass's."""
    return float(np.asarray(out[0] if isinstance(out, tuple) else out))


@pytest.mark.slow
@pytest.mark.parametrize(("backend_name", "mode"), [("tensorflow", "function"), ("tensorflow", "eager"),
                                                    ("tensorflow", "xla"), ("jax", "jit")])
def test_step_trains_on_and_backward_does_not(request, backend_name, mode):
    """Each step call updates the weights in place (TF assign_sub; JAX's donated params fed into the next call):
    the same batch's loss falls call after call, and the first update is the learning rate times the gradient; a
    backward call changes nothing, its loss stays."""
    backend = request.getfixturevalue("tf_backend" if backend_name == "tensorflow" else "jax_backend")
    op = Model("bert_base", 2, 8)
    arrays = make_inputs(op, 0)
    losses, norms = {}, {}
    for pass_ in ("backward", "step"):
        variant = backend.resolve(op, Variant(pass_, "fp32", mode, None))
        call, _ = backend.step(op, variant, {name: backend.tensor(a, name, op, variant) for name, a in arrays.items()})
        first = call()  # the check's call: (loss, norms per group)
        norms[pass_] = np.asarray(first[1])
        losses[pass_] = [first_loss(first), first_loss(call()), first_loss(call())]
    first, second, third = losses["step"]
    assert third < second < first, losses
    assert first == pytest.approx(losses["backward"][0], rel=1e-6)
    assert losses["backward"][0] == losses["backward"][1] == losses["backward"][2], losses
    np.testing.assert_allclose(norms["step"], LEARNING_RATE * norms["backward"], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("backend_name", "mode"), [("tensorflow", "function"), ("jax", "jit")])
def test_bf16_mixed_precision(request, backend_name, mode):
    """bf16 as each framework recommends it (Keras mixed_bfloat16; JAX bf16 compute on float32 master params)
    passes the bf16 check of the step; fp16 is refused with the reason (no loss scaling)."""
    from backends.base import Unsupported

    backend = request.getfixturevalue("tf_backend" if backend_name == "tensorflow" else "jax_backend")
    op = Model("bert_base", 2, 8)
    prepared = backend.prepare(op, Variant("step", "bf16", mode, None), make_inputs(op, 0))
    record = compare(prepared.outputs(), expected(op, 0, "step", "bf16"), "bf16", "strict", op)
    assert record["status"] == "pass", record
    assert "bf16" in prepared.details["implementation"] or "bfloat16" in prepared.details["implementation"]
    with pytest.raises(Unsupported, match="loss scaling"):
        backend.prepare(op, Variant("step", "fp16", mode, None), make_inputs(op, 0))
