"""The typed results model: one policy for repeated measurements, the rules beside the types, migration of schema-1
files, and the catalog facts a run records. No framework runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from suite.catalog import NetworkLayer, NetworkSet, load_catalog, network_sets
from suite.results import (
    FAILED_STATUSES,
    KEY_FIELDS,
    SAME_BAND,
    STATUSES,
    Measurement,
    MeasurementKey,
    ResultsWriter,
    merge_files,
    percent_of,
    read_many,
    read_results,
    speed_verdict,
)

GOLDEN = Path(__file__).parent / "data" / "golden"


def header(run_id: str, **extra) -> dict:
    return {"record": "header", "run_id": run_id, "environment": {}, **extra}


def record(run_id: str = "r1", finished: str = "2026-01-01T00:00:00", status: str = "ok", case: str = "c1",
           median: float = 1e-3, **extra) -> dict:
    times = [median * 10] * 5 if status == "ok" else []
    return {"record": "measurement", "run_id": run_id, "case": case, "backend": "torch", "device": "cpu",
            "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "NCHW", "math": "strict", "threads": 2,
            "options": {}, "status": status, "finished": finished, "flops": 2e9,
            **({"block_times": times, "calls_per_block": 10,
                "stats": {"median": median, "ci_low": median, "ci_high": median, "flags": []}} if times else {}),
            **extra}


def write(path: Path, *records: dict) -> Path:
    with ResultsWriter(path) as writer:
        for r in records:
            writer.write(r)
    return path


# ------------------------------------------------------------------------------------------------ the one policy
def test_the_latest_finished_wins_whatever_the_order(tmp_path):
    old = write(tmp_path / "old.jsonl", header("r1"), record("r1", "2026-01-01T00:00:00", median=2e-3))
    new = write(tmp_path / "new.jsonl", header("r2"), record("r2", "2026-02-01T00:00:00", median=1e-3))
    for paths in ([old, new], [new, old]):
        results = read_many(paths)
        assert len(results.measurements) == 2  # independent runs: both kept (the report pools them)
        [latest] = results.latest().values()
        assert latest.run_id == "r2" and latest.median == 1e-3


def test_a_retry_supersedes_what_it_retries_even_if_its_clock_is_behind(tmp_path):
    failed = record("r1", "2026-03-01T00:00:00", status="error", reason="boom")
    retry = record("r2", "2026-01-01T00:00:00", retry_of={"run_id": "r1", "status": "error"})
    for order in ((failed, retry), (retry, failed)):
        path = write(tmp_path / f"{order[0]['run_id']}.jsonl", header("r1"), header("r2"), *order)
        results = read_results(path)
        assert [m.run_id for m in results.measurements] == ["r2"]  # the failure is superseded, not pooled
        assert results.latest()[results.measurements[0].key].status == "ok"


def test_the_same_record_read_twice_counts_once(tmp_path):
    one = write(tmp_path / "shard.jsonl", header("r1"), record())
    merged = write(tmp_path / "merged.jsonl", header("r1"), record())
    assert len(read_many([one, merged]).measurements) == 1
    assert len(read_many([one, merged]).headers) == 1


def test_merge_keeps_the_newer_ok_measurement_whatever_the_argument_order(tmp_path):
    old = write(tmp_path / "old.jsonl", header("r1"), record("r1", "2026-01-01T00:00:00", median=2e-3))
    new = write(tmp_path / "new.jsonl", header("r2"), record("r2", "2026-02-01T00:00:00", median=1e-3))
    for i, paths in enumerate(([old, new], [new, old])):
        out = tmp_path / f"merged{i}.jsonl"
        assert merge_files(paths, out)[:3] == (1, 2, 1)
        [kept] = read_results(out).measurements
        assert kept.run_id == "r2" and kept.median == 1e-3


# ------------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize("status", STATUSES)
def test_failed_is_one_definition(status):
    m = Measurement.from_record(record(status=status))
    assert m.failed is (status in FAILED_STATUSES)
    assert not Measurement.from_record(record(status="skipped", reason="memory guard")).failed
    checked = Measurement.from_record(record(check={"status": "fail", "errors": {"y": 1.0}, "tolerance": 1e-5}))
    assert checked.failed and checked.problem == "numerical check failed"


@pytest.mark.parametrize("low, high, verdict", [
    (1 + SAME_BAND + 1e-9, 2.0, "higher"), (1 + SAME_BAND, 2.0, "same"), (0.5, 1 - SAME_BAND - 1e-9, "lower"),
    (0.5, 1 - SAME_BAND, "same"), (0.99, 1.01, "same"), (math.nan, 1.0, "n/a")])
def test_the_same_speed_band_edges(low, high, verdict):
    assert speed_verdict(low, high) == verdict


def test_percent_of_a_peak_is_computed_once_and_the_peak_is_100():
    tflops = 2e9 / 1.7e-3 / 1e12
    assert percent_of(tflops, tflops) == 100.0
    assert math.isnan(percent_of(tflops, None)) and math.isnan(percent_of(math.nan, 1.0))
    m = Measurement.from_record(record(median=1.7e-3))
    assert m.tflops == pytest.approx(tflops) and percent_of(m.tflops, m.tflops) == 100.0


def test_a_failed_measurement_has_no_rates():
    m = Measurement.from_record(record(status="error"))
    assert math.isnan(m.tflops) and math.isnan(m.gbps) and m.problem == "error"


# ------------------------------------------------------------------------------------------------ identity
def test_key_fields_come_from_the_key_and_across_blanks_what_is_compared():
    assert KEY_FIELDS == ("case", "backend", "device", "dtype", "pass", "mode", "layout", "math", "threads",
                          "options", "l2")
    strict = MeasurementKey.from_fields(record())
    tf32 = MeasurementKey.from_fields(record(math="tf32"))
    assert strict != tf32 and strict.across(["math"]) == tf32.across(["math"])
    assert strict.across(["threads"]) != tf32.across(["threads"])
    assert MeasurementKey.from_fields(strict.fields()) == strict
    assert strict.variant == "eager · NCHW · strict · 2 threads"


# ------------------------------------------------------------------------------------------------ reading, writing
def test_every_golden_measurement_survives_to_record_and_back():
    results = read_many([GOLDEN])
    assert results.measurements
    for m in results.measurements:
        assert Measurement.from_record(json.loads(json.dumps(m.to_record(), default=str))) == m


def test_schema_1_files_migrate_and_say_so(tmp_path):
    lines = [json.dumps({"schema": 1, **header("r1")}), json.dumps({"schema": 1, **record()})]
    path = tmp_path / "v1.jsonl"
    path.write_text("\n".join(lines) + "\n")
    results = read_results(path)
    assert results.headers[0].networks is None  # no catalog recorded: the report falls back, and says so
    assert results.measurements[0].median == 1e-3
    assert not results.warnings  # an old file is read as it is, not warned about on every read
    assert results.network_sets() is None


def test_runs_record_their_network_sets_and_the_first_run_wins_a_disagreement(tmp_path):
    layers = (NetworkLayer("a", 1, True), NetworkLayer("b", 2))
    net = NetworkSet("toy-b1", "Toy", "training step", layers)
    changed = NetworkSet("toy-b1", "Toy", "training step", layers[:1])
    path = write(tmp_path / "r.jsonl", header("r1", catalog={"networks": [net.to_record()]}),
                 header("r2", catalog={"networks": [changed.to_record()]}))
    results = read_results(path)
    assert results.network_sets() == (net,)
    assert any("different layers" in w for w in results.warnings)


def test_bundled_network_sets_name_every_layer_once():
    sets = network_sets(load_catalog().cases)
    assert sets and all(len({layer.case for layer in s.layers}) == len(s.layers) for s in sets)
    bert = next(s for s in sets if s.network.startswith("BERT") and s.phase == "training step")
    assert any(layer.weightless for layer in bert.layers)  # its attention core: one fused backward
    assert NetworkSet.from_record(json.loads(json.dumps(bert.to_record()))) == bert


def test_a_tie_to_the_second_never_depends_on_the_reading_order(tmp_path):
    same = "2026-01-01T00:00:00"
    ok = write(tmp_path / "ok.jsonl", header("r1"), record("r1", same))
    bad = write(tmp_path / "bad.jsonl", header("r2"), record("r2", same, status="crashed", reason="killed"))
    other = write(tmp_path / "other.jsonl", header("r3"), record("r3", same, median=2e-3))
    for paths in ([ok, bad], [bad, ok]):
        [kept] = read_many(paths).latest().values()
        assert kept.status == "ok"  # of two in one second, the one that did not fail
    assert {next(iter(read_many(p).latest().values())).run_id for p in ([ok, other], [other, ok])} == {"r3"}


def test_the_variant_label_counts_threads_in_words():
    assert MeasurementKey.from_fields(record(threads=1)).variant == "eager · NCHW · strict · 1 thread"
