"""The static HTML report: ``build_site(result_paths, out_dir, baseline="torch")`` writes index.html, the figures as
PNG, the CSS and the normalized data (CSV and JSON) into one folder that opens from file:// or any static host.

The summary at the top is written from the data: which framework is fastest where (with CIs), how backward compares
with forward, why a conv is slower than a dense layer of the same input size, and how cost grows with size; it says
so when the results cannot answer one of these questions.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape

from reports import figures, peak
from reports.frame import BACKENDS, PASS_LABELS, Report, build, export
from suite.stats import ratio_ci

HERE = Path(__file__).parent
WARNING_FLAGS = {"unstable": "stopped at the time cap before the spread fell below target",
                 "noisy": "IQR/median ≥ 10%", "overhead_bound": "median below 50 µs: measures dispatch overhead",
                 "short_blocks": "a block shorter than 1 ms", "few_blocks": "too few blocks for a 95% CI"}


def fmt_time(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "–"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ci(low: float, high: float, unit: str = "×") -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no CI"
    return f"95% CI {low:.2f}–{high:.2f}{unit}"


def fmt_flops(tflops: float) -> str:
    if not np.isfinite(tflops):
        return "–"
    return f"{tflops:.3g} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.3g} GFLOP/s"


def _where(report: Report, *key: str) -> str:
    """'machine · device · dtype: ' when the results hold more than one such combination, else ''."""
    frame = report.measurements
    single = frame.empty or len(frame.groupby(["machine", "device", "dtype"])) == 1
    return "" if single else " · ".join(map(str, key)) + ": "


# ------------------------------------------------------------------------------------------------ summary
def summary_speed(report: Report) -> list[str]:
    """Which framework is fastest where, by how much (geomean over cases with CIs, and case counts)."""
    frame, base = report.measurements, report.baseline
    ok = frame[frame["best"] & frame["status"].eq("ok")] if not frame.empty else frame
    if ok.empty:
        return ["No successful measurement in these results: nothing to compare."]
    if ok["backend"].nunique() < 2:
        return [f"Only {', '.join(sorted(ok['backend'].unique()))} ran successfully here, so these results cannot say "
                "which framework is fastest; run more backends (--backend torch,tensorflow,jax) on the same machine."]
    lines = []
    for (machine, device, dtype, pass_), group in ok.groupby(["machine", "device", "dtype", "pass"]):
        winners = group.loc[group.groupby("case")["median_s"].idxmin(), "backend"].value_counts()
        wins = ", ".join(f"{b} {n}" for b, n in winners.items())
        parts = []
        kinds = report.speedups_by_kind
        sel = kinds[(kinds["machine"] == machine) & (kinds["device"] == device) & (kinds["dtype"] == dtype)
                    & (kinds["pass"] == pass_) & (kinds["backend"] != base)]
        for row in sel.itertuples():
            parts.append(f"{row.backend} on {row.kind} runs at {row.geomean:.2f}× the speed of {base} "
                         f"(geometric mean over {row.cases} cases, {fmt_ci(row.low, row.high)})")
        verdicts = group[group["backend"] != base]["speedup_verdict"].value_counts()
        clear = ", ".join(f"{n} {v}" for v, n in verdicts.items() if v in ("faster", "slower", "same"))
        where = _where(report, machine, device, dtype)
        lines.append(f"{where}{PASS_LABELS[pass_]}: fastest framework per case — {wins}. "
                     + ("; ".join(parts) + ". " if parts else "")
                     + (f"Per case against {base} (95% CI outside 1 ± 3%): {clear}." if clear else ""))
    return lines


def summary_backward(report: Report) -> list[str]:
    """Backward time over forward time per framework, against the FLOP ratio (2× for dX+dW, 1× for each)."""
    s = report.ratio_summary
    if s.empty:
        return ["No case has both a forward and a backward measurement of the same framework variant: the "
                "backward/forward question cannot be answered from these results."]
    lines = []
    for (machine, device, dtype, backend), group in s.groupby(["machine", "device", "dtype", "backend"]):
        parts = []
        for row in group.itertuples():
            flop = 2.0 if row.which == "backward" else 1.0
            parts.append(f"{PASS_LABELS[row.which]} takes {row.geomean:.2f}× the forward time "
                         f"({fmt_ci(row.low, row.high)}, {row.cases} cases; the FLOP ratio is {flop:.0f}×, so it "
                         f"runs at {100 * flop / row.geomean:.0f}% of the forward's FLOP/s)")
        lines.append(f"{_where(report, machine, device, dtype)}{backend}: " + "; ".join(parts) + ".")
    return lines


def summary_conv(report: Report) -> list[str]:
    """The seed question: conv vs dense layer of the same input size, per framework, with time ratio CIs."""
    frame = report.measurements
    fwd = frame[frame["best"] & frame["status"].eq("ok") & frame["pass"].eq("forward")] if not frame.empty else frame
    seed = fwd[fwd["tags"].map(lambda t: "seed" in t).astype(bool)] if not fwd.empty else fwd
    lines = []
    pairs = [("seed-dense-3072x512", "seed-conv-3x3"), ("seed-dense-3072x512", "seed-conv-7x7")]
    for (machine, device, dtype, backend), group in seed.groupby(["machine", "device", "dtype", "backend"]):
        rows = group.set_index("case")
        for dense, conv in pairs:
            if dense not in rows.index or conv not in rows.index:
                continue
            d, c = rows.loc[dense], rows.loc[conv]
            ratio, low, high = ratio_ci(c["samples"], d["samples"])
            gemm = _conv_gemm_text(c["dims"])
            lines.append(
                f"{_where(report, machine, device, dtype)}{backend}: {conv} takes {fmt_time(c['median_s'])} vs "
                f"{fmt_time(d['median_s'])} for {dense} — {ratio:.2f}× the time ({fmt_ci(low, high)}) for the same "
                f"{int(d['input_elements']):,} input values. It does {c['flops'] / d['flops']:.2f}× the FLOPs "
                f"({c['flops'] / c['input_elements']:,.0f} vs {d['flops'] / d['input_elements']:,.0f} per input "
                f"element: a conv does about 2·K·R·S per input value, a dense layer 2·N) and runs at "
                f"{fmt_flops(c['tflops'])} vs {fmt_flops(d['tflops'])} ({c['tflops'] / d['tflops']:.2f}×); {gemm}.")
    if not lines:
        lines.append("These results contain no seed cases (tag seed: seed-dense-3072x512, seed-conv-3x3, ...), so "
                     "they cannot answer the seed question directly; run `python -m suite run --catalog seed`.")
    kinds = fwd.groupby(["machine", "device", "dtype", "backend", "kind"])["tflops"] if not fwd.empty else None
    if kinds is not None:
        gm = kinds.apply(lambda v: float(np.exp(np.log(v).mean()))).unstack("kind")
        if {"gemm", "conv2d"} <= set(gm.columns):
            for key, row in gm.dropna(subset=["gemm", "conv2d"]).iterrows():
                lines.append(f"{_where(report, *key[:3])}{key[3]}, all forward cases: GEMMs reach "
                             f"{fmt_flops(row['gemm'])} and convs {fmt_flops(row['conv2d'])} (geometric means; the "
                             "cases differ in size, see the conv-vs-GEMM figure for FLOP/s at equal FLOPs).")
    return lines


def _conv_gemm_text(dims: dict[str, Any]) -> str:
    from suite.ops import op_from_dict

    op = op_from_dict(dims)
    g = op.equivalent_gemm()
    return (f"as an im2col GEMM it is M={g.m:,} × N={g.n} × K={g.k}, a reduction depth of only {g.k} "
            f"(C·R·S with C={op.c} input channels), which typically uses vector units less well than the dense "
            "layer's long reduction") if op.kind == "conv2d" else ""


def summary_scaling(report: Report) -> list[str]:
    fits = report.scaling
    if fits.empty:
        return ["No scaling sweep in these results (tags sweep-gemm, sweep-conv-spatial, sweep-conv-channels with at "
                "least 3 sizes): run `python -m suite run --catalog sweeps` to measure how cost grows with size."]
    lines = []
    for row in fits[fits["pass"] == "forward"].itertuples():
        lines.append(f"{row.sweep} ({row.dimension} = {row.min_size:.0f}…{row.max_size:.0f}, {row.points} sizes), "
                     f"{_where(report, row.machine, row.device, row.dtype)}{row.backend}: "
                     f"time grows as size^{row.slope:.2f} "
                     f"(± {row.slope_stderr:.2f}); FLOPs grow as size^{row.flop_slope:.0f}"
                     + (" — below the FLOP exponent: small sizes are overhead-bound or throughput still rises "
                        "with size." if row.slope < row.flop_slope - 0.3 else "."))
    return lines


def summary_quality(report: Report) -> list[str]:
    """How far the numbers can be trusted: flagged, failed and check-failed measurements, load at start."""
    frame = report.measurements
    if frame.empty:
        return []
    ok = frame[frame["status"].eq("ok")]
    flagged = ok["flags"].map(lambda f: bool(set(f) & {"unstable", "noisy"})).sum()
    lines = [f"{flagged} of {len(ok)} successful measurements are flagged unstable or noisy, "
             f"{ok['flags'].map(lambda f: 'overhead_bound' in f).sum()} overhead-bound (< 50 µs per call), "
             f"{(frame['check'] == 'fail').sum()} failed the numerical check and {len(frame) - len(ok)} did not run "
             "(see Warnings). Treat differences whose CI is wide, or that rest on flagged measurements, with care."]
    for h in report.results.headers:
        env = h.get("environment") or {}
        load, cpus = env.get("load_average") or [], (env.get("cpu") or {}).get("usable_cpus")
        if load and cpus and load[0] > 0.5 * cpus:
            lines.append(f"Run {h.get('run_id')} started with load average {load[0]:.2f} on {cpus} usable CPUs: "
                         "other work was competing for the CPU, which inflates and scatters times.")
    return lines


def summary_peaks(report: Report) -> list[str]:
    frame = report.measurements
    if frame.empty or "measured_tflops" not in frame:
        return []
    lines = []
    for key, group in frame.groupby(["machine", "device", "dtype", "math"]):
        theo, measured = group["peak_theoretical_tflops"].max(), group["measured_tflops"].max()
        basis = group["peak_theoretical_basis"].iloc[0]
        text = f"{' · '.join(map(str, key))}: {basis}"
        text += f" = {fmt_flops(theo)}." if np.isfinite(theo) else "."
        if np.isfinite(measured):
            best = group.dropna(subset=["measured_case"]).iloc[0]
            text += (f" {peak.MEASURED}: {fmt_flops(measured)} ({best['measured_backend']}, {best['measured_case']}; "
                     f"{best['measured_basis']})" + (f", {100 * measured / theo:.0f}% of the estimate." if
                                                      np.isfinite(theo) else "."))
        lines.append(text)
    return lines


# ------------------------------------------------------------------------------------------------ figures
@dataclass(frozen=True)
class FigureSpec:
    key: str
    title: str
    caption: str
    draw: Callable[[Report], Any]
    missing: str


FIGURES = [
    FigureSpec("throughput", "Throughput per case",
               "Achieved FLOP/s (useful FLOPs of the direct algorithm / median time per call) of each framework's "
               "fastest mode and layout, with the 95% CI of the median time turned into FLOP/s.",
               lambda r: figures.throughput(r.measurements), "no successful measurement"),
    FigureSpec("speedup", "Speedup over the baseline",
               "time(baseline) / time(framework) per case and pass; 95% bootstrap CI of the ratio of medians. A "
               "trailing ≈ marks a CI that does not exclude 1 ± 3%.",
               lambda r: figures.speedup_heatmap(r.measurements, r.baseline),
               "fewer than two frameworks have successful measurements of the same cases"),
    FigureSpec("roofline", "Roofline",
               "Achieved FLOP/s against arithmetic intensity (FLOPs / minimum bytes). Dashed: theoretical roof "
               "(GPU: datasheet compute and bandwidth; CPU: a compute estimate only, no bandwidth roof). Dotted: "
               "measured peak (best GEMM in these results).",
               lambda r: figures.roofline(r.measurements), "no successful measurement"),
    FigureSpec("backward", "Backward vs forward",
               "Time of each backward pass over the forward time of the same case and framework variant; dashed: "
               "the FLOP ratio (what equal FLOP/s would give).",
               lambda r: figures.pass_ratio(r.ratios), "no case has both forward and backward measurements"),
    FigureSpec("conv_vs_gemm", "Conv vs dense layer",
               "Why is a conv slower than a dense layer of the same input size? Left: FLOPs per input element. "
               "Middle: time of the seed cases. Right: FLOP/s against FLOPs for every forward GEMM and conv.",
               lambda r: figures.conv_vs_gemm(r.measurements), "no seed cases and not both GEMM and conv forwards"),
    FigureSpec("scaling", "Scaling with size",
               "Time per call against the swept size (log-log); the legend gives each framework's fitted slope, "
               "dashed the FLOP growth.", lambda r: figures.scaling(r.measurements, r.scaling),
               "no sweep cases (tags sweep-gemm, sweep-conv-spatial, sweep-conv-channels)"),
    FigureSpec("networks", "Per-network rollup",
               "Σ over a network's distinct layers of median time × count: inference = forward of the batch-1 "
               "layers, training step = forward + backward of the training layers. Only layers with every needed "
               "pass measured are summed (shown as measured/total); the interval sums per-layer CI bounds.",
               lambda r: figures.network_rollup(r.networks),
               "no network layers (tag modern with train/inference) in these results"),
    FigureSpec("first_call", "Compile and first call",
               "Time of the first call, which includes tracing, compilation and kernel selection (not in the timed "
               "medians).", lambda r: figures.first_call(r.measurements), "no first-call times recorded"),
]


def render_figures(report: Report, folder: Path) -> list[dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in FIGURES:
        fig = spec.draw(report)
        entry = {"key": spec.key, "title": spec.title, "caption": spec.caption, "src": None,
                 "missing": f"Not drawn: {spec.missing}."}
        if fig is not None:
            figures.tidy_log_ticks(fig).savefig(folder / f"{spec.key}.png", dpi=100)
            entry["src"] = f"figures/{spec.key}.png"
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------ tables
def case_tables(report: Report) -> list[dict[str, Any]]:
    """Per machine · device · dtype · pass: one row per case, per framework its best time, CI, FLOP/s and status."""
    frame = report.measurements
    if frame.empty:
        return []
    tables = []
    for (machine, device, dtype, pass_), group in frame.groupby(["machine", "device", "dtype", "pass"], sort=True):
        backends = [b for b in BACKENDS if b in set(group["backend"])] + \
            sorted(set(group["backend"]) - set(BACKENDS))
        rows = []
        for case, cg in group.sort_values(["kind", "flops"]).groupby("case", sort=False):
            first = cg.iloc[0]
            cells = []
            for backend in backends:
                bg = cg[cg["backend"] == backend]
                best = bg[bg["best"]]
                if len(best):
                    b = best.iloc[0]
                    cells.append({"time": fmt_time(b["median_s"]), "sort": b["median_s"],
                                  "ci": f"{fmt_time(b['ci_low_s'])}–{fmt_time(b['ci_high_s'])}",
                                  "flops": fmt_flops(b["tflops"]), "variant": b["variant"],
                                  "speedup": f"{b['speedup']:.2f}×" if np.isfinite(b["speedup"]) else "",
                                  "status": "ok", "flags": " ".join(b["flags"])})
                elif len(bg):
                    b = bg.iloc[0]
                    cells.append({"time": b["status"], "sort": math.inf, "ci": "", "flops": "", "variant": b["variant"],
                                  "speedup": "", "status": b["status"], "flags": str(b["reason"] or "")[:160]})
                else:
                    cells.append({"time": "not run", "sort": math.inf, "ci": "", "flops": "", "variant": "",
                                  "speedup": "", "status": "absent", "flags": ""})
            rows.append({"case": case, "shape": first["shape"], "kind": first["kind"], "flops": first["flops"],
                         "provenance": f"{first['network']}: {first['layer']}", "source": first["source"],
                         "cells": cells})
        tables.append({"title": f"{machine} · {device} · {dtype} · {PASS_LABELS[pass_]}", "backends": backends,
                       "rows": rows})
    return tables


def warning_rows(report: Report) -> list[dict[str, str]]:
    """Every failed, unsupported, check-failed or flagged measurement, with its reason."""
    frame = report.measurements
    rows = [{"what": "results file", "measurement": "", "reason": w} for w in report.results.warnings]
    if frame.empty:
        return rows
    for r in frame.itertuples():
        name = f"{r.case} · {r.backend} {r.variant} · {r.pass_label} · {r.dtype} · {r.machine}"
        if r.status != "ok":
            rows.append({"what": r.status, "measurement": name, "reason": str(r.reason or "no reason recorded")})
        if r.check == "fail":
            rows.append({"what": "check failed", "measurement": name,
                         "reason": f"max relative error {r.check_error:.2e} above tolerance"})
        for flag in r.flags:
            rows.append({"what": flag, "measurement": name, "reason": WARNING_FLAGS.get(flag, flag)})
    return rows


def environments(report: Report) -> list[dict[str, Any]]:
    out = []
    workers = report.results.workers
    for h in report.results.headers:
        env = h.get("environment") or {}
        cpu = env.get("cpu") or {}
        out.append({
            "run_id": h.get("run_id"), "created": h.get("created", ""), "machine": " · ".join(filter(None, [
                env.get("hostname"), cpu.get("model")])),
            "facts": {
                "CPU": f"{cpu.get('model')} ({cpu.get('architecture')}), {cpu.get('usable_cpus')} usable of "
                       f"{cpu.get('logical_cpus')} logical CPUs, {cpu.get('mhz')} MHz, "
                       f"{' '.join(cpu.get('vector_flags') or [])}",
                "GPUs": ", ".join(f"{g.get('name')} ({g.get('memory', '')}, driver {g.get('driver', '')})"
                                  for g in env.get("gpus") or []) or "none",
                "memory": f"{(env.get('memory_bytes') or 0) / 2**30:.1f} GiB",
                "OS / Python": f"{env.get('platform')} / Python {env.get('python')}",
                "packages": ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items()),
                "opbench commit": f"{(env.get('opbench') or {}).get('commit')}"
                                  + (" (uncommitted changes)" if (env.get("opbench") or {}).get("dirty") else ""),
                "knobs (environment)": ", ".join(f"{k}={v}" for k, v in (env.get("knobs") or {}).items()) or "none",
                "load average at start": ", ".join(f"{v:.2f}" for v in env.get("load_average") or []),
                "timing": ", ".join(f"{k}={v}" for k, v in (h.get("timing") or {}).items()),
                "numerical check": str(h.get("check")), "seed": str(h.get("seed")),
            },
            "workers": [{"backend": w.get("backend"), "device": w.get("device"),
                         "versions": ", ".join(f"{k} {v}" for k, v in (w.get("versions") or {}).items()),
                         "flags": ", ".join(f"{k}={v}" for k, v in (w.get("flags") or {}).items())}
                        for w in workers if w.get("run_id") == h.get("run_id")],
        })
    return out


# ------------------------------------------------------------------------------------------------ site
def write_data(report: Report, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"measurements": export(report.measurements), "pass_ratios": report.ratios,
              "speedup_by_kind": report.speedups_by_kind, "speedup_by_tag": report.speedups_by_tag,
              "pass_ratio_summary": report.ratio_summary, "scaling_fits": report.scaling,
              "network_rollup": report.networks, "measured_peaks": report.peaks}
    names = []
    for name, table in tables.items():
        table.to_csv(folder / f"{name}.csv", index=False)
        table.to_json(folder / f"{name}.json", orient="records", indent=1, default_handler=str)
        names += [f"data/{name}.csv", f"data/{name}.json"]
    return names


def build_site(result_paths: Iterable[str | Path], out_dir: str | Path, baseline: str = "torch") -> Path:
    """Write the report for ``result_paths`` (files or folders) into ``out_dir``; returns the index.html path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build(result_paths, baseline)
    frame = report.measurements
    if not frame.empty:
        frame["pass_label"] = frame["pass"].map(PASS_LABELS)
    shutil.copy(HERE / "static" / "style.css", out / "style.css")
    figs = render_figures(report, out / "figures")
    data_files = write_data(report, out / "data")
    status = frame["status"].value_counts().to_dict() if not frame.empty else {}
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("index.html.j2").render(
        baseline=baseline, n=len(frame), status=status,
        machines=sorted(frame["machine"].unique()) if not frame.empty else [],
        backends=sorted(frame["backend"].unique()) if not frame.empty else [],
        cases=frame["case"].nunique() if not frame.empty else 0,
        summary={"How reliable are these numbers?": summary_quality(report),
                 "Which framework is fastest, where, and by how much?": summary_speed(report),
                 "How does backward compare with forward?": summary_backward(report),
                 "Why is a conv layer slower than a dense layer of the same input size?": summary_conv(report),
                 "How does cost grow with size?": summary_scaling(report),
                 "Peak: theoretical and measured": summary_peaks(report)},
        environments=environments(report), figures=figs, tables=case_tables(report),
        warnings=warning_rows(report), data_files=data_files,
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
