"""The GPU's state through NVML (``nvidia-ml-py``, imported lazily): clocks, power, temperature, throttling.

Framework-free. ``open_monitor`` finds the NVML device a framework's GPU 0 is on (by the UUID or PCI bus id the
backend reads from its framework, else the first entry of ``CUDA_VISIBLE_DEVICES``, else NVML's device 0), and
``GpuMonitor.sample`` reads its state; the worker samples at the start and end of each measurement and flags one
taken while throttled. ``describe`` gives the environment block (driver, CUDA, name, memory, whether clocks were
locked). Without NVML both say why and the run carries on. Tests pass a fake NVML module instead of ``pynvml``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# nvml.h clock event ("throttle") reason bits; the names NVML's headers give them.
REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting", 0x200: "board_limit", 0x400: "reliability",
}
# Reasons that mean the GPU ran below the clocks it was asked for while measuring (idle and settings do not).
THROTTLING = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                        "hw_power_brake_slowdown", "board_limit", "reliability"})
NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0  # nvml.h enum values


def load_nvml() -> tuple[ModuleType | None, str | None]:
    """``pynvml`` initialised, or None and why not (package missing, no driver)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError: no driver, no device, library not found
        return None, f"NVML did not start: {exc}"
    return pynvml, None


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in REASONS.items() if mask & bit]


def _field(read: Callable[[], Any], scale: float = 1.0) -> Any:
    """One NVML reading, or None where this GPU or driver does not report it (NVML raises NotSupported)."""
    try:
        value = read()
    except Exception:
        return None
    return value * scale if scale != 1.0 else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class GpuMonitor:
    """One NVML device; ``sample`` reads its state now."""

    nvml: Any
    handle: Any
    matched_by: str  # how the framework's GPU was found among NVML's devices

    def memory_total_bytes(self) -> int | None:
        return getattr(_field(lambda: self.nvml.nvmlDeviceGetMemoryInfo(self.handle)), "total", None)

    def sample(self) -> dict[str, Any]:
        nvml, handle = self.nvml, self.handle
        reasons_of = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)  # the newer name
                      or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        mask = _field(lambda: reasons_of(handle))  # None when neither exists (a TypeError, caught)
        reasons = reason_names(mask) if mask is not None else None
        return {
            "sm_clock_mhz": _field(lambda: nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM)),
            "memory_clock_mhz": _field(lambda: nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_MEM)),
            "power_w": _field(lambda: nvml.nvmlDeviceGetPowerUsage(handle), 1e-3),
            "temperature_c": _field(lambda: nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU)),
            "throttle_reasons": reasons,
            "throttled": None if reasons is None else bool(THROTTLING.intersection(reasons)),
        }


def open_monitor(device_id: str | None = None, nvml: Any = None) -> tuple[GpuMonitor | None, str | None]:
    """A monitor of the GPU the framework uses (``device_id``: "GPU-<uuid>" or a PCI bus id), or None and why."""
    if nvml is None:
        nvml, reason = load_nvml()
        if nvml is None:
            return None, reason
    if device_id:
        by_uuid = device_id.startswith(("GPU-", "MIG-"))
        try:
            lookup = nvml.nvmlDeviceGetHandleByUUID if by_uuid else nvml.nvmlDeviceGetHandleByPciBusId
            return GpuMonitor(nvml, lookup(device_id), f"{'uuid' if by_uuid else 'pci bus id'} {device_id}"), None
        except Exception:  # e.g. a MIG slice NVML names differently: fall back to the visible device
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    try:
        if visible.startswith(("GPU-", "MIG-")):
            return GpuMonitor(nvml, nvml.nvmlDeviceGetHandleByUUID(visible), f"CUDA_VISIBLE_DEVICES={visible}"), None
        index = int(visible) if visible.isdigit() else 0
        how = f"CUDA_VISIBLE_DEVICES={visible}" if visible.isdigit() else "NVML device 0"
        return GpuMonitor(nvml, nvml.nvmlDeviceGetHandleByIndex(index), how), None
    except Exception as exc:
        return None, f"NVML has no device for this GPU: {exc}"


def measurement_state(start: dict[str, Any], end: dict[str, Any], matched_by: str) -> dict[str, Any]:
    """What a measurement record keeps: both samples, and the throttling reasons seen in either."""
    seen = set(start.get("throttle_reasons") or ()) | set(end.get("throttle_reasons") or ())
    return {"start": start, "end": end, "gpu": matched_by,
            "throttled": [name for name in REASONS.values() if name in THROTTLING and name in seen]}


def describe(nvml: Any = None) -> dict[str, Any]:
    """The environment block: driver, CUDA driver API, and per GPU its name, memory and clocks (locked or not)."""
    if nvml is None:
        nvml, reason = load_nvml()
        if nvml is None:
            return {"nvml": reason}
    cuda = _field(nvml.nvmlSystemGetCudaDriverVersion)
    out: dict[str, Any] = {
        "driver": _field(lambda: _text(nvml.nvmlSystemGetDriverVersion())),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
        "gpus": [],
    }
    for index in range(_field(nvml.nvmlDeviceGetCount) or 0):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        app = _field(lambda h=handle: nvml.nvmlDeviceGetApplicationsClock(h, NVML_CLOCK_SM))
        default = _field(lambda h=handle: nvml.nvmlDeviceGetDefaultApplicationsClock(h, NVML_CLOCK_SM))
        memory = _field(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
        out["gpus"].append({
            "index": index,
            "name": _field(lambda h=handle: _text(nvml.nvmlDeviceGetName(h))),
            "memory_bytes": getattr(memory, "total", None),
            "max_sm_clock_mhz": _field(lambda h=handle: nvml.nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_SM)),
            "applications_sm_clock_mhz": app,
            "default_applications_sm_clock_mhz": default,
            # Locked: someone set applications clocks (nvidia-smi -ac) away from their default.
            "clocks_locked": None if app is None or default is None else app != default,
            "power_limit_w": _field(lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h), 1e-3),
        })
    return out
