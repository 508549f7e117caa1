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
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from suite import gpu_state

REPO = Path(__file__).resolve().parent.parent
# Environment variables that change what a framework runs (kernels, precision, threads, memory, devices), by exact
# name, per framework, as each reads them (its Python sources and the names compiled into its libraries). The header
# records these and nothing else of the environment, and every reader filters old headers through the same list
# (``knobs``). No prefixes: TF_ is also Terraform's (TF_VAR_*, TF_TOKEN_* hold passwords and API tokens), and even a
# framework's own namespace holds addresses and paths (TORCHINDUCTOR_REDIS_HOST, TF_CONFIG, JAX_COMPILATION_CACHE_DIR).
# A knob missing here goes unrecorded, which is safe; add it by name.
KNOBS: dict[str, frozenset[str]] = {
    "cuda": frozenset({  # the CUDA runtime and libraries, whichever framework loads them
        "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING", "CUDA_MODULE_LOADING",
        "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_CACHE_DISABLE", "CUDA_FORCE_PTX_JIT", "CUBLAS_WORKSPACE_CONFIG",
        "CUBLASLT_WORKSPACE_SIZE", "CUBLAS_EMULATION_STRATEGY", "NVIDIA_TF32_OVERRIDE"}),
    "cpu": frozenset({  # OpenMP, MKL, oneDNN and OpenBLAS thread pools and kernel choices
        "OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_WAIT_POLICY", "OMP_DYNAMIC", "OMP_SCHEDULE",
        "KMP_AFFINITY", "KMP_BLOCKTIME", "KMP_HW_SUBSET", "MKL_NUM_THREADS", "MKL_DYNAMIC", "MKL_CBWR",
        "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
        "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE",
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY", "ONEDNN_CPU_ISA_HINTS",
        "DNNL_CPU_ISA_HINTS"}),
    "torch": frozenset({
        "ATEN_CPU_CAPABILITY", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "TORCH_BLAS_PREFER_CUBLASLT",
        "TORCH_CUBLASLT_UNIFIED_WORKSPACE", "TORCH_CUDNN_V8_API_DISABLED", "TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT",
        "TORCH_CUDNN_USE_HEURISTIC_MODE_B", "TORCH_CUDNN_SDPA_ENABLED", "TORCH_LINEAR_FLATTEN_3D",
        "TORCH_MKLDNN_MATMUL_MIN_DIM", "TORCH_MKLDNN_MATMUL_MIN_SIZE", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF",
        "PYTORCH_NO_CUDA_MEMORY_CACHING", "PYTORCH_TUNABLEOP_ENABLED", "PYTORCH_TUNABLEOP_TUNING",
        "TORCH_COMPILE_DISABLE", "TORCHINDUCTOR_MAX_AUTOTUNE", "TORCHINDUCTOR_MAX_AUTOTUNE_GEMM",
        "TORCHINDUCTOR_MAX_AUTOTUNE_GEMM_BACKENDS", "TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE",
        "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "TORCHINDUCTOR_FREEZING", "TORCHINDUCTOR_CPP_WRAPPER",
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES"}),
    "tensorflow": frozenset({
        "TF_ENABLE_ONEDNN_OPTS", "TF_SET_ONEDNN_FPMATH_MODE", "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS",
        "TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD", "TF_CPP_MIN_LOG_LEVEL",
        "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_OVERRIDE_GLOBAL_THREADPOOL", "TF_XLA_FLAGS",
        "TF_FUNCTION_JIT_COMPILE_DEFAULT", "TF_DISABLE_JIT_KERNELS", "TF_DETERMINISTIC_OPS", "TF_GPU_ALLOCATOR",
        "TF_FORCE_GPU_ALLOW_GROWTH", "TF_FORCE_UNIFIED_MEMORY", "TF_PER_DEVICE_MEMORY_LIMIT_MB",
        "TF_GPU_HOST_MEM_LIMIT_IN_MB", "TF_GPU_THREAD_MODE", "TF_GPU_THREAD_COUNT", "TF_ENABLE_GPU_GARBAGE_COLLECTION",
        "TF_CUDNN_USE_AUTOTUNE", "TF_CUDNN_DETERMINISTIC", "TF_CUDNN_WORKSPACE_LIMIT_IN_MB", "TF_CUDNN_USE_FRONTEND",
        "TF_CUDNN_USE_RUNTIME_FUSION", "TF_CUDNN_RNN_USE_AUTOTUNE", "TF_CUDNN_DISABLE_CONV_1X1_OPTIMIZATION",
        "TF_USE_CUBLASLT", "TF_MATMUL_AUTOTUNE_ENABLE", "TF_AUTOTUNE_THRESHOLD", "TF_FP16_MATMUL_USE_FP32_COMPUTE",
        "TF_CONV2D_USE_FP16_ACCUMULATE", "TF_USE_DEEP_CONV2D", "TF_ENABLE_WINOGRAD_NONFUSED",
        "TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_LEVEL", "TF_USE_LEGACY_KERAS", "KERAS_BACKEND"}),
    "jax": frozenset({  # XLA's flags and JAX's config options (each jax_<name> option reads JAX_<NAME>)
        "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR",
        "XLA_PYTHON_CLIENT_USE_TFRT_GPU_CLIENT", "JAX_PLATFORMS", "JAX_PLATFORM_NAME", "JAX_CUDA_VISIBLE_DEVICES",
        "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION", "JAX_DISABLE_JIT", "JAX_DISABLE_MOST_OPTIMIZATIONS",
        "JAX_OPTIMIZATION_LEVEL", "JAX_EXEC_TIME_OPTIMIZATION_EFFORT", "JAX_MEMORY_FITTING_EFFORT",
        "JAX_MEMORY_FITTING_LEVEL", "JAX_ENABLE_CHECKS", "JAX_DEBUG_NANS", "JAX_DEBUG_INFS", "JAX_ENABLE_PGLE",
        "JAX_PGLE_PROFILING_RUNS", "JAX_CPU_ENABLE_ASYNC_DISPATCH", "JAX_NUM_CPU_DEVICES",
        "JAX_ENABLE_COMPILATION_CACHE", "JAX_SOFTMAX_CUSTOM_JVP", "JAX_USE_DIRECT_LINEARIZE",
        "JAX_ALLOW_F16_REDUCTIONS"}),
}
RECORDED_KNOBS = frozenset().union(*KNOBS.values())


def knobs(environ: Mapping[str, str]) -> dict[str, str]:
    """The knobs of an environment (``os.environ``, or an old header's record of one), sorted: the names in KNOBS
    and nothing else, so no other variable's value is ever written or shown."""
    return {name: str(value) for name, value in sorted(environ.items()) if name in RECORDED_KNOBS}


PACKAGES = ("numpy", "scipy", "torch", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "pandas", "seaborn",
            "nvidia-ml-py")
# The CUDA libraries the GPU wheels load, whichever CUDA they are for: nvidia-cudnn-cu12, nvidia-cublas-cu12 (CUDA 12),
# nvidia-cublas, nvidia-cudnn-cu13 (CUDA 13 dropped the suffix on the toolkit's own), jax-cuda12-plugin,
# jax-cuda13-pjrt, cuda-toolkit, cuda-bindings. nvidia-ml-py is NVML's bindings, not a CUDA library.
CUDA_PACKAGE = re.compile(r"^(nvidia-(?!ml-py$)[a-z0-9-]+|jax-cuda\d+-(plugin|pjrt)|cuda-(toolkit|bindings|python))$")


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


def package_versions(distributions: Iterable[Any] | None = None) -> dict[str, str]:
    """Versions of PACKAGES and of every installed CUDA package (CUDA_PACKAGE: the -cu12 and the CUDA 13 names)."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    cuda = {}
    for dist in metadata.distributions() if distributions is None else distributions:
        name = re.sub(r"[-_.]+", "-", str(dist.metadata["Name"] or "")).lower()  # PEP 503 normal form
        if CUDA_PACKAGE.match(name):
            cuda[name] = dist.version
    return {**versions, **dict(sorted(cuda.items()))}


def capture(bandwidth: bool = False, link_gbps: float | None = None) -> dict[str, Any]:
    """Host, OS, Python, packages, knobs and load, the link bandwidth (the user's ``link_gbps``, GB/s per direction,
    else NVML's), and with ``bandwidth`` the measured memory bandwidth (seconds of copying and page faults, so only on
    request): stored once in each results file's header."""
    nvml = gpu_state.describe() if shutil.which("nvidia-smi") else None
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
        "knobs": knobs(os.environ),
        "nvml": nvml,  # driver, CUDA, GPUs: clocks locked, links
        "link_bandwidth": gpu_state.link_bandwidth(nvml, link_gbps).to_record(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_bandwidth": memory_bandwidth() if bandwidth else None,
    }
