"""Results files: durable appends, partial lines, schema versions, foreign files."""

import json
import math

import pytest

from suite.results import SCHEMA_VERSION, ResultsError, ResultsWriter, measurement_key, read_many, read_results

HEADER = {"record": "header", "run_id": "r1", "environment": {}}


def measurement(case="c1", **extra):
    return {"record": "measurement", "run_id": "r1", "case": case, "backend": "torch", "device": "cpu",
            "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "NCHW", "math": "strict",
            "threads": 2, "options": {}, "status": "ok", **extra}


def test_round_trip_and_keys(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        writer.write(measurement(first_call_s=float("nan")))
    results = read_results(path)
    assert len(results.headers) == 1 and json.loads(path.read_text().splitlines()[1])["schema"] == SCHEMA_VERSION
    assert '"first_call_s": "nan"' in path.read_text()  # JSON has no NaN: written as a string
    assert math.isnan(results.measurements[0].first_call_s)
    assert results.keys() == {measurement_key(measurement())}
    assert measurement_key(measurement()) != measurement_key(measurement(case="c2"))


def test_a_measurement_taken_again_in_one_file_supersedes_the_earlier(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        writer.write(measurement(status="error", reason="CUDA error: busy"))
        writer.write(measurement(case="c2"))
        writer.write({**HEADER, "run_id": "r2"})
        writer.write(measurement(run_id="r2", retry_of={"run_id": "r1", "status": "error"}))
    got = read_results(path).measurements
    assert [(m.case, m.run_id, m.status) for m in got] == [("c2", "r1", "ok"), ("c1", "r2", "ok")]
    other = tmp_path / "other.jsonl"  # the same key in two files: two runs, both kept (the report pools them)
    with ResultsWriter(other) as writer:
        writer.write({**HEADER, "run_id": "r3"})
        writer.write(measurement(run_id="r3"))
    assert len(read_many([path, other]).measurements) == 3


def test_partial_last_line_is_skipped_on_read_and_dropped_on_append(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(HEADER)
        writer.write(measurement())
    with path.open("a") as handle:
        handle.write(json.dumps(measurement("c2"))[:40])  # a crash in the middle of a write
    results = read_results(path)
    assert len(results.measurements) == 1 and "partial last line" in results.warnings[0]
    with ResultsWriter(path) as writer:
        assert "dropped a partial last line" in writer.warning
        writer.write(measurement("c3"))
    assert [m.case for m in read_results(path).measurements] == ["c1", "c3"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"record": "header", "schema": 1}\nnot json\n{"record": "header", "schema": 1}\n', "line 2.*not valid JSON"),
        ('{"name": "something else"}\n', "not an opbench record"),
        ('[1, 2, 3]\n', "not an opbench record"),
        (f'{{"record": "header", "schema": {SCHEMA_VERSION + 1}}}\n', "newer opbench"),
        ('{"record": "header"}\n', "no integer 'schema'"),
        ('{"record": "measurement", "schema": 1}\n', "no header record"),
    ],
)
def test_damaged_or_foreign_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message):
        read_results(path)


def test_binary_and_missing_files(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ResultsError, match="not a text file"):
        read_results(tmp_path / "bin.jsonl")
    with pytest.raises(ResultsError, match="no such results file"):
        read_many([tmp_path / "missing.jsonl"])


def test_folders_are_searched_for_jsonl(tmp_path):
    for name in ("a", "b"):
        with ResultsWriter(tmp_path / "sub" / f"{name}.jsonl") as writer:
            writer.write(HEADER)
            writer.write(measurement(name))
    assert sorted(m.case for m in read_many([tmp_path]).measurements) == ["a", "b"]
