"""The GPU's state through NVML (``nvidia-ml-py``, imported lazily): clocks, power, temperature, throttling.

Framework-free. ``open_monitor`` finds the NVML device a framework's GPU is on: by the UUID or PCI bus id the
backend reads from its framework (torch), or by the framework's CUDA device ordinal looked up in the visible device
list (``visible_gpu_id``: TensorFlow, JAX), and records which GPU that is (NVML index, UUID, PCI bus id, name);
``GpuMonitor.sample`` reads its state; the worker samples at the start and end of each measurement and flags one
taken while throttled. ``describe`` gives the environment block (driver, CUDA, each GPU's name, memory, whether its
clocks were locked, and its interconnect: active NVLink links and the PCIe link, ``interconnect``);
``nvml_link_bandwidth`` turns that into the link bandwidth the all-reduce figures compare bus bandwidth with
(``LinkBandwidth``). Calls NVML deprecates as of CUDA 13 (to be removed in 14) are used only where their
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

# NVLink. nvmlDeviceGetNvLinkVersion answers NVML's nvmlNvlinkVersion_t, an enum, not the version number (an A100
# answers 4 or 5, NVLink 3.0 or 3.1; an H100 6, NVLink 4.0): NVML API Reference, nvmlNvlinkVersion_t
# (https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceEnumvs.html), as hwloc found when it read the answer as
# the version (https://github.com/open-mpi/hwloc/issues/658).
NVLINK_VERSIONS = {1: (1, 0), 2: (2, 0), 3: (2, 2), 4: (3, 0), 5: (3, 1), 6: (4, 0), 7: (5, 0), 8: (6, 0)}
# GB/s per link per direction by NVLink major version: NVIDIA's per-GPU total (both directions) over its link count,
# halved. 1: P100, 4 links, 160 GB/s; 2: V100, 6 links, 300 GB/s (NVIDIA DGX-1 with Tesla V100 System Architecture
# whitepaper); 3: A100, 12 links, 600 GB/s; 4: H100 and H200, 18 links, 900 GB/s; 5: Blackwell, 18 links of 100 GB/s,
# 1.8 TB/s, "900 GB/s in each direction" (https://www.nvidia.com/en-us/data-center/nvlink/). Not every NVLink 3 link
# is an A100's: GA102 boards (RTX 3090, A40, RTX A6000) have four x4 links of 14.0625 GB/s per direction (NVIDIA Ampere
# GA102 GPU Architecture whitepaper), which this table overstates; give such a machine's figure with
# run --link-bandwidth. NVLink 6 is left out until NVIDIA publishes its per-link figure.
NVLINK_GBPS_PER_LINK = {1: 20.0, 2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}
# PCIe GB/s per lane per direction by generation, after line encoding (PCI Express Base Specification): 8b/10b at 2.5
# and 5 GT/s (gen 1, 2); 128b/130b at 8, 16, 32 GT/s (gen 3, 4, 5: 0.985, 1.969, 3.938); gen 6 (64 GT/s, PAM4) drops
# 128b/130b for 256-byte FLITs, of which 242 bytes carry TLPs and DLLPs (8 CRC, 6 FEC): 8 × 242/256 = 7.563 (PCI-SIG's
# "256 GB/s" for a gen 6 x16 link is both directions before that). Packet headers are not taken off, as for NVLink.
PCIE_GBPS_PER_LANE = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
NVML_FEATURE_ENABLED = 1  # nvmlEnableState_t: an active NVLink link
NVLINK_MAX_LINKS = 18  # where pynvml lacks NVML_NVLINK_MAX_LINKS (nvidia-ml-py 13 has 36)
# Where a link bandwidth comes from: NVML's interconnect of the GPUs, or the user (run --link-bandwidth), which wins.
NVML_SOURCE, USER_SOURCE = "NVML", "user"
NO_LINK = "no link bandwidth: none from NVML, none given with --link-bandwidth"


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


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}" if version[1] == 0 else f"{version[0]}.{version[1]}"


def interconnect(nvml: Any, handle: Any) -> dict[str, Any]:
    """One GPU's links as NVML reports them. NVLink: the active links among 0 … NVML_NVLINK_MAX_LINKS−1 (a link NVML
    refuses is none; every link refused: not supported, ``nvlink`` says so), their version and GB/s per link per
    direction (NVLINK_GBPS_PER_LINK). PCIe: the current link (which an idle GPU may train down) and the maximum this
    GPU and slot reach, generation and width, GB/s per lane per direction (PCIE_GBPS_PER_LANE). ``gbps`` and ``basis``:
    the GPU's link bandwidth per direction, its NVLink where one is active, else its PCIe link at its maximum."""
    states: dict[int, bool] = {}
    refused = None
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS)):
        try:
            states[link] = nvml.nvmlDeviceGetNvLinkState(handle, link) == NVML_FEATURE_ENABLED
        except Exception as exc:  # NotSupported on a GPU without NVLink, InvalidArgument past its last link
            refused = refused or exc
    active = [link for link, on in states.items() if on]
    raw = _field(lambda: nvml.nvmlDeviceGetNvLinkVersion(handle, active[0])) if active else None
    version = NVLINK_VERSIONS.get(raw)
    per_link = NVLINK_GBPS_PER_LINK.get(version[0]) if version else None
    if not states:
        why = f"not supported ({_text(refused)})" if refused else "not supported"
    elif not active:
        why = "no active link"
    elif version is None:
        why = "NVML gave no NVLink version it documents"
    elif per_link is None:
        why = f"NVLink {_version_text(version)} is not in opbench's per-link table (suite/gpu_state.py)"
    else:
        why = None
    pcie = {"pcie_current_generation": _field(lambda: nvml.nvmlDeviceGetCurrPcieLinkGeneration(handle)),
            "pcie_current_width": _field(lambda: nvml.nvmlDeviceGetCurrPcieLinkWidth(handle)),
            "pcie_max_generation": _field(lambda: nvml.nvmlDeviceGetMaxPcieLinkGeneration(handle)),
            "pcie_max_width": _field(lambda: nvml.nvmlDeviceGetMaxPcieLinkWidth(handle))}
    generation = pcie["pcie_max_generation"] or pcie["pcie_current_generation"]
    width = pcie["pcie_max_width"] or pcie["pcie_current_width"]
    lane = PCIE_GBPS_PER_LANE.get(generation)
    out: dict[str, Any] = {
        "nvlink_links": len(active) if states else None, "nvlink_version": _version_text(version) if version else None,
        "nvlink_gbps_per_link": per_link, "nvlink_gbps": per_link * len(active) if per_link else None, "nvlink": why,
        **pcie, "pcie_gbps_per_lane": lane, "pcie_gbps": lane * width if lane and width else None,
        "gbps": None, "basis": f"NVLink {why}; PCIe link unknown"}
    which = "maximum" if pcie["pcie_max_generation"] and pcie["pcie_max_width"] else "current"
    if out["nvlink_gbps"]:
        out.update(gbps=out["nvlink_gbps"], basis=f"{len(active)} NVLink {out['nvlink_version']} links × "
                                                  f"{per_link:g} GB/s per direction")
    elif out["pcie_gbps"]:
        out.update(gbps=out["pcie_gbps"], basis=f"PCIe gen {generation} x{width} ({which} link) × {lane:g} GB/s per "
                                                f"lane per direction (NVLink: {why})")
    return out


@dataclass(frozen=True)
class LinkBandwidth:
    """The link bandwidth a collective's bus bandwidth compares with, GB/s per direction (nccl-tests' busbw is meant
    to be compared with the hardware's peak link speed): from NVML's view of the GPUs' interconnect or given by the
    user (``source``), its ``basis`` in words, ``kind`` the link ("NVLink", "PCIe", or "link" for the user's), and
    ``instead_of`` NVML's basis where the user's figure won over it. ``gbps`` None: there is none; ``basis`` says
    why."""

    gbps: float | None
    source: str | None = None
    basis: str = NO_LINK
    kind: str = "link"
    instead_of: str | None = None

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> LinkBandwidth | None:
        if not data:
            return None
        gbps = data.get("gbps")
        return cls(float(gbps) if gbps is not None else None, data.get("source"), str(data.get("basis") or NO_LINK),
                   str(data.get("kind") or "link"), data.get("instead_of"))

    def to_record(self) -> dict[str, Any]:
        return {"gbps": self.gbps, "source": self.source, "basis": self.basis, "kind": self.kind,
                "instead_of": self.instead_of}


def nvml_link_bandwidth(block: Mapping[str, Any] | None) -> LinkBandwidth:
    """The machine's link bandwidth from ``describe``'s block (None: NVML not read, as on a machine without
    nvidia-smi): the slowest GPU's (``interconnect``), as a collective across the GPUs waits for it."""
    if block is None or "nvml" in block:
        why = block["nvml"] if block else "no NVIDIA GPU here (no nvidia-smi)"
        return LinkBandwidth(None, basis=f"{NO_LINK} (NVML: {why})")
    gpus = [(g.get("index"), g.get("interconnect") or {}) for g in block.get("gpus") or ()]
    known = [(index, link) for index, link in gpus if link.get("gbps")]
    if not known:
        whys = "; ".join(dict.fromkeys(str(link.get("basis") or "not read") for _, link in gpus)) or "no GPU"
        return LinkBandwidth(None, basis=f"{NO_LINK} (NVML: {whys})")
    index, slowest = min(known, key=lambda k: k[1]["gbps"])
    same = all(link.get("basis") == slowest["basis"] for _, link in gpus)
    where = (f", each of {len(gpus)} GPUs" if len(gpus) > 1 else "") if same else \
        f", GPU {index}'s, the slowest of {len(gpus)}" + (
            f" ({len(gpus) - len(known)} with no link NVML gives)" if len(known) < len(gpus) else "")
    kind = "NVLink" if slowest.get("nvlink_gbps") == slowest["gbps"] else "PCIe"
    return LinkBandwidth(float(slowest["gbps"]), NVML_SOURCE, f"NVML: {slowest['basis']}{where}", kind)


def link_bandwidth(block: Mapping[str, Any] | None, given_gbps: float | None = None) -> LinkBandwidth:
    """The run's link bandwidth: the user's (run --link-bandwidth) where given, which wins over NVML's and names it
    (``instead_of``), else NVML's (``nvml_link_bandwidth``)."""
    found = nvml_link_bandwidth(block)
    if given_gbps is None:
        return found
    return LinkBandwidth(float(given_gbps), USER_SOURCE, f"given with --link-bandwidth {given_gbps:g}",
                         instead_of=found.basis if found.gbps is not None else None)


def describe(nvml: Any = None) -> dict[str, Any]:
    """The environment block: driver, CUDA driver API, and per GPU which it is, its memory, clocks (locked or not)
    and links (``interconnect``)."""
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
            "interconnect": interconnect(nvml, handle),
        })
    return out
