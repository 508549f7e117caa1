"""Ready numbers (``reports.analysis``) → the report's answers: at most two short headline sentences per question,
compact tables and notes. Nothing is computed here beyond choosing words and formats; the words for op kinds,
varieties and passes come from ``suite.ops`` (``varieties()``, ``pass_label``), so a new kind needs none here.

A block is ``{"where", "headline", "tables", "notes", "missing"}``; a table is ``{"columns", "rows", "caption",
"link", "cls"}``; a cell is ``{"text", "ci", "cls", "bold"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from reports import peak
from reports.analysis import CONFIG, FORWARD_BACKWARD, INFERENCE, OVERHEAD_FACTOR, STEP, Analysis, whole_set
from reports.frame import main_kinds
from suite.catalog import PHASES
from suite.ops import OP_KINDS, PASS_LABELS, PASSES, pass_label, varieties
from suite.results import SAME_BAND, UNRELIABLE_FLAGS
from suite.stats import CONTENDED_SHARE, NOISY_REL_IQR, OVERHEAD_BOUND_S, SHORT_BLOCK_S, format_seconds

KIND_FIGURE = "kind-{}"  # the figure key of an op kind's section
WARNING_FLAGS = {"unstable": "stopped at the time cap or the block limit before the 95% CI of the median narrowed "
                             "to the target",
                 "noisy": f"IQR/median ≥ {100 * NOISY_REL_IQR:.0f}%",
                 "overhead_bound": f"median below {format_seconds(OVERHEAD_BOUND_S)}: measures dispatch overhead",
                 "short_blocks": f"a block shorter than {format_seconds(SHORT_BLOCK_S)}",
                 "few_blocks": "too few blocks for a 95% CI",
                 "contended": f"other processes took ≥ {100 * CONTENDED_SHARE:.0f}% of the usable CPUs' time "
                              "during the timing: the time may be too slow",
                 "throttled": "the GPU ran below the clocks it was asked for during the measurement (an NVML throttle "
                              "reason: power cap, thermal or board limit): the time may be too slow"}


# ------------------------------------------------------------------------------------------------ formats
def speedup_text(x: float) -> str:
    """A speedup as words: 1.23 → '1.2× faster', 0.28 → '3.6× slower' (never '0.28×'), 0.0175 → '57× slower'."""
    if not np.isfinite(x):
        return "–"
    if abs(x - 1) < 0.005:
        return "same speed"
    return f"{factor_text(x if x > 1 else 1 / x)}× " + ("faster" if x > 1 else "slower")


def factor_text(x: float) -> str:
    """A factor of at least 1: one decimal below 10 ('3.6'), none above ('57')."""
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def speedup_ci_text(low: float, high: float) -> str:
    """The CI of a speedup in the same words: '1.3–3.7× slower', '1.1–1.4× faster', or '1.2× slower to 1.1× faster'
    when it straddles 1."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no CI"
    if high < 1:
        return f"{factor_text(1 / high)}–{factor_text(1 / low)}× slower"
    if low > 1:
        return f"{factor_text(low)}–{factor_text(high)}× faster"
    return f"{factor_text(1 / low)}× slower to {factor_text(high)}× faster"


def ci_text(low: float, high: float, unit: str = "×") -> str:
    return f"{low:.2f}–{high:.2f}{unit}" if np.isfinite(low) and np.isfinite(high) else "no CI"


def seconds_ci(low: float, high: float) -> str:
    """A CI of a time, e.g. '1.2 ms–1.3 ms'; 'no CI' when a bound is missing (too few blocks)."""
    return f"{format_seconds(low)}–{format_seconds(high)}" if np.isfinite(low) and np.isfinite(high) else "no CI"


def flops_text(tflops: float) -> str:
    if not np.isfinite(tflops):
        return "–"
    return f"{tflops:.3g} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.3g} GFLOP/s"


def pct(x: float) -> str:
    return f"{x:.0f}%" if np.isfinite(x) else "–"


def span(values: Iterable[float], fmt: str | Callable[[float], str] = "{:.2f}", unit: str = "×") -> str:
    """'low–high' of the values (one value when they agree at this precision)."""
    values = sorted(v for v in values if np.isfinite(v))
    if not values:
        return "–"
    text = fmt if callable(fmt) else fmt.format
    low, high = text(values[0]), text(values[-1])
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def cell(text: Any, ci: str = "", num: bool = True, bold: bool = False, wrap: bool = False) -> dict[str, Any]:
    return {"text": str(text), "ci": ci, "cls": "num" if num else "wrap" if wrap else "", "bold": bold}


def table(columns: list[str], rows: list[list[dict[str, Any]]], caption: str = "",
          link: dict[str, str] | None = None, stacked: bool = False) -> dict[str, Any]:
    """``stacked``: the CIs go on a line under the numbers, for wide tables."""
    return {"columns": columns, "rows": rows, "caption": caption, "link": link,
            "cls": "summary stacked" if stacked else "summary"}


def block(headline: str, tables: list[dict[str, Any]] | None = None, notes: list[str] | None = None,
          where: str = "", missing: bool = False) -> dict[str, Any]:
    return {"where": where, "headline": headline, "tables": tables or [], "notes": notes or [], "missing": missing}


def ordered(a: Analysis, names: Iterable[str]) -> list[str]:
    """The frameworks among ``names`` in the report's order (the backend registry's)."""
    return a.palette.ordered(names)


def kind_label(kind: str) -> str:
    """An op kind's or variety's plural noun for sentences ('GEMMs', 'depthwise convs'), from ``suite.ops``."""
    return varieties().get(kind, (kind, ""))[0]


def kind_place(kind: str) -> int:
    """An op kind's or variety's place in the report: the op registry's order (unknown ones last)."""
    names = list(varieties())
    return names.index(kind) if kind in names else len(names)


def groups(data: pd.DataFrame, by: list[str], all_configs: pd.DataFrame) -> Iterable[tuple[tuple, str, pd.DataFrame]]:
    """(key, a title naming the configuration when the results hold several, rows) per group of ``by``, which starts
    with CONFIG (the title names the configuration only)."""
    several = not all_configs.empty and len(all_configs.groupby(CONFIG, dropna=False)) > 1
    for key, group in data.groupby(by, dropna=False, sort=True):
        yield key, config_title(key[:len(CONFIG)]) if several else "", group


def config_title(key: tuple) -> str:
    """'machine · device · dtype · math · N threads' for a CONFIG key ('· cold L2' when the cache was flushed)."""
    parts = {k: v for k, v in zip(CONFIG, key, strict=True)}
    words = [f"{v} thread{'s' if v != 1 else ''}" if k == "threads" else f"{v} L2" if k == "l2" else str(v)
             for k, v in parts.items() if k != "l2" or v != "warm"]
    return " · ".join(words)


def kinds_text(kinds: Iterable[str]) -> str:
    """'GEMMs, attention' from the networks' comma-joined op kinds."""
    names = sorted({k for joined in kinds for k in str(joined).split(", ") if k})
    return ", ".join(kind_label(k) for k in names)


def kind_title(kind: str) -> str:
    """'Batched GEMMs', 'Attention': an op kind's label as a title."""
    label = kind_label(kind)
    return label[:1].upper() + label[1:]


def on(device: str) -> str:
    return "On this CPU" if str(device).startswith("cpu") else f"On this {device}"


# ------------------------------------------------------------------------------------------------ questions
def speed(a: Analysis) -> list[dict[str, Any]]:
    """Which framework is fastest where: case wins, geomean speedups per op kind and pass, the variants tried."""
    s, base = a.speedups, a.baseline
    if a.pooled.empty:
        return [block("No successful measurement in these results: nothing to compare.", missing=True)]
    if s.empty:
        names = ", ".join(sorted(a.pooled["backend"].unique()))
        return [block(f"Only {names} measured the same cases here, so these results cannot say which framework is "
                      "fastest; run more backends (--backend torch,tensorflow,jax) on the same machine.",
                      missing=True)]
    blocks = []
    for key, where, group in groups(s, CONFIG, a.pooled):
        backends = ordered(a, group["backend"])
        wins = group.groupby("backend")["wins"].sum()
        compared = int(group.groupby(["pass", "kind"])["cases"].max().sum())
        order = sorted(backends, key=lambda b: -wins.get(b, 0))
        head = (f"{on(key[1])}, {order[0]} is fastest in {wins.get(order[0], 0)} of {compared} case×pass "
                "comparisons (" + ", ".join(f"{b} {wins.get(b, 0)}" for b in order[1:]) + ").")
        fwd = group[group["pass"].eq("forward") & group["backend"].ne(base) & group["kind"].isin(main_kinds())]
        parts = [f"{b} " + " and ".join(f"{speedup_text(r.geomean)} on {kind_label(r.kind)}"
                                         for r in fwd[fwd["backend"].eq(b)].sort_values("kind", key=lambda k: k.map(
                                             kind_place)).itertuples())
                 for b in ordered(a, fwd["backend"])]
        if parts:
            head += f" Forward pass against {base} (geomeans): " + "; ".join(parts) + "."
        keyed = []  # (kind's place, pass's place), row
        for (kind, pass_), kg in group.groupby(["kind", "pass"], sort=False):
            row = [cell(kind_label(kind), num=False), cell(pass_label(kind, pass_), num=False),
                   cell(int(kg["cases"].max()))]
            keyed.append(((kind_place(kind), PASSES.index(pass_)), row))
            by_backend = kg.set_index("backend")
            most = kg["wins"].max()
            for b in backends:
                if b not in by_backend.index:
                    row += [cell("–")] * (1 if b == base else 2)
                    continue
                r = by_backend.loc[b]
                if b != base:  # the baseline's own speedup is 1 by definition: no column
                    row.append(cell(speedup_text(r["geomean"]), speedup_ci_text(r["low"], r["high"])))
                row.append(cell(int(r["wins"]), bold=r["wins"] == most))
        rows = [row for _, row in sorted(keyed, key=lambda pair: pair[0])]
        columns = ["op", "pass", "cases"] + [
            c for b in backends for c in ((f"{b} wins",) if b == base else (f"{b} vs {base} (95% CI)", f"{b} wins"))]
        tables = [table(columns, rows, stacked=True,
                        caption=f"Geometric mean over cases of time({base}) / time(framework), 95% bootstrap CI over "
                                "cases; wins: cases where the framework is fastest (bold: most wins).")]
        tables += variant_tables(a, key)
        blocks.append(block(head, tables, where=where))
    return blocks


def variant_tables(a: Analysis, key: tuple) -> list[dict[str, Any]]:
    """The variants each framework was measured in, how often each won, and each one's effect against the default."""
    mask = (a.variants[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1) if len(a.variants) else []
    v = a.variants[mask] if len(a.variants) else a.variants
    if v.empty:
        return []
    rows = [[cell(r.backend, num=False), cell(r.variant, num=False),
             cell({True: "yes", False: "no"}.get(r.default, "not recorded"), num=False), cell(r.tried),
             cell(r.won, bold=r.won > 0)] for r in v.sort_values(["backend", "variant"], key=lambda c: c.map(
                 {b: i for i, b in enumerate(a.palette.order)}) if c.name == "backend" else c).itertuples()]
    out = [table(["framework", "variant (mode · layout · options)", "default", "case×pass measured", "fastest in"],
                 rows, caption="Fair comparison: each framework enters every comparison with its fastest variant "
                               "among those measured here; repeated runs of one variant are pooled, not picked.")]
    effects = a.variant_effects
    e = effects[(effects[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1)] if len(effects) else effects
    if not e.empty:
        passes = [p for p in PASSES if p in set(e["pass"])]
        rows = []
        for (backend, variant), g in e.groupby(["backend", "variant"], sort=False):
            by_pass = g.set_index("pass")
            rows.append([cell(backend, num=False), cell(variant, num=False)] + [
                cell(speedup_text(1 / by_pass.loc[p, "geomean"]),
                     f"{speedup_ci_text(1 / by_pass.loc[p, 'high'], 1 / by_pass.loc[p, 'low'])}, "
                     f"{by_pass.loc[p, 'cases']} cases") if p in by_pass.index else cell("–") for p in passes])
        out.append(table(["framework", "variant"] + [f"{PASS_LABELS[p]} vs default" for p in passes], rows,
                         stacked=True, caption="Variant effect: geomean over the cases both ran of time(variant) / "
                                               "time(the framework's default variant), in words, with its 95% CI."))
    return out


def backward(a: Analysis) -> list[dict[str, Any]]:
    """Forward or backward: the share of a whole network's training step in forward, dX and dW; op-level ratios."""
    train = a.networks[a.networks["phase"].eq(PHASES["train"])] if len(a.networks) else a.networks
    blocks = []
    caveat = "Only the measured layers ({}) count: normalization, activations and the optimizer are not in the shares."
    for key, where, group in groups(train, CONFIG, a.pooled) if len(train) else []:
        fastest = group.loc[group.groupby(["name", "backend"])["time_s"].idxmin()]
        first = []
        for name, ng in fastest.groupby("name", sort=True):
            bwd = {r.backend: 1 - r.forward_share for r in ng.itertuples()}
            first.append(f"in a {name} the backward passes (dX + dW) take "
                         f"{span([100 * v for v in bwd.values()], '{:.0f}', '%')} of the time across "
                         f"{len(bwd)} framework{'s' if len(bwd) > 1 else ''}")
        head = f"{on(key[1])}, " + "; ".join(first) + ". " + caveat.format(kinds_text(group["kinds"]))
        rows = [[cell(r.name, num=False), cell(r.backend, num=False), cell(r.variant, num=False),
                 cell(format_seconds(r.time_s), seconds_ci(r.low_s, r.high_s)),
                 cell(pct(100 * r.forward_share)), cell(pct(100 * r.dx_share)), cell(pct(100 * r.dw_share))]
                for r in group.sort_values(["name", "time_s"]).itertuples()]
        notes = []
        if not group["first_layer_marked"].all():
            names = ", ".join(sorted(set(group.loc[~group["first_layer_marked"], "name"])))
            notes.append(f"The catalog marks no first layer (tag first-layer) for {names}: every layer's dX is "
                         "counted, as when the first layer's input is trainable (e.g. an embedding).")
        shares = table(["network", "framework", "variant", "step time (Σ layer CIs)", "forward", "dX", "dW"], rows,
                       caption="Share of a training step's measured time: forward and dW of every layer, dX of every "
                               "layer but the first (a weightless op's backward, e.g. attention's dQ/dK/dV, is dX).")
        blocks.append(block(head, [shares, *ratio_tables(a, key)], notes, where))
    if blocks:
        return blocks
    if a.ratio_summary.empty:
        return [block("No complete network was measured in training, and no case has both a forward and a backward "
                      "measurement: this question cannot be answered from these results.", missing=True)]
    for key, where, group in groups(a.ratio_summary, CONFIG, a.pooled):
        full = group[group["which"].eq("backward")]
        if len(full):
            head = (f"No complete network was measured in training; per op, backward (dX+dW) takes "
                    f"{span(full['geomean'])} the forward time against a FLOP ratio of 2×.")
        else:
            head = "No complete network was measured in training; see the per-op ratios below."
        blocks.append(block(head, ratio_tables(a, key), where=where))
    return blocks


def ratio_tables(a: Analysis, key: tuple) -> list[dict[str, Any]]:
    s = a.ratio_summary
    group = s[(s[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1)] if len(s) else s
    if group.empty:
        return []
    whiches = [w for w in PASSES if w in set(group["which"])]
    cells = {(r.backend, r.which): r for r in group.itertuples()}
    rows = []
    for b in ordered(a, group["backend"]):
        row = [cell(b, num=False)]
        for w in whiches:
            r = cells.get((b, w))
            row += [cell(f"{r.geomean:.2f}×", ci_text(r.low, r.high)), cell(pct(100 * r.flop_ratio / r.geomean))] \
                if r is not None else [cell("–"), cell("–")]
        rows.append(row)
    flop = group.groupby("which")["flop_ratio"].median()
    columns = ["framework"] + [c for w in whiches for c in (f"{PASS_LABELS[w]} / forward time (FLOPs {flop[w]:.0f}×)",
                                                             f"{PASS_LABELS[w]}: % of forward FLOP/s")]
    return [table(columns, rows, stacked=True,
                  caption="Per GEMM and conv: geometric mean over cases of time(pass) / time(forward), same case and "
                          "variant, 95% bootstrap CI; a time ratio equal to the FLOP ratio means equal FLOP/s.")]


def conv(a: Analysis) -> list[dict[str, Any]]:
    """The seed question in both framings, as two sentences and a table."""
    c = a.conv_dense
    if c.empty:
        return [block("These results hold no seed conv and dense layer measured by one framework (tag seed), so they "
                      "cannot answer the seed question; run `python -m suite run --catalog seed`.", missing=True)]
    blocks = []
    for key, where, group in groups(c, CONFIG, a.pooled):
        sentences = []
        for framing, fg in group.groupby("framing", sort=False):
            dense = fg["dense"].iloc[0]
            parts = [f"{conv_case} {time_ratio_text(cg['ratio'])}" for conv_case, cg in fg.groupby("conv", sort=True)]
            lead = ("Same input values" if framing == "same input values" else "Features = pixels")
            sentences.append(f"{lead} ({dense}): " + " and ".join(parts) + " across frameworks.")
        rows = []
        for (framing, conv_case, dense), g in group.groupby(["framing", "conv", "dense"], sort=False):
            by = g.set_index("backend")
            rows.append([cell(framing, num=False), cell(f"{conv_case} vs {dense}", num=False),
                         cell(f"{g['flop_ratio'].iloc[0]:.1f}×")] + [
                cell(f"{by.loc[b, 'ratio']:.2f}×", ci_text(by.loc[b, "low"], by.loc[b, "high"]),
                     bold=by.loc[b, "verdict"] == "slower") if b in by.index else cell("–")
                for b in ordered(a, group["backend"])])
        columns = ["framing", "conv vs dense", "FLOP ratio"] + [
            f"{b}: time ratio" for b in ordered(a, group["backend"])]
        seeds = seed_table(a, key)
        blocks.append(block(" ".join(sentences[:2]), [table(columns, rows, stacked=True, caption=(
            "Forward pass, each framework's fastest variant: time(conv) / time(dense), 95% bootstrap CI; bold: the "
            f"conv is slower (CI above 1 + {100 * SAME_BAND:.0f}%).")), *seeds], where=where))
    return blocks


def time_ratio_text(ratios: Iterable[float]) -> str:
    """time(conv) / time(dense) ratios as words: 'is 2.1–3.0× slower', 'is 3.4–4.0× faster' or, when the frameworks
    disagree, 'takes 0.3–2.4× the time'."""
    ratios = [r for r in ratios if np.isfinite(r)]
    if ratios and min(ratios) > 1:
        return f"is {span(ratios, factor_text)} slower"
    if ratios and max(ratios) < 1:
        return f"is {span([1 / r for r in ratios], factor_text)} faster"
    return f"takes {span(ratios, '{:.2g}')} the time"


def seed_table(a: Analysis, key: tuple) -> list[dict[str, Any]]:
    p = a.pooled
    seed = p[p["best"] & p["pass"].eq("forward") & p["tags"].map(lambda t: "seed" in t).astype(bool)
             & (p[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1)]
    if seed.empty:
        return []
    backends = ordered(a, seed["backend"])
    rows = []
    for case, cg in seed.sort_values("flops").groupby("case", sort=False):
        first, by = cg.iloc[0], cg.set_index("backend")
        rows.append([cell(case, num=False), cell(first["shape"], num=False), cell(f"{int(first['input_elements']):,}"),
                     cell(f"{first['flops'] / first['input_elements']:,.0f}")] + [
            cell(format_seconds(by.loc[b, "median_s"]),
                 seconds_ci(by.loc[b, "ci_low_s"], by.loc[b, "ci_high_s"]))
            if b in by.index else cell("–") for b in backends])
    return [table(["case", "shape", "input values", "FLOPs per input value"] + [f"{b} forward" for b in backends],
                  rows, stacked=True, caption="The seed cases: a conv does about 2·K·R·S FLOPs per input value, a "
                                              "dense layer 2·N; forward median with its 95% CI.")]


def scaling(a: Analysis) -> list[dict[str, Any]]:
    """Slopes of time against size over the compute-bound points, inference and training side by side."""
    fits = a.scaling
    if fits.empty:
        return [block("No scaling sweep in these results (tags sweep-gemm, sweep-conv-spatial, sweep-conv-channels): "
                      "run `python -m suite run --catalog sweeps` to measure how cost grows with size.", missing=True)]
    blocks = []
    for _, where, group in groups(fits, CONFIG, a.pooled):
        sweeps = list(dict.fromkeys(group["sweep"]))
        lead = group[group["sweep"].eq(sweeps[0])]
        phases = [f"{phase} time ∝ size^{span(pg['slope'], unit='')}"
                  for phase, pg in lead.groupby("phase", sort=True) if pg["slope"].notna().any()]
        first = lead.iloc[0]
        head = (f"{first['sweep']} ({first['dimension']}): " + (" and ".join(phases) if phases else
                "too few compute-bound points to fit") + f" across frameworks, against FLOPs ∝ size^"
                f"{first['flop_slope']:.0f}.")
        excluded = int((group["points"] - group["fitted"]).sum())
        head += (f" {excluded} of {int(group['points'].sum())} points were left out of the fits as overhead-bound "
                 f"(under {OVERHEAD_FACTOR:.0f}× the sweep's fastest call).")
        rows = []
        for (sweep, backend), g in group.groupby(["sweep", "backend"], sort=False):
            by = g.set_index("phase")
            row = [cell(sweep, num=False), cell(backend, num=False)]
            for phase in ("inference", "training"):
                if phase in by.index and np.isfinite(by.loc[phase, "slope"]):
                    r = by.loc[phase]
                    row += [cell(f"{r['slope']:.2f}", f"± {r['slope_stderr']:.2f}"),
                            cell(f"{r['fitted']} of {r['points']}"), cell(", ".join(map(str, r["excluded_sizes"]))
                                                                          or "none", num=False)]
                elif phase in by.index:
                    row += [cell("too few points"), cell(f"{by.loc[phase, 'fitted']} of {by.loc[phase, 'points']}"),
                            cell(", ".join(map(str, by.loc[phase, "excluded_sizes"])) or "none", num=False)]
                else:
                    row += [cell("not measured"), cell("–"), cell("–", num=False)]
            row.append(cell(f"{g['flop_slope'].iloc[0]:.0f}"))
            rows.append(row)
        columns = ["sweep", "framework", "inference slope (± s.e.)", "fitted", "excluded sizes",
                   "training slope (± s.e.)", "fitted", "excluded sizes", "FLOP exponent"]
        blocks.append(block(head, [table(columns, rows, stacked=True, caption=(
            "Least-squares slope of log(time) on log(size), each framework's fastest variant; inference = forward, "
            "training = forward + backward. A point is fitted only when its time is at least "
            f"{OVERHEAD_FACTOR:.0f}× the fastest call of that framework in the sweep (the smallest size bounds the "
            f"per-call overhead, so overhead is at most 1/{OVERHEAD_FACTOR:.0f} of a fitted point) and not flagged "
            "overhead_bound."))],
            where=where))
    return blocks


def networks(a: Analysis) -> list[dict[str, Any]]:
    """Whole-network totals (complete layer sets only) and the partial sets apart."""
    n, partial = a.networks, a.partial_networks
    if n.empty and partial.empty:
        *others, last = PHASES  # the phase tags
        return [block("These results hold no layers of a catalogued network: a network's layers carry the tag "
                      f"net:<network> and a phase tag ({', '.join(others)} or {last}), and each layer's count "
                      "weights its total.", missing=True)]
    blocks = []
    for key, where, group in groups(n, CONFIG, a.pooled) if len(n) else []:
        fastest = group.loc[group.groupby(["name", "backend"])["time_s"].idxmin()]
        sentences = []
        for name, g in fastest.groupby("name", sort=True):
            sentences.append(f"a {name} takes " + ", ".join(
                f"{format_seconds(r.time_s)} with {r.backend}" for r in g.sort_values("time_s").itertuples()))
        head = (f"{on(key[1])}, " + "; ".join(sentences[:2]) + f" (measured layers only: {kinds_text(group['kinds'])};"
                " each framework's fastest complete variant).")
        if len(sentences) > 2:
            head += f" {len(sentences) - 2} more complete layer sets are in the table."
        rows = [[cell(r.name, num=False), cell(r.backend, num=False), cell(r.variant, num=False),
                 cell(r.layers),
                 cell(format_seconds(r.time_s), seconds_ci(r.low_s, r.high_s))]
                for r in group.sort_values(["name", "time_s"]).itertuples()]
        columns = ["network (layer set)", "framework", "variant", "layers", "time (Σ layer CIs)"]
        caption = ("Σ over every layer of the network of count × median time; training step = forward + dW + dX "
                   "(the first layer's dX excluded).")
        blocks.append(block(head, [table(columns, rows, caption=caption)], where=where))
    if len(partial):
        rows = []
        for (name, backend), g in partial.groupby(["name", "backend"], sort=True):
            r = g.loc[g["measured"].idxmax()]
            missing = ", ".join(r["missing"][:3]) + (f" and {len(r['missing']) - 3} more" if len(r["missing"]) > 3
                                                     else "")
            rows.append([cell(name, num=False), cell(backend, num=False),
                         cell(f"{r['measured']} of {r['layers']} layers"), cell(missing, num=False, wrap=True)])
        note = table(["network (layer set)", "framework", "measured (best variant)", "missing"], rows,
                     caption="Partial networks: not every layer was measured in one variant, so no total is given.")
        if blocks:
            blocks[-1]["tables"].append(note)
        else:
            blocks.append(block(f"No network was measured completely: {len(rows)} layer sets are partial (listed "
                                "below), so no network total is given.", [note]))
    return blocks


def _possessive(names: list[str]) -> str:
    """'torch's', 'torch's and jax's', 'torch's, tensorflow's and jax's'."""
    owned = [f"{n}'s" for n in names]
    return owned[0] if len(owned) == 1 else ", ".join(owned[:-1]) + f" and {owned[-1]}"


def listing(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def step_warnings(r: Any) -> list[str]:
    """What makes a row of ``Analysis.steps`` less than solid, in words: the unreliable timing flags of its step, its
    inference or its forward+backward pass (each flag once), and which of them failed the numerical check."""
    flags = [*r.step_flags, *r.forward_flags, *r.forward_backward_flags]
    words = [f for f in UNRELIABLE_FLAGS if f in flags]
    if r.checks_failed:
        words.append(f"check failed ({', '.join(pass_label(r.op, p) for p in r.checks_failed)})")
    return words


def pct_ci(low: float, high: float) -> str:
    """A CI of a share, e.g. '57%–86%'; 'no CI' when a bound is missing."""
    return f"{pct(100 * low)}–{pct(100 * high)}" if np.isfinite(low) and np.isfinite(high) else "no CI"


def _flagged(r: Any) -> str:
    """'; flagged: unstable' after a number whose measurement is flagged, else ''."""
    words = step_warnings(r)
    return f"; flagged: {', '.join(words)}" if words else ""


def _bounds(low: float, high: float, text: Callable[[float], str]) -> str:
    return f"{text(low)} to {text(high)}" if np.isfinite(low) and np.isfinite(high) else "no CI"


def step_rows(a: Analysis, group: pd.DataFrame) -> list[list[dict[str, Any]]]:
    """The table of one network: every framework variant with a training step, each framework's fastest first."""
    rows = []
    for b in ordered(a, group["backend"]):
        for r in group[group["backend"].eq(b)].sort_values("step_s").itertuples():
            complete = r.layers_status == "complete"
            warn = step_warnings(r)
            step_ci = seconds_ci(r.step_low_s, r.step_high_s) + (f"; flagged: {', '.join(warn)}" if warn else "")
            rows.append([
                cell(b, num=False), cell(r.variant, num=False),
                cell(format_seconds(r.step_s), step_ci, bold=bool(r.best)),
                cell(format_seconds(r.layer_s), f"{seconds_ci(r.layer_low_s, r.layer_high_s)}; {r.layer_variant}")
                if complete else cell(f"incomplete: {r.layers_measured} of {r.layers_total} layers"),
                cell(signed_seconds(r.remainder_s), _bounds(r.remainder_low_s, r.remainder_high_s, signed_seconds))
                if complete else cell("–"),
                cell(pct(100 * r.layer_ratio), pct_ci(r.layer_ratio_low, r.layer_ratio_high))
                if complete else cell("–"),
                *[cell(pct(100 * share), pct_ci(low, high)) if np.isfinite(share) else cell("–")
                  for share, low, high in ((r.forward_share, r.forward_share_low, r.forward_share_high),
                                           (r.backward_update_share, r.backward_update_share_low,
                                            r.backward_update_share_high),
                                           (r.update_share, r.update_share_low, r.update_share_high))]])
    return rows


def signed_seconds(seconds: float) -> str:
    """A time that may be negative (a remainder): '−12 ms', '0.50 s'."""
    if not np.isfinite(seconds):
        return "–"
    return ("−" if seconds < 0 else "") + format_seconds(abs(seconds))


def ranking_text(ranks: pd.DataFrame) -> str:
    """Whether the layer level's framework ranking holds for the whole step, naming the pairs that swap."""
    if ranks.empty:
        return ""
    order = list(dict.fromkeys([*ranks["first"], *ranks["second"]]))
    layer_order = sorted(order, key=lambda b: sum(ranks["second"].eq(b)))  # the fastest layer sum is never second
    swaps = ranks[ranks["swapped"]]
    ties = ranks[ranks["verdict"].isin(["same", "n/a"])]
    if swaps.empty and ties.empty:
        return f"the layer sums' ranking ({', '.join(layer_order)}) holds for the whole step"
    parts = [f"{r.second} is {speedup_text(1 / r.step_ratio)} than {r.first} at the step though "
             f"{speedup_text(1 / r.layer_ratio).replace('faster', 'faster at').replace('slower', 'slower at')} "
             "the layer level" for r in swaps.itertuples()]
    parts += [f"{r.first} and {r.second} are not told apart at the step (time {r.second}/{r.first} {r.step_ratio:.2f}, "
              + (f"95% CI {ci_text(r.step_low, r.step_high, '')} reaching into 1 ± {100 * SAME_BAND:.0f}%)"
                 if np.isfinite(r.step_low) else "no CI)") for r in ties.itertuples()]
    verb = "does not hold for" if len(swaps) else "is not confirmed by"
    return f"the layer sums' ranking ({', '.join(layer_order)}) {verb} the whole step: " + "; ".join(parts)


def steps(a: Analysis) -> list[dict[str, Any]]:
    """Where a training step's time goes: per network, the real step of each framework against the sum of its
    measured layers, the remainder, the forward and backward + update shares, and whether the ranking holds."""
    s = a.steps
    if s.empty:
        return [block("These results hold no whole-model training step (a case tagged whole:<layer set>, measured in "
                      "its training-step pass), so they cannot say where a step's time goes beyond the measured "
                      "layers; run `python -m suite run --catalog model` beside the layers.", missing=True)]
    frame = a.measurements
    tagged = frame[frame["tags"].map(lambda t: whole_set(t) is not None).astype(bool)] if len(frame) else frame
    blocks = []
    for key, where, group in groups(s, [*CONFIG, "case"], a.pooled):
        config, case = key[:len(CONFIG)], key[-1]
        best = group[group["best"]]
        first = best.iloc[0]
        network, set_id, op = first["network"], first["set"], first["op"]
        names = ordered(a, best["backend"])
        rows = {b: best[best["backend"].eq(b)].iloc[0] for b in names}
        done = [b for b in names if rows[b]["layers_status"] == "complete"]
        lead = f"{on(config[1])}, in a {network} {pass_label(op, STEP)} ({set_id})"
        if done:
            kinds = kinds_text(best.loc[best["backend"].isin(done), "kinds"])
            head = f"{lead}, the measured layers ({kinds}) take " + listing(
                [f"{pct(100 * rows[b]['layer_ratio'])} of {b}'s step ({format_seconds(rows[b]['step_s'])}"
                 f"{_flagged(rows[b])})" for b in done])
            over = [b for b in done if rows[b]["remainder_high_s"] < 0]  # the layers alone take longer, CI and all
            even = [b for b in done if b not in over and rows[b]["remainder_s"] < 0]  # longer, inside the bounds
            rest = [b for b in done if b not in over and b not in even]
            if rest:
                head += ("; the rest (normalization, activations, elementwise ops, the loss, the SGD update and "
                         "framework overhead, less what fusion saves) takes "
                         + listing([f"{pct(100 * (1 - rows[b]['layer_ratio']))} of {b}'s" for b in rest]))
            if even:
                head += (f"; {_possessive(even)} layers alone take about as long as "
                         f"{'its' if len(even) == 1 else 'their'} whole step (the remainder's bounds include 0)")
            if over:
                head += f"; timed alone, the layers take longer than {_possessive(over)} whole step"
            skipped = [b for b in names if b not in done]
            if skipped:
                head += "; " + listing([f"{b}'s layer set is incomplete ({rows[b]['layers_measured']} of "
                                        f"{rows[b]['layers_total']} layers)" for b in skipped]) + \
                    ", so no layer share is claimed for " + ("it" if len(skipped) == 1 else "them")
            head += "."
        else:
            head = (f"{lead}, the step takes " + ", ".join(
                f"{format_seconds(rows[b]['step_s'])} with {b}{_flagged(rows[b])}" for b in names)
                + f"; the layer set {set_id} is incomplete in every framework, so no layer share is claimed.")
        second = []
        shares = [b for b in names if np.isfinite(rows[b]["forward_share"])]
        if shares:
            second.append(f"the forward pass ({pass_label(op, INFERENCE)}, eval mode) takes "
                          + listing([f"{pct(100 * rows[b]['forward_share'])} of {b}'s" for b in shares])
                          + ", backward and update the rest")
        ranks = a.step_ranking
        ranks = ranks[(ranks[CONFIG] == pd.Series(config, index=CONFIG)).all(axis=1) & ranks["case"].eq(case)] \
            if len(ranks) else ranks
        if len(ranks):
            second.append(ranking_text(ranks))
        if second:
            text = "; ".join(second)
            head += f" {text[0].upper()}{text[1:]}."
        columns = ["framework", f"variant ({pass_label(op, STEP)})", f"{pass_label(op, STEP)} (95% CI)",
                   "layer sum (Σ layer CIs; variant)", "remainder (bounds)", "layer sum / step",
                   f"forward ({pass_label(op, INFERENCE)}) share", "backward + update share", "update share"]
        caption = (f"Each framework's {pass_label(op, STEP)} of the whole model (bold: its fastest variant, used "
                   f"above) against the sum of the measured layers of the catalog set {set_id} in the same "
                   "framework (its fastest complete variant, as in the training shares above; the first layer's dX "
                   "excluded). Remainder = step − layer sum; its bounds are step CI low − layer sum high to step CI "
                   "high − layer sum low (they hold whenever both intervals hold), and layer sum / step takes its "
                   f"bounds the same way. Shares, from the same variant's passes with bootstrap CIs: forward = "
                   f"{pass_label(op, INFERENCE)} / step; backward + update = 1 − that; update = 1 − "
                   f"{pass_label(op, FORWARD_BACKWARD)} / step.")
        notes = [f"The forward share comes from the {pass_label(op, INFERENCE)} pass, in eval mode (batch norm on its "
                 "running statistics, no activations kept for a backward), which can be cheaper than the training "
                 "step's own forward; backward + update is step − that forward."]
        layer_set = next((ls for ls in a.network_sets if ls.set == set_id), None)
        if layer_set is not None:
            notes.append(f"The layer sum counts the {len(layer_set.layers)} distinct layers the catalog lists for "
                         f"{set_id}, each times its count; whatever the set does not list falls into the remainder.")
        here = tagged[(tagged[CONFIG] == pd.Series(config, index=CONFIG)).all(axis=1) & tagged["case"].eq(case)
                      & tagged["pass"].eq(STEP) & tagged["status"].ne("ok")] if len(tagged) else tagged
        for b in ordered(a, set(here["backend"]) - set(names)):
            r = here[here["backend"].eq(b)].iloc[0]
            notes.append(f"No {pass_label(op, STEP)} from {b}: {r['status']} ({r['variant']}; reason under "
                         "Warnings), so it has no row.")
        blocks.append(block(head, [table(columns, step_rows(a, group), caption=caption, stacked=True)], notes,
                            where=" · ".join(filter(None, [network, where]))))
    return blocks


def peaks(a: Analysis) -> list[dict[str, Any]]:
    """Theoretical and measured peaks, with the notes that keep percentages honest."""
    blocks = []
    several = len(a.peaks) > 1
    for r in a.peaks.itertuples():
        theo, measured = r.theoretical_tflops, r.measured_tflops
        clock = " (nominal clock, may understate)" if r.nominal_clock and "nominal" not in r.theoretical_label else ""
        head = f"{on(r.device)} ({r.dtype}, {r.math} math), "
        if np.isfinite(measured):
            head += (f"the best measured GEMM reaches {flops_text(measured)} ({r.measured_backend}, {r.measured_case})"
                     + (f", {pct(r.measured_pct_of_theoretical)} of the {flops_text(theo)} {r.theoretical_label}"
                        f"{clock}." if np.isfinite(theo) else "."))
        else:
            head += f"no GEMM was measured; the {r.theoretical_label} is {flops_text(theo)}{clock}."
        over = []
        if r.above_measured:
            over.append(f"{r.above_measured} measurements exceed the measured peak (up to {pct(r.max_pct_measured)}), "
                        "which is the best GEMM, not a bound")
        if r.above_theoretical:
            over.append(f"{r.above_theoretical} exceed the theoretical figure (up to {pct(r.max_pct_theoretical)}): "
                        "its assumptions (clock, FMA units) understate this machine, or the kernel does fewer FLOPs "
                        "(Winograd)")
        if over:
            text = "; ".join(over)
            head += f" {text[0].upper()}{text[1:]}."
        rows = [[cell(r.theoretical_label, num=False), cell(flops_text(theo)),
                 cell(r.theoretical_basis, num=False, wrap=True)],
                [cell("measured peak", num=False), cell(flops_text(measured)),
                 cell(f"{r.measured_backend}, {r.measured_case}; {r.measured_basis}" if np.isfinite(measured)
                      else "no GEMM measured in this configuration", num=False, wrap=True)],
                [cell("memory bandwidth", num=False),
                 cell(f"{r.bandwidth_gbps:.3g} GB/s" if np.isfinite(r.bandwidth_gbps) else "–"),
                 cell(r.bandwidth_basis, num=False, wrap=True)]]
        where = " · ".join(map(str, (r.machine, r.device, r.dtype, r.math))) if several else ""
        caption = ("Percentages of peak in the report are against the measured peak." if np.isfinite(measured) else
                   "No GEMM was measured in this configuration: no FLOP rate is given as a percentage of a "
                   "measured peak.")
        blocks.append(block(head, [table(["peak", "rate", "basis"], rows, caption=caption)], where=where))
    return blocks


def reliability(a: Analysis) -> list[dict[str, Any]]:
    """Flagged, failed and check-failed measurements, and load at the start of each run."""
    q = a.quality
    if not q or not (q["ok"] or q["not_run"]):
        return []
    rows = [[cell(flag, num=False), cell(n), cell(WARNING_FLAGS.get(flag, flag), num=False)]
            for flag, n in sorted(q["flags"].items(), key=lambda x: -x[1])]
    rows.append([cell("check failed", num=False), cell(q["check_failed"]),
                 cell("numerical result outside tolerance of the float64 reference", num=False)])
    rows += [[cell(f"did not run: {status}", num=False), cell(n), cell("reason in Warnings", num=False)]
             for status, n in q["not_run"].items()]
    head = (f"{q['unstable_or_noisy']} of {q['ok']} successful measurements are flagged unstable or noisy and "
            f"{q['flags'].get('overhead_bound', 0)} overhead-bound; {q['check_failed']} failed the numerical check "
            f"and {sum(q['not_run'].values())} did not run.")
    notes = []
    loaded = []
    for h in a.results.headers:
        load, cpus = h.environment.load_average, h.environment.cpu.usable_cpus
        if load and cpus and load[0] > 0.5 * cpus:
            loaded.append(load[0])
    if loaded:
        notes.append(f"{len(loaded)} of {len(a.results.headers)} runs started with a load average of "
                     f"{span(loaded, unit='')} on this machine: other work was competing for the CPU, which inflates "
                     "and scatters times.")
    notes += a.notes
    return [block(head, [table(["flag", "measurements", "meaning"], rows, caption="Flagged measurements by flag",
                               link={"href": "#warnings", "text": "every one, with its reason, under Warnings"})],
                  notes)]


def kind_section(a: Analysis, kind: str) -> list[dict[str, Any]]:
    """An op kind beyond GEMM and conv: achieved FLOP/s per framework and pass (each framework's fastest variant,
    geomean over cases), backward/forward time, the kernel each backend recorded; passes the op does not have are
    not applicable, and a framework's own layout for the op is named, not compared."""
    label = kind_label(kind)
    t = a.kind_throughput[a.kind_throughput["op"].eq(kind)] if len(a.kind_throughput) else a.kind_throughput
    frame = a.measurements
    refused = frame[frame["op"].eq(kind) & ~frame["applies"]]
    notes = []
    if len(refused):
        passes = [pass_label(kind, p) for p in PASSES if p in set(refused["pass"])]
        notes.append(f"Not applicable, not gaps: the {len(refused)} records of {' and '.join(passes)} of {label} are "
                     f"refusals by design ({refused['reason'].dropna().iloc[0]}).")
    if t.empty:
        return [block(f"No successful measurement of {label} in these results.", notes=notes, missing=True)]
    blocks = []
    for key, where, group in groups(t, CONFIG, a.pooled):
        backends, passes = ordered(a, group["backend"]), [p for p in PASSES if p in set(group["pass"])]
        by = group.set_index(["backend", "pass"])
        lead = "forward" if "forward" in passes else passes[0]
        first = group[group["pass"].eq(lead)].sort_values("tflops", ascending=False)
        cases = int(first["cases"].max())
        head = (f"{on(key[1])}, {label} {pass_label(kind, lead)} ({cases} case{'s' if cases != 1 else ''}, geomean): "
                + ", ".join(f"{r.backend} {flops_text(r.tflops)}" for r in first.itertuples()) + ".")
        r = a.kind_ratios
        ratios = r[(r[CONFIG] == pd.Series(key, index=CONFIG)).all(axis=1) & r["kind"].eq(kind)] if len(r) else r
        whiches = [w for w in PASSES if w in set(ratios["which"])]
        if "backward" in whiches:
            full = ratios[ratios["which"].eq("backward")]
            head += (f" Backward takes {span(full['geomean'])} the forward time across frameworks, against a FLOP "
                     f"ratio of {full['flop_ratio'].median():.2g}×.")
        cells = ratios.set_index(["backend", "which"])
        rows = []
        for b in backends:
            layouts = sorted({lay for p in passes if (b, p) in by.index for lay in by.loc[(b, p), "layouts"]})
            kernels = sorted({k for p in passes if (b, p) in by.index for k in by.loc[(b, p), "kernels"]})
            row = [cell(b, num=False), cell(", ".join(layouts), num=False),
                   cell(", ".join(kernels) or "not recorded", num=False)]
            for p in passes:
                if (b, p) in by.index:
                    x = by.loc[(b, p)]
                    row.append(cell(flops_text(x["tflops"]), f"{flops_text(x['low'])}–{flops_text(x['high'])}"
                                    if np.isfinite(x["low"]) else f"{x['cases']} case{'s' if x['cases'] != 1 else ''}"))
                else:
                    row.append(cell("–"))
            row += [cell(f"{cells.loc[(b, w), 'geomean']:.2f}×", ci_text(cells.loc[(b, w), "low"],
                                                                          cells.loc[(b, w), "high"]))
                    if (b, w) in cells.index else cell("–") for w in whiches]
            rows.append(row)
        flop = ratios.groupby("which")["flop_ratio"].median()
        columns = ["framework", "layout", "kernel recorded"] + [f"{pass_label(kind, p)} FLOP/s" for p in passes] + [
            f"{pass_label(kind, w)} / forward time (FLOPs {flop[w]:.2g}×)" for w in whiches]
        own = {b: set(group.loc[group["backend"].eq(b), "layouts"].sum()) for b in backends}
        layout_notes = []
        if all(len(v) == 1 for v in own.values()) and len({min(v) for v in own.values()}) > 1:
            layout_notes.append(f"Each framework runs {label} in its own native layout (" + "; ".join(
                f"{b} {min(own[b])}" for b in backends) + "): one variant per framework, not layouts to compare.")
        blocks.append(block(head, [table(columns, rows, stacked=True, caption=(
            "Each framework's fastest variant per case: geometric mean over cases of achieved FLOP/s (useful FLOPs "
            "/ median time; 95% bootstrap CI over cases from 3 cases on), and of time(pass) / time(forward) of the "
            "same case and variant; the kernel is what the backend recorded (torch's SDPA choice, the "
            "implementation JAX or TensorFlow ran)."))], [*layout_notes, *notes], where))
    return blocks


def ratio_text(x: float) -> str:
    """A time ratio for a sentence: two significant digits below 10 (0.087, 2.8), whole above (148)."""
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def sparsity_text(x: float) -> str:
    """0.95 → '0.95'; NaN → 'not reached'."""
    return f"{x:g}" if np.isfinite(x) else "not reached"


def has_inference(a: Analysis) -> bool:
    """The results hold an op timed against a dense twin (a sparse GEMM) or an int8 measurement."""
    frame = a.measurements
    return bool(len(frame)) and bool(frame["spec"].map(lambda op: op is not None and op.dense() is not None).any()
                                     or frame["dtype"].eq("int8").any())


def inference(a: Analysis) -> list[dict[str, Any]]:
    """Sparse GEMM against the dense GEMM of its shape (per case and framework, with CIs, and the crossover
    sparsity of each sweep), and what int8 buys over bf16 and fp32 on the cases measured in int8."""
    return [*sparse_blocks(a), *int8_blocks(a)]


def sparse_blocks(a: Analysis) -> list[dict[str, Any]]:
    r = a.sparse
    notes = ([f"No dense GEMM of the same shape in the same run for {len(a.sparse_unmatched)} sparse measurements, "
              f"left out: {', '.join(a.sparse_unmatched[:6])}{' …' if len(a.sparse_unmatched) > 6 else ''}."]
             if a.sparse_unmatched else [])
    if r.empty:
        return [block("No sparse GEMM with its dense GEMM measured in the same run in these results (run the "
                      "`sparse` subset, which holds both).", notes=notes, missing=True)] if notes else []
    blocks = []
    for key, where, group in groups(r, CONFIG, a.pooled):
        backends = ordered(a, group["backend"])
        c = a.crossovers
        cross = c[(c[CONFIG].astype(str) == pd.Series(key, index=CONFIG).astype(str)).all(axis=1)] if len(c) else c
        head = (f"{on(key[1])}, a sparse GEMM takes {span(group['ratio'], ratio_text)} the time of the dense GEMM of "
                f"its shape ({group['case'].nunique()} cases, forward, each framework's fastest variant).")
        if len(cross):
            head += " It beats the dense GEMM from sparsity " + "; ".join(
                f"{b} {', '.join(sparsity_text(x) for x in cross.loc[cross['backend'].eq(b), 'crossover'])}"
                for b in ordered(a, cross["backend"])) + "."
        rows = []
        for case, cg in group.sort_values(["shape", "sparsity"]).groupby("case", sort=False):
            first, by = cg.iloc[0], cg.set_index("backend")
            rows.append([cell(case, num=False), cell(first["shape"], num=False), cell(f"{first['sparsity']:g}"),
                         cell(f"{first['flop_ratio']:.2g}×")] + [
                cell(f"{by.loc[b, 'ratio']:.2f}×", f"{ci_text(by.loc[b, 'low'], by.loc[b, 'high'])} · "
                     f"{by.loc[b, 'variant']}", bold=by.loc[b, "verdict"] == "faster") if b in by.index else cell("–")
                for b in backends])
        tables = [table(["case", "dense shape", "sparsity", "FLOP ratio"] + [f"{b}: sparse / dense time"
                                                                            for b in backends], rows, stacked=True,
                        caption=("Forward: time(sparse GEMM) / time(dense GEMM of the same shape, same run), each "
                                 "framework's fastest variant (the sparse format is its layout), 95% bootstrap CI; "
                                 f"bold: the sparse kernel is faster (CI below 1 - {100 * SAME_BAND:.0f}%). FLOP "
                                 "ratio: the useful 2·nnz·N over the dense 2·M·N·K."))]
        if len(cross):
            tables.append(table(["framework", "dense shape", "sparsities measured", "crossover sparsity",
                                 "last one not faster"], [
                [cell(x.backend, num=False), cell(x.shape, num=False),
                 cell(", ".join(f"{v:g}" for v in x.sparsities), num=False), cell(sparsity_text(x.crossover)),
                 cell(sparsity_text(x.below) if np.isfinite(x.below) else "–")]
                for b in ordered(a, cross["backend"]) for x in cross[cross["backend"].eq(b)].itertuples()], caption=(
                    "Crossover: the lowest measured sparsity from which on the sparse kernel is faster than the dense "
                    "GEMM at every higher sparsity measured ('not reached': not even at the highest).")))
        blocks.append(block(head, tables, notes, where))
    return blocks


def int8_blocks(a: Analysis) -> list[dict[str, Any]]:
    d = a.dtype_summary
    frame = a.measurements
    int8 = frame[frame["dtype"].eq("int8") & frame["applies"]] if len(frame) else frame
    notes = []
    refused = int8[int8["status"].eq("unsupported")]
    for backend in ordered(a, refused["backend"]):
        mine = refused[refused["backend"].eq(backend)]
        notes.append(f"{backend}: int8 unsupported in {len(mine)} measurement{'s' if len(mine) != 1 else ''} ("
                     + "; ".join(mine["reason"].dropna().unique()[:2]) + ").")
    if len(int8):
        notes.append("int8 multiplies int8 operands and sums in int32; its check against the integer reference is "
                     "exact, and opbench times each shape as given, never padded (recorded per measurement as "
                     "int8_padding).")
    if d.empty:
        return [block("No case measured both in int8 and in fp32 or bf16 by one framework in these results (run the "
                      "`int8` subset with --dtype int8,bf16,fp32 --pass forward).", notes=notes, missing=True)] \
            if len(int8) else []
    keys = [c for c in CONFIG if c != "dtype"]
    several = len(d.groupby(keys, dropna=False)) > 1
    blocks = []
    for key, group in d.groupby(keys, dropna=False, sort=True):
        config = dict(zip(keys, key, strict=True))
        pairs = list(dict.fromkeys(zip(group["dtype"], group["against"], strict=True)))
        by = group.set_index(["backend", "dtype", "against"])
        rows = [[cell(b, num=False)] + [speedup_cell(by.loc[(b, x, y)]) if (b, x, y) in by.index else cell("–")
                                         for x, y in pairs] for b in ordered(a, group["backend"])]
        x, y = pairs[0]
        lead = group[group["dtype"].eq(x) & group["against"].eq(y)]
        head = (f"{on(config['device'])}, {x} against {y} (forward, geomean over the cases measured in int8): "
                + ", ".join(f"{r.backend} {speedup_text(r.geomean)}" for r in lead.itertuples()) + ".")
        where = config_title(tuple(config.get(c, "int8 · bf16 · fp32") for c in CONFIG)) if several else ""
        blocks.append(block(head, [table(["framework"] + [f"{x} vs {y}" for x, y in pairs], rows, stacked=True,
                                         caption=("Forward, on the cases measured in int8: time(second dtype) / "
                                                  "time(first), each dtype the framework's fastest variant; geometric "
                                                  "mean over cases (95% bootstrap CI from 3 cases on)."))],
                            notes, where))
    return blocks


def speedup_cell(row: pd.Series) -> dict[str, Any]:
    """A geomean speedup with its CI and case count."""
    cases = int(row["cases"])
    return cell(speedup_text(row["geomean"]),
                f"{speedup_ci_text(row['low'], row['high'])} · {cases} case{'s' if cases != 1 else ''}")


def collective(kind: str) -> bool:
    """Whether an op kind is a collective across ranks (its class declares nccl-tests' ``bus_factor``): its section
    and figure give bandwidths by message size and rank count, not FLOP/s."""
    return hasattr(OP_KINDS.get(kind), "bus_factor")


def bus_section(a: Analysis, kind: str) -> list[dict[str, Any]]:
    """A collective: per configuration, framework and rank count, the algorithm and bus bandwidths (nccl-tests') at
    the largest message measured and the smallest message's time (the latency end), against the machine's measured
    memory-copy bandwidth and the link bandwidth per direction (NVML's or the user's; ``peak.link``), or why there is
    none, said once."""
    label = kind_label(kind)
    pooled = a.pooled
    data = pooled[pooled["best"] & pooled["op"].eq(kind) & pooled["pass"].eq("forward")] if len(pooled) else pooled
    if data.empty:
        return [block(f"No successful measurement of {label} in these results.", missing=True)]
    data = data.assign(busbw=data["gbps"] * data["bus_factor"])
    blocks, said = [], set()
    for key, where, group in groups(data, CONFIG, pooled):
        rows, best = [], None
        for b in ordered(a, group["backend"]):
            for ranks, part in group[group["backend"].eq(b)].groupby("ranks"):
                top, small = part.loc[part["bytes"].idxmax()], part.loc[part["bytes"].idxmin()]
                if best is None or top["busbw"] > best[2]:
                    best = (b, int(ranks), top["busbw"])
                rows.append([cell(b, num=False), cell(f"{int(ranks)}"), cell(f"{part['case'].nunique()}"),
                             cell(f"{top['bytes'] / 1e6:.4g} MB"), cell(f"{top['gbps']:.3g} GB/s"),
                             cell(f"{top['busbw']:.3g} GB/s"), cell(f"{small['bytes'] / 1e3:.4g} kB"),
                             cell(format_seconds(small["median_s"]))])
        roof = group["bandwidth_gbps"].max()
        head = f"{on(key[1])}, the highest {label[:-1] if label.endswith('s') else label} bus bandwidth is " \
               f"{best[0]}'s across {best[1]} ranks, {best[2]:.3g} GB/s at the largest message"
        if np.isfinite(roof):  # a CPU's measured copy, a GPU's datasheet figure: said with its basis
            basis = group.loc[group["bandwidth_gbps"].idxmax(), "bandwidth_basis"]
            head += f", {best[2] / roof:.0%} of the memory bandwidth ({peak.gb_per_s(roof)}, {basis})."
        else:
            head += "; no memory bandwidth is known here (on a CPU: a run with --bandwidth measures it)."
        link, words = group["link_gbps"].max(), group["link_words"].iloc[0]
        if np.isfinite(link):  # busbw is per direction, as nccl-tests compares it with a link's peak speed
            words = group.loc[group["link_gbps"].idxmax(), "link_words"]
            head += f" Bus bandwidth compares with a link's bandwidth per direction (nccl-tests means busbw for the " \
                    f"hardware's peak link speed): the highest is {100 * best[2] / link:.2g}% of {words}."
        elif words not in said:  # the same missing link is said once
            said.add(words)
            head += f" {words[0].upper()}{words[1:]}."
        columns = ["framework", "ranks", "sizes", "largest message", "algbw", "busbw", "smallest message",
                   "its time"]
        blocks.append(block(head, [table(columns, rows, caption=(
            "Each framework's fastest variant: algbw = message bytes / median time of the slowest rank, busbw = "
            "algbw × 2(R−1)/R (nccl-tests), comparable whatever R with a link's bandwidth per direction or a memory "
            "copy's bandwidth; the "
            "smallest message's time is the latency end of the sweep."))], [], where))
    return blocks


def cache_state(a: Analysis) -> str:
    """Which L2 state the GPU numbers are in (warm: operands may stay in L2 between calls; cold: cleared before every
    call); '' without GPU results."""
    frame = a.measurements
    gpu = frame[frame["device"].astype(str).str.startswith("gpu") & frame["status"].eq("ok")] if len(frame) else frame
    states = gpu["l2"].value_counts() if len(gpu) else {}
    words = {"warm": "a warm L2 cache (operands may stay in the GPU's L2 between calls, as they seldom do inside a "
                     "network; --l2 cold clears it)",
             "cold": "a cold L2 cache (cleared before every call by writing a buffer larger than L2, outside the "
                     "timed region)"}
    if len(states) == 1:
        return f"GPU numbers are with {words.get(states.index[0], states.index[0] + ' L2')}."
    if len(states) > 1:
        return "GPU numbers are in two L2 states, never pooled or compared: " + "; ".join(
            f"{n} measurements with {words.get(state, state + ' L2')}" for state, n in states.items()) + "."
    return ""


QUESTIONS = [  # id, question, answer, the figure that belongs to it
    ("speed", "Which framework is fastest, where, and by how much?", speed, "speedup"),
    ("backward", "Forward or backward: which takes the time in training?", backward, "training_shares"),
    ("conv", "Why is a conv layer slower than a dense layer of the same input size?", conv, "conv_vs_gemm"),
    ("scaling", "How does cost grow with size?", scaling, "scaling"),
    ("networks", "What does a whole network cost?", networks, "networks"),
    ("steps", "Where does a training step's time go?", steps, "steps"),
    ("peak", "Peak: theoretical and measured", peaks, "roofline"),
    ("reliability", "How reliable are these numbers?", reliability, None),
]


def answers(a: Analysis) -> list[dict[str, Any]]:
    """Every question with its blocks and the key of its figure; after the whole networks and their training steps,
    one section per op kind beyond GEMM and conv present in the results."""
    out = [{"id": qid, "question": question, "blocks": answer(a), "figure": figure}
           for qid, question, answer, figure in QUESTIONS]
    at = next(i for i, q in enumerate(out) if q["id"] == "steps") + 1
    out[at:at] = [{"id": f"kind-{kind}", "question": f"{kind_title(kind)}: what bus bandwidth, by message size and "
                   "rank count?", "blocks": bus_section(a, kind), "figure": KIND_FIGURE.format(kind)}
                  if collective(kind) else
                  {"id": f"kind-{kind}", "question": f"{kind_title(kind)}: how fast, forward"
                   f"{' and backward' if len(OP_KINDS[kind].passes) > 1 else ''}?",
                   "blocks": kind_section(a, kind), "figure": KIND_FIGURE.format(kind)} for kind in a.kinds]
    if has_inference(a):  # after the op kinds' sections, before the peaks
        at = next(i for i, q in enumerate(out) if q["id"] == "peak")
        out[at:at] = [{"id": "inference", "question": INFERENCE_QUESTION, "blocks": inference(a), "figure": None}]
    return out


INFERENCE_QUESTION = "Inference: sparse and int8"
