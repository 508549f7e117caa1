"""The GPU paths of recurrent layers and of the cold-L2 flush (issue 23), driven on the CPU builds installed here:
flags read back from torch's CPU build, fake CUDA queries and a fake cuDNN weight flattening, a fake TensorFlow that
places tensors as TF's GPU kernel registrations do, and the implementation each framework ran on the CPU."""

from __future__ import annotations

import pytest

from backends.base import Settings


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
