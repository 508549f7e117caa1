"""History across runs (asv-style): when the results hold several runs of one machine and framework that differ in
framework version, opbench commit or settings, time per case across those runs and comparisons between two of them.

A *point* of the history is one configuration of a (machine, framework): the framework's versions read back, the
opbench commit and the recorded environment knobs and timing settings. Runs with the same configuration (shards, a
resumed run, jax.jsonl and jax-ynn-off.jsonl of one main job) are one point. Points are ordered by when their first
run started. Of several records of one measurement in a point, the one that supersedes the others stands (the one
policy of ``suite.results``). Each comparison reuses ``suite.compare`` (ratio of medians with a bootstrap CI, the
verdict of the one same-speed band ``SAME_BAND``), so a history table and ``python -m suite compare`` give the same
numbers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from reports.palette import Palette
from suite.compare import compare_pair, sorted_pairs
from suite.ops import PASS_LABELS, PASSES, pass_label
from suite.results import SAME_BAND, Measurement, MeasurementKey, ResultSet, RunHeader, WorkerInfo
from suite.stats import format_seconds

MAX_ALL_PAIRS = 5  # up to this many points every pair gets a table; beyond, consecutive pairs and each vs the last


@dataclass
class Point:
    """One configuration of a framework on a machine, and its measurements by identity (of several records of one
    identity, the one that supersedes the others: ``Measurement.supersedes``, the policy of ``ResultSet.latest``)."""

    facts: frozenset[str]
    started: str
    measurements: dict[MeasurementKey, Measurement] = field(default_factory=dict)
    label: str = ""

    def add(self, m: Measurement) -> None:
        if m.key not in self.measurements or m.supersedes(self.measurements[m.key]):
            self.measurements[m.key] = m


@dataclass
class Track:
    """The history of one framework on one machine: its points in time order."""

    machine: str
    backend: str
    points: list[Point]

    @property
    def keys(self) -> list[MeasurementKey]:
        """Measurement identities held by at least two points, in first-seen order."""
        seen: dict[MeasurementKey, int] = {}
        for point in self.points:
            for key in point.measurements:
                seen[key] = seen.get(key, 0) + 1
        return [key for key, n in seen.items() if n > 1]


def _facts(header: RunHeader | None, worker: WorkerInfo | None) -> frozenset[str]:
    env = header.environment if header else None
    facts = {f"{name} {version}" for name, version in (worker.versions if worker else {}).items()}
    commit = str(env.commit if env else None)[:10]
    facts.add(f"opbench {commit}{' (dirty)' if env and env.dirty else ''}")
    facts |= {f"{name}={value}" for name, value in (env.knobs if env else {}).items()}
    facts |= {f"timing {name}={value}" for name, value in ((header.timing if header else None) or {}).items()}
    return frozenset(facts)


def tracks(results: ResultSet) -> list[Track]:
    """Every (machine, framework) whose runs form two or more points sharing at least one measurement."""
    headers = {h.run_id: h for h in results.headers}
    workers = {(w.run_id, w.backend, w.device): w for w in results.workers}
    points: dict[tuple[str, str], dict[frozenset[str], Point]] = {}
    for m in results.measurements:
        header = headers.get(m.run_id)
        facts = _facts(header, workers.get((m.run_id, m.key.backend, m.key.device)))
        machine = header.environment.machine if header else "unknown machine"
        created = header.created if header else ""
        point = points.setdefault((machine, m.key.backend), {}).setdefault(facts, Point(facts, created))
        point.started = min(point.started, created)
        point.add(m)
    out = []
    for (machine, backend), by_facts in points.items():
        ordered = sorted(by_facts.values(), key=lambda p: p.started)
        track = Track(machine, backend, ordered)
        if len(ordered) < 2 or not track.keys:
            continue
        shared = frozenset.intersection(*(p.facts for p in ordered))
        for number, point in enumerate(ordered, start=1):
            differing = sorted(point.facts - shared)
            point.label = f"#{number} " + (" · ".join(differing) or "same configuration")
        out.append(track)
    return out


def pairs_to_compare(n: int) -> list[tuple[int, int]]:
    """Which (base, new) point indexes get a table: all pairs when few, else consecutive ones and each vs the last;
    the last two first (the default shown)."""
    if n <= MAX_ALL_PAIRS:
        chosen = list(itertools.combinations(range(n), 2))
    else:
        chosen = sorted({(i, i + 1) for i in range(n - 1)} | {(i, n - 1) for i in range(n - 1)})
    return sorted(chosen, key=lambda pair: pair != (n - 2, n - 1))


def _describe(m: Measurement) -> tuple[str, str]:
    kind = m.op.kind if m.op else ""
    return m.case, f"{pass_label(kind, m.key.pass_)} · {m.key.dtype} · {m.key.device} · {m.key.variant}"


def comparison_table(track: Track, base: int, new: int) -> dict[str, Any]:
    """Every measurement of both points: times, time new/base with its 95% CI, verdict (``suite.compare``'s pairs,
    in its order, with the one same-speed band ``SAME_BAND``)."""
    a, b = track.points[base], track.points[new]
    pairs = sorted_pairs([compare_pair(a.measurements[key], b.measurements[key], SAME_BAND) for key in a.measurements
                          if key in b.measurements])
    rows = []
    for p in pairs:
        case, what = _describe(p.base)
        base_s, new_s = p.base.median, p.new.median
        rows.append({"case": case, "what": what, "base": format_seconds(base_s), "new": format_seconds(new_s),
                     "base_s": base_s if np.isfinite(base_s) else "inf",  # sort keys: a failed one last
                     "new_s": new_s if np.isfinite(new_s) else "inf",
                     "ratio": f"{p.ratio:.3f}" if np.isfinite(p.ratio) else "",
                     "ci": f"{p.low:.3f}–{p.high:.3f}" if np.isfinite(p.low) else "",
                     "verdict": p.verdict, "reason": p.reason})
    counts = {v: sum(p.verdict == v for p in pairs) for v in ("slower", "faster", "same", "not compared")}
    return {"id": f"{base}-{new}", "base": a.label, "new": b.label, "rows": rows,
            "counts": ", ".join(f"{n} {v}" for v, n in counts.items() if n)}


def series(track: Track) -> list[dict[str, Any]]:
    """Per measurement held by two or more points: its median in each point (None where absent or not ok)."""
    out = []
    for key in track.keys:
        first = next(p.measurements[key] for p in track.points if key in p.measurements)
        case, what = _describe(first)
        medians = []
        for point in track.points:
            m = point.measurements.get(key)
            medians.append(m.median if m is not None and m.ok and m.median > 0 else None)
        out.append({"case": case, "what": what, "pass": key.pass_, "medians": medians,
                    "cells": [format_seconds(v) if v else "–" for v in medians]})
    return out


def figure(track: Track, rows: list[dict[str, Any]], palette: Palette | None = None) -> Figure | None:
    """Time of each case relative to its first measured point, per pass (thin lines, in the framework's colour of
    every figure: the report's ``palette``), with the geometric mean."""
    passes = [p for p in PASSES if any(r["pass"] == p for r in rows)]
    if not passes:
        return None
    n = len(track.points)
    colour = (palette or Palette.of([track.backend])).color(track.backend)
    fig = Figure(figsize=(min(3.6 * len(passes), 14), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(passes), sharey=True, squeeze=False)[0]
    for ax, pass_ in zip(axes, passes, strict=True):
        relative = []
        for r in (r for r in rows if r["pass"] == pass_):
            values = np.array([v if v else np.nan for v in r["medians"]], dtype=float)
            finite = values[np.isfinite(values)]
            if len(finite) < 2:
                continue
            relative.append(values / finite[0])
            ax.plot(range(n), relative[-1], color=colour, alpha=0.35, linewidth=1, marker=".")
        if relative:
            logs = np.log(np.vstack(relative))
            counts = np.isfinite(logs).sum(axis=0)
            geomean = np.exp(np.nansum(logs, axis=0) / np.where(counts, counts, 1))
            geomean[counts == 0] = np.nan
            ax.plot(range(n), geomean, color="black", linewidth=2.2, marker="o", label="geometric mean")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(n), [f"#{i + 1}" for i in range(n)])
        ax.set_title(PASS_LABELS[pass_])
        ax.set_xlabel("run (see the list above)")
    axes[0].set_yscale("log")  # shared by every panel; set once, after plotting, so no panel resets the ticks
    axes[0].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel("time per call ÷ first run's (log)")
    axes[0].legend(loc="best", fontsize="small")
    return fig


def section(results: ResultSet, figures_dir: Path, palette: Palette | None = None) -> list[dict[str, Any]]:
    """The history section's content, one entry per track; empty (no section) for single-run results."""
    out = []
    for number, track in enumerate(tracks(results), start=1):
        rows = series(track)
        fig = figure(track, rows, palette)
        src = None
        if fig is not None:
            figures_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(figures_dir / f"history-{number}.png", dpi=100)
            src = f"{figures_dir.name}/history-{number}.png"
        n = len(track.points)
        out.append({"id": f"history-{number}", "machine": track.machine, "backend": track.backend,
                    "threshold": f"1 ± {100 * SAME_BAND:g}%",
                    "points": [p.label for p in track.points], "figure": src, "series": rows,
                    "comparisons": [comparison_table(track, a, b) for a, b in pairs_to_compare(n)]})
    return out
