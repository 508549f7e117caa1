"""Compare two sets of results (an upgrade, a new machine, a flag change): per measurement, time(NEW) / time(BASE).

Measurements pair by their identity (``suite.results.KEY_FIELDS``: case × backend × device × dtype × pass × mode,
layout, math, threads, options). Each ratio of medians gets a bootstrap CI from the raw per-call block times
(``suite.stats.ratio_ci``), and a verdict as asv and pyperf give one: ``slower`` when the whole CI lies above
1 + threshold, ``faster`` when it lies below 1 - threshold, else ``same``. A pair whose status is not ok or whose
numerical check failed on either side is reported as such and not compared. Framework-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import gmean

from suite.results import KEY_DEFAULTS, KEY_FIELDS, Results, measurement_key
from suite.stats import format_seconds, median_ci, ratio_ci

DEFAULT_THRESHOLD = 0.05
VERDICTS = ("slower", "faster", "same", "not compared")
# Recorded facts that change from run to run without changing what was measured.
VOLATILE = {"record", "schema", "run_id", "created", "command", "pid", "devices", "environment.load_average",
            "environment.cpu.mhz"}


def per_call_times(record: dict[str, Any]) -> np.ndarray:
    """Seconds per call of every timed block (block time / calls per block)."""
    calls = record.get("calls_per_block") or (record.get("stats") or {}).get("calls_per_block") or 1
    return np.asarray([float(t) for t in record.get("block_times") or []], dtype=float) / calls


def problem(record: dict[str, Any]) -> str | None:
    """Why a measurement cannot be compared (not ok, failed check, no block times), or None."""
    if record["status"] != "ok":
        return record["status"] + (f": {record['reason']}" if record.get("reason") else "")
    if (record.get("check") or {}).get("status") == "fail":
        return "numerical check failed"
    if not len(per_call_times(record)):
        return "no block times recorded"
    return None


def variant(record: dict[str, Any]) -> str:
    """Mode, layout, math, threads, L2 cache state and options of a measurement, as one label."""
    options = ",".join(f"{k}={v}" for k, v in sorted((record.get("options") or {}).items()))
    l2 = f"{record['l2']} L2" if record.get("l2") not in (None, "warm") else ""  # warm is the default
    return " · ".join(str(part) for part in (record["mode"], record["layout"], record["math"],
                                             f"{record.get('threads')} threads", l2, options) if part)


@dataclass(frozen=True)
class Pair:
    """One measurement in both sets: the ratio time(new) / time(base) with its CI, or why it was not compared."""

    base: dict[str, Any]
    new: dict[str, Any]
    ratio: float = math.nan
    low: float = math.nan
    high: float = math.nan
    verdict: str = "not compared"
    reason: str = ""  # why not compared

    @property
    def label(self) -> str:
        m = self.base
        return f"{m['case']} · {m['backend']} · {m['pass']} · {m['dtype']} · {m['device']} · {variant(m)}"

    def slower_by_more_than(self, fraction: float) -> bool:
        """Significantly slower by more than ``fraction``: the whole CI lies above 1 + fraction."""
        return self.verdict != "not compared" and self.low > 1 + fraction

    def row(self) -> dict[str, Any]:
        """A flat record for CSV and JSON."""
        median = {side: (getattr(self, side).get("stats") or {}).get("median") for side in ("base", "new")}
        return {**{name: self.base.get(name, KEY_DEFAULTS.get(name)) for name in KEY_FIELDS if name != "options"},
                "options": ",".join(f"{k}={v}" for k, v in sorted((self.base.get("options") or {}).items())),
                "op": self.base.get("op"), "base_median_s": median["base"], "new_median_s": median["new"],
                "ratio": _number(self.ratio), "ratio_low": _number(self.low), "ratio_high": _number(self.high),
                "verdict": self.verdict, "reason": self.reason}


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compare_pair(base: dict[str, Any], new: dict[str, Any], threshold: float = DEFAULT_THRESHOLD) -> Pair:
    """The ratio of medians time(new) / time(base) with a bootstrap CI of the per-call times, and its verdict."""
    reasons = [f"{side}: {why}" for side, record in (("base", base), ("new", new)) if (why := problem(record))]
    if reasons:
        return Pair(base, new, reason="; ".join(reasons))
    samples = {"base": per_call_times(base), "new": per_call_times(new)}
    ratio, low, high = ratio_ci(samples["new"], samples["base"])
    # Too few blocks for a 95% CI of a median (the `few_blocks` flag): a bootstrap over them would be overconfident.
    few = [f"{side}: {len(times)} block{'s' * (len(times) != 1)}" for side, times in samples.items()
           if math.isnan(median_ci(times)[0])]
    if few:
        return Pair(base, new, ratio, reason=f"too few blocks for a confidence interval ({', '.join(few)})")
    verdict = "slower" if low > 1 + threshold else "faster" if high < 1 - threshold else "same"
    return Pair(base, new, ratio, low, high, verdict)


@dataclass
class Comparison:
    """Every pair, what only one side holds, and how the two sides' recorded environments differ."""

    pairs: list[Pair]
    only_base: list[dict[str, Any]]
    only_new: list[dict[str, Any]]
    environment: list[tuple[str, str, str]]  # (what, value in base, value in new) where they differ
    threshold: float = DEFAULT_THRESHOLD
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {v: n for v in VERDICTS if (n := sum(p.verdict == v for p in self.pairs))}

    def regressions(self, fraction: float) -> list[Pair]:
        """Pairs significantly slower by more than ``fraction``."""
        return [p for p in self.pairs if p.slower_by_more_than(fraction)]

    def broken(self) -> list[Pair]:
        """Pairs that were fine in base and are not in new (error, crash, timeout, failed check...)."""
        return [p for p in self.pairs if problem(p.base) is None and problem(p.new) is not None]

    def geomeans(self) -> list[dict[str, Any]]:
        """Geometric mean of the compared ratios per backend, device, dtype, op kind and pass."""
        groups: dict[tuple[str, ...], list[Pair]] = {}
        for p in self.pairs:
            if p.verdict != "not compared":
                m = p.base
                groups.setdefault((m["backend"], m["device"], m["dtype"], str(m.get("op")), m["pass"]), []).append(p)
        return [{"backend": b, "device": d, "dtype": t, "op": o, "pass": s, "pairs": len(ps),
                 "geomean": float(gmean([p.ratio for p in ps])),
                 "slower": sum(p.verdict == "slower" for p in ps), "faster": sum(p.verdict == "faster" for p in ps)}
                for (b, d, t, o, s), ps in sorted(groups.items())]


def _latest(records: Iterable[dict[str, Any]], side: str, warnings: list[str]) -> dict[str, dict[str, Any]]:
    """One measurement per key; a key measured more than once keeps the latest (with one warning per side)."""
    out: dict[str, dict[str, Any]] = {}
    repeated: list[str] = []
    for record in records:
        key = measurement_key(record)
        if key in out:
            repeated.append(f"{record['case']} ({record['backend']} {record['pass']})")
            if str(record.get("finished", "")) < str(out[key].get("finished", "")):
                continue
        out[key] = record
    if repeated:
        warnings.append(f"{side} holds {len(repeated)} measurements more than once (e.g. {repeated[0]}); the latest "
                        "of each is compared")
    return out


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix not in VOLATILE:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)


def recorded_facts(results: Results) -> dict[str, set[str]]:
    """Every recorded fact of the runs (environment, settings, framework versions and flags read back): values seen."""
    facts: dict[str, set[str]] = {}
    for header in results.headers:
        flat: dict[str, str] = {}
        _flatten(header, "", flat)
        for key, value in flat.items():
            facts.setdefault(key, set()).add(value)
    for worker in results.workers:
        flat = {}
        _flatten({"versions": worker.get("versions"), "flags": worker.get("flags")}, "", flat)
        for key, value in flat.items():
            facts.setdefault(f"{worker['backend']} on {worker['device']}: {key}", set()).add(value)
    return facts


def environment_differences(base: Results, new: Results) -> list[tuple[str, str, str]]:
    """Facts whose recorded values differ between the two sides (a fact recorded on one side only included)."""
    a, b = recorded_facts(base), recorded_facts(new)
    return [(key, ", ".join(sorted(a.get(key, {"–"}))), ", ".join(sorted(b.get(key, {"–"}))))
            for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]


def compare(base: Results, new: Results, threshold: float = DEFAULT_THRESHOLD) -> Comparison:
    """Pair the measurements of two result sets and compare each pair."""
    warnings: list[str] = []
    a, b = _latest(base.measurements, "BASE", warnings), _latest(new.measurements, "NEW", warnings)
    pairs = [compare_pair(a[key], b[key], threshold) for key in a if key in b]
    return Comparison(pairs, [m for key, m in a.items() if key not in b], [m for key, m in b.items() if key not in a],
                      environment_differences(base, new), threshold, warnings)


def no_overlap_reason(base: Results, new: Results) -> str:
    """Why two result sets share no measurement: the identity fields whose values do not meet."""
    differing = []
    for name in KEY_FIELDS:
        a = {json.dumps(m.get(name, KEY_DEFAULTS.get(name)), sort_keys=True) for m in base.measurements}
        b = {json.dumps(m.get(name, KEY_DEFAULTS.get(name)), sort_keys=True) for m in new.measurements}
        if a and b and not a & b:
            differing.append(f"{name} ({', '.join(sorted(a))} vs {', '.join(sorted(b))})")
    return "; they differ in " + ", ".join(differing) if differing else ""


# ------------------------------------------------------------------------------------------------ output
PAIR_COLUMNS = ("case", "backend", "pass", "dtype", "variant", "base", "new", "new/base", "95% CI", "verdict")


def pair_cells(p: Pair) -> list[str]:
    """The cells of one pair in the order of PAIR_COLUMNS, as text."""
    m = p.base
    times = [format_seconds(float((r.get("stats") or {}).get("median") or math.nan)) if problem(r) is None
             else r["status"] if r["status"] != "ok" else "check failed" for r in (p.base, p.new)]
    ratio = f"{p.ratio:.3f}" if math.isfinite(p.ratio) else ""
    ci = f"{p.low:.3f} – {p.high:.3f}" if math.isfinite(p.low) else ""
    verdict = p.verdict if p.verdict != "not compared" else f"not compared ({p.reason})"
    return [m["case"], m["backend"], m["pass"], m["dtype"], variant(m), *times, ratio, ci, verdict]


def sorted_pairs(pairs: list[Pair]) -> list[Pair]:
    """Slower (largest first), faster (largest first), not compared, then same."""
    order = {"slower": 0, "faster": 1, "not compared": 2, "same": 3}

    def key(p: Pair) -> tuple[int, float]:
        ratio = p.ratio if math.isfinite(p.ratio) else 1.0
        return order[p.verdict], (ratio if p.verdict == "faster" else -ratio)

    return sorted(pairs, key=key)


def to_json(comparison: Comparison) -> str:
    return json.dumps({
        "threshold": comparison.threshold, "counts": comparison.counts(),
        "environment": [{"what": w, "base": a, "new": b} for w, a, b in comparison.environment],
        "pairs": [p.row() for p in sorted_pairs(comparison.pairs)], "geomeans": comparison.geomeans(),
        "only_base": [_identity(m) for m in comparison.only_base],
        "only_new": [_identity(m) for m in comparison.only_new], "warnings": comparison.warnings,
    }, indent=1)


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name, KEY_DEFAULTS.get(name)) for name in KEY_FIELDS}


def to_csv(comparison: Comparison) -> str:
    """One row per pair (the measurements only one side holds are in the JSON output)."""
    buffer = io.StringIO()
    rows = [p.row() for p in sorted_pairs(comparison.pairs)]
    writer = csv.DictWriter(buffer, fieldnames=list(Pair({}, {}).row() if not rows else rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown_table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(comparison: Comparison) -> str:
    """A PR-comment summary: environment differences, counts, geometric means, then every pair."""
    counts = ", ".join(f"{n} {v}" for v, n in comparison.counts().items()) or "no pairs"
    parts = [f"**{len(comparison.pairs)} measurements in both: {counts}** (time new/base; slower or faster when the "
             f"95% CI lies beyond ±{comparison.threshold:.0%})"]
    if comparison.environment:
        parts.append(_markdown_table(("what differs", "base", "new"), comparison.environment))
    if geomeans := comparison.geomeans():
        parts.append(_markdown_table(("backend", "device", "dtype", "op", "pass", "pairs", "geomean new/base",
                                      "slower", "faster"),
                                     ([g["backend"], g["device"], g["dtype"], g["op"], g["pass"], g["pairs"],
                                       f"{g['geomean']:.3f}", g["slower"], g["faster"]] for g in geomeans)))
    parts.append(_markdown_table(PAIR_COLUMNS, map(pair_cells, sorted_pairs(comparison.pairs))))
    for side, records in (("base", comparison.only_base), ("new", comparison.only_new)):
        if records:
            parts.append(f"Only in {side} ({len(records)}): " + ", ".join(
                sorted({f"{m['case']} ({m['backend']} {m['pass']} {variant(m)})" for m in records})))
    return "\n\n".join(parts) + "\n"
