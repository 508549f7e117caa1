"""The results model and its file format: every fact about a measurement defined once, typed, read and written here.

Typed values: ``MeasurementKey`` (what was measured), ``Measurement`` (raw block times, statistics with their final
flags, the check, and the rates derived from them), ``RunHeader`` (machine, settings and the catalog's network sets
the run used) and ``WorkerInfo`` (framework versions and flags read back), gathered in a ``ResultSet`` with ONE
policy for repeated measurements. The rules that judge them live beside them: what failed, what "same speed" means,
% of a peak. Every consumer (runner, compare, history, show, check, merge, report) takes these types;
``from_record``/``to_record`` are the only reader and writer of a record's fields.

The file: append-only JSON Lines, one self-contained record per line (``header`` per run session, ``worker`` per
framework process, ``measurement`` per case × backend × variant), versioned and migrated on read. Every record is
flushed and fsynced before the next measurement starts, so a crash loses at most the line being written; the reader
skips a partial last line with a warning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, NamedTuple

from suite.catalog import NetworkSet
from suite.environment import knobs
from suite.gpu_state import LinkBandwidth
from suite.ops import Op, op_from_dict, op_to_dict
from suite.stats import Summary, median_per_call

SCHEMA_VERSION = 2  # 2: the header records the catalog's network sets the run used ("catalog")
RECORD_KINDS = ("header", "worker", "measurement")


class ResultsError(ValueError):
    """A results file that cannot be read as opbench results; the message says where and why."""


# ------------------------------------------------------------------------------------------------ the rules
STATUSES = ("ok", "unsupported", "error", "oom", "timeout", "crashed", "skipped")
# A failure is something to measure again: unsupported (the framework has no kernel) and skipped (the memory guard)
# carry their reason and are not failures; `run` and `check` exit alike on them.
FAILED_STATUSES = ("error", "oom", "timeout", "crashed")
# "Same speed": a ratio of medians whose 95% CI lies inside 1 ± SAME_BAND is no clear difference (methodology.md:
# "call a difference only when the CI excludes 1 ± ~3%"). The report's verdicts and `compare` both use it.
SAME_BAND = 0.03
# Timing flags under which a ratio is not evidence of a speed change: the block times measure dispatch overhead, a
# busy machine or noise more than the op. `compare` shows them and never counts such a pair as a regression.
UNRELIABLE_FLAGS = ("overhead_bound", "unstable", "noisy", "contended", "throttled", "few_blocks")


def speed_verdict(low: float, high: float, band: float = SAME_BAND) -> str:
    """'higher' / 'lower' when the CI [low, high] of a ratio lies wholly beyond 1 ± band, 'same' inside it, 'n/a'
    without a CI. Callers name the direction ('slower', 'faster') from what their ratio divides."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    if low > 1 + band:
        return "higher"
    if high < 1 - band:
        return "lower"
    return "same"


def percent_of(tflops: float, peak_tflops: float | None) -> float:
    """Achieved TFLOP/s as % of a peak (NaN without one). The peak GEMM itself is exactly 100."""
    if peak_tflops is None or not math.isfinite(peak_tflops) or peak_tflops <= 0 or not math.isfinite(tflops):
        return math.nan
    return 100.0 * (tflops / peak_tflops)  # the ratio first: (100 · x) / x is not always exactly 100


def _float(value: Any) -> float:
    """JSON numbers, None and the strings "nan"/"inf" → float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _items(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (mapping or {}).items()))


# ------------------------------------------------------------------------------------------------ identity
@dataclass(frozen=True)
class MeasurementKey:
    """What a measurement is of: case × framework × variant × run-wide settings. Two records with one key measured
    the same thing (a resumed run must not repeat it; `compare` pairs on it; the report pools it across runs)."""

    case: str
    backend: str
    device: str
    dtype: str
    pass_: str
    mode: str
    layout: str
    math: str
    threads: int | None
    options: tuple[tuple[str, str], ...] = ()
    l2: str = "warm"  # GPU cache state; "warm" for every CPU run and for records older than the field

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> MeasurementKey:
        """From a record's (or a task's) identity fields, as results files name them."""
        return cls(case=data["case"], backend=data["backend"], device=data["device"], dtype=data["dtype"],
                   pass_=data["pass"], mode=data["mode"], layout=data["layout"], math=data["math"],
                   threads=data.get("threads"), options=_items(data.get("options")), l2=data.get("l2") or "warm")

    def fields(self) -> dict[str, Any]:
        """The identity fields as a results record names them."""
        return {name: (dict(self.options) if name == "options" else getattr(self, _ATTR.get(name, name)))
                for name in KEY_FIELDS}

    @property
    def options_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.options)

    @property
    def variant(self) -> str:
        """Mode, layout, math, threads, L2 state (when cold) and options, as one label."""
        l2 = f"{self.l2} L2" if self.l2 not in ("warm", None) else ""  # None: blanked by across()
        threads = f"{self.threads} thread{'s' * (self.threads != 1)}" if self.threads is not None else ""
        return " · ".join(p for p in (self.mode, self.layout, self.math, threads, l2, self.options_text) if p)

    @property
    def label(self) -> str:
        return f"{self.case} · {self.backend} · {self.pass_} · {self.dtype} · {self.device} · {self.variant}"

    def across(self, names: Iterable[str]) -> MeasurementKey:
        """This key with the fields ``names`` (record names, e.g. "math") blanked: what pairs two runs that differ
        in those settings (``compare --across math``)."""
        blank = {_ATTR.get(name, name): (() if name == "options" else None) for name in names}
        return replace(self, **blank)


_ATTR = {"pass": "pass_"}  # record field name -> attribute
KEY_FIELDS: tuple[str, ...] = tuple("pass" if f.name == "pass_" else f.name for f in dataclass_fields(MeasurementKey))


def measurement_key(record: Mapping[str, Any]) -> MeasurementKey:
    """The identity of a record (or of a task's identity fields)."""
    return MeasurementKey.from_fields(record)


# ------------------------------------------------------------------------------------------------ measurement
@dataclass(frozen=True)
class Check:
    """The numerical check against the float64 reference: relative error per output and the tolerance."""

    status: str  # "pass" or "fail"
    errors: Mapping[str, float]
    tolerance: float
    reduced: bool = False  # checked on a reduced batch (a large case)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=math.nan)

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> Check | None:
        if not data:
            return None
        return cls(data.get("status", "pass"), {str(k): _float(v) for k, v in (data.get("errors") or {}).items()},
                   _float(data.get("tolerance")), bool(data.get("reduced", False)))

    def to_record(self) -> dict[str, Any]:
        return {"status": self.status, "errors": dict(self.errors), "tolerance": self.tolerance,
                "reduced": self.reduced}


@dataclass(frozen=True)
class Measurement:
    """One case × framework × variant as recorded: identity, provenance, status, raw block times, statistics (with
    their final flags), the check, and the rates derived from them (computed here only)."""

    key: MeasurementKey
    status: str
    run_id: str | None = None
    reason: str | None = None
    op: Op | None = None
    shape: str | None = None
    provenance: Mapping[str, str] = field(default_factory=dict)  # network, layer, source, derivation
    count: int = 1
    tags: tuple[str, ...] = ()
    flops: float = math.nan
    bytes: float = math.nan
    block_times: tuple[float, ...] = ()
    calls_per_block: int = 1
    stats: Summary | None = None
    check: Check | None = None
    first_call_s: float = math.nan
    default_variant: bool | None = None  # None in results written before it was recorded
    versions: Mapping[str, str] = field(default_factory=dict)  # the worker's, as it reported them
    flags: Mapping[str, Any] = field(default_factory=dict)  # the framework's flags read back by the worker
    details: Mapping[str, Any] = field(default_factory=dict)  # what the backend recorded (e.g. the kernel it chose)
    finished: str = ""  # ISO time the measurement was written
    retry_of: Mapping[str, Any] | None = None  # the failed record this one measures again (run --retry-failed)
    extra: Mapping[str, Any] = field(default_factory=dict)  # other recorded facts (gpu_state, cold_cache, ...)

    # --- reading and writing: the only two places a measurement record is read or written -----------------
    @classmethod
    def from_record(cls, m: Mapping[str, Any]) -> Measurement:
        """A validated, migrated ``measurement`` record as a typed value."""
        stats = m.get("stats")
        times = tuple(_float(t) for t in m.get("block_times") or ())
        calls = m.get("calls_per_block") or (stats or {}).get("calls_per_block") or 1
        return cls(
            key=MeasurementKey.from_fields(m), status=m["status"], run_id=m.get("run_id"), reason=m.get("reason"),
            op=op_from_dict(m["dims"]) if m.get("dims") else None, shape=m.get("shape"),
            provenance={str(k): str(v) for k, v in (m.get("provenance") or {}).items()}, count=m.get("count") or 1,
            tags=tuple(m.get("tags") or ()), flops=_float(m.get("flops")), bytes=_float(m.get("bytes")),
            block_times=times, calls_per_block=calls, stats=_summary(stats, len(times), calls) if stats else None,
            check=Check.from_record(m.get("check")),
            first_call_s=_float(m.get("first_call_s")), default_variant=m.get("default_variant"),
            versions={str(k): str(v) for k, v in (m.get("versions") or {}).items()}, flags=dict(m.get("flags") or {}),
            details=dict(m.get("details") or {}), finished=str(m.get("finished") or ""), retry_of=m.get("retry_of"),
            extra={k: v for k, v in m.items() if k not in _MODELLED})

    def to_record(self) -> dict[str, Any]:
        """The ``measurement`` record, as the writer stores it (rates included, for readers of the raw JSON)."""
        record: dict[str, Any] = {"record": "measurement", "run_id": self.run_id, **self.key.fields()}
        if self.op is not None:
            record.update(op=self.op.kind, dims=op_to_dict(self.op), shape=self.shape or self.op.describe())
        record.update(provenance=dict(self.provenance), count=self.count, tags=list(self.tags),
                      flops=None if math.isnan(self.flops) else self.flops,
                      bytes=None if math.isnan(self.bytes) else self.bytes, default_variant=self.default_variant,
                      versions=dict(self.versions), flags=dict(self.flags), finished=self.finished,
                      status=self.status, reason=self.reason)
        if self.details:
            record["details"] = dict(self.details)
        if not math.isnan(self.first_call_s):
            record["first_call_s"] = self.first_call_s
        if self.check is not None:
            record["check"] = self.check.to_record()
        if self.block_times:
            record.update(block_times=list(self.block_times), calls_per_block=self.calls_per_block)
        if self.stats is not None:
            record["stats"] = self.stats.as_dict()
            if math.isfinite(self.tflops):
                record["tflops"] = self.tflops
            if math.isfinite(self.busbw_gbps):  # a collective: both of nccl-tests' rates, for readers of the JSON
                record.update(algbw_gbps=self.gbps, busbw_gbps=self.busbw_gbps)
        if self.retry_of is not None:
            record["retry_of"] = dict(self.retry_of)
        record.update(self.extra)
        return record

    # --- what every consumer asks ---------------------------------------------------------------------------
    @property
    def case(self) -> str:
        return self.key.case

    @property
    def backend(self) -> str:
        return self.key.backend

    @property
    def per_call(self) -> tuple[float, ...]:
        """Seconds per call of each block."""
        return tuple(t / self.calls_per_block for t in self.block_times)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        """It errored, crashed, timed out, ran out of memory or failed the numerical check (what --retry-failed
        measures again and what makes `run` and `check` exit 1)."""
        return self.status in FAILED_STATUSES or (self.check is not None and self.check.failed)

    @property
    def problem(self) -> str | None:
        """Why its time cannot be compared (not ok, failed check, no block times), or None."""
        if self.status != "ok":
            return self.status + (f": {self.reason}" if self.reason else "")
        if self.check is not None and self.check.failed:
            return "numerical check failed"
        if not self.block_times:
            return "no block times recorded"
        return None

    @property
    def timing_flags(self) -> tuple[str, ...]:
        return self.stats.flags if self.stats else ()

    @property
    def unreliable(self) -> tuple[str, ...]:
        """The timing flags under which its time is not evidence of a speed change (UNRELIABLE_FLAGS)."""
        return tuple(f for f in self.timing_flags if f in UNRELIABLE_FLAGS)

    @property
    def median(self) -> float:
        return self.stats.median if self.stats else math.nan

    @property
    def tflops(self) -> float:
        """Achieved TFLOP/s at the median (NaN unless it ran)."""
        return self.flops / self.median / 1e12 if self.ok and self.median > 0 else math.nan

    @property
    def gbps(self) -> float:
        """Minimum bytes moved per second at the median (NaN unless it ran); an all-reduce's algorithm bandwidth."""
        return self.bytes / self.median / 1e9 if self.ok and self.median > 0 else math.nan

    @property
    def busbw_gbps(self) -> float:
        """A collective's bus bandwidth, GB/s: algbw (``gbps``) × its kind's ``bus_factor`` (nccl-tests' 2(R−1)/R for
        an all-reduce); NaN for other kinds or unless it ran."""
        factor = getattr(self.op, "bus_factor", None)
        return self.gbps * factor if factor is not None else math.nan

    @property
    def version(self) -> str:
        """The framework's version as its worker reported it ("" where unknown)."""
        return str(self.versions.get(self.key.backend, ""))

    @property
    def throttle_reasons(self) -> tuple[str, ...]:
        """GPU: NVML throttle reasons seen at the start or end of the measurement."""
        return tuple((self.extra.get("gpu_state") or {}).get("throttled") or ())

    def supersedes(self, other: Measurement) -> bool:
        """The one policy for two records of one key: a re-measurement supersedes what it retries; otherwise the
        later finished wins; within the same second (``finished`` is to the second) one that did not fail wins, then
        the larger run id, so the choice never depends on the order the files were read in."""
        if other.retry_of and other.retry_of.get("run_id") == self.run_id and self.run_id != other.run_id:
            return False
        if self.retry_of and self.retry_of.get("run_id") == other.run_id:
            return True
        if self.finished != other.finished:
            return self.finished > other.finished
        if self.failed != other.failed:
            return other.failed
        return (self.run_id or "") >= (other.run_id or "")


_MODELLED = {"record", "schema", "run_id", *KEY_FIELDS, "op", "dims", "shape", "provenance", "count", "tags", "flops",
             "bytes", "block_times", "calls_per_block", "stats", "check", "first_call_s", "default_variant",
             "versions", "flags", "details", "finished", "retry_of", "status", "reason", "tflops", "migrated_from",
             "algbw_gbps", "busbw_gbps"}


def _summary(stats: Mapping[str, Any], blocks: int, calls_per_block: int) -> Summary:
    """Stored statistics (validated against the raw samples on read); counts default to the raw samples'."""
    return Summary(median=_float(stats.get("median")), ci_low=_float(stats.get("ci_low")),
                   ci_high=_float(stats.get("ci_high")), rel_iqr=_float(stats.get("rel_iqr")),
                   min=_float(stats.get("min")), mean=_float(stats.get("mean")), blocks=stats.get("blocks", blocks),
                   calls_per_block=stats.get("calls_per_block", calls_per_block), flags=tuple(stats.get("flags") or ()))


# ------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class CpuInfo:
    model: str = "unknown CPU"
    architecture: str = ""
    logical_cpus: int | None = None
    usable_cpus: int | None = None
    threads_per_core: int | None = None
    mhz: float | None = None  # /proc/cpuinfo: the current or, on VMs, the nominal clock
    max_mhz: float | None = None
    max_mhz_source: str | None = None
    llc_bytes: int | None = None
    vector_flags: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> CpuInfo:
        known = {f.name for f in dataclass_fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known and v is not None}
        if "vector_flags" in values:
            values["vector_flags"] = tuple(values["vector_flags"])
        return cls(**values)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as a header records it: NVML's facts (``suite.gpu_state.describe``) or, where NVML was not read,
    nvidia-smi's (name, memory as text, driver)."""

    name: str = "GPU"
    memory_bytes: int | None = None
    memory: str = ""  # nvidia-smi's text
    driver: str = ""  # nvidia-smi's
    max_sm_clock_mhz: float | None = None
    clocks_locked: bool | None = None  # None: unknown
    clocks_locked_by: tuple[str, ...] = ()  # what shows the lock (older headers name none)
    power_limit_w: float | None = None

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> GpuInfo:
        known = {f.name for f in dataclass_fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values["clocks_locked_by"] = tuple(values.get("clocks_locked_by") or ())
        values["name"] = str(values.get("name") or "GPU")
        return cls(**values)


@dataclass(frozen=True)
class NvmlInfo:
    """What NVML said of the machine: driver, CUDA driver API and its GPUs; or why it could not be read."""

    driver: str | None = None
    cuda_driver: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    unread: str | None = None  # why NVML was not read

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> NvmlInfo | None:
        if data is None:
            return None
        return cls(data.get("driver"), data.get("cuda_driver"),
                   tuple(GpuInfo.from_record(g) for g in data.get("gpus") or ()), data.get("nvml"))


@dataclass(frozen=True)
class Environment:
    """The machine a run happened on (``suite.environment.capture``), typed."""

    hostname: str = "unknown host"
    os: str = ""
    platform: str = ""
    python: str = ""
    cpu: CpuInfo = field(default_factory=CpuInfo)
    memory_bytes: int | None = None
    gpus: tuple[GpuInfo, ...] = ()  # nvidia-smi's view
    packages: Mapping[str, str] = field(default_factory=dict)
    opbench: Mapping[str, Any] = field(default_factory=dict)  # commit, dirty
    knobs: Mapping[str, str] = field(default_factory=dict)
    nvml: NvmlInfo | None = None  # driver, CUDA, GPUs, clocks locked
    load_average: tuple[float, ...] = ()
    memory_bandwidth: Mapping[str, Any] | None = None
    link_bandwidth: LinkBandwidth | None = None  # NVML's or the user's; None in headers written before it

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> Environment:
        data = data or {}
        return cls(hostname=data.get("hostname") or "unknown host", os=data.get("os") or "",
                   platform=data.get("platform") or "", python=data.get("python") or "",
                   cpu=CpuInfo.from_record(data.get("cpu")), memory_bytes=data.get("memory_bytes"),
                   gpus=tuple(GpuInfo.from_record(g) for g in data.get("gpus") or ()),
                   packages=dict(data.get("packages") or {}),
                   opbench=dict(data.get("opbench") or {}), knobs=dict(data.get("knobs") or {}),
                   nvml=NvmlInfo.from_record(data.get("nvml")), load_average=tuple(data.get("load_average") or ()),
                   memory_bandwidth=data.get("memory_bandwidth"),
                   link_bandwidth=LinkBandwidth.from_record(data.get("link_bandwidth")))

    @property
    def machine(self) -> str:
        """Hostname and CPU model, plus the GPU models when the machine has any."""
        gpus = sorted({g.name for g in self.gpus})
        return " · ".join([self.hostname, self.cpu.model, *gpus])

    @property
    def commit(self) -> str | None:
        return self.opbench.get("commit")

    @property
    def dirty(self) -> bool:
        """The opbench checkout had uncommitted changes."""
        return bool(self.opbench.get("dirty"))


@dataclass(frozen=True)
class RunHeader:
    """One run session: when, the command, the machine, the timing settings and the catalog facts it ran with."""

    run_id: str | None
    created: str = ""
    command: tuple[str, ...] = ()
    environment: Environment = field(default_factory=Environment)
    timing: Mapping[str, Any] | None = None
    check: bool | None = None
    seed: int | None = None
    networks: tuple[NetworkSet, ...] | None = None  # None: written before runs recorded their catalog (schema 1)
    raw_environment: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_record(cls, h: Mapping[str, Any]) -> RunHeader:
        catalog = h.get("catalog")
        networks = None if catalog is None else tuple(NetworkSet.from_record(n) for n in catalog.get("networks", ()))
        return cls(run_id=h.get("run_id"), created=str(h.get("created") or ""),
                   command=tuple(map(str, h.get("command") or ())),
                   environment=Environment.from_record(h.get("environment")), timing=h.get("timing"),
                   check=h.get("check"), seed=h.get("seed"), networks=networks,
                   raw_environment=dict(h.get("environment") or {}))

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"record": "header", "run_id": self.run_id, "created": self.created,
                                  "command": list(self.command), "environment": dict(self.raw_environment),
                                  "timing": self.timing, "check": self.check, "seed": self.seed}
        record["catalog"] = None if self.networks is None else {"networks": [n.to_record() for n in self.networks]}
        return record


@dataclass(frozen=True)
class WorkerInfo:
    """A framework's worker process in one run: versions and the flags read back from the framework."""

    run_id: str | None
    backend: str
    device: str
    package: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    pid: int | None = None

    @classmethod
    def from_record(cls, w: Mapping[str, Any]) -> WorkerInfo:
        return cls(run_id=w.get("run_id"), backend=w["backend"], device=w["device"], package=w.get("package") or "",
                   versions={str(k): str(v) for k, v in (w.get("versions") or {}).items()},
                   flags=dict(w.get("flags") or {}), devices=tuple(w.get("devices") or ()), pid=w.get("pid"))

    def to_record(self) -> dict[str, Any]:
        return {"record": "worker", "run_id": self.run_id, "backend": self.backend, "device": self.device,
                "package": self.package, "versions": dict(self.versions), "flags": dict(self.flags),
                "devices": list(self.devices), "pid": self.pid}


@dataclass
class ResultSet:
    """Runs, workers and measurements of one or more results files, read once, with ONE policy for repeats: the
    same record read twice (a merged file beside its shards) counts once, and of two records of one key in one
    run lineage the one that supersedes the other stands (``Measurement.supersedes``). Measurements of one key from
    independent runs are all kept (the report pools them); ``latest()`` gives one per key by the same policy."""

    headers: list[RunHeader] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, other: ResultSet) -> None:
        """Join another set into this one under the policy."""
        seen_runs = {h.run_id for h in self.headers}
        self.headers += [h for h in other.headers if h.run_id not in seen_runs or h.run_id is None]
        self.workers += [w for w in other.workers if w not in self.workers]
        self.measurements = _resolve([*self.measurements, *other.measurements])
        self.warnings += other.warnings

    def latest(self) -> dict[MeasurementKey, Measurement]:
        """One measurement per key: the one that supersedes every other (resume, merge, compare, history)."""
        out: dict[MeasurementKey, Measurement] = {}
        for m in self.measurements:
            if m.key not in out or m.supersedes(out[m.key]):
                out[m.key] = m
        return out

    def keys(self) -> set[MeasurementKey]:
        return {m.key for m in self.measurements}

    def header(self, run_id: str | None) -> RunHeader | None:
        return next((h for h in self.headers if h.run_id == run_id), None)

    def workers_of(self, run_id: str | None) -> list[WorkerInfo]:
        return [w for w in self.workers if w.run_id == run_id]

    def machines(self) -> dict[str | None, str]:
        """run id → machine name."""
        return {h.run_id: h.environment.machine for h in self.headers}

    def network_sets(self) -> tuple[NetworkSet, ...] | None:
        """The network layer sets of the catalogs the runs used (each set as its run recorded it; a set recorded
        differently by two runs keeps the first run's, with a warning); None when no run recorded its catalog."""
        recorded = [h.networks for h in self.headers if h.networks is not None]
        if not recorded:
            return None
        sets: dict[str, NetworkSet] = {}
        for networks in recorded:
            for n in networks:
                if n.set in sets and sets[n.set] != n:
                    self.warnings.append(f"network set {n.set} was recorded with different layers by two runs "
                                         "(the catalog changed between them); the first run's layers are used")
                sets.setdefault(n.set, n)
        return tuple(sets.values())


def _resolve(measurements: list[Measurement]) -> list[Measurement]:
    """Drop records read twice (same run and key) and records a re-measurement of the same key supersedes."""
    by_run: dict[tuple[MeasurementKey, str | None], int] = {}
    out: list[Measurement] = []
    for m in measurements:
        at = by_run.get((m.key, m.run_id))
        if at is None:
            by_run[(m.key, m.run_id)] = len(out)
            out.append(m)
        elif m.supersedes(out[at]):
            out[at] = m
    retried = {(m.key, m.retry_of.get("run_id")) for m in out if m.retry_of}
    return [m for m in out if (m.key, m.run_id) not in retried]


# ------------------------------------------------------------------------------------------------ the file
def _v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 headers did not record the catalog: ``catalog`` None (the report judges their networks against the
    bundled catalog, and says so)."""
    if record.get("record") == "header":
        record.setdefault("catalog", None)
    return record


# Migrations from schema N to N+1, applied in order on read (asv's update_to_N).
MIGRATIONS: dict[int, Any] = {1: _v1_to_v2}


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
               "timing": (lambda v: v is None or isinstance(v, dict), "an object or null"),
               "catalog": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("networks", []), list)),
                           "an object with a list of networks, or null")},
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


def read_results(path: str | Path) -> ResultSet:
    """Read, migrate, validate and type one results file."""
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
    results = ResultSet()
    lines = data.split(b"\n")
    measurements: list[Measurement] = []
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
        if record["record"] == "header":
            results.headers.append(RunHeader.from_record(record))
        elif record["record"] == "worker":
            results.workers.append(WorkerInfo.from_record(record))
        else:
            measurements.append(Measurement.from_record(record))
    results.measurements = _resolve(measurements)  # a --retry-failed record supersedes the failure it retries
    return results


def schemas_migrated(path: str | Path) -> list[int]:
    """The older schemas of the records in a results file (what a resumed run refuses to append to)."""
    found = set()
    for raw in Path(path).read_bytes().split(b"\n"):
        record, problem = _parse_line(raw) if raw.strip() else (None, "empty")
        if not problem and isinstance(record, dict) and isinstance(record.get("schema"), int):
            found.add(record["schema"])
    return sorted(v for v in found if v < SCHEMA_VERSION)


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


def read_many(paths: Iterable[str | Path]) -> ResultSet:
    """Every results file of ``paths`` (files, and ``*.jsonl`` under folders) as one set, under the one policy."""
    merged = ResultSet()
    for path in result_files(paths):
        merged.add(read_results(path))
    return merged


def merge_conflicts(results: ResultSet) -> list[str]:
    """Why these runs are not one configuration (empty when they may merge), naming each differing key.

    Per backend and device, the framework versions must agree across all runs, and the flags read back across the
    runs with the same backend options (``--option``: part of each measurement's identity, e.g. jax.jsonl and
    jax-ynn-off.jsonl of the main job, whose XLA_FLAGS differ by design).
    """
    options = {(m.run_id, m.key.backend, m.key.device): m.key.options_text for m in results.measurements}
    groups: dict[tuple[str, str, str, str], list[WorkerInfo]] = {}
    for worker in results.workers:
        run_options = options.get((worker.run_id, worker.backend, worker.device), "")
        groups.setdefault((worker.backend, worker.device, "versions", ""), []).append(worker)
        groups.setdefault((worker.backend, worker.device, "flags", run_options), []).append(worker)
    conflicts = []
    for (backend, device, what, run_options), workers in groups.items():
        names = dict.fromkeys(name for w in workers for name in getattr(w, what))
        for name in names:
            seen: dict[str, str] = {}  # value → first run holding it
            for w in workers:
                seen.setdefault(json.dumps(getattr(w, what).get(name, "absent")), str(w.run_id))
            if len(seen) > 1:
                among = f" (runs with options {run_options})" if run_options else ""
                conflicts.append(f"{backend} on {device}: {what}.{name} differs{among}: " + "; ".join(
                    f"{value} in run {run}" for value, run in seen.items()))
    return conflicts


class Merged(NamedTuple):
    written: int  # measurements written
    runs: int
    superseded: int  # records left out: another record of their key supersedes them
    warnings: list[str]  # what the readers said (partial last lines, migrated schemas)


def merge_files(paths: Iterable[str | Path], out: str | Path, allow_mixed: bool = False) -> Merged:
    """Write the runs and the latest measurement of each key (``ResultSet.latest``) of ``paths`` into a new file
    ``out``; refuse runs of different versions or flags unless ``allow_mixed``, and inputs without a measurement."""
    paths = list(paths)
    results = read_many(paths)
    if not results.measurements:
        raise ResultsError(f"{', '.join(map(str, paths))}: no measurements to merge (empty results files, or runs "
                           "that stopped before their first measurement finished)")
    conflicts = merge_conflicts(results)
    if conflicts and not allow_mixed:
        raise ResultsError(f"these results were not measured under one configuration: {'; '.join(conflicts)}. "
                           "Compare them (python -m suite compare) or report them instead, or pass --allow-mixed")
    out = Path(out)
    if out.exists():
        raise ResultsError(f"{out} exists; choose a new output file")
    latest = results.latest()
    kept = [m for m in results.measurements if latest[m.key] is m]
    with ResultsWriter(out) as writer:
        for record in [*results.headers, *results.workers, *kept]:
            writer.write(record.to_record())
    return Merged(len(kept), len(results.headers), len(results.measurements) - len(kept), results.warnings)


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

