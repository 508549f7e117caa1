"""Results files: append-only JSON Lines, one self-contained record per line, versioned and migrated on read.

Record kinds: ``header`` (one per run session: schema version, environment, command, settings), ``worker`` (a
backend's versions and the flags read back at run time) and ``measurement`` (one case × backend × variant). Every
record is flushed and fsynced before the next measurement starts, so a crash loses at most the line being written;
the reader skips a partial last line with a warning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORD_KINDS = ("header", "worker", "measurement")
KEY_FIELDS = ("case", "backend", "device", "dtype", "pass", "mode", "layout", "math", "threads", "options")
STATUSES = ("ok", "unsupported", "error", "oom", "timeout", "crashed", "skipped")


class ResultsError(ValueError):
    """A results file that cannot be read as opbench results; the message says where and why."""


def measurement_key(record: dict[str, Any]) -> str:
    """The identity of a measurement: what a resumed run must not repeat."""
    return json.dumps([record.get(name) for name in KEY_FIELDS], sort_keys=True)


# Migrations from schema N to N+1, applied in order on read (asv's update_to_N). None yet: schema 1 is the first.
MIGRATIONS: dict[int, Any] = {}


def migrate(record: dict[str, Any], where: str) -> dict[str, Any]:
    version = record.get("schema")
    if not isinstance(version, int):
        raise ResultsError(f"{where}: record has no integer 'schema' version; not an opbench results line")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{where}: written by a newer opbench (schema {version}, this one reads up to "
                           f"{SCHEMA_VERSION}); upgrade opbench to read it")
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise ResultsError(f"{where}: schema {version} has no migration to {version + 1}")
        record = MIGRATIONS[version](record)
        version = record["schema"] = version + 1
    return record


@dataclass
class Results:
    """Records of one or more files, grouped by kind, with warnings about what was skipped."""

    headers: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def keys(self) -> set[str]:
        return {measurement_key(m) for m in self.measurements}

    def extend(self, other: Results) -> None:
        self.headers += other.headers
        self.workers += other.workers
        self.measurements += other.measurements
        self.warnings += other.warnings


def read_results(path: str | Path) -> Results:
    """Read, validate and migrate one results file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file; expected opbench JSON Lines results") from None
    results = Results()
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: the write of this line was cut off
                results.warnings.append(f"{where}: skipped a partial last line (a run was interrupted while "
                                        "writing it); --resume will measure it again")
                continue
            raise ResultsError(f"{where}: not valid JSON ({exc.msg}); the file is damaged or not opbench "
                               "results") from None
        if not isinstance(record, dict) or record.get("record") not in RECORD_KINDS:
            raise ResultsError(f"{where}: not an opbench record (expected an object with 'record' in "
                               f"{', '.join(RECORD_KINDS)})")
        record = migrate(record, where)
        getattr(results, record["record"] + "s").append(record)
    if not results.headers and (results.measurements or results.workers):
        raise ResultsError(f"{path}: has measurements but no header record; not a complete opbench results file")
    return results


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and every ``*.jsonl`` under folders named."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(path.rglob("*.jsonl"))
        elif path.exists():
            found.append(path)
        else:
            raise ResultsError(f"{path}: no such results file or folder")
    if not found:
        raise ResultsError(f"no *.jsonl results files in {', '.join(map(str, paths))}")
    return found


def read_many(paths: Iterable[str | Path]) -> Results:
    merged = Results()
    for path in result_files(paths):
        merged.extend(read_results(path))
    return merged


class ResultsWriter:
    """Appends records to a results file; each one is on disk (flushed and fsynced) when ``write`` returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.warning = self._drop_partial_line()
        self._file = self.path.open("a", encoding="utf-8")

    def _drop_partial_line(self) -> str | None:
        """Cut off a last line that a crash left half-written, so appending starts on a fresh line."""
        if not self.path.exists() or not self.path.stat().st_size:
            return None
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        with self.path.open("rb+") as handle:
            handle.truncate(keep)
        return (f"{self.path}: dropped a partial last line ({len(data) - keep} bytes) left by an interrupted "
                "run; that measurement will run again")

    def write(self, record: dict[str, Any]) -> None:
        record = {"record": record["record"], "schema": SCHEMA_VERSION, **record}
        self._file.write(json.dumps(_finite(record), allow_nan=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def iter_ok(measurements: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (m for m in measurements if m.get("status") == "ok")
