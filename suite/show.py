"""`show`: measurements as flat rows (what the terminal table, CSV and JSON print), filtered and sorted.

Every value comes from the typed ``Measurement`` (rates computed there); framework-free.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

from suite.results import Measurement

SETTINGS = ("device", "math", "l2", "threads", "options")  # shown as columns where the rows differ in them
SORTS: dict[str, Callable[[dict[str, Any]], Any] | None] = {
    "file": None, "case": lambda r: (r["case"], r["backend"], r["pass"]),
    "backend": lambda r: (r["backend"], r["case"], r["pass"]), "status": lambda r: r["status"],
    "median": lambda r: -(r["median_s"] or 0.0), "gflops": lambda r: -(r["gflops"] or 0.0)}


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def rate_text(gflops: float | None, busbw_gbps: float | None) -> str:
    """The rate a measurement is read by: a collective's bus bandwidth, anything else's GFLOP/s ("" when neither)."""
    if busbw_gbps is not None and math.isfinite(busbw_gbps):
        return f"busbw {busbw_gbps:6.3g} GB/s"
    return f"{gflops:8.1f} GFLOP/s" if gflops is not None and math.isfinite(gflops) else ""


def row(m: Measurement) -> dict[str, Any]:
    """A measurement as the flat row that `show` prints or exports."""
    k, stats = m.key, m.stats
    return {"case": k.case, "backend": k.backend, "device": k.device, "pass": k.pass_, "dtype": k.dtype,
            "mode": k.mode, "layout": k.layout, "math": k.math, "l2": k.l2, "threads": k.threads,
            "options": k.options_text, "status": m.status, "median_s": _number(m.median),
            "ci_low_s": _number(stats.ci_low) if stats else None,
            "ci_high_s": _number(stats.ci_high) if stats else None,
            "gflops": None if math.isfinite(m.busbw_gbps) else _number(m.tflops * 1e3),  # a collective: its busbw
            "busbw_gbps": _number(m.busbw_gbps), "check": m.check.status if m.check else "",
            "flags": " ".join(m.timing_flags), "reason": m.reason or ""}


def rows(measurements: Sequence[Measurement], backends: Collection[str] | None = None, cases: Sequence[str] = (),
         statuses: Collection[str] | None = None, sort: str = "file") -> list[dict[str, Any]]:
    """The rows of the measurements of ``backends`` (all when None), whose case matches one of the glob patterns
    ``cases`` (all when empty) and whose status is one of ``statuses`` (all when None), in ``sort`` order."""
    out = [row(m) for m in measurements
           if (backends is None or m.backend in backends)
           and (not cases or any(fnmatch.fnmatchcase(m.case, pattern) for pattern in cases))
           and (statuses is None or m.status in statuses)]
    order = SORTS[sort]
    return sorted(out, key=order) if order else out


def varying_settings(found: Sequence[dict[str, Any]]) -> list[str]:
    """The settings that tell the rows apart (e.g. math: strict beside tf32); one shared by all gets no column."""
    return [name for name in SETTINGS if len({r[name] for r in found}) > 1]
