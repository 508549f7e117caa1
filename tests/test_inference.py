"""The inference kinds (issue 21): the sparse GEMM op (useful FLOPs, its seeded and recorded pattern, its float64
reference), int8 (exact integer reference, forward only, only where a kind has it), the catalog's and the command
line's refusals of bad input, the planner's per-case dtypes, and the report's "Inference: sparse and int8" section
on a handmade fixture whose every number is known. Framework-free: the backends are checked in
tests/test_backend_contract.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from reports import analysis, summary
from suite import worker
from suite.catalog import Case, CatalogError, Provenance, load_file
from suite.cli import main
from suite.ops import INT8_FORWARD_ONLY, Attention, BatchedGemm, Conv2d, Gemm, InvalidDims, Spmm
from suite.reference import (
    INT8_LIMIT,
    compare,
    expected,
    make_inputs,
    pattern_record,
    reduced,
    reference,
    sparse_pattern,
    to_int8,
)
from suite.runner import plan
from tests.test_report_model import record, results

PROV = {"network": "Net", "layer": "fc", "source": "test"}


# ------------------------------------------------------------------------------------------------ the op
def test_spmm_counts_the_useful_flops_and_names_its_dense_twin() -> None:
    op = Spmm(m=100, n=7, k=50, sparsity=0.9)
    assert op.nnz == 500  # (1 - 0.9) · 100 · 50
    assert op.flops() == 2 * 500 * 7
    assert op.dense() == Gemm(100, 7, 50)
    assert op.flops() / op.dense().flops() == pytest.approx(0.1)
    assert op.min_bytes("forward", 4) == 4 * (500 + 50 * 7 + 100 * 7) + 4 * 500  # values, B, Y; an index a value
    assert op.passes == ("forward",) and op.refusal("backward_data", "fp32") == op.no_pass_reason
    assert op.describe() == "100×7×50 90% sparse"


@pytest.mark.parametrize("sparsity", [0, 1, 1.0, -0.5, 1.5, True])
def test_sparsity_outside_the_open_interval_is_refused(sparsity: Any) -> None:
    with pytest.raises(InvalidDims, match="strictly between 0 and 1") as raised:
        Spmm(8, 8, 8, sparsity)
    assert raised.value.field == "sparsity"


def test_a_sparsity_that_leaves_no_nonzero_is_refused() -> None:
    with pytest.raises(InvalidDims, match="leaves no nonzero"):
        Spmm(4, 1, 4, 0.99)  # round(0.01 · 16) = 0


@pytest.mark.parametrize(("op", "pass_", "words"), [
    (Gemm(8, 8, 8), "backward_data", INT8_FORWARD_ONLY),
    (Conv2d(1, 4, 8, 8, 4, 3, 3), "backward", INT8_FORWARD_ONLY),
    (BatchedGemm(2, 8, 8, 8), "forward", "bgemm has no int8 form in opbench"),
    (Attention(1, 2, 4, 4, 8), "forward", "attention has no int8 form in opbench"),
    (Spmm(8, 2, 8, 0.5), "forward", "spmm has no int8 form in opbench: int8 (int8 × int8 → int32) is measured for "
                                    "gemm, conv2d"),
])
def test_int8_is_refused_for_a_backward_pass_and_for_a_kind_without_it(op: Any, pass_: str, words: str) -> None:
    assert words in op.refusal(pass_, "int8")
    assert op.refusal("forward", "fp32") == ""


# ------------------------------------------------------------------------------------------------ the pattern
def test_the_pattern_has_exactly_nnz_positions_from_the_seed_and_the_weight_shape_alone() -> None:
    op = Spmm(30, 3, 40, 0.8)
    positions = sparse_pattern(op.m, op.k, op.sparsity, 0)
    assert positions.size == op.nnz == 240 and np.all(np.diff(positions) > 0)
    a = make_inputs(op)["x"]
    assert np.array_equal(np.flatnonzero(a), positions)  # the nonzeros are the pattern's (normal draws are never 0)
    wider = make_inputs(Spmm(30, 9, 40, 0.8))["x"]  # another batch N: the same pattern
    assert np.array_equal(np.flatnonzero(wider), positions)
    other = sparse_pattern(op.m, op.k, op.sparsity, 1)
    assert not np.array_equal(other, positions)
    record_ = pattern_record(op, 0)
    assert record_ == {"rule": "uniform without replacement", "seed": 0, "nnz": 240,
                       "crc32": pattern_record(Spmm(30, 5, 40, 0.8), 0)["crc32"]}
    assert record_["crc32"] != pattern_record(op, 1)["crc32"]


def test_the_pattern_is_uniform() -> None:
    """Every row and column holds its share of nonzeros: a pattern drawn row by row or from one corner fails."""
    m = k = 200
    positions = sparse_pattern(m, k, 0.75, 0)
    rows, cols = np.bincount(positions // k, minlength=m), np.bincount(positions % k, minlength=k)
    assert rows.mean() == cols.mean() == 50
    for counts in (rows, cols):  # binomial(200, 1/4): sd ≈ 6.1; a 5-sd band
        assert counts.min() > 50 - 31 and counts.max() < 50 + 31


def test_the_spmm_reference_is_the_dense_product_and_a_large_case_is_checked_on_fewer_columns() -> None:
    op = Spmm(20, 6, 12, 0.5)
    inputs = make_inputs(op)
    assert np.allclose(reference(op, inputs, "forward")["y"], inputs["x"].astype(float) @ inputs["w"].astype(float))
    big = Spmm(7680, 1500, 2560, 0.9)
    small = reduced(big)
    assert (small.m, small.k, small.sparsity) == (big.m, big.k, big.sparsity) and small.n < big.n
    assert small.flops() <= 2.5e8


# ------------------------------------------------------------------------------------------------ int8
def test_int8_inputs_and_their_exact_reference() -> None:
    op = Gemm(9, 5, 7, transpose_a=True)
    inputs = make_inputs(op)
    a, b = to_int8(inputs["x"]), to_int8(inputs["w"])
    assert a.dtype == np.int8 and np.abs(a).max() <= INT8_LIMIT and len(np.unique(a)) > 20
    exact = a.T.astype(np.int64) @ b.astype(np.int64)
    got = expected(op, 0, "forward", "int8")["y"]
    assert np.array_equal(got, exact)
    assert compare({"y": exact.astype(float)}, {"y": got}, "int8", "strict")["status"] == "pass"
    off_by_one = exact.astype(float)
    off_by_one[0, 0] += 1
    check = compare({"y": off_by_one}, {"y": got}, "int8", "strict")
    assert check["status"] == "fail" and check["tolerance"] == 0


# ------------------------------------------------------------------------------------------------ catalog, planner
def entry(op: str, dims: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "op": op, "dims": dims, "provenance": PROV, **extra}


def write(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    folder = tmp_path / "shapes"
    folder.mkdir(exist_ok=True)
    (folder / "cases.yaml").write_text(yaml.safe_dump({"cases": list(entries)}))
    return folder


@pytest.mark.parametrize(("raw", "field", "words"), [
    (entry("spmm", {"m": 8, "n": 2, "k": 8, "sparsity": 1.0}), "dims.sparsity", "strictly between 0 and 1, got 1.0"),
    (entry("spmm", {"m": 8, "n": 2, "k": 8, "sparsity": 0}), "dims.sparsity", "strictly between 0 and 1, got 0"),
    (entry("spmm", {"m": 8, "n": 2, "k": 8, "sparsity": "90%"}), "dims.sparsity", "got '90%'"),
    (entry("spmm", {"m": 8, "n": 2, "k": 8}), "dims.sparsity", "is required"),
    (entry("gemm", {"m": 8, "n": 2, "k": 8}, dtypes=["int4"]), "dtypes", "unknown dtype 'int4' (did you mean 'int8'?)"),
    (entry("attention", {"batch": 1, "heads": 2, "q_len": 4, "kv_len": 4, "head_dim": 8}, dtypes=["int8"]), "dtypes",
     "attention has no int8 form in opbench"),
    (entry("gemm", {"m": 8, "n": 2, "k": 8}, dtypes="int8"), "dtypes", "must be a list of dtypes"),
    (entry("spmm", {"m": 8, "n": 2, "k": 8, "sparsity": 0.5}, passes=["backward"]), "passes",
     "spmm has no pass 'backward'; its passes: forward"),
    (entry("gemm", {"m": 8, "n": 2, "k": 8}, passes=[]), "passes", "must be a non-empty list of passes"),
])
def test_the_catalog_refuses_a_bad_sparsity_or_dtype_naming_the_field(tmp_path: Path, raw: dict, field: str,
                                                                      words: str) -> None:
    folder = write(tmp_path, raw)
    with pytest.raises(CatalogError) as raised:
        load_file(folder / "cases.yaml")
    assert raised.value.field == field and words in raised.value.problem


def test_a_bad_sparsity_is_one_error_line_at_the_command_line(tmp_path: Path, capsys) -> None:
    folder = write(tmp_path, entry("spmm", {"m": 8, "n": 2, "k": 8, "sparsity": 1.5}))
    assert main(["list", "--shapes", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in out + err
    assert "dims.sparsity" in err and "strictly between 0 and 1" in err


def test_int8_for_backward_passes_only_is_a_usage_error(tmp_path: Path, capsys) -> None:
    code = main(["run", "--backend", "torch", "--catalog", "smoke", "--dtype", "int8", "--pass", "backward_data",
                 "-o", str(tmp_path / "r.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in out + err
    assert INT8_FORWARD_ONLY in " ".join(err.split())
    assert not (tmp_path / "r.jsonl").exists()


def test_a_case_measures_its_own_dtypes_in_the_passes_they_have_and_all_means_the_float_dtypes() -> None:
    case = Case("g", Gemm(8, 8, 8), Provenance("Net", "fc", "t"), dtypes=("int8",))
    tasks = plan([case], ["torch"], ["cpu"], ["fp32"], ["forward", "backward_data", "backward_weight", "backward"])
    assert sorted((t.variant.dtype, t.variant.pass_) for t in tasks) == [
        ("fp32", "backward"), ("fp32", "backward_data"), ("fp32", "backward_weight"), ("fp32", "forward"),
        ("int8", "forward")]
    baseline = Case("d", Gemm(8, 8, 8), Provenance("Net", "fc", "t"), dtypes=("int8",), passes=("forward",))
    tasks = plan([baseline], ["torch"], ["cpu"], ["fp32"], ["forward", "backward"])
    assert [(t.variant.dtype, t.variant.pass_) for t in tasks] == [("fp32", "forward"), ("int8", "forward")]
    # asked for by the run, int8 is planned in every pass asked for: the backward ones are recorded as refused
    asked = plan([case], ["torch"], ["cpu"], ["int8"], ["forward", "backward"])
    assert [(t.variant.dtype, t.variant.pass_) for t in asked] == [("int8", "forward"), ("int8", "backward")]
    from suite.cli import build_plan, parser

    args = parser().parse_args(["run", "--backend", "torch", "--catalog", "smoke", "--dtype", "all", "--pass",
                                "forward"])
    assert {t.variant.dtype for t in build_plan(args) if not t.case.dtypes} == {"fp32", "fp16", "bf16"}


class _Backend:
    """Just what run_task touches before a refusal."""

    settings = type("S", (), {"device": "cpu", "math": "strict"})()

    def free_memory_bytes(self) -> None:
        return None

    def release(self) -> None:
        pass


def test_the_worker_records_a_refusal_by_design_before_making_any_input(monkeypatch) -> None:
    def no_inputs(*args: Any) -> None:
        raise AssertionError("inputs made for a measurement refused by design")

    monkeypatch.setattr(worker, "make_inputs", no_inputs)
    for op, variant in ((Gemm(8, 8, 8), {"pass_": "backward", "dtype": "int8"}),
                        (Spmm(8, 8, 8, 0.5), {"pass_": "backward_data", "dtype": "fp32"})):
        task = {"op": {"kind": op.kind, **vars(op)}, "variant": variant}
        result = worker.run_task(_Backend(), task, None, True, 0)
        assert result["status"] == "unsupported" and result["reason"] == op.refusal(variant["pass_"],
                                                                                    variant["dtype"])


# ------------------------------------------------------------------------------------------------ the report
DENSE = Gemm(64, 1, 32)
SPARSE = {s: Spmm(64, 1, 32, s) for s in (0.5, 0.9, 0.99)}
# forward medians (ms): torch beats its dense GEMM from 0.9 on; jax never does (0.99 is within the same-speed band)
TIMES = {"torch": {"dense": 1.0, 0.5: 2.0, 0.9: 0.5, 0.99: 0.1},
         "jax": {"dense": 1.0, 0.5: 1.5, 0.9: 1.2, 0.99: 0.99}}
INT8_CASE = Gemm(128, 16, 64)
INT8_TIMES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0}  # torch: int8 4× faster than fp32, 2× than bf16


def refused(case: str, backend: str, pass_: str, op: Any, dtype: str = "fp32") -> dict:
    """A refusal by design as the runner records it: no FLOPs, no times, the op's reason."""
    return {**record(case, backend, "forward", 1.0, op, dtype=dtype), "pass": pass_, "flops": None, "bytes": None,
            "status": "unsupported", "reason": op.refusal(pass_, dtype), "stats": None, "block_times": []}


def fixture(extra: tuple[dict, ...] = ()) -> analysis.Analysis:
    records = []
    for backend, times in TIMES.items():
        records.append(record("dense", backend, "forward", times["dense"] / 1e3, DENSE))
        records += [record(f"sparse-{s}", backend, "forward", times[s] / 1e3, op, layout="CSR")
                    for s, op in SPARSE.items()]
        # refused by design: not applicable, not gaps
        records.append(refused("sparse-0.5", backend, "backward_data", SPARSE[0.5]))
    records += [record("g", "torch", "forward", t / 1e3, INT8_CASE, dtype=dtype) for dtype, t in INT8_TIMES.items()]
    records.append(refused("g", "torch", "backward", INT8_CASE, "int8"))
    return analysis.analyze(results(*records, *extra), order=["torch", "jax"])


def test_sparse_time_over_dense_time_per_case_and_framework() -> None:
    a = fixture()
    got = {(r.case, r.backend): (r.ratio, r.low, r.high, r.verdict, r.dense_case) for r in a.sparse.itertuples()}
    for backend, times in TIMES.items():
        for s in SPARSE:
            ratio = times[s] / times["dense"]
            point, low, high, verdict, dense = got[(f"sparse-{s}", backend)]
            assert (point, low, high, dense) == (pytest.approx(ratio), pytest.approx(ratio), pytest.approx(ratio),
                                                 "dense")
            assert verdict == ("slower" if ratio > 1.03 else "faster" if ratio < 0.97 else "same")
    assert set(a.sparse["flop_ratio"].round(6)) == {round(op.flops() / DENSE.flops(), 6) for op in SPARSE.values()}


def test_the_crossover_is_the_lowest_sparsity_from_which_on_sparse_is_faster() -> None:
    a = fixture()
    cross = a.crossovers.set_index("backend")
    assert cross.loc["torch", "crossover"] == 0.9 and cross.loc["torch", "below"] == 0.5
    assert math.isnan(cross.loc["jax", "crossover"]) and cross.loc["jax", "below"] == 0.99
    assert cross.loc["torch", "sparsities"] == (0.5, 0.9, 0.99)


def test_int8_bf16_fp32_speedups() -> None:
    a = fixture()
    got = {(r.dtype, r.against): (r.geomean, r.cases) for r in a.dtype_summary.itertuples()}
    assert got == {("int8", "fp32"): (pytest.approx(4.0), 1), ("int8", "bf16"): (pytest.approx(2.0), 1),
                   ("bf16", "fp32"): (pytest.approx(2.0), 1)}
    # int8's backward and a sparse backward are refusals by design, not measurements that did not run
    assert a.quality["not_run"] == {} and a.quality["not_applicable"] == 3


def test_the_inference_section_states_these_numbers() -> None:
    a = fixture()
    [section] = [q for q in summary.answers(a) if q["id"] == "inference"]
    assert section["question"] == "Inference: sparse and int8"
    # a forward-only kind's own section asks no backward question
    assert [q["question"] for q in summary.answers(a) if q["id"] == "kind-spmm"] == ["Sparse GEMMs: how fast, forward?"]
    sparse_block, int8_block = section["blocks"]
    assert sparse_block["headline"] == (
        "On this CPU, a sparse GEMM takes 0.1–2× the time of the dense GEMM of its shape (3 cases, forward, each "
        "framework's fastest variant). It beats the dense GEMM from sparsity torch 0.9; jax not reached.")
    per_case, crossover = sparse_block["tables"]
    assert per_case["columns"][-2:] == ["torch: sparse / dense time", "jax: sparse / dense time"]
    row = {r[0]["text"]: r for r in per_case["rows"]}["sparse-0.9"]
    assert [c["text"] for c in row[2:]] == ["0.9", "0.1×", "0.50×", "1.20×"]
    assert row[4]["bold"] and not row[5]["bold"]  # faster is bold
    assert [[c["text"] for c in r] for r in crossover["rows"]] == [
        ["torch", "64×1×32", "0.5, 0.9, 0.99", "0.9", "0.5"], ["jax", "64×1×32", "0.5, 0.9, 0.99", "not reached",
                                                              "0.99"]]
    assert int8_block["headline"] == ("On this CPU, int8 against fp32 (forward, geomean over the cases measured in "
                                      "int8): torch 4.0× faster.")
    [int8_table] = int8_block["tables"]
    assert int8_table["columns"] == ["framework", "int8 vs fp32", "int8 vs bf16", "bf16 vs fp32"]
    assert [c["text"] for c in int8_table["rows"][0]] == ["torch", "4.0× faster", "2.0× faster", "2.0× faster"]


def test_a_dense_twin_of_another_run_does_not_count_and_is_named() -> None:
    late = record("sparse-late", "torch", "forward", 0.3e-3, Spmm(64, 1, 32, 0.95), run_id="r2")
    a = fixture((late,))
    assert "sparse-late" not in set(a.sparse["case"])
    assert a.sparse_unmatched == ["sparse-late (torch, fp32)"]
    [section] = [q for q in summary.answers(a) if q["id"] == "inference"]
    assert "sparse-late (torch, fp32)" in " ".join(section["blocks"][0]["notes"])


def test_results_without_sparse_or_int8_get_no_inference_section() -> None:
    a = analysis.analyze(results(record("dense", "torch", "forward", 1e-3, DENSE)))
    assert "inference" not in [q["id"] for q in summary.answers(a)]
