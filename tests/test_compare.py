"""`compare`, the regression gate, `merge`'s policy and `show`/`list` for scripts, on synthetic and golden results."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.cli import main
from suite.compare import compare, compare_pair
from suite.results import SAME_BAND, Measurement, ResultsWriter, read_many, read_results

GOLDEN = Path(__file__).parent / "data" / "golden" / "smoke_torch_tf.jsonl"


def blocks(rng: np.random.Generator, n: int = 20, noise: float = 0.01, scale: float = 1.0) -> list[float]:
    """Block times of 10 calls of about 1 ms each, with multiplicative noise."""
    return list(scale * 10e-3 * (1 + noise * rng.standard_normal(n)))


def record(case: str, times: list[float], run_id: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"record": "measurement", "run_id": run_id, "case": case, "backend": "torch", "device": "cpu",
            "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "NCHW", "math": "strict", "threads": 2,
            "options": {}, "op": "gemm", "status": "ok", "block_times": times, "calls_per_block": 10,
            "stats": {"median": float(np.median(times)) / 10, "blocks": len(times), "calls_per_block": 10} if times
            else None, "check": {"status": "pass"}, **extra}


def measured(case: str, times: list[float], **extra: Any) -> Measurement:
    """The typed measurement of ``record``."""
    return Measurement.from_record(record(case, times, **extra))


def write(path: Path, measurements: list[dict[str, Any]], run_id: str = "r1", version: str = "2.13.0",
          options_flags: dict[str, Any] | None = None, backend: str = "torch") -> Path:
    with ResultsWriter(path) as writer:
        writer.write({"record": "header", "run_id": run_id, "environment": {"hostname": "h", "packages": {}}})
        writer.write({"record": "worker", "run_id": run_id, "backend": backend, "device": "cpu",
                      "versions": {backend: version}, "flags": {"threads": 2, **(options_flags or {})}})
        for m in measurements:
            writer.write({**m, "run_id": run_id})
    return path


def slow_down(measurement: dict, factor: float) -> None:
    """Make a measurement record ``factor`` times slower, keeping its stats and throughput consistent with its raw
    block times (readers check them against each other)."""
    measurement["block_times"] = [t * factor for t in measurement["block_times"]]
    measurement["stats"]["median"] *= factor
    measurement["tflops"] /= factor


def scaled(source: Path, target: Path, case: str, factor: float) -> Path:
    """A copy of a results file with every measurement of ``case`` made ``factor`` times slower."""
    lines = []
    for line in source.read_text().splitlines():
        data = json.loads(line)
        if data.get("record") == "measurement" and data["case"] == case and data.get("block_times"):
            slow_down(data, factor)
        lines.append(json.dumps(data))
    target.write_text("\n".join(lines) + "\n")
    return target


def test_known_slowdown_is_reported_slower_with_its_ratio(tmp_path):
    rng = np.random.default_rng(1)
    base = [record(f"c{i}", blocks(rng)) for i in range(4)]
    new = [record(m["case"], [t * (1.3 if m["case"] == "c2" else 1.0) for t in m["block_times"]]) for m in base]
    result = compare(read_results(write(tmp_path / "a.jsonl", base)), read_results(write(tmp_path / "b.jsonl", new)))
    verdicts = {p.base.case: p for p in result.pairs}
    assert verdicts["c2"].verdict == "slower" and verdicts["c2"].ratio == pytest.approx(1.3)
    assert verdicts["c2"].low > 1.05 and verdicts["c2"].high < 1.5
    assert {p.verdict for case, p in verdicts.items() if case != "c2"} == {"same"}
    assert not result.only_base and not result.only_new and not result.environment
    assert [p.base.case for p in result.regressions(0.05)] == ["c2"] and not result.regressions(0.4)
    geomean = result.geomeans()[0]
    assert geomean["pairs"] == 4 and geomean["slower"] == 1 and geomean["geomean"] == pytest.approx(1.3 ** 0.25)


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(0.2, 5.0), seed=st.integers(0, 2**32 - 1))
def test_a_scaled_copy_gives_its_factor_and_the_verdict_of_its_direction(factor, seed):
    times = blocks(np.random.default_rng(seed), n=20, noise=0.01)
    pair = compare_pair(measured("c", times), measured("c", [t * factor for t in times]))
    assert pair.ratio == pytest.approx(factor) and pair.low <= pair.ratio <= pair.high
    expected = "slower" if factor > 1.1 else "faster" if factor < 0.9 else None
    assert expected is None or pair.verdict == expected
    if 0.995 <= factor <= 1.005:
        assert pair.verdict == "same"


def test_faster_is_reported_faster():
    rng = np.random.default_rng(2)
    times = blocks(rng)
    pair = compare_pair(measured("c", times), measured("c", [t / 2 for t in times]))
    assert pair.verdict == "faster" and pair.ratio == pytest.approx(0.5)


def test_noisy_pair_whose_intervals_overlap_is_not_a_regression(tmp_path, capsys):
    rng = np.random.default_rng(3)
    base = write(tmp_path / "a.jsonl", [record("noisy", blocks(rng, n=8, noise=0.3))])
    new = write(tmp_path / "b.jsonl", [record("noisy", blocks(rng, n=8, noise=0.3, scale=1.1))])
    pair = compare(read_results(base), read_results(new)).pairs[0]
    assert pair.ratio > 1.05 and pair.low < 1.0 < pair.high and pair.verdict == "same"
    assert main(["compare", str(base), str(new), "--fail-on-regression", "5"]) == 0


def test_a_file_compared_with_itself_is_same_everywhere_and_passes_the_gate(capsys):
    assert main(["compare", str(GOLDEN), str(GOLDEN), "--fail-on-regression", "0", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["pairs"]) == 36 and {p["verdict"] for p in out["pairs"]} == {"same"}
    assert out["environment"] == [] and out["only_base"] == out["only_new"] == []
    assert all(p["ratio"] == 1.0 and p["ratio_low"] <= 1.0 <= p["ratio_high"] for p in out["pairs"])


def test_done_when_one_case_twice_as_slow_fails_the_gate_and_is_named(tmp_path, capsys):
    (tmp_path / "new").mkdir()
    slow = scaled(GOLDEN, tmp_path / "new" / "b.jsonl", "seed-conv-7x7", 2.0)
    assert main(["compare", str(GOLDEN), str(tmp_path / "new"), "--fail-on-regression", "5"]) == 1  # a folder
    captured = capsys.readouterr()
    regressions = [line for line in captured.err.splitlines() if line.startswith("regression:")]
    assert regressions and all("seed-conv-7x7" in line for line in regressions)
    records = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    slowed = [r for r in records if r.get("case") == "seed-conv-7x7" and r.get("status") == "ok"]
    reliable = [r for r in slowed if not {"unstable", "noisy", "overhead_bound"} & set(r["stats"]["flags"])]
    assert (len(reliable), len(slowed)) == (5, 8)  # the golden run flagged torch's forward, dX and dW
    assert len(regressions) == len(reliable)  # only the reliably timed ones are regressions
    assert "slower" in captured.out and "2.000" in captured.out
    assert captured.out.count("slower (flagged: ") == len(slowed) - len(reliable)
    assert main(["compare", str(GOLDEN), str(slow)]) == 0  # without the gate, a report only
    assert main(["compare", str(GOLDEN), str(slow), "--fail-on-regression", "150"]) == 0  # 2× is not > 2.5×


def test_failed_measurements_are_reported_not_compared_and_fail_the_gate(tmp_path, capsys):
    rng = np.random.default_rng(4)
    times = blocks(rng)
    base = write(tmp_path / "a.jsonl", [record("c1", times), record("c2", times), record("c3", times)])
    new = write(tmp_path / "b.jsonl", [record("c1", times, check={"status": "fail"}),
                                       record("c2", [], status="error", reason="boom"), record("c3", times)])
    result = compare(read_results(base), read_results(new))
    reasons = {p.base.case: (p.verdict, p.reason) for p in result.pairs}
    assert reasons["c1"] == ("not compared", "new: numerical check failed")
    assert reasons["c2"] == ("not compared", "new: error: boom") and reasons["c3"][0] == "same"
    assert main(["compare", str(base), str(new), "--fail-on-regression", "5"]) == 1
    assert "boom" in capsys.readouterr().err
    assert main(["compare", str(new), str(base), "--fail-on-regression", "5"]) == 0  # fixed, not broken


def test_environment_differences_and_one_sided_measurements_are_listed(tmp_path, capsys):
    rng = np.random.default_rng(5)
    times = blocks(rng)
    base = write(tmp_path / "a.jsonl", [record("c1", times), record("old", times)], version="2.13.0")
    new = write(tmp_path / "b.jsonl", [record("c1", times), record("added", times)], run_id="r2", version="2.14.0")
    result = compare(read_results(base), read_results(new))
    assert result.environment == [("torch on cpu: versions.torch", "2.13.0", "2.14.0")]  # run ids are not facts
    assert [m.case for m in result.only_base] == ["old"] and [m.case for m in result.only_new] == ["added"]
    assert main(["compare", str(base), str(new), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| torch on cpu: versions.torch | 2.13.0 | 2.14.0 |" in out
    assert "Only in base (1): old" in out and "Only in new (1): added" in out
    assert main(["compare", str(base), str(new), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["case"], r["verdict"], r["ratio"], r["flags"]) for r in rows] == [("c1", "same", "1.0", "")]
    assert main(["compare", str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "versions.torch" in out and "only in base (1):\n  old (torch forward eager · NCHW · strict · 2 threads)\n" \
        in out


def test_the_terminal_lists_one_sided_measurements_one_a_line(tmp_path, capsys):
    """320 ids on one line were unreadable: one a line, the first 20, and where the rest are."""
    rng = np.random.default_rng(7)
    times = blocks(rng)
    base = write(tmp_path / "a.jsonl", [record("both", times)] + [record(f"old-{i:02}", times) for i in range(25)])
    new = write(tmp_path / "b.jsonl", [record("both", times), record("added", times)], run_id="r2")
    assert main(["compare", str(base), str(new)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("only in base (25):")
    assert lines[at + 1:at + 22] == [f"  old-{i:02} (torch forward eager · NCHW · strict · 2 threads)"
                                     for i in range(20)] + [
        "  … and 5 more (--format json lists every one, under only_base)"]
    assert lines[at + 22:at + 24] == ["only in new (1):", "  added (torch forward eager · NCHW · strict · 2 threads)"]


@pytest.mark.parametrize("problem", ["missing", "not_results", "no_overlap", "bad_threshold", "bad_gate"])
def test_bad_input_exits_2_with_one_message(tmp_path, capsys, problem):
    rng = np.random.default_rng(6)
    good = write(tmp_path / "a.jsonl", [record("c1", blocks(rng))])
    other = {"missing": tmp_path / "nothing.jsonl",
             "not_results": tmp_path / "notes.jsonl",
             "no_overlap": write(tmp_path / "b.jsonl", [record("c1", blocks(rng), backend="jax")], backend="jax")}
    (tmp_path / "notes.jsonl").write_text("hello\n")
    extra = {"bad_threshold": ["--threshold", "-1"], "bad_gate": ["--fail-on-regression", "nan"]}.get(problem, [])
    assert main(["compare", str(good), str(other.get(problem, good)), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    expected = {"missing": "no such results file", "not_results": "not valid JSON", "bad_threshold": "--threshold",
                "no_overlap": "differ in backend (\"torch\" vs \"jax\")", "bad_gate": "--fail-on-regression"}
    assert expected[problem] in err


# ------------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize("check, compared", [(None, True), ({"status": "pass"}, True), ({"status": "fail"}, False)])
def test_a_record_without_a_check_is_compared_and_one_that_failed_it_is_not(tmp_path, capsys, check, compared):
    """A run with --no-check records no check: its times are as good as a checked run's (not a failure)."""
    times = blocks(np.random.default_rng(11))
    base = write(tmp_path / "a.jsonl", [record("c1", times, check=None)])
    new = write(tmp_path / "b.jsonl", [record("c1", [t * 2 for t in times], check=check)], run_id="r2")
    pair = compare(read_results(base), read_results(new)).pairs[0]
    expected = ("slower", True) if compared else ("not compared", False)
    assert (pair.verdict, pair.ratio == pytest.approx(2.0)) == expected
    assert pair.reason == ("" if compared else "new: numerical check failed")
    assert main(["compare", str(base), str(new), "--fail-on-regression", "5"]) == 1  # slower, or broken in new
    err = capsys.readouterr().err
    assert ("regression: slower by more than 5%" in err) is compared
    assert ("fine in base, not in new" in err) is not compared
    assert main(["compare", str(new), str(base), "--fail-on-regression", "5"]) == 0  # faster, or a failure fixed


@pytest.mark.parametrize("low, high, verdict", [
    (1 + SAME_BAND, 1.2, "same"), (1.0301, 1.2, "slower"),  # at the band's edge: no clear difference
    (0.8, 1 - SAME_BAND, "same"), (0.8, 0.9699, "faster"),
    (0.98, 1.02, "same"), (0.5, 1.5, "same"), (math.nan, math.nan, "not compared"),
])
def test_the_verdict_at_the_edges_of_the_same_speed_band(monkeypatch, low, high, verdict):
    import suite.compare

    monkeypatch.setattr(suite.compare, "ratio_ci", lambda new, base: (1.0, low, high))
    times = blocks(np.random.default_rng(12))
    pair = compare_pair(measured("c", times), measured("c", times))  # the default threshold: SAME_BAND (3%)
    assert pair.verdict == verdict
    assert SAME_BAND == 0.03  # the methodology's band; the cases above are written around it


def test_the_gate_counts_a_regression_only_beyond_its_own_threshold(monkeypatch):
    import suite.compare

    times = blocks(np.random.default_rng(13))
    for low, regression in ((1.05, False), (1.0501, True)):
        monkeypatch.setattr(suite.compare, "ratio_ci", lambda new, base, low=low: (1.1, low, 1.2))
        pair = compare_pair(measured("c", times), measured("c", times))
        assert pair.verdict == "slower" and pair.slower_by_more_than(0.05) is regression


def test_the_default_band_is_the_reports_and_is_stated_in_help_and_outputs(tmp_path, capsys):
    times = blocks(np.random.default_rng(14), noise=0.001)
    pair = compare_pair(measured("c", times), measured("c", [t * 1.04 for t in times]))
    assert pair.low > 1.03 and pair.verdict == "slower"  # 4% is beyond the 3% band (it was within compare's 5%)
    assert main(["compare", "--help"]) == 0
    assert "(default 3: the report's same-speed band)" in " ".join(capsys.readouterr().out.split())
    base = write(tmp_path / "a.jsonl", [record("c1", times)])
    new = write(tmp_path / "b.jsonl", [record("c1", [t * 1.04 for t in times])], run_id="r2")
    for form in ("table", "markdown", "json"):
        assert main(["compare", str(base), str(new), "--format", form]) == 0
        out = capsys.readouterr().out
        assert "lies wholly beyond 1 ± 3%" in " ".join((json.loads(out)["rule"] if form == "json" else out).split())
    assert main(["compare", str(base), str(new), "--threshold", "5", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == 0.05 and out["pairs"][0]["verdict"] == "same" and "1 ± 5%" in out["rule"]


# ------------------------------------------------------------------------------------------------ unreliable timings
def flagged(case: str, times: list[float], *flags: str, **extra: Any) -> dict[str, Any]:
    """``record`` whose statistics carry timing flags, as the worker writes them."""
    data = record(case, times, **extra)
    data["stats"]["flags"] = list(flags)
    return data


def test_a_flagged_pair_shows_its_flags_everywhere_and_is_never_a_regression(tmp_path, capsys):
    rng = np.random.default_rng(15)
    times = {case: blocks(rng, noise=0.001) for case in ("tiny", "busy", "solid")}
    base = write(tmp_path / "a.jsonl", [flagged("tiny", times["tiny"], "overhead_bound", "short_blocks"),
                                        record("busy", times["busy"]), record("solid", times["solid"])])
    new = write(tmp_path / "b.jsonl", [flagged("tiny", [t * 2 for t in times["tiny"]], "overhead_bound"),
                                       flagged("busy", [t * 2 for t in times["busy"]], "contended"),
                                       record("solid", [t * 2 for t in times["solid"]])], run_id="r2")
    result = compare(read_results(base), read_results(new))
    pairs = {p.base.case: p for p in result.pairs}
    assert {case: p.verdict for case, p in pairs.items()} == {"tiny": "slower", "busy": "slower", "solid": "slower"}
    assert pairs["tiny"].flags == {"base": ("overhead_bound",), "new": ("overhead_bound",)}  # short_blocks is benign
    assert pairs["busy"].flags == {"new": ("contended",)} and pairs["solid"].flags == {}
    assert [p.base.case for p in result.regressions(0.05)] == ["solid"]
    assert result.summary() == "3 measurements in both: 3 slower (2 flagged)"
    assert main(["compare", str(base), str(new), "--fail-on-regression", "5"]) == 1
    out, err = capsys.readouterr()
    assert [line.split(": ")[-1].split(" · ")[0] for line in err.splitlines()] == ["solid"]
    assert "slower (flagged: base: overhead_bound; new: overhead_bound)" in " ".join(out.split())
    assert main(["compare", str(base), str(new), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| slower (flagged: new: contended) |" in markdown and "never counted as a regression" in markdown
    assert main(["compare", str(base), str(new), "--format", "csv"]) == 0
    rows = {r["case"]: r["flags"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows == {"tiny": "base: overhead_bound; new: overhead_bound", "busy": "new: contended", "solid": ""}
    assert main(["compare", str(base), str(new), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] == 2 and [p["case"] for p in out["pairs"]] == ["solid", "tiny", "busy"]  # reliable first
    assert out["geomeans"][0]["flagged"] == 2
    reliable_only = write(tmp_path / "c.jsonl", [flagged("tiny", [t * 2 for t in times["tiny"]], "overhead_bound"),
                                                 flagged("busy", [t * 2 for t in times["busy"]], "noisy")],
                          run_id="r3")
    assert main(["compare", str(base), str(reliable_only), "--fail-on-regression", "5"]) == 0


@pytest.mark.slow
def test_two_real_runs_of_overhead_bound_cases_come_out_same_under_the_gate(tmp_path, capsys):
    """Two identical runs of µs GEMMs (torch, the smoke catalog): their times measure dispatch overhead and a busy
    machine more than the op; they are flagged, shown, and pass --fail-on-regression 5."""
    pytest.importorskip("torch")
    args = ["run", "--catalog", "smoke", "--backend", "torch", "--id", "smoke-gemm-*", "--pass", "forward",
            "--time-cap", "0.2", "--block-time", "0.01", "--threads", "1"]
    for name in ("a", "b"):
        assert main([*args, "-o", str(tmp_path / f"{name}.jsonl")]) == 0
    capsys.readouterr()
    result = compare(read_results(tmp_path / "a.jsonl"), read_results(tmp_path / "b.jsonl"))
    assert len(result.pairs) >= 2 and all("overhead_bound" in p.base.unreliable for p in result.pairs)
    assert main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--fail-on-regression", "5"]) == 0
    assert "overhead_bound" in capsys.readouterr().out
    case = result.pairs[0].base.case
    slow = scaled(tmp_path / "b.jsonl", tmp_path / "slow.jsonl", case, 2.0)
    assert main(["compare", str(tmp_path / "a.jsonl"), str(slow), "--fail-on-regression", "5", "--format",
                 "json"]) == 0  # twice as slow, but flagged: not counted
    planted = next(p for p in json.loads(capsys.readouterr().out)["pairs"] if p["case"] == case)
    assert planted["ratio"] == pytest.approx(2 * result.pairs[0].ratio) and "overhead_bound" in planted["flags"]


# ------------------------------------------------------------------------------------------------ --across
def test_across_math_pairs_strict_with_tf32_on_the_rest_of_the_identity(tmp_path, capsys):
    rng = np.random.default_rng(16)
    times = {case: blocks(rng) for case in ("c1", "c2")}
    strict = write(tmp_path / "strict.jsonl", [record(c, t) for c, t in times.items()])
    tf32 = write(tmp_path / "tf32.jsonl", [record("c1", [x / 2 for x in times["c1"]], math="tf32"),
                                           record("c2", times["c2"], math="tf32"),
                                           record("c3", times["c2"], math="tf32", threads=1)], run_id="r2")
    # Without --across the full identity pairs nothing: the message names the setting and the flag.
    assert main(["compare", str(strict), str(tf32)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert 'they differ in math ("strict" vs "tf32"); to compare across math, pass --across math' in err
    result = compare(read_results(strict), read_results(tf32), across=["math"])
    pairs = {p.base.case: p for p in result.pairs}
    assert {c: (p.verdict, p.change) for c, p in pairs.items()} == {"c1": ("faster", "math: strict → tf32"),
                                                                   "c2": ("same", "math: strict → tf32")}
    assert pairs["c1"].ratio == pytest.approx(0.5) and pairs["c1"].key.math is None
    assert pairs["c1"].key.variant == "eager · NCHW · 2 threads"  # the setting paired across is left out
    assert [m.case for m in result.only_new] == ["c3"]  # threads differ too: not paired across math alone
    assert main(["compare", str(strict), str(tf32), "--across", "math", "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| variant | base → new |" in markdown and "| math: strict → tf32 |" in markdown
    assert main(["compare", str(strict), str(tf32), "--across", "math,threads", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["across"] == ["math", "threads"] and [p["change"] for p in out["pairs"]] == ["math: strict → tf32"] * 2


def test_across_refuses_a_side_holding_several_values_of_the_setting(tmp_path, capsys):
    times = blocks(np.random.default_rng(17))
    base = write(tmp_path / "a.jsonl", [record("c1", times)])
    both = write(tmp_path / "b.jsonl", [record("c1", times), record("c1", times, math="tf32")], run_id="r2")
    assert main(["compare", str(base), str(both), "--across", "math"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: --across math: NEW holds more than one of them for c1 (torch forward fp32): "
                          "math strict and tf32.")
    assert main(["compare", str(both), str(base), "--across", "math"]) == 2
    assert "BASE holds more than one" in capsys.readouterr().err
    assert main(["compare", str(base), str(both)]) == 0  # on the full identity strict pairs with strict
    assert "1 measurements in both: 1 same" in capsys.readouterr().out


@pytest.mark.parametrize("across, expected", [
    ("mth", "--across 'mth': not a setting to compare across (did you mean 'math'?); choose from backend, device, "
            "dtype, mode, layout, math, threads, options, l2"),
    ("case", "--across 'case': not a setting to compare across"), ("pass", "--across 'pass': not a setting")])
def test_across_takes_only_the_settings_of_the_identity(tmp_path, capsys, across, expected):
    base = write(tmp_path / "a.jsonl", [record("c1", blocks(np.random.default_rng(18)))])
    assert main(["compare", str(base), str(base), "--across", across]) == 2
    assert " ".join(capsys.readouterr().err.split()).startswith(f"error: {expected}")


def test_across_l2_and_threads_label_the_pairs_without_the_blanked_setting(tmp_path):
    times = blocks(np.random.default_rng(19))
    warm = write(tmp_path / "a.jsonl", [record("c1", times, device="gpu")])
    cold = write(tmp_path / "b.jsonl", [record("c1", [t * 1.5 for t in times], device="gpu", l2="cold", threads=1)],
                 run_id="r2")
    pair = compare(read_results(warm), read_results(cold), across=["l2", "threads"]).pairs[0]
    assert pair.key.variant == "eager · NCHW · strict" and pair.change == "l2: warm → cold; threads: 2 → 1"
    assert pair.verdict == "slower" and pair.label.endswith("(l2: warm → cold; threads: 2 → 1)")


def test_a_partial_overlap_says_which_setting_parts_differ_in(tmp_path, capsys):
    times = blocks(np.random.default_rng(20))
    base = write(tmp_path / "a.jsonl", [record("c1", times), record("c2", times, options={"ynn_conv": "on"})])
    new = write(tmp_path / "b.jsonl", [record("c1", times), record("c2", times, options={"ynn_conv": "off"})],
                run_id="r2")
    assert main(["compare", str(base), str(new)]) == 0
    assert ("warning: 1 measurements only in NEW have a counterpart only in BASE that differs in options: --across "
            "options compares them") in " ".join(capsys.readouterr().err.split())
    result = compare(read_results(base), read_results(new), across=["options"])
    assert [p.change for p in result.pairs] == ["", "options: ynn_conv=on → ynn_conv=off"]


# ------------------------------------------------------------------------------------------------ merge
def test_merge_accepts_runs_that_differ_only_in_backend_options(tmp_path, capsys):
    rng = np.random.default_rng(7)
    plain = write(tmp_path / "jax.jsonl", [record("c1", blocks(rng), backend="jax")], backend="jax",
                  options_flags={"XLA_FLAGS": "", "ynn_conv": "default"})
    ynn_off = write(tmp_path / "jax-ynn-off.jsonl", [record("c1", blocks(rng), backend="jax",
                                                           options={"ynn_conv": "off"})], run_id="r2", backend="jax",
                    options_flags={"XLA_FLAGS": "--off", "ynn_conv": "off"})
    assert main(["merge", str(plain), str(ynn_off), "-o", str(tmp_path / "all.jsonl")]) == 0
    assert len(read_results(tmp_path / "all.jsonl").measurements) == 2
    # Same options, different flags: refused, naming the flag.
    again = write(tmp_path / "again.jsonl", [record("c2", blocks(rng), backend="jax", options={"ynn_conv": "off"})],
                  run_id="r3", backend="jax", options_flags={"XLA_FLAGS": "--other", "ynn_conv": "off"})
    capsys.readouterr()
    assert main(["merge", str(ynn_off), str(again), "-o", str(tmp_path / "m.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "jax on cpu: flags.XLA_FLAGS differs" in err and "--other" in err and "ynn_conv" in err
    # Different framework versions: refused whatever the options, naming the version.
    newer = write(tmp_path / "newer.jsonl", [record("c3", blocks(rng), backend="jax")], run_id="r4",
                  backend="jax", version="0.11.0", options_flags={"XLA_FLAGS": "", "ynn_conv": "default"})
    assert main(["merge", str(plain), str(newer), "-o", str(tmp_path / "n.jsonl")]) == 2
    assert 'jax on cpu: versions.jax differs: "2.13.0" in run r1; "0.11.0" in run r4' in capsys.readouterr().err


def test_merge_names_the_differing_version(tmp_path, capsys):
    rng = np.random.default_rng(8)
    a = write(tmp_path / "a.jsonl", [record("c1", blocks(rng))], version="2.13.0")
    b = write(tmp_path / "b.jsonl", [record("c2", blocks(rng))], run_id="r2", version="2.14.0")
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "m.jsonl")]) == 2
    assert 'torch on cpu: versions.torch differs: "2.13.0" in run r1; "2.14.0" in run r2' in capsys.readouterr().err


@pytest.mark.parametrize("older_status", ["ok", "error"])
def test_merge_keeps_the_newer_measurement_of_a_key_whatever_the_argument_order(tmp_path, capsys, older_status):
    rng = np.random.default_rng(21)
    old_times, new_times, other = blocks(rng), blocks(rng, scale=1.5), blocks(rng)
    older = write(tmp_path / "older.jsonl", [
        record("c1", old_times if older_status == "ok" else [], status=older_status, finished="2026-01-01T10:00:00"),
        record("c2", other, finished="2026-01-01T10:00:01")])
    newer = write(tmp_path / "newer.jsonl", [record("c1", new_times, finished="2026-01-02T10:00:00")], run_id="r2")
    for number, files in enumerate([(older, newer), (newer, older)]):
        out = tmp_path / f"merged-{number}.jsonl"
        assert main(["merge", *map(str, files), "-o", str(out)]) == 0
        assert capsys.readouterr().out == (f"{out}: 2 measurements from 2 runs; left out 1 records superseded by a "
                                           "later measurement of their key\n")
        merged = {m.case: m for m in read_results(out).measurements}
        assert (merged["c1"].run_id, merged["c1"].status, merged["c1"].block_times) == ("r2", "ok", tuple(new_times))
        assert merged["c2"].block_times == tuple(other)


# ------------------------------------------------------------------------------------------------ show, list
def test_show_filters_sorts_and_exports(capsys):
    assert main(["show", str(GOLDEN), "--backend", "torch", "--case", "seed-*", "--sort", "median",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["backend"] for r in rows} == {"torch"} and all(r["case"].startswith("seed-") for r in rows)
    medians = [r["median_s"] for r in rows]
    assert medians == sorted(medians, reverse=True)
    assert main(["show", str(GOLDEN), "--status", "unsupported", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = sum(json.loads(line).get("status") == "unsupported" for line in GOLDEN.read_text().splitlines())
    assert len(table) == expected and {r["status"] for r in table} <= {"unsupported"}
    assert main(["show", str(GOLDEN), "--case", "no-such-*"]) == 0
    assert "0 of " in capsys.readouterr().out
    assert main(["show", str(GOLDEN), "--status", "ok,broken"]) == 2
    assert "unknown status 'broken'; choose from ok, unsupported" in capsys.readouterr().err
    assert main(["show", str(GOLDEN), "--backend", "torhc"]) == 2
    assert "unknown backend 'torhc' (did you mean 'torch'?); choose from torch, tensorflow" in capsys.readouterr().err


def test_show_gives_a_column_to_each_setting_its_rows_differ_in(tmp_path, capsys):
    rng = np.random.default_rng(9)
    strict = write(tmp_path / "strict.jsonl", [record("c1", blocks(rng))])
    tf32 = write(tmp_path / "tf32.jsonl", [record("c1", blocks(rng), math="tf32")], run_id="r2")
    assert main(["show", str(strict)]) == 0
    assert "math" not in capsys.readouterr().out  # one setting for every row: no column
    assert main(["show", str(strict), str(tf32)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "backend" in line)
    assert "math" in header and "threads" not in header and "l2" not in header
    assert [line.split("│")[7].strip() for line in out.splitlines() if "c1" in line] == ["strict", "tf32"]


def test_list_as_json(capsys):
    assert main(["list", "--catalog", "smoke", "--op", "gemm", "--format", "json"]) == 0
    cases = json.loads(capsys.readouterr().out)
    assert cases and {c["op"] for c in cases} == {"gemm"}
    assert all(c["flops_forward"] == 2 * c["dims"]["m"] * c["dims"]["n"] * c["dims"]["k"] for c in cases)
    assert main(["list", "--subsets", "--format", "json"]) == 0
    subsets = {s["subset"]: s for s in json.loads(capsys.readouterr().out)}
    assert subsets["smoke"]["cases"] >= len(cases)
    # Every pass each op has: GEMM and conv forward, dX, dW (each the forward's FLOPs) and dX+dW; attention forward
    # and its backward (twice the forward).
    assert subsets["seed"]["kinds"]["attention"] == subsets["seed"]["kinds"]["rnn"] == 0
    assert subsets["seed"]["flops_all_passes"] == 5 * subsets["seed"]["flops_forward"]
    assert subsets["attention"]["kinds"]["attention"] == subsets["attention"]["cases"] > 0
    assert subsets["attention"]["flops_all_passes"] == 3 * subsets["attention"]["flops_forward"]


# ------------------------------------------------------------------------------------------------ history in the report
def upgraded(source: Path, target: Path, torch: str, created: str, slow_case: str, factor: float) -> Path:
    """``source`` as if run again later with another torch version, one torch case ``factor`` times slower."""
    lines = []
    for line in source.read_text().splitlines():
        data = json.loads(line)
        data["run_id"] = f"{data['run_id']}-{torch}"
        if data["record"] == "header":
            data["created"] = created
        if data["record"] == "worker" and data["backend"] == "torch":
            data["versions"]["torch"] = torch
        if data["record"] == "measurement" and data["backend"] == "torch" and data["case"] == slow_case \
                and data.get("block_times"):
            slow_down(data, factor)
        lines.append(json.dumps(data))
    target.write_text("\n".join(lines) + "\n")
    return target


def test_history_tracks_runs_that_differ_in_framework_version(tmp_path):
    from reports.history import tracks

    (tmp_path / "a.jsonl").write_text(GOLDEN.read_text())
    upgraded(GOLDEN, tmp_path / "b.jsonl", "2.14.0", "2099-01-01T00:00:00+00:00", "seed-conv-7x7", 2.0)
    found = tracks(read_many([tmp_path]))
    assert [t.backend for t in found] == ["torch"]  # tensorflow's runs share one configuration: one point
    assert [p.label for p in found[0].points] == ["#1 torch 2.13.0", "#2 torch 2.14.0"]
    assert not tracks(read_results(GOLDEN))  # a single run has no history


def test_report_of_two_framework_versions_has_a_history_section(tmp_path):
    from reports.site import build_site

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.jsonl").write_text(GOLDEN.read_text())
    upgraded(GOLDEN, tmp_path / "r" / "b.jsonl", "2.14.0", "2099-01-01T00:00:00+00:00", "seed-conv-7x7", 2.0)
    upgraded(GOLDEN, tmp_path / "r" / "c.jsonl", "2.15.0", "2099-02-01T00:00:00+00:00", "seed-conv-3x3", 3.0)
    html = build_site([tmp_path / "r"], tmp_path / "site").read_text()
    section = html[html.index('<section id="history">'):]
    section = section[:section.index("</section>")]
    options = [o.split(">", 1)[1] for o in section.split("<option ")[1:]]
    assert options[0].startswith("#2 torch 2.14.0 → #3 torch 2.15.0") and len(options) == 3  # last two by default
    tables = section.split('class="history-comparison"')[1:]
    assert "hidden" not in tables[0].split(">")[0] and all("hidden" in t.split(">")[0] for t in tables[1:])
    first_row = tables[0].split("<tbody>")[1].split("</tr>")[0]
    assert "seed-conv-3x3" in first_row and "3.000" in first_row and "slower" in first_row
    assert "seed-conv-7x7" in tables[1].split("<tbody>")[1].split("</tr>")[0]  # #1 → #2: the 2× case first
    image = tmp_path / "site" / "figures" / "history-1.png"
    assert image.stat().st_size > 1000 and 'src="figures/history-1.png"' in section

    single = build_site([GOLDEN], tmp_path / "single").read_text()
    assert 'id="history"' not in single


def test_history_compares_the_last_two_first_and_keeps_the_tables_few():
    from reports.history import pairs_to_compare

    assert pairs_to_compare(2) == [(0, 1)]
    assert pairs_to_compare(3)[0] == (1, 2) and sorted(pairs_to_compare(3)) == [(0, 1), (0, 2), (1, 2)]
    many = pairs_to_compare(8)
    assert many[0] == (6, 7) and (0, 7) in many and (2, 3) in many and (0, 2) not in many and len(many) == 13


def test_too_few_blocks_are_flagged_and_never_a_regression_and_one_block_is_not_compared():
    rng = np.random.default_rng(9)
    times = blocks(rng, n=3)
    few = {"median": float(np.median(times)) / 10, "flags": ["few_blocks"]}  # as stats.summarize flags 3 blocks
    pair = compare_pair(measured("c", times, stats=few), measured("c", [t * 3 for t in times]))
    assert pair.verdict == "slower" and pair.ratio == pytest.approx(3.0) and pair.flags == {"base": ("few_blocks",)}
    assert pair.low > 1.05 and not pair.slower_by_more_than(0.05)
    one = compare_pair(measured("c", times[:1]), measured("c", [t * 3 for t in times[:1]]))
    assert one.verdict == "not compared" and one.ratio == pytest.approx(3.0)
    assert one.reason == "a single timed block on a side: no confidence interval"


def test_pairs_are_listed_slower_first_then_faster_then_not_compared_then_same(tmp_path, capsys):
    rng = np.random.default_rng(10)
    times = {case: blocks(rng) for case in ("a", "b", "c", "d", "e")}
    factor = {"a": 1.0, "b": 1.2, "c": 0.5, "d": 1.5, "e": 1.0}
    base = write(tmp_path / "a.jsonl", [record(c, t) for c, t in times.items()])
    new = write(tmp_path / "b.jsonl", [record(c, [x * factor[c] for x in t]) if c != "e" else
                                       record(c, [], status="timeout") for c, t in times.items()])
    assert main(["compare", str(base), str(new), "--format", "json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert [(p["case"], p["verdict"]) for p in pairs] == [("d", "slower"), ("b", "slower"), ("c", "faster"),
                                                          ("e", "not compared"), ("a", "same")]

