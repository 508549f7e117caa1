"""Peaks: theoretical throughput (GPU datasheets, a CPU estimate), measured throughput (the best GEMM in the results)
and the memory-bandwidth roof (GPU datasheets, a measured copy on CPUs); and the link bandwidth a collective's bus
bandwidth compares with (NVML's NVLink or PCIe figure for GPU ranks, or the user's ``run --link-bandwidth``).

Theoretical CPU peaks are labelled "theoretical (max clock)" where the machine states its maximum clock and
"theoretical (nominal clock, may understate)" where only /proc/cpuinfo's clock is known; GPU peaks "theoretical
(datasheet)"; the measured peak "measured (best GEMM in these results)"; the CPU bandwidth "measured (large copy)".
The report shows each with its label and basis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from suite.gpu_state import NO_LINK, NVML_SOURCE, USER_SOURCE, LinkBandwidth
from suite.results import CpuInfo, Environment

# Dense (no 2:4 sparsity) peak TFLOP/s and memory bandwidth in GB/s, from NVIDIA's datasheets:
#   H100 SXM5 / PCIe: "NVIDIA H100 Tensor Core GPU" datasheet (2023): FP32 67 / 51 TFLOPS, TF32 494.7 / 378,
#     BF16/FP16 989.4 / 756.5 (the datasheet's figures "with sparsity" halved), 3.35 / 2.0 TB/s.
#   H200 SXM: "NVIDIA H200 Tensor Core GPU" datasheet (2024): same compute as H100 SXM, 4.8 TB/s.
#   A100 SXM4 80GB: "NVIDIA A100 Tensor Core GPU" datasheet (2021): FP32 19.5, TF32 156, BF16/FP16 312, 2039 GB/s.
#   L4: "NVIDIA L4 Tensor Core GPU" datasheet (2023): FP32 30.3, TF32 60, BF16/FP16 121, 300 GB/s.
#   V100 SXM2: "NVIDIA V100 Tensor Core GPU" datasheet (2020): FP32 15.7, FP16 tensor 125, no TF32/BF16, 900 GB/s.
#   RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper (2023) Table 2: FP32 82.6, TF32 82.6, FP16/BF16 with FP32
#     accumulate 165.2, 1008 GB/s.
# A missing dtype (V100 has no TF32 or BF16 tensor cores) falls back to the FP32 figure.
GPU_PEAKS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "gbps": 3350.0},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "fp16": 756.5, "bf16": 756.5, "gbps": 2000.0},
    "H200": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "gbps": 4800.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0, "gbps": 2039.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "gbps": 300.0},
    "V100": {"fp32": 15.7, "fp16": 125.0, "gbps": 900.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2, "gbps": 1008.0},
}
# nvidia-smi names (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB"), first match wins.
_GPU_PATTERNS = [(r"H200", "H200"), (r"H100.*PCIe", "H100 PCIe"), (r"H100", "H100 SXM"), (r"A100", "A100"),
                 (r"\bL4\b", "L4"), (r"V100", "V100"), (r"RTX 4090", "RTX 4090")]

# CPU estimate: FMA units per core and fp32 lanes per vector. Assumption: server AVX-512 parts have 2 FMA units
# (Skylake-SP Gold/Platinum and later); AVX2 cores have 2 (Haswell and later, Zen 2 and later); otherwise SSE, 1.
THEORETICAL_CPU = "theoretical (max clock)"
THEORETICAL_CPU_NOMINAL = "theoretical (nominal clock, may understate)"
THEORETICAL_GPU = "theoretical (datasheet)"
MEASURED = "measured (best GEMM in these results)"
MEASURED_BANDWIDTH = "measured (large copy)"


@dataclass(frozen=True)
class Peak:
    """A peak throughput (TFLOP/s), optionally a memory bandwidth (GB/s), and how it was obtained."""

    tflops: float | None
    gbps: float | None
    label: str
    basis: str


def gpu_key(name: str) -> str | None:
    """The GPU_PEAKS key for an nvidia-smi or framework device name, or None when the GPU is not in the table."""
    return next((key for pattern, key in _GPU_PATTERNS if re.search(pattern, name, re.I)), None)


def gpu_peak(name: str, dtype: str, math: str = "strict") -> Peak:
    key = gpu_key(name)
    if key is None:
        return Peak(None, None, THEORETICAL_GPU, f"{name!r} is not in opbench's datasheet table (reports/peak.py)")
    table = GPU_PEAKS[key]
    column = "tf32" if dtype == "fp32" and math == "tf32" else dtype
    tflops = table.get(column, table["fp32"])
    fallback = "" if column in table else f" ({column} not supported: the FP32 figure)"
    return Peak(tflops, table["gbps"], THEORETICAL_GPU, f"NVIDIA {key} datasheet, dense {column}{fallback}")


def cpu_peak(cpu: CpuInfo, dtype: str) -> Peak:
    """cores × clock × FMA units × fp32 lanes × 2 FLOPs per FMA; bf16/fp16 doubled where the ISA has them.

    The clock is the maximum the machine states (cpufreq or lscpu, recorded as ``max_mhz``); where it states none,
    as on most VMs, /proc/cpuinfo's "cpu MHz", which is then the nominal clock while the cores may run faster: the
    label says the figure may understate. Cores are the usable CPUs divided by the threads per core (SMT siblings
    share FMA units); where the threads per core are unknown every usable CPU counts, and the basis says so.
    """
    flags = set(cpu.vector_flags)
    usable = cpu.usable_cpus or cpu.logical_cpus
    max_mhz, nominal_mhz = cpu.max_mhz, cpu.mhz
    mhz = max_mhz or nominal_mhz
    label = THEORETICAL_CPU if max_mhz else THEORETICAL_CPU_NOMINAL
    if not usable or not mhz:
        return Peak(None, None, label, "the header has no CPU count or clock")
    per_core = cpu.threads_per_core
    cores = max(1, usable // per_core) if per_core else usable
    counted = (f"{cores} cores ({usable} usable CPUs / {per_core} thread{'s' if per_core > 1 else ''} per core)"
               if per_core else f"{usable} usable CPUs (threads per core unknown: SMT siblings would halve it)")
    clock = (f"{mhz / 1e3:.2f} GHz max clock ({cpu.max_mhz_source or 'stated by the machine'})" if max_mhz
             else f"{mhz / 1e3:.2f} GHz nominal clock (/proc/cpuinfo; no maximum clock exposed, cores may run faster)")
    if "avx512f" in flags:
        units, lanes, isa = 2, 16, "AVX-512, 2 FMA units (assumed for server parts)"
    elif "avx2" in flags and "fma" in flags:
        units, lanes, isa = 2, 8, "AVX2, 2 FMA units"
    else:
        units, lanes, isa = 1, 4, "SSE, 1 FMA unit (no AVX2/AVX-512 flag)"
    factor, extra = 1.0, ""
    if dtype == "bf16" and flags & {"amx_bf16", "avx512_bf16"}:
        factor, extra = 2.0, " × 2 for bf16 (AVX512_BF16/AMX; AMX tiles can do far more)"
    elif dtype == "fp16" and "avx512_fp16" in flags:
        factor, extra = 2.0, " × 2 for fp16 (AVX512_FP16)"
    tflops = cores * mhz * 1e6 * units * lanes * 2 * factor / 1e12
    basis = f"{counted} × {clock} × {units} FMA × {lanes} fp32 lanes × 2 FLOPs{extra}; {isa}"
    return Peak(tflops, None, label, basis)


def theoretical(environment: Environment, device: str, dtype: str, math: str = "strict") -> Peak:
    """The theoretical peak of the device a measurement ran on, from a results header's environment (none for int8:
    integer operations per cycle depend on VNNI, AMX or the tensor cores' generation, which this table lacks)."""
    if dtype == "int8":
        return Peak(None, None, THEORETICAL_GPU if device == "gpu" else THEORETICAL_CPU,
                    "no theoretical int8 figure: integer throughput depends on VNNI, AMX or the tensor cores, not "
                    "tabulated here")
    if device == "gpu":
        if not environment.gpus:
            return Peak(None, None, THEORETICAL_GPU, "the header lists no GPU")
        return gpu_peak(environment.gpus[0].name, dtype, math)
    return cpu_peak(environment.cpu, dtype)


@dataclass(frozen=True)
class Bandwidth:
    """A memory-bandwidth roof (GB/s) and how it was obtained."""

    gbps: float | None
    label: str
    basis: str


def bandwidth(environments: Iterable[Environment], device: str) -> Bandwidth:
    """The roofline's memory roof for one machine, from its results headers' environments: the GPU datasheet figure,
    or on CPUs the fastest large copy any header recorded (a run with ``--bandwidth``, or ``python -m suite peak``)."""
    environments = list(environments)
    if device == "gpu":
        gpus = next((e.gpus for e in environments if e.gpus), None)
        if not gpus:
            return Bandwidth(None, THEORETICAL_GPU, "the header lists no GPU")
        name = gpus[0].name
        key = gpu_key(name)
        if key is None:
            return Bandwidth(None, THEORETICAL_GPU, f"{name!r} is not in opbench's datasheet table (reports/peak.py)")
        return Bandwidth(GPU_PEAKS[key]["gbps"], THEORETICAL_GPU, f"NVIDIA {key} datasheet memory bandwidth")
    # the copy's record (suite.environment.memory_bandwidth) is kept as written: gbps, buffer_bytes, threads, ...
    copies = [e.memory_bandwidth for e in environments if e.memory_bandwidth and e.memory_bandwidth["gbps"]]
    if not copies:
        return Bandwidth(None, MEASURED_BANDWIDTH, "no run on this machine measured it (run with --bandwidth, or "
                                                   "python -m suite peak)")
    best = max(copies, key=lambda c: c["gbps"])
    llc = best["llc_bytes"]
    cache = f"; last-level cache {llc / 2**20:,.0f} MiB" if llc else ""
    return Bandwidth(best["gbps"], MEASURED_BANDWIDTH,
                     f"fastest of {best['repeats']} copies of a {best['buffer_bytes'] / 2**20:,.0f} MiB "
                     f"buffer on {best['threads']} threads (read + write bytes){cache}")


def link(environments: Iterable[Environment], device: str) -> LinkBandwidth:
    """The link bandwidth per direction a collective on ``device`` compares with, from one machine's headers (the
    runs that measured on that device): the user's (run --link-bandwidth) over NVML's, the last header's where
    several give one; NVML's only for GPU ranks, as it is the GPUs' interconnect. Without one, why."""
    links = [e.link_bandwidth for e in environments if e.link_bandwidth and e.link_bandwidth.gbps]
    given = [x for x in links if x.source == USER_SOURCE]
    nvml = [x for x in links if x.source == NVML_SOURCE]
    if given:
        return given[-1]
    if nvml and device == "gpu":
        return nvml[-1]
    if nvml:
        return LinkBandwidth(None, basis=f"no link bandwidth for {device} ranks: NVML's is the GPUs' interconnect, "
                                         "none given with --link-bandwidth")
    return LinkBandwidth(None, basis=NO_LINK)


def gb_per_s(value: float) -> str:
    """A bandwidth in words: '3,350 GB/s', '450 GB/s', '5.9 GB/s' (whole GB/s from 100 on, else three digits)."""
    return f"{value:,.0f} GB/s" if value >= 100 else f"{value:.3g} GB/s"


def link_words(found: LinkBandwidth) -> str:
    """A link bandwidth in words, with its basis: "the NVLink bandwidth, 450 GB/s per direction by NVML (18 NVLink 4
    links × 25 GB/s per direction, each of 8 GPUs)", or "the link bandwidth, 100 GB/s per direction as given with
    --link-bandwidth" (naming NVML's figure it was given over); without one, why."""
    if found.gbps is None:
        return found.basis
    how = (f"as given with --link-bandwidth{f' (over {found.instead_of})' if found.instead_of else ''}"
           if found.source == USER_SOURCE else f"by NVML ({found.basis.removeprefix('NVML: ')})")
    return f"the {found.kind} bandwidth, {gb_per_s(found.gbps)} per direction {how}"


def measured(frame: pd.DataFrame) -> pd.DataFrame:
    """Best TFLOP/s per machine × device × dtype × math on a GEMM tagged ``peak``, else on any forward GEMM."""
    ok = frame[(frame["status"] == "ok") & (frame["op"] == "gemm") & frame["tflops"].notna()]
    rows = []
    for key, group in ok.groupby(["machine", "device", "dtype", "math"], sort=True):
        tagged = group.loc[group["tags"].map(lambda tags: "peak" in tags).astype(bool)]
        pool, basis = (tagged, "GEMM tagged peak") if len(tagged) else \
            (group[group["pass"] == "forward"], "best forward GEMM (no GEMM tagged peak)")
        if pool.empty:
            continue
        best = pool.loc[pool["tflops"].idxmax()]
        rows.append(dict(zip(["machine", "device", "dtype", "math"], key, strict=True),
                         measured_tflops=best["tflops"], measured_case=best["case"],
                         measured_backend=best["backend"], measured_basis=basis))
    columns = ["machine", "device", "dtype", "math", "measured_tflops", "measured_case", "measured_backend",
               "measured_basis"]
    return pd.DataFrame(rows, columns=columns)
