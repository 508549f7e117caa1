"""The static HTML report: ``build_site(results, out_dir, baseline="torch")`` writes index.html, the figures as
PNG, the CSS and the normalized data (CSV and JSON) into one folder that opens from file:// or any static host.

Layout only: the numbers come from ``reports.analysis``, the sentences from ``reports.summary``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from reports import analysis, figures, history, summary
from reports.analysis import CONFIG, Analysis
from reports.frame import PASS_LABELS, export, machine_name
from suite.catalog import Case
from suite.ops import op_from_dict
from suite.results import Results, read_many

HERE = Path(__file__).parent


# ------------------------------------------------------------------------------------------------ figures
@dataclass(frozen=True)
class FigureSpec:
    key: str
    title: str
    caption: str
    draw: Callable[[Analysis], Any]
    missing: str


FIGURES = [
    FigureSpec("speedup", "Speedup over the baseline",
               "time(baseline) / time(framework) per case and pass, each framework's fastest variant; 95% bootstrap CI "
               "of the ratio of medians. A trailing ≈ marks a CI that does not exclude 1 ± 3%. The colour range "
               "covers 90% of the cells; the rest take the end colour.",
               lambda a: figures.speedup_heatmap(a.pooled, a.baseline, a.order),
               "fewer than two frameworks have successful measurements of the same cases"),
    FigureSpec("training_shares", "Forward or backward: a training step",
               "Per complete network and framework (its fastest complete variant): the share of the training step's "
               "measured time (GEMM, conv, attention layers) in forward, dX and dW. The first layer's dX is not "
               "counted; normalization, activations and the optimizer are not measured.",
               lambda a: figures.training_shares(a.networks, a.order),
               "no network with every layer measured in forward, dX and dW"),
    FigureSpec("conv_vs_gemm", "Conv vs dense layer",
               "Why is a conv slower than a dense layer of the same input size? Left: FLOPs per input value. "
               "Middle: forward time of the seed cases. Right: FLOP/s against FLOPs for every forward GEMM and conv.",
               lambda a: figures.conv_vs_gemm(a.pooled, a.order), "no seed cases and not both GEMM and conv forwards"),
    FigureSpec("scaling", "Scaling with size",
               "Time per call against the swept size (log-log), inference (forward) and training (forward + backward) "
               "side by side; the legend gives each framework's slope over the filled (compute-bound) points, dashed "
               "the FLOP growth.", lambda a: figures.scaling(a.scaling_points, a.scaling, a.order),
               "no sweep cases (tags sweep-gemm, sweep-conv-spatial, sweep-conv-channels)"),
    FigureSpec("networks", "Complete networks",
               "Σ over every layer of a network of median time × count, per framework variant; only networks with "
               "every layer measured; the interval sums per-layer CI bounds.",
               lambda a: figures.network_rollup(a.networks, a.order), "no network with every layer measured"),
    FigureSpec("throughput", "Throughput per case",
               "Achieved FLOP/s (useful FLOPs of the direct algorithm / median time per call) of each framework's "
               "fastest variant, with the 95% CI of the median time turned into FLOP/s.",
               lambda a: figures.throughput(a.pooled, a.order), "no successful measurement"),
    FigureSpec("roofline", "Roofline",
               "Achieved FLOP/s against arithmetic intensity (FLOPs / minimum bytes). Dashed: theoretical roof; "
               "dotted: measured peak (best GEMM in these results).",
               lambda a: figures.roofline(a.pooled, a.order), "no successful measurement"),
    FigureSpec("backward", "Backward vs forward, per op",
               "Time of each backward pass over the forward time of the same case and framework variant; dashed: the "
               "FLOP ratio (what equal FLOP/s would give).",
               lambda a: figures.pass_ratio(a.ratios, a.order), "no case has both forward and backward measurements"),
    FigureSpec("first_call", "Compile and first call",
               "Time of the first call, which includes tracing, compilation and kernel selection (not in the timed "
               "medians).", lambda a: figures.first_call(a.measurements, a.order), "no first-call times recorded"),
]


def kind_figures(a: Analysis) -> list[FigureSpec]:
    """One throughput figure per op kind beyond GEMM and conv in the results (its section's figure)."""
    return [FigureSpec(summary.KIND_FIGURE.format(kind), f"Throughput: {summary.KIND_LABELS.get(kind, kind)}",
                       "Achieved FLOP/s per case of each framework's fastest variant, per pass, with the 95% CI of the "
                       "median time turned into FLOP/s; passes the op does not have are not drawn.",
                       lambda a, kind=kind: figures.throughput(a.pooled[a.pooled["op"].eq(kind)], a.order),
                       f"no successful {kind} measurement") for kind in a.kinds]


def render_figures(a: Analysis, folder: Path) -> dict[str, dict[str, str | None]]:
    """Draw every figure into ``folder``; key → {title, caption, src (None when not drawn), missing}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in [*FIGURES, *kind_figures(a)]:
        fig = spec.draw(a)
        entry = {"key": spec.key, "title": spec.title, "caption": spec.caption, "src": None,
                 "missing": f"Not drawn: {spec.missing}."}
        if fig is not None:
            figures.tidy_log_ticks(fig).savefig(folder / f"{spec.key}.png", dpi=100)
            entry["src"] = f"figures/{spec.key}.png"
        out[spec.key] = entry
    return out


# ------------------------------------------------------------------------------------------------ tables
def time_unit(seconds: Iterable[float]) -> tuple[float, str]:
    """One unit for a column: s, ms or µs by the column's largest value."""
    top = max((s for s in seconds if np.isfinite(s)), default=0.0)
    return (1.0, "s") if top >= 1 else (1e3, "ms") if top >= 1e-3 else (1e6, "µs")


def case_tables(a: Analysis) -> list[dict[str, Any]]:
    """DeepBench's layout: per configuration one row per case; per framework the forward, dX, dW and dX+dW times
    side by side (its fastest variant, one unit per column, numeric sort keys; CI, variant, FLOP/s on hover)."""
    pooled, frame = a.pooled, a.measurements
    if frame.empty:
        return []
    failed = frame[frame["status"].ne("ok")]
    tables = []
    for key, group in frame.groupby(CONFIG, dropna=False, sort=True):
        best = pooled[pooled["best"] & (pooled[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1)] \
            if not pooled.empty else pooled
        backends = summary.ordered(a, group["backend"])
        passes = [p for p in PASS_LABELS if p in set(group["pass"])]
        times = best.set_index(["case", "backend", "pass"]) if not best.empty else best
        columns = []
        for b in backends:
            for p in passes:
                values = best.loc[best["backend"].eq(b) & best["pass"].eq(p), "median_s"] if not best.empty else []
                scale, unit = time_unit(values)
                columns.append({"backend": b, "pass": p, "scale": scale, "label": PASS_LABELS[p], "unit": unit})
        rows = []
        for case, cg in group.sort_values(["kind", "flops"]).groupby("case", sort=False):
            first = cg.iloc[0]
            op = op_from_dict(first["dims"]) if first["dims"] else None
            fastest = {p: best.loc[best["case"].eq(case) & best["pass"].eq(p), "median_s"].min()
                       for p in passes} if not best.empty else {}
            cells = []
            for col in columns:
                k = (case, col["backend"], col["pass"])
                if not best.empty and k in times.index:
                    r = times.loc[k]
                    r = r.iloc[0] if isinstance(r, pd.DataFrame) else r
                    cells.append({"text": f"{r['median_s'] * col['scale']:.3g}", "sort": r["median_s"],
                                  "cls": "num" + (" fastest" if r["median_s"] == fastest.get(col["pass"]) else ""),
                                  "title": f"95% CI {summary.seconds_ci(r['ci_low_s'], r['ci_high_s'])}"
                                           f"; {summary.flops_text(r['tflops'])}; {r['variant']}"
                                           + (f"; {r['runs']} runs pooled" if r["runs"] > 1 else "")
                                           + (f"; flags: {' '.join(r['flags'])}" if r["flags"] else "")})
                elif op is not None and col["pass"] not in op.passes:  # attention's dX: not a gap
                    cells.append({"text": "n/a", "sort": "inf", "cls": "na",
                                  "title": getattr(op, "no_pass_reason", f"{op.kind} has no such pass")})
                else:
                    miss = failed[failed["case"].eq(case) & failed["backend"].eq(col["backend"])
                                  & failed["pass"].eq(col["pass"]) & (failed[CONFIG] == pd.Series(key, index=CONFIG))
                                  .all(axis=1)]
                    status = miss["status"].iloc[0] if len(miss) else "–"
                    cells.append({"text": status, "sort": "inf", "cls": f"status {status}" if len(miss) else "",
                                  "title": str(miss["reason"].iloc[0] or "")[:300] if len(miss) else "not measured"})
            rows.append({"case": case, "shape": first["shape"], "flops": forward_flops(first),
                         "provenance": f"{first['network']}: {first['layer']}", "source": first["source"],
                         "cells": cells})
        title = summary.config_title(key)
        tables.append({"title": title, "backends": backends, "passes": len(passes), "columns": columns,
                       "rows": rows})
    return tables


def forward_flops(row: pd.Series) -> float:
    """FLOPs of the forward pass of a case (rows of other passes carry their own pass's FLOPs)."""
    return float(op_from_dict(row["dims"]).flops("forward")) if row["dims"] else math.nan


def warning_rows(report: Analysis) -> list[dict[str, str]]:
    """Every failed, unsupported, check-failed or flagged measurement, with its reason."""
    frame = report.measurements
    rows = [{"what": "results file", "measurement": "", "reason": w} for w in report.results.warnings]
    if frame.empty:
        return rows
    for r in frame.itertuples():
        name = f"{r.case} · {r.backend} {r.variant} · {r.pass_label} · {r.dtype} · {r.machine}"
        if r.status != "ok" and r.applies:  # a pass the op does not have (attention's dX) is no warning
            rows.append({"what": r.status, "measurement": name, "reason": str(r.reason or "no reason recorded")})
        if r.check == "fail":
            rows.append({"what": "check failed", "measurement": name,
                         "reason": f"max relative error {r.check_error:.2e} above tolerance"})
        for flag in r.flags:
            seen = f" (NVML: {', '.join(r.throttle_reasons)})" if flag == "throttled" and r.throttle_reasons else ""
            rows.append({"what": flag, "measurement": name, "reason": summary.WARNING_FLAGS.get(flag, flag) + seen})
    return rows


def _gpu_facts(env: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, str]:
    """For a GPU machine: each GPU as NVML describes it (name, memory, clocks locked or not, power limit), the driver
    and CUDA driver version, and the CUDA and cuDNN each framework was built with; {} without a GPU."""
    nvml = env.get("nvml") or {}
    if not (env.get("gpus") or nvml.get("gpus")):
        return {}
    def locked(gpu: dict[str, Any]) -> str:
        if gpu.get("clocks_locked") is None:
            return "clock lock unknown"
        by = "; ".join(gpu.get("clocks_locked_by") or ["applications clocks set"])  # older headers name none
        return f"clocks locked ({by})" if gpu["clocks_locked"] else "clocks not locked"

    gpus = [f"{g.get('name')} ({(g.get('memory_bytes') or 0) / 2**30:.1f} GiB, max SM clock "
            f"{g.get('max_sm_clock_mhz')} MHz, {locked(g)}, power limit {g.get('power_limit_w')} W)"
            for g in nvml.get("gpus") or []] or [
        f"{g.get('name')} ({g.get('memory', '')}, driver {g.get('driver', '')}; NVML: {nvml.get('nvml', 'not read')})"
        for g in env.get("gpus") or []]
    builds = [f"{w.get('backend')}: " + ", ".join(f"{name} {w['versions'][key]}" for key, name in
                                                   (("cuda", "CUDA"), ("cudnn", "cuDNN")) if key in w["versions"])
              for w in workers if {"cuda", "cudnn"} & set(w.get("versions") or {})]
    return {"GPUs": "; ".join(gpus),
            "GPU driver": f"{nvml.get('driver') or (env.get('gpus') or [{}])[0].get('driver')}, CUDA driver API "
                          f"{nvml.get('cuda_driver') or 'unknown'}",
            "CUDA / cuDNN (frameworks)": "; ".join(dict.fromkeys(builds)) or "not recorded"}


def _env_facts(h: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, str]:
    env = h.get("environment") or {}
    cpu = env.get("cpu") or {}
    return {
        "CPU": f"{cpu.get('model')} ({cpu.get('architecture')}), {cpu.get('usable_cpus')} usable of "
               f"{cpu.get('logical_cpus')} logical CPUs, {cpu.get('mhz')} MHz, "
               f"{' '.join(cpu.get('vector_flags') or [])}",
        "GPUs": "none",
        **_gpu_facts(env, workers),
        "memory": f"{(env.get('memory_bytes') or 0) / 2**30:.1f} GiB",
        "OS / Python": f"{env.get('platform')} / Python {env.get('python')}",
        "packages": ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items()),
        "opbench commit": f"{(env.get('opbench') or {}).get('commit')}"
                          + (" (uncommitted changes)" if (env.get("opbench") or {}).get("dirty") else ""),
        "knobs (environment)": ", ".join(f"{k}={v}" for k, v in (env.get("knobs") or {}).items()) or "none",
        "timing": ", ".join(f"{k}={v}" for k, v in (h.get("timing") or {}).items()),
        "numerical check": str(h.get("check")), "seed": str(h.get("seed")),
    }


def environments(report: Analysis) -> list[dict[str, Any]]:
    """One block per machine: the facts all its runs share, then one table row per run (and framework worker) with
    its id, start time, load average and whatever else differs between the runs."""
    workers = report.results.workers
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for h in report.results.headers:
        by_machine.setdefault(machine_name(h.get("environment") or {}), []).append(h)
    out = []
    for machine, headers in by_machine.items():
        facts = [_env_facts(h, [w for w in workers if w.get("run_id") == h.get("run_id")]) for h in headers]
        keys = list(dict.fromkeys(k for f in facts for k in f))
        shared = {k: facts[0][k] for k in keys if all(f.get(k) == facts[0].get(k) for f in facts)}
        varying = [k for k in keys if k not in shared]
        runs = []
        for h, f in zip(headers, facts, strict=True):
            load = ", ".join(f"{v:.2f}" for v in (h.get("environment") or {}).get("load_average") or [])
            ws = [w for w in workers if w.get("run_id") == h.get("run_id")] or [{}]
            for i, w in enumerate(ws):  # the run's own facts once, on its first worker's row
                runs.append({"run_id": h.get("run_id"), "created": h.get("created", "") if not i else "",
                             "load": load if not i else "",
                             "varying": [f.get(k, "") if not i else "" for k in varying],
                             "backend": w.get("backend", ""),
                             "device": w.get("device", ""),
                             "versions": ", ".join(f"{k} {v}" for k, v in (w.get("versions") or {}).items()),
                             "flags": ", ".join(f"{k}={v}" for k, v in (w.get("flags") or {}).items())})
        out.append({"machine": machine, "facts": shared, "varying": varying, "runs": runs,
                    "count": len(headers)})
    return out


# ------------------------------------------------------------------------------------------------ site
def write_data(a: Analysis, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"measurements": export(a.measurements), "pooled": export(a.pooled), "speedups": a.speedups,
              "variants": a.variants, "variant_effects": a.variant_effects, "pass_ratios": a.ratios,
              "pass_ratio_summary": a.ratio_summary, "networks": a.networks, "partial_networks": a.partial_networks,
              "scaling_points": a.scaling_points, "scaling_fits": a.scaling, "conv_vs_dense": a.conv_dense,
              "peaks": a.peaks, "kind_ratios": a.kind_ratios,
              "kind_throughput": a.kind_throughput.assign(**{c: a.kind_throughput[c].map(";".join)
                                                             for c in ("kernels", "layouts")})}
    names = []
    for name, table in tables.items():
        table.to_csv(folder / f"{name}.csv", index=False)
        table.to_json(folder / f"{name}.json", orient="records", indent=1, default_handler=str)
        names += [f"data/{name}.csv", f"data/{name}.json"]
    return names


def build_site(results: Results | Iterable[str | Path], out_dir: str | Path, baseline: str = "torch",
               cases: Iterable[Case] | None = None, order: Iterable[str] = ()) -> Path:
    """Write the report for ``results`` (read already, or files and folders to read) into ``out_dir``; returns the
    index.html path. ``cases``: the catalog that networks are judged complete against (default: the bundled one);
    ``order``: the frameworks' order in tables and legends (the backend registry's, which the CLI passes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a = analysis.analyze(results if isinstance(results, Results) else read_many(results), baseline, cases, order)
    frame = a.measurements
    shutil.copy(HERE / "static" / "style.css", out / "style.css")
    figs = render_figures(a, out / "figures")
    questions = summary.answers(a)
    inline = {q["figure"] for q in questions if q["figure"]}
    data_files = write_data(a, out / "data")
    status = frame["status"].where(frame["applies"], "not applicable").value_counts().to_dict() \
        if not frame.empty else {}
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("index.html.j2").render(
        baseline=baseline, n=len(frame), status=status,
        machines=sorted(frame["machine"].unique()) if not frame.empty else [],
        backends=list(a.order), l2=summary.cache_state(a),
        cases=frame["case"].nunique() if not frame.empty else 0,
        summary=questions, figure_by_key=figs, figures=[f for k, f in figs.items() if k not in inline],
        environments=environments(a), tables=case_tables(a), warnings=warning_rows(a), data_files=data_files,
        history=history.section(a.results, out / "figures", a.order),  # reports/history.py; empty for one run
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
