"""The GPU paths that are not framework calls, driven without a GPU: a fake NVML module, fake device hooks and a
fake clock; and the refusal of a GPU run by the real CPU builds installed here, through the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from backends.base import Backend, Placement, Settings, Unsupported, Variant
from suite import gpu_state
from suite.catalog import load_catalog
from suite.cli import main
from suite.ops import Gemm, op_to_dict
from suite.results import measurement_key
from suite.runner import plan
from suite.timing import CLEAR_MIN_BYTES, TimingConfig, clear_buffer_bytes, host_timed, measure_per_call
from suite.worker import memory_budget, run_task

MiB = 2**20


# ---------------------------------------------------------------------------------------------- a fake NVML
class NVMLError(Exception):
    pass


UUIDS = ("GPU-abc", "GPU-def", "GPU-123", "GPU-456")  # the fake's GPUs, in NVML (PCI bus) order
PCI = ("00000000:18:00.0", "00000000:2A:00.0", "00000000:3C:00.0", "00000000:4E:00.0")


def fake_nvml(reasons: int = 0, unsupported: tuple[str, ...] = (), devices: int = 2, app_clock: int = 1980,
              default_app_clock: int = 1755, current: bool = True, nvlinks: tuple[int, ...] = (18, 18, 18, 18),
              nvlink_version: int = 6, no_nvlink: tuple[int, ...] = (), pcie: tuple[int, int] = (5, 16),
              pcie_now: tuple[int, int] = (1, 16)) -> SimpleNamespace:
    """pynvml's calls that opbench makes, answering for ``devices`` GPUs (UUIDS, PCI); the names in ``unsupported``
    raise as NVML does for a reading a GPU or driver does not offer. ``current``: the calls that replace those NVML
    deprecates as of CUDA 13 exist (as in nvidia-ml-py 13); False: an older pynvml that lacks them. Links, as an
    H100 SXM's by default: GPU i has ``nvlinks[i]`` active NVLink links of 18 (NVML_NVLINK_MAX_LINKS is 36, as in
    nvidia-ml-py 13: a link past the GPU's 18 is an invalid argument), of NVML's ``nvlink_version`` (its enum: 6 is
    NVLink 4.0); the GPUs in ``no_nvlink`` have none (NotSupported); PCIe ``pcie`` at most (generation, width) and
    ``pcie_now`` now (an idle GPU trains its link down)."""
    calls: list[tuple[str, Any]] = []

    def api(name: str, value: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            calls.append((name, args))
            if name in unsupported:
                raise NVMLError("Not Supported")
            return value(*args)
        return call

    def handle(kind: str) -> Callable[[Any], Any]:
        table = {"index": range(devices), "uuid": UUIDS[:devices], "pci": PCI[:devices]}[kind]

        def find(key: Any) -> Any:
            if key not in table:
                raise NVMLError("Not Found" if kind != "index" else "Invalid Argument")
            return (kind, key)
        return find

    def number(h: tuple[str, Any]) -> int:  # which of the fake's GPUs a handle is
        kind, key = h
        return key if kind == "index" else (UUIDS if kind == "uuid" else PCI).index(key)

    def nvlink_state(h: tuple[str, Any], link: int) -> int:
        if number(h) in no_nvlink:
            raise NVMLError("Not Supported")
        if link >= 18:
            raise NVMLError("Invalid Argument")
        return int(link < nvlinks[number(h)])  # nvmlEnableState_t

    clocks = {gpu_state.NVML_CLOCK_SM: 1410, gpu_state.NVML_CLOCK_MEM: 2619}
    app = {gpu_state.NVML_CLOCK_ID_APP_CLOCK_TARGET: app_clock,
           gpu_state.NVML_CLOCK_ID_APP_CLOCK_DEFAULT: default_app_clock}
    nvml = SimpleNamespace(
        calls=calls,
        nvmlDeviceGetHandleByIndex=api("by_index", handle("index")),
        nvmlDeviceGetHandleByUUID=api("by_uuid", handle("uuid")),
        nvmlDeviceGetHandleByPciBusId=api("by_pci", handle("pci")),
        nvmlDeviceGetIndex=api("index", number),
        nvmlDeviceGetUUID=api("uuid", lambda h: UUIDS[number(h)]),
        nvmlDeviceGetPciInfo=api("pci", lambda h: SimpleNamespace(busId=PCI[number(h)].encode())),
        nvmlDeviceGetClockInfo=api("clock", lambda h, which: clocks[which]),
        nvmlDeviceGetPowerUsage=api("power", lambda h: 612_345),  # milliwatts
        nvmlDeviceGetTemperature=api("temperature", lambda h, sensor: 71),
        nvmlDeviceGetCurrentClocksThrottleReasons=api("reasons", lambda h: reasons),
        nvmlDeviceGetMemoryInfo=api("memory", lambda h: SimpleNamespace(total=80 * 2**30, free=79 * 2**30)),
        nvmlSystemGetDriverVersion=api("driver", lambda: b"575.57.08"),
        nvmlSystemGetCudaDriverVersion=api("cuda", lambda: 12090),
        nvmlDeviceGetCount=api("count", lambda: devices),
        nvmlDeviceGetName=api("name", lambda h: "NVIDIA H100 80GB HBM3"),
        nvmlDeviceGetMaxClockInfo=api("max_clock", lambda h, which: 1980),
        nvmlDeviceGetApplicationsClock=api("app_clock", lambda h, which: app_clock),
        nvmlDeviceGetDefaultApplicationsClock=api("default_app_clock", lambda h, which: default_app_clock),
        nvmlDeviceGetEnforcedPowerLimit=api("power_limit", lambda h: 700_000),
        NVML_NVLINK_MAX_LINKS=36,
        nvmlDeviceGetNvLinkState=api("nvlink_state", nvlink_state),
        nvmlDeviceGetNvLinkVersion=api("nvlink_version", lambda h, link: nvlink_version),
        nvmlDeviceGetCurrPcieLinkGeneration=api("pcie_generation", lambda h: pcie_now[0]),
        nvmlDeviceGetCurrPcieLinkWidth=api("pcie_width", lambda h: pcie_now[1]),
        nvmlDeviceGetMaxPcieLinkGeneration=api("pcie_max_generation", lambda h: pcie[0]),
        nvmlDeviceGetMaxPcieLinkWidth=api("pcie_max_width", lambda h: pcie[1]),
    )
    if current:
        nvml.nvmlDeviceGetTemperatureV = api("temperature_v", lambda h, sensor: 71)
        nvml.nvmlDeviceGetCurrentClocksEventReasons = api("event_reasons", lambda h: reasons)
        nvml.nvmlDeviceGetClock = api("clock_id", lambda h, which, clock_id: app[clock_id])
    return nvml


# ---------------------------------------------------------------------------------------------- state sampling
def test_a_sample_reads_clocks_power_temperature_and_decodes_throttle_reasons():
    nvml = fake_nvml(reasons=0x4 | 0x1)  # power cap while otherwise idle
    monitor, why = gpu_state.open_monitor(nvml=nvml)
    assert why is None and monitor is not None
    sample = monitor.sample()
    assert sample == {"sm_clock_mhz": 1410, "memory_clock_mhz": 2619, "power_w": pytest.approx(612.345),
                      "temperature_c": 71, "throttle_reasons": ["gpu_idle", "sw_power_cap"], "throttled": True}


@pytest.mark.parametrize("mask, throttled", [(0, False), (0x1, False), (0x2, False), (0x10, False), (0x4, True),
                                             (0x8, True), (0x20, True), (0x40, True), (0x80, True), (0x200, True),
                                             (0x400, True)])
def test_only_slowdowns_count_as_throttling(mask, throttled):
    assert gpu_state.GpuMonitor(fake_nvml(reasons=mask), "h", "test").sample()["throttled"] is throttled


def test_a_reading_the_gpu_does_not_offer_is_none_and_the_rest_still_comes():
    nvml = fake_nvml(unsupported=("power", "reasons", "event_reasons"))
    sample = gpu_state.GpuMonitor(nvml, ("index", 0), "test").sample()
    assert sample["power_w"] is None and sample["throttle_reasons"] is None and sample["throttled"] is None
    assert sample["sm_clock_mhz"] == 1410 and sample["temperature_c"] == 71


def test_newer_nvml_clock_event_reasons_are_preferred():
    nvml = fake_nvml(reasons=0)
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x40
    assert gpu_state.GpuMonitor(nvml, ("index", 0), "test").sample()["throttle_reasons"] == ["hw_thermal_slowdown"]


def test_the_record_keeps_both_samples_and_every_throttling_reason_seen():
    start = {"throttle_reasons": ["gpu_idle"]}
    end = {"throttle_reasons": ["sw_thermal_slowdown", "sw_power_cap", "applications_clocks_setting"]}
    state = gpu_state.measurement_state(start, end, "uuid GPU-1", {"index": 1, "uuid": "GPU-1"})
    assert state == {"start": start, "end": end, "gpu": "uuid GPU-1", "sampled": {"index": 1, "uuid": "GPU-1"},
                     "throttled": ["sw_power_cap", "sw_thermal_slowdown"]}
    assert gpu_state.measurement_state(start, {"throttle_reasons": None}, "x")["throttled"] == []


def test_the_fake_nvml_and_the_reason_bits_agree_with_the_real_pynvml():
    pynvml = pytest.importorskip("pynvml")
    assert [name for name in vars(fake_nvml()) if name.startswith("nvml") and not hasattr(pynvml, name)] == []
    for bit, name in gpu_state.REASONS.items():
        camel = "".join(part.capitalize() for part in name.split("_"))  # sw_power_cap -> SwPowerCap
        assert getattr(pynvml, f"nvmlClocksThrottleReason{camel}") == bit, name
    assert (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM, pynvml.NVML_TEMPERATURE_GPU) == (
        gpu_state.NVML_CLOCK_SM, gpu_state.NVML_CLOCK_MEM, gpu_state.NVML_TEMPERATURE_GPU)


def test_the_real_nvml_without_a_driver_gives_a_reason():
    pytest.importorskip("pynvml")
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    monitor, why = gpu_state.open_monitor()
    assert monitor is None and why.startswith("NVML did not start: ")


# ---------------------------------------------------------------------------------------------- which GPU
@pytest.mark.parametrize("device_id, visible, expected, matched", [
    ("GPU-abc", "", ("uuid", "GPU-abc"), "uuid GPU-abc"),
    ("00000000:18:00.0", "", ("pci", "00000000:18:00.0"), "pci bus id 00000000:18:00.0"),
    (None, "1,0", ("index", 1), "NVML index:1, first of CUDA_VISIBLE_DEVICES=1,0"),
    (None, "GPU-def,GPU-abc", ("uuid", "GPU-def"), "uuid GPU-def, first of CUDA_VISIBLE_DEVICES=GPU-def,GPU-abc"),
    (None, "", ("index", 0), "NVML index:0, CUDA's first device (no CUDA_VISIBLE_DEVICES)"),
])
def test_the_monitor_follows_the_gpu_the_framework_uses(monkeypatch, device_id, visible, expected, matched):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monitor, _ = gpu_state.open_monitor(device_id, nvml=fake_nvml())
    assert monitor is not None and monitor.handle == expected and monitor.matched_by == matched


def test_an_id_nvml_does_not_know_falls_back_to_the_visible_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    nvml = fake_nvml(unsupported=("by_uuid",))
    monitor, _ = gpu_state.open_monitor("MIG-xyz", nvml=nvml)
    assert monitor is not None and monitor.handle == ("index", 1)


def test_no_such_device_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monitor, why = gpu_state.open_monitor(nvml=fake_nvml(devices=2))
    assert monitor is None and "NVML has no device for this GPU" in why


def test_without_nvidia_ml_py_nvml_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert gpu_state.open_monitor() == (None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    assert gpu_state.describe() == {"nvml": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"}


def test_nvml_without_a_driver_says_so(monkeypatch):
    def no_driver() -> None:
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(nvmlInit=no_driver))
    assert gpu_state.load_nvml() == (None, "NVML did not start: Driver Not Loaded")


# ---------------------------------------------------------------------------------------------- environment block
def test_the_environment_block_names_driver_cuda_gpus_and_locked_clocks():
    env = gpu_state.describe(fake_nvml(devices=2, app_clock=1980, default_app_clock=1755))
    assert env["driver"] == "575.57.08" and env["cuda_driver"] == "12.9"
    assert [g["index"] for g in env["gpus"]] == [0, 1]
    gpu = env["gpus"][0]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["memory_bytes"] == 80 * 2**30
    assert gpu["max_sm_clock_mhz"] == 1980 and gpu["power_limit_w"] == pytest.approx(700)
    assert gpu["clocks_locked"] is True  # applications clocks set away from their default


def test_default_applications_clocks_are_not_locked_and_unknown_stays_unknown():
    assert gpu_state.describe(fake_nvml(app_clock=1755))["gpus"][0]["clocks_locked"] is False
    no_clocks = ("app_clock", "clock_id", "reasons", "event_reasons")
    unknown = gpu_state.describe(fake_nvml(unsupported=no_clocks))["gpus"][0]
    assert unknown["clocks_locked"] is None and unknown["applications_sm_clock_mhz"] is None


# ---------------------------------------------------------------------------------------------- memory guard
def test_memory_guard_takes_the_devices_count_and_never_host_memory_on_a_gpu(monkeypatch):
    import suite.worker

    monkeypatch.setattr(suite.worker, "available_memory_bytes", lambda: 64 * 2**30)
    assert memory_budget("gpu", 3 * 2**30) == (3 * 2**30, "free on the device")
    assert memory_budget("gpu", 0) == (0, "free on the device")  # full, not unknown
    assert memory_budget("gpu", None) == (None, "not reported by the framework")
    assert memory_budget("cpu", None) == (64 * 2**30, "available on the host (MemAvailable)")


# ---------------------------------------------------------------------------------------------- cold cache: timing
class FakeGpu:
    """A clock that advances when the fake device runs: each call takes ``call_s`` (``cold_s`` right after a
    clearing write), each clearing write takes ``clear_s``."""

    def __init__(self, call_s: float = 1e-3, cold_s: float = 2e-3, clear_s: float = 5e-3):
        self.now, self.call_s, self.cold_s, self.clear_s = 0.0, call_s, cold_s, clear_s
        self.cleared, self.events = False, []

    def clock(self) -> float:
        return self.now

    def clear(self) -> None:
        self.events.append("clear")
        self.now += self.clear_s
        self.cleared = True

    def call(self) -> None:
        self.events.append("call")
        self.now += self.cold_s if self.cleared else self.call_s
        self.cleared = False


def test_cold_timing_clears_before_every_call_and_keeps_the_clearing_out_of_the_times():
    gpu = FakeGpu()
    config = TimingConfig(warmup_s=0.02, min_blocks=7, max_time_s=10.0)
    samples = measure_per_call(host_timed(gpu.call, gpu.clock), gpu.clear, config, gpu.clock)
    assert gpu.events == ["clear", "call"] * (samples.warmup_calls + len(samples.block_times))
    assert samples.warmup_calls == 3  # 3 × (5 ms clear + 2 ms call) >= 20 ms
    assert samples.calls_per_block == 1 and samples.stop_reason == "stable" and len(samples.block_times) == 7
    assert np.allclose(samples.block_times, 2e-3)  # the cold call alone: neither the 5 ms write nor the 1 ms warm


def test_cold_timing_stops_at_the_time_cap_or_the_call_limit():
    rng = np.random.default_rng(0)
    times = iter(rng.choice([1e-3, 3e-3], size=10_000))
    gpu = FakeGpu()
    noisy = measure_per_call(lambda: float(next(times)), gpu.clear, TimingConfig(warmup_s=0, max_time_s=0.5,
                                                                                 max_single_calls=10_000), gpu.clock)
    # the clock here moves only with the 5 ms clears: 1 warm-up call + 99 timed calls reach the 0.5 s cap
    assert noisy.stop_reason == "time_cap" and noisy.warmup_calls == 1 and len(noisy.block_times) == 99
    capped = measure_per_call(lambda: float(next(times)), gpu.clear, TimingConfig(warmup_s=0, max_single_calls=20),
                              gpu.clock)
    assert capped.stop_reason == "max_blocks" and len(capped.block_times) == 20


@pytest.mark.parametrize("cache, expected", [(None, CLEAR_MIN_BYTES), (50 * MiB, CLEAR_MIN_BYTES),
                                             (128 * MiB, CLEAR_MIN_BYTES), (200 * MiB, 400 * MiB)])
def test_the_clearing_buffer_is_twice_the_cache_and_never_less_than_tritons(cache, expected):
    assert clear_buffer_bytes(cache) == expected
    assert 256 * MiB == CLEAR_MIN_BYTES


# ---------------------------------------------------------------------------------------------- worker, fake GPU
ON_GPU = Placement("fakegpu:0", on_gpu=True)  # where the fake's clearing buffer is


class NumpyGpu(Backend):
    """NumPy standing in for a GPU framework: every hook the worker calls, no framework."""

    name = "fakegpu"
    modes = ("default",)
    layouts = {"gemm": ("row-major",), "conv2d": ("NCHW",)}

    def __init__(self, free: int | None = 2**40, cache: int | None = 50 * MiB, clears: bool = True,
                 placement: Placement = ON_GPU):
        super().__init__(Settings(device="gpu"))
        self.free, self.cache, self.clears, self.placement = free, cache, clears, placement
        self.cleared_bytes: list[int] = []

    def versions(self) -> dict[str, str]:
        return {}

    def devices(self) -> list[str]:
        return ["cpu", "gpu"]

    def configure(self, settings: Settings) -> dict[str, Any]:
        return {}

    def tensor(self, array: np.ndarray, role: str, op: Any, variant: Variant) -> Any:
        return array

    def step(self, op: Any, variant: Variant, args: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
        return (lambda: args["x"] @ args["w"]), {}

    def sync(self, out: Any) -> None:
        pass

    def to_numpy(self, out: Any, name: str, op: Any, variant: Variant) -> np.ndarray:
        return np.asarray(out, dtype=np.float64)

    def free_memory_bytes(self) -> int | None:
        return self.free

    def cache_bytes(self) -> int | None:
        return self.cache

    def cache_clearer(self, nbytes: int) -> Callable[[], Placement]:
        if not self.clears:
            return super().cache_clearer(nbytes)
        self.cleared_bytes.append(nbytes)
        return lambda: self.placement


FAST = TimingConfig(warmup_s=0.0, target_block_s=1e-4, min_blocks=3, max_blocks=5, max_time_s=0.05,
                    max_single_calls=5)
TASK = {"key": "k", "op": op_to_dict(Gemm(m=8, n=8, k=8)), "variant": {"pass_": "forward"}}


class FakeMonitor:
    matched_by = "uuid GPU-test"
    device = {"index": 0, "uuid": "GPU-test", "pci_bus_id": "00000000:18:00.0", "name": "fake"}

    def __init__(self, *reasons: list[str]):
        self.reasons = list(reasons)

    def sample(self) -> dict[str, Any]:
        reasons = self.reasons.pop(0)
        return {"sm_clock_mhz": 1980, "throttle_reasons": reasons,
                "throttled": bool(gpu_state.THROTTLING.intersection(reasons))}


def test_a_measurement_on_the_gpu_keeps_both_samples_and_no_flag_when_clocks_held():
    result = run_task(NumpyGpu(), TASK, FAST, check=False, seed=0, gpu=(FakeMonitor([], ["gpu_idle"]), None))
    assert result["status"] == "ok", result
    state = result["gpu_state"]
    assert state["start"]["throttle_reasons"] == [] and state["end"]["throttle_reasons"] == ["gpu_idle"]
    assert state["throttled"] == [] and "throttled" not in result["stats"]["flags"]


def test_a_measurement_that_throttled_is_flagged_in_its_statistics():
    result = run_task(NumpyGpu(), TASK, FAST, check=False, seed=0, gpu=(FakeMonitor([], ["hw_slowdown"]), None))
    assert result["gpu_state"]["throttled"] == ["hw_slowdown"] and "throttled" in result["stats"]["flags"]


def test_without_nvml_the_record_says_why_and_the_measurement_goes_on():
    result = run_task(NumpyGpu(), TASK, FAST, check=False, seed=0, gpu=(None, "nvidia-ml-py is not installed"))
    assert result["status"] == "ok" and result["gpu_state"] == {"unavailable": "nvidia-ml-py is not installed"}


def test_a_gpu_whose_framework_reports_no_free_memory_is_not_guarded_by_host_memory(monkeypatch):
    import suite.worker

    monkeypatch.setattr(suite.worker, "available_memory_bytes", lambda: 0)  # the host looks full: must not matter
    assert run_task(NumpyGpu(free=None), TASK, FAST, check=False, seed=0)["status"] == "ok"
    skipped = run_task(NumpyGpu(free=0), TASK, FAST, check=False, seed=0)
    assert skipped["status"] == "skipped" and "0.0 GiB free on the device (gpu)" in skipped["reason"]


def test_what_outlives_a_case_is_frozen_so_later_collections_skip_it():
    # The worker collects garbage after every case; what survives (a module the framework imported at its first
    # call, a kernel cache) is frozen, so the next case's collection does not scan it again
    import gc

    kept: list[Any] = []

    class LazyImports(NumpyGpu):
        def step(self, op, variant, args):
            kept.append({"lazily imported": [object()]})  # lives on after the case, as an imported module does
            return super().step(op, variant, args)

    gc.unfreeze()
    try:
        assert run_task(LazyImports(), TASK, FAST, check=False, seed=0)["status"] == "ok"
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept[0] for obj in gc.get_objects())  # frozen objects are in no generation
    finally:
        gc.unfreeze()


def test_cold_cache_writes_a_buffer_sized_from_the_l2_and_records_the_timer():
    backend = NumpyGpu(cache=300 * MiB)
    result = run_task(backend, {**TASK, "l2": "cold"}, FAST, check=False, seed=0)
    assert result["status"] == "ok" and result["calls_per_block"] == 1
    assert backend.cleared_bytes == [600 * MiB]
    assert result["cold_cache"] == {"cache_bytes": 300 * MiB, "clear_bytes": 600 * MiB, "buffer_device": "fakegpu:0",
                                    "timer": "host clock"}


def test_cold_cache_refuses_a_clearing_buffer_outside_gpu_memory():
    """A buffer the framework put in host memory clears no L2: the measurement fails, naming where it went."""
    host = Placement("/job:localhost/replica:0/task:0/device:CPU:0", on_gpu=False)
    result = run_task(NumpyGpu(placement=host), {**TASK, "l2": "cold"}, FAST, check=False, seed=0)
    assert result["status"] == "error" and "block_times" not in result
    assert "clearing buffer in /job:localhost/replica:0/task:0/device:CPU:0, not in GPU memory" in result["reason"]


def test_cold_calls_timed_by_cuda_events_are_not_flagged_as_short_blocks():
    class EventGpu(NumpyGpu):
        def single_call_timer(self, step):
            return host_timed(step), "cuda events"  # stands in for events: only the name matters here

    host = run_task(NumpyGpu(), {**TASK, "l2": "cold"}, FAST, check=False, seed=0)
    events = run_task(EventGpu(), {**TASK, "l2": "cold"}, FAST, check=False, seed=0)
    assert "short_blocks" in host["stats"]["flags"]  # µs calls on the host clock: overhead-dominated
    assert "short_blocks" not in events["stats"]["flags"] and events["cold_cache"]["timer"] == "cuda events"


def test_cold_cache_counts_the_buffer_in_the_memory_guard():
    need_without = run_task(NumpyGpu(free=1), TASK, FAST, check=False, seed=0)["memory"]["need_bytes"]
    cold = run_task(NumpyGpu(free=1), {**TASK, "l2": "cold"}, FAST, check=False, seed=0)
    assert cold["memory"]["need_bytes"] == need_without + CLEAR_MIN_BYTES


def test_cold_cache_where_the_backend_cannot_clear_is_unsupported_with_the_reason():
    result = run_task(NumpyGpu(clears=False), {**TASK, "l2": "cold"}, FAST, check=False, seed=0)
    assert result["status"] == "unsupported" and result["reason"] == "fakegpu has no cache clearing on gpu"


# ---------------------------------------------------------------------------------------------- identity of l2
SMOKE = load_catalog().subset("smoke")


def test_l2_is_part_of_every_measurements_identity_and_old_records_were_warm():
    warm = plan(SMOKE[:1], ["torch"], ["gpu"], ["fp32"], ["forward"])
    cold = plan(SMOKE[:1], ["torch"], ["gpu"], ["fp32"], ["forward"], l2="cold")
    assert warm[0].key.l2 == "warm" and cold[0].key.l2 == "cold"
    assert warm[0].key != cold[0].key
    before_the_option = {k: v for k, v in warm[0].key.fields().items() if k != "l2"}
    assert measurement_key(before_the_option) == warm[0].key  # a resumed old file is not measured again


# ---------------------------------------------------------------------------------------------- command line
def test_run_offers_the_l2_option(capsys):
    try:
        code = main(["run", "--help"])
    except SystemExit as stop:  # argparse's own exit
        code = stop.code
    assert code in (0, None)
    text = " ".join(capsys.readouterr().out.split())
    assert "--l2 {warm,cold}" in text and "buffer larger than L2" in text


def test_cold_cache_on_the_cpu_is_refused_before_anything_runs(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    code = main(["run", "--catalog", "smoke", "--backend", "torch", "--l2", "cold", "-o", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: --l2 cold is for GPUs") and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_a_gpu_run_with_cpu_builds_exits_2_naming_each_build_and_its_cuda_install_line(tmp_path):
    """Through the real command line with the CPU builds installed here: refused before measuring anything."""
    import backends

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: the frameworks may see its GPU")

    out = tmp_path / "gpu.jsonl"
    proc = subprocess.run([sys.executable, "-m", "suite", "run", "--device", "gpu", "--catalog", "smoke", "-o",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    message = " ".join(proc.stderr.split())
    expected = {
        "torch": ["+cpu is a CPU-only build", "pip install --force-reinstall torch==", "tox -e torch-gpu"],
        "tensorflow": ["tensorflow-cpu", "is a CPU-only build", "pip install 'tensorflow[and-cuda]==",
                       "tox -e tf-gpu"],
        "jax": ["is CPU-only (no jax-cuda12-plugin or jax-cuda13-plugin installed)", "pip install 'jax[cuda12]==",
                "tox -e jax-gpu"],
    }
    for name in backends.available():
        for words in expected.get(name, []):
            assert words in message, (name, words, message)
    assert not out.exists()  # no file, no header, no measurement: nothing to resume or report


@pytest.mark.slow
def test_jax_turns_gpu_preallocation_off_and_records_it():
    code = ("from backends.jax_backend import JaxBackend; from suite.variant import Settings; "
            "import json; b = JaxBackend(Settings()); f = b.configure(Settings()); "
            "print(json.dumps({k: f[k] for k in ('XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_PYTHON_CLIENT_MEM_FRACTION')}))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("XLA_PYTHON_CLIENT")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                                                        "XLA_PYTHON_CLIENT_MEM_FRACTION": ""}


def test_backends_without_a_cache_clearer_refuse_cold_with_a_reason():
    with pytest.raises(Unsupported, match="no cache clearing on gpu"):
        Backend.cache_clearer(NumpyGpu(clears=False), 1)


# ---------------------------------------------------------------------------------------------- runner, fake workers
class FakeWorker:
    """Stands in for a worker process: answers ``hello`` when started and ``results`` (in order) to tasks."""

    started: list[str] = []
    hello: dict[str, Any] = {"type": "ready", "versions": {}, "flags": {}, "devices": ["cpu", "gpu"], "pid": 1}
    results: list[dict[str, Any]] = []

    def __init__(self, backend: str, settings: Settings, *args: Any):
        FakeWorker.started.append(f"{backend}:{settings.device}")

    def receive(self, timeout: float) -> dict[str, Any]:
        return dict(FakeWorker.hello)

    def run(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        return FakeWorker.results.pop(0)

    def kill(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def fake_workers(monkeypatch):
    import suite.runner

    monkeypatch.setattr(suite.runner, "WorkerProcess", FakeWorker)
    monkeypatch.setattr(suite.runner.environment, "capture", lambda *args, **kwargs: {})
    FakeWorker.started, FakeWorker.results = [], []
    FakeWorker.hello = {"type": "ready", "versions": {}, "flags": {}, "devices": ["cpu", "gpu"], "pid": 1}
    return FakeWorker


def test_an_out_of_memory_case_restarts_its_worker_for_the_rest(fake_workers, tmp_path):
    from suite.runner import RunOptions, run

    tasks = plan(SMOKE[:3], ["torch"], ["gpu"], ["fp32"], ["forward"])
    fake_workers.results = [{"status": "ok"}, {"status": "oom", "reason": "CUDA out of memory"}, {"status": "ok"}]
    counts = run(tasks, tmp_path / "r.jsonl", RunOptions(preflight=False))
    assert counts["ok"] == 2 and counts["oom"] == 1
    assert fake_workers.started == ["torch:gpu", "torch:gpu"]  # a fresh worker after the OOM


def test_a_device_no_framework_sees_stops_the_run_before_its_header(fake_workers, tmp_path):
    from suite.runner import DeviceUnavailable, RunOptions, run

    fake_workers.hello = {"type": "no_device", "reason": "torch 2.13.0+cpu is a CPU-only build; install ..."}
    out = tmp_path / "r.jsonl"
    tasks = plan(SMOKE[:2], ["torch", "jax"], ["cpu", "gpu"], ["fp32"], ["forward"])
    with pytest.raises(DeviceUnavailable, match=r"(?s)CPU-only build.*\n.*CPU-only build"):
        run(tasks, out, RunOptions())
    assert fake_workers.started == ["torch:gpu", "jax:gpu"]  # one pre-flight per GPU backend, none for the CPU
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- selfcheck --device gpu
def test_selfcheck_on_a_gpu_adds_the_cuda_event_columns():
    from suite.selfcheck import Comparison, comparison_table

    plain = Comparison("GEMM 512³", "forward", (2e-3, 2e-3, 2e-3), (1e-3, 1e-3, 1e-3))
    gpu = Comparison("GEMM 512³", "forward", (2e-3, 2e-3, 2e-3), (1e-3, 1e-3, 1e-3), (1.6e-3, 1.6e-3, 1.6e-3))
    assert gpu.events_ratio == pytest.approx(1.25) and np.isnan(plain.events_ratio)
    assert gpu.row()[-2:] == ["1.6 ms", "1.250"] and len(plain.row()) == 6
    headers = [column.header for column in comparison_table([gpu], "t").columns]
    assert headers[-2:] == ["CUDA events median", "opbench / events"]
    assert "CUDA events median" not in [column.header for column in comparison_table([plain], "t").columns]


def test_the_event_timer_gives_the_median_per_call_of_blocks_between_two_events(monkeypatch):
    import torch

    from suite.selfcheck import event_timer

    clock = {"now": 0.0}

    class FakeEvent:  # the GPU's clock: advanced by the fake block below
        def __init__(self, enable_timing: bool = False):
            self.at = None

        def record(self) -> None:
            self.at = clock["now"]

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end: FakeEvent) -> float:
            return (end.at - self.at) * 1e3  # milliseconds, as CUDA's

    block_seconds = iter([0.010, 0.011, 0.012, 0.050, 0.010, 0.011, 0.012])  # one slow block: the median ignores it
    calls = []

    def run_block(n: int) -> None:
        calls.append(n)
        clock["now"] += next(block_seconds)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    assert event_timer(run_block, calls=10, blocks=7)() == pytest.approx(0.011 / 10)
    assert calls == [10] * 7


def test_selfcheck_on_the_gpu_with_a_cpu_only_torch_exits_2_naming_the_build(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    code = main(["selfcheck", "--device", "gpu"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: torch ") and "CPU-only build" in err and "tox -e torch-gpu" in err


# ---------------------------------------------------------------------------------------------- README's "How long"
def test_the_readme_states_the_gpu_runs_sizes_as_the_catalog_and_tox_make_them():
    """The measurement counts and FLOPs the README's estimate rests on, recomputed from the catalog and the GPU envs'
    arguments, so a catalog change that alters them fails here rather than leaving the README stale."""
    from pathlib import Path

    from suite.ops import PASSES

    repo = Path(__file__).resolve().parent.parent
    tox = (repo / "tox.ini").read_text()
    assert "gpu_args = --device gpu --catalog full --dtype all --resume" in tox
    assert "tf32_args = --math tf32 --dtype fp32" in tox
    sections = {part.split("]", 1)[0]: part for part in tox.split("\n[testenv:")[1:]}
    layouts = {name: ("all",) if "--layout all" in sections[env] else ("default",)
               for name, env in (("torch", "torch-gpu"), ("tensorflow", "tf-gpu"), ("jax", "jax-gpu"))}
    catalog = load_catalog()

    def measurements(subset: str, name: str) -> int:
        cases = catalog.subset(subset)
        return (len(plan(cases, [name], ["gpu"], ["fp32", "fp16", "bf16"], PASSES, layouts=layouts[name]))
                + len(plan(cases, [name], ["gpu"], ["fp32"], PASSES, layouts=layouts[name], math="tf32")))

    def tflop(pass_: str) -> float:
        total = 0
        for case in catalog.subset("full"):
            try:
                total += case.op.flops(pass_)
            except ValueError:  # attention has no backward_data or backward_weight alone
                continue
        return total / 1e12

    quick, full = ({name: measurements(s, name) for name in layouts} for s in ("gpu-quick", "full"))
    text = " ".join((repo / "README.md").read_text().split())
    assert (f"`gpu-quick` ({len(catalog.subset('gpu-quick'))} cases" in text and
            f"is {quick['torch']} measurements for torch" in text and
            f"{quick['tensorflow']} for TensorFlow and {quick['jax']} for JAX" in text)
    assert (f"`full` ({len(catalog.subset('full'))} cases) is {full['torch']:,}, {full['tensorflow']:,} and "
            f"{full['jax']:,}") in text
    assert (f"`full` is {tflop('forward'):.1f} TFLOP forward, about {sum(map(tflop, PASSES)):.0f} TFLOP over the "
            "passes") in text


def test_torch_on_a_gpu_records_cublas_reduced_precision_reductions(monkeypatch):
    """fp16/bf16 GEMMs on a GPU may reduce partial sums in that precision (cuBLAS; torch's default): a math mode the
    worker reads back and records. Driven through torch's own configure() with its CUDA queries faked."""
    torch = pytest.importorskip("torch")
    from backends.torch_backend import TorchBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30,
                                                      major=9, minor=0))
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction  # torch's own setter (monkeypatch cannot undo it)
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        settings = Settings(device="gpu")
        flags = TorchBackend(settings).configure(settings)
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before
    assert flags["cuda.matmul.allow_fp16_reduced_precision_reduction"] is matmul.allow_fp16_reduced_precision_reduction
    assert flags["cuda.matmul.allow_bf16_reduced_precision_reduction"] is False
    assert flags["gpu"] == "NVIDIA H100 80GB HBM3" and flags["gpu_capability"] == "9.0"
    cpu = Settings(device="cpu")
    assert not [name for name in TorchBackend(cpu).configure(cpu) if "reduced_precision" in name]
