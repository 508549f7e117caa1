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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.environment import knobs
from suite.ops import op_from_dict
from suite.stats import median_per_call

SCHEMA_VERSION = 1
RECORD_KINDS = ("header", "worker", "measurement")
KEY_FIELDS = ("case", "backend", "device", "dtype", "pass", "mode", "layout", "math", "threads", "options", "l2")
KEY_DEFAULTS = {"l2": "warm"}  # key fields added later: what records written before them measured
STATUSES = ("ok", "unsupported", "error", "oom", "timeout", "crashed", "skipped")
FAILED_STATUSES = ("error", "oom", "timeout", "crashed")  # unsupported and skipped carry a reason: not failures


def failed(record: dict[str, Any]) -> bool:
    """Whether a measurement failed: it errored, crashed, timed out, ran out of memory or failed the check."""
    return record["status"] in FAILED_STATUSES or (record.get("check") or {}).get("status") == "fail"


class ResultsError(ValueError):
    """A results file that cannot be read as opbench results; the message says where and why."""


def measurement_key(record: dict[str, Any]) -> str:
    """The identity of a measurement: what a resumed run must not repeat."""
    return json.dumps([record.get(name, KEY_DEFAULTS.get(name)) for name in KEY_FIELDS], sort_keys=True)


# Migrations from schema N to N+1, applied in order on read (asv's update_to_N). None yet: schema 1 is the first.
MIGRATIONS: dict[int, Any] = {}


def migrate(record: dict[str, Any], where: str) -> dict[str, Any]:
    """Bring a record to SCHEMA_VERSION; a migrated one keeps its original version in ``migrated_from``."""
    version = original = record.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResultsError(f"{where}: record has no integer 'schema' version; not an opbench results line")
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{where}: written by a newer opbench (schema {version}, this one reads up to "
                           f"{SCHEMA_VERSION}); upgrade opbench to read it")
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise ResultsError(f"{where}: schema {version} has no migration to {version + 1}; this opbench "
                               f"reads schemas {min(MIGRATIONS, default=SCHEMA_VERSION)} to {SCHEMA_VERSION}")
        try:
            record = MIGRATIONS[version](dict(record))
        except Exception as exc:  # a damaged old record: say so rather than crash
            raise ResultsError(f"{where}: cannot migrate this schema {version} record: "
                               f"{type(exc).__name__}: {exc}") from None
        version = record["schema"] = version + 1
    if original != SCHEMA_VERSION:
        record["migrated_from"] = original
    return record


# Fields every record of a kind must have, with their JSON types (what readers index without checking).
_TEXT = (str,)
REQUIRED_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "header": {},
    "worker": {"backend": _TEXT, "device": _TEXT},
    "measurement": {**{name: _TEXT for name in KEY_FIELDS[:8]}, "status": _TEXT},
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_value(value: Any) -> bool:
    """A number as the writer stores it: finite, or the text of a non-finite float, or null."""
    return value is None or _is_number(value) or value in ("nan", "inf", "-inf")


def _is_stats(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(
        _is_value(v) for k, v in value.items() if k != "flags") and _is_texts(value.get("flags", [])))


def _is_check(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and value.get("status", "pass") in ("pass", "fail")
                             and isinstance(value.get("errors", {}), dict)
                             and all(_is_value(e) for e in value.get("errors", {}).values())
                             and _is_value(value.get("tolerance")))


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# Fields a record of a kind may lack, but that must have this form when present: (test, what it must be).
OPTIONAL_FIELDS: dict[str, dict[str, tuple[Any, str]]] = {
    "header": {"environment": (lambda v: isinstance(v, dict), "an object"),
               "timing": (lambda v: v is None or isinstance(v, dict), "an object or null")},
    "worker": {"versions": (lambda v: v is None or isinstance(v, dict), "an object"),
               "flags": (lambda v: v is None or isinstance(v, dict), "an object")},
    "measurement": {
        "stats": (_is_stats, "an object of numbers (and a list of flags) or null"),
        "tflops": (_is_value, "a number or null"), "check": (_is_check, "an object: status pass/fail, errors"),
        "reason": (lambda v: v is None or isinstance(v, str), "text or null"),
        "threads": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null"),
        "options": (lambda v: isinstance(v, dict), "an object"), "l2": (lambda v: isinstance(v, str), "text"),
        "dims": (lambda v: isinstance(v, dict), "an object"),
        "provenance": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                       "an object of text"),
        "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
        "tags": (_is_texts, "a list of text"), "flops": (_is_value, "a number"), "bytes": (_is_value, "a number"),
        "versions": (lambda v: isinstance(v, dict), "an object"), "flags": (lambda v: isinstance(v, dict), "an object"),
    },
}


def validate(record: dict[str, Any], where: str) -> None:
    kind = record["record"]
    for name, types in REQUIRED_FIELDS[kind].items():
        if not isinstance(record.get(name), types):
            raise ResultsError(f"{where}: {kind} record has no valid {name!r} field; the file is damaged or not "
                               "opbench results")
    for name, (valid, form) in OPTIONAL_FIELDS[kind].items():
        if name in record and not valid(record[name]):
            raise ResultsError(f"{where}: {kind} field {name!r} has the wrong type: must be {form}, got "
                               f"{_excerpt(record[name])}")
    if kind == "measurement":
        if "dims" in record:
            try:
                op_from_dict(record["dims"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ResultsError(f"{where}: measurement field 'dims' does not describe a gemm or conv2d "
                                   f"({type(exc).__name__}: {exc}): {_excerpt(record['dims'])}") from None
        if record["status"] not in STATUSES:
            raise ResultsError(f"{where}: unknown status {record['status']!r}; expected one of {', '.join(STATUSES)}")
        problem = raw_samples_problem(record)
        if problem:
            raise ResultsError(f"{where}: measurement of {record['case']} ({record['backend']} {record['pass']}): "
                               f"{problem}; the file is damaged or was edited")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def raw_samples_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a measurement's raw samples (block times, calls per block) and the statistics derived
    from them, or None. The raw samples are the truth: stored statistics must be what they give."""
    times, calls, stats = record.get("block_times"), record.get("calls_per_block"), record.get("stats")
    if times is not None and (not isinstance(times, list) or not all(_number(t) and t > 0 for t in times)):
        return f"block_times must be a list of positive finite seconds, got {_excerpt(times)}"
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or calls < 1):
        return f"calls_per_block must be a positive integer, got {_excerpt(calls)}"
    if not stats or record["status"] != "ok":  # a failed measurement's numbers are not read
        return None
    if not times or calls is None:
        return "has statistics but no raw block_times and calls_per_block to derive them from"
    median = median_per_call(times, calls)
    if not _number(stats.get("median")) or not math.isclose(stats["median"], median, rel_tol=1e-9):
        return (f"stats.median {_excerpt(stats.get('median'))} is not the median of block_times / calls_per_block "
                f"({median!r})")
    if stats.get("blocks", len(times)) != len(times) or stats.get("calls_per_block", calls) != calls:
        return (f"stats count {stats.get('blocks')} blocks of {stats.get('calls_per_block')} calls, the raw samples "
                f"{len(times)} of {calls}")
    tflops, flops = record.get("tflops"), record.get("flops")
    if _number(tflops) and _number(flops) and not math.isclose(tflops, flops / median / 1e12, rel_tol=1e-6):
        return f"tflops {tflops!r} is not flops / median ({flops / median / 1e12!r})"
    return None


def _excerpt(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


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
    if path.is_dir():
        raise ResultsError(f"{path}: is a folder, not a results file")
    try:
        data = path.read_bytes()
        data.decode("utf-8")  # opbench writes ASCII, so even a cut-off line decodes
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file; expected opbench JSON Lines results") from None
    results = Results()
    lines = data.split(b"\n")
    migrated: dict[int, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}, line {number}"
        record, problem = _parse_line(raw)
        if problem:
            if number == len(lines):  # no newline after it: the write of this line was cut off
                results.warnings.append(f"{where}: skipped a partial last line (a run was interrupted while "
                                        "writing it); --resume will measure it again")
                continue
            raise ResultsError(f"{where}: {problem}; the file is damaged or not opbench results")
        if not isinstance(record, dict) or record.get("record") not in RECORD_KINDS:
            raise ResultsError(f"{where}: not an opbench record (expected an object with 'record' in "
                               f"{', '.join(RECORD_KINDS)})")
        if record["record"] != "header" and not results.headers:
            raise ResultsError(f"{where}: no header record before this {record['record']} record; not a complete "
                               "opbench results file (a run writes its header first)")
        record = migrate(record, where)
        validate(record, where)
        if record["record"] == "header":
            _recorded_knobs_only(record)
        if "migrated_from" in record:
            migrated[record["migrated_from"]] = migrated.get(record["migrated_from"], 0) + 1
        getattr(results, record["record"] + "s").append(record)
    for version, n in sorted(migrated.items()):
        results.warnings.append(f"{path}: migrated {n} records from results schema {version} to {SCHEMA_VERSION}")
    # A measurement taken again in the same file (run --retry-failed) supersedes the earlier one: the last stands.
    last = {measurement_key(m): i for i, m in enumerate(results.measurements)}
    if len(last) < len(results.measurements):
        results.measurements = [m for i, m in enumerate(results.measurements) if last[measurement_key(m)] == i]
    return results


def _recorded_knobs_only(header: dict[str, Any]) -> None:
    """Drop from a header's environment knobs every variable not in ``environment.KNOBS``: a file written before the
    list (which kept every TF_* variable, Terraform's tokens among them) is never shown by a reader."""
    env = header.get("environment")
    if isinstance(env, dict) and isinstance(env.get("knobs"), dict):
        env["knobs"] = knobs(env["knobs"])


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    """The JSON value of a line and None, or None and why it is not JSON."""
    try:
        return json.loads(raw.decode("utf-8", errors="replace")), None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, absurd nesting
        return None, f"not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})"


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


def merge_conflicts(results: Results) -> list[str]:
    """Why these runs are not one configuration (empty when they may merge), naming each differing key.

    Per backend and device, the framework versions must agree across all runs, and the flags read back across the
    runs with the same backend options (``--option``: part of each measurement's identity, e.g. jax.jsonl and
    jax-ynn-off.jsonl of the main job, whose XLA_FLAGS differ by design).
    """
    options = {(m.get("run_id"), m["backend"], m["device"]): json.dumps(m.get("options") or {}, sort_keys=True)
               for m in results.measurements}
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for worker in results.workers:
        run_options = options.get((worker.get("run_id"), worker["backend"], worker["device"]), "{}")
        groups.setdefault((worker["backend"], worker["device"], "versions", ""), []).append(worker)
        groups.setdefault((worker["backend"], worker["device"], "flags", run_options), []).append(worker)
    conflicts = []
    for (backend, device, what, run_options), workers in groups.items():
        names = dict.fromkeys(name for w in workers for name in (w.get(what) or {}))
        for name in names:
            seen: dict[str, str] = {}  # value → first run holding it
            for w in workers:
                seen.setdefault(json.dumps((w.get(what) or {}).get(name, "absent")), str(w.get("run_id")))
            if len(seen) > 1:
                among = f" (runs with options {run_options})" if run_options not in ("", "{}") else ""
                conflicts.append(f"{backend} on {device}: {what}.{name} differs{among}: " + "; ".join(
                    f"{value} in run {run}" for value, run in seen.items()))
    return conflicts


class ResultsWriter:
    """Appends records to a results file; each one is on disk (flushed and fsynced) when ``write`` returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ResultsError(f"{self.path}: is a folder; give a results file (e.g. {self.path / 'run.jsonl'})")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.warning = self._drop_partial_line()
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ResultsError(f"{self.path}: cannot write results here: {exc.strerror or exc}") from None

    def _drop_partial_line(self) -> str | None:
        """Cut off a last line that a crash left half-written, so appending starts on a fresh line.

        A last line that is a whole JSON object (only its newline was lost) is kept, as read_results reads it.
        """
        if not self.path.exists() or not self.path.stat().st_size:
            return None
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        if isinstance(_parse_line(data[keep:])[0], dict):
            with self.path.open("ab") as handle:
                handle.write(b"\n")
            return None
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

