"""`compare`, the regression gate, `merge`'s policy and `show`/`list` for scripts, on synthetic and golden results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.cli import main
from suite.compare import compare, compare_pair
from suite.results import ResultsWriter, read_many, read_results

GOLDEN = Path(__file__).parent / "data" / "golden" / "smoke_torch_tf.jsonl"


def blocks(rng: np.random.Generator, n: int = 20, noise: float = 0.01, scale: float = 1.0) -> list[float]:
    """Block times of 10 calls of about 1 ms each, with multiplicative noise."""
    return list(scale * 10e-3 * (1 + noise * rng.standard_normal(n)))


def record(case: str, times: list[float], run_id: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"record": "measurement", "run_id": run_id, "case": case, "backend": "torch", "device": "cpu",
            "dtype": "fp32", "pass": "forward", "mode": "eager", "layout": "NCHW", "math": "strict", "threads": 2,
            "options": {}, "op": "gemm", "status": "ok", "block_times": times, "calls_per_block": 10,
            "stats": {"median": float(np.median(times)) / 10 if times else None}, "check": {"status": "pass"}, **extra}


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
    verdicts = {p.base["case"]: p for p in result.pairs}
    assert verdicts["c2"].verdict == "slower" and verdicts["c2"].ratio == pytest.approx(1.3)
    assert verdicts["c2"].low > 1.05 and verdicts["c2"].high < 1.5
    assert {p.verdict for case, p in verdicts.items() if case != "c2"} == {"same"}
    assert not result.only_base and not result.only_new and not result.environment
    assert [p.base["case"] for p in result.regressions(0.05)] == ["c2"] and not result.regressions(0.4)
    geomean = result.geomeans()[0]
    assert geomean["pairs"] == 4 and geomean["slower"] == 1 and geomean["geomean"] == pytest.approx(1.3 ** 0.25)


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(0.2, 5.0), seed=st.integers(0, 2**32 - 1))
def test_a_scaled_copy_gives_its_factor_and_the_verdict_of_its_direction(factor, seed):
    times = blocks(np.random.default_rng(seed), n=20, noise=0.01)
    pair = compare_pair(record("c", times), record("c", [t * factor for t in times]))
    assert pair.ratio == pytest.approx(factor) and pair.low <= pair.ratio <= pair.high
    expected = "slower" if factor > 1.1 else "faster" if factor < 0.9 else None
    assert expected is None or pair.verdict == expected
    if 0.995 <= factor <= 1.005:
        assert pair.verdict == "same"


def test_faster_is_reported_faster():
    rng = np.random.default_rng(2)
    times = blocks(rng)
    pair = compare_pair(record("c", times), record("c", [t / 2 for t in times]))
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
    assert len(regressions) == sum(json.loads(line).get("case") == "seed-conv-7x7" and json.loads(line)["status"] ==
                                   "ok" for line in GOLDEN.read_text().splitlines())
    assert "slower" in captured.out and "2.000" in captured.out
    assert main(["compare", str(GOLDEN), str(slow)]) == 0  # without the gate, a report only
    assert main(["compare", str(GOLDEN), str(slow), "--fail-on-regression", "150"]) == 0  # 2× is not > 2.5×


def test_failed_measurements_are_reported_not_compared_and_fail_the_gate(tmp_path, capsys):
    rng = np.random.default_rng(4)
    times = blocks(rng)
    base = write(tmp_path / "a.jsonl", [record("c1", times), record("c2", times), record("c3", times)])
    new = write(tmp_path / "b.jsonl", [record("c1", times, check={"status": "fail"}),
                                       record("c2", [], status="error", reason="boom"), record("c3", times)])
    result = compare(read_results(base), read_results(new))
    reasons = {p.base["case"]: (p.verdict, p.reason) for p in result.pairs}
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
    assert [m["case"] for m in result.only_base] == ["old"] and [m["case"] for m in result.only_new] == ["added"]
    assert main(["compare", str(base), str(new), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| torch on cpu: versions.torch | 2.13.0 | 2.14.0 |" in out
    assert "Only in base (1): old" in out and "Only in new (1): added" in out
    assert main(["compare", str(base), str(new), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["case"], r["verdict"], r["ratio"]) for r in rows] == [("c1", "same", "1.0")]
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


def test_too_few_blocks_for_a_median_ci_are_not_compared(tmp_path):
    rng = np.random.default_rng(9)
    times = blocks(rng, n=3)
    pair = compare_pair(record("c", times), record("c", [t * 3 for t in times]))
    assert pair.verdict == "not compared" and pair.ratio == pytest.approx(3.0)
    assert pair.reason == "too few blocks for a confidence interval (base: 3 blocks, new: 3 blocks)"
    assert not pair.slower_by_more_than(0.05)


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


def test_a_plugin_keeps_its_report_colour_in_the_history_figure():
    from matplotlib.colors import to_hex

    from reports.figures import palette
    from reports.history import Track, figure

    order = ("torch", "numpy", "numpy2")  # two plugins: the second takes the second spare colour in every figure
    track = Track("machine", "numpy2", [None, None])  # the figure reads only how many points there are
    fig = figure(track, [{"pass": "forward", "medians": [1e-3, 2e-3]}], order)
    line = fig.axes[0].lines[0]
    assert to_hex(line.get_color()) == palette(order)["numpy2"].lower() != palette(["numpy2"])["numpy2"].lower()
