"""TensorFlow: tf.function (default), eager, and XLA (tf.function(jit_compile=True)); conv layouts NHWC and NCHW.

Backward: in "function" and "xla" modes one traced function records the forward on a GradientTape and returns
``tape.gradient(y, wrt, output_gradients=dy)``; the forward's output feeds nothing returned, so the function
runtime prunes it (stateless ops unreachable from the outputs are removed) and XLA eliminates it as dead code.
In "eager" mode a persistent tape records the forward ONCE outside the timed region and each call replays
``tape.gradient`` (like torch's retain_graph), so no call runs the forward.

Padding: an explicit padding list sends TF's CPU conv backward to generic kernels (~2.3x slower than oneDNN on
this project's CPU), so "SAME" or "VALID" is used wherever it is exactly equivalent; ``padding_form`` records it.
Option ``conv_padding="explicit"`` forces the explicit list (to measure that penalty).
Placement: configure() hides the GPUs of a CPU run, so no op needs a device scope (no per-call overhead).
Sync: sync_devices() waits for GPU streams and any async executor; on CPU TF runs ops synchronously by default
(``synchronous_execution`` is recorded in the flags), so results are ready when a call returns.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from backends.base import WRT, Backend, Settings, Unsupported, Variant
from suite.ops import Conv2d, Op

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
    layouts = {"gemm": ("row-major",), "conv2d": ("NHWC", "NCHW")}

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
            raise Unsupported("no GPU visible to TensorFlow")
        try:  # all of these must precede the runtime's start (the first op or device listing)
            if settings.device == "cpu" and gpus:
                tf.config.set_visible_devices([], "GPU")
            if settings.threads:
                tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
                tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
        except RuntimeError as error:
            raise RuntimeError(f"TensorFlow's runtime already started; configure() must come first: {error}") from None
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
        return flags

    def _dtype(self, variant: Variant) -> Any:
        return {"fp32": self.tf.float32, "fp16": self.tf.float16, "bf16": self.tf.bfloat16}[variant.dtype]

    def _perm(self, role: str, op: Op, variant: Variant) -> tuple[int, ...] | None:
        """The transpose from logical to native layout of an operand or output, None when they coincide."""
        role = _ROLE.get(role, role)
        if op.kind == "gemm" or (variant.layout == "NCHW" and role != "w"):
            return None
        if role == "w" and op.depthwise:  # depthwise_conv2d's filter is R, S, C, K/C
            return (2, 3, 0, 1)
        return _HWIO if role == "w" else _NHWC

    def tensor(self, array: np.ndarray, role: str, op: Op, variant: Variant) -> Any:
        tf = self.tf
        perm = self._perm(role, op, variant)
        if perm is not None and role == "w" and op.depthwise:  # K = C*m filters, k = c*m + j: (C, m, R, S)
            array = array.reshape(op.c, op.k // op.c, op.r, op.s)
        native = np.ascontiguousarray(array if perm is None else array.transpose(perm))
        with tf.device("/GPU:0" if self.settings.device == "gpu" else "/CPU:0"):
            return tf.identity(tf.cast(tf.constant(native), self._dtype(variant)))

    def _forward(self, op: Op, variant: Variant) -> tuple[Any, dict[str, Any]]:
        tf = self.tf
        if not isinstance(op, Conv2d):
            def gemm(x, w):
                return tf.linalg.matmul(x, w, transpose_a=op.transpose_a, transpose_b=op.transpose_b)

            return gemm, {}
        nchw = variant.layout == "NCHW"
        if nchw and self.settings.device == "cpu" and variant.mode != "xla":
            # oneDNN runs an NCHW forward, but Conv2DBackpropInput on CPU is NHWC-only: reject every pass alike.
            raise Unsupported("TensorFlow's CPU conv kernels support only NHWC; NCHW runs on GPU or in mode 'xla'")
        form = padding_form(op)
        if self.settings.options.get("conv_padding") == "explicit" and form != "VALID":
            form = "explicit"  # a knob to measure the explicit-padding penalty itself
        top, bottom, left, right = op.padding
        spatial = [[top, bottom], [left, right]]
        padding = form if form != "explicit" else ([[0, 0], [0, 0], *spatial] if nchw else [[0, 0], *spatial, [0, 0]])
        fmt = "NCHW" if nchw else "NHWC"
        if op.depthwise:  # TF's native depthwise kernel, as Keras DepthwiseConv2D uses; strides are 4-D here
            strides = [1, 1, *op.stride] if nchw else [1, *op.stride, 1]

            def depthwise(x, w):
                return tf.nn.depthwise_conv2d(x, w, strides, padding, data_format=fmt, dilations=op.dilation)

            return depthwise, {"padding_form": form, "kernel": "depthwise_conv2d"}

        def conv(x, w):  # groups > 1 follow from the filter's input depth C/g
            return tf.nn.conv2d(x, w, op.stride, padding, data_format=fmt, dilations=op.dilation)

        return conv, {"padding_form": form, "kernel": "conv2d"}

    def _unsupported(self, error: Exception, op: Op, variant: Variant) -> Unsupported:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Unsupported(f"TensorFlow has no kernel for {op.kind} {variant.pass_} {variant.dtype} "
                           f"{variant.layout} in mode {variant.mode!r} on {self.settings.device}: "
                           f"{type(error).__name__}: {message}")

    def _gradients(self, forward: Any, wrt_names: tuple[str, ...]) -> Any:
        """(x, w, dy) -> the gradients of ``forward`` w.r.t. ``wrt_names``, one tensor or a tuple."""
        tf = self.tf

        def gradients(x, w, dy):
            with tf.GradientTape() as tape:
                wrt = [{"x": x, "w": w}[name] for name in wrt_names]
                tape.watch(wrt)
                y = forward(x, w)
            grads = tape.gradient(y, wrt, output_gradients=dy)
            return tuple(grads) if len(grads) > 1 else grads[0]

        return gradients

    def step(self, op: Op, variant: Variant, args: dict[str, Any]):
        tf = self.tf
        forward, details = self._forward(op, variant)
        x, w, dy = args["x"], args["w"], args["dy"]
        wrt_names = WRT.get(variant.pass_, ())
        errors = self.kernel_errors

        if variant.mode != "eager":  # tensors enter as arguments, not as captured constants
            body = self._gradients(forward, wrt_names) if wrt_names else (lambda x, w, dy: forward(x, w))
            traced = tf.function(body, jit_compile=variant.mode == "xla", autograph=False)

            def run():
                return traced(x, w, dy)
        elif wrt_names:
            wrt = [args[name] for name in wrt_names]
            try:  # record the forward ONCE; each call only replays the backward (torch's retain_graph)
                with tf.GradientTape(persistent=True) as tape:
                    tape.watch(wrt)
                    y = forward(x, w)
            except errors as error:
                raise self._unsupported(error, op, variant) from None

            def run():
                grads = tape.gradient(y, wrt, output_gradients=dy)
                return tuple(grads) if len(grads) > 1 else grads[0]
        else:
            def run():
                return forward(x, w)

        def call():
            try:  # zero-cost unless raised; a missing kernel surfaces on the first call, inside prepare
                return run()
            except errors as error:
                raise self._unsupported(error, op, variant) from None

        return call, details

    def sync(self, out: Any) -> None:
        self.tf.test.experimental.sync_devices()

    def to_numpy(self, out: Any, name: str, op: Op, variant: Variant) -> np.ndarray:
        array = out.numpy().astype(np.float64)
        perm = self._perm(name, op, variant)
        if perm is None:
            return array
        array = array.transpose(np.argsort(perm))
        return array.reshape(op.weight_shape) if _ROLE.get(name, name) == "w" and op.depthwise else array
