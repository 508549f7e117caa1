"""The GPU paths of recurrent layers and of the cold-L2 flush (issue 23), driven on the CPU builds installed here:
flags read back from torch's CPU build, fake CUDA queries and a fake cuDNN weight flattening, a fake TensorFlow that
places tensors as TF's GPU kernel registrations do, and the implementation each framework ran on the CPU."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

from backends.base import Placement, Settings


# ---------------------------------------------------------------------------------------------- torch: math mode
@pytest.mark.parametrize(("math", "precision"), [("tf32", "tf32"), ("strict", "ieee")])
def test_torch_sets_and_reads_back_the_recurrent_layers_precision(math, precision):
    """cuDNN's RNN takes its math mode from torch.backends.cudnn.rnn (torch's default: tf32); strict must set it to
    IEEE fp32 and record what torch reads back, like the matmul and conv precisions (the CPU build keeps the flag)."""
    torch = pytest.importorskip("torch")
    from backends.torch_backend import TorchBackend

    settings = Settings(math=math)
    try:
        flags = TorchBackend(settings).configure(settings)
    finally:
        TorchBackend(Settings()).configure(Settings())  # the process's default for the other tests: strict
    assert flags["cudnn.rnn.fp32_precision"] == flags["mkldnn.rnn.fp32_precision"] == precision
    assert torch.backends.cudnn.rnn.fp32_precision == "ieee"  # restored, as strict sets it
    assert flags["cudnn.conv.fp32_precision"] == flags["cuda.matmul.fp32_precision"] == precision


# ---------------------------------------------------------------------------------------------- TF: cold-L2 flush
class FakeGpuTensorFlow:
    """TensorFlow's calls in the TF backend's cache clearer, placing a fill as TF's GPU kernels do: the GPU ``Fill``
    kernel for int32 keeps its output in host memory (HostMemory("output"), core/kernels/constant_op.cc), every
    other dtype's output is in GPU memory; ``backing_device`` names where the memory is."""

    float32, int32 = "float32", "int32"

    def __init__(self, device_spec: type):
        self.DeviceSpec = device_spec  # TF's own parser of device names
        self.test = SimpleNamespace(experimental=SimpleNamespace(sync_devices=lambda: None))
        self.scopes: list[str] = []
        self.fills: list[tuple[list[int], str]] = []

    @contextlib.contextmanager
    def device(self, name: str):
        self.scopes.append(name)
        yield

    def zeros(self, shape: list[int], dtype: str) -> SimpleNamespace:
        assert self.scopes == ["/GPU:0"], "the fill must be placed on the GPU"
        self.fills.append((shape, dtype))
        memory = "CPU" if dtype == self.int32 else "GPU"
        return SimpleNamespace(device="/job:localhost/replica:0/task:0/device:GPU:0",
                               backing_device=f"/job:localhost/replica:0/task:0/device:{memory}:0")


def test_tensorflow_clears_the_l2_with_a_fill_in_gpu_memory_and_says_where_it_is():
    tf = pytest.importorskip("tensorflow")
    from backends.tf_backend import TensorFlowBackend

    backend = TensorFlowBackend(Settings(device="gpu"))
    backend.tf = fake = FakeGpuTensorFlow(tf.DeviceSpec)
    placed = backend.cache_clearer(256 * 2**20)()
    assert placed == Placement("/job:localhost/replica:0/task:0/device:GPU:0", on_gpu=True)
    assert fake.fills == [([64 * 2**20], fake.float32)]  # 256 MiB of 4-byte elements


@pytest.mark.slow
@pytest.mark.parametrize(("framework", "make", "device"), [
    ("tensorflow", "from backends.tf_backend import TensorFlowBackend as B; b = B(gpu)",
     "/job:localhost/replica:0/task:0/device:CPU:0"),
    ("jax", "from backends.jax_backend import JaxBackend as B; b = B(gpu); b.configure(Settings()); b.settings = gpu",
     "cpu:0"),
])
def test_a_clearer_reports_where_its_framework_really_put_the_buffer(framework, make, device):
    """On these CPU builds a clearer asked for the GPU gets host memory (TF's soft placement; JAX's only device):
    it reports that, not the device it asked for, so the worker's check refuses it. In a fresh process each (the
    frameworks' runtimes start here)."""
    pytest.importorskip(framework)
    code = f"from suite.variant import Settings; gpu = Settings(device='gpu'); {make}; print(b.cache_clearer(2**20)())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == f"Placement(device='{device}', on_gpu=False)", proc.stdout
