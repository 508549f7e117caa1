"""The machine a run happened on, captured without importing a framework (backends add their own versions)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from suite import gpu_state

REPO = Path(__file__).resolve().parent.parent
# Environment variables that change what a framework runs; recorded with every run.
KNOBS = re.compile(r"^(XLA_FLAGS|TF_\w+|ONEDNN_\w+|DNNL_\w+|OMP_\w+|MKL_\w+|OPENBLAS_\w+|KMP_\w+|CUDA_\w+|CUBLAS\w*|"
                   r"CUDNN_\w+|NVIDIA_TF32_OVERRIDE|TORCH_\w+|PYTORCH_\w+|JAX_\w+|XLA_PYTHON_CLIENT_\w+)$")
PACKAGES = ("numpy", "scipy", "torch", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "pandas", "seaborn",
            # the CUDA libraries the GPU wheels load (cuDNN, cuBLAS, runtime) and NVML's bindings
            "jax-cuda12-plugin", "nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12", "nvidia-ml-py")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def run_queue_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux schedstat: the second field
    of /proc/self/task/*/schedstat); None where the kernel does not tell."""
    total = 0
    try:
        for task in os.scandir("/proc/self/task"):
            try:
                with open(os.path.join(task.path, "schedstat")) as stat:
                    total += int(stat.read().split()[1])
            except FileNotFoundError:  # the thread ended meanwhile
                continue
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def cpu_busy_s() -> float | None:
    """CPU-seconds the CPUs this process may run on have been busy, for every process (Linux /proc/stat: user, nice,
    system, irq, softirq, steal); None where the kernel does not tell."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = 0
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                if name in mine:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
                    busy += user + nice + system + irq + softirq + steal
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), which is what a framework's thread pool should use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _lscpu() -> str:
    if not shutil.which("lscpu"):
        return ""
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def max_clock_mhz(cpufreq_khz: list[str], lscpu: str) -> tuple[float | None, str | None]:
    """The highest clock the machine states, in MHz, and where it was read: cpufreq's cpuinfo_max_freq (kHz, the
    largest over CPUs), else lscpu's "CPU max MHz"; (None, None) where neither exists, as on most VMs."""
    khz = [int(v) for v in (s.strip() for s in cpufreq_khz) if v.isdigit() and int(v) > 0]
    if khz:
        return max(khz) / 1e3, "cpufreq cpuinfo_max_freq"
    match = re.search(r"^CPU max MHz:\s*([\d.]+)\s*$", lscpu, re.M)
    if match and float(match.group(1)) > 0:
        return float(match.group(1)), "lscpu CPU max MHz"
    return None, None


def _cache_bytes(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text)
    return int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)] if match else None


def last_level_cache_bytes() -> int | None:
    """Size of the last-level cache as cpu0 sees it (sysfs), or None."""
    levels = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level, size = _read(str(index / "level")).strip(), _cache_bytes(_read(str(index / "size")))
        if level.isdigit() and size:
            levels.append((int(level), size))
    return max(levels)[1] if levels else None


def cpu_info() -> dict[str, Any]:
    text = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
    vector = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx2", "fma")
              if flags and f in flags.group(1).split()]
    lscpu = _lscpu()
    max_mhz, max_source = max_clock_mhz(
        [_read(str(p)) for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")], lscpu)
    per_core = re.search(r"^Thread\(s\) per core:\s*(\d+)\s*$", lscpu, re.M)
    return {
        "model": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads_per_core": int(per_core.group(1)) if per_core else None,
        "mhz": float(mhz.group(1)) if mhz else None,  # /proc/cpuinfo: the current or, on VMs, the nominal clock
        "max_mhz": max_mhz,
        "max_mhz_source": max_source,
        "llc_bytes": last_level_cache_bytes(),
        "vector_flags": vector,
    }


BANDWIDTH_REPEATS = 5


def bandwidth_buffer_bytes(llc_bytes: int | None, available_bytes: int | None) -> int:
    """Bytes per copy buffer: 2 × the last-level cache, so that one copy streams 4 × the cache, but at least 256 MiB
    and at most 512 MiB (first-touching the pages is the slow part on VMs), and no more than an eighth of the
    available memory (both buffers then take a quarter). The header records the buffer and cache sizes."""
    size = min(max(2 * (llc_bytes or 0), 256 * 2**20), 512 * 2**20)
    if available_bytes:
        size = min(size, available_bytes // 8)
    return max(size, 2**20)


def memory_bandwidth(buffer_bytes: int | None = None, threads: int | None = None,
                     repeats: int = BANDWIDTH_REPEATS, clock=time.perf_counter) -> dict[str, Any]:
    """Main-memory bandwidth measured by a large copy (STREAM's "copy": 2 × buffer bytes moved, read + write),
    split across ``threads`` (NumPy releases the GIL while copying), best and median of ``repeats`` timed copies
    after one untimed copy that touches every page. Framework-free; the CPU roofline's bandwidth roof."""
    llc = last_level_cache_bytes()
    size = buffer_bytes or bandwidth_buffer_bytes(llc, available_memory_bytes())
    threads = threads or usable_cpus()
    source = np.ones(size // 8, dtype=np.float64)
    target = np.empty_like(source)
    parts = [(s[0], s[-1] + 1) for s in np.array_split(np.arange(len(source)), threads) if len(s)]

    def copy(bounds: tuple[int, int]) -> None:
        np.copyto(target[bounds[0]:bounds[1]], source[bounds[0]:bounds[1]])

    seconds = []
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(copy, parts))  # first touch: page faults are not bandwidth
        for _ in range(repeats):
            start = clock()
            list(pool.map(copy, parts))
            seconds.append(clock() - start)
    moved = 2 * source.nbytes
    return {
        "gbps": moved / min(seconds) / 1e9,
        "median_gbps": moved / float(np.median(seconds)) / 1e9,
        "buffer_bytes": int(source.nbytes),
        "llc_bytes": llc,
        "threads": len(parts),
        "repeats": repeats,
        "method": "NumPy copy of one float64 buffer into another, split across threads; GB/s = 2 × buffer bytes "
                  "(read + write) / fastest copy",
    }


def memory_bytes() -> int | None:
    match = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return int(match.group(1)) * 1024 if match else None


def available_memory_bytes() -> int | None:
    match = re.search(r"^MemAvailable:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return int(match.group(1)) * 1024 if match else None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs from nvidia-smi, if it is there (the frameworks report their own view too)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    fields = ("name", "driver", "memory", "max_sm_clock")
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in out.stdout.splitlines() if line.strip()]


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def capture(bandwidth: bool = False) -> dict[str, Any]:
    """Host, OS, Python, packages, knobs and load, and with ``bandwidth`` the measured memory bandwidth (seconds of
    copying and page faults, so only on request): stored once in each results file's header."""
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_info(),
        "memory_bytes": memory_bytes(),
        "gpus": gpus(),
        "packages": package_versions(),
        "opbench": git_commit(),
        "knobs": {k: v for k, v in sorted(os.environ.items()) if KNOBS.match(k)},
        "nvml": gpu_state.describe() if shutil.which("nvidia-smi") else None,  # driver, CUDA, GPUs, clocks locked
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_bandwidth": memory_bandwidth() if bandwidth else None,
    }
