"""What a measurement is besides its shape: the run-wide ``Settings`` of a worker and the ``Variant`` of one call.

Framework-free: built by the runner and the worker, sent between them as ``dataclasses.asdict``, and read by the
backends (``backends.base`` re-exports both); each side rebuilds them with ``Settings(**data)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from suite.ops import Pass


@dataclass(frozen=True)
class Settings:
    """Run-wide settings, applied once per worker before anything is measured."""

    device: str = "cpu"
    threads: int | None = None  # None: the framework's default
    math: str = "strict"  # "strict" (IEEE fp32) or "tf32"
    options: Mapping[str, str] = field(default_factory=dict)  # backend-specific knobs, recorded with the results

    def __hash__(self) -> int:  # options is a dict: hash its items, so settings can key a worker group
        return hash((self.device, self.threads, self.math, tuple(sorted(self.options.items()))))


@dataclass(frozen=True)
class Variant:
    """Everything about one measurement besides the shape."""

    pass_: Pass
    dtype: str = "fp32"
    mode: str = ""  # "" = the backend's default mode
    layout: str = ""  # "" = the backend's default layout for the op
