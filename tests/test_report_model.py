"""The report on the typed results model, where users read it: every headline sentence and rule checked against
hand-computed values on small synthetic results (shares under their own names, direction words from the right
extreme, the same-speed band's edges, % of the measured peak, history's choice among repeated measurements, networks
judged by the catalog the runs recorded), and `run --shapes` then `report` end to end (a network partial until its
last layer is measured).

Records are written as a run writes them and typed by ``Measurement.from_record``; every run's header records the
network sets of its catalog. Framework-free except the end-to-end test (the NumPy plugin backend)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex

import backends
from reports import analysis, history, summary
from reports.palette import Palette
from suite.catalog import Case, Provenance, network_sets
from suite.ops import Gemm, op_to_dict
from suite.results import SAME_BAND, Measurement, ResultSet, RunHeader, WorkerInfo, percent_of, speed_verdict

REPO = Path(__file__).resolve().parent.parent
HEADER = {"record": "header", "environment": {
    "hostname": "h", "cpu": {"model": "test CPU", "usable_cpus": 2, "mhz": 2000.0, "vector_flags": ["avx512f"]}}}
SMALL = Gemm(64, 64, 64)


def record(case: str, backend: str, pass_: str, median: float, op: Gemm = SMALL, *, run_id: str = "r1",
           mode: str = "eager", count: int = 1, tags: tuple[str, ...] = (), blocks: tuple[float, ...] = (1.0,) * 7,
           flags: tuple[str, ...] = (), **extra: object) -> dict:
    """An ok measurement whose per-call samples are ``median`` × ``blocks`` (all equal by default: a ratio of two
    such measurements has a CI of exactly that ratio)."""
    samples = [median * b for b in blocks]
    return {"record": "measurement", "run_id": run_id, "case": case, "backend": backend, "device": "cpu",
            "dtype": "fp32", "pass": pass_, "mode": mode, "layout": "row-major", "math": "strict", "threads": 2,
            "options": {}, "op": op.kind, "dims": op_to_dict(op), "shape": op.describe(),
            "provenance": {"network": "Net", "layer": case, "source": "test"}, "count": count, "tags": list(tags),
            "flops": op.flops(pass_), "bytes": op.min_bytes(pass_, 4), "status": "ok", "default_variant": True,
            "block_times": samples, "calls_per_block": 1,
            "stats": {"median": float(np.median(samples)), "ci_low": min(samples), "ci_high": max(samples),
                      "flags": list(flags)}, **extra}


def results(*records: dict, cases: tuple[Case, ...] = (), recorded: bool = True,
            headers: dict[str, dict] | None = None) -> ResultSet:
    """The records as read, one header per run recording the network sets of ``cases`` (none: ``recorded`` False,
    as a schema-1 file)."""
    catalog = {"networks": [s.to_record() for s in network_sets(cases)]} if recorded else None
    runs = sorted({r["run_id"] for r in records})
    return ResultSet(headers=[RunHeader.from_record({**HEADER, "run_id": run, "catalog": catalog,
                                                     **(headers or {}).get(run, {})}) for run in runs],
                     measurements=[Measurement.from_record(r) for r in records])


# A two-layer training set: L1 (the first layer, once), L2 (three times). Step = forward 1 + 3·3 = 10, dX 3·4 = 12
# (L1's excluded), dW 2 + 3·6 = 20: 42 s, shares forward 24%, dX 29%, dW 48%, backward (dX + dW) 76%.
TIMES = {"L1": {"forward": 1.0, "backward_data": 5.0, "backward_weight": 2.0},
         "L2": {"forward": 3.0, "backward_data": 4.0, "backward_weight": 6.0}}
NET = (Case("L1", SMALL, Provenance("Net", "L1", "t"), 1, ("train", "net:toy", "first-layer")),
       Case("L2", SMALL, Provenance("Net", "L2", "t"), 3, ("train", "net:toy")))


def network(backend: str = "torch", scale: float = 1.0, layers: tuple[str, ...] = ("L1", "L2")) -> list[dict]:
    return [record(c.id, backend, p, scale * t, count=c.count, tags=c.tags) for c in NET if c.id in layers
            for p, t in TIMES[c.id].items()]


# ------------------------------------------------------------------------------------------------ shares and names
def test_the_training_headline_states_the_backward_share_and_the_table_each_share_under_its_name() -> None:
    a = analysis.analyze(results(*network(), *network("jax", 2.0), cases=NET))
    [block] = summary.backward(a)
    # 1 − forward share = 32/42 = 76% in both frameworks (jax takes twice as long in every pass)
    assert "in a Net training step (toy) the backward passes (dX + dW) take 76% of the time across 2 frameworks" \
        in block["headline"]
    shares = block["tables"][0]
    assert shares["columns"][-3:] == ["forward", "dX", "dW"]
    rows = {row[1]["text"]: [c["text"] for c in row[3:]] for row in shares["rows"]}
    assert rows == {"torch": ["42 s", "24%", "29%", "48%"], "jax": ["84 s", "24%", "29%", "48%"]}


def test_the_reliability_headline_counts_each_thing_under_its_name() -> None:
    records = [record("A", "torch", "forward", 1e-3, flags=("noisy",)),
               record("B", "torch", "forward", 1e-5, flags=("overhead_bound",)),
               record("C", "torch", "forward", 2e-5, flags=("overhead_bound", "unstable")),
               record("D", "torch", "forward", 1e-3, check={"status": "fail", "errors": {"y": 1.0}, "tolerance": 1e-5}),
               {**record("E", "torch", "forward", 1.0), "status": "error", "reason": "boom", "stats": None,
                "block_times": None},
               {**record("F", "torch", "forward", 1.0), "status": "timeout", "reason": "late", "stats": None,
                "block_times": None}]
    [block] = summary.reliability(analysis.analyze(results(*records)))
    assert block["headline"] == ("2 of 4 successful measurements are flagged unstable or noisy and 2 "
                                 "overhead-bound; 1 failed the numerical check and 2 did not run.")


# ------------------------------------------------------------------------------------------------ direction words
def test_the_fastest_framework_is_the_one_with_the_most_wins_and_the_slower_one_is_called_slower() -> None:
    # torch wins G1 and G2, jax wins G3; jax takes 2×, 2× and 0.5× torch's time: geomean speedup 2^(-1/3)
    records = [record(case, "torch", "forward", 1.0) for case in ("G1", "G2", "G3")]
    records += [record(case, "jax", "forward", t, mode="jit") for case, t in (("G1", 2.0), ("G2", 2.0), ("G3", 0.5))]
    a = analysis.analyze(results(*records), order=("torch", "jax"))
    [block] = summary.speed(a)
    assert block["headline"].startswith("On this CPU, torch is fastest in 2 of 3 case×pass comparisons (jax 1). "
                                        "Forward pass against torch (geomeans): jax 1.3× slower on GEMMs.")
    assert summary.speedup_text(2 ** (-1 / 3)) == "1.3× slower" and summary.speedup_text(2 ** (1 / 3)) == "1.3× faster"


def test_whole_networks_are_listed_fastest_first() -> None:
    a = analysis.analyze(results(*network("jax", 2.0), *network(), *network("tensorflow", 3.0), cases=NET),
                         order=("torch", "tensorflow", "jax"))
    [block] = summary.networks(a)
    assert block["headline"].startswith("On this CPU, a Net training step (toy) takes 42 s with torch, 84 s with jax, "
                                        "126 s with tensorflow")


def test_time_ratio_words_come_from_the_right_extreme() -> None:
    assert summary.time_ratio_text([2.1, 3.0]) == "is 2.1–3.0× slower"
    assert summary.time_ratio_text([0.5, 0.25]) == "is 2.0–4.0× faster"
    assert summary.time_ratio_text([0.5, 2.0]) == "takes 0.5–2× the time"
    assert summary.speedup_ci_text(0.25, 0.5) == "2.0–4.0× slower" and summary.speedup_ci_text(2.0, 4.0) == \
        "2.0–4.0× faster"
    assert summary.span([3.0, 1.0, 2.0]) == "1.00–3.00×"


# ------------------------------------------------------------------------------------------------ the same-speed band
@pytest.mark.parametrize("low, high, word", [
    (1 + SAME_BAND, 1.2, "same"),  # touching the band's edge is not beyond it
    (1 + SAME_BAND + 1e-9, 1.2, "faster"), (0.8, 1 - SAME_BAND, "same"), (0.8, 1 - SAME_BAND - 1e-9, "slower"),
    (0.98, 1.02, "same"), (math.nan, 1.2, "n/a")])
def test_the_report_verdict_is_the_one_same_speed_band(low: float, high: float, word: str) -> None:
    assert analysis.verdict(low, high) == word
    # a time ratio (conv / dense) reads the other way round
    assert analysis.verdict(low, high, above="slower", below="faster") == {"faster": "slower", "slower": "faster"}.get(
        word, word)
    assert speed_verdict(low, high) == {"faster": "higher", "slower": "lower"}.get(word, word)


@pytest.mark.parametrize("factor, verdict", [
    (1 + SAME_BAND * 1.1, "faster"), (1 + SAME_BAND * 0.9, "same"), (1 / (1 + SAME_BAND * 1.1), "slower"),
    (1 / (1 + SAME_BAND * 0.9), "same")])
def test_a_speedup_just_beyond_the_band_is_a_difference_just_inside_it_is_not(factor: float, verdict: str) -> None:
    records = [record("G", "torch", "forward", factor), record("G", "jax", "forward", 1.0, mode="jit")]
    pooled = analysis.analyze(results(*records)).pooled.set_index("backend")
    assert pooled.loc["jax", "speedup"] == pytest.approx(factor)
    assert (pooled.loc["jax", "speedup_low"], pooled.loc["jax", "speedup_high"]) == pytest.approx((factor, factor))
    assert pooled.loc["jax", "speedup_verdict"] == verdict


def test_history_states_and_applies_the_same_band(tmp_path: Path) -> None:
    """Two versions of torch on one machine, one case 4% slower (beyond the 3% band, inside compare's old 5%)."""
    records = [record("G", "torch", "forward", 1.0, run_id="old"), record("G", "torch", "forward", 1.04, run_id="new"),
               record("H", "torch", "forward", 1.0, run_id="old"), record("H", "torch", "forward", 1.02, run_id="new")]
    res = results(*records, headers={"old": {"created": "2026-01-01"}, "new": {"created": "2026-02-01"}})
    res.workers = [WorkerInfo("old", "torch", "cpu", versions={"torch": "2.13"}),
                   WorkerInfo("new", "torch", "cpu", versions={"torch": "2.14"})]
    [section] = history.section(res, tmp_path)
    assert section["threshold"] == f"1 ± {100 * SAME_BAND:g}%" == "1 ± 3%"
    rows = {r["case"]: r["verdict"] for r in section["comparisons"][0]["rows"]}
    assert rows == {"G": "slower", "H": "same"}


def test_a_plugin_keeps_its_report_colour_in_the_history_figure() -> None:
    palette = Palette.of(("torch", "numpy", "numpy2"), ("torch",))  # two plugins: the second takes the second colour
    track = history.Track("machine", "numpy2", [None, None])  # the figure reads only how many points there are
    fig = history.figure(track, [{"pass": "forward", "medians": [1e-3, 2e-3]}], palette)
    assert to_hex(fig.axes[0].lines[0].get_color()) == palette.color("numpy2").lower()
    assert palette.color("numpy2") != Palette.of(["numpy2"]).color("numpy2")  # not the colour it has alone


# ------------------------------------------------------------------------------------------------ % of peak
def test_the_measured_peak_gemm_reads_100_percent_never_above() -> None:
    median = 73 * 1e-5  # a time whose TFLOP/s t gives (100 · t) / t > 100 in floating point
    tflops = SMALL.flops() / median / 1e12
    assert 100 * tflops / tflops > 100  # the rounding the old formula fell into
    a = analysis.analyze(results(record("peak", "torch", "forward", median, tags=("peak",)),
                                 record("other", "torch", "forward", 2 * median)))
    p = a.peaks.iloc[0]
    assert p["measured_tflops"] == tflops and p["max_pct_measured"] == 100.0 and p["above_measured"] == 0
    assert percent_of(tflops, tflops) == 100.0
    pooled = a.pooled.set_index("case")["pct_peak_measured"]
    assert pooled["peak"] == 100.0 and pooled["other"] == pytest.approx(50.0)
    assert "exceed" not in summary.peaks(a)[0]["headline"]


def test_rates_are_the_measurements_own_and_pooled_samples_get_their_own() -> None:
    one = Measurement.from_record(record("G", "torch", "forward", 2e-3))
    a = analysis.analyze(results(record("G", "torch", "forward", 2e-3)))
    assert a.measurements.iloc[0]["tflops"] == one.tflops == a.pooled.iloc[0]["tflops"]
    assert a.measurements.iloc[0]["gbps"] == one.gbps
    both = analysis.analyze(results(record("G", "torch", "forward", 1e-3, run_id="r1"),
                                    record("G", "torch", "forward", 3e-3, run_id="r2", blocks=(1.0,) * 8)))
    row = both.pooled.iloc[0]  # 7 samples of 1 ms and 8 of 3 ms: the pooled median is 3 ms
    assert row["runs"] == 2 and row["median_s"] == 3e-3 and row["tflops"] == pytest.approx(SMALL.flops() / 3e-3 / 1e12)


# ------------------------------------------------------------------------------------------------ history's choice
def test_history_takes_of_repeated_measurements_the_one_that_supersedes() -> None:
    """Two runs of one configuration (shards, a resumed run) both measured H: the later finished stands, whatever
    the order they are read in; a re-measurement stands over the failure it retries."""
    late = record("H", "torch", "forward", 2.0, run_id="b", finished="2026-01-03T00:00:00")
    early = record("H", "torch", "forward", 1.0, run_id="a", finished="2026-01-02T00:00:00")
    failed = {**record("R", "torch", "forward", 1.0, run_id="a", finished="2026-01-02T00:00:00"), "status": "error",
              "stats": None, "block_times": None, "reason": "boom"}
    retry = record("R", "torch", "forward", 5.0, run_id="b", finished="2026-01-01T00:00:00",
                   retry_of={"run_id": "a", "status": "error", "reason": "boom"})
    newer = [record(c, "torch", "forward", 9.0, run_id="c") for c in ("H", "R")]
    headers = {"a": {"created": "2026-01-01"}, "b": {"created": "2026-01-01"}, "c": {"created": "2026-02-01"}}
    for order in ([late, early, failed, retry], [early, late, retry, failed]):
        res = results(*order, *newer, headers=headers)
        res.workers = [WorkerInfo(run, "torch", "cpu", versions={"torch": v})
                       for run, v in (("a", "2.13"), ("b", "2.13"), ("c", "2.14"))]
        [track] = history.tracks(res)
        first = track.points[0].measurements  # runs a and b: one configuration
        assert {k.case: m.median for k, m in first.items()} == {"H": 2.0, "R": 5.0}
        assert first == ResultSet(measurements=[m for m in res.measurements if m.run_id != "c"]).latest()
        assert {s["case"]: s["medians"] for s in history.series(track)} == {"H": [2.0, 9.0], "R": [5.0, 9.0]}


# ------------------------------------------------------------------------------------------------ recorded catalogs
def test_a_network_is_judged_by_the_catalog_its_run_recorded_not_by_the_layers_measured() -> None:
    third = Case("L3", SMALL, Provenance("Net", "L3", "t"), 2, ("train", "net:toy"))
    a = analysis.analyze(results(*network(), cases=(*NET, third)))  # the run's catalog held L3 too
    assert a.networks.empty and not a.notes
    row = a.partial_networks.iloc[0]
    assert (row["set"], row["measured"], row["layers"], row["missing"]) == ("toy", 2, 3, ["L3"])
    [block] = summary.networks(a)
    assert "2 of 3 layers" in json.dumps(block, ensure_ascii=False) and "No network was measured completely" in \
        block["headline"]
    complete = analysis.analyze(results(*network(), *[record("L3", "torch", p, 1.0, count=2, tags=third.tags)
                                                      for p in TIMES["L1"]], cases=(*NET, third)))
    assert complete.partial_networks.empty and complete.networks.iloc[0]["time_s"] == pytest.approx(42 + 2 * 3)


def test_results_without_a_recorded_catalog_fall_back_to_the_given_one_and_say_so() -> None:
    old = results(*network(), recorded=False)
    a = analysis.analyze(old, cases=NET)
    assert a.networks.iloc[0]["time_s"] == pytest.approx(42)
    assert a.notes == ["These results did not record the catalog they ran with (results schema 1): their networks "
                       "are judged complete against the catalog given to the report, which may list layers those "
                       "runs did not have."]
    assert a.notes[0] in json.dumps(summary.reliability(a), ensure_ascii=False)
    bundled = analysis.analyze(old)  # the bundled catalog has no set "toy": no network, never one from the results
    assert bundled.networks.empty and bundled.partial_networks.empty and "bundled" in bundled.notes[0]
    recorded = analysis.analyze(results(*network(), cases=NET), cases=())  # a recorded catalog is used as is
    assert recorded.networks.iloc[0]["time_s"] == pytest.approx(42) and not recorded.notes


def test_an_old_run_beside_a_recorded_one_is_judged_by_the_fallback_for_the_sets_not_recorded() -> None:
    other = Case("P", SMALL, Provenance("Other", "P", "t"), 1, ("inference", "net:other"))
    records = [*network(), record("P", "torch", "forward", 0.5, run_id="r2", tags=other.tags)]
    mixed = results(*records, cases=NET, headers={"r2": {"catalog": None}})  # r2 written before runs recorded it
    a = analysis.analyze(mixed, cases=(*NET, other))
    assert a.networks.set_index("set")["time_s"].to_dict() == pytest.approx({"toy": 42, "other": 0.5})
    assert a.notes and a.notes[0].startswith("1 of 2 runs did not record the catalog they ran with")


# ------------------------------------------------------------------------------------------------ end to end
TEAM = """
defaults:
  provenance: {network: Team net, source: our config}
  tags: [train, team, net:team-train-b4]
cases:
  - {id: team-in, op: gemm, dims: {m: 32, n: 32, k: 16}, provenance: {layer: input}, tags: [first-layer]}
  - {id: team-mid, op: gemm, dims: {m: 32, n: 32, k: 32}, provenance: {layer: middle}, count: 2}
  - {id: team-out, op: gemm, dims: {m: 32, n: 8, k: 32}, provenance: {layer: output}}
"""


def suite_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
@pytest.mark.skipif("numpy" not in backends.REGISTRY, reason="needs the example NumPy plugin: pip install -e "
                                                             "tests/plugins/opbench-numpy (tox's tests env does)")
def test_a_network_of_a_users_catalog_is_partial_until_its_last_layer_is_measured(tmp_path: Path) -> None:
    shapes = tmp_path / "team-shapes"
    shapes.mkdir()
    (shapes / "team.yaml").write_text(TEAM)
    out = tmp_path / "team.jsonl"
    run = ["run", "--shapes", str(shapes), "--catalog", "all", "--backend", "numpy", "--pass",
           "forward,backward_data,backward_weight",
           "--time-cap", "0.05", "--no-check", "-o", str(out)]
    for ids, status in ((["team-in", "team-mid"], "partial"), (["team-in", "team-mid", "team-out"], "complete")):
        done = suite_cli(*run, *[a for i in ids for a in ("--id", i)], "--resume")
        assert done.returncode == 0, done.stderr
        report = suite_cli("report", str(out), "-o", str(tmp_path / status))
        assert report.returncode == 0, report.stderr
        html = (tmp_path / status / "index.html").read_text(encoding="utf-8")
        networks = html.split('id="q-networks"', 1)[1].split('class="question"', 1)[0]
        if status == "partial":
            assert "No network was measured completely" in networks and "2 of 3 layers" in networks
            assert "team-out" in networks
        else:
            assert "a Team net training step (team-train-b4) takes" in networks and "of 3 layers" not in networks
    headers = [json.loads(line) for line in out.read_text().splitlines() if '"record": "header"' in line]
    assert len(headers) == 2 and all(len(h["catalog"]["networks"][0]["layers"]) == 3 for h in headers)
