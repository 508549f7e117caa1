"""Results → one tidy pandas DataFrame: one row per measurement, normalized (throughput with CIs, bandwidth,
intensity, % of peak).

Failed and unsupported measurements are rows too (their numbers are NaN and their reason is kept). Comparisons,
pooling and every figure the report states are computed from this frame in ``reports.analysis``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from reports import peak
from suite.measurement import Measurement
from suite.ops import PASSES, Conv2d, op_to_dict
from suite.results import Results

PASS_LABELS = {"forward": "forward", "backward_data": "dX", "backward_weight": "dW", "backward": "dX+dW"}
assert tuple(PASS_LABELS) == PASSES


def pass_label(kind: str, pass_: str) -> str:
    """A pass's name for an op kind: attention's whole backward is its three input gradients, not dX+dW."""
    return "dQ+dK+dV" if kind == "attention" and pass_ == "backward" else PASS_LABELS[pass_]

FIRST_LAYER_TAG = "first-layer"  # catalog tag: the network's first layer, whose input needs no gradient
CSV_DROP = ["samples"]
KERNEL_DETAILS = ("sdpa_backend", "implementation")  # details keys in which a backend names the kernel that ran
MAIN_KINDS = ("gemm", "conv2d")  # the op kinds of the main questions; every other kind gets a section of its own


def backend_order(names: Iterable[str], order: Iterable[str] = ()) -> list[str]:
    """The frameworks among ``names`` in ``order`` (the backend registry's, passed in by the CLI), then the rest
    alphabetically."""
    names, order = set(names), list(order)
    return [n for n in order if n in names] + sorted(names - set(order))


def kernel(details: dict[str, str]) -> str:
    """The kernel a backend recorded for a measurement (torch's SDPA choice, JAX's or TF's implementation); ''."""
    return next((details[k] for k in KERNEL_DETAILS if details.get(k)), "")


def machine_name(environment: dict[str, Any]) -> str:
    """Hostname and CPU model, plus the GPU models when the machine has any."""
    cpu = (environment.get("cpu") or {}).get("model") or "unknown CPU"
    gpus = sorted({g.get("name", "GPU") for g in environment.get("gpus") or []})
    return " · ".join([environment.get("hostname") or "unknown host", cpu, *gpus])


def has_tag(frame: pd.DataFrame, tag: str) -> pd.Series:
    """Boolean mask of rows carrying ``tag`` (a bool Series even when the frame is empty)."""
    return frame["tags"].map(lambda tags: tag in tags).astype(bool)


def _row(m: Measurement, machines: dict[str, str]) -> dict[str, Any]:
    op = m.op
    return {
        "run_id": m.run_id, "machine": machines.get(m.run_id, "unknown machine"), "case": m.case,
        "op": op.kind if op else None, "kind": "depthwise" if isinstance(op, Conv2d) and op.depthwise else
        (op.kind if op else None), "shape": m.shape, "network": m.network, "layer": m.layer, "source": m.source,
        "derivation": m.derivation, "count": m.count, "tags": m.tags, "backend": m.backend, "device": m.device,
        "dtype": m.dtype, "pass": m.pass_, "mode": m.mode, "layout": m.layout, "math": m.math, "threads": m.threads,
        "l2": m.l2, "options": ",".join(f"{k}={v}" for k, v in m.options), "status": m.status, "reason": m.reason,
        "flags": m.flags, "check": m.check, "check_error": m.check_error, "median_s": m.median,
        "ci_low_s": m.ci_low, "ci_high_s": m.ci_high, "rel_iqr": m.rel_iqr, "min_s": m.min, "blocks": m.blocks,
        "calls_per_block": m.calls_per_block, "first_call_s": m.first_call_s, "flops": m.flops, "bytes": m.bytes,
        "input_elements": op.input_elements if op else math.nan, "dims": op_to_dict(op) if op else None,
        "samples": np.asarray(m.per_call, dtype=float), "default_variant": m.default_variant,
        "first_layer": FIRST_LAYER_TAG in m.tags, "version": m.version, "kernel": kernel(dict(m.details)),
        # a pass the op does not have (attention's backward_data) is recorded as refused: not applicable, not a gap
        "applies": op is None or m.pass_ in op.passes, "throttle_reasons": m.throttle_reasons,
    }


def tidy(results: Results) -> pd.DataFrame:
    """One row per measurement with throughput, bandwidth and intensity; nothing dropped."""
    machines = {h["run_id"]: machine_name(h.get("environment") or {}) for h in results.headers}
    frame = pd.DataFrame([_row(Measurement.from_record(m), machines) for m in results.measurements])
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
    # Two versions of one framework are two variants, never pooled into one median (history compares them).
    versions = frame.groupby("backend")["version"].transform("nunique")
    frame["variant"] = frame["variant"].where(versions.le(1), frame["variant"] + " · " + frame["version"])
    frame["pass_label"] = [pass_label(kind, pass_) for kind, pass_ in zip(frame["kind"], frame["pass"], strict=True)]
    return frame


def add_peaks(frame: pd.DataFrame, results: Results) -> pd.DataFrame:
    """Theoretical and measured peak per row, and the achieved % of each."""
    if frame.empty:
        return frame
    env = {h["run_id"]: h.get("environment") or {} for h in results.headers}
    theo = [peak.theoretical(env.get(r.run_id, {}), r.device, r.dtype, r.math) for r in frame.itertuples()]
    frame["peak_theoretical_tflops"] = [p.tflops if p.tflops is not None else math.nan for p in theo]
    frame["peak_theoretical_gbps"] = [p.gbps if p.gbps is not None else math.nan for p in theo]
    frame["peak_theoretical_label"] = [p.label for p in theo]
    frame["peak_theoretical_basis"] = [p.basis for p in theo]
    frame["nominal_clock"] = [p.label == peak.THEORETICAL_CPU_NOMINAL for p in theo]
    machine_envs: dict[str, list[dict[str, Any]]] = {}
    for h in results.headers:
        env_ = h.get("environment") or {}
        machine_envs.setdefault(machine_name(env_), []).append(env_)
    roofs = {key: peak.bandwidth(machine_envs.get(key[0], []), key[1])
             for key in frame[["machine", "device"]].drop_duplicates().itertuples(index=False, name=None)}
    frame["bandwidth_gbps"] = [roofs[k].gbps if roofs[k].gbps is not None else math.nan
                               for k in zip(frame["machine"], frame["device"], strict=True)]
    frame["bandwidth_basis"] = [f"{roofs[k].label}: {roofs[k].basis}"
                                for k in zip(frame["machine"], frame["device"], strict=True)]
    frame = frame.merge(peak.measured(frame), on=["machine", "device", "dtype", "math"], how="left")
    frame["pct_peak_theoretical"] = 100 * frame["tflops"] / frame["peak_theoretical_tflops"]
    frame["pct_peak_measured"] = 100 * frame["tflops"] / frame["measured_tflops"]
    return frame


def measurements(results: Results) -> pd.DataFrame:
    """The tidy frame of ``results`` with its peaks."""
    return add_peaks(tidy(results), results)


def export(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as plain columns for CSV/JSON: raw samples dropped, tuples joined with ';'."""
    out = frame.drop(columns=[c for c in CSV_DROP if c in frame], errors="ignore").copy()
    for column in ("tags", "flags", "throttle_reasons"):
        if column in out:
            out[column] = out[column].map(";".join)
    if "dims" in out:
        out["dims"] = out["dims"].map(lambda d: "" if d is None else ",".join(f"{k}={v}" for k, v in d.items()))
    return out
