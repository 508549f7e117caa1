"""The machine a run happened on, captured without importing a framework (backends add their own versions)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), which is what a framework's thread pool should use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_info() -> dict[str, Any]:
    text = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
    vector = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx2", "fma")
              if flags and f in flags.group(1).split()]
    return {
        "model": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "mhz": float(mhz.group(1)) if mhz else None,
        "vector_flags": vector,
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


def capture() -> dict[str, Any]:
    """Host, OS, Python, packages, knobs and load: stored once in each results file's header."""
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
    }
