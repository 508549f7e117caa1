"""Batched GEMM and attention (issue 14): FLOPs and bytes by hand, the float64 reference against finite differences,
catalog validation naming file, entry and field, the attention entries against their networks' configs, and the
passes attention does not have refused with a reason."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from backends.base import Backend, Unsupported, Variant
from suite.catalog import CatalogError, load_catalog, load_file
from suite.ops import PASSES, Attention, BatchedGemm, Gemm, InvalidDims, op_from_dict, op_to_dict
from suite.reference import CHECK_FLOP_LIMIT, make_inputs, reduced, reference
from tests.gradients import numeric_gradient


# ---------------------------------------------------------------------------------------------------- batched GEMM
def test_bgemm_shapes_flops_and_bytes():
    op = BatchedGemm(batch=4, m=3, n=5, k=7, transpose_a=True)
    assert op.operands == {"x": (4, 7, 3), "w": (4, 7, 5), "dy": (4, 3, 5)} and op.out_shape == (4, 3, 5)
    assert op.flops("forward") == op.flops("backward_data") == op.flops("backward_weight") == 4 * 2 * 3 * 5 * 7
    assert op.flops("backward") == 4 * 4 * 3 * 5 * 7
    assert op.min_bytes("forward", 2) == 2 * 4 * (21 + 35 + 15)  # read A, B; write C, per product
    assert op.min_bytes("backward", 4) == 4 * 4 * (15 + 21 + 35 + 21 + 35)
    assert op.equivalent_gemm() == Gemm(12, 5, 7) and op.equivalent_gemm().flops() == op.flops()
    assert op.describe() == "4× 3×5×7 ᵀA"
    with pytest.raises(InvalidDims) as raised:
        BatchedGemm(0, 1, 1, 1)
    assert raised.value.field == "batch"


def test_bgemm_reference_is_one_gemm_reference_per_product():
    op = BatchedGemm(batch=3, m=4, n=5, k=6, transpose_a=True, transpose_b=True)
    inputs = make_inputs(op)
    got = reference(op, inputs, "backward")
    for b in range(op.batch):
        one = reference(op.product, {name: array[b] for name, array in inputs.items()}, "backward")
        np.testing.assert_allclose(got["dx"][b], one["dx"], rtol=1e-12)
        np.testing.assert_allclose(got["dw"][b], one["dw"], rtol=1e-12)
    forward = reference(op, inputs, "forward")["y"]
    np.testing.assert_allclose(forward[1], inputs["x"][1].T.astype(float) @ inputs["w"][1].T.astype(float), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------- attention
def test_attention_flops_bytes_and_shapes():
    op = Attention(batch=2, heads=8, kv_heads=2, q_len=16, kv_len=16, head_dim=32)
    assert op.operands == {"q": (2, 8, 16, 32), "k": (2, 2, 16, 32), "v": (2, 2, 16, 32), "dy": (2, 8, 16, 32)}
    assert op.flops("forward") == 4 * 2 * 8 * 16 * 16 * 32 == 524_288  # Q·Kᵀ and P·V
    assert op.flops("backward") == 2 * 524_288  # dV, dP, dQ, dK: four products
    q, kv = 2 * 8 * 16 * 32, 2 * 2 * 16 * 32
    assert op.min_bytes("forward", 4) == 4 * (q + 2 * kv + q)
    assert op.min_bytes("backward", 2) == 2 * (q + 2 * kv + q + q + 2 * kv)
    causal = dataclasses.replace(op, causal=True)
    assert causal.flops("forward") == 4 * 2 * 8 * (16 * 17 // 2) * 32  # the unmasked pairs: 136 of 256
    assert causal.describe() == "B2 H8/KV2 16×16 d32 causal"
    assert Attention(1, 4, 3, 5, 8) == Attention(1, 4, 3, 5, 8, kv_heads=4)  # multi-head by default


@pytest.mark.parametrize(("dims", "field"), [
    ({"kv_heads": 3}, "kv_heads"),  # 8 heads are not groups of 3
    ({"causal": True, "kv_len": 12}, "causal"),
    ({"head_dim": 0}, "head_dim"),
])
def test_attention_rejects_impossible_dims(dims, field):
    with pytest.raises(InvalidDims) as raised:
        Attention(**{"batch": 1, "heads": 8, "q_len": 16, "kv_len": 16, "head_dim": 32, **dims})
    assert raised.value.field == field


@pytest.mark.parametrize("pass_", ["backward_data", "backward_weight"])
def test_attention_has_no_data_or_weight_pass(pass_):
    op = Attention(1, 2, 4, 4, 8)
    assert op.passes == ("forward", "backward") and set(op.passes) < set(PASSES)
    with pytest.raises(ValueError, match="dQ, dK and dV together"):
        op.flops(pass_)


@pytest.mark.parametrize("op", [BatchedGemm(2, 3, 4, 5, transpose_b=True),
                                Attention(2, 4, 3, 3, 8, kv_heads=2, causal=True), Attention(1, 2, 3, 5, 4)])
def test_new_ops_round_trip_through_json(op):
    assert op_from_dict(json.loads(json.dumps(op_to_dict(op)))) == op


def _loss(op: Attention, inputs: dict[str, np.ndarray]) -> float:
    """<Y, dY>: its gradient w.r.t. q, k, v is what the backward pass returns."""
    return float((reference(op, inputs, "forward")["y"] * inputs["dy"].astype(np.float64)).sum())


@pytest.mark.parametrize("op", [Attention(1, 4, 3, 3, 5, kv_heads=2, causal=True), Attention(2, 2, 3, 4, 3)])
def test_attention_reference_gradients_match_finite_differences(op):
    inputs = {name: array.astype(np.float64) for name, array in make_inputs(op).items()}
    grads = reference(op, inputs, "backward")
    for name in ("q", "k", "v"):
        numeric = numeric_gradient(lambda values: _loss(op, values), inputs, name)
        np.testing.assert_allclose(grads[f"d{name}"], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_attention_reference_forward_by_hand():
    """One query head by explicit loops: GQA maps query head h to KV head h // group, causal hides later keys."""
    op = Attention(1, 4, 4, 4, 3, kv_heads=2, causal=True)
    inputs = make_inputs(op)
    y = reference(op, inputs, "forward")["y"]
    q, k, v = (inputs[name].astype(np.float64) for name in ("q", "k", "v"))
    head, query = 3, 2  # query head 3 reads KV head 1; query 2 sees keys 0, 1, 2
    scores = np.array([q[0, head, query] @ k[0, 1, key] / np.sqrt(3) for key in range(query + 1)])
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(y[0, head, query], weights @ v[0, 1, : query + 1], rtol=1e-12)


def test_reduced_keeps_per_head_geometry():
    big = Attention(batch=1, heads=32, kv_heads=8, q_len=8192, kv_len=8192, head_dim=128, causal=True)
    small = reduced(big)
    assert small.flops() <= CHECK_FLOP_LIMIT
    assert (small.batch, small.heads, small.kv_heads, small.head_dim, small.causal) == (1, 4, 1, 128, True)
    assert small.q_len == small.kv_len > 100
    products = BatchedGemm(batch=96, m=512, n=512, k=64, transpose_b=True)
    smaller = reduced(products)
    assert smaller.flops() <= CHECK_FLOP_LIMIT and dataclasses.replace(smaller, batch=96, m=512) == products


# --------------------------------------------------------------------------------------------------------- catalog
def _entry(op: str, dims: dict) -> dict:
    return {"id": "bad-one", "op": op, "dims": dims,
            "provenance": {"network": "n", "layer": "l", "source": "s"}}


@pytest.mark.parametrize(("op", "dims", "field", "words"), [
    ("attention", {"batch": 1, "heads": 8, "kv_heads": 3, "q_len": 4, "kv_len": 4, "head_dim": 8}, "dims.kv_heads",
     "multiple of kv_heads"),
    ("attention", {"batch": 1, "heads": 8, "q_len": 4, "kv_len": 6, "head_dim": 8, "causal": True}, "dims.causal",
     "q_len == kv_len"),
    ("attention", {"batch": 1, "heads": 8, "q_len": 4, "kv_len": 4, "head_dim": 8, "causal": "yes"}, "dims.causal",
     "true or false"),
    ("attention", {"batch": 1, "heads": 8, "q_len": 4, "kv_len": 4}, "dims.head_dim", "required"),
    ("attention", {"batch": 1, "heads": 8, "kv_heads": 0, "q_len": 4, "kv_len": 4, "head_dim": 8}, "dims.kv_heads",
     ">= 1"),
    ("attention", {"batch": 1, "heads": 8, "q_len": 4, "kv_len": 4, "head_dim": 8, "seq": 4}, "dims.seq",
     "unknown key"),
    ("bgemm", {"batch": 0, "m": 2, "n": 2, "k": 2}, "dims.batch", ">= 1"),
    ("bgemm", {"batch": 2, "m": 2, "n": 2, "k": 2, "transpose_b": 1}, "dims.transpose_b", "true or false"),
    ("bgemm", {"m": 2, "n": 2, "k": 2}, "dims.batch", "required"),
])
def test_bad_new_op_entries_name_file_entry_and_field(tmp_path, op, dims, field, words):
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump({"cases": [_entry(op, dims)]}), encoding="utf-8")
    with pytest.raises(CatalogError) as raised:
        load_file(path)
    error = raised.value
    assert (error.file, error.entry, error.field) == (str(path), "entry 1 (id 'bad-one')", field)
    assert words in error.problem


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


# Attention geometry from each network's published config (heads, KV heads, head dim = hidden / heads, layers).
CONFIGS = {"BERT-base": (12, 12, 768 // 12, 12), "BERT-large": (16, 16, 1024 // 16, 24),
           "GPT-2 small (124M)": (12, 12, 768 // 12, 12), "Llama-3-8B": (32, 8, 4096 // 32, 32),
           "ViT-B/16": (12, 12, 768 // 12, 12)}
CAUSAL = {"GPT-2 small (124M)", "Llama-3-8B"}


def test_attention_entries_follow_their_networks_configs(catalog):
    attention = [c for c in catalog.cases if c.op.kind == "attention" and "smoke" not in c.tags]
    assert {c.provenance.network for c in attention} == set(CONFIGS)
    for case in attention:
        heads, kv_heads, head_dim, layers = CONFIGS[case.provenance.network]
        op = case.op
        assert (op.heads, op.kv_heads, op.head_dim, case.count) == (heads, kv_heads, head_dim, layers), case.id
        if "decode" in case.tags:  # the first new token after the 512-token prompt: one query over the cache
            assert (op.q_len, op.kv_len, op.causal) == (1, 512 + 1, False), case.id
        else:
            assert op.causal == (case.provenance.network in CAUSAL) and op.q_len == op.kv_len, case.id
        assert {"modern", "attention"} <= set(case.tags), case.id
        (net,) = [t for t in case.tags if t.startswith("net:")]
        assert f"s{op.q_len}" in net or f"b{op.batch}" in net, (case.id, net)
        if "vit" in case.id:
            assert op.q_len == 197  # 196 patches + class token


def test_every_attention_entry_has_its_two_products(catalog):
    """The batched GEMMs Q·Kᵀ and P·V: same network, layers and count, and together the attention's FLOPs over every
    (query, key) pair; outside modern and the net: configurations, so a network counts its attention once."""
    by_id = catalog.by_id()
    attention = [c for c in catalog.cases if c.op.kind == "attention" and "smoke" not in c.tags]
    for case in attention:
        stem = case.id.removesuffix("-attention")
        qk, pv = by_id[f"{stem}-attn-qk"], by_id[f"{stem}-attn-pv"]
        op, dense = case.op, dataclasses.replace(case.op, causal=False)
        assert qk.op == BatchedGemm(op.batch * op.kv_heads, op.group * op.q_len, op.kv_len, op.head_dim,
                                    transpose_b=True), qk.id
        assert pv.op == BatchedGemm(op.batch * op.kv_heads, op.group * op.q_len, op.head_dim, op.kv_len), pv.id
        assert qk.op.flops() + pv.op.flops() == dense.flops()
        for product in (qk, pv):
            assert product.count == case.count and product.provenance.network == case.provenance.network
            assert "modern" not in product.tags and not [t for t in product.tags if t.startswith("net:")]
    products = {c.id for c in catalog.subset("bgemm")}
    assert len(products) == 2 * len(attention) and products <= {c.id for c in catalog.subset("full")}
    assert {c.id for c in catalog.subset("attention")} == {c.id for c in attention}


# ------------------------------------------------------------------------------------------------------- backends
class _NoFramework(Backend):
    """Only resolve() is exercised: the framework-free refusal of what an op or backend lacks."""

    name = "fake"
    modes = ("eager",)
    layouts = {"gemm": ("row-major",), "attention": ("BHLD",)}
    versions = devices = configure = tensor = step = sync = to_numpy = None  # type: ignore[assignment]


def test_resolve_refuses_missing_passes_and_kinds_with_a_reason():
    backend = _NoFramework()
    attention = Attention(1, 2, 4, 4, 8)
    assert backend.resolve(attention, Variant("backward")).layout == "BHLD"
    with pytest.raises(Unsupported, match="no weight operand"):
        backend.resolve(attention, Variant("backward_data"))
    with pytest.raises(Unsupported, match="fake has no bgemm op"):
        backend.resolve(BatchedGemm(2, 2, 2, 2), Variant("forward"))
