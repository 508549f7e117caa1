"""What the runner writes and the report reads back as truth: FLOPs, bytes and throughput per pass against hand-computed
values, and the identity of a measurement (resume and merge keys) over every axis of a plan. No framework runs."""

from __future__ import annotations

import inspect
import itertools
from collections import Counter

import pytest

from suite.catalog import Case, Provenance
from suite.ops import PASSES, Conv2d, Gemm, op_from_dict
from suite.results import KEY_FIELDS, ResultsWriter, measurement_key, merge_files, read_results
from suite.runner import check_output, measurement_of, plan

PROVENANCE = Provenance(network="test net", layer="test layer", source="hand-made", derivation="for the tests")
# Stride 2 × 1, asymmetric padding, 2 groups: P = (7 + 1 + 0 - 2 - 1) // 2 + 1 = 3, Q = (6 + 2 + 1 - 1 - 1) + 1 = 8
CONV = Case("bite-conv", Conv2d(n=2, c=4, h=7, w=6, k=6, r=3, s=2, stride=(2, 1), padding=(1, 0, 2, 1), groups=2),
            PROVENANCE, count=3, tags=("bite", "modern"))
GEMM = Case("bite-gemm", Gemm(m=3, n=5, k=7, transpose_b=True), PROVENANCE, count=2, tags=("bite",))

# FLOPs: one pass is 2·N·K·P·Q·(C/g)·R·S = 2·2·6·3·8·2·3·2 (conv) or 2·M·N·K = 2·3·5·7 (GEMM); backward = dX + dW.
# Elements: conv x 2·4·7·6 = 336, w 6·2·3·2 = 72, y 2·6·3·8 = 288; GEMM A 21, B 35, C 15. Bytes per pass count each
# tensor read or written once: forward x + w + y, dX dy + w + dx, dW dy + x + dw, backward dy + x + w + dx + dw.
EXPECTED = {  # (case, pass) -> (FLOPs, elements touched)
    ("bite-conv", "forward"): (6912, 336 + 72 + 288),
    ("bite-conv", "backward_data"): (6912, 288 + 72 + 336),
    ("bite-conv", "backward_weight"): (6912, 288 + 336 + 72),
    ("bite-conv", "backward"): (13824, 288 + 336 + 72 + 336 + 72),
    ("bite-gemm", "forward"): (210, 21 + 35 + 15),
    ("bite-gemm", "backward_data"): (210, 15 + 35 + 21),
    ("bite-gemm", "backward_weight"): (210, 15 + 21 + 35),
    ("bite-gemm", "backward"): (420, 15 + 21 + 35 + 21 + 35),
}
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
HEADER = {"record": "header", "run_id": "r1", "environment": {}}


def ok_result(median: float) -> dict:
    return {"type": "result", "key": "ignored", "status": "ok", "reason": None, "block_times": [median * 10] * 7,
            "calls_per_block": 10, "stats": {"median": median, "ci_low": median, "ci_high": median}}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_records_carry_flops_and_bytes_of_their_own_pass(dtype):
    tasks = plan([CONV, GEMM], ["torch"], ["cpu"], [dtype], PASSES)
    assert {(t.case.id, t.key.pass_) for t in tasks} == set(EXPECTED)
    for task in tasks:
        worker = {"versions": {"torch": "x"}, "flags": {"t": 1}}
        record = measurement_of(task, ok_result(2e-6), "r1", worker).to_record()
        flops, elements = EXPECTED[task.case.id, record["pass"]]
        assert record["flops"] == flops, (task.case.id, record["pass"])
        assert record["bytes"] == elements * ITEMSIZE[dtype], (task.case.id, record["pass"])
        assert record["tflops"] == pytest.approx(flops / 2e-6 / 1e12)
        assert record["count"] == task.case.count and record["tags"] == list(task.case.tags)
        assert record["versions"] == {"torch": "x"} and record["flags"] == {"t": 1}
        assert "type" not in record and "key" not in record  # protocol fields stay out of the results
        assert record["dtype"] == dtype and record["status"] == "ok" and record["calls_per_block"] == 10


def test_backward_is_the_sum_of_its_parts():
    for case in (CONV, GEMM):
        records = [measurement_of(t, {"status": "ok"}, "r1", {}).to_record()
                   for t in plan([case], ["jax"], ["cpu"], ["fp32"], PASSES)]
        by_pass = {r["pass"]: r for r in records}
        assert by_pass["backward"]["flops"] == by_pass["backward_data"]["flops"] + by_pass["backward_weight"]["flops"]
        # backward reads dy, x and w once and writes dx and dw: one read of dy fewer than dX and dW run apart
        dy = {"bite-conv": 288, "bite-gemm": 15}[case.id] * 4
        parts = by_pass["backward_data"]["bytes"] + by_pass["backward_weight"]["bytes"]
        assert by_pass["backward"]["bytes"] == parts - dy


def test_a_failed_measurement_has_no_throughput():
    task = plan([GEMM], ["torch"], ["cpu"], ["fp32"], ["forward"])[0]
    record = measurement_of(task, {"status": "error", "reason": "boom", "stats": None}, "r1", {}).to_record()
    assert record["status"] == "error" and record["reason"] == "boom" and "tflops" not in record
    assert record["flops"] == 210  # what was asked for is still recorded


# --------------------------------------------------------------------------------------------------- identity
# Run-wide axes of a plan (keyword arguments of suite.runner.plan), two values each.
RUN_WIDE = {"math": ("strict", "tf32"), "threads": (None, 2), "options": ({}, {"ynn_conv": "off"}),
            "l2": ("warm", "cold")}
PER_TASK = ("cases", "backend_names", "devices", "dtypes", "passes", "modes", "layouts")


def every_axis_plan():
    """Tasks that differ in every key field: two cases × backends × devices × modes × layouts × dtypes × passes, and
    every combination of the run-wide settings."""
    axes = {name: values for name, values in RUN_WIDE.items() if name in inspect.signature(plan).parameters}
    tasks = []
    for combination in itertools.product(*axes.values()):
        tasks += plan([CONV, GEMM], ["torch", "jax"], ["cpu", "gpu"], ["fp32", "bf16"], PASSES, modes=["all"],
                      layouts=["all"], **dict(zip(axes, combination, strict=True)))
    return tasks


def test_the_plan_varies_every_key_field():
    assert set(inspect.signature(plan).parameters) <= {*PER_TASK, *RUN_WIDE}, "a new plan axis: add it to RUN_WIDE"
    identities = [t.key.fields() for t in every_axis_plan()]
    assert set(identities[0]) == set(KEY_FIELDS), "the task's identity and the results key must name the same fields"
    for name in KEY_FIELDS:
        values = {repr(i[name]) for i in identities}
        assert len(values) >= 2, f"the plan does not vary {name}, so this test could not see it dropped from the key"


def test_keys_are_distinct_over_every_axis_and_equal_for_task_and_record():
    tasks = every_axis_plan()
    assert len({repr(sorted(t.key.fields().items())) for t in tasks}) == len(tasks)  # the plan has no duplicates
    keys = Counter(t.key for t in tasks)
    collided = [k for k, n in keys.items() if n > 1]
    assert not collided, f"{len(collided)} keys shared by different measurements, e.g. {collided[0]}"
    for task in tasks[:: max(1, len(tasks) // 50)]:
        record = measurement_of(task, {"status": "ok"}, "r1", {}).to_record()
        assert measurement_key(record) == task.key
    # each axis alone changes the key
    base = tasks[0].key.fields()
    for name in KEY_FIELDS:
        other = next(t.key.fields() for t in tasks if t.key.fields()[name] != base[name])
        assert measurement_key({**base, name: other[name]}) != measurement_key(base), name


def neighbours(tasks):
    """The first task, then for each key field the task closest to it that differs in that field (a small set:
    every record written costs an fsync)."""
    base = tasks[0].key.fields()

    def distance(task):
        return sum(task.key.fields()[name] != base[name] for name in KEY_FIELDS)

    return [tasks[0], *(min((t for t in tasks if t.key.fields()[name] != base[name]), key=distance)
                        for name in KEY_FIELDS)]


def write(path, records):
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        for record in records:
            writer.write(record)
    return path


def test_resume_skips_exactly_what_is_in_the_file(tmp_path):
    base, *others = neighbours(every_axis_plan())
    assert sum(o.key.layout != base.key.layout for o in others) >= 1
    path = write(tmp_path / "r.jsonl", [measurement_of(base, {"status": "ok"}, "r1", {}).to_record()])
    keys = check_output(path, resume=True)  # what run() skips
    assert [t for t in [base, *others] if t.key not in keys] == others


def test_merge_keeps_every_distinct_measurement_and_drops_only_duplicates(tmp_path):
    tasks = neighbours(every_axis_plan())
    assert len({t.key for t in tasks}) == len(tasks) == len(KEY_FIELDS) + 1
    records = [measurement_of(t, {"status": "ok"}, "r1", {}).to_record() for t in tasks]
    one = write(tmp_path / "one.jsonl", records)
    two = write(tmp_path / "two.jsonl", records[::-1])  # every record again
    three = write(tmp_path / "three.jsonl", records[:1])  # and the first a third time
    out = tmp_path / "merged.jsonl"
    assert merge_files([one, two, three], out)[:3] == (len(tasks), 1, 0)  # the same records read again count once
    merged = read_results(out).measurements
    assert [m.key for m in merged] == [t.key for t in tasks]  # one of each, in order


def test_record_survives_the_file_with_its_identity(tmp_path):
    task = next(t for t in every_axis_plan() if t.key.options and t.key.threads)
    record = measurement_of(task, ok_result(1e-3), "r1", {}).to_record()
    back = read_results(write(tmp_path / "r.jsonl", [record])).measurements[0]
    assert back.key == task.key and back.op == task.case.op
    assert op_from_dict(back.to_record()["dims"]) == task.case.op
