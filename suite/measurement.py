"""A measurement record as a frozen value: ``Measurement.from_record`` reads one ``measurement`` line of a results
file (validated and migrated by ``suite.results``) and gives every field a type, a default for results written
before the field existed, and NaN for a number that is missing. Readers use it instead of picking at the dict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from suite.ops import Op, op_from_dict


def _float(value: Any) -> float:
    """JSON numbers, None and the strings "nan"/"inf" → float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class Measurement:
    """One case × framework × variant as recorded: identity, provenance, status, statistics and raw block times."""

    run_id: str | None
    case: str
    backend: str
    device: str | None
    dtype: str | None
    pass_: str | None
    mode: str | None
    layout: str | None
    math: str | None
    threads: int | None
    options: tuple[tuple[str, str], ...]
    l2: str  # GPU cache state: "warm" (also every CPU run and results older than the field) or "cold"
    op: Op | None
    shape: str | None
    network: str | None
    layer: str | None
    source: str | None
    derivation: str | None
    count: int
    tags: tuple[str, ...]
    status: str | None
    reason: str | None
    flops: float
    bytes: float
    calls_per_block: int
    block_times: tuple[float, ...]
    median: float
    ci_low: float
    ci_high: float
    rel_iqr: float
    min: float
    blocks: int | None
    flags: tuple[str, ...]
    check: str | None
    check_error: float  # the largest relative error of the numerical check
    first_call_s: float
    default_variant: bool | None  # None in results written before it was recorded
    version: str  # the framework's version as its worker reported it ("" where unknown)
    details: tuple[tuple[str, str], ...]  # what the backend recorded about the run (e.g. the kernel it chose)
    throttle_reasons: tuple[str, ...]  # GPU: NVML throttle reasons seen at the start or end of the measurement

    @classmethod
    def from_record(cls, m: dict[str, Any]) -> Measurement:
        stats, check, prov = m.get("stats") or {}, m.get("check") or {}, m.get("provenance") or {}
        return cls(
            run_id=m.get("run_id"), case=m["case"], backend=m["backend"], device=m.get("device"),
            dtype=m.get("dtype"), pass_=m.get("pass"), mode=m.get("mode"), layout=m.get("layout"),
            math=m.get("math"), threads=m.get("threads"), options=tuple(sorted((m.get("options") or {}).items())),
            l2=m.get("l2") or "warm", op=op_from_dict(m["dims"]) if m.get("dims") else None, shape=m.get("shape"),
            network=prov.get("network"), layer=prov.get("layer"), source=prov.get("source"),
            derivation=prov.get("derivation"), count=m.get("count") or 1, tags=tuple(m.get("tags") or ()),
            status=m.get("status"), reason=m.get("reason"), flops=_float(m.get("flops")),
            bytes=_float(m.get("bytes")),
            calls_per_block=m.get("calls_per_block") or stats.get("calls_per_block") or 1,
            block_times=tuple(_float(t) for t in m.get("block_times") or ()),
            median=_float(stats.get("median")), ci_low=_float(stats.get("ci_low")),
            ci_high=_float(stats.get("ci_high")), rel_iqr=_float(stats.get("rel_iqr")), min=_float(stats.get("min")),
            blocks=stats.get("blocks"), flags=tuple(stats.get("flags") or ()), check=check.get("status"),
            check_error=max(map(_float, (check.get("errors") or {}).values()), default=math.nan),
            first_call_s=_float(m.get("first_call_s")), default_variant=m.get("default_variant"),
            version=str((m.get("versions") or {}).get(m["backend"], "")),
            details=tuple(sorted((str(k), str(v)) for k, v in (m.get("details") or {}).items())),
            throttle_reasons=tuple((m.get("gpu_state") or {}).get("throttled") or ()),
        )

    @property
    def per_call(self) -> tuple[float, ...]:
        """Seconds per call of each block."""
        return tuple(t / self.calls_per_block for t in self.block_times)
