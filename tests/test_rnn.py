"""Recurrent layers (issue 14): FLOPs and bytes by hand, the float64 reference against finite differences and a
hand-unrolled step, catalog validation naming file, entry and field, and deepbench_rnn.yaml against DeepBench's CSV
row by row. No framework imports (the backends are checked on the smoke cases by test_backend_contract)."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import yaml

from suite.catalog import CatalogError, load_catalog, load_file
from suite.ops import LAYER_PASSES, InvalidDims, Rnn, op_from_dict, op_to_dict
from suite.reference import CHECK_FLOP_LIMIT, make_inputs, reduced, reference
from tests.gradients import numeric_gradient
from tests.test_catalog_data import DATA_DIR, DEEPBENCH_SETS

CELLS = ("rnn_relu", "rnn_tanh", "lstm", "gru")
needs_rnn_csv = pytest.mark.skipif(not (DATA_DIR / "deepbench_rnn.csv").exists(),
                                   reason=f"deepbench_rnn.csv not found in {DATA_DIR} (set OPBENCH_DEEPBENCH_DATA)")


# ------------------------------------------------------------------------------------------------------------- the op
def test_rnn_operands_outputs_and_passes():
    op = Rnn("gru", hidden=5, batch=2, timesteps=7, input_size=3)
    assert op.operands == {"x": (2, 7, 3), "w_ih": (15, 3), "w_hh": (15, 5), "b_ih": (15,), "b_hh": (15,),
                           "dy": (2, 7, 5)}
    assert op.out_shape == (2, 7, 5) and op.input_elements == 2 * 7 * 3
    assert op.passes == LAYER_PASSES and op.inputs == ("x", "w_ih", "w_hh", "b_ih", "b_hh")  # biases: inputs, never wrt
    assert [op.wrt(p) for p in LAYER_PASSES] == [(), ("x",), ("w_ih", "w_hh"), ("x", "w_ih", "w_hh")]
    assert [op.outputs(p) for p in LAYER_PASSES] == [("y",), ("dx",), ("dw_ih", "dw_hh"), ("dx", "dw_ih", "dw_hh")]
    assert op.describe() == "gru H5 I3 B2 T7"
    assert Rnn("lstm", 8, 1, 2) == Rnn("lstm", 8, 1, 2, input_size=8)  # DeepBench: input of hidden features
    assert Rnn("lstm", 8, 1, 2).describe() == "lstm H8 B1 T2"


def test_rnn_flops_by_hand():
    # LSTM, hidden 1024, batch 128, 25 steps (DeepBench training_set): 4 gates, input size = hidden
    op = Rnn("lstm", hidden=1024, batch=128, timesteps=25)
    recurrence = 2 * 4 * 1024 * 1024 * 128 * 25  # DeepBench's own count: the h·W_hhᵀ GEMMs alone
    assert recurrence == 26_843_545_600
    assert op.flops("forward") == 2 * recurrence  # plus the input projection x·W_ihᵀ of the same size
    assert op.flops("backward_data") == op.flops("forward")  # dh chain + dx
    assert op.flops("backward_weight") == 3 * recurrence  # dh chain + dW_ih + dW_hh
    assert op.flops("backward") == 4 * recurrence == 2 * op.flops("forward")
    # a vanilla cell has one gate; an input unlike the hidden size counts its own projection
    small = Rnn("rnn_tanh", hidden=4, batch=3, timesteps=5, input_size=6)
    assert small.flops() == 5 * (2 * 4 * 6 * 3 + 2 * 4 * 4 * 3) == 1200
    assert Rnn("gru", 4, 3, 5, input_size=6).flops() == 3 * 1200


def test_rnn_min_bytes_by_hand():
    op = Rnn("rnn_relu", hidden=4, batch=2, timesteps=3, input_size=5)
    x, y, w_ih, w_hh, b = 2 * 3 * 5, 2 * 3 * 4, 4 * 5, 4 * 4, 4
    assert op.min_bytes("forward", 4) == 4 * (x + w_ih + w_hh + 2 * b + y)
    assert op.min_bytes("backward_data", 2) == 2 * (2 * y + w_ih + w_hh + x)
    assert op.min_bytes("backward", 4) == 4 * (2 * y + 2 * (x + w_ih + w_hh))


@pytest.mark.parametrize(("dims", "field"), [({"cell": "elman"}, "cell"), ({"hidden": 0}, "hidden"),
                                             ({"timesteps": 0}, "timesteps"), ({"input_size": 0}, "input_size")])
def test_rnn_rejects_impossible_dims(dims, field):
    with pytest.raises(InvalidDims) as raised:
        Rnn(**{"cell": "lstm", "hidden": 4, "batch": 1, "timesteps": 2, **dims})
    assert raised.value.field == field


def test_rnn_round_trips_through_json():
    op = Rnn("gru", 6, 2, 3, input_size=4)
    assert op_from_dict(json.loads(json.dumps(op_to_dict(op)))) == op


# ------------------------------------------------------------------------------------------------------ the reference
def _loss(op: Rnn, inputs: dict[str, np.ndarray]) -> float:
    """<Y, dY>: its gradient w.r.t. x, w_ih, w_hh is what the backward pass returns."""
    return float((reference(op, inputs, "forward")["y"] * inputs["dy"]).sum())


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_reference_gradients_match_finite_differences(cell):
    op = Rnn(cell, hidden=3, batch=2, timesteps=4, input_size=2)
    inputs = {name: array.astype(np.float64) for name, array in make_inputs(op).items()}
    grads = reference(op, inputs, "backward")
    assert set(grads) == {"dx", "dw_ih", "dw_hh"}
    for name in op.wrt("backward"):
        numeric = numeric_gradient(lambda values: _loss(op, values), inputs, name)
        assert np.abs(numeric).max() > 1e-3, (cell, name)  # the gradient is not trivially zero
        np.testing.assert_allclose(grads[f"d{name}"], numeric, rtol=1e-6, atol=1e-8, err_msg=f"{cell} {name}")


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_rnn_reference_two_steps_by_hand():
    """Each cell's second state written out from torch's documented equations, gates in torch's order, with both
    bias vectors (GRU's b_hn inside the reset gate's product)."""
    for cell in CELLS:
        op = Rnn(cell, hidden=3, batch=2, timesteps=2, input_size=4)
        inputs = {name: array.astype(np.float64) for name, array in make_inputs(op).items()}
        x, w_ih, w_hh = inputs["x"], inputs["w_ih"], inputs["w_hh"]
        h, c = np.zeros((2, 3)), np.zeros((2, 3))
        for t in range(2):
            a, r = x[:, t] @ w_ih.T + inputs["b_ih"], h @ w_hh.T + inputs["b_hh"]
            if cell == "lstm":  # i, f, g, o
                i, f, g, o = _sigmoid(a[:, :3] + r[:, :3]), _sigmoid(a[:, 3:6] + r[:, 3:6]), \
                    np.tanh(a[:, 6:9] + r[:, 6:9]), _sigmoid(a[:, 9:] + r[:, 9:])
                c = f * c + i * g
                h = o * np.tanh(c)
            elif cell == "gru":  # r, z, n; the reset gate scales the recurrent candidate (reset_after)
                reset, update = _sigmoid(a[:, :3] + r[:, :3]), _sigmoid(a[:, 3:6] + r[:, 3:6])
                h = (1 - update) * np.tanh(a[:, 6:] + reset * r[:, 6:]) + update * h
            else:
                h = np.maximum(a + r, 0) if cell == "rnn_relu" else np.tanh(a + r)
        y = reference(op, inputs, "forward")["y"]
        np.testing.assert_allclose(y[:, 1], h, rtol=1e-12, err_msg=cell)


def test_rnn_inputs_scale_weights_by_fan_in():
    op = Rnn("lstm", hidden=256, batch=4, timesteps=3, input_size=64)
    inputs = make_inputs(op)
    assert all(a.dtype == np.float32 for a in inputs.values())
    assert np.std(inputs["w_ih"]) == pytest.approx(64 ** -0.5, rel=0.05)
    assert np.std(inputs["w_hh"]) == pytest.approx(256 ** -0.5, rel=0.05)
    assert np.std(inputs["x"]) == pytest.approx(1, rel=0.05)
    assert np.std(np.concatenate([inputs["b_ih"], inputs["b_hh"]])) == pytest.approx(256 ** -0.5, rel=0.1)
    # 1500 ReLU steps stay finite and unsaturated at that scale
    relu = Rnn("rnn_relu", hidden=64, batch=1, timesteps=1500)
    y = reference(relu, make_inputs(relu), "forward")["y"]
    assert np.isfinite(y).all() and 0.1 < np.abs(y[0, -100:]).mean() < 10


def test_reduced_keeps_the_hidden_size():
    big = Rnn("gru", hidden=2816, batch=32, timesteps=1500)
    small = reduced(big)
    assert small.flops() <= CHECK_FLOP_LIMIT
    assert (small.cell, small.hidden, small.input_size, small.batch) == ("gru", 2816, 2816, 1)
    assert small.timesteps >= 1
    mid = Rnn("lstm", hidden=512, batch=64, timesteps=25)
    assert reduced(mid).batch == 1 and reduced(mid).timesteps == 25  # one sample already fits
    tiny = Rnn("lstm", hidden=4, batch=2, timesteps=3)
    assert reduced(tiny) is tiny


# --------------------------------------------------------------------------------------------------------- catalog
def _write(tmp_path, dims: dict):
    entry = {"id": "bad-rnn", "op": "rnn", "dims": dims, "provenance": {"network": "n", "layer": "l", "source": "s"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"cases": [entry]}))
    return path


@pytest.mark.parametrize(("dims", "field", "words"), [
    ({"hidden": 8, "batch": 1, "timesteps": 2}, "dims.cell", "is required: one of rnn_relu, rnn_tanh, lstm, gru"),
    ({"cell": "lstn", "hidden": 8, "batch": 1, "timesteps": 2}, "dims.cell",
     "unknown cell 'lstn' (did you mean 'lstm'?)"),
    ({"cell": "vanilla", "hidden": 8, "batch": 1, "timesteps": 2}, "dims.cell", "known: rnn_relu, rnn_tanh, lstm, gru"),
    ({"cell": "gru", "batch": 1, "timesteps": 2}, "dims.hidden", "is required"),
    ({"cell": "gru", "hidden": 8, "batch": 1, "timesteps": 0}, "dims.timesteps", ">= 1"),
    ({"cell": "gru", "hidden": 8, "batch": 1, "timesteps": 2, "input_size": -3}, "dims.input_size", ">= 1"),
    ({"cell": "gru", "hidden": 8, "batch": 1, "timesteps": 2, "layers": 2}, "dims.layers", "unknown key"),
    ({"cell": "gru", "hidden": 2**40, "batch": 2**20, "timesteps": 2**10}, "dims", "beyond int64"),
])
def test_bad_rnn_entries_name_file_entry_and_field(tmp_path, dims, field, words):
    path = _write(tmp_path, dims)
    with pytest.raises(CatalogError) as raised:
        load_file(path)
    error = raised.value
    assert (error.file, error.entry, error.field) == (str(path), "entry 1 (id 'bad-rnn')", field)
    assert words in error.problem


def test_rnn_subset_and_smoke_cases():
    catalog = load_catalog()
    rnn = catalog.subset("rnn")
    assert len(rnn) == 124 and all(c.op.kind == "rnn" and "deepbench" in c.tags for c in rnn)
    assert {c.id for c in rnn} <= {c.id for c in catalog.subset("full")} & {c.id for c in catalog.subset("deepbench")}
    smoke = [c.op for c in catalog.subset("smoke") if c.op.kind == "rnn"]
    assert sorted(op.cell for op in smoke) == sorted(CELLS)
    assert all(op.input_size != op.hidden and op.flops("backward") < 1e6 for op in smoke)


@needs_rnn_csv
def test_deepbench_rnn_matches_csv_row_by_row():
    with open(DATA_DIR / "deepbench_rnn.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 125
    cases = load_file(load_catalog().subset("rnn")[0].file)
    by_key = {(c.op.cell, c.op.hidden, c.op.batch, c.op.timesteps): c for c in cases}
    assert len(by_key) == len(cases) == 124, "two entries have the same dims"
    cell = {"vanilla": "rnn_relu", "lstm": "lstm", "gru": "gru"}
    expected: dict[tuple, set[str]] = {}
    for line, row in enumerate(rows, start=2):
        key = (cell[row["cell"]], int(row["hidden"]), int(row["batch"]), int(row["timesteps"]))
        assert key in by_key, f"CSV line {line} has no entry"
        case = by_key[key]
        assert f"{row['set']} line {line}" in case.provenance.derivation, case.id
        assert case.op.input_size == case.op.hidden
        expected.setdefault(key, set()).add(DEEPBENCH_SETS[row["set"]])
    assert set(expected) == set(by_key)
    for key, sets in expected.items():
        assert {t for t in by_key[key].tags if t in DEEPBENCH_SETS.values()} == sets, by_key[key].id
        assert by_key[key].provenance.source.startswith("DeepBench")
    repeated = [key for key, sets in expected.items() if len(sets) > 1]
    assert repeated == [("lstm", 256, 1, 150)]  # inference_server_set and inference_device_set


def test_deepbench_rnn_ids_say_the_shape():
    for case in load_catalog().subset("rnn"):
        op = case.op
        assert case.id == f"db-{op.cell.replace('_', '-')}-h{op.hidden}-b{op.batch}-t{op.timesteps}"
        assert dataclasses.replace(op) == op
