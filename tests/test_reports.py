"""Report tests: the analysis layer on hand-made records with hand-computed values (network rollup, pooling,
overhead-floor exclusion, peaks), the sentences, and the static site on the golden results (tests/data/golden).

Hand-made records are typed as the reader types them (``Measurement.from_record``) and their run's header records the
network sets its catalog held, as a run does; the golden files record theirs as tests/golden_report.py writes them."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from reports import analysis, figures, peak, site, summary
from reports.palette import COLORS, SPARE_COLORS, Palette
from reports.site import FIGURES, build_site
from suite import ops
from suite.catalog import Case, Provenance, network_sets
from suite.cli import main
from suite.ops import Attention, BatchedGemm, Conv2d, Gemm, op_to_dict
from suite.results import Measurement, ResultSet, RunHeader, WorkerInfo
from suite.stats import format_seconds
from tests.golden_report import FILES, GOLDEN, as_run

OLD = GOLDEN / "smoke_torch_tf.jsonl"  # written before measurements recorded default_variant
SMALL = Gemm(64, 64, 64)
HEADER = {"record": "header", "run_id": "r1", "environment": {
    "hostname": "h", "cpu": {"model": "test CPU", "usable_cpus": 2, "mhz": 2000.0, "vector_flags": ["avx512f"]}}}


# ------------------------------------------------------------------------------------------------ hand-made records
def record(case: str, backend: str, pass_: str, median: float, op: ops.Op = SMALL, *,
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


def results(*records: dict, cases: tuple[Case, ...] = (), workers: tuple[dict, ...] = (),
            header: dict = HEADER) -> ResultSet:
    """The records as read: typed, under one header per run that records the network sets of ``cases``."""
    sets = [s.to_record() for s in network_sets(cases)]
    runs = sorted({r["run_id"] for r in records})
    return ResultSet(headers=[RunHeader.from_record({**header, "run_id": run, "catalog": {"networks": sets}})
                              for run in runs],
                     workers=[WorkerInfo.from_record(w) for w in workers],
                     measurements=[Measurement.from_record(r) for r in records])


# A two-layer network: L1 (the first layer, count 1), L2 (count 3); times per pass in seconds.
TIMES = {"L1": {"forward": 1.0, "backward_data": 5.0, "backward_weight": 2.0},
         "L2": {"forward": 3.0, "backward_data": 4.0, "backward_weight": 6.0}}
NET = (case("L1", 1, ("train", "net:toy", "first-layer")), case("L2", 3, ("train", "net:toy")))


def network_records(backend: str = "torch", scale: float = 1.0, **kwargs) -> list[dict]:
    return [record(layer, backend, p, scale * t, count=c.count, tags=c.tags, **kwargs)
            for c in NET for layer, passes in TIMES.items() if layer == c.id for p, t in passes.items()]


def test_training_step_excludes_the_first_layers_dx() -> None:
    a = analysis.analyze(results(*network_records(), cases=NET))
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
    row = analysis.analyze(results(*records, cases=net)).networks.iloc[0]
    assert row["dx_s"] == pytest.approx(1 * 5 + 3 * 4) and row["forward_s"] == pytest.approx(2 * 1 + 3 * 3)


def test_first_layer_dx_need_not_be_measured() -> None:
    records = [r for r in network_records() if not (r["case"] == "L1" and r["pass"] == "backward_data")]
    a = analysis.analyze(results(*records, cases=NET))
    assert len(a.networks) == 1 and a.networks.iloc[0]["time_s"] == pytest.approx(42)


def test_attention_backward_counts_as_dx_without_dw() -> None:
    attention = Attention(1, 2, 8, 8, 4)
    net = (*NET, Case("A", attention, Provenance("Net", "A", "test"), 2, ("modern", "train", "net:toy")))
    records = network_records() + [record("A", "torch", p, t, attention, count=2, tags=net[2].tags)
                                   for p, t in (("forward", 0.5), ("backward", 1.5))]
    row = analysis.analyze(results(*records, cases=net)).networks.iloc[0]
    assert (row["forward_s"], row["dx_s"], row["dw_s"]) == pytest.approx((10 + 2 * 0.5, 12 + 2 * 1.5, 20))
    assert row["kinds"] == "attention, gemm"


def test_grouping_by_math_never_adds_two_configurations() -> None:
    records = network_records() + network_records(scale=0.5, math="tf32")
    n = analysis.analyze(results(*records, cases=NET)).networks.set_index("math")
    assert n.loc["strict", "time_s"] == pytest.approx(42) and n.loc["tf32", "time_s"] == pytest.approx(21)


def test_partial_network_gets_no_total() -> None:
    records = [r for r in network_records() if r["case"] == "L1"]
    a = analysis.analyze(results(*records, cases=NET))
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
    n = analysis.analyze(results(*records, cases=net)).networks.set_index("variant")["time_s"]
    assert n.to_dict() == pytest.approx({"eager · NCHW": 2.5, "eager · channels_last": 1.5})


def test_a_conv_only_option_variant_takes_the_gemms_of_its_mode() -> None:
    conv, dense = Conv2d(1, 8, 8, 8, 8, 3, 3, padding=(1, 1, 1, 1)), Gemm(1, 10, 512)
    net = (Case("C", conv, Provenance("Net", "C", "t"), 1, ("modern", "inference", "net:cnn")),
           Case("D", dense, Provenance("Net", "D", "t"), 1, ("modern", "inference", "net:cnn")))
    off = record("C", "jax", "forward", 1.0, conv, mode="jit", layout="NCHW", tags=net[0].tags, default=False)
    records = [record("C", "jax", "forward", 2.0, conv, mode="jit", layout="NCHW", tags=net[0].tags),
               {**off, "options": {"ynn_conv": "off"}}, record("D", "jax", "forward", 0.5, dense, mode="jit",
                                                                 tags=net[1].tags)]
    a = analysis.analyze(results(*records, cases=net))
    assert a.partial_networks.empty
    assert a.networks.set_index("variant")["time_s"].to_dict() == pytest.approx(
        {"jit · NCHW": 2.5, "jit · NCHW · ynn_conv=off": 1.5})


def test_prefill_and_decode_are_apart() -> None:
    net = (case("P", 1, ("inference", "prefill", "net:lm-prefill")),
           case("D", 1, ("inference", "decode", "net:lm-decode")))
    records = [record("P", "torch", "forward", 1.0, tags=net[0].tags), record("D", "torch", "forward", 0.01,
                                                                              tags=net[1].tags)]
    n = analysis.analyze(results(*records, cases=net)).networks.set_index("phase")["time_s"]
    assert n.to_dict() == pytest.approx({"prefill": 1.0, "decode": 0.01})


def test_repeated_runs_are_pooled_not_picked() -> None:
    fast = record("G", "torch", "forward", 1.0, run_id="r1")
    slow = record("G", "torch", "forward", 2.0, run_id="r2")
    pooled = analysis.analyze(results(fast, slow)).pooled
    assert len(pooled) == 1 and pooled.iloc[0]["runs"] == 2
    both = np.concatenate([fast["block_times"], slow["block_times"]])
    assert pooled.iloc[0]["median_s"] == pytest.approx(np.median(both))  # 1.51, not the faster run's 1.0


def test_two_framework_versions_are_two_variants_never_pooled() -> None:
    old = {**record("G", "torch", "forward", 1.0, run_id="r1"), "versions": {"torch": "2.13.0"}}
    new = {**record("G", "torch", "forward", 2.0, run_id="r2"), "versions": {"torch": "2.14.0"}}
    pooled = analysis.analyze(results(old, new)).pooled.set_index("variant")
    assert pooled["runs"].tolist() == [1, 1]
    assert pooled["median_s"].to_dict() == pytest.approx({"eager · row-major · 2.13.0": 1.0,
                                                          "eager · row-major · 2.14.0": 2.0})


def test_a_record_without_the_newer_fields_is_a_row_with_their_defaults() -> None:
    old = {k: v for k, v in record("G", "torch", "forward", 2.0).items() if k not in ("default_variant", "l2")}
    row = analysis.analyze(results({**old, "stats": {**old["stats"], "ci_low": None}})).measurements.iloc[0]
    assert row["default_variant"] is None and row["l2"] == "warm" and np.isnan(row["ci_low_s"])
    assert row["median_s"] == 2.0 and np.isnan(row["tflops_high"]) and row["spec"] == SMALL
    assert tuple(row["samples"]) == tuple(old["block_times"]) and row["pass"] == "forward"


def test_warm_and_cold_l2_are_never_pooled() -> None:
    records = [record("G", "torch", "forward", 1.0), {**record("G", "torch", "forward", 3.0), "l2": "cold"}]
    pooled = analysis.analyze(results(*records)).pooled.set_index("l2")["median_s"]
    assert pooled.to_dict() == pytest.approx({"warm": 1.0, "cold": 3.0})


def test_speedup_best_variant_and_variant_table() -> None:
    records = [record("G", "torch", "forward", 1.0), record("G", "tensorflow", "forward", 4.0, mode="function"),
               record("G", "tensorflow", "forward", 2.0, mode="eager", default=False)]
    a = analysis.analyze(results(*records))
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
    r = analysis.analyze(results(*records)).ratios.iloc[0]
    assert r["ratio"] == pytest.approx(3.0) and r["flop_ratio"] == 2.0


def test_overhead_floor_excludes_small_sizes_from_the_fit() -> None:
    sizes = [64, 128, 256, 512, 1024]
    time = {s: 20e-6 + 1e-10 * s ** 3 for s in sizes}  # 20 µs overhead + a cubic kernel
    records = [record(f"sweep-gemm-{s}", "torch", p, time[s] * f, Gemm(s, s, s), tags=("sweep-gemm",))
               for s in sizes for p, f in (("forward", 1), ("backward", 2))]
    a = analysis.analyze(results(*records))
    points = a.scaling_points[a.scaling_points["phase"] == "inference"].set_index("size")
    floor = min(time.values())  # the 64³ point: every size under 10× its time is overhead-bound
    assert points["fitted"].to_dict() == {float(s): time[s] >= 10 * floor for s in sizes}
    fit = a.scaling.set_index("phase").loc["inference"]
    kept = [s for s in sizes if time[s] >= 10 * floor]
    expected = np.polyfit(np.log(kept), np.log([time[s] for s in kept]), 1)[0]
    assert fit["slope"] == pytest.approx(expected, rel=1e-3) and fit["excluded_sizes"] == [64, 128]
    train = a.scaling_points[a.scaling_points["phase"] == "training"].set_index("size")["time_s"]
    assert train[1024.0] == pytest.approx(3 * time[1024], rel=1e-6)  # forward + backward


def test_the_quick_catalogs_conv_sweeps_get_fitted_slopes() -> None:
    """The main job's conv sweeps, timed as a CPU runs them (a fixed dispatch cost, and the smallest convs at 0.6×
    the FLOP rate of the rest: measured here, 7² at N8 C64 in channels_last ran at 84 GFLOP/s, ResNet-50 3×3 convs
    up to ~170), go through the report's own rule: each sweep keeps at least MIN_FIT_POINTS compute-bound points in
    both phases, and the fitted slope is the FLOPs' (2 in H = W and in C = K). Before the catalog gained 42², 84²,
    96 and 192 channels every conv sweep said "too few points"."""
    from suite.catalog import load_catalog

    quick = [c for c in load_catalog().subset("quick") if {"sweep-conv-spatial", "sweep-conv-channels"} & set(c.tags)]
    smallest = min(c.op.flops() for c in quick)

    def seconds(op: Conv2d, pass_: str) -> float:
        rate = 140e9 * (0.6 if op.flops() <= 2 * smallest else 1.0)
        return 40e-6 + op.flops(pass_) / rate

    records = [record(c.id, "torch", p, seconds(c.op, p), c.op, tags=c.tags, layout="NCHW")
               for c in quick for p in ("forward", "backward")]
    fits = analysis.analyze(results(*records)).scaling.set_index(["sweep", "phase"])
    for sweep in ("sweep-conv-spatial", "sweep-conv-channels"):
        for phase in ("inference", "training"):
            fit = fits.loc[(sweep, phase)]
            assert fit["fitted"] >= analysis.MIN_FIT_POINTS, (sweep, phase, fit["excluded_sizes"])
            assert fit["slope"] == pytest.approx(2.0, abs=0.1)


def test_peak_labelling_and_percentages_above_100() -> None:
    records = [record("peak-gemm", "torch", "forward", 2e-3, Gemm(512, 512, 512), tags=("peak",)),
               record("W", "torch", "forward", 1.5e-3, Conv2d(1, 64, 64, 64, 64, 3, 3))]
    a = analysis.analyze(results(*records))
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


def test_peak_without_a_measured_gemm_says_so() -> None:
    a = analysis.analyze(results(record("W", "torch", "forward", 1.5e-3, Conv2d(1, 64, 64, 64, 64, 3, 3))))
    block = summary.peaks(a)[0]
    text = json.dumps(block, ensure_ascii=False)
    assert "no GEMM was measured" in block["headline"]
    assert "no GEMM measured in this configuration" in text and "nan" not in text
    assert "against the measured peak" not in text


def test_conv_vs_dense_both_framings() -> None:
    conv = Conv2d(1, 3, 32, 32, 64, 3, 3, padding=(1, 1, 1, 1))
    same_values, same_pixels = Gemm(1, 512, 3072), Gemm(1, 512, 1024)
    records = [record("conv", "torch", "forward", 2.0, conv, tags=("seed",)),
               record("dense-values", "torch", "forward", 1.0, same_values, tags=("seed",)),
               record("dense-pixels", "torch", "forward", 4.0, same_pixels, tags=("seed",))]
    c = analysis.analyze(results(*records)).conv_dense.set_index("framing")
    assert c.loc["same input values", "dense"] == "dense-values" and c.loc["same input values", "ratio"] == 2.0
    assert c.loc["features = pixels", "dense"] == "dense-pixels" and c.loc["features = pixels", "ratio"] == 0.5
    assert summary.time_ratio_text([2.0]) == "is 2.0× slower" and summary.time_ratio_text([0.5]) == "is 2.0× faster"


# ------------------------------------------------------------------------------------------------ golden results
# The golden results are judged against the layer sets their runs used (recorded as a run records them: as_run), not
# against the catalog of the day, which grows; judging against a catalog is tested above with hand-made catalogs.
@pytest.fixture(scope="module")
def golden_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return as_run(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def golden(golden_files: list[Path]) -> analysis.Analysis:
    return analysis.build(golden_files, baseline="torch")


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


def test_site(golden: analysis.Analysis, golden_files: list[Path], tmp_path: Path) -> None:
    index = build_site(golden_files, tmp_path / "site")
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


# -------------------------------------------------------------------------------------- op kinds beyond GEMM and conv
REGISTRY_ORDER = ("torch", "tensorflow", "jax")  # what the CLI passes from the backend registry
ATTENTION = Attention(1, 2, 8, 8, 4)
BGEMM = BatchedGemm(4, 16, 16, 16)


def refused(case_id: str, backend: str, pass_: str, op: Attention = ATTENTION, layout: str = "BHLD") -> dict:
    """The record a backend leaves for a pass the op does not have: unsupported, with the op's reason."""
    base = record(case_id, backend, "forward", 1.0, op, layout=layout)
    return {**{k: v for k, v in base.items() if k not in ("block_times", "stats")}, "pass": pass_, "flops": None,
            "bytes": None, "status": "unsupported", "reason": op.no_pass_reason}


def kind_records() -> list[dict]:
    """Attention in torch (BHLD, flash) and JAX (BLHD, XLA), with the passes attention lacks refused; one bgemm."""
    out = []
    for backend, layout, details, scale in (("torch", "BHLD", {"sdpa_backend": "flash_attention"}, 1.0),
                                            ("jax", "BLHD", {"implementation": "xla", "compile_s": 0.1}, 2.0)):
        for pass_, t in (("forward", 1e-3), ("backward", 3e-3)):
            out.append({**record("A", backend, pass_, scale * t, ATTENTION, layout=layout), "details": details})
        out += [refused("A", backend, p, layout=layout) for p in ("backward_data", "backward_weight")]
    return [*out, record("B", "torch", "forward", 2e-3, BGEMM)]


def test_each_other_op_kind_gets_throughput_ratio_and_kernel() -> None:
    a = analysis.analyze(results(*kind_records()), order=REGISTRY_ORDER)
    assert a.kinds == ["bgemm", "attention"]
    t = a.kind_throughput.set_index(["op", "backend", "pass"])
    assert t.loc[("attention", "torch", "forward"), "tflops"] == pytest.approx(ATTENTION.flops() / 1e-3 / 1e12)
    assert t.loc[("attention", "jax", "backward"), "tflops"] == pytest.approx(ATTENTION.flops("backward") / 6e-3 / 1e12)
    assert t.loc[("attention", "torch", "forward"), "kernels"] == ["flash_attention"]
    assert t.loc[("attention", "jax", "forward"), "kernels"] == ["xla"]  # compile_s is a detail, not a kernel
    assert t.loc[("bgemm", "torch", "forward"), "tflops"] == pytest.approx(BGEMM.flops() / 2e-3 / 1e12)
    r = a.kind_ratios.set_index(["kind", "backend", "which"])
    assert r.loc[("attention", "torch", "backward"), "geomean"] == pytest.approx(3.0)
    assert r.loc[("attention", "jax", "backward"), "flop_ratio"] == 2.0
    assert set(r.index.get_level_values("which")) == {"backward"}  # dX and dW were refused, not measured
    assert set(r.index.get_level_values("kind")) == {"attention"}  # the bgemm has no backward here
    assert a.ratio_summary.empty  # the GEMM/conv ratios of the backward question are not mixed with attention's

    [block] = summary.kind_section(a, "attention")
    text = json.dumps(block, ensure_ascii=False)
    assert block["headline"].startswith("On this CPU, attention forward (1 case, geomean): torch 0.00205 GFLOP/s, "
                                        "jax 0.00102 GFLOP/s.")  # 4·B·H·Lq·Lk·D = 2048 FLOPs in 1 ms and 2 ms
    assert "3.00×" in text  # backward / forward time
    assert "flash_attention" in text and '"xla"' in text
    notes = block["notes"]
    assert any("native layout (torch BHLD; jax BLHD)" in n for n in notes)
    assert any(n.startswith("Not applicable, not gaps: the 4 records of dX and dW of attention") for n in notes)
    questions = [q for q in summary.answers(a) if q["id"].startswith("kind-")]
    assert [(q["id"], q["figure"]) for q in questions] == [("kind-bgemm", "kind-bgemm"),
                                                           ("kind-attention", "kind-attention")]
    assert questions[0]["question"].startswith("Batched GEMMs:")
    # In the fastest-framework table attention's backward is named by its gradients, after its forward.
    [fastest] = summary.speed(a)
    labels = [(row[0]["text"], row[1]["text"]) for row in fastest["tables"][0]["rows"]]
    assert labels == [("attention", "forward"), ("attention", "dQ+dK+dV")]  # the bgemm: torch alone, no row


def test_passes_an_op_lacks_are_not_applicable_never_gaps(tmp_path: Path) -> None:
    a = analysis.analyze(results(*kind_records()))
    assert a.quality["not_run"] == {} and a.quality["not_applicable"] == 4
    assert not [w for w in site.warning_rows(a) if w["what"] == "unsupported"]
    cells = {(c["backend"], c["pass"]): cell for t in site.case_tables(a) for r in t["rows"] if r["case"] == "A"
             for c, cell in zip(t["columns"], r["cells"], strict=True)}
    assert cells[("torch", "backward_data")]["text"] == "n/a"
    assert "no weight" in cells[("jax", "backward_weight")]["title"]
    assert cells[("torch", "forward")]["sort"] == pytest.approx(1e-3)
    broken = {**refused("A", "torch", "backward"), "reason": "RuntimeError: boom"}  # a pass it has: a real gap
    kept = [r for r in kind_records() if (r["backend"], r["pass"]) != ("torch", "backward")]
    b = analysis.analyze(results(*kept, {**broken, "status": "error"}))
    assert b.quality["not_run"] == {"error": 1}
    assert any(w["reason"] == "RuntimeError: boom" for w in site.warning_rows(b))
    html = build_site(results(*kind_records()), tmp_path / "site").read_text()
    assert "4 not applicable" in html and 'src="figures/kind-attention.png"' in html
    assert 'id="q-kind-attention"' in html and 'id="q-kind-bgemm"' in html
    data = pd.read_csv(tmp_path / "site" / "data" / "kind_throughput.csv").set_index(["op", "backend", "pass"])
    assert data.loc[("attention", "torch", "forward"), "kernels"] == "flash_attention"


@dataclasses.dataclass(frozen=True)
class Toy(ops.OpKind):
    """A made-up op kind with forward and backward only, declaring its words and marker as every kind does: the
    report must give it a section with no code of its own."""

    size: int
    kind = "toy"
    passes = ("forward", "backward")
    varieties = {"toy": ("toy layers", "X")}
    pass_labels = {"forward": "forward", "backward": "dT"}
    no_pass_reason = "toy has one backward"

    @property
    def input_elements(self) -> int:
        return self.size

    def flops(self, pass_: str = "forward") -> int:
        return self.size * (2 if pass_ == "backward" else 1)

    def min_bytes(self, pass_: str, itemsize: int) -> int:
        return itemsize * self.size

    def describe(self) -> str:
        return f"toy {self.size}"


@pytest.fixture
def toy() -> type[Toy]:
    """Toy registered as a plugin or a new module would register it (``register_op``), for one test."""
    ops.register_op(Toy)
    yield Toy
    del ops.OP_KINDS[Toy.kind]


def test_a_new_op_kind_gets_its_section_without_code(toy: type[Toy], tmp_path: Path) -> None:
    records = [record(f"T{n}", b, p, t * n * f, Toy(1000 * n), layout="seq")
               for n in (1, 2, 3) for b, f in (("torch", 1), ("tensorflow", 2)) for p, t in (("forward", 1e-6),
                                                                                             ("backward", 2e-6))]
    records += [record("A", "torch", "forward", 1e-3, ATTENTION), record("B", "torch", "forward", 2e-3, BGEMM)]
    a = analysis.analyze(results(*records), order=REGISTRY_ORDER)
    assert a.kinds == ["bgemm", "attention", "toy"]  # the registry's order: a new kind after the bundled ones
    t = a.kind_throughput.set_index(["op", "backend", "pass"])
    assert t.loc[("toy", "torch", "forward"), "tflops"] == pytest.approx(1e9 / 1e12)
    assert t.loc[("toy", "torch", "forward"), "cases"] == 3
    assert t.loc[("toy", "tensorflow", "forward"), "low"] == pytest.approx(0.5e9 / 1e12)  # equal values: a point CI
    [block] = summary.kind_section(a, "toy")  # the kind's own words: its plural noun and its pass labels
    assert block["headline"].startswith("On this CPU, toy layers forward (3 cases, geomean): torch 1 GFLOP/s, "
                                        "tensorflow")
    assert "Backward takes 2.00× the forward time" in block["headline"] and not block["notes"]
    assert [c for c in block["tables"][0]["columns"] if "FLOP/s" in c] == ["forward FLOP/s", "dT FLOP/s"]
    html = build_site(results(*records), tmp_path / "site").read_text()
    assert 'id="q-kind-toy"' in html and (tmp_path / "site" / "figures" / "kind-toy.png").is_file()
    assert html.index('id="q-kind-attention"') < html.index('id="q-kind-toy"') < html.index('id="q-peak"')
    assert "Toy layers: how fast, forward and backward?" in html
    assert figures.markers()["toy"] == "X"


# ------------------------------------------------------------------------------------------------ GPU state
def gpu(rec: dict, l2: str = "warm", throttled: tuple[str, ...] = ()) -> dict:
    flags = [*rec["stats"]["flags"], *(["throttled"] if throttled else [])]
    return {**rec, "device": "gpu", "l2": l2, "stats": {**rec["stats"], "flags": flags},
            "gpu_state": {"throttled": list(throttled), "gpu": "NVML device 0"}}


def test_throttled_measurements_are_warnings_with_the_reasons() -> None:
    a = analysis.analyze(results(gpu(record("G", "torch", "forward", 1e-3), throttled=("sw_power_cap",)),
                                 gpu(record("H", "torch", "forward", 1e-3))))
    [warning] = [w for w in site.warning_rows(a) if w["what"] == "throttled"]
    assert warning["measurement"].startswith("G ·") and "power cap" in warning["reason"]
    assert warning["reason"].endswith("(NVML: sw_power_cap)")
    assert "throttled" in json.dumps(summary.reliability(a)) and a.measurements["throttle_reasons"].map(len).sum() == 1


@pytest.mark.parametrize("states, words", [
    ((), ""), (("warm",), "GPU numbers are with a warm L2 cache"), (("cold",), "GPU numbers are with a cold L2 cache"),
    (("warm", "cold"), "GPU numbers are in two L2 states, never pooled or compared: 1 measurements with a warm")])
def test_the_report_says_which_l2_state_gpu_numbers_are_in(states: tuple[str, ...], words: str) -> None:
    records = [record("C", "torch", "forward", 1e-3)] + [gpu(record("G", "torch", "forward", 1e-3), l2=s)
                                                          for s in states]
    text = summary.cache_state(analysis.analyze(results(*records)))
    assert text.startswith(words) if words else text == ""
    if len(states) == 2:
        assert "1 measurements with a cold L2 cache (cleared before every call" in text


NVML = {"driver": "550.54.15", "cuda_driver": "12.4", "gpus": [
    {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 * 2**30, "max_sm_clock_mhz": 1980,
     "applications_sm_clock_mhz": 1980, "default_applications_sm_clock_mhz": 1755, "clocks_locked": True,
     "power_limit_w": 700.0}]}


def test_environment_shows_the_gpu_driver_cuda_cudnn_and_clock_lock() -> None:
    env = {**HEADER["environment"], "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15"}],
           "nvml": NVML}
    res = results(gpu(record("G", "torch", "forward", 1e-3)), header={**HEADER, "environment": env},
                  workers=({"record": "worker", "run_id": "r1", "backend": "torch", "device": "gpu",
                            "versions": {"torch": "2.13.0", "cuda": "12.4", "cudnn": "90100"}},
                           {"record": "worker", "run_id": "r1", "backend": "jax", "device": "gpu",
                            "versions": {"jax": "0.10.2"}}))
    [machine] = site.environments(analysis.analyze(res))
    facts = machine["facts"]
    assert facts["GPUs"] == ("NVIDIA H100 80GB HBM3 (80.0 GiB, max SM clock 1980 MHz, clocks locked (applications "
                             "clocks set), power limit 700.0 W)")
    assert facts["GPU driver"] == "550.54.15, CUDA driver API 12.4"
    assert facts["CUDA / cuDNN (frameworks)"] == "torch: CUDA 12.4, cuDNN 90100"
    cpu_only = site.environments(analysis.analyze(results(record("G", "torch", "forward", 1e-3))))
    assert cpu_only[0]["facts"]["GPUs"] == "none" and "GPU driver" not in cpu_only[0]["facts"]


# ------------------------------------------------------------------------------------------------ backend order
def test_backend_order_comes_from_the_caller_and_plugins_get_their_own_colour() -> None:
    records = [record("G", b, "forward", t) for b, t in (("numpy", 4.0), ("jax", 1.0), ("torch", 2.0))]
    a = analysis.analyze(results(*records), order=("torch", "tensorflow", "jax", "numpy"))
    assert a.palette.order == ("torch", "jax", "numpy")
    assert analysis.analyze(results(*records)).palette.order == ("jax", "numpy", "torch")  # none given: by name
    [block] = summary.speed(a)
    assert [c for c in block["tables"][0]["columns"] if c.endswith("wins")] == ["torch wins", "jax wins", "numpy wins"]
    fig = figures.throughput(a.pooled, a.palette)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["torch", "jax", "numpy"]
    assert [to_hex(p.get_markerfacecolor()) for p in fig.legends[0].legend_handles] == [
        a.palette.color(b).lower() for b in ("torch", "jax", "numpy")]
    colors = Palette.of(("torch", "tensorflow", "jax", "numpy", "mine"), ("torch", "tensorflow", "jax")).colors
    rgb = {b: np.array(to_rgb(c)) for b, c in colors.items()}
    for plugin in ("numpy", "mine"):
        assert colors[plugin] not in COLORS.values()
        assert np.linalg.norm(rgb[plugin] - rgb["torch"]) > 0.4  # not a shade of torch's vermillion
    assert colors["numpy"] != colors["mine"]  # two plugins: the spare colours in turn (mine, numpy: by name)
    assert a.palette.color("numpy") == colors["mine"] == SPARE_COLORS[0]  # the report's only plugin: the first


def test_report_command_reads_the_results_once_in_registry_order(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    def again(paths: object) -> None:
        raise AssertionError(f"the report read {paths} a second time")

    monkeypatch.setattr(site, "read_many", again)
    assert main(["report", str(GOLDEN / "seed_3fw.jsonl"), "-o", str(tmp_path / "site")]) == 0
    lede = (tmp_path / "site" / "index.html").read_text().split('class="lede">', 1)[1].split("</p>", 1)[0]
    assert "by torch, tensorflow, jax on 1 machine" in lede


def test_without_a_network_the_report_says_which_tags_make_one() -> None:
    """A team's catalog with counts but no net:/phase tags got "tag modern with train or inference": neither the
    net: tag nor prefill and decode."""
    [block] = summary.networks(analysis.analyze(results(record("C", "torch", "forward", 1e-3)), cases=()))
    assert block["headline"] == ("These results hold no layers of a catalogued network: a network's layers carry the "
                                 "tag net:<network> and a phase tag (train, prefill, decode or inference), and each "
                                 "layer's count weights its total.")
