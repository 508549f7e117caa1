"""What a variant claims is checked on the prepared tensors and the framework's own state, not on the flags a backend
reports: a layout that is not in memory what its label says, an operand dtype other than the one recorded, a math
mode that is never set (yet reads back plausibly), a padding form other than the one recorded, and a thread count
that the environment overrides would all pass the numerical check. Each framework runs in a fresh process
(``configure`` is once per process), under ``OMP_NUM_THREADS=2`` that the settings must override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends import is_available

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Each probe configures the backend with threads=1 and the math mode given, prepares tensors of a conv (C, H, W > 1,
# so a layout shows in the strides) in every layout and two dtypes, and prints what the framework itself says.
PROBES = {
    "torch": """
import torch
backend = load("torch", settings)
flags = backend.configure(settings)
facts["threads"] = [flags["threads"], torch.get_num_threads()]
facts["math"] = [flags["mkldnn.matmul.fp32_precision"], torch.backends.mkldnn.matmul.fp32_precision,
                 torch.backends.mkldnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
                 torch.backends.cudnn.conv.fp32_precision]
for layout in ("NCHW", "channels_last"):
    for dtype in ("fp32", "bf16"):
        t = backend.tensor(x, "x", conv, Variant("forward", dtype, "eager", layout))
        facts[f"{layout}/{dtype}"] = {"dtype": str(t.dtype), "shape": list(t.shape), "strides": list(t.stride()),
                                      "channels_last": t.is_contiguous(memory_format=torch.channels_last)}
""",
    "tensorflow": """
import tensorflow as tf
backend = load("tensorflow", settings)
flags = backend.configure(settings)
facts["threads"] = [flags["intra_op_threads"], tf.config.threading.get_intra_op_parallelism_threads()]
facts["math"] = [flags["tensor_float_32_execution"], tf.config.experimental.tensor_float_32_execution_enabled()]
for layout in ("NHWC", "NCHW"):
    for dtype in ("fp32", "bf16"):
        t = backend.tensor(x, "x", conv, Variant("forward", dtype, "xla", layout))
        facts[f"{layout}/{dtype}"] = {"dtype": t.dtype.name, "shape": list(t.shape)}
from backends.tf_backend import padding_form
for name, op in (("symmetric", conv), ("asymmetric", asymmetric)):
    variant = Variant("forward", "fp32", "function", "NHWC")
    prepared = backend.prepare(op, variant, make_inputs(op))
    error = compare(prepared.outputs(), reference(op, make_inputs(op), "forward", "fp32"), "fp32", "strict")
    facts[f"padding/{name}"] = [prepared.details["padding_form"], padding_form(op), error["status"]]
""",
    "jax": """
import jax
backend = load("jax", settings)
flags = backend.configure(settings)
facts["threads"] = [flags["threads"], len(os.sched_getaffinity(0))]
gemm = Gemm(8, 8, 8)
args = [jax.numpy.ones(s, jax.numpy.float32) for s in (gemm.a_shape, gemm.b_shape)]
hlo = jax.jit(backend._forward(gemm, Variant("forward"))).lower(*args).as_text()
facts["math"] = [flags["jax_default_matmul_precision"], "HIGHEST" in hlo, "HIGH>" in hlo or "HIGH," in hlo]
for layout in ("NCHW", "NHWC"):
    for dtype in ("fp32", "bf16"):
        t = backend.tensor(x, "x", conv, Variant("forward", dtype, "jit", layout))
        facts[f"{layout}/{dtype}"] = {"dtype": str(t.dtype), "shape": list(t.shape)}
""",
}
PRELUDE = """
import json, os, sys
import numpy as np
from backends import load
from backends.base import Settings, Variant
from suite.ops import Conv2d, Gemm
from suite.reference import compare, make_inputs, reference
settings = Settings(device="cpu", threads=1, math=sys.argv[1])
conv = Conv2d(n=2, c=3, h=5, w=4, k=6, r=3, s=3, padding=(1, 1, 1, 1))
asymmetric = Conv2d(n=2, c=3, h=9, w=11, k=6, r=3, s=3, stride=(2, 1), padding=(0, 1, 2, 0))
x = make_inputs(conv)["x"]
facts = {}
"""


def probe(name: str, math: str) -> dict:
    if not is_available(name):
        pytest.skip(f"{name} is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    script = PRELUDE + PROBES[name] + "\nprint('FACTS ' + json.dumps(facts))\n"
    done = subprocess.run([sys.executable, "-c", script, math], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("FACTS ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("FACTS "))


@pytest.mark.parametrize("math", ["strict", "tf32"])
def test_torch_tensors_flags_and_threads_are_what_they_claim(math):
    facts = probe("torch", math)
    assert facts["threads"] == [1, 1]  # settings win over OMP_NUM_THREADS=2
    want = "tf32" if math == "tf32" else "ieee"
    assert facts["math"] == [want] * 5  # the framework's own state, every place a kernel reads it
    for dtype, torch_dtype in (("fp32", "torch.float32"), ("bf16", "torch.bfloat16")):
        nchw, last = facts[f"NCHW/{dtype}"], facts[f"channels_last/{dtype}"]
        assert nchw["dtype"] == last["dtype"] == torch_dtype
        assert nchw["shape"] == last["shape"] == [2, 3, 5, 4]  # logical NCHW either way
        assert nchw["strides"] == [60, 20, 4, 1] and not nchw["channels_last"]
        assert last["strides"] == [60, 1, 12, 3] and last["channels_last"]  # C innermost in memory


@pytest.mark.parametrize("math", ["strict", "tf32"])
def test_tensorflow_tensors_flags_threads_and_padding_are_what_they_claim(math):
    facts = probe("tensorflow", math)
    assert facts["threads"] == [1, 1]
    assert facts["math"] == [math == "tf32"] * 2
    for dtype, tf_dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        assert facts[f"NHWC/{dtype}"] == {"dtype": tf_dtype, "shape": [2, 5, 4, 3]}
        assert facts[f"NCHW/{dtype}"] == {"dtype": tf_dtype, "shape": [2, 3, 5, 4]}
    assert facts["padding/symmetric"] == ["SAME", "SAME", "pass"]
    assert facts["padding/asymmetric"] == ["explicit", "explicit", "pass"]


@pytest.mark.parametrize("math", ["strict", "tf32"])
def test_jax_tensors_precision_and_threads_are_what_they_claim(math):
    facts = probe("jax", math)
    assert facts["threads"] == [1, 1]  # the affinity XLA sizes its pool from
    precision, highest, high = facts["math"]
    assert precision == ("tensorfloat32" if math == "tf32" else "float32")
    assert (highest, high) == ((False, True) if math == "tf32" else (True, False))  # in the compiled program
    for dtype, jax_dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        assert facts[f"NCHW/{dtype}"] == {"dtype": jax_dtype, "shape": [2, 3, 5, 4]}
        assert facts[f"NHWC/{dtype}"] == {"dtype": jax_dtype, "shape": [2, 5, 4, 3]}
