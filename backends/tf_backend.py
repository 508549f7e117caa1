"""TensorFlow: tf.function (default), eager, and XLA (tf.function(jit_compile=True)); conv layouts NHWC and NCHW.

Backward. Conv calls the backprop ops themselves (Conv2DBackpropInput/Filter, their depthwise twins) in every
mode: TF's registered Conv2D gradient computes BOTH dX and dW, which graph mode prunes but eager mode does not
(an eager tape.gradient for dX alone would also compute dW). GEMM uses a GradientTape with ``output_gradients=dy``:
in "function"/"xla" one traced function records the forward and returns the gradient (the unused forward is
pruned by the function runtime, dead code for XLA); in "eager" a persistent tape records the forward ONCE outside
the timed region and each call replays ``tape.gradient`` (like torch's retain_graph); MatMul's gradient honours
the skipped input, so dA alone does not compute dB.

Attention is the composition Keras' MultiHeadAttention core runs (``_compute_attention``) on its
batch×length×heads×head_dim layout ("BLHD"): the query scaled by 1/√D, ``einsum("aecd,abcd->acbe", k, q)``, softmax
(masked above the diagonal when causal), ``einsum("acbe,aecd->abcd", p, v)``; with fewer KV heads, K and V are
repeated over each head group first, as Keras' GroupedQueryAttention does. TensorFlow has no fused attention op.
Batched GEMM is ``tf.linalg.matmul`` on 3-D operands with the transpose flags. A sparse GEMM is
``tf.sparse.sparse_dense_matmul`` with A as a ``tf.SparseTensor`` (COO; layout "COO"), built before timing. int8
GEMM is ``tf.linalg.matmul(..., output_type=tf.int32)`` on int8 operands (BatchMatMulV3); TensorFlow's Conv2D takes
no int8 and its quantized conv (``tf.nn.quantized_conv2d``) takes quint8 with float ranges, so int8 conv is
unsupported.
A recurrent layer is Keras' own layer (``keras.layers.SimpleRNN``/``LSTM``/``GRU(reset_after=True)``, with bias,
return_sequences) called through ``Layer.stateless_call`` with the case's weights as tensors, so the tape
differentiates them like any operand. Keras stores ``kernel`` as input×G·hidden (torch's W_ihᵀ) and orders GRU gates
z, r, h where torch has r, z, n: the weights enter in Keras' layout and their gradients are turned back. Its bias is
one vector for LSTM and SimpleRNN (given b_ih + b_hh, summed once outside the timed region) and the two rows
(input, recurrent) for GRU. Keras runs LSTM and GRU on cuDNN where its own predicate ``cudnn_ok`` allows (a GPU,
bias, the default activations); ``implementation`` records that or its generic loop. XLA cannot compile the cuDNN
op, so mode "xla" asks for the loop (``use_cudnn=False``).

Padding: an explicit padding list sends TF's CPU conv backward to generic kernels (~2.3x slower than oneDNN on
this project's CPU), so "SAME" or "VALID" is used wherever it is exactly equivalent; ``padding_form`` records it.
Option ``conv_padding="explicit"`` forces the explicit list (to measure that penalty).

Whole models (op kind ``model``): ResNet-50 v1.5 and BERT-base built of Keras layers, in ``backends/tf_models.py``.

All-reduce: ``MultiWorkerMirroredStrategy`` over the worker processes (TensorFlow has no launcher: the runner starts
them on one machine, with TF_CONFIG naming every worker at MASTER_ADDR:MASTER_PORT+1+rank; under srun TensorFlow's
own ``SlurmClusterResolver`` finds the nodes), a replica context's ``all_reduce`` of the worker's buffer inside a
tf.function (ring collectives over gRPC on the CPU, NCCL on GPUs); a new buffer, as TensorFlow has no in-place one.
The strategy must exist before the runtime starts, so ``join`` only remembers the ranks and ``configure`` makes it.
Modes eager and xla are refused for it (the strategy runs a tf.function).

Placement: configure() hides the GPUs of a CPU run, so no op needs a device scope (no per-call overhead).
Sync: sync_devices() waits for GPU streams and any async executor; on CPU TF runs ops synchronously by default
(``synchronous_execution`` is recorded in the flags), so results are ready when a call returns.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from backends.base import Backend, DeviceMissing, Placement, RankGroup, Settings, Unsupported, Variant
from suite.models import Model
from suite.ops import AllReduce, Attention, Conv2d, Gemm, Op, Rnn, Spmm
from suite.reference import to_int8

# Logical layout -> TF's native one, per operand role (gradients share their operand's layout).
_NHWC = (0, 2, 3, 1)  # NCHW -> NHWC, for x/dx and y/dy
_HWIO = (2, 3, 1, 0)  # KCRS -> RS(C/g)K, the filter of (grouped) tf.nn.conv2d
_ROLE = {"dx": "x", "dw": "w", "y": "dy"}


def _same_padding(size: int, filt: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """TF's SAME padding of one spatial dim: (before, after, output size)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (filt - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2, out


def padding_form(op: Conv2d) -> str:
    """"VALID", "SAME" where TF's SAME padding equals the spec's exactly, else "explicit"."""
    if not any(op.padding):
        return "VALID"
    top, bottom, left, right = op.padding
    same_h = _same_padding(op.h, op.r, op.stride[0], op.dilation[0])
    same_w = _same_padding(op.w, op.s, op.stride[1], op.dilation[1])
    return "SAME" if same_h == (top, bottom, op.p) and same_w == (left, right, op.q) else "explicit"


class TensorFlowBackend(Backend):
    name = "tensorflow"
    modes = ("function", "eager", "xla")
    int8 = True  # GEMM (see the module docstring)
    layouts = {"gemm": ("row-major",), "conv2d": ("NHWC", "NCHW"), "bgemm": ("row-major",), "attention": ("BLHD",),
               "rnn": ("BTI",), "spmm": ("COO",), "allreduce": ("processes",), "model": ("NHWC",)}
    _group: RankGroup | None = None
    _strategy: Any = None

    def __init__(self, settings: Settings | None = None):
        super().__init__(settings)
        import tensorflow as tf

        self.tf = tf
        # Runtime errors meaning "no kernel for this combination"; converted into Unsupported with TF's message.
        self.kernel_errors = (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)

    def versions(self) -> dict[str, str]:
        info = self.tf.sysconfig.get_build_info()
        out = {"tensorflow": self.tf.__version__}
        out.update({key: str(info[f"{key}_version"]) for key in ("cuda", "cudnn") if f"{key}_version" in info})
        return out

    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if self.tf.config.list_physical_devices("GPU") else ["cpu"]

    def configure(self, settings: Settings) -> dict[str, Any]:
        tf = self.tf
        self.settings = settings
        gpus = tf.config.list_physical_devices("GPU")
        if settings.device == "gpu" and not gpus:
            raise DeviceMissing(self._no_gpu())
        try:  # all of these must precede the runtime's start (the first op or device listing)
            if settings.device == "cpu" and gpus:
                tf.config.set_visible_devices([], "GPU")
            if settings.device == "gpu" and self._group is not None:  # a worker drives its own GPU
                gpus = gpus[self._group.local_rank:self._group.local_rank + 1]
                tf.config.set_visible_devices(gpus, "GPU")
            if settings.device == "gpu":  # grow as needed instead of taking nearly all GPU memory at start
                for gpu in gpus:
                    tf.config.experimental.set_memory_growth(gpu, True)
            if settings.threads:
                tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
                tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
        except RuntimeError as error:
            raise RuntimeError(f"TensorFlow's runtime already started; configure() must come first: {error}") from None
        if self._group is not None:
            self._strategy = self._multi_worker(self._group)
        tf.config.experimental.enable_tensor_float_32_execution(settings.math == "tf32")
        from tensorflow.python.util import _pywrap_util_port  # private, but the only read-back of oneDNN's state

        flags: dict[str, Any] = {
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0 = TF's default
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tensor_float_32_execution": tf.config.experimental.tensor_float_32_execution_enabled(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
            "onednn_enabled": bool(_pywrap_util_port.IsMklEnabled()),
            "synchronous_execution": tf.config.experimental.get_synchronous_execution(),
        }
        if settings.device == "gpu":
            flags["gpu"] = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
            flags["memory_growth"] = tf.config.experimental.get_memory_growth(gpus[0])
        return flags

    def join(self, group: RankGroup) -> dict[str, Any]:
        self._group = group
        self.rank, self.ranks = group.rank, group.ranks
        gpu = self.settings.device == "gpu"
        return {"communication": "NCCL (MultiWorkerMirroredStrategy)" if gpu else
                "ring over gRPC (MultiWorkerMirroredStrategy)"}

    def _multi_worker(self, group: RankGroup) -> Any:
        """The strategy across every worker: TF_CONFIG on one machine, Slurm's own resolver under srun."""
        import json

        tf = self.tf
        experimental = tf.distribute.experimental
        resolver = None
        if group.launcher == "srun":
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=group.port + 1,
                                                                           auto_set_gpu=False)
        else:
            os.environ["TF_CONFIG"] = json.dumps({
                "cluster": {"worker": [f"{group.address}:{group.port + 1 + rank}" for rank in range(group.ranks)]},
                "task": {"type": "worker", "index": group.rank}})
        implementation = (experimental.CommunicationImplementation.NCCL if self.settings.device == "gpu" else
                          experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=experimental.CommunicationOptions(
                implementation=implementation))

    def agree(self, value: float) -> float:
        if self.ranks == 1:
            return value
        if self._agree is None:
            tf, strategy = self.tf, self._strategy

            rank, ranks = self.rank, self.ranks

            def maximum(number):  # ReduceOp has only SUM and MEAN: each worker's number in its own slot, summed
                mine = tf.one_hot(rank, ranks, dtype=tf.float64) * number
                return tf.reduce_max(tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, mine))

            self._agree = tf.function(lambda number: strategy.run(maximum, args=(number,)), autograph=False)
        return float(self._agree(self.tf.constant(value, self.tf.float64)).numpy())

    _agree: Any = None

    def _allreduce(self, op: AllReduce, variant: Variant, args: dict[str, Any]):
        tf, strategy = self.tf, self._strategy
        if strategy is None:
            raise Unsupported("the TensorFlow all-reduce runs across processes: start it with run --ranks R")
        if variant.mode != "function":
            raise Unsupported(f"the TensorFlow all-reduce runs as a tf.function under MultiWorkerMirroredStrategy; "
                              f"mode {variant.mode!r} does not apply")
        buffer = args["x"]

        def reduce():
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, buffer)

        traced = tf.function(lambda: strategy.run(reduce), autograph=False)
        return traced, {"in_place": False}

    def _no_gpu(self) -> str:
        from importlib import metadata

        tf = self.tf
        cpu_only = not tf.test.is_built_with_cuda()
        try:
            metadata.version("tensorflow-cpu")
            dist = "tensorflow-cpu"
        except metadata.PackageNotFoundError:
            dist = "tensorflow"
        build = (f"{dist} {tf.__version__} is a CPU-only build (tf.test.is_built_with_cuda() is False)" if cpu_only
                 else f"{dist} {tf.__version__} sees no GPU (no NVIDIA driver, CUDA libraries not found, or "
                      "CUDA_VISIBLE_DEVICES hides every GPU)")
        remove = "pip uninstall -y tensorflow-cpu && " if dist == "tensorflow-cpu" else ""
        return (f"{build}; install the CUDA build: {remove}pip install 'tensorflow[and-cuda]=={tf.__version__}', "
                "or run tox -e tf-gpu")

    def free_memory_bytes(self) -> int | None:
        """The GPU's total (NVML; TF has no getter) less what TF's allocator holds in tensors now."""
        if self.settings.device != "gpu":
            return None
        if not hasattr(self, "_gpu_total"):
            from suite.gpu_state import open_monitor

            monitor, _ = open_monitor(self.gpu_id())
            self._gpu_total = monitor.memory_total_bytes() if monitor else None
        if self._gpu_total is None:
            return None
        return max(self._gpu_total - self.tf.config.experimental.get_memory_info("GPU:0")["current"], 0)

    def gpu_id(self) -> str | None:
        """GPU:0's CUDA ordinal (its physical device's number) in the visible device list: TensorFlow tells neither
        UUID nor PCI bus id without creating every GPU's device (device_lib)."""
        if self.settings.device != "gpu":
            return None
        from suite.gpu_state import visible_gpu_id

        first = self.tf.config.list_physical_devices("GPU")[0]  # "/physical_device:GPU:<CUDA ordinal>"
        return visible_gpu_id(int(first.name.rsplit(":", 1)[1]))

    def cache_clearer(self, nbytes: int):
        if self.settings.device != "gpu":
            return super().cache_clearer(nbytes)
        tf = self.tf

        def clear() -> Placement:  # a fresh zero fill of nbytes on the GPU, finished before the timed call
            with tf.device("/GPU:0"):  # float32: TF's GPU Fill kernel for int32 writes its output to host memory
                buffer = tf.zeros([nbytes // 4], tf.float32)
            self.sync(buffer)
            where = buffer.backing_device  # where the memory is (.device names where the op ran)
            return Placement(where, tf.DeviceSpec.from_string(where).device_type == "GPU")

        return clear

    def _dtype(self, variant: Variant) -> Any:
        return {"fp32": self.tf.float32, "fp16": self.tf.float16, "bf16": self.tf.bfloat16}[variant.dtype]

    def _perm(self, role: str, op: Op, variant: Variant) -> tuple[int, ...] | None:
        """The transpose from logical to native layout of an operand or output, None when they coincide."""
        role = _ROLE.get(role, role)
        if op.kind == "attention":  # every operand and gradient: B, H, L, D -> B, L, H, D
            return (0, 2, 1, 3)
        if op.kind in ("gemm", "bgemm", "rnn", "spmm", "allreduce") or (variant.layout == "NCHW" and role != "w"):
            return None
        if role == "w" and op.depthwise:  # depthwise_conv2d's filter is R, S, C, K/C
            return (2, 3, 0, 1)
        return _HWIO if role == "w" else _NHWC

    @staticmethod
    def _keras_weight(array: np.ndarray, op: Rnn) -> np.ndarray:
        """torch's G·H × in weight -> Keras' in × G·H kernel, or a G·H bias (GRU gates r, z, n -> z, r, h)."""
        if op.cell == "gru":
            r, z, n = np.split(array, 3)
            array = np.concatenate([z, r, n])
        return array.T

    @staticmethod
    def _torch_weight(array: np.ndarray, op: Rnn) -> np.ndarray:
        """The inverse of _keras_weight, for the gradients."""
        array = array.T
        if op.cell == "gru":
            z, r, n = np.split(array, 3)
            array = np.concatenate([r, z, n])
        return array

    def tensor(self, array: np.ndarray, role: str, op: Op, variant: Variant) -> Any:
        tf = self.tf
        if isinstance(op, Model):  # the canonical arrays as they are: step() loads them into the Keras model
            return array
        if isinstance(op, Rnn) and role.startswith(("w_", "b_")):
            array = self._keras_weight(array, op)
        perm = self._perm(role, op, variant)
        if perm is not None and role == "w" and op.depthwise:  # K = C*m filters, k = c*m + j: (C, m, R, S)
            array = array.reshape(op.c, op.k // op.c, op.r, op.s)
        native = np.ascontiguousarray(array if perm is None else array.transpose(perm))
        with tf.device("/GPU:0" if self.settings.device == "gpu" else "/CPU:0"):
            if variant.dtype == "int8":  # the integers suite.reference multiplies
                return tf.identity(tf.constant(to_int8(native)))
            tensor = tf.identity(tf.cast(tf.constant(native), self._dtype(variant)))
            return tf.sparse.from_dense(tensor) if isinstance(op, Spmm) and role == "x" else tensor

    def _conv(self, op: Conv2d, variant: Variant) -> tuple[dict[str, Any], dict[str, Any]]:
        """pass -> (x, w, dy) -> output(s), through the forward and backprop ops themselves; and the details."""
        raw = self.tf.raw_ops
        nchw = variant.layout == "NCHW"
        if nchw and self.settings.device == "cpu" and variant.mode != "xla":
            # oneDNN runs an NCHW forward, but Conv2DBackpropInput on CPU is NHWC-only: reject every pass alike.
            raise Unsupported("TensorFlow's CPU conv kernels support only NHWC; NCHW runs on GPU or in mode 'xla'")
        form = padding_form(op)
        if self.settings.options.get("conv_padding") == "explicit" and form != "VALID":
            form = "explicit"  # a knob to measure the explicit-padding penalty itself
        spatial = list(op.padding)  # (top, bottom, left, right), as TF's flat explicit_paddings want them
        pads = ([0, 0, 0, 0, *spatial] if nchw else [0, 0, *spatial, 0, 0]) if form == "explicit" else []
        attrs = {"strides": [1, 1, *op.stride] if nchw else [1, *op.stride, 1],
                 "dilations": [1, 1, *op.dilation] if nchw else [1, *op.dilation, 1],
                 "padding": form.upper(), "explicit_paddings": pads, "data_format": "NCHW" if nchw else "NHWC"}
        x_shape = [op.n, op.c, op.h, op.w] if nchw else [op.n, op.h, op.w, op.c]
        if op.depthwise:  # TF's native depthwise kernels, as Keras DepthwiseConv2D uses
            forward, data, weight = (raw.DepthwiseConv2dNative, raw.DepthwiseConv2dNativeBackpropInput,
                                     raw.DepthwiseConv2dNativeBackpropFilter)
            w_shape = [op.r, op.s, op.c, op.k // op.c]
        else:  # groups > 1 follow from the filter's input depth C/g
            forward, data, weight = raw.Conv2D, raw.Conv2DBackpropInput, raw.Conv2DBackpropFilter
            w_shape = [op.r, op.s, op.c // op.groups, op.k]

        def dx(x, w, dy):
            return data(input_sizes=x_shape, filter=w, out_backprop=dy, **attrs)

        def dw(x, w, dy):
            return weight(input=x, filter_sizes=w_shape, out_backprop=dy, **attrs)

        passes = {"forward": lambda x, w, dy: forward(input=x, filter=w, **attrs), "backward_data": dx,
                  "backward_weight": dw, "backward": lambda x, w, dy: (dx(x, w, dy), dw(x, w, dy))}
        return passes, {"padding_form": form, "kernel": "depthwise" if op.depthwise else "conv2d"}

    def _unsupported(self, error: Exception, op: Op, variant: Variant) -> Unsupported:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Unsupported(f"TensorFlow has no kernel for {op.kind} {variant.pass_} {variant.dtype} "
                           f"{variant.layout} in mode {variant.mode!r} on {self.settings.device}: "
                           f"{type(error).__name__}: {message}")

    def _rnn(self, op: Rnn, variant: Variant) -> tuple[Any, str]:
        """Keras' layer as a function of (x, kernel, recurrent_kernel, bias): every step's hidden state; and the
        implementation Keras runs it with, by its own predicate (``cudnn_ok``, as LSTM and GRU decide it)."""
        import keras
        from keras.src import backend as keras_backend

        dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[variant.dtype]
        # The layer's own weights are never used (stateless_call takes the case's): zeros skip the orthogonal
        # initializer's QR, which is slow at DeepBench's sizes and has no bfloat16 kernel.
        common = {"use_bias": True, "return_sequences": True, "dtype": dtype, "kernel_initializer": "zeros",
                  "recurrent_initializer": "zeros"}
        cudnn = {"use_cudnn": "auto" if variant.mode != "xla" else False}  # XLA cannot compile the cuDNN op
        layer = {"rnn_relu": lambda: keras.layers.SimpleRNN(op.hidden, activation="relu", **common),
                 "rnn_tanh": lambda: keras.layers.SimpleRNN(op.hidden, activation="tanh", **common),
                 "lstm": lambda: keras.layers.LSTM(op.hidden, **common, **cudnn),
                 "gru": lambda: keras.layers.GRU(op.hidden, reset_after=True, **common, **cudnn)}[op.cell]()
        layer.build((op.batch, op.timesteps, op.input_size))
        names = [variable.path.rsplit("/", 1)[-1] for variable in layer.trainable_variables]
        assert names == ["kernel", "recurrent_kernel", "bias"], names  # the order stateless_call takes them in
        fixed = [variable.value for variable in layer.non_trainable_variables]  # an unused dropout seed
        cell = layer.cell
        on_cudnn = getattr(layer, "use_cudnn", False) in ("auto", True) and keras_backend.cudnn_ok(  # SimpleRNN: none
            cell.activation, cell.recurrent_activation, layer.unroll, cell.use_bias,
            **({"reset_after": cell.reset_after} if op.cell == "gru" else {}))

        def rnn(x, kernel, recurrent_kernel, bias):
            return layer.stateless_call([kernel, recurrent_kernel, bias], fixed, x)[0]

        return rnn, "cudnn" if on_cudnn else "generic loop"

    def _keras_bias(self, op: Rnn, b_ih: Any, b_hh: Any) -> Any:
        """torch's two biases as the Keras layer's: the GRU's input and recurrent rows, else one vector, their sum."""
        tf = self.tf
        with tf.device("/GPU:0" if self.settings.device == "gpu" else "/CPU:0"):  # beside the operands: no copy
            return tf.stack([b_ih, b_hh]) if op.cell == "gru" else b_ih + b_hh

    def _attention(self, op: Attention, variant: Variant):
        """Keras MultiHeadAttention's core on B, L, H, D tensors: (q, k, v) -> output."""
        tf = self.tf
        with tf.device("/GPU:0" if self.settings.device == "gpu" else "/CPU:0"):  # beside the operands: no copy
            mask = tf.constant(np.tril(np.ones((op.q_len, op.kv_len), dtype=bool))) if op.causal else None  # j <= i

        def attention(q, k, v):
            if op.group > 1:  # Keras GroupedQueryAttention: each KV head repeated for its group of query heads
                k, v = tf.repeat(k, op.group, axis=2), tf.repeat(v, op.group, axis=2)
            scores = tf.einsum("aecd,abcd->acbe", k, q * tf.cast(op.scale, q.dtype))  # B, H, Lq, Lk
            if op.causal:
                scores = tf.where(mask, scores, tf.cast(-np.inf, scores.dtype))
            return tf.einsum("acbe,aecd->abcd", tf.nn.softmax(scores, axis=-1), v)

        return attention

    def step(self, op: Op, variant: Variant, args: dict[str, Any]):
        tf = self.tf
        if isinstance(op, AllReduce):
            return self._allreduce(op, variant, args)
        if isinstance(op, Model):
            from backends.tf_models import model_step

            return model_step(tf, op, variant, args, "/GPU:0" if self.settings.device == "gpu" else "/CPU:0")
        names, wrt_names = op.inputs, op.wrt(variant.pass_)
        if isinstance(op, Rnn):  # the layer's operands: x and its three variables (not differentiated: the bias)
            names, args = ("x", "w_ih", "w_hh", "bias"), {**args, "bias": self._keras_bias(op, args["b_ih"],
                                                                                          args["b_hh"])}
        operands = (*(args[name] for name in names), args.get("dy"))
        errors = self.kernel_errors
        details: dict[str, Any] = {}
        if variant.dtype == "int8" and not isinstance(op, Gemm):
            raise Unsupported(f"TensorFlow has no public int8 × int8 → int32 {op.kind} kernel: Conv2D takes half, "
                              "bfloat16, float, double or int32, and tf.nn.quantized_conv2d takes quint8 with float "
                              "ranges")
        if isinstance(op, Conv2d):
            passes, details = self._conv(op, variant)
            body = passes[variant.pass_]
        else:
            if isinstance(op, Attention):
                forward = self._attention(op, variant)
                details = {"implementation": "einsum + softmax (Keras MultiHeadAttention core)"}
            elif isinstance(op, Rnn):
                forward, implementation = self._rnn(op, variant)
                details = {"implementation": implementation}
            elif isinstance(op, Spmm):
                forward = tf.sparse.sparse_dense_matmul
                details = {"implementation": "tf.sparse.sparse_dense_matmul, A a COO SparseTensor"}
            else:
                out_type = {"output_type": tf.int32} if variant.dtype == "int8" else {}  # int32 accumulation

                def forward(x, w):
                    return tf.linalg.matmul(x, w, transpose_a=op.transpose_a, transpose_b=op.transpose_b,
                                            **out_type)

            def body(*operands):
                *inputs, dy = operands
                if not wrt_names:
                    return forward(*inputs)
                with tf.GradientTape() as tape:
                    wrt = [inputs[names.index(name)] for name in wrt_names]
                    tape.watch(wrt)
                    y = forward(*inputs)
                grads = tape.gradient(y, wrt, output_gradients=dy)
                return tuple(grads) if len(grads) > 1 else grads[0]

        if variant.mode != "eager":  # tensors enter as arguments, not as captured constants
            traced = tf.function(body, jit_compile=variant.mode == "xla", autograph=False)

            def run():
                return traced(*operands)
        elif isinstance(op, Conv2d) or not wrt_names:
            def run():
                return body(*operands)
        else:
            wrt = [args[name] for name in wrt_names]
            dy = args["dy"]
            try:  # record the forward ONCE; each call only replays the backward (torch's retain_graph)
                with tf.GradientTape(persistent=True) as tape:
                    tape.watch(wrt)
                    y = forward(*operands[:-1])
            except errors as error:
                raise self._unsupported(error, op, variant) from None

            def run():
                grads = tape.gradient(y, wrt, output_gradients=dy)
                return tuple(grads) if len(grads) > 1 else grads[0]

        def call():
            try:  # zero-cost unless raised; a missing kernel surfaces on the first call, inside prepare
                return run()
            except errors as error:
                raise self._unsupported(error, op, variant) from None

        return call, details

    def sync(self, out: Any) -> None:
        if self._strategy is not None:  # sync_devices has no remote eager workers: wait for the output itself (on
            if self.settings.device == "gpu":  # the CPU, ops run synchronously: done on return)
                out[:1].numpy()
            return
        self.tf.test.experimental.sync_devices()

    def to_numpy(self, out: Any, name: str, op: Op, variant: Variant) -> np.ndarray:
        array = out.numpy().astype(np.float64)
        if isinstance(op, Model):  # logits, loss, norms: no layout
            return array
        if isinstance(op, Rnn):
            return self._torch_weight(array, op) if name.startswith("dw_") else array
        perm = self._perm(name, op, variant)
        if perm is None:
            return array
        array = array.transpose(np.argsort(perm))
        return array.reshape(op.weight_shape) if _ROLE.get(name, name) == "w" and op.depthwise else array
