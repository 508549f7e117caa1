"""Results → tidy pandas DataFrames, normalized: throughput with CIs, bandwidth, intensity, % of peak, speedups.

One row per measurement, failed and unsupported ones included (their numbers are NaN and their reason is kept).
Every comparison is made within a *comparison key* — machine, device, dtype, math mode, thread count, case and pass —
so results of different machines, devices or precisions are never mixed; each framework enters a comparison with its
fastest variant (mode, layout, options) for that key, marked ``best``. All variants stay in the frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from reports import peak
from suite.ops import op_from_dict
from suite.results import Results, read_many
from suite.stats import ratio_ci

BACKENDS = ("torch", "tensorflow", "jax")  # the fixed order used in every table and figure
PASSES = ("forward", "backward_data", "backward_weight", "backward")
PASS_LABELS = {"forward": "forward", "backward_data": "backward dX", "backward_weight": "backward dW",
               "backward": "backward (dX+dW)"}
COMPARE_KEY = ["machine", "device", "dtype", "math", "threads", "case", "pass"]
SAME_BAND = 0.03  # a ratio whose CI lies inside 1 ± 3% is "no difference" (methodology.md)
SWEEPS = {"sweep-gemm": ("m", "n = m = k", 3.0), "sweep-conv-spatial": ("h", "H = W", 2.0),
          "sweep-conv-channels": ("c", "C = K", 2.0)}  # tag → (dimension, label, FLOP exponent in it)
CSV_DROP = ["samples"]


def machine_name(environment: dict[str, Any]) -> str:
    """Hostname and CPU model, plus the GPU models when the machine has any."""
    cpu = (environment.get("cpu") or {}).get("model") or "unknown CPU"
    gpus = sorted({g.get("name", "GPU") for g in environment.get("gpus") or []})
    return " · ".join([environment.get("hostname") or "unknown host", cpu, *gpus])


def has_tag(frame: pd.DataFrame, tag: str) -> pd.Series:
    """Boolean mask of rows carrying ``tag`` (a bool Series even when the frame is empty)."""
    return frame["tags"].map(lambda tags: tag in tags).astype(bool)


def _float(value: Any) -> float:
    """JSON numbers, None and the strings "nan"/"inf" → float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _row(m: dict[str, Any], machines: dict[str, str]) -> dict[str, Any]:
    stats, check, prov = m.get("stats") or {}, m.get("check") or {}, m.get("provenance") or {}
    op = op_from_dict(m["dims"]) if m.get("dims") else None
    kind = "depthwise" if op is not None and op.kind == "conv2d" and op.depthwise else m.get("op")
    calls = m.get("calls_per_block") or stats.get("calls_per_block") or 1
    samples = np.asarray([_float(t) for t in m.get("block_times") or []], dtype=float) / calls
    return {
        "run_id": m.get("run_id"), "machine": machines.get(m.get("run_id"), "unknown machine"),
        "case": m["case"], "op": m.get("op"), "kind": kind, "shape": m.get("shape"),
        "network": prov.get("network"), "layer": prov.get("layer"), "source": prov.get("source"),
        "derivation": prov.get("derivation"), "count": m.get("count") or 1, "tags": tuple(m.get("tags") or ()),
        "backend": m["backend"], "device": m.get("device"), "dtype": m.get("dtype"), "pass": m.get("pass"),
        "mode": m.get("mode"), "layout": m.get("layout"), "math": m.get("math"), "threads": m.get("threads"),
        "options": ",".join(f"{k}={v}" for k, v in sorted((m.get("options") or {}).items())),
        "status": m.get("status"), "reason": m.get("reason"), "flags": tuple(stats.get("flags") or ()),
        "check": check.get("status"), "check_error": max(map(_float, (check.get("errors") or {}).values()),
                                                         default=math.nan),
        "median_s": _float(stats.get("median")), "ci_low_s": _float(stats.get("ci_low")),
        "ci_high_s": _float(stats.get("ci_high")), "rel_iqr": _float(stats.get("rel_iqr")),
        "min_s": _float(stats.get("min")), "blocks": stats.get("blocks"), "calls_per_block": calls,
        "first_call_s": _float(m.get("first_call_s")), "flops": _float(m.get("flops")),
        "bytes": _float(m.get("bytes")), "input_elements": op.input_elements if op else math.nan,
        "dims": m.get("dims"), "samples": samples,
    }


def tidy(results: Results) -> pd.DataFrame:
    """One row per measurement with throughput, bandwidth and intensity; nothing dropped."""
    machines = {h["run_id"]: machine_name(h.get("environment") or {}) for h in results.headers}
    frame = pd.DataFrame([_row(m, machines) for m in results.measurements])
    if frame.empty:
        return frame
    ok = frame["status"].eq("ok") & frame["median_s"].gt(0)
    frame["tflops"] = (frame["flops"] / frame["median_s"] / 1e12).where(ok)
    frame["tflops_low"] = (frame["flops"] / frame["ci_high_s"] / 1e12).where(ok)  # slower end of the time CI
    frame["tflops_high"] = (frame["flops"] / frame["ci_low_s"] / 1e12).where(ok)
    frame["gbps"] = (frame["bytes"] / frame["median_s"] / 1e9).where(ok)
    frame["intensity"] = frame["flops"] / frame["bytes"]
    frame["variant"] = frame["mode"].astype(str) + " · " + frame["layout"].astype(str) + \
        frame["options"].map(lambda o: f" · {o}" if o else "")
    fastest = frame[ok].groupby([*COMPARE_KEY, "backend"], dropna=False)["median_s"].idxmin()
    frame["best"] = frame.index.isin(fastest.to_numpy())
    return frame


def add_peaks(frame: pd.DataFrame, results: Results) -> pd.DataFrame:
    """Theoretical and measured peak per row, and the achieved % of each."""
    if frame.empty:
        return frame
    env = {h["run_id"]: h.get("environment") or {} for h in results.headers}
    theo = [peak.theoretical(env.get(r.run_id, {}), r.device, r.dtype, r.math) for r in frame.itertuples()]
    frame["peak_theoretical_tflops"] = [p.tflops if p.tflops is not None else math.nan for p in theo]
    frame["peak_theoretical_gbps"] = [p.gbps if p.gbps is not None else math.nan for p in theo]
    frame["peak_theoretical_basis"] = [f"{p.label}: {p.basis}" for p in theo]
    frame = frame.merge(peak.measured(frame), on=["machine", "device", "dtype", "math"], how="left")
    frame["pct_peak_theoretical"] = 100 * frame["tflops"] / frame["peak_theoretical_tflops"]
    frame["pct_peak_measured"] = 100 * frame["tflops"] / frame["measured_tflops"]
    return frame


def verdict(low: float, high: float) -> str:
    """'faster'/'slower' when the CI of a speedup excludes 1 ± 3%, else 'same' (or 'n/a' without a CI)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    if low > 1 + SAME_BAND:
        return "faster"
    if high < 1 - SAME_BAND:
        return "slower"
    return "same"


def add_speedups(frame: pd.DataFrame, baseline: str = "torch") -> pd.DataFrame:
    """Speedup of each ok row over the baseline backend's best variant: time(baseline) / time(row), bootstrap CI."""
    frame = frame.copy()
    for name in ("speedup", "speedup_low", "speedup_high"):
        frame[name] = math.nan
    frame["speedup_verdict"] = "n/a"
    if frame.empty:
        return frame
    reference = frame["best"] & frame["backend"].eq(baseline)
    base = frame[reference].set_index(COMPARE_KEY)["samples"]
    frame.loc[reference, ["speedup", "speedup_low", "speedup_high", "speedup_verdict"]] = [1.0, 1.0, 1.0, "baseline"]
    for index, row in frame[frame["status"].eq("ok") & ~reference].iterrows():
        key = tuple(row[k] for k in COMPARE_KEY)
        if key not in base.index or not len(row["samples"]):
            continue
        point, low, high = ratio_ci(base.loc[key], row["samples"])
        frame.loc[index, ["speedup", "speedup_low", "speedup_high", "speedup_verdict"]] = \
            [point, low, high, verdict(low, high)]
    return frame


def pass_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """time(backward pass) / time(forward) per case and framework variant, with bootstrap CIs."""
    variant_key = [k for k in COMPARE_KEY if k != "pass"] + ["backend", "variant", "run_id"]  # same run: a pair
    ok = frame[frame["status"].eq("ok")] if not frame.empty else frame
    rows = []
    for key, group in ok.groupby(variant_key, dropna=False) if not ok.empty else []:
        by_pass = group.set_index("pass")
        if "forward" not in by_pass.index:
            continue
        forward = by_pass.loc["forward"]
        for which in ("backward", "backward_data", "backward_weight"):
            if which not in by_pass.index:
                continue
            point, low, high = ratio_ci(by_pass.loc[which, "samples"], forward["samples"])
            flop_ratio = by_pass.loc[which, "flops"] / forward["flops"]
            rows.append({**dict(zip(variant_key, key, strict=True)), "which": which, "label": PASS_LABELS[which],
                         "ratio": point, "ratio_low": low, "ratio_high": high, "flop_ratio": flop_ratio,
                         "kind": forward["kind"], "best": bool(forward["best"])})
    return pd.DataFrame(rows)


def geomean_ci(values: Iterable[float], seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean with a 95% bootstrap CI over the values (cases); NaN CI for fewer than 3 values."""
    logs = np.log(np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=float))
    if not len(logs):
        return math.nan, math.nan, math.nan
    point = float(np.exp(logs.mean()))
    if len(logs) < 3 or np.ptp(logs) == 0:
        return point, (point if len(logs) >= 3 else math.nan), (point if len(logs) >= 3 else math.nan)
    ci = sps.bootstrap((logs,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                       rng=np.random.default_rng(seed)).confidence_interval
    return point, float(np.exp(ci.low)), float(np.exp(ci.high))


def summarize(frame: pd.DataFrame, value: str, by: list[str]) -> pd.DataFrame:
    """Geometric mean of ``value`` per group with a bootstrap CI over cases, and the number of cases."""
    if frame.empty or value not in frame:
        return pd.DataFrame(columns=[*by, "geomean", "low", "high", "cases"])
    rows = []
    for key, group in frame.dropna(subset=[value]).groupby(by, dropna=False, sort=True):
        point, low, high = geomean_ci(group[value])
        rows.append({**dict(zip(by, key, strict=True)), "geomean": point, "low": low, "high": high,
                     "cases": group["case"].nunique()})
    return pd.DataFrame(rows, columns=[*by, "geomean", "low", "high", "cases"])


def speedup_summary(frame: pd.DataFrame, by_tag: bool = False) -> pd.DataFrame:
    """Geomean speedup over the baseline per machine, device, dtype, pass, framework and op kind (or tag)."""
    best = frame[frame["best"]] if not frame.empty else frame
    group = "tag" if by_tag else "kind"
    if by_tag and not best.empty:
        best = best.explode("tags").rename(columns={"tags": "tag"})
    return summarize(best, "speedup", ["machine", "device", "dtype", "pass", group, "backend"])


def scaling_fits(frame: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of time per call against the swept size, per sweep, framework and pass (best variants)."""
    rows = []
    best = frame[frame["best"]] if not frame.empty else frame
    for tag, (dim, label, flop_exponent) in SWEEPS.items():
        swept = best.loc[has_tag(best, tag)] if not best.empty else best
        for key, group in swept.groupby(["machine", "device", "dtype", "pass", "backend"]) if len(swept) else []:
            sizes = group["dims"].map(lambda d, dim=dim: d[dim]).astype(float)
            if sizes.nunique() < 3:
                continue
            fit = sps.linregress(np.log(sizes), np.log(group["median_s"]))
            rows.append({**dict(zip(["machine", "device", "dtype", "pass", "backend"], key, strict=True)),
                         "sweep": tag, "dimension": label, "slope": fit.slope, "slope_stderr": fit.stderr,
                         "flop_slope": flop_exponent, "points": len(group), "min_size": sizes.min(),
                         "max_size": sizes.max()})
    return pd.DataFrame(rows)


def network_rollup(frame: pd.DataFrame) -> pd.DataFrame:
    """Per real network (cases tagged ``modern``): Σ time × count of inference forward and training fwd+bwd."""
    columns = ["machine", "device", "dtype", "network", "phase", "backend", "time_s", "low_s", "high_s",
               "layers", "layers_total"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    everything = frame.loc[has_tag(frame, "modern")]
    modern = everything.loc[everything["best"]]
    rows = []
    for phase, tag, passes in (("inference (forward)", "inference", ["forward"]),
                               ("training step (forward + backward)", "train", ["forward", "backward"])):
        subset = modern.loc[has_tag(modern, tag) & modern["pass"].isin(passes)]
        totals = everything.loc[has_tag(everything, tag)].groupby("network")["case"].nunique()
        for key, group in subset.groupby(["machine", "device", "dtype", "network", "backend"]):
            complete = group.groupby("case")["pass"].nunique().eq(len(passes))
            layers = group[group["case"].isin(complete[complete].index)]
            weights = layers["count"]
            rows.append({**dict(zip(["machine", "device", "dtype", "network"], key[:4], strict=True)), "phase": phase,
                         "backend": key[4], "time_s": (layers["median_s"] * weights).sum(),
                         "low_s": (layers["ci_low_s"] * weights).sum(), "high_s": (layers["ci_high_s"] * weights).sum(),
                         "layers": int(complete.sum()), "layers_total": int(totals.get(key[3], 0))})
    return pd.DataFrame(rows, columns=columns)


@dataclass
class Report:
    """Everything a report shows, computed once from the results files."""

    results: Results
    baseline: str
    measurements: pd.DataFrame
    ratios: pd.DataFrame = field(default_factory=pd.DataFrame)
    speedups_by_kind: pd.DataFrame = field(default_factory=pd.DataFrame)
    speedups_by_tag: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratio_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    scaling: pd.DataFrame = field(default_factory=pd.DataFrame)
    networks: pd.DataFrame = field(default_factory=pd.DataFrame)
    peaks: pd.DataFrame = field(default_factory=pd.DataFrame)


def build(paths: Iterable[str | Path], baseline: str = "torch") -> Report:
    """Read results files (through ``suite.results.read_many``) and compute every normalized table."""
    results = read_many(paths)
    frame = add_speedups(add_peaks(tidy(results), results), baseline)
    ratios = pass_ratios(frame) if not frame.empty else pd.DataFrame()
    best_ratios = ratios[ratios["best"]] if not ratios.empty else ratios
    return Report(
        results=results, baseline=baseline, measurements=frame, ratios=ratios,
        speedups_by_kind=speedup_summary(frame), speedups_by_tag=speedup_summary(frame, by_tag=True),
        ratio_summary=summarize(best_ratios, "ratio", ["machine", "device", "dtype", "which", "backend"]),
        scaling=scaling_fits(frame), networks=network_rollup(frame),
        peaks=peak.measured(frame) if not frame.empty else pd.DataFrame(),
    )


def export(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as plain columns for CSV/JSON: raw samples dropped, tuples joined with ';'."""
    out = frame.drop(columns=[c for c in CSV_DROP if c in frame], errors="ignore").copy()
    for column in ("tags", "flags"):
        if column in out:
            out[column] = out[column].map(";".join)
    if "dims" in out:
        out["dims"] = out["dims"].map(lambda d: "" if d is None else ",".join(f"{k}={v}" for k, v in d.items()))
    return out
