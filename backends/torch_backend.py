"""PyTorch: eager and torch.compile; conv layouts NCHW and channels_last.

(Batched) GEMM is ``torch.matmul``; attention is ``torch.nn.functional.scaled_dot_product_attention`` on
batch×heads×length×head_dim tensors (``enable_gqa`` when KV heads are fewer), and the kernel torch's dispatcher picks
for those inputs (``torch._fused_sdp_choice``: flash, memory-efficient, cuDNN or math) is recorded as ``sdpa_backend``
(eager mode; torch.compile may substitute its own kernel). A sparse GEMM is ``torch.mm`` on A converted (before
timing) to a sparse CSR or COO tensor (layouts "CSR" and "COO": run both, the report takes the faster and names
it). int8 GEMM is ``torch._int_mm`` (int8 × int8 → int32); torch has no public int8 × int8 → int32 convolution
(its quantized conv requantizes to 8 bits), so int8 conv is unsupported.

A recurrent layer is ``torch.rnn_relu``, ``rnn_tanh``, ``lstm`` or ``gru``: the functions torch.nn.RNN/LSTM/GRU.forward
call with their flat weights, here given the case's weights and biases (one layer, batch first) and a zero initial
state made once outside the timed region. The kernel torch picks is recorded as ``implementation`` (cuDNN, oneDNN or
its generic loop); for cuDNN the weights are first flattened into one buffer, as nn.LSTM keeps them
(``flatten_parameters``).

Backward runs as training runs it: the forward is computed once outside the timed region, then each call replays
the autograd graph with ``torch.autograd.grad(y, wrt, dy, retain_graph=True)``. Autograd computes only the
gradients asked for (ConvolutionBackward's output mask follows the requested inputs), so backward_data does not
compute dW. Under torch.compile the forward is compiled and the backward replays the compiled backward graph.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from backends.base import Backend, DeviceMissing, Placement, RankGroup, Settings, Unsupported, Variant
from suite.models import LEARNING_RATE, Model
from suite.ops import AllReduce, Attention, BatchedGemm, Conv2d, Gemm, Op, Rnn, Spmm
from suite.reference import to_int8

# torch's CUDA _int_mm (cuBLASLt int8): A must have more than 16 rows, K and N must be multiples of 8 (checks in
# aten/src/ATen/native/cuda/Blas.cpp); opbench does not pad, so another shape is unsupported there.
INT_MM_CUDA_MIN_M, INT_MM_CUDA_MULTIPLE = 16, 8


def int_mm_refusal(op: Gemm, device: str) -> str:
    """Why torch._int_mm cannot run this GEMM's shape on ``device`` ('' when it can)."""
    if device != "gpu" or (op.m > INT_MM_CUDA_MIN_M and not op.k % INT_MM_CUDA_MULTIPLE
                           and not op.n % INT_MM_CUDA_MULTIPLE):
        return ""
    return (f"torch._int_mm on CUDA needs M > {INT_MM_CUDA_MIN_M} and K, N multiples of {INT_MM_CUDA_MULTIPLE}, got "
            f"M={op.m} N={op.n} K={op.k}; opbench does not pad int8 dimensions (DeepBench pads to multiples of 4)")

COLLECTIVE_TIMEOUT_S = 600  # a peer that never comes: torch.distributed raises after this (the runner kills sooner)


class TorchBackend(Backend):
    name = "torch"
    modes = ("eager", "compile")
    int8 = True  # GEMM (see the module docstring)
    layouts = {"gemm": ("row-major",), "conv2d": ("NCHW", "channels_last"), "bgemm": ("row-major",),
               "attention": ("BHLD",), "rnn": ("BTI",), "model": ("NCHW", "channels_last"),
               "spmm": ("CSR", "COO"), "allreduce": ("processes",)}

    def __init__(self, settings: Settings | None = None):
        super().__init__(settings)
        import torch

        self.torch = torch

    def versions(self) -> dict[str, str]:
        torch = self.torch
        out = {"torch": torch.__version__.split("+")[0], "torch_build": torch.__version__}
        if torch.backends.mkldnn.is_available():
            out["onednn"] = ".".join(str(v) for v in getattr(torch._C, "_onednn_version", lambda: ())()) or "yes"
        if torch.cuda.is_available():
            out["cuda"] = str(torch.version.cuda)
            out["cudnn"] = str(torch.backends.cudnn.version())
        return out

    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if self.torch.cuda.is_available() else ["cpu"]

    def _no_gpu(self) -> str:
        torch = self.torch
        if torch.version.cuda is None:
            build = f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
        else:
            build = (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: torch.cuda.is_available() "
                     "is False (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides every GPU)")
        version = torch.__version__.split("+")[0]
        return (f"{build}; install the CUDA build: pip install --force-reinstall torch=={version} --index-url "
                "https://pypi.org/simple (PyPI's Linux wheel is the CUDA build), or run tox -e torch-gpu")

    def configure(self, settings: Settings) -> dict[str, Any]:
        torch = self.torch
        self.settings = settings
        if settings.device == "gpu" and not torch.cuda.is_available():
            raise DeviceMissing(self._no_gpu())
        if settings.threads:
            torch.set_num_threads(settings.threads)
        precision = "tf32" if settings.math == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
        torch.backends.cudnn.rnn.fp32_precision = precision  # cuDNN's RNN math mode; torch's default is tf32
        torch.backends.mkldnn.matmul.fp32_precision = precision
        torch.backends.mkldnn.conv.fp32_precision = precision
        torch.backends.mkldnn.rnn.fp32_precision = precision
        torch.backends.cudnn.benchmark = True  # autotune once per shape; the warm-up absorbs it
        flags = {
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cuda.matmul.fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "cudnn.conv.fp32_precision": torch.backends.cudnn.conv.fp32_precision,
            "cudnn.rnn.fp32_precision": torch.backends.cudnn.rnn.fp32_precision,
            "mkldnn.matmul.fp32_precision": torch.backends.mkldnn.matmul.fp32_precision,
            "mkldnn.conv.fp32_precision": torch.backends.mkldnn.conv.fp32_precision,
            "mkldnn.rnn.fp32_precision": torch.backends.mkldnn.rnn.fp32_precision,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
        }
        if settings.device == "gpu":  # cuBLAS may reduce fp16/bf16 GEMM partial sums in that precision (default on)
            matmul = torch.backends.cuda.matmul
            flags.update({f"cuda.matmul.allow_{dtype}_reduced_precision_reduction":
                          getattr(matmul, f"allow_{dtype}_reduced_precision_reduction") for dtype in ("fp16", "bf16")})
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            flags.update(gpu=props.name, gpu_memory_bytes=props.total_memory,
                         gpu_capability=f"{props.major}.{props.minor}")
        return flags

    @property
    def device(self) -> str:
        return "cuda" if self.settings.device == "gpu" else "cpu"

    def tensor(self, array: np.ndarray, role: str, op: Op, variant: Variant) -> Any:
        if isinstance(op, Model):  # the canonical arrays are loaded into the network in step()
            return array
        torch = self.torch
        if variant.dtype == "int8":  # the integers suite.reference multiplies; nothing to differentiate
            return torch.tensor(to_int8(array), device=self.device, dtype=torch.int8)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[variant.dtype]
        # A copy in torch's own (64-byte aligned) memory, as a network's tensors are: a tensor sharing NumPy's
        # 16-byte aligned buffer made the batch-1 dense layer 1024→512 1.25× slower (misaligned weight rows).
        tensor = torch.tensor(array, device=self.device, dtype=dtype)
        if variant.layout == "channels_last" and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        if isinstance(op, Spmm) and role == "x":  # A in the layout's sparse format, built before timing
            with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                return tensor.to_sparse_csr() if variant.layout == "CSR" else tensor.to_sparse().coalesce()
        return tensor.requires_grad_(role in op.wrt(variant.pass_))

    def _forward(self, op: Op, variant: Variant):
        """The framework call as a function of its operands, the op's other arguments bound (no Python frame)."""
        torch = self.torch
        if variant.dtype == "int8":
            if not isinstance(op, Gemm):
                raise Unsupported(f"torch has no public int8 × int8 → int32 {op.kind} kernel: its quantized ops "
                                  "(torch.ops.quantized) requantize their output to 8 bits, which no exact int32 check "
                                  "can compare")
            refusal = int_mm_refusal(op, self.settings.device)
            if refusal:
                raise Unsupported(refusal)
            return torch._int_mm
        if isinstance(op, Spmm):
            return torch.mm
        if isinstance(op, Attention):
            return functools.partial(torch.nn.functional.scaled_dot_product_attention, is_causal=op.causal,
                                     enable_gqa=op.kv_heads != op.heads)
        if isinstance(op, Rnn):
            return self._rnn(op, variant)
        if isinstance(op, Conv2d):
            pads = op.symmetric_padding
            if pads is None:
                raise Unsupported(f"torch conv2d has no asymmetric padding {op.padding} (only F.pad + conv)")
            return functools.partial(torch.nn.functional.conv2d, stride=op.stride, padding=pads,
                                     dilation=op.dilation, groups=op.groups)
        return torch.matmul

    def _rnn(self, op: Rnn, variant: Variant):
        """(x, w_ih, w_hh, b_ih, b_hh) -> every step's hidden state, as nn.RNN/LSTM/GRU(batch_first=True) run it."""
        torch = self.torch
        layer = {"rnn_relu": torch.rnn_relu, "rnn_tanh": torch.rnn_tanh, "lstm": torch.lstm, "gru": torch.gru}[op.cell]
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[variant.dtype]
        h0 = torch.zeros(1, op.batch, op.hidden, device=self.device, dtype=dtype)
        state = (h0, h0) if op.cell == "lstm" else h0
        train = variant.pass_ != "forward"  # the forward pass runs as inference does (nothing recorded for autograd)
        # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        return lambda x, *weights: layer(x, state, list(weights), True, 1, 0.0, train, False, True)[0]

    def _rnn_implementation(self, op: Rnn, variant: Variant, forward: Any, inputs: list[Any]) -> str:
        """The kernel torch runs the layer with, as torch decides it: "cudnn", "miopen", "onednn" or "generic loop"
        (a loop over the steps of GEMMs and pointwise ops).

        Eager: the choice is made in C++ (RNN.cpp's use_cudnn and use_mkldnn, on these very tensors), so one call,
        outside the timed region, records the aten ops it dispatches. torch.compile traces the layer through torch's
        Python decompositions instead: every step unrolled, except an LSTM that ``select_one_layer_lstm_function``
        sends to oneDNN (CPU, input without grad); torch 2.13 keeps no cuDNN layer there.
        """
        torch = self.torch
        if variant.mode == "compile":
            if op.cell != "lstm":
                return "generic loop"
            from torch._decomp import decompositions

            h0 = torch.zeros(1, op.batch, op.hidden, device=self.device, dtype=inputs[0].dtype)
            chosen = decompositions.select_one_layer_lstm_function(inputs[0], (h0, h0), [tuple(inputs[1:])])
            return "onednn" if chosen is decompositions.mkldnn_one_layer_lstm else "generic loop"
        from torch.utils._python_dispatch import TorchDispatchMode

        kernels = {"_cudnn_rnn": "cudnn", "miopen_rnn": "miopen", "mkldnn_rnn_layer": "onednn"}
        seen: list[str] = []

        class Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(func.overloadpacket.__name__)
                return func(*args, **(kwargs or {}))

        with warnings.catch_warnings(), Recorder():  # cuDNN warns of the scattered weights, flattened next
            warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk")
            forward(*inputs)
        return next((kernels[name] for name in seen if name in kernels), "generic loop")

    def _flatten_rnn_weights(self, op: Rnn, weights: list[Any]) -> None:
        """Copy the weights into one buffer in cuDNN's layout and make each a view of it, as nn.LSTM's
        flatten_parameters does: scattered weights are copied into a fresh buffer by every cuDNN call."""
        torch = self.torch
        if not torch._use_cudnn_rnn_flatten_weight():
            return
        from torch.backends.cudnn import rnn

        mode = rnn.get_cudnn_mode(op.cell.upper())  # RNN_RELU, RNN_TANH, LSTM, GRU
        with torch.cuda.device_of(weights[0]), torch.no_grad():  # in place on the leaves (set_ to views)
            # (weights, per layer, input size, mode, hidden, projection, layers, batch_first, bidirectional)
            torch._cudnn_rnn_flatten_weight(weights, len(weights), op.input_size, mode, op.hidden, 0, 1, True, False)

    def join(self, group: RankGroup) -> dict[str, Any]:
        """torch.distributed over NCCL on a GPU (one GPU per local rank), gloo on the CPU; the timing's agreement runs
        in a gloo group of its own, on host numbers."""
        dist = self.torch.distributed
        communication = "nccl" if self.settings.device == "gpu" else "gloo"
        if communication == "nccl":
            if not self.torch.cuda.is_available():
                raise DeviceMissing(self._no_gpu())
            self.torch.cuda.set_device(group.local_rank)
        from datetime import timedelta

        # env://: MASTER_ADDR and MASTER_PORT, as torchrun (whose agent already holds a store there) or srun's job
        # script set them
        dist.init_process_group(communication, init_method="env://", rank=group.rank, world_size=group.ranks,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        self._agreement = dist.new_group(backend="gloo") if communication != "gloo" else dist.group.WORLD
        self.rank, self.ranks = group.rank, group.ranks
        return {"communication": communication, "torch.distributed": dist.get_backend()}

    def agree(self, value: float) -> float:
        if self.ranks == 1:
            return value
        dist = self.torch.distributed
        number = self.torch.tensor([value], dtype=self.torch.float64)
        dist.all_reduce(number, op=dist.ReduceOp.MAX, group=self._agreement)
        return float(number.item())

    def _allreduce(self, op: AllReduce, args: dict[str, Any]):
        """dist.all_reduce in place on the rank's buffer (after the first call every rank holds the sum; each call
        after multiplies it by R, until ±inf, which adds as fast)."""
        if not self.torch.distributed.is_initialized():
            raise Unsupported("torch all-reduce runs across processes: start it with run --ranks R")
        all_reduce, buffer = self.torch.distributed.all_reduce, args["x"]

        def run():
            all_reduce(buffer)
            return buffer

        return run, {"in_place": True, "communication": self.torch.distributed.get_backend()}

    def step(self, op: Op, variant: Variant, args: dict[str, Any]):
        torch = self.torch
        if isinstance(op, Model):
            return self._model_step(op, variant, args)
        if isinstance(op, AllReduce):
            return self._allreduce(op, args)
        forward = self._forward(op, variant)
        inputs, dy = [args[name] for name in op.inputs], args.get("dy")
        if isinstance(op, Gemm | BatchedGemm):  # transposed views made once; matmul reads the stored layout as it is
            inputs = [x.mT if flag else x for x, flag in zip(inputs, (op.transpose_a, op.transpose_b), strict=True)]
        details: dict[str, Any] = {}
        if isinstance(op, Attention) and variant.mode == "eager":  # under torch.compile Inductor may pick its own
            details = self._sdpa_backend(op, inputs)
        if isinstance(op, Rnn):
            details = {"implementation": self._rnn_implementation(op, variant, forward, inputs)}
            if details["implementation"] == "cudnn":  # once, before timing
                self._flatten_rnn_weights(op, inputs[1:])
        if isinstance(op, Spmm):
            details = {"implementation": f"torch.mm, A sparse {variant.layout}"}
            if variant.mode == "compile":  # dynamo refuses sparse tensors: its fake tensors have no sparse layouts
                raise Unsupported("torch.compile does not support sparse tensors (dynamo: 'Attempted to wrap sparse "
                                  "Tensor'); sparse GEMM runs in eager mode")
            try:  # a sparse kernel missing for this dtype on this device raises on the first call: say so
                forward(*inputs)
            except (NotImplementedError, RuntimeError) as error:
                if "not implemented" not in str(error).lower():
                    raise
                raise Unsupported(f"torch has no sparse {variant.layout} × dense kernel in {variant.dtype} on "
                                  f"{self.settings.device}: {str(error).splitlines()[0]}") from None
        if variant.mode == "compile":
            # Every case of a kind compiles the same function; dynamo caches per code object and stops recompiling
            # after a few shapes, so start each case from an empty cache.
            torch._dynamo.reset()
            forward = torch.compile(forward, dynamic=False, fullgraph=True)
        if variant.pass_ == "forward":  # no operand requires grad here, so autograd records nothing
            return functools.partial(forward, *inputs), details  # one call per step, no harness frame around it
        try:
            y = forward(*inputs)  # once, outside the timed region
        except TypeError as error:  # torch 2.13 Inductor on CPU, LSTM with only the weights requiring grad: its
            if variant.mode != "compile":  # mkldnn_rnn_layer call raises "expected Tensor() for op"
                raise
            raise Unsupported(f"torch.compile cannot run {op.describe()} {variant.pass_} on {self.settings.device}: "
                              f"Inductor's generated code raised TypeError: {error}") from None
        wrt = tuple(args[name] for name in op.wrt(variant.pass_))

        def run_backward():
            grads = torch.autograd.grad(y, wrt, dy, retain_graph=True)
            return grads if len(grads) > 1 else grads[0]

        return run_backward, details

    def _model_step(self, op: Model, variant: Variant, args: dict[str, np.ndarray]):
        """A whole network's pass as torch trains it (suite/models.py; modules in backends/torch_models.py).

        forward: ``model.eval()`` under ``torch.no_grad()``, the logits. backward: ``model.train()``, zero_grad
        (set_to_none), the loss (mean cross-entropy), ``loss.backward()``. step: the same, then
        ``torch.optim.SGD(lr=LEARNING_RATE)``'s ``step()``: every call trains on. Under torch.compile the module is
        compiled (forward and loss; AOTAutograd compiles its backward), the optimizer runs eagerly. fp16/bf16 run
        the forward and loss under ``torch.autocast`` with fp32 weights (torch's mixed precision). channels_last
        keeps ResNet's images and weights in NHWC memory; BERT has no image layout (refused).

        What the check sees: only the FIRST call (the op is ``stateful``, Backend.prepare keeps it) returns the
        check's outputs: the loss with the L2 norm per parameter group of the gradients (backward) or of
        w_after - w_before (step, from a float64 difference with a copy taken before the update); every later call
        is the bare pass and returns the loss alone, so no timed call pays for the norms or the copy.
        """
        torch = self.torch
        from backends import torch_models

        if op.network != "resnet50" and variant.layout != "NCHW":
            raise Unsupported(f"{op.describe()} has no image activations: layout {variant.layout!r} does not apply "
                              "(BERT runs in its one layout, the default)")
        channels_last = variant.layout == "channels_last"
        module = torch_models.build(op).to(self.device)
        torch_models.load(module, op, args)
        batch = {name: torch.from_numpy(args[name]).to(self.device) for name in op.batch_shapes()}
        inputs = [batch["images"]] if op.network == "resnet50" else [batch["tokens"], batch["segments"]]
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
            inputs = [inputs[0].contiguous(memory_format=torch.channels_last)]
        labels = batch["labels"]
        module.train(variant.pass_ != "forward")
        params = dict(module.named_parameters())
        groups = [[params[name] for name in names] for names in op.groups().values()]
        mixed = variant.dtype != "fp32"
        autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(variant.dtype, torch.float32)

        def loss_of(model, *xs):
            return torch.nn.functional.cross_entropy(model(*xs).float(), labels)

        network = module
        if variant.mode == "compile":
            torch._dynamo.reset()
            network = torch.compile(module, dynamic=False)
        autocast = functools.partial(torch.autocast, self.device, dtype=autocast_dtype, enabled=mixed)

        def norms(tensors: list[list[Any]]) -> Any:
            """L2 norm per group, accumulated in float64 (only for the check's call)."""
            return torch.stack([torch.sqrt(sum(torch.linalg.vector_norm(t, dtype=torch.float64) ** 2 for t in group))
                                for group in tensors])

        if variant.pass_ == "forward":
            def forward():
                with torch.no_grad(), autocast():
                    return network(*inputs)
            return forward, {"parameters": sum(p.numel() for p in params.values())}

        optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)
        first = [True]

        def train():
            module.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_of(network, *inputs)
            loss.backward()
            checked, first[0] = first[0], False
            if variant.pass_ == "backward":
                if not checked:
                    return loss.detach()
                return loss.detach(), norms([[p.grad for p in group] for group in groups])
            before = [[p.detach().clone() for p in group] for group in groups] if checked else None
            optimizer.step()
            if before is None:
                return loss.detach()
            with torch.no_grad():
                change = [[p.double() - old.double() for p, old in zip(group, olds, strict=True)]
                          for group, olds in zip(groups, before, strict=True)]
            return loss.detach(), norms(change)

        return train, {"parameters": sum(p.numel() for p in params.values())}

    def _sdpa_backend(self, op: Attention, inputs: list[Any]) -> dict[str, Any]:
        """The kernel scaled_dot_product_attention dispatches to for these tensors, as torch itself decides it."""
        torch = self.torch
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(*inputs, None, 0.0, op.causal, scale=None,
                                         enable_gqa=op.kv_heads != op.heads)
        return {"sdpa_backend": SDPBackend(choice).name.lower()}

    def sync(self, out: Any) -> None:
        if self.settings.device == "gpu":
            self.torch.cuda.synchronize()

    def free_memory_bytes(self) -> int | None:
        return self.torch.cuda.mem_get_info()[0] if self.settings.device == "gpu" else None

    def release(self) -> None:
        if self.settings.device == "gpu":
            self.torch.cuda.empty_cache()

    def gpu_id(self) -> str | None:
        if self.settings.device != "gpu":
            return None
        # the current device: 0, or a rank's own (join sets it to its local rank)
        uuid = str(getattr(self.torch.cuda.get_device_properties(self.torch.cuda.current_device()), "uuid", "") or "")
        return (uuid if uuid.startswith("GPU-") else f"GPU-{uuid}") if uuid else None

    def cache_bytes(self) -> int | None:
        return self.torch.cuda.get_device_properties(0).L2_cache_size if self.settings.device == "gpu" else None

    def cache_clearer(self, nbytes: int):
        if self.settings.device != "gpu":
            return super().cache_clearer(nbytes)
        buffer = self.torch.empty(nbytes // 4, dtype=self.torch.int32, device="cuda")

        def clear() -> Placement:
            buffer.zero_()  # queued before the next call's start event, as triton's do_bench does
            return Placement(str(buffer.device), buffer.is_cuda)

        return clear

    def single_call_timer(self, step):
        """On the GPU, CUDA events around the call: the clearing write before it stays outside the timed region."""
        if self.settings.device != "gpu":
            return super().single_call_timer(step)
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))

        def run_one() -> float:
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # milliseconds

        return run_one, "cuda events"

    def to_numpy(self, out: Any, name: str, op: Op, variant: Variant) -> np.ndarray:
        return out.detach().to("cpu", self.torch.float64).contiguous().numpy()
