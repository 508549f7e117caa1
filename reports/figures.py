"""Pure functions: ready tables (from ``reports.analysis``) → matplotlib Figures, or None when there is nothing
to draw. Each framework has ONE colour everywhere (the report's ``reports.palette.Palette``: Okabe-Ito, colour-blind
safe); every axis says its unit; op kinds are drawn with the markers their ``suite.ops`` class declares.

Comparisons use each framework's fastest variant (``best`` rows of the pooled frame); all variants are in the
report's tables. Nothing is computed here beyond what a plot needs (units, positions).
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # explicit: figures are rendered to files, never to a screen

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, LogLocator, NullFormatter

from reports import peak
from reports.analysis import CONFIG
from reports.palette import Palette
from reports.summary import speedup_text
from suite.ops import PASS_LABELS, PASSES, pass_label, varieties
from suite.results import SAME_BAND

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)


def markers() -> dict[str, str]:
    """Op kind or variety → its matplotlib marker, as ``suite.ops`` declares it (registry order)."""
    return {name: marker for name, (_, marker) in varieties().items()}


def _frameworks(backends: pd.Series, palette: Palette | None) -> tuple[list[str], dict[str, str]]:
    """The frameworks present in the report's order, and their colours (without a palette: of these alone)."""
    palette = palette or Palette.of(backends.dropna())
    return palette.ordered(backends.dropna()), dict(palette.colors)


def _pass_title(frame: pd.DataFrame, pass_: str) -> str:
    """A pass's name for a panel: the kind's own (attention's dQ+dK+dV) when the panel holds one op kind."""
    kinds = set(frame["op"].dropna()) if "op" in frame else set()
    return pass_label(kinds.pop(), pass_) if len(kinds) == 1 else PASS_LABELS[pass_]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def tidy_log_ticks(fig: Figure) -> Figure:
    """Log axes spanning more than two decades label only the decades (minor labels such as 3×10¹ would overlap);
    shorter ones also label 2× and 5×, so that no axis is left with a single labelled tick."""
    for ax in fig.axes:
        for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                    (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            if scale != "log" or isinstance(axis.get_major_locator(), FixedLocator):  # ticks placed on purpose
                continue
            low, high = sorted(limits)
            if low > 0 and math.log10(high / low) > 2:
                axis.set_minor_formatter(NullFormatter())
            else:
                axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(3, 3)))
    return fig


def _best(frame: pd.DataFrame) -> pd.DataFrame:
    """Each framework's fastest ok variant per comparison key."""
    if frame.empty or "best" not in frame:
        return frame.iloc[0:0]
    return frame[frame["best"] & frame["status"].eq("ok")].copy()


def panel_labels(frame: pd.DataFrame) -> pd.Series:
    """The configuration (machine, device, dtype, math, threads, L2), naming only what varies; a single panel is ''."""
    parts = [c for c in CONFIG if c in frame and frame[c].nunique(dropna=False) > 1]
    if frame.empty or not parts:
        return pd.Series("", index=frame.index, dtype=object)
    words = {"threads": lambda v: f"{v} thread{'s' if v != 1 else ''}", "l2": lambda v: f"{v} L2"}
    return frame[parts].apply(lambda row: " · ".join(words.get(c, str)(row[c]) for c in parts), axis=1)


def flop_unit(tflops: pd.Series) -> tuple[float, str]:
    """Scale factor from TFLOP/s and the unit name: GFLOP/s when everything is below 1 TFLOP/s."""
    return (1e3, "GFLOP/s") if tflops.max(skipna=True) < 1 else (1.0, "TFLOP/s")


def time_unit(seconds: pd.Series) -> tuple[float, str]:
    top = seconds.max(skipna=True)
    for scale, unit in ((1.0, "s"), (1e-3, "ms")):
        if top >= 10 * scale:
            return 1 / scale, unit
    return 1e6, "µs"


def _legend(fig: Figure, backends: list[str], colors: dict[str, str], extra: list[Line2D] | None = None) -> None:
    handles = [Line2D([], [], color=colors[b], marker="o", linestyle="", label=b) for b in backends]
    handles += extra or []
    columns = max(1, min(len(handles), int(fig.get_figwidth() // 1.5)))  # fit the legend to the figure width
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False)


def _dodged(ax: Axes, data: pd.DataFrame, categories: list[str], value: str, low: str, high: str,
            backends: list[str], colors: dict[str, str], horizontal: bool = True) -> None:
    """One point with its CI per category and framework, frameworks side by side."""
    width = 0.7 / max(len(backends), 1)
    for i, backend in enumerate(backends):
        part = data[data["backend"] == backend]
        pos = np.array([categories.index(c) for c in part["category"]], dtype=float) + (i - (len(backends) - 1) / 2) \
            * width
        err = np.vstack([(part[value] - part[low]).clip(lower=0).fillna(0),
                         (part[high] - part[value]).clip(lower=0).fillna(0)])
        kwargs = {"color": colors[backend], "markersize": 4, "elinewidth": 1, "capsize": 2, "linestyle": ""}
        for marker in (part["marker"] if "marker" in part else pd.Series("o", index=part.index)).unique():
            mask = ((part["marker"] == marker) if "marker" in part else pd.Series(True, index=part.index)).to_numpy()
            if horizontal:
                ax.errorbar(part[value][mask], pos[mask], xerr=err[:, mask], marker=marker, **kwargs)
            else:
                ax.errorbar(pos[mask], part[value][mask], yerr=err[:, mask], marker=marker, **kwargs)


def _passes(frame: pd.DataFrame) -> list[str]:
    return [p for p in PASSES if p in set(frame["pass"])]


def throughput(frame: pd.DataFrame, palette: Palette | None = None, max_cases: int = 40,
               title: str = "") -> Figure | None:
    """(a) Achieved FLOP/s per case by framework (95% CI), one column per pass, one row per machine/device/dtype.

    With more than ``max_cases`` cases, FLOP/s is plotted against the case's FLOPs instead of one row per case.
    """
    best = _best(frame)
    if best.empty:
        return None
    best["panel"] = panel_labels(best)
    scale, unit = flop_unit(best["tflops_high"].fillna(best["tflops"]))
    passes, panels = _passes(best), sorted(best["panel"].unique())
    backends, colors = _frameworks(best["backend"], palette)
    cases = best.sort_values(["kind", "flops"])["case"].drop_duplicates().tolist()
    per_case = len(cases) <= max_cases
    height = (0.22 * len(cases) + 1.2) if per_case else 3.2
    fig = _figure(3.2 * len(passes) + (2.5 if per_case else 0.5), height * len(panels) + 0.8)
    axes = fig.subplots(len(panels), len(passes), squeeze=False, sharex=True, sharey=True)
    for r, panel in enumerate(panels):
        for c, pass_ in enumerate(passes):
            ax, data = axes[r][c], best[(best["panel"] == panel) & (best["pass"] == pass_)].copy()
            for column in ("tflops", "tflops_low", "tflops_high"):
                data[column] = data[column] * scale
            if per_case:
                data["category"] = data["case"]
                _dodged(ax, data, cases, "tflops", "tflops_low", "tflops_high", backends, colors)
                ax.set_yticks(range(len(cases)), cases)
                ax.set_ylim(len(cases) - 0.5, -0.5)
                ax.set_xlabel(f"achieved {unit} (log)")
            else:
                for backend in backends:
                    part = data[data["backend"] == backend]
                    ax.scatter(part["flops"], part["tflops"], s=12, color=colors[backend], alpha=0.8)
                ax.set_xscale("log")
                ax.set_xlabel("FLOPs per call (log)")
                ax.set_ylabel(f"achieved {unit}")
            ax.set_xscale("log") if per_case else ax.set_yscale("log")
            ax.set_title(" · ".join(filter(None, [_pass_title(best, pass_), panel])), fontsize=9)
    _legend(fig, backends, colors)
    fig.suptitle("Achieved throughput per case (fastest measured variant of each framework; bars: 95% CI)")
    return fig


def speedup_heatmap(frame: pd.DataFrame, baseline: str = "torch", palette: Palette | None = None) -> Figure | None:
    """(b) Speedup over the baseline (time of baseline / time of framework): cases × frameworks, one panel per pass.

    Cells read "1.5× faster" or "3.6× slower"; a trailing "≈" marks a CI that does not exclude 1 ± SAME_BAND (no
    clear difference: the verdict "same"). The baseline's own column (all 1×) is left out.
    """
    best = _best(frame).dropna(subset=["speedup"])
    if best.empty or best["backend"].nunique() < 2:
        return None
    best = best[best["backend"] != baseline].copy()
    best["panel"] = panel_labels(best)
    best["text"] = best["speedup"].map(speedup_text) + best["speedup_verdict"].map({"same": " ≈"}).fillna("")
    passes, panels = _passes(best), sorted(best["panel"].unique())
    backends, _ = _frameworks(best["backend"], palette)
    cases = best.sort_values(["kind", "flops"])["case"].drop_duplicates().tolist()
    row_h = 0.24 if len(cases) <= 60 else 0.16
    fig = _figure(1.3 * len(backends) * len(passes) + 4.0, (row_h * len(cases) + 1.4) * len(panels) + 0.6)
    axes = fig.subplots(len(panels), len(passes), squeeze=False)
    # colour range: the 90th percentile of |log2 speedup|, at least 1.25× and at most 8×, so that a few extreme cases
    # do not wash out the rest (cells beyond it take the end colour; their text gives the value)
    limit = float(np.clip(np.nanpercentile(np.abs(np.log2(best["speedup"])), 90), math.log2(1.25), 3.0))
    for r, panel in enumerate(panels):
        for c, pass_ in enumerate(passes):
            data = best[(best["panel"] == panel) & (best["pass"] == pass_)]
            values = np.log2(data.pivot_table(index="case", columns="backend", values="speedup")
                             .reindex(index=cases, columns=backends))
            text = data.pivot_table(index="case", columns="backend", values="text", aggfunc="first") \
                .reindex(index=cases, columns=backends).fillna("")
            sns.heatmap(values, ax=axes[r][c], cmap="vlag_r", center=0, vmin=-limit, vmax=limit,
                        annot=text if len(cases) <= 60 else False, fmt="", annot_kws={"fontsize": 7},
                        cbar=c == len(passes) - 1, yticklabels=c == 0,
                        cbar_kws={"label": f"speedup over {baseline} (log₂; blue: faster)",
                                  "format": "{x:.2g}", "ticks": np.linspace(-limit, limit, 5)})
            if c == len(passes) - 1:
                colorbar = axes[r][c].collections[0].colorbar
                colorbar.set_ticklabels([f"{2 ** t:.2g}×" for t in np.linspace(-limit, limit, 5)])
            axes[r][c].set_title(" · ".join(filter(None, [_pass_title(best, pass_), panel])), fontsize=9)
            axes[r][c].set_xlabel("framework")
            axes[r][c].set_ylabel("case" if c == 0 else "")
    fig.suptitle(f"Speedup over {baseline} (×, >1 = faster than {baseline}; ≈ = 95% CI within 1 ± "
                 f"{100 * SAME_BAND:g}%)")
    return fig


def roofline(frame: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(c) Achieved FLOP/s against arithmetic intensity (FLOPs / minimum bytes), with the peak roofs."""
    best = _best(frame).dropna(subset=["tflops", "intensity"])
    if best.empty:
        return None
    best["panel"] = panel_labels(best)
    panels = sorted(best["panel"].unique())
    backends, colors = _frameworks(best["backend"], palette)
    tops = pd.concat([best["tflops"], best.get("peak_theoretical_tflops", pd.Series(dtype=float))])
    scale, unit = flop_unit(tops)
    fig = _figure(6.0 * len(panels), 4.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xs = np.logspace(math.log10(best["intensity"].min() / 2), math.log10(best["intensity"].max() * 2), 100)
    for ax, panel in zip(axes, panels, strict=True):
        data = best[best["panel"] == panel]
        for (backend, kind), part in data.groupby(["backend", "kind"]):
            ax.scatter(part["intensity"], part["tflops"] * scale, color=colors[backend],
                       marker=markers().get(kind, "o"), s=18, alpha=0.8)
        theo, gbps = data["peak_theoretical_tflops"].max(), data["bandwidth_gbps"].max()
        measured = data["measured_tflops"].max() if "measured_tflops" in data else math.nan
        notes = []
        if np.isfinite(theo):
            roof = np.minimum(theo, xs * gbps / 1e3) if np.isfinite(gbps) else np.full_like(xs, theo)
            ax.plot(xs, roof * scale, color="0.3", linestyle="--", linewidth=1)
            notes.append(f"theoretical peak {theo * scale:.3g} {unit}")
            notes.append(f"memory roof {gbps:.3g} GB/s" if np.isfinite(gbps) else
                         "no bandwidth roof (memory bandwidth not measured)")
        else:
            notes.append("theoretical peak unknown")
        if np.isfinite(measured):
            ax.axhline(measured * scale, color="0.3", linestyle=":", linewidth=1)
            notes.append(f"measured peak {measured * scale:.3g} {unit}")
        ax.text(0.98, 0.02, "\n".join(notes), transform=ax.transAxes, va="bottom", ha="right", fontsize=7,
                color="0.25", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte, minimum bytes; log)",
               ylabel=f"achieved {unit} (log)", title=panel or "all passes")
    extra = [Line2D([], [], color="0.5", marker=m, linestyle="", label=k) for k, m in markers().items()
             if k in set(best["kind"])]
    extra += [Line2D([], [], color="0.3", linestyle="--", label="theoretical roof"),
              Line2D([], [], color="0.3", linestyle=":", label="measured peak")]
    _legend(fig, backends, colors, extra)
    fig.suptitle("Roofline: every pass of every case\n(fastest measured variant of each framework)")
    return fig


def pass_ratio(ratios: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(d) Backward time / forward time per case (dots) and their geometric mean (bar: 95% CI over cases)."""
    data = ratios[ratios["best"]].copy() if not ratios.empty else ratios
    if data.empty:
        return None
    data["panel"] = panel_labels(data)
    panels = sorted(data["panel"].unique())
    backends, colors = _frameworks(data["backend"], palette)
    dodge = (0.8 - 0.8 / len(backends)) if len(backends) > 1 else False  # the stripplot's hue offsets
    whiches = [w for w in ("backward_data", "backward_weight", "backward") if w in set(data["which"])]
    fig = _figure(max(4.5, 1.4 * len(whiches) * len(backends)) * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        part = data[data["panel"] == panel].assign(label=lambda d: d["which"].map(PASS_LABELS))
        labels = [PASS_LABELS[w] for w in whiches]
        sns.stripplot(part, x="label", y="ratio", hue="backend", order=labels, hue_order=backends,
                      palette=colors, dodge=True, alpha=0.45, size=4, ax=ax,
                      legend=False, log_scale=True)
        sns.pointplot(part, x="label", y="ratio", hue="backend", order=labels, hue_order=backends,
                      palette=colors, dodge=dodge, linestyle="none",
                      estimator="mean", errorbar=("ci", 95), markers="_",
                      markersize=14, ax=ax, legend=False)
        for i, which in enumerate(whiches):
            flop = part.loc[part["which"] == which, "flop_ratio"].median()
            ax.hlines(flop, i - 0.45, i + 0.45, color="0.3", linestyle="--", linewidth=1)
        ax.set(xlabel="", ylabel="time of pass / time of forward (×, log)", title=panel or None)
    _legend(fig, backends, colors, [Line2D([], [], color="0.3", linestyle="--", label="FLOP ratio (same FLOP/s)"),
                            Line2D([], [], color="0.3", marker="_", markersize=12, linestyle="",
                                   label="geometric mean, 95% CI")])
    fig.suptitle("Backward vs forward: dots are cases, bars the geometric mean over cases")
    return fig


def conv_vs_gemm(frame: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(e) Why is a conv slower than a dense layer of the same input size? Forward pass only.

    Left: FLOPs per input element (a dense layer does 2·N; a conv about 2·K·R·S: R·S·K/N times more). Middle: time
    per call of the seed cases. Right: every forward case's FLOP/s against its FLOPs, GEMM vs conv.
    """
    fwd = _best(frame)
    fwd = fwd[fwd["pass"] == "forward"]
    seed = fwd[fwd["tags"].map(lambda t: "seed" in t).astype(bool)].copy()
    both = fwd["kind"].isin(["gemm"]).any() and fwd["kind"].isin(["conv2d", "depthwise"]).any()
    if seed.empty and not both:
        return None
    backends, colors = _frameworks(fwd["backend"], palette)
    panels = (2 if not seed.empty else 0) + (1 if both else 0)
    fig = _figure(5.0 * panels, 4.4)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if not seed.empty:
        cases = seed.sort_values("flops")["case"].drop_duplicates().tolist()
        facts = seed.drop_duplicates("case").set_index("case").loc[cases]
        per_input = facts["flops"] / facts["input_elements"]
        ax = axes.pop(0)
        ax.barh(cases, per_input, color=["0.55" if k == "gemm" else "0.25" for k in facts["kind"]])
        for y, (value, flops) in enumerate(zip(per_input, facts["flops"], strict=True)):
            ax.text(value, y, f" {value:,.0f}  ({flops / 1e6:.2f} MFLOP)", va="center", fontsize=7)
        ax.set(xlabel="forward FLOPs per input element", title="work per input value (dark: conv)")
        ax.invert_yaxis()
        ax.set_xlim(0, per_input.max() * 1.6)
        ax = axes.pop(0)
        scale, unit = time_unit(seed["ci_high_s"].fillna(seed["median_s"]))
        seed = seed.assign(category=seed["case"], t=seed["median_s"] * scale, lo=seed["ci_low_s"] * scale,
                           hi=seed["ci_high_s"] * scale, marker=seed["kind"].map(markers()).fillna("o"))
        _dodged(ax, seed, cases, "t", "lo", "hi", backends, colors)
        ax.set_yticks(range(len(cases)), cases)
        ax.set_ylim(len(cases) - 0.5, -0.5)
        ax.set_xlim(0, float(seed["hi"].fillna(seed["t"]).max()) * 1.1)
        ax.set(xlabel=f"time per call ({unit}; 95% CI)", title="seed cases: time per call")
    if both:
        ax = axes.pop(0)
        scale, unit = flop_unit(fwd["tflops"])
        for (backend, kind), part in fwd.groupby(["backend", "kind"]):
            ax.scatter(part["flops"], part["tflops"] * scale, color=colors[backend], marker=markers().get(kind, "o"),
                       s=20, alpha=0.8)
        ax.set(xscale="log", yscale="log", xlabel="forward FLOPs per call (log)", ylabel=f"achieved {unit} (log)",
               title="same work, different speed: GEMM vs conv")
    kinds = set(fwd["kind"]) if both else set(seed["kind"])
    extra = [Line2D([], [], color="0.5", marker=m, linestyle="", label=k) for k, m in markers().items() if k in kinds]
    _legend(fig, backends, colors, extra)
    fig.suptitle("Conv vs dense (GEMM) layer, forward")
    return fig


def scaling(points: pd.DataFrame, fits: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(f) Time per call against the swept size (log-log), inference (forward, solid) and training (forward +
    backward, dashed) side by side; hollow markers are points left out of the fit as overhead-bound."""
    if points.empty:
        return None
    points = points.assign(panel=panel_labels(points))
    sweeps = list(dict.fromkeys(points["sweep"]))
    panels = sorted(points["panel"].unique())
    backends, colors = _frameworks(points["backend"], palette)
    phases = [p for p in ("inference", "training") if p in set(points["phase"])]
    fig = _figure(4.6 * len(sweeps) * len(phases), 4.0 * len(panels) + 0.8)
    axes = fig.subplots(len(panels), len(sweeps) * len(phases), squeeze=False)
    scale, unit = time_unit(points["time_s"])
    for r, panel in enumerate(panels):
        for s_index, sweep in enumerate(sweeps):
            for p_index, phase in enumerate(phases):
                ax = axes[r][s_index * len(phases) + p_index]
                data = points[(points["panel"] == panel) & (points["sweep"] == sweep) & (points["phase"] == phase)]
                for backend in backends:
                    part = data[data["backend"] == backend].sort_values("size")
                    if part.empty:
                        continue
                    fit = fits[(fits["sweep"] == sweep) & (fits["backend"] == backend) & (fits["phase"] == phase)
                               & (panel_labels(fits) == panel)] if not fits.empty else fits
                    slope = fit["slope"].iloc[0] if len(fit) else math.nan
                    label = backend + (f" (slope {slope:.2f})" if np.isfinite(slope) else " (too few points)")
                    ax.plot(part["size"], part["time_s"] * scale, color=colors[backend], linewidth=1, label=label)
                    for fitted, face in ((True, colors[backend]), (False, "white")):
                        sel = part[part["fitted"] == fitted]
                        ax.errorbar(sel["size"], sel["time_s"] * scale, linestyle="", marker="o", markersize=5,
                                    color=colors[backend], markerfacecolor=face,
                                    yerr=[(sel["time_s"] - sel["low_s"]).clip(lower=0).fillna(0) * scale,
                                          (sel["high_s"] - sel["time_s"]).clip(lower=0).fillna(0) * scale])
                if data.empty:
                    continue
                sizes = sorted(data["size"].unique())
                flop_slope = data["flop_slope"].iloc[0]
                x0, x1, y1 = sizes[0], sizes[-1], data["time_s"].max() * scale
                ax.plot([x0, x1], [y1 * (x0 / x1) ** flop_slope, y1], color="0.5", linestyle="--", linewidth=1,
                        label=f"FLOPs ∝ size^{flop_slope:.0f}")
                ax.set(xscale="log", yscale="log", xlabel=f"{data['dimension'].iloc[0]} (log)",
                       ylabel=f"time per call ({unit}, log)",
                       title=" · ".join(filter(None, [sweep, phase, panel])))
                ax.set_xticks(sizes, [f"{v:g}" for v in sizes])
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.tick_params(axis="x", labelrotation=45)
                ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Scaling: time vs size; slope fitted over filled points (hollow: overhead-bound, left out)")
    return fig


def training_shares(networks: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(g) Share of a training step in forward, dX and dW per complete network and framework (stacked bars)."""
    train = networks[networks["phase"] == "training step"] if not networks.empty else networks
    if train.empty:
        return None
    train = train.loc[train.groupby([*CONFIG, "set", "backend"],
                                    dropna=False)["time_s"].idxmin()]
    train = train.assign(panel=panel_labels(train))
    train["label"] = train["name"].str.replace(" training step", "") + " · " + train["backend"] + \
        train["panel"].map(lambda p: f" · {p}" if p else "")
    train = train.sort_values(["panel", "name", "backend"], key=lambda c: c.map(
        {b: i for i, b in enumerate(_frameworks(train["backend"], palette)[0])}) if c.name == "backend" else c)
    fig = _figure(8.5, 0.45 * len(train) + 1.6)
    ax = fig.subplots()
    left = np.zeros(len(train))
    shades = {"forward": "#999999", "dX": "#56B4E9", "dW": "#E69F00"}
    for column, name in (("forward_share", "forward"), ("dx_share", "dX"), ("dw_share", "dW")):
        values = 100 * train[column].fillna(0).to_numpy()
        ax.barh(range(len(train)), values, left=left, color=shades[name], label=name, edgecolor="white")
        for y, (x, v) in enumerate(zip(left, values, strict=True)):
            if v >= 6:
                ax.text(x + v / 2, y, f"{v:.0f}%", ha="center", va="center", fontsize=7)
        left += values
    ax.set_yticks(range(len(train)), train["label"])
    ax.set_ylim(len(train) - 0.5, -0.5)
    ax.set(xlim=(0, 100), xlabel="share of the training step's measured time (%)")
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle("Training step: forward, dX and dW (measured layers only)")
    return fig


def network_rollup(networks: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(h) One panel per complete network layer set: Σ count × time over its layers per framework variant."""
    if networks.empty:
        return None
    data = networks.assign(panel=panel_labels(networks))
    data["title"] = data["name"] + data["panel"].map(lambda p: f"\n{p}" if p else "")
    titles = sorted(data["title"].unique())
    backends, colors = _frameworks(data["backend"], palette)
    scale, unit = time_unit(data["time_s"])
    data = data.assign(t=data["time_s"] * scale, lo=data["low_s"] * scale, hi=data["high_s"] * scale,
                       category=data["variant"])
    columns = min(len(titles), 3)
    rows = math.ceil(len(titles) / columns)
    height = 0.35 * data.groupby("title")["variant"].nunique().max() + 1.4
    fig = _figure(4.6 * columns, height * rows + 0.8)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, title in zip(axes, titles, strict=False):
        part = data[data["title"] == title]
        cats = sorted(part["category"].unique())
        _dodged(ax, part, cats, "t", "lo", "hi", backends, colors)
        ax.set_yticks(range(len(cats)), cats)
        ax.set_ylim(len(cats) - 0.5, -0.5)
        ax.set_xlim(0, float(part["hi"].fillna(part["t"]).max()) * 1.1)
        ax.set_xlabel(f"Σ layer time × count ({unit})")
        ax.set_title(title, fontsize=9)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    _legend(fig, backends, colors)
    fig.suptitle("Complete networks (measured layers only)\nper framework variant")
    return fig


def whole_steps(steps: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(j) Where a training step's time goes, per network and framework (its fastest step variant): left, the step
    as the sum of its measured layers and the remainder (bar: the step's 95% CI; where the layers timed alone take
    longer than the step, a tick marks the step; hatched: the layer set is incomplete, no split); right, the step's
    shares in forward (the inference pass), backward (forward+backward − inference, at most the step) and the update
    (step − forward+backward), each clipped at 0."""
    best = steps[steps["best"]] if not steps.empty else steps
    if best.empty:
        return None
    backends, colors = _frameworks(best["backend"], palette)
    best = best.assign(panel=panel_labels(best))
    best = best.sort_values(["panel", "network", "backend"], key=lambda c: c.map(
        {b: i for i, b in enumerate(backends)}) if c.name == "backend" else c)
    labels = (best["network"] + " · " + best["backend"] + best["panel"].map(lambda p: f" · {p}" if p else "")).tolist()
    scale, unit = time_unit(pd.concat([best["step_high_s"], best["layer_s"]]).fillna(best["step_s"].max()))
    fig = _figure(12.0, 0.5 * len(best) + 2.4)
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    ys = np.arange(len(best))
    complete = best["layers_status"].eq("complete").to_numpy()
    step, layers = best["step_s"].to_numpy() * scale, best["layer_s"].to_numpy() * scale
    shown = np.where(complete, np.minimum(layers, step), 0)
    left.barh(ys, shown, color="0.35", label="measured layers (Σ count × median)")
    left.barh(ys, np.where(complete, np.clip(step - layers, 0, None), 0), left=shown, color="0.75",
              label="remainder (step − layers)")
    if (~complete).any():
        left.barh(ys[~complete], step[~complete], color="white", edgecolor="0.5", hatch="//",
                  label="step; layer set incomplete")
    over = complete & (layers > step)
    if over.any():
        left.barh(ys[over], (layers - step)[over], left=step[over], color="white", edgecolor="0.35", hatch="xx",
                  label="layers timed alone beyond the step")
    left.errorbar(step, ys, xerr=[(best["step_s"] - best["step_low_s"]).clip(lower=0).fillna(0) * scale,
                                  (best["step_high_s"] - best["step_s"]).clip(lower=0).fillna(0) * scale],
                  fmt="|", color="black", markersize=12, capsize=3, label="training step (95% CI)")
    ends = np.fmax(best["step_high_s"].fillna(best["step_s"]).to_numpy() * scale, np.where(complete, layers, 0))
    for y, (end, ratio, ok) in enumerate(zip(ends, best["layer_ratio"], complete, strict=True)):
        if ok and np.isfinite(ratio):
            left.text(end, y, f"  layers {100 * ratio:.0f}%", va="center", fontsize=7)
    left.set_yticks(ys, labels)
    left.set_ylim(len(best) - 0.5, -0.5)
    left.set_xlim(0, float(np.nanmax(ends)) * 1.3)
    left.set(xlabel=f"time per training step ({unit})", title="step = measured layers + remainder")
    forward = best["forward_share"].to_numpy()
    backward = np.minimum(1 - best["update_share"].to_numpy(), 1) - forward  # a negative update draws as none
    start = np.zeros(len(best))
    for values, name, shade in ((forward, "forward (inference, eval mode)", "#999999"),
                                (backward, "backward (forward+backward − inference)", "#56B4E9"),
                                (best["update_share"].to_numpy(), "update (step − forward+backward)", "#E69F00")):
        part = 100 * np.nan_to_num(np.clip(values, 0, None))
        right.barh(ys, part, left=start, color=shade, label=name, edgecolor="white")
        for y, (x, v) in enumerate(zip(start, part, strict=True)):
            if v >= 6:
                right.text(x + v / 2, y, f"{v:.0f}%", ha="center", va="center", fontsize=7)
        start += part
    right.set(xlim=(0, 100), xlabel="share of the training step (%)", title="forward, backward, update")
    handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=7)
    for tick, backend in zip(left.get_yticklabels(), best["backend"], strict=True):
        tick.set_color(colors[backend])
    fig.suptitle("Where does a training step's time go? (each framework's fastest step variant)")
    return fig


def first_call(frame: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """(i) Compile + first-call time per framework and mode (dots: cases and passes; bar: median)."""
    data = frame.dropna(subset=["first_call_s"]) if "first_call_s" in frame else frame.iloc[0:0]
    data = data[data["first_call_s"] > 0]
    if data.empty:
        return None
    data = data.assign(label=data["backend"] + "\n" + data["mode"].astype(str))
    backends, colors = _frameworks(data["backend"], palette)
    labels = [lab for b in backends for lab in sorted(data.loc[data["backend"] == b, "label"].unique())]
    fig = _figure(max(6.5, 1.1 * len(labels) + 1), 4.2)
    ax = fig.subplots()
    by_label = {lab: colors[lab.split("\n")[0]] for lab in labels}
    sns.stripplot(data, x="label", y="first_call_s", order=labels, hue="label", palette=by_label, alpha=0.5, size=3,
                  ax=ax, legend=False, log_scale=True)
    sns.pointplot(data, x="label", y="first_call_s", order=labels, hue="label", palette=by_label, estimator="median",
                  errorbar=None, markers="_", markersize=18, linestyle="none", ax=ax, legend=False)
    ax.set(xlabel="framework and mode", ylabel="compile + first call (s, log)")
    fig.suptitle("First call (tracing, compilation, kernel selection)\ndots: measurements; bar: median")
    return fig


def bus_bandwidth(frame: pd.DataFrame, palette: Palette | None = None) -> Figure | None:
    """A collective's bus bandwidth (nccl-tests' busbw) against its message size, one line per framework (its
    colour) and rank count (its line style), one panel per configuration; dotted: the memory bandwidth (a CPU's
    measured copy, ``--bandwidth``; a GPU's datasheet figure), where there is one; dash-dot: the link bandwidth per
    direction, labelled with its basis (NVML's NVLink or PCIe figure for GPU ranks, or ``run --link-bandwidth``),
    where there is one."""
    best = _best(frame)
    best = best[best["pass"].eq("forward") & best["bus_factor"].gt(0)] if not best.empty else best
    if best.empty:
        return None
    best["panel"] = panel_labels(best)
    best["busbw"] = best["gbps"] * best["bus_factor"]
    panels = sorted(best["panel"].unique())
    backends, colors = _frameworks(best["backend"], palette)
    counts = sorted(best["ranks"].dropna().unique())
    styles = dict(zip(counts, ["-", "--", ":", "-."] * (len(counts) // 4 + 1), strict=False))
    fig = _figure(6.5, 3.6 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        data = best[best["panel"] == panel]
        for backend in backends:
            for ranks, part in data[data["backend"].eq(backend)].groupby("ranks"):
                part = part.sort_values("bytes")
                ax.plot(part["bytes"], part["busbw"], marker="X", linestyle=styles[ranks], color=colors[backend],
                        label=f"{backend}, {int(ranks)} ranks")
        roof = data["bandwidth_gbps"].max()
        if np.isfinite(roof):
            label = data.loc[data["bandwidth_gbps"].idxmax(), "bandwidth_basis"].split(":")[0]
            ax.axhline(roof, color="0.4", linestyle=":", label=f"memory {peak.gb_per_s(roof)} ({label})")
        link = data["link_gbps"].max()
        if np.isfinite(link):
            basis = data.loc[data["link_gbps"].idxmax(), "link_basis"]
            ax.axhline(link, color="0.15", linestyle="-.",
                       label=textwrap.fill(f"link {peak.gb_per_s(link)} per direction ({basis})", 70))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("message size, bytes (log)")
        ax.set_ylabel("bus bandwidth, GB/s (log)")
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Bus bandwidth by message size (slowest rank's time)", fontsize=10)
    return fig
