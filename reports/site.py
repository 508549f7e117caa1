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

import jinja2
import numpy as np
import pandas as pd

from reports import analysis, figures, history, peak, summary
from reports.analysis import CONFIG, Analysis
from reports.frame import export
from suite.catalog import Case
from suite.ops import PASS_LABELS, PASSES
from suite.results import SAME_BAND, Environment, GpuInfo, NvmlInfo, ResultSet, RunHeader, WorkerInfo, read_many

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
               f"of the ratio of medians. A trailing ≈ marks a CI that does not exclude 1 ± {100 * SAME_BAND:g}% (the "
               "same-speed band). The colour range covers 90% of the cells; the rest take the end colour.",
               lambda a: figures.speedup_heatmap(a.pooled, a.baseline, a.palette),
               "fewer than two frameworks have successful measurements of the same cases"),
    FigureSpec("training_shares", "Forward or backward: a training step",
               "Per complete network and framework (its fastest complete variant): the share of the training step's "
               "measured time (GEMM, conv, attention layers) in forward, dX and dW. The first layer's dX is not "
               "counted; normalization, activations and the optimizer are not measured.",
               lambda a: figures.training_shares(a.networks, a.palette),
               "no network with every layer measured in forward, dX and dW"),
    FigureSpec("conv_vs_gemm", "Conv vs dense layer",
               "Why is a conv slower than a dense layer of the same input size? Left: FLOPs per input value. "
               "Middle: forward time of the seed cases. Right: FLOP/s against FLOPs for every forward GEMM and conv.",
               lambda a: figures.conv_vs_gemm(a.pooled, a.palette),
               "no seed cases and not both GEMM and conv forwards"),
    FigureSpec("scaling", "Scaling with size",
               "Time per call against the swept size (log-log), inference (forward) and training (forward + backward) "
               "side by side; the legend gives each framework's slope over the filled (compute-bound) points, dashed "
               "the FLOP growth.", lambda a: figures.scaling(a.scaling_points, a.scaling, a.palette),
               "no sweep cases (tags sweep-gemm, sweep-conv-spatial, sweep-conv-channels)"),
    FigureSpec("networks", "Complete networks",
               "Σ over every layer of a network of median time × count, per framework variant; only networks with "
               "every layer measured; the interval sums per-layer CI bounds.",
               lambda a: figures.network_rollup(a.networks, a.palette), "no network with every layer measured"),
    FigureSpec("steps", "Where a training step's time goes",
               "Per network and framework (its fastest training-step variant). Left: the whole step as the sum of "
               "its measured GEMM/conv/attention layers (the catalog layer set named by the model case's whole: tag, "
               "the framework's fastest complete variant) plus the remainder; the bar at the end is the step's 95% "
               "CI; hatched: the layer set is incomplete, so the step is not split. Right: the step's shares in "
               "forward (the inference pass, eval mode), backward (forward+backward − inference) and the SGD update "
               "(step − forward+backward).", lambda a: figures.whole_steps(a.steps, a.palette),
               "no whole-model training step (a case tagged whole:<layer set>)"),
    FigureSpec("throughput", "Throughput per case",
               "Achieved FLOP/s (useful FLOPs of the direct algorithm / median time per call) of each framework's "
               "fastest variant, with the 95% CI of the median time turned into FLOP/s.",
               lambda a: figures.throughput(a.pooled, a.palette), "no successful measurement"),
    FigureSpec("roofline", "Roofline",
               "Achieved FLOP/s against arithmetic intensity (FLOPs / minimum bytes). Dashed: theoretical roof; "
               "dotted: measured peak (best GEMM in these results).",
               lambda a: figures.roofline(a.pooled, a.palette), "no successful measurement"),
    FigureSpec("backward", "Backward vs forward, per op",
               "Time of each backward pass over the forward time of the same case and framework variant; dashed: the "
               "FLOP ratio (what equal FLOP/s would give).",
               lambda a: figures.pass_ratio(a.ratios, a.palette), "no case has both forward and backward measurements"),
    FigureSpec("first_call", "Compile and first call",
               "Time of the first call, which includes tracing, compilation and kernel selection (not in the timed "
               "medians).", lambda a: figures.first_call(a.measurements, a.palette), "no first-call times recorded"),
]


def kind_figures(a: Analysis) -> list[FigureSpec]:
    """One figure per op kind beyond GEMM and conv in the results (its section's figure): throughput, or for a
    collective (a kind with a ``bus_factor``) its bus bandwidth against message size."""
    return [FigureSpec(summary.KIND_FIGURE.format(kind), f"Bus bandwidth: {summary.kind_label(kind)}",
                       "Bus bandwidth (nccl-tests' busbw: message bytes / the slowest rank's median time × 2(R−1)/R) "
                       "of each framework's fastest variant against the message size, one line per framework and "
                       "rank count; dotted: the memory bandwidth (on a CPU a large copy measured with run "
                       "--bandwidth, on a GPU its datasheet figure); "
                       "dash-dot: the link bandwidth per direction, with its basis (NVML's NVLink or PCIe figure for "
                       "GPU ranks, or run --link-bandwidth): busbw compares with a link's speed per direction, as "
                       "nccl-tests means it to.",
                       lambda a, kind=kind: figures.bus_bandwidth(a.pooled[a.pooled["op"].eq(kind)], a.palette),
                       f"no successful {kind} measurement")
            if summary.collective(kind) else
            FigureSpec(summary.KIND_FIGURE.format(kind), f"Throughput: {summary.kind_label(kind)}",
                       "Achieved FLOP/s per case of each framework's fastest variant, per pass, with the 95% CI of the "
                       "median time turned into FLOP/s; passes the op does not have are not drawn.",
                       lambda a, kind=kind: figures.throughput(a.pooled[a.pooled["op"].eq(kind)], a.palette),
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
        passes = [p for p in PASSES if p in set(group["pass"])]
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
            op = first["spec"]
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
                                  "title": op.no_pass_reason or f"{op.kind} has no such pass"})
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
    return float(row["spec"].flops("forward")) if row["spec"] is not None else math.nan


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


def _gpu_facts(env: Environment, workers: list[WorkerInfo]) -> dict[str, str]:
    """For a GPU machine: each GPU as NVML describes it (name, memory, clocks locked or not, power limit), the driver
    and CUDA driver version, and the CUDA and cuDNN each framework was built with; {} without a GPU. NVML's and
    nvidia-smi's GPU facts are kept as they were recorded (mappings)."""
    nvml = env.nvml or NvmlInfo()
    if not (env.gpus or nvml.gpus):
        return {}

    def locked(gpu: GpuInfo) -> str:
        if gpu.clocks_locked is None:
            return "clock lock unknown"
        by = "; ".join(gpu.clocks_locked_by or ["applications clocks set"])  # older headers name none
        return f"clocks locked ({by})" if gpu.clocks_locked else "clocks not locked"

    gpus = [f"{g.name} ({(g.memory_bytes or 0) / 2**30:.1f} GiB, max SM clock {g.max_sm_clock_mhz} MHz, "
            f"{locked(g)}, power limit {g.power_limit_w} W)" for g in nvml.gpus] or [
        f"{g.name} ({g.memory}, driver {g.driver}; NVML: {nvml.unread or 'not read'})" for g in env.gpus]
    builds = [f"{w.backend}: " + ", ".join(f"{name} {w.versions[key]}" for key, name in
                                           (("cuda", "CUDA"), ("cudnn", "cuDNN")) if key in w.versions)
              for w in workers if {"cuda", "cudnn"} & set(w.versions)]
    return {"GPUs": "; ".join(gpus),
            "GPU driver": f"{nvml.driver or (env.gpus[0].driver if env.gpus else None)}, CUDA driver API "
                          f"{nvml.cuda_driver or 'unknown'}",
            "CUDA / cuDNN (frameworks)": "; ".join(dict.fromkeys(builds)) or "not recorded"}


def _env_facts(h: RunHeader, workers: list[WorkerInfo]) -> dict[str, str]:
    env, cpu = h.environment, h.environment.cpu
    return {
        "CPU": f"{cpu.model} ({cpu.architecture}), {cpu.usable_cpus} usable of {cpu.logical_cpus} logical CPUs, "
               f"{cpu.mhz} MHz, {' '.join(cpu.vector_flags)}",
        "GPUs": "none",
        **_gpu_facts(env, workers),
        **({"link bandwidth": peak.link_words(env.link_bandwidth)} if env.link_bandwidth else {}),
        "memory": f"{(env.memory_bytes or 0) / 2**30:.1f} GiB",
        "OS / Python": f"{env.platform} / Python {env.python}",
        "packages": ", ".join(f"{k} {v}" for k, v in env.packages.items()),
        "opbench commit": f"{env.commit}" + (" (uncommitted changes)" if env.dirty else ""),
        "knobs (environment)": ", ".join(f"{k}={v}" for k, v in env.knobs.items()) or "none",
        "timing": ", ".join(f"{k}={v}" for k, v in (h.timing or {}).items()),
        "numerical check": str(h.check), "seed": str(h.seed),
    }


def environments(report: Analysis) -> list[dict[str, Any]]:
    """One block per machine: the facts all its runs share, then one table row per run (and framework worker) with
    its id, start time, load average and whatever else differs between the runs."""
    results = report.results
    by_machine: dict[str, list[RunHeader]] = {}
    for h in results.headers:
        by_machine.setdefault(h.environment.machine, []).append(h)
    out = []
    for machine, headers in by_machine.items():
        facts = [_env_facts(h, results.workers_of(h.run_id)) for h in headers]
        keys = list(dict.fromkeys(k for f in facts for k in f))
        shared = {k: facts[0][k] for k in keys if all(f.get(k) == facts[0].get(k) for f in facts)}
        varying = [k for k in keys if k not in shared]
        runs = []
        for h, f in zip(headers, facts, strict=True):
            load = ", ".join(f"{v:.2f}" for v in h.environment.load_average)
            workers: list[WorkerInfo | None] = [*results.workers_of(h.run_id)] or [None]
            for i, w in enumerate(workers):  # the run's own facts once, on its first worker's row
                runs.append({"run_id": h.run_id, "created": h.created if not i else "",
                             "load": load if not i else "",
                             "varying": [f.get(k, "") if not i else "" for k in varying],
                             "backend": w.backend if w else "", "device": w.device if w else "",
                             "versions": ", ".join(f"{k} {v}" for k, v in w.versions.items()) if w else "",
                             "flags": ", ".join(f"{k}={v}" for k, v in w.flags.items()) if w else ""})
        out.append({"machine": machine, "facts": shared, "varying": varying, "runs": runs,
                    "count": len(headers)})
    return out


# ------------------------------------------------------------------------------------------------ site
def write_data(a: Analysis, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"measurements": export(a.measurements), "pooled": export(a.pooled), "speedups": a.speedups,
              "variants": a.variants, "variant_effects": a.variant_effects, "pass_ratios": a.ratios,
              "pass_ratio_summary": a.ratio_summary, "networks": a.networks, "partial_networks": a.partial_networks,
              "steps": export(a.steps), "step_ranking": a.step_ranking,
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


def build_site(results: ResultSet | Iterable[str | Path], out_dir: str | Path, baseline: str = "torch",
               order: Iterable[str] = (), cases: Iterable[Case] | None = None) -> Path:
    """Write the report for ``results`` (read already, or files and folders to read) into ``out_dir``; returns the
    index.html path. ``order``: the frameworks' order in tables and legends (the backend registry's, which the CLI
    passes); ``cases``: the catalog that networks of runs which did not record theirs (results schema 1) are judged
    against (default: the bundled one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a = analysis.analyze(results if isinstance(results, ResultSet) else read_many(results), baseline, order, cases)
    frame = a.measurements
    shutil.copy(HERE / "static" / "style.css", out / "style.css")
    figs = render_figures(a, out / "figures")
    questions = summary.answers(a)
    inline = {q["figure"] for q in questions if q["figure"]}
    data_files = write_data(a, out / "data")
    status = frame["status"].where(frame["applies"], "not applicable").value_counts().to_dict() \
        if not frame.empty else {}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = env.get_template("index.html.j2").render(
        baseline=baseline, n=len(frame), status=status,
        machines=sorted(frame["machine"].unique()) if not frame.empty else [],
        backends=list(a.palette.order), l2=summary.cache_state(a),
        cases=frame["case"].nunique() if not frame.empty else 0,
        summary=questions, figure_by_key=figs, figures=[f for k, f in figs.items() if k not in inline],
        environments=environments(a), tables=case_tables(a), warnings=warning_rows(a), data_files=data_files,
        history=history.section(a.results, out / "figures", a.palette),  # reports/history.py; empty for one run
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
