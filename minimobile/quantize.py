"""Post-training int8 quantisation: per-channel weights, per-tensor activations, integer convs.

A real value r is stored as an int8 q with r ~ s * q for a scale s (symmetric: no zero point,
q in -127..127). Weights get one scale per output channel, s_w[o] = max |w[o]| / 127, because
channels of a folded conv differ in range by orders of magnitude. Each quantised conv's input
gets one scale per tensor, s_x = max |x| / 127, with max |x| measured on a few hundred training
images run through the float network (calibration). A pointwise or depthwise conv then runs in
integers, as an int8 engine does:

    acc[o] = sum_i q_w[o, i] * q_x[i] + q_b[o]    (int8 products, int32 sum, q_b = b / (s_x s_w[o]))
    out[o] = acc[o] * s_x * s_w[o]                (back to float for the activation)

The stem conv and the classifier stay in float32 (a few percent of the multiply-adds: the
report gives the share that runs in int8); activations, pooling and skip additions run in
float between the integer convs. Batch norms are
folded first (`minimobile.deploy.fuse`). The kernels are in `minimobile.kernels.int8`, and
run on the rung that `MINIMOBILE_KERNELS` or `minimobile.kernels.use` picks, as every op does.

`minimobile quantize CHECKPOINT --data PATH` (or `python -m minimobile.quantize ...`) reports
accuracy and weight size before and after; `notebooks/07_deploy.ipynb` walks through it.
"""

import sys
from dataclasses import dataclass

import numpy as np

from . import deploy, kernels
from .data import normalize
from .kernels import int8
from .kernels.int8 import QMAX
from .layers import DepthwiseConv2d, Module, PointwiseConv2d, no_grad


def quantize_per_channel(w):
    """(q, scale): w (C_out, ...) float -> q int8 of w's shape and scale (C_out,) float32 with
    w[o] ~ scale[o] * q[o]. An all-zero channel gets scale 1 (any scale represents it)."""
    C = w.shape[0]
    max_abs = np.abs(w.astype(np.float64)).reshape(C, -1).max(axis=1)
    scale = np.where(max_abs > 0, max_abs / QMAX, 1.0)
    q = np.clip(np.rint(w / scale.reshape((C,) + (1,) * (w.ndim - 1))), -QMAX, QMAX)
    return q.astype(np.int8), scale.astype(np.float32)


def tensor_scale(max_abs):
    """The per-tensor scale for values in [-max_abs, max_abs] (1 if they were all 0)."""
    if not (np.isfinite(max_abs) and max_abs >= 0):
        raise ValueError(f"tensor_scale: expected a finite max_abs >= 0, got {max_abs!r} (NaN "
                         "or infinite calibration images?)")
    return float(max_abs) / QMAX if max_abs > 0 else 1.0


def quantize_tensor(x, scale):
    """x float (any shape) -> int8 of x's shape, x ~ scale * q."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"quantize_tensor: expected a finite scale > 0, got {scale!r}")
    out = np.empty(x.shape, np.int8)
    kernels.pick(int8, "quantize")(out.reshape(-1), np.ascontiguousarray(x).reshape(-1),
                                   1.0 / scale)
    return out


class _QuantizedConv(Module):
    """Shared part: int8 weights and int32 bias as buffers (they are not trained), the input's
    scale, and the per-channel factor s_x * s_w that turns int32 sums back into floats."""

    def __init__(self, conv, input_scale):
        super().__init__()
        self.training = False  # born in eval mode: it has no other
        w, b = conv.params["weight"], conv.params.get("bias")
        if b is None:
            b = np.zeros(w.shape[0], w.dtype)
        q, w_scale = quantize_per_channel(w)
        out_scale = input_scale * w_scale.astype(np.float64)  # (C_out,)
        self.input_scale = input_scale
        self.dtype = w.dtype
        self.buffers["weight_int8"] = q
        self.buffers["weight_scale"] = w_scale
        # Saturate rather than wrap: a channel whose weights are all but 0 (a folded batch norm
        # with gamma near 0) has a tiny scale, and its bias over that scale may pass 2^31.
        limit = np.iinfo(np.int32).max
        self.buffers["bias_int32"] = np.clip(np.rint(b / out_scale), -limit, limit).astype(
            np.int32)
        self.buffers["output_scale"] = out_scale.astype(np.float32)

    def _check_eval_mode(self):
        # In training mode the layers before hand over deferred maps (a ScaledMap) and dropout
        # acts: neither means anything to an int8 conv, and numpy's error would name neither.
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is for inference only: the int8 model "
                               "runs in eval mode (call model.eval() after model.train())")

    def _dequantize(self, acc):
        N, C = acc.shape[:2]
        out = np.empty(acc.shape, self.dtype)
        kernels.pick(int8, "dequantize")(out.reshape(N, C, -1), acc.reshape(N, C, -1),
                                         self.buffers["output_scale"])
        return out

    def backward(self, dout):
        raise RuntimeError(f"{type(self).__name__} is for inference only: rounding has no "
                           "useful gradient (quantisation-aware training would be next)")


class QuantizedPointwiseConv2d(_QuantizedConv):
    """A 1x1 conv in int8: out = s_x s_w[o] (q_w @ q_x + q_b)[o]."""

    def forward(self, x):
        self._check_eval_mode()
        N, C, H, W = x.shape
        q = self.buffers["weight_int8"]
        x_q = quantize_tensor(x, self.input_scale).reshape(N, C, H * W)
        acc = np.empty((N, q.shape[0], H * W), np.int32)
        kernels.pick(int8, "pointwise_int8")(acc, x_q, q.reshape(q.shape[0], C),
                                             self.buffers["bias_int32"])
        return self._dequantize(acc).reshape(N, q.shape[0], H, W)


class QuantizedDepthwiseConv2d(_QuantizedConv):
    """A depthwise conv in int8, same stride and padding as the float one."""

    def __init__(self, conv, input_scale):
        super().__init__(conv, input_scale)
        self.stride, self.padding = conv.stride, conv.padding

    def forward(self, x):
        self._check_eval_mode()
        N, C, H, W = x.shape
        q = self.buffers["weight_int8"]  # (C, 1, K, K)
        K = q.shape[2]
        Ho = (H + 2 * self.padding - K) // self.stride + 1
        Wo = (W + 2 * self.padding - K) // self.stride + 1
        acc = np.empty((N, C, Ho, Wo), np.int32)
        kernels.pick(int8, "depthwise_int8")(acc, quantize_tensor(x, self.input_scale),
                                             q.reshape(C, K, K), self.buffers["bias_int32"],
                                             self.stride, self.padding)
        return self._dequantize(acc)


QUANTIZABLE = (PointwiseConv2d, DepthwiseConv2d)


def _targets(model):
    """(parent, child name, path, conv) for every pointwise and depthwise conv of model."""
    found = []
    for path, parent in model.named_modules():
        for name, child in parent._modules.items():
            if isinstance(child, QUANTIZABLE):
                found.append((parent, name, f"{path}.{name}" if path else name, child))
    return found


def calibrate(model, x, batch_size=128):
    """{path: max |input|} of every pointwise and depthwise conv of `model`, over the float
    images x (N, 3, H, W), run in eval mode in batches."""
    seen = {}
    originals = []
    for _, _, path, conv in _targets(model):
        def observe(inp, conv=conv, path=path, forward=conv.forward):
            seen[path] = max(seen.get(path, 0.0), float(np.abs(inp).max()))
            return forward(inp)
        conv.forward = observe  # an instance attribute shadows the method while we watch
        originals.append(conv)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(x), batch_size):
                model.forward(x[start:start + batch_size])
    finally:
        for conv in originals:
            del conv.forward
        model.train(was_training)
    return seen


def quantize(model, x_calibration, batch_size=128):
    """An int8 copy of `model`: BN folded (deploy.fuse), then every pointwise and depthwise conv
    replaced by its quantised version, with input scales calibrated on x_calibration (float
    images as the model takes them, e.g. data.normalize of a few hundred training images).
    ValueError if the model holds NaN or infinite weights, or x_calibration is empty."""
    bad = [f"{path}.{name}" if path else name for path, module in model.named_modules()
           for name, value in list(module.params.items()) + list(module.buffers.items())
           if value.dtype.kind == "f" and not np.isfinite(value).all()]
    if bad:
        raise ValueError(f"quantize: the model holds NaN or infinite weights ({', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''}); quantise a checkpoint from before "
                         "the run diverged")
    x_calibration = np.asarray(x_calibration)
    if x_calibration.ndim != 4 or x_calibration.dtype.kind != "f":
        raise ValueError(f"quantize: expected normalised float images (N, 3, H, W) to calibrate "
                         f"on (data.normalize of uint8 images), got {x_calibration.dtype} of "
                         f"shape {x_calibration.shape}")
    if len(x_calibration) == 0:
        raise ValueError("quantize: expected at least one calibration image, got none")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"quantize: expected a batch_size that is an integer >= 1, got "
                         f"{batch_size!r}")
    fused = deploy.fuse(model)
    max_abs = calibrate(fused, x_calibration, batch_size)
    for parent, name, path, conv in _targets(fused):
        kind = QuantizedDepthwiseConv2d if isinstance(conv, DepthwiseConv2d) \
            else QuantizedPointwiseConv2d
        setattr(parent, name, kind(conv, tensor_scale(max_abs[path])))
    return fused.eval()


def weight_bytes(model):
    """Bytes of what inference needs: parameters and buffers, without the step counter
    num_batches_tracked (for the int8 model: int8 weights, int32 biases, float scales)."""
    total = 0
    for path, module in model.named_modules():
        for name, value in list(module.params.items()) + list(module.buffers.items()):
            if name != "num_batches_tracked":
                total += value.nbytes
    return total


@dataclass
class QuantizationReport:
    float_accuracy: float
    int8_accuracy: float
    float_weight_bytes: int  # the model as trained (parameters and BN statistics)
    fused_weight_bytes: int  # BN folded, still float
    int8_weight_bytes: int
    calibration_images: int
    test_images: int
    int8_mac_fraction: float  # share of the multiply-adds done by the int8 convs

    def __str__(self):
        drop = 100 * (self.float_accuracy - self.int8_accuracy)
        return "\n".join([
            f"calibration on {self.calibration_images} training images, "
            f"test on {self.test_images} test images",
            f"accuracy   float32 {self.float_accuracy:.4f}   int8 {self.int8_accuracy:.4f}   "
            f"drop {drop:.2f} points",
            f"weights    float32 {self.float_weight_bytes:,} B   float32 fused "
            f"{self.fused_weight_bytes:,} B   int8 {self.int8_weight_bytes:,} B "
            f"({self.float_weight_bytes / self.int8_weight_bytes:.2f}x smaller)",
            f"multiply-adds in int8: {100 * self.int8_mac_fraction:.1f} % (the stem conv and "
            f"the classifier stay float32)",
        ])


def calibration_images(x_train, count=512, seed=0):
    """`count` training images (uint8) drawn without replacement by default_rng(seed)."""
    rng = np.random.default_rng(seed)
    return x_train[rng.choice(len(x_train), size=min(count, len(x_train)), replace=False)]


def report(model, x_calibration, x_test, y_test, batch_size=256, progress=False):
    """Quantise `model` and measure it: QuantizationReport with accuracy before and after on
    the uint8 test images, and weight bytes. x_calibration: uint8 images, normalised here."""
    from .cost import profile
    from .train import evaluate  # the trainer's evaluation: eval mode, batched, no caches
    if np.asarray(x_calibration).dtype != np.uint8:
        # normalize() would take float images too, and normalise them a second time:
        # calibration on nearly constant images, and a wrong report without an error.
        raise ValueError(f"report: expected uint8 calibration images, as stored (they are "
                         f"normalised here), got {np.asarray(x_calibration).dtype}")
    dtype = next(p for _, p, _ in model.named_parameters()).dtype
    int8_model = quantize(model, normalize(x_calibration, dtype=dtype))
    before = evaluate(model, x_test, y_test, batch_size, progress=progress).accuracy
    after = evaluate(int8_model, x_test, y_test, batch_size, progress=progress).accuracy
    rows = profile(model, x_test.shape[1:]).rows
    int8_macs = sum(row.macs for row in rows if row.type in ("PointwiseConv2d",
                                                              "DepthwiseConv2d"))
    return QuantizationReport(before, after, weight_bytes(model),
                              weight_bytes(deploy.fuse(model)), weight_bytes(int8_model),
                              len(x_calibration), len(y_test),
                              int8_macs / sum(row.macs for row in rows))


def main(argv=None):
    """`python -m minimobile.quantize CHECKPOINT ...`: the same as `minimobile quantize`."""
    from .cli import main as cli_main
    return cli_main(["quantize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
