"""Core facts checked against values written out by hand: how the catalog reads each YAML form, and which cases
each shard gets. No framework runs."""

from __future__ import annotations

from suite.catalog import Case, Provenance, load_catalog
from suite.ops import Conv2d, Gemm
from suite.runner import plan, shard

# The smoke cases as written in shapes/smoke.yaml, each YAML form of stride, padding and dilation spelled out:
# an int means all sides, [h, w] means (top = bottom = h, left = right = w), four values are top, bottom, left, right.
SMOKE_OPS = {
    "smoke-gemm-transposed": Gemm(m=48, n=32, k=80, transpose_a=True, transpose_b=True),
    "smoke-conv-3x3": Conv2d(n=2, c=8, h=16, w=16, k=16, r=3, s=3, padding=(1, 1, 1, 1)),
    "smoke-conv-strided": Conv2d(n=2, c=8, h=15, w=17, k=8, r=3, s=5, stride=(2, 2), padding=(1, 1, 2, 2)),
    "smoke-conv-depthwise": Conv2d(n=2, c=16, h=12, w=12, k=16, r=3, s=3, padding=(1, 1, 1, 1), groups=16),
    "check-gemm-square-transposed": Gemm(m=48, n=48, k=48, transpose_a=True, transpose_b=True),
    "check-conv-dilated": Conv2d(n=2, c=4, h=12, w=14, k=8, r=3, s=3, padding=(2, 2, 3, 3), dilation=(2, 3)),
    "check-conv-grouped": Conv2d(n=2, c=8, h=10, w=10, k=12, r=3, s=3, padding=(1, 1, 1, 1), groups=4),
    "check-conv-asymmetric-padding": Conv2d(n=2, c=4, h=11, w=9, k=6, r=3, s=4, stride=(2, 1),
                                            padding=(0, 1, 2, 1)),
}


def test_catalog_reads_every_yaml_form_as_written():
    smoke = {case.id: case.op for case in load_catalog().subset("smoke")}
    for case_id, op in SMOKE_OPS.items():
        assert smoke[case_id] == op, case_id
    # output sizes by hand: (12 + 2 + 2 - 2·2 - 1) + 1 = 12, (14 + 3 + 3 - 3·2 - 1) + 1 = 14;
    # (11 + 0 + 1 - 2 - 1) // 2 + 1 = 5, (9 + 2 + 1 - 3 - 1) + 1 = 9
    assert smoke["check-conv-dilated"].out_shape == (2, 8, 12, 14)
    assert smoke["check-conv-asymmetric-padding"].out_shape == (2, 6, 5, 9)
    assert smoke["smoke-conv-strided"].out_shape == (2, 8, 8, 9)  # (15 + 2 - 3) // 2 + 1, (17 + 4 - 5) // 2 + 1


def test_shards_deal_cases_round_robin_in_catalog_order():
    cases = [Case(f"c{i}", Gemm(8, 8, 8 + i), Provenance("n", "l", "s")) for i in range(7)]
    tasks = plan(cases, ["torch"], ["cpu"], ["fp32"], ["forward", "backward"])
    dealt = {index: [t.case.id for t in shard(tasks, index, 3)] for index in (1, 2, 3)}
    assert dealt == {1: ["c0", "c0", "c3", "c3", "c6", "c6"], 2: ["c1", "c1", "c4", "c4"],
                     3: ["c2", "c2", "c5", "c5"]}
    assert [t.case.id for t in shard(tasks, 1, 1)] == [t.case.id for t in tasks]


def test_default_picks_the_first_offered_mode_and_layout_and_all_picks_every_one():
    conv = Case("conv", Conv2d(n=1, c=4, h=8, w=8, k=4, r=3, s=3), Provenance("n", "l", "s"))
    default = plan([conv], ["torch", "jax"], ["cpu"], ["fp32"], ["forward"])
    assert [(t.backend, t.key.mode, t.key.layout) for t in default] == [
        ("torch", "eager", "NCHW"), ("jax", "jit", "NCHW")]
    every = plan([conv], ["torch"], ["cpu"], ["fp32"], ["forward"], modes=["all", "eager"], layouts=["all"])
    assert [(t.key.mode, t.key.layout) for t in every] == [
        ("eager", "NCHW"), ("eager", "channels_last"), ("compile", "NCHW"), ("compile", "channels_last")]
