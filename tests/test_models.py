"""Whole models (suite/models.py) and their torch build (backends/torch_models.py): the definition, FLOPs against the
catalog's layer sets, seeded inputs, planning of the step pass, per-output tolerances; torch's networks against a
float64 run of the same modules, the step's training and its check on the first call.

The torch float64 twin is the same nn.Module in double precision on the same weights and batch: fast, and exactly
the semantics (suite.model_reference's NumPy float64 reference is checked against the same twin in its own tests).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from suite import models
from suite.catalog import load_catalog, network_sets
from suite.cli import main
from suite.models import LEARNING_RATE, Model
from suite.ops import Gemm
from suite.reference import compare, make_inputs, reduced, round_to
from suite.runner import plan

RESNET = Model("resnet50", 2, 64)  # the size the check uses: layer4 at 2×2
BERT = Model("bert_base", 1, 8)
CATALOG = load_catalog()


# ---------------------------------------------------------------------------------------------- the definition
@pytest.mark.parametrize(("network", "count"), [("resnet50", 25_557_032), ("bert_base", 109_483_778)])
def test_parameter_counts_of_the_definition(network, count):
    op = Model(network, 1)
    assert op.parameter_count == count == models.PARAMETER_COUNT[network]
    assert op.size == models.DEFAULT_SIZE[network]


@pytest.mark.parametrize("op", [RESNET, BERT], ids=lambda op: op.network)
def test_groups_partition_the_parameters_in_order(op):
    grouped = [name for names in op.groups().values() for name in names]
    assert grouped == list(op.parameters())  # every parameter once, definition order
    assert all(op.groups().values())


def test_canonical_names_and_shapes():
    resnet, bert = RESNET.parameters(), BERT.parameters()
    assert resnet["conv1.weight"] == (64, 3, 7, 7) and resnet["fc.weight"] == (1000, 2048)
    assert resnet["layer2.0.conv2.weight"] == (128, 128, 3, 3) and resnet["layer4.0.downsample.0.weight"] == (
        2048, 1024, 1, 1)
    assert "layer2.1.downsample.0.weight" not in resnet
    assert len(RESNET.buffers()) == 2 * sum(1 for n in resnet if n.endswith(".bias") and n != "fc.bias")
    assert bert["encoder.layer.11.intermediate.dense.weight"] == (3072, 768)
    assert bert["encoder.layer.0.output.dense.weight"] == (768, 3072) and bert["classifier.weight"] == (2, 768)
    assert BERT.buffers() == {}


@pytest.mark.parametrize(("case_id", "layer_set", "extra"), [
    ("model-resnet50-train-b8", "resnet50-train-b8", ()),
    ("model-bert-base-train-b8s128", "bert-base-train-b8s128",
     (Gemm(8, 768, 768), Gemm(8, 2, 768))),  # the pooler and the classifier: not in the catalog's layer set
])
def test_flops_are_the_sum_of_the_catalog_layer_set(case_id, layer_set, extra):
    cases = CATALOG.by_id()
    model = cases[case_id]
    assert f"whole:{layer_set}" in model.tags and not {"train", "inference"} & set(model.tags)
    found = {s.set: s for s in network_sets(CATALOG.cases)}[layer_set]
    forward = training = 0
    for layer in found.layers:
        op, count = cases[layer.case].op, layer.count
        forward += count * op.flops("forward")
        if layer.weightless:
            training += count * op.flops("backward")
        else:
            training += count * (op.flops("backward_weight") + (0 if layer.first_layer else op.flops("backward_data")))
    forward += sum(op.flops("forward") for op in extra)
    training += sum(op.flops("backward") for op in extra)
    assert model.op.flops("forward") == forward
    assert model.op.flops("backward") == model.op.flops("step") == forward + training


def test_seeded_weights_are_canonical_and_shared_by_every_size():
    weights = models.initial_weights(RESNET, 0)
    assert set(weights) == set(RESNET.parameters()) | set(RESNET.buffers())
    assert all(weights[n].shape == s and weights[n].dtype == np.float32 for n, s in RESNET.operands.items()
               if n in weights)
    assert all((weights[n] > 0).all() for n in RESNET.buffers() if n.endswith("running_var"))
    again = models.initial_weights(Model("resnet50", 8, 224), 0)  # the network and seed alone decide
    assert all(np.array_equal(weights[n], again[n]) for n in weights)
    other = models.initial_weights(RESNET, 1)
    assert not np.array_equal(weights["conv1.weight"], other["conv1.weight"])


def test_synthetic_batches():
    images = models.synthetic_batch(RESNET)
    assert images["images"].shape == (2, 3, 64, 64) and images["images"].dtype == np.float32
    assert images["labels"].dtype == np.int64 and ((images["labels"] >= 0) & (images["labels"] < 1000)).all()
    text = models.synthetic_batch(Model("bert_base", 4, 64))
    assert text["tokens"].shape == text["segments"].shape == (4, 64)
    assert text["tokens"].max() < models.BERT_VOCAB and set(np.unique(text["segments"])) <= {0, 1}
    assert set(np.unique(text["labels"])) <= {0, 1}
    assert np.array_equal(models.synthetic_batch(RESNET)["images"], images["images"])


def test_make_inputs_and_the_checked_size():
    inputs = make_inputs(BERT)
    assert set(inputs) == set(BERT.parameters()) | {"tokens", "segments", "labels"}
    assert reduced(Model("resnet50", 8)) == Model("resnet50", 2, 64)
    assert reduced(Model("bert_base", 8)) == Model("bert_base", 2, 32)
    assert reduced(BERT) == BERT  # never larger than the case
    full, small = make_inputs(Model("resnet50", 8)), make_inputs(reduced(Model("resnet50", 8)))
    names = list(Model("resnet50", 8).parameters())
    assert all(full[name] is small[name] for name in names)  # drawn once: the timed model and its check share them
    assert not full[names[0]].flags.writeable
    np.testing.assert_array_equal(full[names[0]], models.initial_weights(Model("resnet50", 1))[names[0]])
    assert small["images"].shape == (2, 3, 64, 64)


def test_integer_inputs_are_not_rounded():
    tokens = np.array([30521, 257], dtype=np.int64)
    assert round_to(tokens, "bf16").tolist() == [30521, 257]  # bf16 would make 30521 into 30464


def test_bad_dims_are_refused():
    for dims, field in [({"network": "vgg", "batch": 1}, "network"), ({"network": "bert_base", "batch": 1,
                                                                        "size": 513}, "size"),
                        ({"network": "resnet50", "batch": 0}, "batch")]:
        with pytest.raises(models.InvalidDims) as raised:
            Model(**dims)
        assert raised.value.field == field


def test_tolerance_is_per_network_and_output():
    expected = {"loss": np.float64(2.0), "grad_norms": np.ones(6)}
    off = {"loss": np.float64(2.0 * (1 + 5e-5)), "grad_norms": np.full(6, 1 + 2e-3)}
    assert compare(off, expected, "fp32", "strict", Model("resnet50", 1))["status"] == "pass"
    assert compare(off, expected, "fp32", "strict", Model("bert_base", 1))["status"] == "fail"
    assert compare(off, expected, "fp32", "strict")["status"] == "fail"  # a layer's 2e-5
    record = compare(off, expected, "fp32", "strict", Model("resnet50", 1))
    assert record["tolerances"] == {"loss": 1e-4, "grad_norms": 1e-2} and record["tolerance"] == 1e-2


# ---------------------------------------------------------------------------------------------- planning
def test_a_pass_an_op_lacks_is_not_planned():
    cases = CATALOG.by_id()
    picked = [cases["model-resnet50-train-b8"], cases["smoke-gemm-64"]]
    tasks = plan(picked, ["torch"], ["cpu"], ["fp32"], ["forward", "backward_data", "step"])
    assert {(t.case.id, t.variant.pass_) for t in tasks} == {
        ("model-resnet50-train-b8", "forward"), ("model-resnet50-train-b8", "step"),
        ("smoke-gemm-64", "forward"), ("smoke-gemm-64", "backward_data")}


def test_a_layout_is_planned_only_where_it_makes_a_distinct_variant():
    """--layout all plans ResNet-50 in NCHW and channels_last, BERT-base (no image activations) once."""
    cases = CATALOG.by_id()
    picked = [cases["model-resnet50-train-b8"], cases["model-bert-base-train-b8s128"]]
    tasks = plan(picked, ["torch"], ["cpu"], ["fp32"], ["step"], layouts=["all"])
    assert sorted((t.case.id, t.variant.layout) for t in tasks) == sorted([
        ("model-bert-base-train-b8s128", "NCHW"), ("model-resnet50-train-b8", "NCHW"),
        ("model-resnet50-train-b8", "channels_last")])


def test_a_pass_no_selected_case_has_is_a_usage_error(capsys):
    assert main(["run", "--id", "smoke-gemm-64", "--pass", "step", "--backend", "torch", "-o", "unused.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "no selected case has --pass step" in err and "gemm: forward" in err and "Traceback" not in err


def test_resolve_names_the_passes_a_kind_has():
    backends = pytest.importorskip("backends.torch_backend")
    from backends.base import Unsupported, Variant

    backend = backends.TorchBackend.__new__(backends.TorchBackend)  # resolve() needs no framework
    with pytest.raises(Unsupported, match=r"forward.*backward.*step"):
        backend.resolve(RESNET, Variant("backward_data"))
    with pytest.raises(Unsupported, match="gemm has no pass 'step'"):
        backend.resolve(Gemm(2, 2, 2), Variant("step"))


# ---------------------------------------------------------------------------------------------- torch
@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    from backends.base import Settings
    from backends.torch_backend import TorchBackend

    backend = TorchBackend(Settings(threads=1))
    backend.configure(Settings(threads=1))
    return backend


@pytest.mark.parametrize(("network", "count"), [("resnet50", 25_557_032), ("bert_base", 109_483_778)])
def test_torch_parameter_counts(network, count):
    torch = pytest.importorskip("torch")
    from backends import torch_models

    op = Model(network, 1)
    with torch.device("meta"):  # shapes only: no 110M-parameter initialization
        module = torch_models.build(op)
    assert sum(p.numel() for p in module.parameters()) == count
    assert {n: tuple(p.shape) for n, p in module.named_parameters()} == op.parameters()


def float64_twin(op: Model, arrays: dict[str, np.ndarray], pass_: str) -> dict[str, np.ndarray]:
    """The same torch module in float64: logits, or the loss and the gradient (update) norms per group."""
    import torch

    from backends import torch_models

    module = torch_models.build(op)
    torch_models.load(module, op, arrays)
    module = module.double().train(pass_ != "forward")
    xs = ([torch.from_numpy(arrays["images"]).double()] if op.network == "resnet50"
          else [torch.from_numpy(arrays["tokens"]), torch.from_numpy(arrays["segments"])])
    if pass_ == "forward":
        with torch.no_grad():
            return {"logits": module(*xs).numpy()}
    loss = torch.nn.functional.cross_entropy(module(*xs), torch.from_numpy(arrays["labels"]))
    loss.backward()
    params = dict(module.named_parameters())
    norms = np.array([math.sqrt(sum(float((params[n].grad ** 2).sum()) for n in names))
                      for names in op.groups().values()])
    return {"loss": loss.detach().numpy(),
            "grad_norms" if pass_ == "backward" else "update_norms": norms * (LEARNING_RATE if pass_ == "step" else 1)}


def checked(backend, op: Model, pass_: str, layout: str = "NCHW", arrays=None, dtype: str = "fp32") -> dict:
    from backends.base import Variant

    arrays = arrays if arrays is not None else make_inputs(op)
    outputs = backend.prepare(op, Variant(pass_, dtype, layout=layout), arrays).outputs()
    return compare(outputs, float64_twin(op, make_inputs(op), pass_), dtype, "strict", op)


@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
@pytest.mark.parametrize("pass_", ["forward", "backward", "step"])
def test_torch_resnet_agrees_with_float64(torch_backend, pass_, layout):
    result = checked(torch_backend, RESNET, pass_, layout)
    assert result["status"] == "pass", result


@pytest.mark.parametrize("pass_", ["forward", "step"])
def test_torch_bert_agrees_with_float64(torch_backend, pass_):
    result = checked(torch_backend, BERT, pass_)
    assert result["status"] == "pass", result


def test_the_check_fails_on_swapped_weights(torch_backend):
    arrays = make_inputs(RESNET)
    wrong = {**arrays, "layer3.1.bn2.weight": arrays["layer3.1.bn2.bias"], "layer3.1.bn2.bias": arrays[
        "layer3.1.bn2.weight"]}  # γ and β of one batch norm swapped in the conversion
    for pass_ in ("forward", "step"):
        result = checked(torch_backend, RESNET, pass_, arrays=wrong)
        assert result["status"] == "fail" and max(result["errors"].values()) > 0.01, result


def test_the_step_trains_on_and_the_check_sees_its_first_call(torch_backend):
    from backends.base import Variant

    arrays = make_inputs(RESNET)
    prepared = torch_backend.prepare(RESNET, Variant("step"), arrays)
    first = prepared.outputs()
    prepared.run_block(2)  # timed calls: real training steps
    assert prepared.outputs() is first  # the check's numbers are the first call's, from the initial weights
    train, _ = torch_backend.step(RESNET, Variant("step", "fp32", "eager", "NCHW"), arrays)
    losses = [float(train()[0]), float(train()), float(train())]
    assert losses[0] == pytest.approx(float(first["loss"]), rel=1e-6)
    assert len(set(losses)) == 3  # the weights changed every call
    same, _ = torch_backend.step(RESNET, Variant("backward", "fp32", "eager", "NCHW"), arrays)
    assert float(same()[0]) == pytest.approx(float(same()), rel=1e-6)  # backward leaves the weights


def test_the_update_is_the_learning_rate_times_the_gradient(torch_backend):
    from backends.base import Variant

    arrays = make_inputs(BERT)
    grads = torch_backend.prepare(BERT, Variant("backward"), arrays).outputs()["grad_norms"]
    updates = torch_backend.prepare(BERT, Variant("step"), arrays).outputs()["update_norms"]
    np.testing.assert_allclose(updates, LEARNING_RATE * grads, rtol=1e-4)


def test_bert_has_no_channels_last(torch_backend):
    from backends.base import Unsupported, Variant

    with pytest.raises(Unsupported, match="no image activations"):
        torch_backend.prepare(BERT, Variant("forward", layout="channels_last"), make_inputs(BERT))


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_bf16_autocast_on_the_cpu(torch_backend, pass_):
    result = checked(torch_backend, RESNET, pass_, dtype="bf16")
    assert result["status"] == "pass", result


def test_reduced_precision_tolerances():
    resnet, bert = Model("resnet50", 1), Model("bert_base", 1)
    off = {"loss": np.float64(1 + 4e-2), "grad_norms": np.full(6, 1 + 8e-2)}
    exact = {"loss": np.float64(1.0), "grad_norms": np.ones(6)}
    assert compare(off, exact, "bf16", "strict", resnet)["status"] == "pass"
    assert compare(off, exact, "bf16", "strict", bert)["status"] == "fail"  # bf16's own 3e-2
    assert compare(off, exact, "fp32", "tf32", resnet)["status"] == "pass"
    assert compare(off, exact, "fp32", "strict", resnet)["status"] == "fail"
