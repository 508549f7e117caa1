"""Peaks from given CPU facts: which clock the theoretical CPU peak uses and how it is labelled, cores vs SMT
threads, the memory-bandwidth roof from results headers, and the copy measurement's arithmetic (fake clock; no
timing is asserted). No framework imports."""

from __future__ import annotations

import itertools

import pytest

from reports import peak
from suite import environment
from suite.results import CpuInfo, Environment

LSCPU_WITH_MAX = """Architecture:                x86_64
Model name:                  Intel(R) Xeon(R) Platinum 8480+
Thread(s) per core:          2
CPU max MHz:                 3800.0000
CPU min MHz:                 800.0000
"""
LSCPU_VM = """Architecture:                x86_64
Model name:                  Intel(R) Xeon(R) Processor
Thread(s) per core:          1
BogoMIPS:                    5200.00
"""
AVX512 = ["avx512f", "avx2", "fma"]


# ------------------------------------------------------------------------------------------------- the max clock
def test_max_clock_prefers_cpufreq_and_takes_the_largest_cpu():
    assert environment.max_clock_mhz(["3500000\n", "3800000\n", ""], LSCPU_WITH_MAX) == (
        3800.0, "cpufreq cpuinfo_max_freq")


def test_max_clock_falls_back_to_lscpu_then_to_nothing():
    assert environment.max_clock_mhz([], LSCPU_WITH_MAX) == (3800.0, "lscpu CPU max MHz")
    assert environment.max_clock_mhz(["garbage", "0"], LSCPU_WITH_MAX) == (3800.0, "lscpu CPU max MHz")
    assert environment.max_clock_mhz([], LSCPU_VM) == (None, None)
    assert environment.max_clock_mhz([], "CPU max MHz: 0\n") == (None, None)


def test_cpu_info_records_the_clocks_and_topology():
    info = environment.cpu_info()
    assert {"mhz", "max_mhz", "max_mhz_source", "threads_per_core", "llc_bytes"} <= set(info)
    assert (info["max_mhz"] is None) == (info["max_mhz_source"] is None)


# ----------------------------------------------------------------------------------------- theoretical CPU peak
def test_cpu_peak_uses_the_max_clock_where_the_machine_states_it():
    cpu = {"usable_cpus": 4, "mhz": 2000.0, "max_mhz": 3800.0, "max_mhz_source": "lscpu CPU max MHz",
           "threads_per_core": 1, "vector_flags": AVX512}
    got = peak.cpu_peak(CpuInfo.from_record(cpu), "fp32")
    assert got.tflops == pytest.approx(4 * 3.8e9 * 2 * 16 * 2 / 1e12)
    assert got.label == peak.THEORETICAL_CPU
    assert "3.80 GHz max clock (lscpu CPU max MHz)" in got.basis


def test_cpu_peak_with_only_the_nominal_clock_says_it_may_understate():
    cpu = {"usable_cpus": 2, "mhz": 2600.0, "max_mhz": None, "threads_per_core": 1, "vector_flags": AVX512}
    got = peak.cpu_peak(CpuInfo.from_record(cpu), "fp32")
    assert got.tflops == pytest.approx(2 * 2.6e9 * 2 * 16 * 2 / 1e12)
    assert got.label == peak.THEORETICAL_CPU_NOMINAL == "theoretical (nominal clock, may understate)"
    assert "nominal clock" in got.basis


def test_cpu_peak_counts_cores_not_smt_threads():
    cpu = {"usable_cpus": 8, "mhz": 2000.0, "threads_per_core": 2, "vector_flags": ["avx2", "fma"]}
    assert peak.cpu_peak(CpuInfo.from_record(cpu), "fp32").tflops == pytest.approx(4 * 2.0e9 * 2 * 8 * 2 / 1e12)
    assert "4 cores (8 usable CPUs / 2 threads per core)" in peak.cpu_peak(CpuInfo.from_record(cpu), "fp32").basis
    unknown = peak.cpu_peak(CpuInfo.from_record({**cpu, "threads_per_core": None}), "fp32")
    assert unknown.tflops == pytest.approx(8 * 2.0e9 * 2 * 8 * 2 / 1e12) and "SMT siblings" in unknown.basis


def test_cpu_peak_dtype_factors_and_missing_facts():
    cpu = {"usable_cpus": 2, "mhz": 2600.0, "threads_per_core": 1, "vector_flags": [*AVX512, "amx_bf16"]}
    fp32 = peak.cpu_peak(CpuInfo.from_record(cpu), "fp32").tflops
    assert peak.cpu_peak(CpuInfo.from_record(cpu), "bf16").tflops == pytest.approx(2 * fp32)
    assert peak.cpu_peak(CpuInfo.from_record(cpu), "fp16").tflops == pytest.approx(fp32)  # no AVX512_FP16
    assert peak.cpu_peak(CpuInfo.from_record({"usable_cpus": 2}), "fp32").tflops is None
    assert peak.theoretical(Environment.from_record({"cpu": cpu}), "cpu", "fp32") == peak.cpu_peak(
        CpuInfo.from_record(cpu), "fp32")


# ------------------------------------------------------------------------------------------- the bandwidth roof
def _copy(gbps: float, buffer_mib: int = 1024) -> dict:
    return {"gbps": gbps, "median_gbps": gbps * 0.9, "buffer_bytes": buffer_mib * 2**20, "llc_bytes": 480 * 2**20,
            "threads": 2, "repeats": 5}


def test_cpu_bandwidth_is_the_fastest_measured_copy_of_the_machine():
    envs = [{"memory_bandwidth": None}, {"memory_bandwidth": _copy(18.5)}, {"memory_bandwidth": _copy(21.0)}, {}]
    roof = peak.bandwidth(map(Environment.from_record, envs), "cpu")
    assert roof.gbps == 21.0 and roof.label == peak.MEASURED_BANDWIDTH
    assert "1,024 MiB buffer" in roof.basis and "480 MiB" in roof.basis


def test_cpu_bandwidth_missing_says_how_to_measure_it():
    roof = peak.bandwidth([Environment.from_record({"memory_bandwidth": None}), Environment()], "cpu")
    assert roof.gbps is None and "--bandwidth" in roof.basis


def test_gpu_bandwidth_is_the_datasheet():
    def gpu(name: str) -> list[Environment]:
        return [Environment.from_record({"gpus": [{"name": name}]})]

    assert peak.bandwidth(gpu("NVIDIA H100 80GB HBM3"), "gpu").gbps == 3350.0
    assert peak.bandwidth(gpu("Mystery GPU"), "gpu").gbps is None
    assert peak.bandwidth([Environment()], "gpu").gbps is None


def test_bandwidth_buffer_is_far_larger_than_the_cache_within_limits():
    mib = 2**20
    assert environment.bandwidth_buffer_bytes(None, None) == 256 * mib
    assert environment.bandwidth_buffer_bytes(200 * mib, 64 * 2**30) == 400 * mib  # one copy streams 4 × the cache
    assert environment.bandwidth_buffer_bytes(480 * mib, 64 * 2**30) == 512 * mib  # capped at 512 MiB
    assert environment.bandwidth_buffer_bytes(100 * mib, 2**30) == 2**30 // 8  # an eighth of the available memory


def test_memory_bandwidth_counts_read_and_write_bytes_of_the_fastest_copy():
    ticks = itertools.count()
    seconds = iter([0.0, 0.5, 0.0, 0.25, 0.0, 1.0])  # three timed copies: 0.5 s, 0.25 s, 1.0 s

    def clock() -> float:
        next(ticks)
        return next(seconds)

    got = environment.memory_bandwidth(buffer_bytes=8 * 2**20, threads=2, repeats=3, clock=clock)
    moved = 2 * 8 * 2**20
    assert got["gbps"] == pytest.approx(moved / 0.25 / 1e9)
    assert got["median_gbps"] == pytest.approx(moved / 0.5 / 1e9)
    assert got["buffer_bytes"] == 8 * 2**20 and got["threads"] == 2 and got["repeats"] == 3
    assert next(ticks) == 6  # the untimed first copy read no clock


def test_capture_measures_bandwidth_only_on_request():
    assert environment.capture()["memory_bandwidth"] is None
