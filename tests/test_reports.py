"""Report tests on golden results files (tests/data/golden): normalization, peaks, figures and the static site."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from reports import figures, frame, peak
from reports.site import FIGURES, build_site
from suite.stats import format_seconds as fmt_time

GOLDEN = Path(__file__).parent / "data" / "golden"
FILES = sorted(GOLDEN.glob("*.jsonl"))


@pytest.fixture(scope="module")
def report() -> frame.Report:
    return frame.build(FILES, baseline="torch")


def _records() -> list[dict]:
    return [json.loads(line) for path in FILES for line in path.read_text().splitlines()
            if json.loads(line)["record"] == "measurement"]


def test_one_row_per_measurement_failures_carried(report: frame.Report) -> None:
    df = report.measurements
    assert len(df) == len(_records())
    failed = df[df["status"] != "ok"]
    assert set(failed["status"]) >= {"unsupported", "error"}
    assert failed["reason"].str.contains("HAND-MADE").all()
    assert failed["median_s"].isna().all() and failed["tflops"].isna().all()
    assert df["machine"].str.contains("·").all()


def test_throughput_bandwidth_intensity(report: frame.Report) -> None:
    ok = report.measurements[report.measurements["status"] == "ok"]
    assert np.allclose(ok["tflops"], ok["flops"] / ok["median_s"] / 1e12)
    assert np.allclose(ok["gbps"], ok["bytes"] / ok["median_s"] / 1e9)
    assert np.allclose(ok["intensity"], ok["flops"] / ok["bytes"])
    assert (ok["tflops_low"] <= ok["tflops"] + 1e-15).all() and (ok["tflops"] <= ok["tflops_high"] + 1e-15).all()
    raw = {(r["run_id"], r["case"], r["backend"], r["pass"], r["mode"], r["layout"]): r for r in _records()}
    for _, row in ok.iterrows():
        record = raw[(row["run_id"], row["case"], row["backend"], row["pass"], row["mode"], row["layout"])]
        assert row["median_s"] == pytest.approx(record["stats"]["median"])
        assert row["tflops"] == pytest.approx(record["tflops"], rel=1e-9)


def test_speedup_of_baseline_is_one_and_ratio_of_medians(report: frame.Report) -> None:
    df = report.measurements
    base = df[df["best"] & (df["backend"] == "torch")]
    assert len(base) and (base["speedup"] == 1).all()
    tf = df[df["best"] & (df["backend"] == "tensorflow") & df["speedup"].notna()]
    assert len(tf)
    for _, row in tf.iterrows():
        ref = base[(base["case"] == row["case"]) & (base["pass"] == row["pass"])].iloc[0]
        assert row["speedup"] == pytest.approx(np.median(ref["samples"]) / np.median(row["samples"]))
        assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]


def test_best_is_fastest_variant(report: frame.Report) -> None:
    df = report.measurements
    ok = df[df["status"] == "ok"]
    fastest = ok.groupby([*frame.COMPARE_KEY, "backend"])["median_s"].transform("min")
    assert (ok.loc[ok["best"], "median_s"] == fastest[ok["best"]]).all()
    assert ok.groupby([*frame.COMPARE_KEY, "backend"])["best"].sum().eq(1).all()


def test_pass_ratios(report: frame.Report) -> None:
    ratios = report.ratios
    assert set(ratios["which"]) == {"backward", "backward_data", "backward_weight"}
    df = report.measurements.set_index(["run_id", "case", "backend", "variant", "pass"])
    row = ratios.iloc[0]
    bwd = df.loc[(row["run_id"], row["case"], row["backend"], row["variant"], row["which"]), "median_s"]
    fwd = df.loc[(row["run_id"], row["case"], row["backend"], row["variant"], "forward"), "median_s"]
    assert row["ratio"] == pytest.approx(float(np.atleast_1d(bwd)[0]) / float(np.atleast_1d(fwd)[0]))
    assert set(report.ratio_summary["backend"]) == {"torch", "tensorflow"}


def test_summaries_and_fits(report: frame.Report) -> None:
    kinds = report.speedups_by_kind
    assert {"gemm", "conv2d", "depthwise"} <= set(kinds["kind"])
    assert np.allclose(kinds.loc[kinds["backend"] == "torch", "geomean"], 1.0)
    assert {"seed", "smoke"} <= set(report.speedups_by_tag["tag"])
    fits = report.scaling
    assert {"sweep-gemm", "sweep-conv-channels"} <= set(fits["sweep"])
    assert fits["slope"].notna().all()


def test_geomean_ci() -> None:
    point, low, high = frame.geomean_ci([1.0, 2.0, 4.0, 8.0])
    assert point == pytest.approx(8 ** 0.5) and low <= point <= high
    assert np.isnan(frame.geomean_ci([])[0])


def test_peaks(report: frame.Report) -> None:
    cpu = {"usable_cpus": 2, "mhz": 2600.0, "vector_flags": ["avx512f", "avx2", "fma"]}
    assert peak.cpu_peak(cpu, "fp32").tflops == pytest.approx(2 * 2.6e9 * 2 * 16 * 2 / 1e12)
    assert peak.cpu_peak({**cpu, "vector_flags": ["avx2", "fma"]}, "fp32").tflops == pytest.approx(0.1664)
    assert peak.cpu_peak({}, "fp32").tflops is None
    assert peak.gpu_peak("NVIDIA H100 80GB HBM3", "bf16").tflops == pytest.approx(989.4)
    assert peak.gpu_peak("NVIDIA H100 PCIe", "fp32", "tf32").tflops == pytest.approx(378.0)
    assert peak.gpu_peak("Tesla V100-SXM2-16GB", "bf16").tflops == pytest.approx(15.7)
    assert peak.gpu_peak("Mystery GPU", "fp32").tflops is None
    df = report.measurements
    measured = report.peaks["measured_tflops"].iloc[0]
    assert measured == pytest.approx(df.loc[(df["op"] == "gemm") & (df["pass"] == "forward"), "tflops"].max())
    ok = df[df["status"] == "ok"]
    assert np.allclose(ok["pct_peak_measured"], 100 * ok["tflops"] / measured)
    assert ok["peak_theoretical_basis"].str.startswith(peak.THEORETICAL_CPU).all()


def test_every_figure_returns_figure_or_none(report: frame.Report) -> None:
    drawn = [spec.draw(report) for spec in FIGURES]
    assert all(fig is None or isinstance(fig, Figure) for fig in drawn)
    assert sum(fig is not None for fig in drawn) >= 7  # all but the network rollup (no network layers here)


def test_figures_with_missing_data(report: frame.Report) -> None:
    empty = report.measurements.iloc[0:0]
    assert figures.throughput(empty) is None
    assert figures.speedup_heatmap(report.measurements[report.measurements["backend"] == "torch"]) is None
    assert figures.roofline(empty) is None
    assert figures.pass_ratio(pd.DataFrame()) is None
    assert figures.conv_vs_gemm(empty) is None
    assert figures.scaling(empty, pd.DataFrame()) is None
    assert figures.network_rollup(report.networks) is None
    assert figures.first_call(empty) is None


def test_build_site(tmp_path: Path) -> None:
    index = build_site(FILES, tmp_path / "site")
    html = index.read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 7 and all((index.parent / src).is_file() for src in images)
    for href in re.findall(r'href="([^"#][^"]*)"', html):
        assert (index.parent / href).is_file(), href
    assert "HAND-MADE" in html and "Not drawn:" in html
    data = pd.read_csv(index.parent / "data" / "measurements.csv")
    assert len(data) == len(_records()) and "samples" not in data
    assert "<script>alert" not in html  # autoescape on


def test_build_site_with_only_failures(tmp_path: Path) -> None:
    index = build_site([GOLDEN / "handmade_failures.jsonl"], tmp_path / "site")
    html = index.read_text()
    assert "No successful measurement" in html and "HAND-MADE" in html


def _summary_html(html: str) -> str:
    return html.split('<section id="summary">', 1)[1].split("</section>", 1)[0]


def test_summary_tables_hold_the_frame_numbers(report: frame.Report, tmp_path: Path) -> None:
    html = build_site(FILES, tmp_path / "site").read_text()
    summary = _summary_html(html)
    assert summary.count('<table class="summary') >= 6 and "<ul>" not in summary  # tables, not run-on bullets
    headlines = re.findall(r'<p class="headline">(.*?)</p>', summary, flags=re.S)
    assert len(headlines) == 6
    # Q1: geomean speedup with its CI, per op kind × pass, and the case wins
    kinds = report.speedups_by_kind
    tf = kinds[(kinds["backend"] == "tensorflow") & (kinds["pass"] == "forward") & (kinds["kind"] == "conv2d")].iloc[0]
    assert f"{tf['geomean']:.2f}×" in summary and f"{tf['low']:.2f}–{tf['high']:.2f}" in summary
    assert "torch is fastest in 13 of 26 case×pass comparisons (tensorflow 13)" in headlines[0]
    assert f"and {tf['geomean']:.2f}× on convs" in headlines[0]
    assert "eager · channels_last vs eager · NCHW" in summary  # the variant effect table (torch layouts)
    # Q2: backward / forward time ratio with CI and the % of forward FLOP/s
    rs = report.ratio_summary
    row = rs[(rs["backend"] == "tensorflow") & (rs["which"] == "backward")].iloc[0]
    assert f"{row['geomean']:.2f}×" in summary and f"{row['low']:.2f}–{row['high']:.2f}" in summary
    assert f"tensorflow {100 * 2 / row['geomean']:.0f}%" in headlines[1]
    # Q3: the seed cases with input values, FLOPs per input value and forward times
    df = report.measurements
    conv = df[df["best"] & (df["case"] == "seed-conv-3x3") & (df["pass"] == "forward")
              & (df["backend"] == "torch")].iloc[0]
    assert "seed-dense-1024x512" in summary and "3,072" in summary and "1,152" in summary
    assert fmt_time(conv["median_s"]) in summary
    assert "is faster than seed-dense-3072x512 with every framework" in headlines[2]
    assert "27 and 147" in summary and "6.3 MB" in summary
    # Q4: fitted slope with its standard error and the FLOP exponent
    fit = report.scaling[(report.scaling["sweep"] == "sweep-gemm") & (report.scaling["backend"] == "torch")].iloc[0]
    assert f"{fit['slope']:.2f}" in summary and f"± {fit['slope_stderr']:.2f}" in summary
    # peak and reliability
    assert "95.3 GFLOP/s" in headlines[4] and "29%" in headlines[4]
    assert "39 of 68 successful measurements" in headlines[5] and 'href="#warnings"' in summary
    assert summary.count("load average") == 1  # once, not per run


def test_environment_one_block_per_machine(tmp_path: Path) -> None:
    html = build_site(FILES, tmp_path / "site").read_text()
    env = html.split('<section id="environment">', 1)[1].split("</section>", 1)[0]
    assert env.count("<details") == 1 and "4 runs" in env
    assert all(run in env for run in ("fbc6eb96abd8", "9308660af4af", "80bc5ab4ea84", "handmade0000"))
    assert env.count("<th>CPU</th>") == 1
