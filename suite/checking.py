"""`check`: every selected case through every selected backend on the same seeded inputs, against the float64
reference, gathered per case, pass and dtype with one cell per backend.

What counts as a failure is ``Measurement.failed`` (the one definition, the same that makes `run` exit 1): an error,
crash, timeout, out of memory or failed numerical check. Unsupported (the framework has no kernel) and skipped (the
memory guard) carry their reason and are not failures. Framework-free; the runner is imported where it runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.results import Measurement, read_results


@dataclass(frozen=True)
class CheckCell:
    """One measurement's check as a table cell."""

    measurement: Measurement

    @property
    def failed(self) -> bool:
        return self.measurement.failed

    @property
    def text(self) -> str:
        """'3.1e-07 ✓', '2.0e-03 > 2e-05 ✗', or the status ('unsupported', 'skipped', 'error', ...)."""
        m = self.measurement
        if not m.ok:
            return m.status
        if m.check is None:
            return "not checked"
        if m.check.failed:
            return f"{m.check.max_error:.1e} > {m.check.tolerance:.0e} ✗"
        return f"{m.check.max_error:.1e} ✓"


@dataclass
class CheckReport:
    """The check's measurements, by (case, pass, dtype) and backend, with what failed."""

    measurements: list[Measurement]
    backends: list[str] = field(default_factory=list)
    rows: dict[tuple[str, str, str], dict[str, list[CheckCell]]] = field(default_factory=dict)

    @classmethod
    def of(cls, measurements: Sequence[Measurement]) -> CheckReport:
        report = cls(list(measurements), list(dict.fromkeys(m.backend for m in measurements)))
        for m in measurements:
            row = report.rows.setdefault((m.case, m.key.pass_, m.key.dtype), {})
            row.setdefault(m.backend, []).append(CheckCell(m))
        return report

    @property
    def failures(self) -> list[Measurement]:
        return [m for m in self.measurements if m.failed]

    @property
    def notes(self) -> list[str]:
        """One line per measurement that did not run (failed, skipped), with its reason."""
        return [f"{m.backend} {m.case} {m.key.pass_}: {m.status}: {m.reason or 'no reason recorded'}"
                for m in self.measurements if m.status not in ("ok", "unsupported")]

    def cell(self, row: tuple[str, str, str], backend: str) -> list[tuple[str, CheckCell]]:
        """A backend's cells of a row, each named by its layout where the backend ran several."""
        cells = self.rows[row].get(backend, [])
        return [(c.measurement.key.layout if len(cells) > 1 else "", c) for c in cells]

    def summary(self) -> str:
        failed = len(self.failures)
        return (f"{len(self.measurements) - failed} of {len(self.measurements)} agree (unsupported and skipped "
                f"counted as agreeing); {failed} mismatched or failed")

    @property
    def exit_status(self) -> int:
        """1 when a measurement failed, as `run` exits."""
        return 1 if self.failures else 0


def run_check(tasks: Sequence[Any], seed: int, case_timeout_s: float, output: str | Path | None = None,
              report: Callable[[Any, Measurement], None] | None = None) -> CheckReport:
    """Check ``tasks`` (``suite.runner.Task``) without timing them; records go to ``output`` or a temporary file."""
    from suite import runner  # the runner drives the backends' worker processes

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(output) if output is not None else Path(tmp) / "check.jsonl"
        runner.run(list(tasks), out, runner.RunOptions(timing=None, check=True, seed=seed,
                                                       case_timeout_s=case_timeout_s), report)
        return CheckReport.of(read_results(out).measurements)
