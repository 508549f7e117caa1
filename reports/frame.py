"""Results (a ``suite.results.ResultSet``) → one tidy pandas DataFrame: one row per measurement, normalized
(throughput with CIs, bandwidth, intensity, % of peak).

Every value comes from the typed model: rates from ``Measurement.tflops``/``gbps``, the variant from the
measurement's identity, percentages from ``suite.results.percent_of``, op kinds, varieties and pass names from
``suite.ops``. Failed and unsupported measurements are rows too (their numbers are NaN and their reason is kept).
Comparisons, pooling and every figure the report states are computed from this frame in ``reports.analysis``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from reports import peak
from suite.catalog import FIRST_LAYER_TAG
from suite.ops import OP_KINDS, op_to_dict, pass_label
from suite.results import Environment, Measurement, ResultSet, percent_of

# The settings of a measurement's identity that a report's configuration holds (with machine, device and dtype):
# the variant a report names within a configuration is the identity without them (mode · layout · options).
CONFIG_SETTINGS = ("math", "threads", "l2")
CSV_DROP = ["samples", "spec"]  # raw per-call samples and the typed op: in the frame, not in data/*.csv
# tuple columns of the whole-model steps table (reports.analysis.whole_steps), joined with ';' like tags and flags
TUPLE_COLUMNS = ("step_flags", "forward_flags", "forward_backward_flags", "checks_failed")
KERNEL_DETAILS = ("sdpa_backend", "implementation")  # details keys in which a backend names the kernel that ran
PROVENANCE = ("network", "layer", "source", "derivation")


def main_kinds() -> tuple[str, ...]:
    """The op kinds of the seed questions (``OpKind.main``: GEMM, conv); every other kind gets a section of its own."""
    return tuple(kind for kind, cls in OP_KINDS.items() if cls.main)


def kernel(details: dict[str, Any]) -> str:
    """The kernel a backend recorded for a measurement (torch's SDPA choice, JAX's or TF's implementation); ''."""
    return next((str(details[k]) for k in KERNEL_DETAILS if details.get(k)), "")


def has_tag(frame: pd.DataFrame, tag: str) -> pd.Series:
    """Boolean mask of rows carrying ``tag`` (a bool Series even when the frame is empty)."""
    return frame["tags"].map(lambda tags: tag in tags).astype(bool)


def _row(m: Measurement, machine: str) -> dict[str, Any]:
    op, key, stats = m.op, m.key, m.stats
    provenance = {name: None for name in PROVENANCE} | dict(m.provenance)
    ok = m.ok and m.median > 0
    return {
        "run_id": m.run_id, "machine": machine, "case": m.case, "op": op.kind if op else None,
        "kind": op.variety if op else None, "shape": m.shape, **{name: provenance[name] for name in PROVENANCE},
        "count": m.count, "tags": m.tags, "backend": key.backend, "device": key.device, "dtype": key.dtype,
        "pass": key.pass_, "mode": key.mode, "layout": key.layout, "math": key.math, "threads": key.threads,
        "l2": key.l2, "options": key.options_text, "status": m.status, "reason": m.reason, "flags": m.timing_flags,
        "check": m.check.status if m.check else None, "check_error": m.check.max_error if m.check else math.nan,
        "median_s": m.median, "ci_low_s": stats.ci_low if stats else math.nan,
        "ci_high_s": stats.ci_high if stats else math.nan, "rel_iqr": stats.rel_iqr if stats else math.nan,
        "min_s": stats.min if stats else math.nan, "blocks": stats.blocks if stats else math.nan,
        "calls_per_block": m.calls_per_block, "first_call_s": m.first_call_s, "flops": m.flops, "bytes": m.bytes,
        "input_elements": op.input_elements if op else math.nan, "spec": op,
        "samples": np.asarray(m.per_call, dtype=float), "default_variant": m.default_variant,
        "first_layer": FIRST_LAYER_TAG in m.tags, "version": m.version, "kernel": kernel(dict(m.details)),
        # a pass the op does not have (attention's backward_data), int8 where the op has none or for a backward, is
        # recorded as refused: not applicable, not a gap
        "applies": op is None or not op.refusal(key.pass_, key.dtype), "throttle_reasons": m.throttle_reasons,
        "tflops": m.tflops, "gbps": m.gbps,
        # a collective's: busbw / algbw (nccl-tests' 2(R−1)/R for an all-reduce) and its rank count; NaN otherwise
        "bus_factor": getattr(op, "bus_factor", math.nan), "ranks": getattr(op, "ranks", math.nan),
        # the rate at either end of the time's CI (the slower end first)
        "tflops_low": m.flops / stats.ci_high / 1e12 if ok and stats else math.nan,
        "tflops_high": m.flops / stats.ci_low / 1e12 if ok and stats else math.nan,
        "variant": key.across(CONFIG_SETTINGS).variant,
        "pass_label": pass_label(op.kind, key.pass_) if op else key.pass_,
    }


def tidy(results: ResultSet) -> pd.DataFrame:
    """One row per measurement with throughput, bandwidth and intensity; nothing dropped."""
    machines = results.machines()
    frame = pd.DataFrame([_row(m, machines.get(m.run_id, "unknown machine")) for m in results.measurements])
    if frame.empty:
        return frame
    frame["intensity"] = frame["flops"] / frame["bytes"]
    # Two versions of one framework are two variants, never pooled into one median (history compares them).
    versions = frame.groupby("backend")["version"].transform("nunique")
    frame["variant"] = frame["variant"].where(versions.le(1), frame["variant"] + " · " + frame["version"])
    return frame


def percent(tflops: pd.Series, peaks: pd.Series) -> list[float]:
    """``percent_of`` row by row (the measured-peak GEMM itself is exactly 100)."""
    return [percent_of(t, p) for t, p in zip(tflops, peaks, strict=True)]


def add_peaks(frame: pd.DataFrame, results: ResultSet) -> pd.DataFrame:
    """Theoretical and measured peak per row, the achieved % of each, and the link bandwidth a collective on the
    row's machine and device compares with (``peak.link``)."""
    if frame.empty:
        return frame
    envs = {h.run_id: h.environment for h in results.headers}
    theo = [peak.theoretical(envs.get(r.run_id, Environment()), r.device, r.dtype, r.math) for r in frame.itertuples()]
    frame["peak_theoretical_tflops"] = [p.tflops if p.tflops is not None else math.nan for p in theo]
    frame["peak_theoretical_gbps"] = [p.gbps if p.gbps is not None else math.nan for p in theo]
    frame["peak_theoretical_label"] = [p.label for p in theo]
    frame["peak_theoretical_basis"] = [p.basis for p in theo]
    frame["nominal_clock"] = [p.label == peak.THEORETICAL_CPU_NOMINAL for p in theo]
    machine_envs: dict[str, list[Environment]] = {}
    for h in results.headers:
        machine_envs.setdefault(h.environment.machine, []).append(h.environment)
    roofs = {key: peak.bandwidth(machine_envs.get(key[0], []), key[1])
             for key in frame[["machine", "device"]].drop_duplicates().itertuples(index=False, name=None)}
    frame["bandwidth_gbps"] = [roofs[k].gbps if roofs[k].gbps is not None else math.nan
                               for k in zip(frame["machine"], frame["device"], strict=True)]
    frame["bandwidth_basis"] = [f"{roofs[k].label}: {roofs[k].basis}"
                                for k in zip(frame["machine"], frame["device"], strict=True)]
    links = {key: peak.link([h.environment for h in results.headers if h.run_id in set(part["run_id"])], key[1])
             for key, part in frame.groupby(["machine", "device"], sort=False)}
    keys = list(zip(frame["machine"], frame["device"], strict=True))
    frame["link_gbps"] = [links[k].gbps if links[k].gbps is not None else math.nan for k in keys]
    frame["link_basis"] = [links[k].basis for k in keys]
    frame["link_words"] = [peak.link_words(links[k]) for k in keys]
    frame = frame.merge(peak.measured(frame), on=["machine", "device", "dtype", "math"], how="left")
    frame["pct_peak_theoretical"] = percent(frame["tflops"], frame["peak_theoretical_tflops"])
    frame["pct_peak_measured"] = percent(frame["tflops"], frame["measured_tflops"])
    return frame


def measurements(results: ResultSet) -> pd.DataFrame:
    """The tidy frame of ``results`` with its peaks."""
    return add_peaks(tidy(results), results)


def export(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as plain columns for CSV/JSON: raw samples and the typed op dropped (its dims written out), tuples
    joined with ';'."""
    out = frame.drop(columns=[c for c in CSV_DROP if c in frame], errors="ignore").copy()
    for column in ("tags", "flags", "throttle_reasons", *TUPLE_COLUMNS):
        if column in out:
            out[column] = out[column].map(";".join)
    if "spec" in frame:
        out.insert(list(frame.columns).index("spec"), "dims", frame["spec"].map(
            lambda op: "" if op is None else ",".join(f"{k}={v}" for k, v in op_to_dict(op).items())))
    return out
