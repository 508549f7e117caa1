"""Many machines: deterministic shards that cover a plan exactly once, and a merge that refuses mixed configs."""

import pytest

from suite.catalog import load_catalog
from suite.cli import main
from suite.results import ResultsWriter, read_results
from suite.runner import plan, shard


def test_shards_are_disjoint_cover_the_plan_and_keep_cases_whole():
    tasks = plan(load_catalog().subset("quick"), ["torch", "jax"], ["cpu"], ["fp32"],
                 ["forward", "backward_data", "backward_weight", "backward"])
    parts = [shard(tasks, i, 3) for i in (1, 2, 3)]
    keys = [t.key for part in parts for t in part]
    assert set(keys) == {t.key for t in tasks} and len(set(keys)) == len(keys) == len(tasks)
    case_sets = [{t.case.id for t in part} for part in parts]
    assert not (case_sets[0] & case_sets[1]) and not (case_sets[1] & case_sets[2])
    assert all(abs(len(p) - len(tasks) / 3) <= 16 for p in parts)  # round-robin keeps parts balanced
    assert [t.key for t in shard(tasks, 2, 3)] == [t.key for t in parts[1]]  # deterministic


def _write(path, run_id, versions, cases):
    with ResultsWriter(path) as writer:
        writer.write({"record": "header", "run_id": run_id, "environment": {}})
        writer.write({"record": "worker", "run_id": run_id, "backend": "torch", "device": "cpu",
                      "versions": versions, "flags": {"threads": 2}, "devices": ["cpu"]})
        for case in cases:
            writer.write({"record": "measurement", "run_id": run_id, "case": case, "backend": "torch",
                          "device": "cpu", "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "NCHW",
                          "math": "strict", "threads": 2, "options": {}, "status": "ok"})


def test_merge_combines_shards_and_drops_duplicates(tmp_path, capsys):
    _write(tmp_path / "a.jsonl", "r1", {"torch": "2.13.0"}, ["c1", "c2"])
    _write(tmp_path / "b.jsonl", "r2", {"torch": "2.13.0"}, ["c2", "c3"])
    assert main(["merge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "m.jsonl")]) == 0
    merged = read_results(tmp_path / "m.jsonl")
    assert [(m.case, m.run_id) for m in merged.measurements] == [("c1", "r1"), ("c2", "r2"), ("c3", "r2")]
    assert len(merged.headers) == 2  # c2 of both runs, finished at the same time: the later read is kept
    assert "left out 1 records superseded by a later measurement of their key" in capsys.readouterr().out


def test_merge_refuses_shards_with_different_versions(tmp_path, capsys):
    _write(tmp_path / "a.jsonl", "r1", {"torch": "2.13.0"}, ["c1"])
    _write(tmp_path / "b.jsonl", "r2", {"torch": "2.14.0"}, ["c2"])
    out = tmp_path / "m.jsonl"
    assert main(["merge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "-o", str(out)]) == 2
    assert "not measured under one configuration" in capsys.readouterr().err and not out.exists()
    assert main(["merge", str(tmp_path), "-o", str(out), "--allow-mixed"]) == 0


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "2"])
def test_bad_shard_spec(text, capsys):
    assert main(["run", "--backend", "torch", "--catalog", "smoke", "--shard", text, "-o", "/nonexistent/x"]) == 2
    assert "--shard" in capsys.readouterr().err
