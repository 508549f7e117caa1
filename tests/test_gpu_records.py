"""What a GPU run must not lose, driven without a GPU: every installed CUDA package (CUDA 13's names too), NVML's
calls that replace those deprecated as of CUDA 13, clocks locked with ``nvidia-smi -lgc``, which GPU TensorFlow and
JAX run on (from the visible device list) and which one NVML sampled, the JAX install line that fits the driver, and a
GPU worker that fails its pre-flight start refused like a missing device."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backends.base import Settings
from suite import environment, gpu_state
from suite.catalog import load_catalog
from suite.runner import DeviceUnavailable, RunOptions, plan, run
from suite.worker import run_task
from tests.test_gpu import FAST, TASK, UUIDS, FakeMonitor, NumpyGpu, fake_nvml


# ---------------------------------------------------------------------------------------------- CUDA packages
def test_every_installed_cuda_package_is_recorded_whichever_cuda_it_is_for(monkeypatch):
    installed = {"numpy": "2.4.6", "jax": "0.10.2", "jaxlib": "0.10.2", "nvidia-ml-py": "13.615.71",
                 "nvidia-cublas": "13.0.0.19", "nvidia-cuda-runtime": "13.0.48", "nvidia_cudnn_cu13": "9.13.0.50",
                 "jax-cuda13-plugin": "0.10.2", "jax-cuda13-pjrt": "0.10.2", "nvidia-cublas-cu12": "12.9.1.4",
                 "requests": "2.32.0", "nvidia-smi-tools": "1.0"}

    def version(name: str) -> str:
        if name not in installed:
            raise environment.metadata.PackageNotFoundError(name)
        return installed[name]

    fake = SimpleNamespace(version=version, PackageNotFoundError=environment.metadata.PackageNotFoundError,
                           distributions=lambda: [SimpleNamespace(metadata={"Name": n}, version=v)
                                                  for n, v in installed.items()])
    monkeypatch.setattr(environment, "metadata", fake)
    packages = environment.package_versions()
    assert {name: packages.get(name) for name in ("nvidia-cublas", "nvidia-cuda-runtime", "nvidia-cudnn-cu13",
                                                  "jax-cuda13-plugin", "jax-cuda13-pjrt", "nvidia-cublas-cu12")} == {
        "nvidia-cublas": "13.0.0.19", "nvidia-cuda-runtime": "13.0.48", "nvidia-cudnn-cu13": "9.13.0.50",
        "jax-cuda13-plugin": "0.10.2", "jax-cuda13-pjrt": "0.10.2", "nvidia-cublas-cu12": "12.9.1.4"}
    assert packages["nvidia-ml-py"] == "13.615.71" and "requests" not in packages


# ---------------------------------------------------------------------------------------------- NVML's newer calls
def test_the_calls_nvml_deprecates_are_used_only_where_their_replacements_are_missing():
    current = fake_nvml(reasons=0x4)
    monitor = gpu_state.GpuMonitor(current, ("index", 0), "test")
    sample, block = monitor.sample(), gpu_state.describe(current)
    called = {name for name, _ in current.calls}
    assert {"temperature_v", "event_reasons", "clock_id"} <= called
    assert not called & {"temperature", "reasons", "app_clock", "default_app_clock"}
    old = fake_nvml(reasons=0x4, current=False)  # an older nvidia-ml-py: only the deprecated names
    assert gpu_state.GpuMonitor(old, ("index", 0), "test").sample() == sample
    assert gpu_state.describe(old) == block
    assert {"temperature", "reasons", "app_clock", "default_app_clock"} <= {name for name, _ in old.calls}


def test_a_replacement_the_driver_lacks_falls_back_to_the_deprecated_call():
    nvml = fake_nvml(unsupported=("temperature_v", "event_reasons", "clock_id"), reasons=0x20)
    sample = gpu_state.GpuMonitor(nvml, ("index", 0), "test").sample()
    assert sample["temperature_c"] == 71 and sample["throttle_reasons"] == ["sw_thermal_slowdown"]
    assert gpu_state.describe(nvml)["gpus"][0]["applications_sm_clock_mhz"] == 1980


# ---------------------------------------------------------------------------------------------- locked clocks
def test_clocks_locked_with_nvidia_smi_lgc_count_as_locked():
    """-lgc leaves applications clocks at their default; NVML shows the lock only as a user clock setting."""
    gpu = gpu_state.describe(fake_nvml(app_clock=1755, default_app_clock=1755, reasons=0x2))["gpus"][0]
    assert gpu["clocks_locked"] is True and gpu["applications_sm_clock_mhz"] == gpu["default_applications_sm_clock_mhz"]
    assert gpu["clocks_locked_by"] == ["clock event reason applications_clocks_setting (locked or applications clocks)"]
    free = gpu_state.describe(fake_nvml(app_clock=1755, default_app_clock=1755, reasons=0x1))["gpus"][0]
    assert free["clocks_locked"] is False and free["clocks_locked_by"] == []


def test_the_report_names_how_the_clocks_were_locked():
    from reports import site

    gpu = gpu_state.describe(fake_nvml(app_clock=1755, default_app_clock=1755, reasons=0x2))
    from suite.results import Environment

    facts = site._gpu_facts(Environment.from_record({"nvml": gpu}), [])
    assert "clocks locked (clock event reason applications_clocks_setting" in facts["GPUs"]


# ---------------------------------------------------------------------------------------------- which GPU
@pytest.mark.parametrize("visible, ordinal, expected", [
    (None, 1, "index:1"), ("", 0, "index:0"), ("3,1", 1, "index:1"), ("3,1", 0, "index:3"),
    ("GPU-123,GPU-def", 1, "GPU-def"), (" MIG-xyz ", 0, "MIG-xyz"), ("1", 2, ""),
])
def test_a_cuda_ordinal_is_looked_up_in_the_visible_device_list(visible, ordinal, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert gpu_state.visible_gpu_id(ordinal, environ) == expected


def test_the_monitor_records_which_gpu_it_samples_and_finds_a_uuid_prefix(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monitor, _ = gpu_state.open_monitor("GPU-de", nvml=fake_nvml(devices=3))  # CUDA takes a unique UUID prefix
    assert monitor is not None and monitor.device == {"index": 1, "uuid": "GPU-def", "pci_bus_id": "00000000:2A:00.0",
                                                      "name": "NVIDIA H100 80GB HBM3"}
    monitor, _ = gpu_state.open_monitor("index:2", nvml=fake_nvml(devices=3))
    assert monitor is not None and monitor.device["uuid"] == UUIDS[2] and monitor.matched_by == "NVML index:2"


def test_a_measurement_records_the_gpu_that_was_sampled():
    result = run_task(NumpyGpu(), TASK, FAST, check=False, seed=0, gpu=(FakeMonitor([], []), None))
    assert result["gpu_state"]["sampled"] == FakeMonitor.device and result["gpu_state"]["gpu"] == "uuid GPU-test"


def test_tensorflow_on_a_multi_gpu_machine_samples_its_own_gpu(monkeypatch):
    """TF's GPU:0 is the first visible CUDA device, here named by a UUID prefix as CUDA_VISIBLE_DEVICES allows (NVML
    looks up full UUIDs only): NVML's GPU 1."""
    tf = pytest.importorskip("tensorflow")
    from backends.tf_backend import TensorFlowBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-de,GPU-abc")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [SimpleNamespace(name="/physical_device:GPU:0", device_type="GPU")])
    backend = TensorFlowBackend(Settings(device="gpu"))
    monitor, why = gpu_state.open_monitor(backend.gpu_id(), nvml=fake_nvml(devices=2))
    assert backend.gpu_id() == "GPU-de" and monitor is not None, why
    assert monitor.device["uuid"] == UUIDS[1] and monitor.device["index"] == 1
    assert TensorFlowBackend(Settings(device="cpu")).gpu_id() is None


def test_jax_samples_the_gpu_jax_cuda_visible_devices_picked(monkeypatch):
    """JAX numbers its devices from 0 but keeps each one's CUDA ordinal: JAX_CUDA_VISIBLE_DEVICES=2 runs on the
    third visible GPU, which NVML must sample (not the first)."""
    pytest.importorskip("jax")
    from backends.jax_backend import JaxBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-456,GPU-123,GPU-def")
    backend = JaxBackend(Settings())
    backend.settings = Settings(device="gpu")
    backend.device = SimpleNamespace(id=0, local_hardware_id=2)
    monitor, _ = gpu_state.open_monitor(backend.gpu_id(), nvml=fake_nvml(devices=4))
    assert backend.gpu_id() == "GPU-def" and monitor is not None and monitor.device["index"] == 1


# ---------------------------------------------------------------------------------------------- JAX's install line
@pytest.mark.parametrize("driver, words", [
    ((13, 0), "the driver supports CUDA 13.0; install the CUDA build that fits it: pip install 'jax[cuda13]==0.10.2'"),
    ((12, 9), "the driver supports CUDA 12.9; install the CUDA build that fits it: pip install 'jax[cuda12]==0.10.2'"),
    ((11, 8), "supports CUDA 11.8, older than any CUDA build of jax 0.10.2"),
    (None, "with a CUDA 12 driver pip install 'jax[cuda12]==0.10.2', with a CUDA 13 one 'jax[cuda13]==0.10.2'"),
])
def test_the_jax_refusal_names_the_extra_that_fits_the_driver(monkeypatch, driver, words):
    pytest.importorskip("jax")
    import backends.jax_backend
    from backends.jax_backend import JaxBackend

    monkeypatch.setattr(gpu_state, "driver_cuda_version", lambda nvml=None: driver)
    message = JaxBackend(Settings())._no_gpu()
    assert words in message and backends.jax_backend.jax_cuda_install("0.10.2", driver) in message


def test_the_drivers_cuda_version_comes_from_nvml_where_libcuda_is_absent(monkeypatch):
    def no_library(*args: Any, **kwargs: Any) -> Any:
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(gpu_state.ctypes, "CDLL", no_library)
    assert gpu_state.driver_cuda_version(fake_nvml()) == (12, 9)
    assert gpu_state.driver_cuda_version(fake_nvml(unsupported=("cuda",))) is None


# ---------------------------------------------------------------------------------------------- pre-flight
class StartingWorker:
    """A worker process as the pre-flight sees it: its first message (None: it died or said nothing)."""

    hello: dict[str, Any] | None = None
    started: list[str] = []

    def __init__(self, backend: str, settings: Settings, *args: Any):
        StartingWorker.started.append(f"{backend}:{settings.device}")
        self.log_path = Path("r.worker.log")
        self.proc = SimpleNamespace(poll=lambda: 1)

    def receive(self, timeout: float) -> dict[str, Any] | None:
        return None if StartingWorker.hello is None else dict(StartingWorker.hello)

    def log_tail(self) -> str:
        return "ImportError: libcudnn.so.9: cannot open shared object file"

    def close(self) -> None:
        pass


@pytest.mark.parametrize("hello, words", [
    ({"type": "fatal", "reason": "RuntimeError: CUDA driver initialization failed"},
     "the torch worker on gpu failed to start: RuntimeError: CUDA driver initialization failed"),
    (None, "the torch worker on gpu exited before it was ready; its log (r.worker.log) ends: ImportError: libcudnn"),
])
def test_a_gpu_worker_that_fails_its_pre_flight_start_refuses_the_run_before_its_header(monkeypatch, tmp_path, hello,
                                                                                      words):
    import suite.runner

    monkeypatch.setattr(suite.runner, "WorkerProcess", StartingWorker)
    StartingWorker.hello, StartingWorker.started = hello, []
    tasks = plan(load_catalog().subset("smoke")[:2], ["torch"], ["cpu", "gpu"], ["fp32"], ["forward"])
    out = tmp_path / "r.jsonl"
    with pytest.raises(DeviceUnavailable) as refused:
        run(tasks, out, RunOptions())
    assert words in str(refused.value)
    assert StartingWorker.started == ["torch:gpu"] and not out.exists()  # nothing written: no header, no errors
