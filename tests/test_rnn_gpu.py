"""The GPU paths of recurrent layers and of the cold-L2 flush (issue 23), driven on the CPU builds installed here:
flags read back from torch's CPU build, fake CUDA queries and a fake cuDNN weight flattening, a fake TensorFlow that
places tensors as TF's GPU kernel registrations do, and the implementation each framework ran on the CPU."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from backends.base import Placement, Settings, Variant
from suite.ops import Rnn
from suite.reference import compare, make_inputs, reference


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



# ---------------------------------------------------------------------------------------------- torch: flat weights
def _placed(backend, op, pass_: str):
    variant = backend.resolve(op, Variant(pass_))
    inputs = make_inputs(op)
    args = {role: backend.tensor(array, role, op, variant) for role, array in inputs.items()}
    step, details = backend.step(op, variant, args)
    outputs = step()
    names = op.outputs(variant.pass_)
    parts = outputs if len(names) > 1 else (outputs,)
    got = {name: backend.to_numpy(part, name, op, variant) for name, part in zip(names, parts, strict=True)}
    check = compare(got, reference(op, inputs, pass_), "fp32", "strict")
    assert check["status"] == "pass", check
    return [args[name] for name in ("w_ih", "w_hh", "b_ih", "b_hh")], details


def test_torch_flattens_the_weights_of_a_cudnn_layer_into_one_buffer_before_timing(monkeypatch):
    """cuDNN finds the weights in one buffer only if they are views of it (aten's try_get_weight_buf); otherwise every
    call copies them into a fresh one ("weights are not part of single contiguous chunk"). Driven with torch's flatten
    faked as aten does it (one buffer, each weight set_ to a view) and the kernel choice faked as cuDNN."""
    torch = pytest.importorskip("torch")
    from backends.torch_backend import TorchBackend

    calls = []

    def flatten(weights, per_layer, input_size, mode, hidden, proj_size, layers, batch_first, bidirectional):
        calls.append((per_layer, input_size, mode, hidden, proj_size, layers, batch_first, bidirectional))
        buffer = torch.zeros(sum(w.numel() for w in weights), dtype=weights[0].dtype)
        offset = 0
        for weight in weights:
            view = buffer[offset:offset + weight.numel()].view_as(weight)
            view.copy_(weight)
            weight.set_(view)  # in place, as aten's copy_weights_to_flat_buf_views (raises outside no_grad)
            offset += weight.numel()
        return buffer

    monkeypatch.setattr(torch, "_use_cudnn_rnn_flatten_weight", lambda: True)
    monkeypatch.setattr(torch, "_cudnn_rnn_flatten_weight", flatten)
    monkeypatch.setattr(torch.backends.cudnn.rnn, "get_cudnn_mode", {"LSTM": 2, "GRU": 3}.get)
    backend = TorchBackend(Settings())
    op = Rnn("lstm", hidden=8, batch=2, timesteps=3, input_size=5)

    weights, details = _placed(backend, op, "backward")  # here: oneDNN, which reads the weights where they are
    assert details == {"implementation": "onednn"} and not calls
    assert len({w.untyped_storage().data_ptr() for w in weights}) == 4

    monkeypatch.setattr(TorchBackend, "_rnn_implementation", lambda *args: "cudnn")  # as on a GPU
    for cell, mode in (("lstm", 2), ("gru", 3)):
        op = Rnn(cell, hidden=8, batch=2, timesteps=3, input_size=5)
        for pass_ in ("forward", "backward"):
            calls.clear()
            weights, details = _placed(backend, op, pass_)  # the layer still agrees with float64 on the views
            assert details == {"implementation": "cudnn"}
            assert calls == [(4, 5, mode, 8, 0, 1, True, False)]  # w_ih, w_hh, b_ih, b_hh per layer; one layer
            assert len({w.untyped_storage().data_ptr() for w in weights}) == 1, (cell, pass_)
            assert weights[1].requires_grad == (pass_ == "backward")  # still the leaves autograd differentiates

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


# ---------------------------------------------------------------------------------------------- TF: cuDNN layers
@pytest.mark.slow
def test_keras_takes_its_cudnn_path_for_lstm_and_gru_where_it_sees_a_gpu():
    """Keras runs LSTM and GRU on cuDNN only with a bias and outside XLA (its cudnn_ok and use_cudnn); SimpleRNN has
    no cuDNN path. Keras' GPU query faked as on a GPU; the layers are built, not run. In a fresh process (Keras'
    variables start TensorFlow's runtime)."""
    pytest.importorskip("tensorflow")
    code = """if True:
        import importlib, json
        rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")  # the module (the package exports a function)
        from backends.tf_backend import TensorFlowBackend
        from suite.ops import Rnn
        from suite.variant import Settings, Variant
        rnn._is_gpu_available = lambda: True  # as tf.config.list_logical_devices('GPU') answers on a GPU
        backend = TensorFlowBackend(Settings())
        print(json.dumps({f"{cell} {mode}": backend._rnn(Rnn(cell, 8, 2, 3), Variant("backward", mode=mode))[1]
                          for cell in ("rnn_relu", "rnn_tanh", "lstm", "gru") for mode in backend.modes}))
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chosen = json.loads(proc.stdout.splitlines()[-1])
    assert chosen == {f"{cell} {mode}": "cudnn" if cell in ("lstm", "gru") and mode != "xla" else "generic loop"
                      for cell in ("rnn_relu", "rnn_tanh", "lstm", "gru") for mode in ("function", "eager", "xla")}
