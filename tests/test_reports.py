"""Report tests: the analysis layer on hand-made records with hand-computed values (network rollup, pooling,
overhead-floor exclusion, peaks), the sentences, and the static site on the golden results (tests/data/golden)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from reports import analysis, figures, peak, summary
from reports.site import FIGURES, build_site
from suite.catalog import Case, Provenance
from suite.measurement import Measurement
from suite.ops import Attention, Conv2d, Gemm, op_to_dict
from suite.results import Results
from suite.stats import format_seconds

GOLDEN = Path(__file__).parent / "data" / "golden"
FILES = [*sorted(GOLDEN.glob("*_3fw.jsonl")), GOLDEN / "handmade_failures.jsonl"]
OLD = GOLDEN / "smoke_torch_tf.jsonl"  # written before measurements recorded default_variant
SMALL = Gemm(64, 64, 64)
HEADER = {"record": "header", "run_id": "r1", "environment": {
    "hostname": "h", "cpu": {"model": "test CPU", "usable_cpus": 2, "mhz": 2000.0, "vector_flags": ["avx512f"]}}}


# ------------------------------------------------------------------------------------------------ hand-made records
def record(case: str, backend: str, pass_: str, median: float, op: Gemm | Conv2d = SMALL, *,
           count: int = 1, tags: tuple[str, ...] = (), mode: str = "eager", layout: str = "row-major",
           math: str = "strict", run_id: str = "r1", network: str = "Net", default: bool | None = True,
           blocks: tuple[float, ...] = (0.98, 0.99, 1.0, 1.01, 1.02)) -> dict:
    """One ok measurement whose five per-call samples have the given median."""
    samples = [median * b for b in blocks]
    return {"record": "measurement", "run_id": run_id, "case": case, "backend": backend, "device": "cpu",
            "dtype": "fp32", "pass": pass_, "mode": mode, "layout": layout, "math": math, "threads": 2,
            "options": {}, "op": op.kind, "dims": op_to_dict(op), "shape": op.describe(),
            "provenance": {"network": network, "layer": case, "source": "test"}, "count": count, "tags": list(tags),
            "flops": op.flops(pass_), "bytes": op.min_bytes(pass_, 4), "status": "ok", "default_variant": default,
            "block_times": samples, "calls_per_block": 1,
            "stats": {"median": float(np.median(samples)), "ci_low": min(samples), "ci_high": max(samples),
                      "flags": ["overhead_bound"] if median < 50e-6 else []}}


def case(case_id: str, count: int, tags: tuple[str, ...], op: Gemm | Conv2d = SMALL) -> Case:
    return Case(case_id, op, Provenance("Net", case_id, "test"), count, ("modern", *tags))


def results(*records: dict) -> Results:
    runs = sorted({r["run_id"] for r in records})
    return Results(headers=[{**HEADER, "run_id": run} for run in runs], measurements=list(records))


# A two-layer network: L1 (the first layer, count 1), L2 (count 3); times per pass in seconds.
TIMES = {"L1": {"forward": 1.0, "backward_data": 5.0, "backward_weight": 2.0},
         "L2": {"forward": 3.0, "backward_data": 4.0, "backward_weight": 6.0}}
NET = (case("L1", 1, ("train", "net:toy", "first-layer")), case("L2", 3, ("train", "net:toy")))


def network_records(backend: str = "torch", scale: float = 1.0, **kwargs) -> list[dict]:
    return [record(layer, backend, p, scale * t, count=c.count, tags=c.tags, **kwargs)
            for c in NET for layer, passes in TIMES.items() if layer == c.id for p, t in passes.items()]


def test_training_step_excludes_the_first_layers_dx() -> None:
    a = analysis.analyze(results(*network_records()), cases=NET)
    row = a.networks.iloc[0]
    # forward 1 + 3·3 = 10; dX: L1 excluded, 3·4 = 12; dW 2 + 3·6 = 20
    assert (row["forward_s"], row["dx_s"], row["dw_s"], row["time_s"]) == pytest.approx((10, 12, 20, 42))
    assert (row["forward_share"], row["dx_share"], row["dw_share"]) == pytest.approx((10 / 42, 12 / 42, 20 / 42))
    assert row["phase"] == "training step" and row["set"] == "toy" and row["layers"] == 2
    assert a.partial_networks.empty


def test_first_layer_with_count_above_one_drops_one_dx() -> None:
    net = (case("L1", 2, ("train", "net:toy", "first-layer")), NET[1])
    records = [r for r in network_records() if r["case"] != "L1"] + [
        record("L1", "torch", p, t, count=2, tags=net[0].tags) for p, t in TIMES["L1"].items()]
    row = analysis.analyze(results(*records), cases=net).networks.iloc[0]
    assert row["dx_s"] == pytest.approx(1 * 5 + 3 * 4) and row["forward_s"] == pytest.approx(2 * 1 + 3 * 3)


def test_first_layer_dx_need_not_be_measured() -> None:
    records = [r for r in network_records() if not (r["case"] == "L1" and r["pass"] == "backward_data")]
    a = analysis.analyze(results(*records), cases=NET)
    assert len(a.networks) == 1 and a.networks.iloc[0]["time_s"] == pytest.approx(42)


def test_attention_backward_counts_as_dx_without_dw() -> None:
    attention = Attention(1, 2, 8, 8, 4)
    net = (*NET, Case("A", attention, Provenance("Net", "A", "test"), 2, ("modern", "train", "net:toy")))
    records = network_records() + [record("A", "torch", p, t, attention, count=2, tags=net[2].tags)
                                   for p, t in (("forward", 0.5), ("backward", 1.5))]
    row = analysis.analyze(results(*records), cases=net).networks.iloc[0]
    assert (row["forward_s"], row["dx_s"], row["dw_s"]) == pytest.approx((10 + 2 * 0.5, 12 + 2 * 1.5, 20))
    assert row["kinds"] == "attention, gemm"


def test_grouping_by_math_never_adds_two_configurations() -> None:
    records = network_records() + network_records(scale=0.5, math="tf32")
    n = analysis.analyze(results(*records), cases=NET).networks.set_index("math")
    assert n.loc["strict", "time_s"] == pytest.approx(42) and n.loc["tf32", "time_s"] == pytest.approx(21)


def test_partial_network_gets_no_total() -> None:
    records = [r for r in network_records() if r["case"] == "L1"]
    a = analysis.analyze(results(*records), cases=NET)
    assert a.networks.empty
    row = a.partial_networks.iloc[0]
    assert (row["measured"], row["layers"], row["missing"]) == (1, 2, ["L2"])
    html = summary.networks(a)
    assert "1 of 2 layers" in json.dumps(html, ensure_ascii=False)


def test_layouts_are_never_added_and_gemms_join_every_layout() -> None:
    conv, dense = Conv2d(1, 8, 8, 8, 8, 3, 3, padding=(1, 1, 1, 1)), Gemm(1, 10, 512)
    net = (Case("C", conv, Provenance("Net", "C", "t"), 1, ("modern", "inference", "net:cnn")),
           Case("D", dense, Provenance("Net", "D", "t"), 1, ("modern", "inference", "net:cnn")))
    records = [record("C", "torch", "forward", 2.0, conv, layout="NCHW", tags=net[0].tags),
               record("C", "torch", "forward", 1.0, conv, layout="channels_last", tags=net[0].tags, default=False),
               record("D", "torch", "forward", 0.5, dense, tags=net[1].tags)]
    n = analysis.analyze(results(*records), cases=net).networks.set_index("variant")["time_s"]
    assert n.to_dict() == pytest.approx({"eager · NCHW": 2.5, "eager · channels_last": 1.5})


def test_a_conv_only_option_variant_takes_the_gemms_of_its_mode() -> None:
    conv, dense = Conv2d(1, 8, 8, 8, 8, 3, 3, padding=(1, 1, 1, 1)), Gemm(1, 10, 512)
    net = (Case("C", conv, Provenance("Net", "C", "t"), 1, ("modern", "inference", "net:cnn")),
           Case("D", dense, Provenance("Net", "D", "t"), 1, ("modern", "inference", "net:cnn")))
    off = record("C", "jax", "forward", 1.0, conv, mode="jit", layout="NCHW", tags=net[0].tags, default=False)
    records = [record("C", "jax", "forward", 2.0, conv, mode="jit", layout="NCHW", tags=net[0].tags),
               {**off, "options": {"ynn_conv": "off"}}, record("D", "jax", "forward", 0.5, dense, mode="jit",
                                                                 tags=net[1].tags)]
    a = analysis.analyze(results(*records), cases=net)
    assert a.partial_networks.empty
    assert a.networks.set_index("variant")["time_s"].to_dict() == pytest.approx(
        {"jit · NCHW": 2.5, "jit · NCHW · ynn_conv=off": 1.5})


def test_prefill_and_decode_are_apart() -> None:
    net = (case("P", 1, ("inference", "prefill", "net:lm-prefill")),
           case("D", 1, ("inference", "decode", "net:lm-decode")))
    records = [record("P", "torch", "forward", 1.0, tags=net[0].tags), record("D", "torch", "forward", 0.01,
                                                                              tags=net[1].tags)]
    n = analysis.analyze(results(*records), cases=net).networks.set_index("phase")["time_s"]
    assert n.to_dict() == pytest.approx({"prefill": 1.0, "decode": 0.01})


def test_repeated_runs_are_pooled_not_picked() -> None:
    fast = record("G", "torch", "forward", 1.0, run_id="r1")
    slow = record("G", "torch", "forward", 2.0, run_id="r2")
    pooled = analysis.analyze(results(fast, slow), cases=()).pooled
    assert len(pooled) == 1 and pooled.iloc[0]["runs"] == 2
    both = np.concatenate([fast["block_times"], slow["block_times"]])
    assert pooled.iloc[0]["median_s"] == pytest.approx(np.median(both))  # 1.51, not the faster run's 1.0


def test_two_framework_versions_are_two_variants_never_pooled() -> None:
    old = {**record("G", "torch", "forward", 1.0, run_id="r1"), "versions": {"torch": "2.13.0"}}
    new = {**record("G", "torch", "forward", 2.0, run_id="r2"), "versions": {"torch": "2.14.0"}}
    pooled = analysis.analyze(results(old, new), cases=()).pooled.set_index("variant")
    assert pooled["runs"].tolist() == [1, 1]
    assert pooled["median_s"].to_dict() == pytest.approx({"eager · row-major · 2.13.0": 1.0,
                                                          "eager · row-major · 2.14.0": 2.0})


def test_measurement_from_an_old_record_gets_defaults() -> None:
    old = {k: v for k, v in record("G", "torch", "forward", 2.0).items() if k not in ("default_variant", "l2")}
    m = Measurement.from_record({**old, "stats": {**old["stats"], "ci_low": None}})
    assert m.default_variant is None and m.l2 == "warm" and np.isnan(m.ci_low) and m.median == 2.0
    assert m.per_call == tuple(old["block_times"]) and m.op == SMALL and m.pass_ == "forward"


def test_warm_and_cold_l2_are_never_pooled() -> None:
    records = [record("G", "torch", "forward", 1.0), {**record("G", "torch", "forward", 3.0), "l2": "cold"}]
    pooled = analysis.analyze(results(*records), cases=()).pooled.set_index("l2")["median_s"]
    assert pooled.to_dict() == pytest.approx({"warm": 1.0, "cold": 3.0})


def test_speedup_best_variant_and_variant_table() -> None:
    records = [record("G", "torch", "forward", 1.0), record("G", "tensorflow", "forward", 4.0, mode="function"),
               record("G", "tensorflow", "forward", 2.0, mode="eager", default=False)]
    a = analysis.analyze(results(*records), cases=())
    tf = a.pooled[a.pooled["backend"].eq("tensorflow") & a.pooled["best"]].iloc[0]
    assert tf["mode"] == "eager" and tf["speedup"] == pytest.approx(0.5)
    v = a.variants.set_index(["backend", "variant"])
    assert v.loc[("tensorflow", "eager · row-major"), "won"] == 1 and v.loc[("tensorflow", "function · row-major"),
                                                                              "won"] == 0
    assert v.loc[("tensorflow", "function · row-major"), "default"] and not v.loc[("tensorflow", "eager · row-major"),
                                                                                    "default"]
    effect = a.variant_effects.iloc[0]
    assert effect["variant"] == "eager · row-major" and effect["geomean"] == pytest.approx(0.5)
    assert summary.speedup_text(tf["speedup"]) == "2.0× slower"
    assert summary.speedup_text(1 / 0.28) == "3.6× faster" and summary.speedup_text(0.28) == "3.6× slower"
    assert summary.speedup_text(1 / 114.2) == "114× slower" and summary.speedup_text(1.0) == "same speed"
    assert summary.speedup_text(1.04) == "1.0× faster"
    assert summary.speedup_ci_text(0.27, 0.79) == "1.3–3.7× slower" and summary.speedup_ci_text(0.8, 1.25) == \
        "1.2× slower to 1.2× faster"


def test_pass_ratios_use_the_ops_flop_ratio() -> None:
    records = [record("G", "torch", "forward", 1.0), record("G", "torch", "backward", 3.0)]
    r = analysis.analyze(results(*records), cases=()).ratios.iloc[0]
    assert r["ratio"] == pytest.approx(3.0) and r["flop_ratio"] == 2.0


def test_overhead_floor_excludes_small_sizes_from_the_fit() -> None:
    sizes = [64, 128, 256, 512, 1024]
    time = {s: 20e-6 + 1e-10 * s ** 3 for s in sizes}  # 20 µs overhead + a cubic kernel
    records = [record(f"sweep-gemm-{s}", "torch", p, time[s] * f, Gemm(s, s, s), tags=("sweep-gemm",))
               for s in sizes for p, f in (("forward", 1), ("backward", 2))]
    a = analysis.analyze(results(*records), cases=())
    points = a.scaling_points[a.scaling_points["phase"] == "inference"].set_index("size")
    floor = min(time.values())  # the 64³ point: every size under 10× its time is overhead-bound
    assert points["fitted"].to_dict() == {float(s): time[s] >= 10 * floor for s in sizes}
    fit = a.scaling.set_index("phase").loc["inference"]
    kept = [s for s in sizes if time[s] >= 10 * floor]
    expected = np.polyfit(np.log(kept), np.log([time[s] for s in kept]), 1)[0]
    assert fit["slope"] == pytest.approx(expected, rel=1e-3) and fit["excluded_sizes"] == [64, 128]
    train = a.scaling_points[a.scaling_points["phase"] == "training"].set_index("size")["time_s"]
    assert train[1024.0] == pytest.approx(3 * time[1024], rel=1e-6)  # forward + backward


def test_peak_labelling_and_percentages_above_100() -> None:
    records = [record("peak-gemm", "torch", "forward", 2e-3, Gemm(512, 512, 512), tags=("peak",)),
               record("W", "torch", "forward", 1.5e-3, Conv2d(1, 64, 64, 64, 64, 3, 3))]
    a = analysis.analyze(results(*records), cases=())
    p = a.peaks.iloc[0]
    theo = 2 * 2.0e9 * 2 * 16 * 2 / 1e12  # 2 CPUs × 2 GHz × 2 FMA × 16 lanes × 2
    assert p["theoretical_tflops"] == pytest.approx(theo) and p["nominal_clock"]
    assert p["theoretical_label"] == peak.THEORETICAL_CPU_NOMINAL
    assert p["measured_tflops"] == pytest.approx(2 * 512 ** 3 / 2e-3 / 1e12)  # 0.134 TFLOP/s
    conv_tflops = Conv2d(1, 64, 64, 64, 64, 3, 3).flops() / 1.5e-3 / 1e12  # 0.189: above it, below 0.256
    assert p["above_measured"] == 1 and p["above_theoretical"] == 0
    assert p["max_pct_measured"] == pytest.approx(100 * conv_tflops / p["measured_tflops"])
    headline = summary.peaks(a)[0]["headline"]
    assert "nominal clock, may understate" in headline and "1 measurements exceed the measured peak" in headline


def test_conv_vs_dense_both_framings() -> None:
    conv = Conv2d(1, 3, 32, 32, 64, 3, 3, padding=(1, 1, 1, 1))
    same_values, same_pixels = Gemm(1, 512, 3072), Gemm(1, 512, 1024)
    records = [record("conv", "torch", "forward", 2.0, conv, tags=("seed",)),
               record("dense-values", "torch", "forward", 1.0, same_values, tags=("seed",)),
               record("dense-pixels", "torch", "forward", 4.0, same_pixels, tags=("seed",))]
    c = analysis.analyze(results(*records), cases=()).conv_dense.set_index("framing")
    assert c.loc["same input values", "dense"] == "dense-values" and c.loc["same input values", "ratio"] == 2.0
    assert c.loc["features = pixels", "dense"] == "dense-pixels" and c.loc["features = pixels", "ratio"] == 0.5
    assert summary.time_ratio_text([2.0]) == "is 2.0× slower" and summary.time_ratio_text([0.5]) == "is 2.0× faster"


# ------------------------------------------------------------------------------------------------ golden results
# The golden results are judged against the layer sets they were measured with (their net: tags), not against
# the catalog of the day, which grows; judging against the catalog is tested above with hand-made catalogs.
AS_RUN: tuple[Case, ...] = ()


@pytest.fixture(scope="module")
def golden() -> analysis.Analysis:
    return analysis.build(FILES, baseline="torch", cases=AS_RUN)


def _records(paths: list[Path]) -> list[dict]:
    return [r for path in paths for line in path.read_text().splitlines()
            if (r := json.loads(line))["record"] == "measurement"]


def test_golden_holds_three_frameworks_and_a_complete_network(golden: analysis.Analysis) -> None:
    df = golden.measurements
    assert len(df) == len(_records(FILES)) and {"torch", "tensorflow", "jax"} <= set(df["backend"])
    failed = df[df["status"] != "ok"]
    assert failed["reason"].str.len().gt(0).all() and failed["median_s"].isna().all()
    assert failed["reason"].str.contains("HAND-MADE").any() and set(failed["status"]) >= {"unsupported", "error"}
    train = golden.networks[golden.networks["phase"] == "training step"]
    assert {"torch", "tensorflow", "jax"} <= set(train["backend"])
    assert np.allclose(train[["forward_share", "dx_share", "dw_share"]].sum(axis=1), 1)
    ok = golden.pooled
    assert np.allclose(ok["tflops"], ok["flops"] / ok["median_s"] / 1e12)
    assert (ok.groupby([*analysis.COMPARE_KEY, "backend"])["best"].sum() == 1).all()


def test_old_results_without_default_variant_are_read() -> None:
    a = analysis.build([OLD])
    assert len(a.measurements) == len(_records([OLD])) and a.measurements["default_variant"].isna().all()
    assert a.variants["default"].isna().all() and a.variant_effects.empty


def test_every_figure_returns_figure_or_none(golden: analysis.Analysis) -> None:
    drawn = {spec.key: spec.draw(golden) for spec in FIGURES}
    assert all(fig is None or isinstance(fig, Figure) for fig in drawn.values())
    assert all(drawn[k] is not None for k in ("speedup", "training_shares", "conv_vs_gemm", "scaling", "networks"))
    empty = golden.pooled.iloc[0:0]
    assert figures.throughput(empty) is None and figures.roofline(empty) is None
    assert figures.scaling(golden.scaling_points.iloc[0:0], golden.scaling) is None
    assert figures.training_shares(golden.networks.iloc[0:0]) is None


def test_scaling_axes_carry_several_labelled_ticks(golden: analysis.Analysis) -> None:
    fig = figures.tidy_log_ticks(figures.scaling(golden.scaling_points, golden.scaling))
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) >= 3, labels


def test_site(golden: analysis.Analysis, tmp_path: Path) -> None:
    index = build_site(FILES, tmp_path / "site", cases=AS_RUN)
    html = index.read_text()
    for ref in re.findall(r'(?:href|src)="([^"#][^"]*)"', html):
        assert (index.parent / ref).is_file(), ref
    summary_html = html.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    headlines = re.findall(r'<p class="headline">(.*?)</p>', summary_html, flags=re.S)
    assert len(headlines) >= 6
    for headline in headlines:  # at most two sentences per answer
        assert len(re.findall(r"[.!?](?:\s|$)", headline.replace("e.g.", "eg"))) <= 2, headline
    for key in ("training_shares", "scaling", "conv_vs_gemm"):  # each seed question shows its figure
        assert f'src="figures/{key}.png"' in summary_html
    train = golden.networks[golden.networks["phase"] == "training step"].iloc[0]
    assert f"{100 * train['dw_share']:.0f}%" in summary_html and format_seconds(train["time_s"]) in summary_html
    assert "HAND-MADE" in html and "data-sort=" in html
    data = pd.read_csv(index.parent / "data" / "measurements.csv")
    assert len(data) == len(_records(FILES)) and "samples" not in data
    cases = html.split('<section id="tables">', 1)[1]
    first = golden.pooled[golden.pooled["best"]].iloc[0]
    assert f'data-sort="{first["median_s"]}"' in cases  # numeric sort keys in seconds


def test_site_with_only_failures(tmp_path: Path) -> None:
    html = build_site([GOLDEN / "handmade_failures.jsonl"], tmp_path / "site").read_text()
    assert "No successful measurement" in html and "HAND-MADE" in html
