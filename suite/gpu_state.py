"""The GPU's state through NVML (``nvidia-ml-py``, imported lazily): clocks, power, temperature, throttling.

Framework-free. ``open_monitor`` finds the NVML device a framework's GPU is on: by the UUID or PCI bus id the
backend reads from its framework (torch), or by the framework's CUDA device ordinal looked up in the visible device
list (``visible_gpu_id``: TensorFlow, JAX), and records which GPU that is (NVML index, UUID, PCI bus id, name);
``GpuMonitor.sample`` reads its state; the worker samples at the start and end of each measurement and flags one
taken while throttled. ``describe`` gives the environment block (driver, CUDA, each GPU's name, memory, and whether
its clocks were locked). Calls NVML deprecates as of CUDA 13 (to be removed in 14) are used only where their
replacement is missing. Without NVML both say why and the run carries on. Tests pass a fake NVML module instead of
``pynvml``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping, Sequence
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
NVML_CLOCK_ID_APP_CLOCK_TARGET, NVML_CLOCK_ID_APP_CLOCK_DEFAULT = 1, 2  # nvmlClockId_t
# A user clock setting in effect: applications clocks (nvidia-smi -ac) or locked clocks (nvidia-smi -lgc), NVML's
# "user defined clocks" reason before its rename. NVML has no getter for a graphics clock lock; this reason shows it.
USER_CLOCKS = "applications_clocks_setting"


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


def _newest(nvml: Any, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> Any:
    """The answer of the first call, newest API first, that this ``pynvml`` has and this driver answers; None when
    none does. Deprecated calls come last: they are only the fallback for an older pynvml or driver."""
    for name, args in calls:
        read = getattr(nvml, name, None)
        if read is None:
            continue
        value = _field(lambda read=read, args=args: read(*args))
        if value is not None:
            return value
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (12090) as text ("12.9")."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_cuda_version(nvml: Any = None) -> tuple[int, int] | None:
    """The newest CUDA the installed driver supports, as (major, minor): the driver's own libcuda
    (``cuDriverGetVersion``, no CUDA context made), else NVML; None without a driver."""
    version = None
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        raw = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(raw)) == 0 and raw.value > 0:
            version = raw.value
    except (OSError, AttributeError):
        pass
    if version is None:
        if nvml is None:
            nvml, _ = load_nvml()
        if nvml is not None:
            version = _field(nvml.nvmlSystemGetCudaDriverVersion)
    return (version // 1000, version % 1000 // 10) if isinstance(version, int) and version > 0 else None


def identity(nvml: Any, handle: Any) -> dict[str, Any]:
    """Which GPU a handle is: NVML index, UUID, PCI bus id and name (each None where NVML does not tell)."""
    pci = _field(lambda: nvml.nvmlDeviceGetPciInfo(handle))
    return {"index": _field(lambda: nvml.nvmlDeviceGetIndex(handle)),
            "uuid": _field(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
            "pci_bus_id": _text(pci.busId) if getattr(pci, "busId", None) else None,
            "name": _field(lambda: _text(nvml.nvmlDeviceGetName(handle)))}


def reasons_mask(nvml: Any, handle: Any) -> int | None:
    """The clock event reasons bit mask now (the "throttle reasons" call is its deprecated name)."""
    return _newest(nvml, [("nvmlDeviceGetCurrentClocksEventReasons", (handle,)),
                          ("nvmlDeviceGetCurrentClocksThrottleReasons", (handle,))])


@dataclass
class GpuMonitor:
    """One NVML device; ``sample`` reads its state now; ``device`` says which GPU it is."""

    nvml: Any
    handle: Any
    matched_by: str  # how the framework's GPU was found among NVML's devices
    device: dict[str, Any] | None = None  # identity(): NVML index, UUID, PCI bus id, name

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = identity(self.nvml, self.handle)

    def memory_total_bytes(self) -> int | None:
        return getattr(_field(lambda: self.nvml.nvmlDeviceGetMemoryInfo(self.handle)), "total", None)

    def sample(self) -> dict[str, Any]:
        nvml, handle = self.nvml, self.handle
        mask = reasons_mask(nvml, handle)
        reasons = reason_names(mask) if mask is not None else None
        return {
            "sm_clock_mhz": _field(lambda: nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM)),
            "memory_clock_mhz": _field(lambda: nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_MEM)),
            "power_w": _field(lambda: nvml.nvmlDeviceGetPowerUsage(handle), 1e-3),
            "temperature_c": _newest(nvml, [("nvmlDeviceGetTemperatureV", (handle, NVML_TEMPERATURE_GPU)),
                                            ("nvmlDeviceGetTemperature", (handle, NVML_TEMPERATURE_GPU))]),
            "throttle_reasons": reasons,
            "throttled": None if reasons is None else bool(THROTTLING.intersection(reasons)),
        }


def visible_gpu_id(ordinal: int = 0, environ: Mapping[str, str] | None = None) -> str:
    """The id ``open_monitor`` takes for CUDA device ``ordinal`` of this process (what a framework numbers its GPUs
    by: TensorFlow's GPU:n, JAX's ``local_hardware_id``): its entry in ``CUDA_VISIBLE_DEVICES`` (an index, or a
    GPU-/MIG- UUID or a prefix of one), or without that list the same index ("index:n")."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None or not listed.strip():
        return f"index:{ordinal}"
    entries = [entry.strip() for entry in listed.split(",")]
    entry = entries[ordinal] if 0 <= ordinal < len(entries) else ""
    return f"index:{entry}" if entry.isdigit() else entry


def _by_uuid(nvml: Any, uuid: str) -> Any:
    """A handle by full UUID, or by the unique prefix CUDA_VISIBLE_DEVICES may give."""
    try:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(_field(nvml.nvmlDeviceGetCount) or 0)]
        found = [h for h in handles if str(_field(lambda h=h: _text(nvml.nvmlDeviceGetUUID(h)))).startswith(uuid)]
        if len(found) != 1:
            raise LookupError(f"{len(found)} NVML devices have a UUID starting {uuid}") from None
        return found[0]


def _lookup(nvml: Any, device_id: str) -> tuple[Any, str]:
    """The handle of an id ("GPU-<uuid>", "MIG-<uuid>", "index:n", or a PCI bus id), and how it was matched."""
    if device_id.startswith(("GPU-", "MIG-")):
        return _by_uuid(nvml, device_id), f"uuid {device_id}"
    if device_id.startswith("index:"):
        return nvml.nvmlDeviceGetHandleByIndex(int(device_id.removeprefix("index:"))), f"NVML {device_id}"
    return nvml.nvmlDeviceGetHandleByPciBusId(device_id), f"pci bus id {device_id}"


def open_monitor(device_id: str | None = None, nvml: Any = None) -> tuple[GpuMonitor | None, str | None]:
    """A monitor of the GPU the framework uses, or None and why. ``device_id``: the backend's ``gpu_id()`` ("GPU-"
    UUID, PCI bus id, or ``visible_gpu_id``'s form); None or one NVML does not know (e.g. a MIG slice NVML names
    differently): the process's first visible GPU."""
    if nvml is None:
        nvml, reason = load_nvml()
        if nvml is None:
            return None, reason
    if device_id:
        try:
            handle, how = _lookup(nvml, device_id)
            return GpuMonitor(nvml, handle, how), None
        except Exception:
            pass
    first = visible_gpu_id(0)
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    try:
        handle, how = _lookup(nvml, first)
    except Exception as exc:
        return None, f"NVML has no device for this GPU ({first}): {exc}"
    return GpuMonitor(nvml, handle, f"{how}, first of CUDA_VISIBLE_DEVICES={listed}" if listed.strip() else
                      f"{how}, CUDA's first device (no CUDA_VISIBLE_DEVICES)"), None


def measurement_state(start: dict[str, Any], end: dict[str, Any], matched_by: str,
                      device: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a measurement record keeps: both samples, the throttling reasons seen in either, how the GPU was found
    and which GPU was sampled (``device``: NVML index, UUID, PCI bus id, name)."""
    seen = set(start.get("throttle_reasons") or ()) | set(end.get("throttle_reasons") or ())
    return {"start": start, "end": end, "gpu": matched_by, "sampled": device,
            "throttled": [name for name in REASONS.values() if name in THROTTLING and name in seen]}


def clock_lock(nvml: Any, handle: Any) -> dict[str, Any]:
    """Whether someone set the GPU's clocks: applications clocks away from their default (nvidia-smi -ac), or a user
    clock setting NVML reports as the clock event reason applications_clocks_setting (locked clocks, nvidia-smi
    -lgc, which NVML has no getter for). None when neither can be read."""
    app = _newest(nvml, [("nvmlDeviceGetClock", (handle, NVML_CLOCK_SM, NVML_CLOCK_ID_APP_CLOCK_TARGET)),
                         ("nvmlDeviceGetApplicationsClock", (handle, NVML_CLOCK_SM))])
    default = _newest(nvml, [("nvmlDeviceGetClock", (handle, NVML_CLOCK_SM, NVML_CLOCK_ID_APP_CLOCK_DEFAULT)),
                             ("nvmlDeviceGetDefaultApplicationsClock", (handle, NVML_CLOCK_SM))])
    mask = reasons_mask(nvml, handle)
    by = []
    if app is not None and default is not None and app != default:
        by.append(f"applications clocks {app} MHz (default {default} MHz)")
    if mask is not None and USER_CLOCKS in reason_names(mask):
        by.append(f"clock event reason {USER_CLOCKS} (locked or applications clocks)")
    known = (app is not None and default is not None) or mask is not None
    return {"applications_sm_clock_mhz": app, "default_applications_sm_clock_mhz": default,
            "clock_event_reasons": reason_names(mask) if mask is not None else None,
            "clocks_locked": bool(by) if known else None, "clocks_locked_by": by}


def describe(nvml: Any = None) -> dict[str, Any]:
    """The environment block: driver, CUDA driver API, and per GPU which it is, its memory and clocks (locked or
    not)."""
    if nvml is None:
        nvml, reason = load_nvml()
        if nvml is None:
            return {"nvml": reason}
    cuda = _field(nvml.nvmlSystemGetCudaDriverVersion)
    out: dict[str, Any] = {
        "driver": _field(lambda: _text(nvml.nvmlSystemGetDriverVersion())),
        "cuda_driver": cuda_version_text(cuda) if isinstance(cuda, int) else None,
        "gpus": [],
    }
    for index in range(_field(nvml.nvmlDeviceGetCount) or 0):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = _field(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
        out["gpus"].append({
            **identity(nvml, handle),
            "index": index,
            "memory_bytes": getattr(memory, "total", None),
            "max_sm_clock_mhz": _field(lambda h=handle: nvml.nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_SM)),
            **clock_lock(nvml, handle),
            "power_limit_w": _field(lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h), 1e-3),
        })
    return out
