"""Every figure the report states, computed once from the tidy frame of ``reports.frame``.

The rules come from the results model: a verdict from ``suite.results.speed_verdict`` (the one same-speed band,
``SAME_BAND``), percentages from ``percent_of``; whole networks are judged by the catalog the runs recorded
(``ResultSet.network_sets``). Results of different configurations (machine, device, dtype, math mode, threads,
GPU cache state) are never mixed. Repeated runs of one variant (mode · layout · options) of a case and pass are
pooled: their per-call samples are joined and the median and its CI recomputed, never the fastest run picked. Each
framework enters a cross-framework comparison with its fastest variant for that case and pass (``best``); which
variants were tried and which won is reported alongside.
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

from reports import frame as tidy_frame
from reports.palette import Palette
from suite import catalog
from suite.catalog import PHASES, Case, CatalogError, NetworkLayer, NetworkSet
from suite.ops import OP_KINDS, PASSES
from suite.results import ResultSet, read_many, speed_verdict
from suite.stats import OVERHEAD_BOUND_S, median_ci, ratio_ci

CONFIG = ["machine", "device", "dtype", "math", "threads", "l2"]  # what a comparison never crosses
COMPARE_KEY = [*CONFIG, "case", "pass"]
VARIANT_KEY = [*COMPARE_KEY, "backend", "variant"]
OVERHEAD_FACTOR = 10.0  # a sweep point is compute-bound when its time is ≥ this × the sweep's fastest call
MIN_FIT_POINTS = 3
SWEEPS = {"sweep-gemm": ("m", "M = N = K", 3.0), "sweep-conv-spatial": ("h", "H = W", 2.0),
          "sweep-conv-channels": ("c", "C = K", 2.0)}  # tag → (dimension, label, FLOP exponent in it)
TRAINING_PASSES = ("forward", "backward_data", "backward_weight")  # a training step's parts: forward, dX, dW


def verdict(low: float, high: float, above: str = "faster", below: str = "slower") -> str:
    """``speed_verdict`` of a ratio's CI in words: ``above`` when it lies wholly above 1 + SAME_BAND, ``below`` when
    wholly below 1 - SAME_BAND, else 'same' (or 'n/a' without a CI). For a speedup time(base) / time(framework)
    above is faster; for a time ratio time(a) / time(b), a is slower."""
    found = speed_verdict(low, high)
    return {"higher": above, "lower": below}.get(found, found)


def geomean_ci(values: Iterable[float], seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean with a 95% bootstrap CI over the values (cases); NaN CI for fewer than 3 values."""
    logs = np.log(np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=float))
    if not len(logs):
        return math.nan, math.nan, math.nan
    point = float(np.exp(logs.mean()))
    if len(logs) < 3:
        return point, math.nan, math.nan
    if np.ptp(logs) == 0:
        return point, point, point
    ci = sps.bootstrap((logs,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                       rng=np.random.default_rng(seed)).confidence_interval
    return point, float(np.exp(ci.low)), float(np.exp(ci.high))


# ------------------------------------------------------------------------------------------------ pooling
def pool(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration × case × pass × framework × variant over the successful measurements: the runs'
    per-call samples joined, median and 95% order-statistic CI recomputed, ``runs`` how many were pooled."""
    if frame.empty:
        return frame.assign(runs=pd.Series(dtype=int), run_ids=pd.Series(dtype=object))
    ok = frame[frame["status"].eq("ok") & frame["median_s"].gt(0)]
    rows = []
    for _, group in ok.groupby(VARIANT_KEY, dropna=False, sort=False):
        row = group.iloc[0].to_dict()
        row["runs"] = group["run_id"].nunique()
        row["run_ids"] = tuple(group["run_id"].unique())
        if len(group) > 1:
            samples = np.concatenate(group["samples"].to_list())
            low, high = median_ci(samples)
            row.update(samples=samples, median_s=float(np.median(samples)), ci_low_s=low, ci_high_s=high,
                       min_s=float(samples.min()), first_call_s=float(group["first_call_s"].median()),
                       flags=tuple(dict.fromkeys(f for flags in group["flags"] for f in flags)))
        rows.append(row)
    pooled = pd.DataFrame(rows, columns=[*frame.columns, "runs", "run_ids"])
    if pooled.empty:
        return pooled
    joined = pooled["runs"].gt(1)  # pooled samples have their own median, hence their own rates
    for column, value in (("tflops", pooled["flops"] / pooled["median_s"] / 1e12),
                          ("tflops_low", pooled["flops"] / pooled["ci_high_s"] / 1e12),
                          ("tflops_high", pooled["flops"] / pooled["ci_low_s"] / 1e12),
                          ("gbps", pooled["bytes"] / pooled["median_s"] / 1e9)):
        pooled[column] = pooled[column].where(~joined, value)
    pooled["pct_peak_theoretical"] = tidy_frame.percent(pooled["tflops"], pooled["peak_theoretical_tflops"])
    pooled["pct_peak_measured"] = tidy_frame.percent(pooled["tflops"], pooled["measured_tflops"])
    fastest = pooled.groupby([*COMPARE_KEY, "backend"], dropna=False)["median_s"].idxmin()
    pooled["best"] = pooled.index.isin(fastest.to_numpy())
    return pooled


def add_speedups(pooled: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Speedup of each framework's best variant over the baseline's: time(baseline) / time(framework), with a
    bootstrap CI of the ratio of medians and its verdict."""
    pooled = pooled.copy()
    for name in ("speedup", "speedup_low", "speedup_high"):
        pooled[name] = math.nan
    pooled["speedup_verdict"] = "n/a"
    if pooled.empty:
        return pooled
    reference = pooled["best"] & pooled["backend"].eq(baseline)
    base = pooled[reference].set_index(COMPARE_KEY)["samples"]
    pooled.loc[reference, ["speedup", "speedup_low", "speedup_high", "speedup_verdict"]] = [1.0, 1.0, 1.0, "baseline"]
    for index, row in pooled[pooled["best"] & ~reference].iterrows():
        key = tuple(row[k] for k in COMPARE_KEY)
        if key not in base.index:
            continue
        point, low, high = ratio_ci(base.loc[key], row["samples"])
        pooled.loc[index, ["speedup", "speedup_low", "speedup_high", "speedup_verdict"]] = \
            [point, low, high, verdict(low, high)]
    return pooled


# ------------------------------------------------------------------------------------------------ who is fastest
def speedup_summary(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, pass, op kind and framework: geomean speedup over the baseline (95% bootstrap CI over
    cases), the cases compared and the cases where the framework is fastest of all."""
    columns = [*CONFIG, "pass", "kind", "backend", "geomean", "low", "high", "cases", "wins"]
    best = pooled[pooled["best"]] if not pooled.empty else pooled
    if best.empty:
        return pd.DataFrame(columns=columns)
    best = best[best.groupby(COMPARE_KEY, dropna=False)["backend"].transform("nunique") >= 2]
    by = [*CONFIG, "pass", "kind", "backend"]
    winners = best.loc[best.groupby(COMPARE_KEY, dropna=False)["median_s"].idxmin()]
    wins = winners.groupby(by, dropna=False).size()
    rows = []
    for key, group in best.groupby(by, dropna=False, sort=False):
        point, low, high = geomean_ci(group["speedup"])
        rows.append({**dict(zip(by, key, strict=True)), "geomean": point, "low": low, "high": high,
                     "cases": group["case"].nunique(), "wins": int(wins.get(key, 0))})
    return pd.DataFrame(rows, columns=columns)


def variants(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, framework and variant: case×pass measurements tried, how many it won within its
    framework, whether it is the framework's default (recorded at run time; None when unknown)."""
    columns = [*CONFIG, "backend", "variant", "default", "tried", "won"]
    if pooled.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in pooled.groupby([*CONFIG, "backend", "variant"], dropna=False, sort=True):
        defaults = set(group["default_variant"].dropna())
        rows.append({**dict(zip([*CONFIG, "backend", "variant"], key, strict=True)),
                     "default": defaults.pop() if len(defaults) == 1 else None, "tried": len(group),
                     "won": int(group["best"].sum())})
    return pd.DataFrame(rows, columns=columns)


def variant_effects(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, framework, non-default variant and pass: geomean of time(variant) / time(default variant)
    over the cases both ran (below 1: the variant is faster), with its bootstrap CI."""
    columns = [*CONFIG, "backend", "variant", "pass", "geomean", "low", "high", "cases"]
    known = pooled[pooled["default_variant"].notna()] if not pooled.empty else pooled
    if known.empty:
        return pd.DataFrame(columns=columns)
    is_default = known["default_variant"].astype(bool)
    default = known[is_default].set_index([*COMPARE_KEY, "backend"])["median_s"]
    rows = []
    for key, group in known[~is_default].groupby([*CONFIG, "backend", "variant", "pass"], dropna=False):
        pairs = group.set_index([*COMPARE_KEY, "backend"])["median_s"].to_frame("variant").join(
            default.rename("default"), how="inner")
        if pairs.empty:
            continue
        point, low, high = geomean_ci(pairs["variant"] / pairs["default"])
        rows.append({**dict(zip([*CONFIG, "backend", "variant", "pass"], key, strict=True)), "geomean": point,
                     "low": low, "high": high, "cases": len(pairs)})
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ backward/forward
def pass_ratios(pooled: pd.DataFrame) -> pd.DataFrame:
    """time(backward pass) / time(forward) per case and framework variant (bootstrap CI), with the FLOP ratio of
    the two passes from ``suite.ops``; ``best`` marks the variant fastest at the forward pass."""
    columns = [*CONFIG, "case", "backend", "variant", "kind", "which", "ratio", "ratio_low", "ratio_high",
               "flop_ratio", "best"]
    rows = []
    key = [*CONFIG, "case", "backend", "variant"]
    for values, group in (pooled.groupby(key, dropna=False, sort=False) if not pooled.empty else []):
        by_pass = group.set_index("pass")
        if "forward" not in by_pass.index:
            continue
        forward = by_pass.loc["forward"]
        op = forward["spec"]
        for which in PASSES[1:]:
            if which in by_pass.index:
                point, low, high = ratio_ci(by_pass.loc[which, "samples"], forward["samples"])
                rows.append({**dict(zip(key, values, strict=True)), "kind": forward["kind"], "which": which,
                             "ratio": point, "ratio_low": low, "ratio_high": high,
                             "flop_ratio": op.flops(which) / op.flops("forward"), "best": bool(forward["best"])})
    return pd.DataFrame(rows, columns=columns)


def ratio_summary(ratios: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Geomean backward/forward time ratio (95% bootstrap CI over cases) per configuration, pass and framework (and
    the columns ``by``, e.g. the op kind)."""
    keys = [*CONFIG, *by, "which", "backend"]
    columns = [*keys, "geomean", "low", "high", "flop_ratio", "cases"]
    best = ratios[ratios["best"]] if not ratios.empty else ratios
    rows = []
    for key, group in (best.groupby(keys, dropna=False) if not best.empty else []):
        point, low, high = geomean_ci(group["ratio"])
        rows.append({**dict(zip(keys, key, strict=True)), "geomean": point, "low": low,
                     "high": high, "flop_ratio": float(group["flop_ratio"].median()),
                     "cases": group["case"].nunique()})
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ other op kinds
def other_kinds(frame: pd.DataFrame) -> list[str]:
    """The op kinds in the results beyond GEMM and conv (batched GEMM, attention, recurrent layers, …; every kind
    not ``OpKind.main``), each of which gets a section of its own, in the op registry's order. A stateful kind (a
    whole model, whose passes are inference, forward+backward and the training step) is answered by the training
    step section instead: the per-kind "backward against forward" wording does not fit it."""
    present = set(frame["op"].dropna()) if not frame.empty else set()
    return [kind for kind, cls in OP_KINDS.items() if kind in present and not cls.main and not cls.stateful]


def kind_throughput(pooled: pd.DataFrame, kinds: Iterable[str]) -> pd.DataFrame:
    """Per configuration, op kind (of ``kinds``), pass and framework, over the cases of its fastest variants: the
    geometric mean of achieved TFLOP/s with a 95% bootstrap CI over cases, the cases, and the kernels and layouts
    the backend recorded (a framework's own layout for the kind, e.g. attention's BHLD in torch, BLHD in JAX)."""
    keys = [*CONFIG, "op", "pass", "backend"]
    columns = [*keys, "tflops", "low", "high", "cases", "kernels", "layouts"]
    best = pooled[pooled["best"] & pooled["op"].isin(list(kinds))] if not pooled.empty else pooled
    rows = []
    for key, group in (best.groupby(keys, dropna=False, sort=True) if not best.empty else []):
        point, low, high = geomean_ci(group["tflops"])
        rows.append({**dict(zip(keys, key, strict=True)), "tflops": point, "low": low, "high": high,
                     "cases": group["case"].nunique(), "kernels": sorted(set(group["kernel"]) - {""}),
                     "layouts": sorted(set(group["layout"].astype(str)))})
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ networks
def network_sets(results: ResultSet, cases: Iterable[Case] | None = None) -> tuple[tuple[NetworkSet, ...], list[str]]:
    """The network layer sets to judge completeness by: those the runs recorded with their catalog
    (``ResultSet.network_sets``). Only runs that recorded none (schema-1 files, written before runs recorded their
    catalog) are judged against ``cases`` (default: the bundled catalog), for the sets the other runs did not record,
    and a note says so. A set is never built from the layers found in the results: a network with half its layers
    measured must not get a total."""
    recorded = results.network_sets() or ()
    if all(h.networks is not None for h in results.headers):
        return tuple(recorded), []
    unrecorded = sum(h.networks is None for h in results.headers)
    runs = f"{unrecorded} of {len(results.headers)} runs" if len(results.headers) > 1 else "These results"
    if cases is None:
        try:
            cases = catalog.load_catalog().cases
        except CatalogError as exc:
            return tuple(recorded), [f"{runs} did not record the catalog they ran with, and the bundled catalog "
                                     f"could not be read ({exc}): their networks are not judged."]
        source = "the catalog bundled with this opbench"
    else:
        source = "the catalog given to the report"
    known = {s.set for s in recorded}
    fallback = tuple(s for s in catalog.network_sets(cases) if s.set not in known)
    return (*recorded, *fallback), [
        f"{runs} did not record the catalog they ran with (results schema 1): their networks are judged complete "
        f"against {source}, which may list layers those runs did not have."]


def _network_variants(rows: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """A network's layers in one variant each: one mode, and one layout · options setting for the op kinds measured
    in several (conv NCHW or channels_last, YNNPACK on or off); kinds measured in one setting (GEMM row-major, not run
    with a conv-only option) join every variant of that mode."""
    for mode, group in rows.groupby("mode", dropna=False, sort=True):
        options = group["options"].fillna("").astype(str)
        setting = group["layout"].astype(str) + options.map(lambda o: f" · {o}" if o else "")
        per_kind = setting.groupby(group["kind"]).nunique()
        varied = group["kind"].isin(per_kind[per_kind > 1].index)
        for chosen in sorted(set(setting[varied])) or [None]:
            part = group[~varied | setting.eq(chosen)]
            shown = chosen or " / ".join(sorted(set(setting)))
            yield f"{mode} · {shown}", part


def _training_passes(layer: NetworkLayer) -> dict[str, str]:
    """Step component → the pass that measures it for one layer: forward, dX (its fused backward for a weightless
    op such as attention; none for a first layer that occurs once) and dW (none without a weight)."""
    if layer.weightless:
        return {"forward": "forward", "backward_data": "backward"}
    parts = {"forward": "forward", "backward_data": "backward_data", "backward_weight": "backward_weight"}
    if layer.first_layer and layer.count == 1:
        del parts["backward_data"]
    return parts


def _weighted_sum(layers: Iterable[NetworkLayer], times: pd.DataFrame, component: str, column: str,
                  training: bool) -> float:
    """Σ over a set's layers of count × time of the pass behind a step component; dX counts the first layer once
    less (its input is the data)."""
    total = 0.0
    for layer in layers:
        passes = _training_passes(layer) if training else {"forward": "forward"}
        if component in passes:
            first = component == "backward_data" and layer.first_layer and not layer.weightless
            total += (layer.count - first) * times.loc[(layer.case, passes[component]), column]
    return float(total)


def network_rollup(pooled: pd.DataFrame, sets: Iterable[NetworkSet]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole-network totals and the partial networks apart.

    For each configuration, framework, variant and layer set (network × phase, as the catalog lists it): a training
    step is Σ count × (forward + dW) + Σ (count − first) × dX, the first layer's dX excluded once (training never
    computes the gradient of the input data), a weightless op's fused backward (attention: dQ, dK, dV) counted as
    dX; an inference, prefill or decode is Σ count × forward. A total is given only when every layer of the set was
    measured in that variant; otherwise the set is listed as partial with what is missing. Intervals sum the
    per-layer CI bounds.
    """
    info_cols = [*CONFIG, "set", "name", "network", "phase", "backend", "variant", "layers"]
    complete_cols = [*info_cols, "kinds", "time_s", "low_s", "high_s", "forward_s", "dx_s", "dw_s", "forward_share",
                     "dx_share", "dw_share", "first_layer_marked"]
    partial_cols = [*info_cols, "measured", "missing"]
    complete, partial = [], []
    sets = sorted(sets, key=lambda s: (s.set, s.network, s.phase))
    if pooled.empty or not sets:
        return pd.DataFrame(columns=complete_cols), pd.DataFrame(columns=partial_cols)
    for layer_set in sets:
        layers, training = layer_set.layers, layer_set.phase == PHASES["train"]
        cases = [layer.case for layer in layers]
        needed = {layer.case: list(_training_passes(layer).values()) if training else ["forward"] for layer in layers}
        rows = pooled[pooled["case"].isin(cases)]
        for key, group in rows.groupby([*CONFIG, "backend"], dropna=False, sort=True):
            for variant, part in _network_variants(group):
                times = part.set_index(["case", "pass"])
                have = [case for case, passes in needed.items() if all((case, p) in times.index for p in passes)]
                network, phase, set_id = layer_set.network, layer_set.phase, layer_set.set
                name = f"{network} {phase}" + (f" ({set_id})" if set_id != f"{network} · {phase}" else "")
                info = {**dict(zip([*CONFIG, "backend"], key, strict=True)), "set": set_id, "name": name,
                        "network": network, "phase": phase, "variant": variant, "layers": len(layers)}
                if len(have) < len(layers):
                    partial.append({**info, "measured": len(have), "missing": [c for c in cases if c not in have]})
                    continue
                components = TRAINING_PASSES if training else ("forward",)
                sums = {column: {p: _weighted_sum(layers, times, p, column, training) for p in components}
                        for column in ("median_s", "ci_low_s", "ci_high_s")}
                parts = sums["median_s"]
                overall = sum(parts.values())
                complete.append({**info, "kinds": ", ".join(sorted(set(part["kind"]))), "time_s": overall,
                                 "low_s": sum(sums["ci_low_s"].values()),
                                 "high_s": sum(sums["ci_high_s"].values()), "forward_s": parts["forward"],
                                 "dx_s": parts.get("backward_data", math.nan),
                                 "dw_s": parts.get("backward_weight", math.nan),
                                 "forward_share": parts["forward"] / overall,
                                 "dx_share": parts.get("backward_data", math.nan) / overall,
                                 "dw_share": parts.get("backward_weight", math.nan) / overall,
                                 "first_layer_marked": any(layer.first_layer for layer in layers)})
    return pd.DataFrame(complete, columns=complete_cols), pd.DataFrame(partial, columns=partial_cols)


# ------------------------------------------------------------------------------------------------ whole-model steps
WHOLE_TAG = "whole:"  # a whole-model case's tag naming the catalog layer set of the same network and batch
# A whole model's passes (suite.ops.pass_label names them): inference (eval mode), forward+backward, training step
INFERENCE, FORWARD_BACKWARD, STEP = "forward", "backward", "step"
STEP_COLUMNS = [*CONFIG, "set", "network", "case", "op", "backend", "variant", "best", "step_s", "step_low_s",
                "step_high_s", "step_flags", "checks_failed", "layers_status", "layers_measured", "layers_total",
                "layer_variant", "kinds", "layer_s", "layer_low_s", "layer_high_s", "remainder_s", "remainder_low_s",
                "remainder_high_s", "layer_ratio", "layer_ratio_low", "layer_ratio_high", "forward_s", "forward_flags",
                "forward_share", "forward_share_low", "forward_share_high", "forward_backward_s",
                "forward_backward_flags", "backward_update_share", "backward_update_share_low",
                "backward_update_share_high", "update_share", "update_share_low", "update_share_high",
                "samples"]  # the step's per-call times (not exported)


def whole_set(tags: Iterable[str]) -> str | None:
    """The layer set a whole-model case is the whole of (its tag ``whole:<set>``), or None."""
    return next((t.removeprefix(WHOLE_TAG) for t in tags if t.startswith(WHOLE_TAG)), None)


def _share(part: pd.Series | None, step: pd.Series) -> tuple[float, float, float]:
    """time(part) / time(step) of the same variant, with the bootstrap CI of the ratio of medians; NaN without it."""
    if part is None:
        return math.nan, math.nan, math.nan
    return ratio_ci(part["samples"], step["samples"])


def _layer_sum(networks: pd.DataFrame, partial: pd.DataFrame, layer_set: NetworkSet | None, key: tuple,
               backend: str) -> dict[str, Any]:
    """The rollup of ``layer_set`` in one configuration and framework: its fastest complete variant (as the report's
    training shares use), else how many of its layers the best partial variant has."""
    total = len(layer_set.layers) if layer_set else 0
    out: dict[str, Any] = {"layers_total": total, "layers_measured": 0, "layer_variant": "", "kinds": "",
                           "layer_s": math.nan, "layer_low_s": math.nan, "layer_high_s": math.nan}
    if layer_set is None:
        return {**out, "layers_status": "unknown set"}

    def mine(table: pd.DataFrame) -> pd.DataFrame:
        if table.empty:
            return table
        same = (table[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1)
        return table[same & table["set"].eq(layer_set.set) & table["backend"].eq(backend)]

    complete, incomplete = mine(networks), mine(partial)
    if len(complete):
        r = complete.loc[complete["time_s"].idxmin()]
        return {**out, "layers_status": "complete", "layers_measured": total, "layer_variant": r["variant"],
                "kinds": r["kinds"], "layer_s": r["time_s"], "layer_low_s": r["low_s"], "layer_high_s": r["high_s"]}
    measured = int(incomplete["measured"].max()) if len(incomplete) else 0
    return {**out, "layers_status": "incomplete", "layers_measured": measured}


def whole_steps(pooled: pd.DataFrame, networks: pd.DataFrame, partial: pd.DataFrame,
                sets: Iterable[NetworkSet]) -> pd.DataFrame:
    """Where a training step's time goes: per configuration, whole-model case (tag ``whole:<set>``), framework and
    variant with a successful training step, the step's median and 95% CI; the sum of the layers of ``<set>`` in the
    same configuration and framework (the rollup's fastest complete variant; 'incomplete' with no sum otherwise); the
    remainder step − layer sum, whose interval is [step low − layer sum high, step high − layer sum low] (it covers
    the difference whenever both intervals cover theirs; the layer sum's interval sums per-layer CI bounds); layer
    sum / step, its interval likewise from the bounds; and, from the same variant's other passes, the shares of the
    step in the forward (the inference pass, eval mode), in backward + update (1 − forward share) and in the update
    alone (1 − forward+backward / step), with bootstrap CIs of the ratios of medians. ``best`` marks each
    framework's fastest step variant."""
    tagged = pooled[pooled["tags"].map(lambda tags: whole_set(tags) is not None).astype(bool)] \
        if not pooled.empty else pooled
    if tagged.empty:
        return pd.DataFrame(columns=STEP_COLUMNS)
    by_set = {s.set: s for s in sets}
    variant_key = [*CONFIG, "case", "backend", "variant"]
    rows = []
    for values, group in tagged.groupby(variant_key, dropna=False, sort=True):
        passes = group.set_index("pass")
        if STEP not in passes.index:
            continue  # no step, no row
        step = passes.loc[STEP]
        forward = passes.loc[INFERENCE] if INFERENCE in passes.index else None
        both = passes.loc[FORWARD_BACKWARD] if FORWARD_BACKWARD in passes.index else None
        set_id = whole_set(step["tags"])
        layer_set = by_set.get(set_id)
        info = dict(zip(variant_key, values, strict=True))
        layers = _layer_sum(networks, partial, layer_set, values[:len(CONFIG)], info["backend"])
        fwd, fwd_low, fwd_high = _share(forward, step)
        fb, fb_low, fb_high = _share(both, step)
        s, s_low, s_high = step["median_s"], step["ci_low_s"], step["ci_high_s"]
        sums, sum_low, sum_high = layers["layer_s"], layers["layer_low_s"], layers["layer_high_s"]
        failed = tuple(p for p in passes.index if passes.loc[p, "check"] == "fail")
        rows.append({**info, "set": set_id, "op": step["op"],
                     "network": layer_set.network if layer_set else step["network"], "step_s": s, "step_low_s": s_low,
                     "step_high_s": s_high, "step_flags": tuple(step["flags"]), "checks_failed": failed, **layers,
                     "remainder_s": s - sums,
                     "remainder_low_s": s_low - sum_high, "remainder_high_s": s_high - sum_low,
                     "layer_ratio": sums / s, "layer_ratio_low": sum_low / s_high, "layer_ratio_high": sum_high / s_low,
                     "forward_s": forward["median_s"] if forward is not None else math.nan,
                     "forward_flags": tuple(forward["flags"]) if forward is not None else (),
                     "forward_share": fwd, "forward_share_low": fwd_low, "forward_share_high": fwd_high,
                     "forward_backward_s": both["median_s"] if both is not None else math.nan,
                     "forward_backward_flags": tuple(both["flags"]) if both is not None else (),
                     "backward_update_share": 1 - fwd, "backward_update_share_low": 1 - fwd_high,
                     "backward_update_share_high": 1 - fwd_low, "update_share": 1 - fb, "update_share_low": 1 - fb_high,
                     "update_share_high": 1 - fb_low, "samples": step["samples"]})
    steps = pd.DataFrame(rows, columns=STEP_COLUMNS)
    if len(steps):
        fastest = steps.groupby([*CONFIG, "case", "backend"], dropna=False)["step_s"].idxmin()
        steps["best"] = steps.index.isin(fastest.to_numpy())
    return steps


def step_ranking(steps: pd.DataFrame) -> pd.DataFrame:
    """Does the layer level's framework ranking hold for the whole step? Per configuration and whole-model case, each
    pair of frameworks with a complete layer sum and a step (fastest step variants): ``first`` is the one whose
    layer sum is smaller, ``layer_ratio`` time(second) / time(first) of the layer sums, ``step_ratio`` the same of
    the steps with its bootstrap CI and verdict ('slower': the second is slower at the step too, 'faster': the pair
    swaps, 'same': no clear difference at the step)."""
    columns = [*CONFIG, "case", "set", "first", "second", "layer_ratio", "step_ratio", "step_low", "step_high",
               "verdict", "swapped"]
    best = steps[steps["best"] & steps["layers_status"].eq("complete")] if not steps.empty else steps
    rows = []
    for values, group in (best.groupby([*CONFIG, "case", "set"], dropna=False, sort=True) if not best.empty else []):
        ranked = group.sort_values("layer_s").to_dict("records")
        for i, first in enumerate(ranked):
            for second in ranked[i + 1:]:
                point, low, high = ratio_ci(second["samples"], first["samples"])
                found = verdict(low, high, above="slower", below="faster")
                rows.append({**dict(zip([*CONFIG, "case", "set"], values, strict=True)), "first": first["backend"],
                             "second": second["backend"], "layer_ratio": second["layer_s"] / first["layer_s"],
                             "step_ratio": point, "step_low": low, "step_high": high, "verdict": found,
                             "swapped": found == "faster"})
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ scaling
def scaling_points(pooled: pd.DataFrame) -> pd.DataFrame:
    """Sweep points of each framework's best variants: inference = forward time, training = forward + backward
    (dX+dW, or dX + dW when only those ran). ``fitted`` is False for overhead-bound points: a time below
    OVERHEAD_FACTOR × the fastest call of that framework in the sweep (the smallest size's time bounds the per-call
    overhead, so a fitted point's overhead is at most 1/OVERHEAD_FACTOR of it), or flagged overhead_bound."""
    columns = [*CONFIG, "sweep", "dimension", "flop_slope", "backend", "phase", "size", "time_s", "low_s", "high_s",
               "fitted", "excluded_because"]
    best = pooled[pooled["best"]] if not pooled.empty else pooled
    rows = []
    for tag, (dim, label, flop_slope) in SWEEPS.items():
        swept = best[tidy_frame.has_tag(best, tag)] if not best.empty else best
        for key, group in (swept.groupby([*CONFIG, "backend"], dropna=False) if not swept.empty else []):
            by = group.assign(size=group["spec"].map(lambda op, dim=dim: getattr(op, dim))).set_index(["size", "pass"])
            for size in sorted(set(by.index.get_level_values("size"))):
                at = by.loc[size]
                phases = {"inference": ["forward"]}
                if "backward" in at.index:
                    phases["training"] = ["forward", "backward"]
                elif {"backward_data", "backward_weight"} <= set(at.index):
                    phases["training"] = ["forward", "backward_data", "backward_weight"]
                for phase, passes in phases.items():
                    if not set(passes) <= set(at.index):
                        continue
                    parts = at.loc[passes]
                    rows.append({**dict(zip([*CONFIG, "backend"], key, strict=True)), "sweep": tag, "dimension": label,
                                 "flop_slope": flop_slope, "phase": phase, "size": float(size),
                                 "time_s": float(parts["median_s"].sum()),  # a missing CI bound stays missing:
                                 "low_s": float(parts["ci_low_s"].sum(skipna=False)),
                                 "high_s": float(parts["ci_high_s"].sum(skipna=False)),
                                 "overhead_flag": "overhead_bound" in parts.loc["forward", "flags"]})
    points = pd.DataFrame(rows)
    if points.empty:
        return pd.DataFrame(columns=columns)
    floor = points.groupby([*CONFIG, "sweep", "backend", "phase"], dropna=False)["time_s"].transform("min")
    below = points["time_s"] < OVERHEAD_FACTOR * floor
    points["fitted"] = ~below & ~points["overhead_flag"]
    points["excluded_because"] = np.where(
        points["overhead_flag"], f"forward under {OVERHEAD_BOUND_S * 1e6:.0f} µs (overhead_bound)",
        np.where(below, f"under {OVERHEAD_FACTOR:.0f}× the sweep's fastest call", ""))
    return points[columns]


def scaling_fits(points: pd.DataFrame) -> pd.DataFrame:
    """Least-squares slope of log(time) on log(size) over the compute-bound points, per sweep, framework and phase
    (NaN with fewer than MIN_FIT_POINTS of them)."""
    columns = [*CONFIG, "sweep", "dimension", "flop_slope", "backend", "phase", "slope", "slope_stderr", "fitted",
               "points", "min_size", "max_size", "excluded_sizes"]
    rows = []
    key = [*CONFIG, "sweep", "dimension", "flop_slope", "backend", "phase"]
    for values, group in (points.groupby(key, dropna=False, sort=False) if not points.empty else []):
        fit_on = group[group["fitted"]]
        slope = stderr = math.nan
        if len(fit_on) >= MIN_FIT_POINTS:
            fit = sps.linregress(np.log(fit_on["size"]), np.log(fit_on["time_s"]))
            slope, stderr = float(fit.slope), float(fit.stderr)
        rows.append({**dict(zip(key, values, strict=True)), "slope": slope, "slope_stderr": stderr,
                     "fitted": len(fit_on), "points": len(group), "min_size": fit_on["size"].min(),
                     "max_size": fit_on["size"].max(),
                     "excluded_sizes": sorted(int(s) for s in group.loc[~group["fitted"], "size"])})
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ conv vs dense
def conv_vs_dense(pooled: pd.DataFrame) -> pd.DataFrame:
    """The seed question in both framings, forward pass, per framework: each seed conv against the seed dense layer
    that reads the same number of input values, and against the one whose features equal the conv's pixels (the
    question's own 1024 → 512 layer beside 32×32 images). time(conv) / time(dense) with a bootstrap CI."""
    columns = [*CONFIG, "framing", "conv", "dense", "backend", "ratio", "low", "high", "verdict", "flop_ratio"]
    fwd = pooled[pooled["best"] & pooled["pass"].eq("forward") & tidy_frame.has_tag(pooled, "seed")] \
        if not pooled.empty else pooled
    rows = []
    for key, group in (fwd.groupby(CONFIG, dropna=False) if not fwd.empty else []):
        cases = group.drop_duplicates("case").set_index("case")
        ops = {case: row["spec"] for case, row in cases.iterrows()}
        dense = [c for c, op in ops.items() if op.kind == "gemm"]
        convs = [c for c, op in ops.items() if op.kind == "conv2d"]
        for conv in convs:
            c_op = ops[conv]
            framings = {"same input values": [d for d in dense if ops[d].input_elements == c_op.input_elements],
                        "features = pixels": [d for d in dense if ops[d].m == c_op.n
                                              and ops[d].k == c_op.h * c_op.w]}
            for framing, matches in framings.items():
                for d in matches[:1]:
                    for backend, bg in group.groupby("backend"):
                        by_case = bg.set_index("case")
                        if conv in by_case.index and d in by_case.index:
                            point, low, high = ratio_ci(by_case.loc[conv, "samples"], by_case.loc[d, "samples"])
                            rows.append({**dict(zip(CONFIG, key, strict=True)), "framing": framing, "conv": conv,
                                         "dense": d, "backend": backend, "ratio": point, "low": low, "high": high,
                                         "verdict": verdict(low, high, above="slower", below="faster"),
                                         "flop_ratio": c_op.flops() / ops[d].flops()})
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ inference
SPARSE_COLUMNS = [*CONFIG, "case", "dense_case", "backend", "variant", "dense_variant", "shape", "sparsity", "ratio",
                  "low", "high", "verdict", "flop_ratio"]


def sparse_vs_dense(pooled: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Forward time of each op that names a dense counterpart (``OpKind.dense()``: a sparse GEMM's GEMM) over that
    dense op's time, per case and framework (each side its fastest variant), with a bootstrap CI of the ratio of
    medians; only a dense measurement of the same run counts (same machine, settings, backend). Also the cases
    left without one, in words."""
    fwd = pooled[pooled["best"] & pooled["pass"].eq("forward")] if not pooled.empty else pooled
    rows, unmatched = [], []
    where = fwd[[*CONFIG, "backend"]].astype(str).agg("|".join, axis=1) if not fwd.empty else pd.Series(dtype=str)
    for index, row in fwd.iterrows():
        dense = row["spec"].dense() if row["spec"] is not None else None
        if dense is None:
            continue
        same = fwd[where.eq(where[index])]
        twins = same[same["spec"].map(lambda op, dense=dense: op == dense)
                     & same["run_ids"].map(lambda runs, mine=set(row["run_ids"]): bool(mine & set(runs)))]
        if twins.empty:
            unmatched.append(f"{row['case']} ({row['backend']}, {row['dtype']})")
            continue
        twin = twins.iloc[0]
        point, low, high = ratio_ci(row["samples"], twin["samples"])
        rows.append({**{k: row[k] for k in CONFIG}, "case": row["case"], "dense_case": twin["case"],
                     "backend": row["backend"], "variant": row["variant"], "dense_variant": twin["variant"],
                     "shape": dense.describe(), "sparsity": float(getattr(row["spec"], "sparsity", math.nan)),
                     "ratio": point, "low": low, "high": high,
                     "verdict": verdict(low, high, above="slower", below="faster"),
                     "flop_ratio": row["spec"].flops() / dense.flops()})
    return pd.DataFrame(rows, columns=SPARSE_COLUMNS), unmatched


def crossovers(ratios: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, framework and dense shape measured at two sparsities or more: the crossover sparsity, the
    lowest measured one from which on the sparse kernel is faster than the dense GEMM at every higher one (its
    sparse/dense CI wholly below 1 - SAME_BAND); NaN when not reached. ``below`` is the measured sparsity under it."""
    keys = [*CONFIG, "backend", "shape"]
    columns = [*keys, "sparsities", "crossover", "below"]
    rows = []
    for key, group in (ratios.groupby(keys, dropna=False, sort=True) if not ratios.empty else []):
        group = group.sort_values("sparsity")
        if group["sparsity"].nunique() < 2:
            continue
        faster = group["verdict"].eq("faster").to_numpy()
        levels = group["sparsity"].to_numpy()
        start = len(faster)
        while start > 0 and faster[start - 1]:
            start -= 1
        rows.append({**dict(zip(keys, key, strict=True)), "sparsities": tuple(float(x) for x in levels),
                     "crossover": float(levels[start]) if start < len(levels) else math.nan,
                     "below": float(levels[start - 1]) if start > 0 else math.nan})
    return pd.DataFrame(rows, columns=columns)


INT8_PAIRS = (("int8", "fp32"), ("int8", "bf16"), ("bf16", "fp32"))  # (faster dtype, against): speedup of the first


def dtype_speedups(pooled: pd.DataFrame) -> pd.DataFrame:
    """On the cases measured in int8 (forward): time(against) / time(dtype) per case, framework and pair of
    ``INT8_PAIRS`` (int8 over fp32 and bf16, bf16 over fp32), each dtype its framework's fastest variant, with a
    bootstrap CI; the configuration without its dtype."""
    keys = [c for c in CONFIG if c != "dtype"]
    columns = [*keys, "case", "backend", "dtype", "against", "speedup", "low", "high", "verdict"]
    fwd = pooled[pooled["best"] & pooled["pass"].eq("forward")] if not pooled.empty else pooled
    rows = []
    int8_cases = set(fwd.loc[fwd["dtype"].eq("int8"), "case"]) if not fwd.empty else set()
    for key, group in (fwd[fwd["case"].isin(int8_cases)].groupby([*keys, "case", "backend"], dropna=False)
                       if int8_cases else []):
        by_dtype = group.set_index("dtype")
        for dtype, against in INT8_PAIRS:
            if dtype in by_dtype.index and against in by_dtype.index:
                point, low, high = ratio_ci(by_dtype.loc[against, "samples"], by_dtype.loc[dtype, "samples"])
                rows.append({**dict(zip([*keys, "case", "backend"], key, strict=True)), "dtype": dtype,
                             "against": against, "speedup": point, "low": low, "high": high,
                             "verdict": verdict(low, high)})
    return pd.DataFrame(rows, columns=columns)


def dtype_summary(speedups: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (without dtype), framework and pair of ``INT8_PAIRS``: the geomean speedup over cases with a
    95% bootstrap CI over cases, and the cases."""
    keys = [*[c for c in CONFIG if c != "dtype"], "backend", "dtype", "against"]
    rows = []
    for key, group in (speedups.groupby(keys, dropna=False, sort=False) if not speedups.empty else []):
        point, low, high = geomean_ci(group["speedup"])
        rows.append({**dict(zip(keys, key, strict=True)), "geomean": point, "low": low, "high": high,
                     "cases": group["case"].nunique()})
    return pd.DataFrame(rows, columns=[*keys, "geomean", "low", "high", "cases"])


# ------------------------------------------------------------------------------------------------ peaks, quality
def peaks(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per machine, device, dtype and math: the theoretical peak (label, basis, whether from a nominal clock), the
    measured peak and where it comes from, and how many measurements exceed each (with the highest %)."""
    columns = ["machine", "device", "dtype", "math", "theoretical_tflops", "theoretical_label", "theoretical_basis",
               "nominal_clock", "bandwidth_gbps", "bandwidth_basis",
               "measured_tflops", "measured_case", "measured_backend", "measured_basis",
               "measured_pct_of_theoretical", "above_theoretical", "max_pct_theoretical", "above_measured",
               "max_pct_measured"]
    rows = []
    for key, group in (pooled.groupby(["machine", "device", "dtype", "math"], dropna=False)
                       if not pooled.empty else []):
        first = group.iloc[0]
        theo, measured = first["peak_theoretical_tflops"], first.get("measured_tflops", math.nan)
        rows.append({**dict(zip(["machine", "device", "dtype", "math"], key, strict=True)),
                     "theoretical_tflops": theo, "theoretical_label": first["peak_theoretical_label"],
                     "theoretical_basis": first["peak_theoretical_basis"],
                     "nominal_clock": bool(first["nominal_clock"]), "bandwidth_gbps": first["bandwidth_gbps"],
                     "bandwidth_basis": first["bandwidth_basis"],
                     "measured_tflops": measured, "measured_case": first.get("measured_case"),
                     "measured_backend": first.get("measured_backend"), "measured_basis": first.get("measured_basis"),
                     "measured_pct_of_theoretical": 100 * measured / theo,
                     "above_theoretical": int((group["pct_peak_theoretical"] > 100).sum()),
                     "max_pct_theoretical": group["pct_peak_theoretical"].max(),
                     "above_measured": int((group["pct_peak_measured"] > 100).sum()),
                     "max_pct_measured": group["pct_peak_measured"].max()})
    return pd.DataFrame(rows, columns=columns)


def quality(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts behind 'how reliable are these numbers': flags, failed checks, measurements that did not run."""
    if frame.empty:
        return {"ok": 0, "flags": {}, "unstable_or_noisy": 0, "check_failed": 0, "not_run": {}, "not_applicable": 0}
    ok = frame[frame["status"].eq("ok")]
    refused = frame["status"].ne("ok") & frame["applies"]  # a pass the op does not have is not a gap
    flags = pd.Series([f for fl in ok["flags"] for f in fl], dtype=object).value_counts()
    return {"ok": len(ok), "flags": {str(k): int(v) for k, v in flags.items()},
            "unstable_or_noisy": int(ok["flags"].map(lambda f: bool(set(f) & {"unstable", "noisy"})).sum()),
            "check_failed": int(frame["check"].eq("fail").sum()),
            "not_run": {str(k): int(v) for k, v in frame.loc[refused, "status"].value_counts().items()},
            "not_applicable": int((~frame["applies"]).sum())}


# ------------------------------------------------------------------------------------------------ all of it
@dataclass
class Analysis:
    """Every table the report shows, computed once from the results."""

    results: ResultSet
    baseline: str
    palette: Palette  # the frameworks of these results in the backend registry's order, and their colours
    measurements: pd.DataFrame  # one row per measurement (reports.frame)
    pooled: pd.DataFrame  # one row per configuration × case × pass × framework × variant
    speedups: pd.DataFrame = field(default_factory=pd.DataFrame)
    variants: pd.DataFrame = field(default_factory=pd.DataFrame)
    variant_effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratios: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratio_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    kinds: list[str] = field(default_factory=list)  # op kinds beyond GEMM and conv, a section each
    kind_throughput: pd.DataFrame = field(default_factory=pd.DataFrame)
    kind_ratios: pd.DataFrame = field(default_factory=pd.DataFrame)
    networks: pd.DataFrame = field(default_factory=pd.DataFrame)
    partial_networks: pd.DataFrame = field(default_factory=pd.DataFrame)
    network_sets: tuple[NetworkSet, ...] = ()  # the layer sets networks are judged by
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # whole-model steps against their layer sums
    step_ranking: pd.DataFrame = field(default_factory=pd.DataFrame)
    scaling_points: pd.DataFrame = field(default_factory=pd.DataFrame)
    scaling: pd.DataFrame = field(default_factory=pd.DataFrame)
    conv_dense: pd.DataFrame = field(default_factory=pd.DataFrame)
    sparse: pd.DataFrame = field(default_factory=pd.DataFrame)  # sparse / dense time per case and framework
    sparse_unmatched: list[str] = field(default_factory=list)  # sparse cases without a dense twin in their run
    crossovers: pd.DataFrame = field(default_factory=pd.DataFrame)
    dtype_speedups: pd.DataFrame = field(default_factory=pd.DataFrame)  # int8 / bf16 / fp32 on the int8 cases
    dtype_summary: pd.DataFrame = field(default_factory=pd.DataFrame)  # their geomeans per framework
    peaks: pd.DataFrame = field(default_factory=pd.DataFrame)
    quality: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def analyze(results: ResultSet, baseline: str = "torch", order: Iterable[str] = (),
            cases: Iterable[Case] | None = None) -> Analysis:
    """Compute every table of the report from read results (``order``: the backend registry's order of
    frameworks, which the CLI passes in; ``cases``: the catalog to judge networks by for runs that did not record
    theirs, default the bundled one)."""
    frame = tidy_frame.measurements(results)
    pooled = add_speedups(pool(frame), baseline)
    ratios = pass_ratios(pooled)
    sets, notes = network_sets(results, cases)
    networks, partial = network_rollup(pooled, sets)
    steps = whole_steps(pooled, networks, partial, sets)
    points = scaling_points(pooled)
    kinds = other_kinds(frame)
    present = frame["backend"].unique() if not frame.empty else ()
    sparse, unmatched = sparse_vs_dense(pooled)
    speedups = dtype_speedups(pooled)
    return Analysis(results=results, baseline=baseline, palette=Palette.of(present, order),
                    measurements=frame, pooled=pooled,
                    speedups=speedup_summary(pooled), variants=variants(pooled),
                    variant_effects=variant_effects(pooled), ratios=ratios,
                    ratio_summary=ratio_summary(ratios[~ratios["kind"].isin(kinds)]),  # GEMM, conv; the rest apart
                    kinds=kinds, kind_throughput=kind_throughput(pooled, kinds),
                    kind_ratios=ratio_summary(ratios[ratios["kind"].isin(kinds)], by=("kind",)),
                    networks=networks, partial_networks=partial, network_sets=sets, steps=steps,
                    step_ranking=step_ranking(steps), scaling_points=points, scaling=scaling_fits(points),
                    conv_dense=conv_vs_dense(pooled), sparse=sparse, sparse_unmatched=unmatched,
                    crossovers=crossovers(sparse), dtype_speedups=speedups, dtype_summary=dtype_summary(speedups),
                    peaks=peaks(pooled), quality=quality(frame), notes=notes)


def build(paths: Iterable[str | Path], baseline: str = "torch", order: Iterable[str] = (),
          cases: Iterable[Case] | None = None) -> Analysis:
    """Read results files (through ``suite.results.read_many``) and analyze them."""
    return analyze(read_many(paths), baseline, order, cases)
