"""Compare two sets of results (an upgrade, a new machine, a flag change): per measurement, time(NEW) / time(BASE).

Measurements pair by their identity (``suite.results.MeasurementKey``), each side's measurement of a key chosen by
``ResultSet.latest()`` (the one policy for repeats). ``across`` names settings of the identity (e.g. ``math``) to pair
across: the sides then pair on the rest of the identity (``MeasurementKey.across``), so "what does TF32 change?" can
be asked. Each ratio of medians gets a bootstrap CI from the raw per-call block times (``suite.stats.ratio_ci``) and
the verdict of ``suite.results.speed_verdict``: ``slower`` when the whole CI lies above 1 + threshold, ``faster``
when it lies below 1 - threshold, else ``same`` (threshold: the same-speed band ``SAME_BAND`` unless given). A pair
whose measurement cannot be compared on either side (``Measurement.problem``) is listed as ``not compared`` with the
reason. A pair whose timing carries an unreliable flag on either side (``Measurement.unreliable``) shows the flags
and is never counted as a regression. Framework-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import gmean

from suite.catalog import did_you_mean
from suite.results import (
    KEY_FIELDS,
    SAME_BAND,
    UNRELIABLE_FLAGS,
    Measurement,
    MeasurementKey,
    ResultSet,
    read_many,
    speed_verdict,
)
from suite.stats import format_seconds, ratio_ci

VERDICTS = ("slower", "faster", "same", "not compared")
_DIRECTION = {"higher": "slower", "lower": "faster", "same": "same"}  # speed_verdict of time new/base → verdict
# Settings of the identity a comparison may pair across (a case or a pass compared with another is no comparison).
ACROSS_FIELDS: tuple[str, ...] = tuple(name for name in KEY_FIELDS if name not in ("case", "pass"))
# Recorded facts that change from run to run without changing what was measured.
VOLATILE = {"environment.load_average", "environment.cpu.mhz"}


class CompareError(ValueError):
    """Two sets that cannot be compared as asked (nothing in common, an ambiguous --across); exit 2."""


def threshold_text(threshold: float) -> str:
    """How a verdict is reached, stated once for every output."""
    return f"slower or faster only when the 95% CI of time new/base lies wholly beyond 1 ± {threshold * 100:g}%"


FLAGS_TEXT = (f"a pair flagged {', '.join(UNRELIABLE_FLAGS)} on either side is shown with its flags and never "
              "counted as a regression")


@dataclass(frozen=True)
class Pair:
    """One measurement on both sides: time(new) / time(base) with its CI and verdict, or why it was not compared."""

    base: Measurement
    new: Measurement
    ratio: float = math.nan
    low: float = math.nan
    high: float = math.nan
    verdict: str = "not compared"
    reason: str = ""  # why not compared
    across: tuple[str, ...] = ()  # the identity fields the two sides were paired across

    @property
    def key(self) -> MeasurementKey:
        """What the two sides were paired on (the fields paired across blanked)."""
        return self.base.key.across(self.across)

    @property
    def change(self) -> str:
        """The settings paired across whose values differ, e.g. 'math: strict → tf32' ('' when none does)."""
        old, new = self.base.key.fields(), self.new.key.fields()
        return "; ".join(f"{name}: {_text(old[name])} → {_text(new[name])}" for name in self.across
                         if old[name] != new[name])

    @property
    def label(self) -> str:
        return self.base.key.label + (f" ({self.change})" if self.change else "")

    @property
    def flags(self) -> dict[str, tuple[str, ...]]:
        """The unreliable timing flags of each side that has any."""
        return {side: flags for side, flags in (("base", self.base.unreliable), ("new", self.new.unreliable)) if flags}

    @property
    def unreliable(self) -> bool:
        """Either side's time is not evidence of a speed change (overhead-bound, noisy, contended...)."""
        return bool(self.flags)

    @property
    def flags_text(self) -> str:
        return "; ".join(f"{side}: {', '.join(flags)}" for side, flags in self.flags.items())

    @property
    def compared(self) -> bool:
        return self.verdict != "not compared"

    def slower_by_more_than(self, fraction: float) -> bool:
        """A regression: significantly slower by more than ``fraction`` (the whole CI above 1 + fraction) with
        reliable timings on both sides."""
        return self.compared and not self.unreliable and self.low > 1 + fraction

    @property
    def verdict_text(self) -> str:
        """The verdict as every output shows it: a flagged one marked, a not compared one with its reason."""
        if not self.compared:
            return f"not compared ({self.reason})"
        return f"{self.verdict} (flagged: {self.flags_text})" if self.unreliable else self.verdict

    def row(self) -> dict[str, Any]:
        """A flat record for CSV and JSON."""
        key = self.base.key
        return {**{name: value for name, value in key.fields().items() if name != "options"},
                "options": key.options_text, "variant": self.key.variant, "change": self.change,
                "op": self.base.op.kind if self.base.op else None,
                "base_median_s": _number(self.base.median), "new_median_s": _number(self.new.median),
                "ratio": _number(self.ratio), "ratio_low": _number(self.low), "ratio_high": _number(self.high),
                "verdict": self.verdict, "flags": self.flags_text, "reason": self.reason}


def _text(value: Any) -> str:
    """An identity field's value as text (options as k=v pairs, 'none' for no options)."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compare_pair(base: Measurement, new: Measurement, threshold: float = SAME_BAND,
                 across: tuple[str, ...] = ()) -> Pair:
    """The ratio of medians time(new) / time(base) with a bootstrap CI of the per-call times, and its verdict."""
    reasons = [f"{side}: {why}" for side, m in (("base", base), ("new", new)) if (why := m.problem)]
    if base.op is not None and new.op is not None and base.op != new.op:  # a catalog edited between the runs
        reasons.append(f"the case's dims differ ({base.op.describe()} vs {new.op.describe()})")
    if reasons:
        return Pair(base, new, reason="; ".join(reasons), across=across)
    ratio, low, high = ratio_ci(np.asarray(new.per_call), np.asarray(base.per_call))
    verdict = _DIRECTION.get(speed_verdict(low, high, threshold))
    if verdict is None:  # a single block on a side: no interval
        return Pair(base, new, ratio, reason="a single timed block on a side: no confidence interval", across=across)
    return Pair(base, new, ratio, low, high, verdict, across=across)


@dataclass
class Comparison:
    """Every pair, what only one side holds, and how the two sides' recorded environments differ."""

    pairs: list[Pair]
    only_base: list[Measurement]
    only_new: list[Measurement]
    environment: list[tuple[str, str, str]]  # (what, value in base, value in new) where they differ
    threshold: float = SAME_BAND
    across: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {v: n for v in VERDICTS if (n := sum(p.verdict == v for p in self.pairs))}

    def summary(self) -> str:
        """'N measurements in both: 2 slower (1 flagged), 5 same'."""
        flagged = {v: sum(p.verdict == v and p.unreliable for p in self.pairs) for v in VERDICTS}
        counts = ", ".join(f"{n} {v}" + (f" ({flagged[v]} flagged)" if flagged[v] and v != "not compared" else "")
                           for v, n in self.counts().items())
        return f"{len(self.pairs)} measurements in both: {counts or 'none'}"

    def regressions(self, fraction: float) -> list[Pair]:
        """Pairs significantly slower by more than ``fraction``, timed reliably on both sides."""
        return [p for p in self.pairs if p.slower_by_more_than(fraction)]

    def broken(self) -> list[Pair]:
        """Pairs that were fine in base and are not in new (error, crash, timeout, failed check...)."""
        return [p for p in self.pairs if p.base.problem is None and p.new.problem is not None]

    def gate(self, fraction: float) -> list[str]:
        """What fails ``--fail-on-regression``: each regression and each pair broken in new, as one line."""
        failures = [f"slower by more than {fraction * 100:g}% (ratio {p.ratio:.3f}, 95% CI {p.low:.3f}–{p.high:.3f}): "
                    f"{p.label}" for p in self.regressions(fraction)]
        return failures + [f"fine in base, not in new ({p.new.problem}): {p.label}" for p in self.broken()]

    def geomeans(self) -> list[dict[str, Any]]:
        """Geometric mean of the compared ratios per backend, device, dtype, op kind and pass."""
        groups: dict[tuple[str, ...], list[Pair]] = {}
        for p in self.pairs:
            if p.compared:
                k = p.base.key
                op = p.base.op.kind if p.base.op else ""
                groups.setdefault((k.backend, k.device, k.dtype, op, k.pass_), []).append(p)
        return [{"backend": b, "device": d, "dtype": t, "op": o, "pass": s, "pairs": len(ps),
                 "geomean": float(gmean([p.ratio for p in ps])),
                 "slower": sum(p.verdict == "slower" for p in ps), "faster": sum(p.verdict == "faster" for p in ps),
                 "flagged": sum(p.unreliable for p in ps)}
                for (b, d, t, o, s), ps in sorted(groups.items())]


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix not in VOLATILE:
        out[prefix] = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)


def recorded_facts(results: ResultSet) -> dict[str, set[str]]:
    """Every recorded fact of the runs (environment, settings, framework versions and flags read back): values seen."""
    facts: dict[str, set[str]] = {}
    for header in results.headers:
        flat: dict[str, str] = {}
        _flatten({"environment": asdict(header.environment), "timing": dict(header.timing or {}),
                  "check": header.check, "seed": header.seed}, "", flat)
        for key, value in flat.items():
            facts.setdefault(key, set()).add(value)
    for worker in results.workers:
        flat = {}
        _flatten({"versions": dict(worker.versions), "flags": dict(worker.flags)}, "", flat)
        for key, value in flat.items():
            facts.setdefault(f"{worker.backend} on {worker.device}: {key}", set()).add(value)
    return facts


def environment_differences(base: ResultSet, new: ResultSet) -> list[tuple[str, str, str]]:
    """Facts whose recorded values differ between the two sides (a fact recorded on one side only included)."""
    a, b = recorded_facts(base), recorded_facts(new)
    return [(key, ", ".join(sorted(a.get(key, {"–"}))), ", ".join(sorted(b.get(key, {"–"}))))
            for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]


def across_fields(names: Iterable[str]) -> tuple[str, ...]:
    """The ``--across`` names, checked: each a setting of the identity (ACROSS_FIELDS)."""
    names = tuple(dict.fromkeys(names))
    for name in names:
        if name not in ACROSS_FIELDS:
            raise CompareError(f"--across {name!r}: not a setting to compare across{did_you_mean(name, ACROSS_FIELDS)};"
                               f" choose from {', '.join(ACROSS_FIELDS)}")
    return names


def _one_side(results: ResultSet, side: str, across: tuple[str, ...],
              warnings: list[str]) -> dict[MeasurementKey, Measurement]:
    """The side's latest measurement per key (the one policy), keyed by the pairing key; refuses two measurements
    of one pairing key (several values of an ``across`` setting on one side)."""
    latest = results.latest()
    if len(results.measurements) > len(latest):
        warnings.append(f"{side} holds {len(results.measurements) - len(latest)} measurements of keys it measured "
                        "more than once; the latest of each is compared")
    out: dict[MeasurementKey, Measurement] = {}
    for key, m in latest.items():
        pairing = key.across(across)
        if pairing in out:
            first = out[pairing].key.fields()
            values = "; ".join(f"{name} {_text(first[name])} and {_text(key.fields()[name])}" for name in across
                               if first[name] != key.fields()[name])
            raise CompareError(f"--across {','.join(across)}: {side} holds more than one of them for {key.case} "
                               f"({key.backend} {key.pass_} {key.dtype}): {values}. Give each side one value of "
                               "the setting (e.g. one results file each)")
        out[pairing] = m
    return out


def _differing(base: Sequence[MeasurementKey], new: Sequence[MeasurementKey]) -> list[tuple[str, set[str], set[str]]]:
    """Identity fields whose values on the two sides do not meet: (name, base values, new values)."""
    a = {name: {json.dumps(k.fields()[name], sort_keys=True) for k in base} for name in KEY_FIELDS}
    b = {name: {json.dumps(k.fields()[name], sort_keys=True) for k in new} for name in KEY_FIELDS}
    return [(name, a[name], b[name]) for name in KEY_FIELDS if a[name] and b[name] and not a[name] & b[name]]


def across_hint(only_base: Sequence[Measurement], only_new: Sequence[Measurement]) -> str:
    """For measurements one side holds alone: the single setting that, paired across, would pair some of them
    ('' when none does), as advice."""
    for name in ACROSS_FIELDS:
        a = {m.key.across([name]) for m in only_base}
        n = sum(m.key.across([name]) in a for m in only_new)
        if n:
            return (f"{n} measurements only in NEW have a counterpart only in BASE that differs in {name}: "
                    f"--across {name} compares them")
    return ""


def compare(base: ResultSet, new: ResultSet, threshold: float = SAME_BAND, across: Iterable[str] = ()) -> Comparison:
    """Pair the measurements of two result sets (across the settings named) and compare each pair."""
    names = across_fields(across)
    warnings: list[str] = []
    a, b = _one_side(base, "BASE", names, warnings), _one_side(new, "NEW", names, warnings)
    pairs = [compare_pair(a[key], b[key], threshold, names) for key in a if key in b]
    only_base, only_new = [m for key, m in a.items() if key not in b], [m for key, m in b.items() if key not in a]
    if not pairs:
        differing = _differing([m.key for m in only_base], [m.key for m in only_new])
        reason = "; they differ in " + ", ".join(f"{name} ({', '.join(sorted(x))} vs {', '.join(sorted(y))})"
                                                 for name, x, y in differing) if differing else ""
        settings = [name for name, _, _ in differing if name in ACROSS_FIELDS]
        advice = (f"; to compare across {' and '.join(settings)}, pass --across {','.join(settings)}"
                  if settings and len(settings) == len(differing) else "")
        raise CompareError(f"no measurement in common (same case, backend, device, dtype, pass and variant"
                           f"{', paired across ' + ', '.join(names) if names else ''}){reason}{advice}")
    if hint := across_hint(only_base, only_new):
        warnings.append(hint)
    return Comparison(pairs, only_base, only_new, environment_differences(base, new), threshold, names, warnings)


def compare_files(base: str | Path, new: str | Path, threshold: float = SAME_BAND,
                  across: Iterable[str] = ()) -> Comparison:
    """``compare`` of two results files or folders; the readers' warnings come first in its warnings."""
    a, b = read_many([base]), read_many([new])
    result = compare(a, b, threshold, across)
    result.warnings[:0] = a.warnings + b.warnings
    return result


def default_baseline(present: Sequence[str], registry_order: Sequence[str]) -> str:
    """The backend a report's speedups are relative to: the first of ``present`` in the registry's order (a backend
    the registry does not know comes after those it knows)."""
    rank = {name: i for i, name in enumerate(registry_order)}
    return min(present, key=lambda name: rank.get(name, len(rank)))


def choose_baseline(requested: str | None, present: Sequence[str], registry_order: Sequence[str]) -> str:
    """``requested`` when the results hold it, else the default; an absent one is refused with what they hold."""
    if requested is None:
        return default_baseline(present, registry_order)
    if requested not in present:
        raise CompareError(f"--baseline {requested!r}: no measurements of that backend in these results"
                           f"{did_you_mean(requested, present)}; they hold {', '.join(present)}")
    return requested


# ------------------------------------------------------------------------------------------------ output
PAIR_COLUMNS = ("case", "backend", "pass", "dtype", "variant", "base", "new", "new/base", "95% CI", "verdict")


def pair_columns(comparison: Comparison) -> tuple[str, ...]:
    """PAIR_COLUMNS, with the settings paired across after the variant when there are any."""
    if not comparison.across:
        return PAIR_COLUMNS
    at = PAIR_COLUMNS.index("variant") + 1
    return (*PAIR_COLUMNS[:at], "base → new", *PAIR_COLUMNS[at:])


def pair_cells(p: Pair, across: bool = False) -> list[str]:
    """The cells of one pair in the order of ``pair_columns`` (with ``across``: the change column), as text."""
    k = p.base.key
    times = [format_seconds(m.median) if m.problem is None else m.status if m.status != "ok" else "check failed"
             if m.check is not None and m.check.failed else "no times" for m in (p.base, p.new)]
    ratio = f"{p.ratio:.3f}" if math.isfinite(p.ratio) else ""
    ci = f"{p.low:.3f} – {p.high:.3f}" if math.isfinite(p.low) else ""
    return [k.case, k.backend, k.pass_, k.dtype, p.key.variant, *([p.change] if across else []), *times, ratio, ci,
            p.verdict_text]


def sorted_pairs(pairs: list[Pair]) -> list[Pair]:
    """Slower (reliable first, largest first), faster (likewise), not compared, then same."""
    order = {"slower": 0, "faster": 1, "not compared": 2, "same": 3}

    def key(p: Pair) -> tuple[int, bool, float]:
        ratio = p.ratio if math.isfinite(p.ratio) else 1.0
        return order[p.verdict], p.unreliable, (ratio if p.verdict == "faster" else -ratio)

    return sorted(pairs, key=key)


def _identity(m: Measurement) -> dict[str, Any]:
    return m.key.fields()


def to_json(comparison: Comparison) -> str:
    return json.dumps({
        "threshold": comparison.threshold, "rule": threshold_text(comparison.threshold), "flags_rule": FLAGS_TEXT,
        "across": list(comparison.across), "counts": comparison.counts(),
        "flagged": sum(p.unreliable for p in comparison.pairs),
        "environment": [{"what": w, "base": a, "new": b} for w, a, b in comparison.environment],
        "pairs": [p.row() for p in sorted_pairs(comparison.pairs)], "geomeans": comparison.geomeans(),
        "only_base": [_identity(m) for m in comparison.only_base],
        "only_new": [_identity(m) for m in comparison.only_new], "warnings": comparison.warnings,
    }, indent=1)


def to_csv(comparison: Comparison) -> str:
    """One row per pair (the measurements only one side holds are in the JSON output)."""
    buffer = io.StringIO()
    rows = [p.row() for p in sorted_pairs(comparison.pairs)]
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown_table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def only_text(side: str, measurements: Sequence[Measurement]) -> str:
    """'Only in base (2): c1 (torch forward eager · NCHW · ...), ...'."""
    return f"Only in {side} ({len(measurements)}): " + ", ".join(
        sorted({f"{m.case} ({m.backend} {m.key.pass_} {m.key.variant})" for m in measurements}))


GEOMEAN_COLUMNS = ("backend", "device", "dtype", "op", "pass", "pairs", "geomean new/base", "slower", "faster",
                   "flagged")


def to_markdown(comparison: Comparison) -> str:
    """A PR-comment summary: environment differences, counts, geometric means, then every pair."""
    parts = [f"**{comparison.summary()}** (time new/base; {threshold_text(comparison.threshold)}; {FLAGS_TEXT})"]
    if comparison.environment:
        parts.append(_markdown_table(("what differs", "base", "new"), comparison.environment))
    if geomeans := comparison.geomeans():
        parts.append(_markdown_table(GEOMEAN_COLUMNS, ([*(g[c] for c in GEOMEAN_COLUMNS[:6]), f"{g['geomean']:.3f}",
                                                        g["slower"], g["faster"], g["flagged"]] for g in geomeans)))
    across = bool(comparison.across)
    parts.append(_markdown_table(pair_columns(comparison),
                                 (pair_cells(p, across) for p in sorted_pairs(comparison.pairs))))
    parts += [only_text(side, ms) for side, ms in (("base", comparison.only_base), ("new", comparison.only_new)) if ms]
    return "\n\n".join(parts) + "\n"
