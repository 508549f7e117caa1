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

from reports import figures, history, peak
from reports.frame import BACKENDS, PASS_LABELS, SAME_BAND, Report, build, export, geomean_ci, machine_name
from suite.stats import format_seconds, ratio_ci

HERE = Path(__file__).parent
WARNING_FLAGS = {"unstable": "stopped at the time cap before the spread fell below target",
                 "noisy": "IQR/median ≥ 10%", "overhead_bound": "median below 50 µs: measures dispatch overhead",
                 "short_blocks": "a block shorter than 1 ms", "few_blocks": "too few blocks for a 95% CI"}


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
# Each summary_* function returns blocks: {"where", "headline", "tables", "notes", "missing"}. A block answers its
# question with one headline sentence computed from the data and compact tables (rows of cells, see ``_cell``).
KIND_ORDER = ("gemm", "conv2d", "depthwise")
SEED_ORDER = ("seed-dense-1024x512", "seed-dense-3072x512", "seed-conv-3x3", "seed-conv-7x7")


def _cell(text: Any, ci: str = "", num: bool = True, bold: bool = False, wrap: bool = False) -> dict[str, Any]:
    """A summary table cell: main text, an optional CI (small, grey), right-aligned when numeric; ``wrap`` lets a
    long text cell break into lines."""
    return {"text": str(text), "ci": ci, "cls": "num" if num else "wrap" if wrap else "", "bold": bold}


def _table(columns: list[str], rows: list[list[dict[str, Any]]], caption: str = "", note: str = "",
           link: dict[str, str] | None = None, stacked: bool = False) -> dict[str, Any]:
    """``stacked``: the CIs go on a line under the numbers, for wide tables."""
    return {"columns": columns, "rows": rows, "caption": caption, "note": note, "link": link,
            "cls": "summary stacked" if stacked else "summary"}


def _block(headline: str, tables: list[dict[str, Any]] | None = None, notes: list[str] | None = None,
           where: str = "", missing: bool = False) -> dict[str, Any]:
    return {"where": where, "headline": headline, "tables": tables or [], "notes": notes or [], "missing": missing}


def _ci_text(low: float, high: float) -> str:
    return f"{low:.2f}–{high:.2f}" if np.isfinite(low) and np.isfinite(high) else "no CI"


def _ordered(names: Iterable[str], order: Iterable[str] = BACKENDS) -> list[str]:
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def _groups(report: Report, frame: Any) -> Iterable[tuple[tuple[str, str, str], str, Any]]:
    """(machine, device, dtype), a title when the results hold more than one such combination, and its rows."""
    for key, group in frame.groupby(["machine", "device", "dtype"], sort=True):
        yield key, _where(report, *key).rstrip(": "), group


def _on(device: str) -> str:
    return "On this CPU" if str(device).startswith("cpu") else f"On this {device}"


def _default_variants(backend: str) -> dict[str, str] | None:
    """op kind → the backend's default variant string (first mode, first layout, no options); None if unknown."""
    from backends import backend_class

    try:
        cls = backend_class(backend)
    except (KeyError, ImportError, AttributeError):
        return None
    layouts = {"depthwise": cls.layouts.get("conv2d", ("",))[0],
               **{kind: names[0] for kind, names in cls.layouts.items()}}
    return {kind: f"{cls.modes[0]} · {layout}" for kind, layout in layouts.items()}


def variant_effects(frame: Any) -> list[dict[str, Any]]:
    """Per framework and non-default variant: geomean of time(variant) / time(default variant) over the cases
    (per pass) both ran, with the bootstrap CI of frame.geomean_ci."""
    ok = frame[frame["status"].eq("ok")]
    key = ["math", "threads", "case", "pass"]
    out = []
    for backend, bg in ok.groupby("backend", sort=False):
        defaults = _default_variants(backend)
        if defaults is None or bg["variant"].nunique() < 2:
            continue
        is_default = bg.apply(lambda r, d=defaults: r["variant"] == d.get(r["kind"]), axis=1)
        times = bg.groupby([*key, "variant"], dropna=False)["median_s"].min()
        default = bg[is_default].groupby(key, dropna=False)["median_s"].min()
        for variant in sorted(set(bg.loc[~is_default, "variant"])):
            tuned = times.xs(variant, level="variant")
            both = tuned.to_frame("tuned").join(default.rename("default"), how="inner")
            if both.empty:
                continue
            per_pass = {}
            for pass_, pg in both.groupby(level="pass"):
                per_pass[pass_] = (*geomean_ci(pg["tuned"] / pg["default"]), len(pg))
            defaults_used = sorted(set(bg.loc[is_default & bg["case"].isin(both.index.get_level_values("case")),
                                              "variant"]))
            out.append({"backend": backend, "variant": variant, "default": " / ".join(defaults_used),
                        "passes": per_pass})
    return out


def summary_speed(report: Report) -> list[dict[str, Any]]:
    """Which framework is fastest where, by how much: geomean speedup per op kind × pass with CIs and case wins."""
    frame, base = report.measurements, report.baseline
    ok = frame[frame["best"] & frame["status"].eq("ok")] if not frame.empty else frame
    if ok.empty:
        return [_block("No successful measurement in these results: nothing to compare.", missing=True)]
    if ok["backend"].nunique() < 2:
        return [_block(f"Only {', '.join(sorted(ok['backend'].unique()))} ran successfully here, so these results "
                       "cannot say which framework is fastest; run more backends (--backend torch,tensorflow,jax) on "
                       "the same machine.", missing=True)]
    kinds = report.speedups_by_kind
    blocks = []
    for (machine, device, dtype), where, group in _groups(report, ok):
        backends = _ordered(group["backend"])
        sel = kinds[(kinds["machine"] == machine) & (kinds["device"] == device) & (kinds["dtype"] == dtype)]
        speed = {(r.kind, r["pass"], r.backend): r for _, r in sel.iterrows()} if not sel.empty else {}
        wins_total: dict[str, int] = dict.fromkeys(backends, 0)
        total, rows = 0, []
        for kind in _ordered(group["kind"], KIND_ORDER):
            for pass_ in [p for p in PASS_LABELS if p in set(group["pass"])]:
                cg = group[(group["kind"] == kind) & (group["pass"] == pass_)]
                cg = cg[cg.groupby("case")["backend"].transform("nunique") >= 2]
                if cg.empty:
                    continue
                wins = cg.loc[cg.groupby("case")["median_s"].idxmin(), "backend"].value_counts()
                n = cg["case"].nunique()
                total += n
                values = {b: speed[(kind, pass_, b)]["geomean"] for b in backends if (kind, pass_, b) in speed}
                top, most = max(values, key=values.get, default=None), wins.max()
                row = [_cell(kind, num=False), _cell(PASS_LABELS[pass_], num=False), _cell(n)]
                for b in backends:
                    wins_total[b] += int(wins.get(b, 0))
                    s = speed.get((kind, pass_, b))
                    if s is None:
                        row.append(_cell("–"))
                    elif b == base:
                        row.append(_cell("1 (baseline)", bold=b == top))
                    else:
                        row.append(_cell(f"{s['geomean']:.2f}×", _ci_text(s["low"], s["high"]), bold=b == top))
                    row.append(_cell(int(wins.get(b, 0)), bold=int(wins.get(b, 0)) == most))
                rows.append(row)
        order = sorted(backends, key=lambda b: -wins_total[b])
        head = (f"{_on(device)}, {order[0]} is fastest in {wins_total[order[0]]} of {total} case×pass comparisons ("
                + ", ".join(f"{b} {wins_total[b]}" for b in order[1:]) + ")")
        fwd = []
        for b in backends:
            if b == base:
                continue
            parts = [f"{speed[(k, 'forward', b)]['geomean']:.2f}× on {label}"
                     for k, label in (("gemm", "GEMMs"), ("conv2d", "convs")) if (k, "forward", b) in speed]
            if parts:
                parts[0] = parts[0].replace("× on", f"× {base}'s speed on", 1)
                fwd.append(f"{b} runs at " + " and ".join(parts))
        if fwd:
            head += f"; in the forward pass {'; '.join(fwd)} (geomeans over cases; CIs in the table)"
        columns = ["op", "pass", "cases"] + [c for b in backends for c in
                                             (f"{b} speedup (95% CI)", f"{b} wins")]
        tables = [_table(columns, rows, caption=f"Speedup over {base}: geometric mean over cases of time({base}) / "
                                                "time(framework), 95% bootstrap CI over cases; wins: cases where "
                                                "the framework is fastest. Bold: best per row.")]
        verdicts = group[group["backend"] != base].groupby("backend")["speedup_verdict"].value_counts()
        notes = []
        if len(verdicts):
            notes.append(f"Per case against {base} (95% CI outside 1 ± 3%): " + "; ".join(
                f"{b} " + ", ".join(f"{verdicts[b].get(v, 0)} {v}" for v in ("faster", "slower", "same"))
                for b in _ordered(verdicts.index.get_level_values(0))) + ".")
        used = [[_cell(b, num=False), _cell(", ".join(f"{v} ({n})" for v, n in vg["variant"].value_counts().items()),
                                             num=False)]
                for b in backends for vg in [group[group["backend"] == b]]]
        tables.append(_table(["framework", "variant behind its numbers (case×pass comparisons)"], used,
                             caption="Each framework enters every comparison with its fastest variant (mode · "
                                     "layout · options) for that case and pass."))
        everything = frame[(frame["machine"] == machine) & (frame["device"] == device) & (frame["dtype"] == dtype)]
        effects = variant_effects(everything)
        if effects:
            passes = [p for p in PASS_LABELS if any(p in e["passes"] for e in effects)]
            eff_rows = []
            for e in effects:
                row = [_cell(e["backend"], num=False), _cell(f"{e['variant']} vs {e['default']}", num=False)]
                for p in passes:
                    if p in e["passes"]:
                        point, low, high, n = e["passes"][p]
                        row.append(_cell(f"{point:.2f}×", f"{_ci_text(low, high)}, {n} cases"))
                    else:
                        row.append(_cell("–"))
                eff_rows.append(row)
            tables.append(_table(["framework", "tuned vs default variant"] + [PASS_LABELS[p] for p in passes],
                                 eff_rows, caption="Variant effect: geomean time ratio tuned/default over the cases "
                                                   "both ran (below 1: the tuned variant is faster), 95% CI."))
        blocks.append(_block(head + ".", tables, notes, where))
    return blocks


def summary_backward(report: Report) -> list[dict[str, Any]]:
    """Backward time over forward time per framework, against the FLOP ratio (2× for dX+dW, 1× for each)."""
    s = report.ratio_summary
    if s.empty:
        return [_block("No case has both a forward and a backward measurement of the same framework variant: the "
                       "backward/forward question cannot be answered from these results.", missing=True)]
    flop = {"backward": 2.0, "backward_data": 1.0, "backward_weight": 1.0}
    blocks = []
    for _, where, group in _groups(report, s):
        whiches = [w for w in flop if w in set(group["which"])]
        cells = {(r.backend, r.which): r for r in group.itertuples()}
        backends = _ordered(group["backend"])
        best = {w: min((cells[(b, w)].geomean for b in backends if (b, w) in cells), default=None) for w in whiches}
        rows = []
        for b in backends:
            n = sorted({cells[(b, w)].cases for w in whiches if (b, w) in cells})
            row = [_cell(b, num=False), _cell("/".join(map(str, n)))]
            for w in whiches:
                r = cells.get((b, w))
                if r is None:
                    row += [_cell("–"), _cell("–")]
                    continue
                row += [_cell(f"{r.geomean:.2f}×", _ci_text(r.low, r.high), bold=r.geomean == best[w]),
                        _cell(f"{100 * flop[w] / r.geomean:.0f}%")]
            rows.append(row)
        short = {"backward": "dX+dW", "backward_data": "dX", "backward_weight": "dW"}
        columns = ["framework", "cases"] + [c for w in whiches for c in
                                            (f"{short[w]} / forward time (FLOP ratio {flop[w]:.0f})",
                                             f"{short[w]}: % of forward FLOP/s")]
        if "backward" in whiches:
            full = [(b, cells[(b, "backward")].geomean) for b in backends if (b, "backward") in cells]
            full.sort(key=lambda x: x[1])
            span = f"{full[0][1]:.2f}×" if len(full) == 1 else f"{full[0][1]:.2f}–{full[-1][1]:.2f}×"
            head = (f"Backward (dX+dW) takes {span} the forward time against a FLOP ratio of 2×, i.e. "
                    + ", ".join(f"{b} {100 * 2 / g:.0f}%" for b, g in full) + " of the forward's FLOP/s "
                    "(geomeans over cases).")
        else:
            head = "Only single backward passes (dX or dW) were measured; see the table."
        blocks.append(_block(head, [_table(columns, rows, caption="Geometric mean over cases of time(backward pass) "
                                           "/ time(forward), same case and framework variant, 95% bootstrap CI. FLOP "
                                           "ratio to forward: dX+dW 2×, dX 1×, dW 1×, so a time ratio equal to it "
                                           "means equal FLOP/s. Bold: lowest ratio.")], where=where))
    return blocks


def summary_conv(report: Report) -> list[dict[str, Any]]:
    """The seed question: conv vs dense layer of the same input size, per framework, with time ratio CIs."""
    frame = report.measurements
    fwd = frame[frame["best"] & frame["status"].eq("ok") & frame["pass"].eq("forward")] if not frame.empty else frame
    seed = fwd[fwd["tags"].map(lambda t: "seed" in t).astype(bool)] if not fwd.empty else fwd
    if seed.empty:
        return [_block("These results contain no seed cases (tag seed: seed-dense-3072x512, seed-conv-3x3, ...), so "
                       "they cannot answer the seed question directly; run `python -m suite run --catalog seed`.",
                       missing=True)]
    blocks = []
    for _, where, group in _groups(report, seed):
        backends = _ordered(group["backend"])
        cases = [c for c in SEED_ORDER if c in set(group["case"])] + sorted(set(group["case"]) - set(SEED_ORDER))
        rows = []
        for case in cases:
            cg = group[group["case"] == case].set_index("backend")
            first = cg.iloc[0]
            fastest = cg["median_s"].min()
            row = [_cell(case, num=False), _cell(first["shape"], num=False),
                   _cell(f"{int(first['input_elements']):,}"), _cell(f"{first['flops']:,.0f}"),
                   _cell(f"{first['flops'] / first['input_elements']:,.0f}")]
            for b in backends:
                if b not in cg.index:
                    row += [_cell("–"), _cell("–")]
                    continue
                r = cg.loc[b]
                ci = f"{format_seconds(r['ci_low_s'])}–{format_seconds(r['ci_high_s'])}"
                row += [_cell(format_seconds(r["median_s"]), ci, bold=r["median_s"] == fastest),
                        _cell(f"{r['tflops'] * 1e3:.3g}")]
            rows.append(row)
        columns = ["case", "shape", "input values", "FLOPs", "FLOPs per input value"] + \
            [c for b in backends for c in (f"{b} forward time (95% CI)", f"{b} GFLOP/s")]
        table = _table(columns, rows, stacked=True,
                       caption="Forward pass of the seed cases, each framework's fastest variant; 95% CI of the "
                               "median under each time. Bold: fastest framework per case.")
        blocks.append(_block(_conv_headline(group, backends), [table], _conv_explanation(group, backends), where))
    return blocks


SAME_VALUES, SAME_PIXELS = "seed-dense-3072x512", "seed-dense-1024x512"


def _conv_pairs(group: Any, backends: list[str], dense_name: str = SAME_VALUES
                ) -> list[tuple[Any, Any, dict[str, tuple[float, float, float]]]]:
    """(dense row, conv row, backend → time ratio conv/dense with CI) for the seed conv cases against a dense layer:
    by default the one reading the same 3,072 input values; SAME_PIXELS is the seed question's own 1024 → 512 layer,
    whose 1,024 features match the convs' 32×32 = 1,024 pixels."""
    out = []
    for conv_name in ("seed-conv-3x3", "seed-conv-7x7"):
        ratios = {}
        d = c = None
        for b in backends:
            rows = group[group["backend"] == b].set_index("case")
            if dense_name in rows.index and conv_name in rows.index:
                d, c = rows.loc[dense_name], rows.loc[conv_name]
                ratios[b] = ratio_ci(c["samples"], d["samples"])
        if ratios:
            out.append((d, c, ratios))
    return out


def _side(ratio: tuple[float, float, float]) -> str:
    _, low, high = ratio
    if np.isfinite(high) and high < 1 - SAME_BAND:
        return "faster than"
    if np.isfinite(low) and low > 1 + SAME_BAND:
        return "slower than"
    return "as fast as"


def _conv_headline(group: Any, backends: list[str]) -> str:
    framings = [("Against the seed question's dense layer 1024 → 512 (1,024 features, as the convs' 32×32 = 1,024 "
                 "pixels)", _conv_pairs(group, backends, SAME_PIXELS)),
                ("against the dense layer reading the same 3,072 input values",
                 _conv_pairs(group, backends, SAME_VALUES))]
    framings = [(label, pairs) for label, pairs in framings if pairs]
    if not framings:
        return ("The seed cases here lack a conv and a dense seed layer measured by the same framework, so "
                "the times cannot be compared directly; see the table.")
    return "; ".join(f"{label}: {_conv_sentence(pairs)}" for label, pairs in framings) + "."


def _conv_sentence(pairs: list[tuple[Any, Any, dict[str, tuple[float, float, float]]]]) -> str:
    parts = []
    for d, c, ratios in pairs:
        sides: dict[str, list[str]] = {}
        for b, r in ratios.items():
            sides.setdefault(_side(r), []).append(f"{b} {r[0]:.2f}×")
        flops = c["flops"] / d["flops"]
        points = [r[0] for r in ratios.values()]
        span = f"{points[0]:.2f}×" if len(points) == 1 else f"{min(points):.2f}–{max(points):.2f}×"
        if len(sides) == 1:
            side, names = next(iter(sides.items()))
            who = "every framework" if len(names) > 1 else names[0].split()[0]
            parts.append(f"{c.name} ({flops:.1f}× the FLOPs) is {side} {d.name} with {who} ({span} its time)")
        else:
            parts.append(f"{c.name} ({flops:.1f}× the FLOPs) takes {span} the time of {d.name} (" + "; ".join(
                f"{side.split()[0] if side != 'as fast as' else 'as fast'} with "
                f"{', '.join(n.split()[0] for n in names)}" for side, names in sides.items()) + ")")
    return ", ".join(parts)


def _conv_explanation(group: Any, backends: list[str]) -> list[str]:
    """2–3 sentences from the numbers: FLOPs per input value, im2col reduction depth, the dense layer's bytes."""
    from suite.ops import op_from_dict

    pairs = _conv_pairs(group, backends)
    if not pairs:
        return []
    d = pairs[0][0]
    convs = [(c, op_from_dict(c["dims"])) for _, c, _ in pairs]
    per_input = "; ".join(f"{c.name}: {c['flops'] / c['input_elements']:,.0f} = 2·{op.k}·{op.r}·{op.s}"
                          for c, op in convs)
    flops7 = convs[-1][0]["flops"] / d["flops"]
    first = (f"A conv does about 2·K·R·S FLOPs per input value ({per_input}) against 2·N_out = "
             f"{d['flops'] / d['input_elements']:,.0f} for {d.name}, so for the same "
             f"{int(d['input_elements']):,} input values {convs[-1][0].name} does {flops7:.1f}× its FLOPs.")
    depths = " and ".join(str(op.equivalent_gemm().k) for _, op in convs)
    cs = sorted({op.c for _, op in convs})
    dense = op_from_dict(d["dims"])
    gemv = "a memory-bound GEMV at batch 1" if dense.m == 1 else f"a GEMM with M = {dense.m}"
    second = (f"As im2col GEMMs the convs have a reduction depth of only C·R·S = {depths} (C = "
              f"{', '.join(map(str, cs))} input channels), which fills vector units poorly; the dense layer is "
              f"{gemv} that reads at least {d['bytes'] / 1e6:.1f} MB per call, mostly weights "
              f"({d['flops'] / d['bytes']:.2f} FLOP/byte).")
    slower = sum(_side(r) == "slower than" for _, _, ratios in pairs for r in ratios.values())
    count = sum(len(ratios) for _, _, ratios in pairs)
    if slower == 0:
        third = (f"On this machine no conv is slower than {d.name}, even with {flops7:.1f}× the FLOPs: the dense "
                 "layer's weight reads cost more than the convs' extra FLOPs and short reductions.")
    elif slower == count:
        third = ("On this machine every conv is slower: the convs' extra FLOPs and short reductions cost more than "
                 "the dense layer's weight reads.")
    else:
        third = (f"On this machine the answer is mixed: the conv is slower in {slower} of {count} framework × conv "
                 "comparisons, where its extra FLOPs and short reduction cost more than the dense layer's weight "
                 "reads; in the others the weight reads cost more.")
    return [f"{first} {second} {third} Time ratios are conv/dense forward medians; faster/slower means the 95% CI of "
            f"the ratio excludes 1 ± {100 * SAME_BAND:.0f}%."]


def summary_scaling(report: Report) -> list[dict[str, Any]]:
    fits = report.scaling
    fwd = fits[fits["pass"] == "forward"] if not fits.empty else fits
    if fwd.empty:
        return [_block("No scaling sweep in these results (tags sweep-gemm, sweep-conv-spatial, sweep-conv-channels "
                       "with at least 3 sizes): run `python -m suite run --catalog sweeps` to measure how cost grows "
                       "with size.", missing=True)]
    blocks = []
    for _, where, group in _groups(report, fwd):
        rows, heads = [], []
        for sweep, sg in group.groupby("sweep", sort=False):
            sg = sg.set_index("backend").loc[_ordered(sg["backend"])].reset_index()
            lo, hi, exp = sg["slope"].min(), sg["slope"].max(), sg["flop_slope"].iloc[0]
            label = sg["dimension"].iloc[0]
            span = f"size^{lo:.2f}" if len(sg) == 1 else f"size^{lo:.2f} to size^{hi:.2f}"
            heads.append(f"{sweep} ({label} = {sg['min_size'].min():.0f}…{sg['max_size'].max():.0f}): time ∝ "
                         f"{span} against FLOPs ∝ size^{exp:.0f}")
            for r in sg.itertuples():
                reading = ("below the FLOP exponent" if r.slope < r.flop_slope - 0.3 else
                           "above the FLOP exponent" if r.slope > r.flop_slope + 0.3 else "≈ the FLOP exponent")
                rows.append([_cell(r.sweep, num=False), _cell(r.backend, num=False),
                             _cell(f"{r.dimension} = {r.min_size:.0f}…{r.max_size:.0f}", num=False),
                             _cell(r.points), _cell(f"{r.slope:.2f}", f"± {r.slope_stderr:.2f}"),
                             _cell(f"{r.flop_slope:.0f}"), _cell(reading, num=False)])
        below = (group["slope"] < group["flop_slope"] - 0.3).sum()
        above = (group["slope"] > group["flop_slope"] + 0.3).sum()
        interp = (f" {below} of {len(group)} fits grow more slowly than the FLOPs: at the small sizes time is "
                  "dominated by per-call overhead (or throughput still rises with size), so FLOP/s improve with size."
                  if below else " Time grows with the FLOPs: throughput is flat across these sizes.")
        if above:
            interp += (f" {above} grow faster than the FLOPs: throughput falls with size (cache capacity) or the fit "
                       "rests on noisy points; check its ± standard error.")
        table = _table(["sweep", "framework", "sizes", "points", "log-log slope of time (± s.e.)", "FLOP exponent",
                        "reading"], rows, caption="Forward pass; least-squares fit of log(time) on log(size) over the "
                                              "swept sizes, each framework's fastest variant.")
        blocks.append(_block("; ".join(heads) + "." + interp, [table], where=where))
    return blocks


def summary_quality(report: Report) -> list[dict[str, Any]]:
    """How far the numbers can be trusted: flagged, failed and check-failed measurements, load at start."""
    frame = report.measurements
    if frame.empty:
        return []
    ok = frame[frame["status"].eq("ok")]
    flagged = ok["flags"].map(lambda f: bool(set(f) & {"unstable", "noisy"})).sum()
    counts: dict[str, int] = {}
    for flags in ok["flags"]:
        for flag in flags:
            counts[flag] = counts.get(flag, 0) + 1
    rows = [[_cell(flag, num=False), _cell(n), _cell(WARNING_FLAGS.get(flag, flag), num=False)]
            for flag, n in sorted(counts.items(), key=lambda x: -x[1])]
    failed_check = int((frame["check"] == "fail").sum())
    rows.append([_cell("check failed", num=False), _cell(failed_check),
                 _cell("numerical result outside tolerance of the reference", num=False)])
    for status, n in frame.loc[frame["status"].ne("ok"), "status"].value_counts().items():
        rows.append([_cell(f"did not run: {status}", num=False), _cell(int(n)), _cell("reason in Warnings", num=False)])
    head = (f"{flagged} of {len(ok)} successful measurements are flagged unstable or noisy, "
            f"{counts.get('overhead_bound', 0)} overhead-bound; {failed_check} failed the numerical check and "
            f"{len(frame) - len(ok)} did not run. Treat differences whose CI is wide, or that rest on flagged "
            "measurements, with care.")
    loaded = []
    for h in report.results.headers:
        env = h.get("environment") or {}
        load, cpus = env.get("load_average") or [], (env.get("cpu") or {}).get("usable_cpus")
        if load and cpus and load[0] > 0.5 * cpus:
            loaded.append((load[0], cpus))
    notes = []
    if loaded:
        lo, hi = min(v for v, _ in loaded), max(v for v, _ in loaded)
        span = f"{lo:.2f}" if lo == hi else f"{lo:.2f}–{hi:.2f}"
        cpus = sorted({c for _, c in loaded})
        notes.append(f"{len(loaded)} of {len(report.results.headers)} runs started with a load average of {span} on "
                     f"{'/'.join(map(str, cpus))} usable CPUs: other work was competing for the CPU, which inflates "
                     "and scatters times.")
    table = _table(["flag", "measurements", "meaning"], rows, caption="Flagged measurements by flag",
                   link={"href": "#warnings", "text": "every one, with its reason, under Warnings"})
    return [_block(head, [table], notes)]


def summary_peaks(report: Report) -> list[dict[str, Any]]:
    frame = report.measurements
    if frame.empty or "measured_tflops" not in frame:
        return []
    blocks = []
    for key, group in frame.groupby(["machine", "device", "dtype", "math"]):
        theo, measured = group["peak_theoretical_tflops"].max(), group["measured_tflops"].max()
        label, _, basis = group["peak_theoretical_basis"].iloc[0].partition(": ")
        has_theo, has_meas = np.isfinite(theo), np.isfinite(measured)
        rows = [[_cell(label, num=False), _cell(fmt_flops(theo)), _cell("100%" if has_theo else "–"),
                 _cell(f"{100 * theo / measured:.0f}%" if has_theo and has_meas else "–"),
                 _cell(basis, num=False, wrap=True)]]
        head = f"{_on(key[1])} ({key[2]}, {key[3]} math), "
        if has_meas:
            best = group.dropna(subset=["measured_case"]).iloc[0]
            rows.append([_cell(peak.MEASURED, num=False), _cell(fmt_flops(measured)),
                         _cell(f"{100 * measured / theo:.0f}%" if has_theo else "–"), _cell("100%"),
                         _cell(f"{best['measured_backend']}, {best['measured_case']}; {best['measured_basis']}",
                               num=False, wrap=True)])
            head += f"the best measured GEMM reaches {fmt_flops(measured)} ({best['measured_backend']}, " \
                    f"{best['measured_case']})"
            if has_theo:
                head += f", {100 * measured / theo:.0f}% of the {fmt_flops(theo)} {label}"
                if measured > theo:
                    head += " — above it, so the estimate's assumptions (clock, FMA units) understate this machine"
        else:
            head += f"{label} {fmt_flops(theo)}; no GEMM measured to compare with"
        where = " · ".join(map(str, key)) if frame.groupby(["machine", "device", "dtype", "math"]).ngroups > 1 else ""
        blocks.append(_block(head + ".", [_table(["peak", "FLOP/s", "% of theoretical", "% of measured", "basis"],
                                                 rows)], where=where))
    return blocks


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
                    cells.append({"time": format_seconds(b["median_s"]), "sort": b["median_s"],
                                  "ci": f"{format_seconds(b['ci_low_s'])}–{format_seconds(b['ci_high_s'])}",
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


def _env_facts(h: dict[str, Any]) -> dict[str, str]:
    env = h.get("environment") or {}
    cpu = env.get("cpu") or {}
    return {
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
        "timing": ", ".join(f"{k}={v}" for k, v in (h.get("timing") or {}).items()),
        "numerical check": str(h.get("check")), "seed": str(h.get("seed")),
    }


def environments(report: Report) -> list[dict[str, Any]]:
    """One block per machine: the facts all its runs share, then one table row per run (and framework worker) with
    its id, start time, load average and whatever else differs between the runs."""
    workers = report.results.workers
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for h in report.results.headers:
        by_machine.setdefault(machine_name(h.get("environment") or {}), []).append(h)
    out = []
    for machine, headers in by_machine.items():
        facts = [_env_facts(h) for h in headers]
        shared = {k: v for k, v in facts[0].items() if all(f[k] == v for f in facts)}
        varying = [k for k in facts[0] if k not in shared]
        runs = []
        for h, f in zip(headers, facts, strict=True):
            load = ", ".join(f"{v:.2f}" for v in (h.get("environment") or {}).get("load_average") or [])
            ws = [w for w in workers if w.get("run_id") == h.get("run_id")] or [{}]
            for w in ws:
                runs.append({"run_id": h.get("run_id"), "created": h.get("created", ""), "load": load,
                             "varying": [f[k] for k in varying], "backend": w.get("backend", ""),
                             "device": w.get("device", ""),
                             "versions": ", ".join(f"{k} {v}" for k, v in (w.get("versions") or {}).items()),
                             "flags": ", ".join(f"{k}={v}" for k, v in (w.get("flags") or {}).items())})
        out.append({"machine": machine, "facts": shared, "varying": varying, "runs": runs,
                    "count": len(headers)})
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
        summary=[{"id": "speed", "question": "Which framework is fastest, where, and by how much?",
                  "blocks": summary_speed(report)},
                 {"id": "backward", "question": "How does backward compare with forward?",
                  "blocks": summary_backward(report)},
                 {"id": "conv", "question": "Why is a conv layer slower than a dense layer of the same input size?",
                  "blocks": summary_conv(report)},
                 {"id": "scaling", "question": "How does cost grow with size?", "blocks": summary_scaling(report)},
                 {"id": "peak", "question": "Peak: theoretical and measured", "blocks": summary_peaks(report)},
                 {"id": "reliability", "question": "How reliable are these numbers?",
                  "blocks": summary_quality(report)}],
        environments=environments(report), figures=figs, tables=case_tables(report),
        history=history.section(report.results, out / "figures"),  # history hook: empty for a single run
        warnings=warning_rows(report), data_files=data_files,
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
