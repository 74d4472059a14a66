"""ONNX export: a minimobile network as an ONNX graph that ONNX Runtime (or any other engine) runs.

The graph is written node by node with `onnx.helper`, walking the model's modules: each layer
maps to one ONNX operator (Conv, BatchNormalization, Relu, Clip for ReLU6, HardSwish,
HardSigmoid, GlobalAveragePool, Flatten, Gemm), a skip connection to Add and the squeeze-excite
gate to Mul. Weights keep PyTorch's layouts, which are ONNX's too, so they are copied as they
are. By default the model is fused first (`minimobile.deploy.fuse`), so the graph has no batch
norm left; `fuse=False` keeps them as BatchNormalization nodes. The batch size is a symbolic
dimension "N". Needs the `onnx` package: `pip install -e ".[onnx]"`.
"""

from pathlib import Path

import numpy as np

from .blocks import Bneck, DepthwiseSeparable, InvertedResidual
from .data import MAX_RESOLUTION, MIN_RESOLUTION
from .layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, Flatten, GlobalAvgPool2d,
                     Hardsigmoid, Hardswish, Identity, Linear, PointwiseConv2d, ReLU, ReLU6,
                     Sequential, SqueezeExcitation)
from .models import MobileNet

OPSET = 17  # HardSwish needs 14; 17 is widely supported (ONNX Runtime 1.13 and later)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class _GraphBuilder:
    """Collects nodes and initializers; every emit method takes the input's name and returns the
    output's. Names follow the module paths, so a node in a viewer points back to its layer."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype, self.nodes, self.initializers = onnx, dtype, [], []
        self._used = set()

    def name(self, base):
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def constant(self, base, array):
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array),
                                                                   name))
        return name

    def node(self, op_type, inputs, base, **attributes):
        out = self.name(base)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out,
                                                     **attributes))
        return out

    # -- modules -----------------------------------------------------------------------------

    def emit(self, module, x, path):
        for kinds, method in self._EMITTERS:
            if isinstance(module, kinds):
                return method(self, module, x, path or "model")
        raise ValueError(f"onnx_export: expected a minimobile layer or block, got "
                         f"{type(module).__name__} at {path or 'the top'}")

    def _children(self, module, x, path):
        for name, child in module._modules.items():
            x = self.emit(child, x, f"{path}.{name}" if path != "model" else name)
        return x

    def _mobilenet(self, m, x, path):
        x = self.emit(m.features, x, "features")
        x = self.emit(m.avgpool, x, "avgpool")
        x = self.emit(m.flatten, x, "flatten")
        return self.emit(m.classifier, x, "classifier")

    def _residual(self, m, x, path):
        name = "conv" if isinstance(m, InvertedResidual) else "block"  # torchvision's names
        out = self.emit(m._modules[name], x, f"{path}.{name}")
        return self.node("Add", [x, out], f"{path}.add") if m.use_res_connect else out

    def _conv(self, m, x, path):
        w = m.params["weight"]
        C_out, _, K, _ = w.shape
        inputs = [x, self.constant(f"{path}.weight", w)]
        if "bias" in m.params:
            inputs.append(self.constant(f"{path}.bias", m.params["bias"]))
        stride = getattr(m, "stride", 1)
        pad = getattr(m, "padding", 0)
        group = C_out if isinstance(m, DepthwiseConv2d) else 1
        return self.node("Conv", inputs, path, kernel_shape=[K, K], strides=[stride, stride],
                         pads=[pad, pad, pad, pad], group=group)

    def _batchnorm(self, m, x, path):
        p, b = m.params, m.buffers
        inputs = [x] + [self.constant(f"{path}.{key}", a) for key, a in (
            ("weight", p["weight"]), ("bias", p["bias"]), ("running_mean", b["running_mean"]),
            ("running_var", b["running_var"]))]
        return self.node("BatchNormalization", inputs, path, epsilon=float(m.eps))

    def _relu6(self, m, x, path):
        dtype = self.dtype
        low = self.constant(f"{path}.min", np.array(0, dtype))
        high = self.constant(f"{path}.max", np.array(6, dtype))
        return self.node("Clip", [x, low, high], path)

    def _squeeze_excitation(self, m, x, path):
        s = self.emit(m.avgpool, x, f"{path}.avgpool")
        s = self.emit(m.fc1, s, f"{path}.fc1")
        s = self.emit(m.activation, s, f"{path}.activation")
        s = self.emit(m.fc2, s, f"{path}.fc2")
        s = self.emit(m.scale_activation, s, f"{path}.scale_activation")
        return self.node("Mul", [x, s], f"{path}.scale")

    def _linear(self, m, x, path):
        inputs = [x, self.constant(f"{path}.weight", m.params["weight"])]
        if "bias" in m.params:
            inputs.append(self.constant(f"{path}.bias", m.params["bias"]))
        return self.node("Gemm", inputs, path, transB=1)

    _EMITTERS = [
        (MobileNet, _mobilenet),
        ((InvertedResidual, Bneck), _residual),
        ((Sequential, DepthwiseSeparable), _children),
        ((Conv2d, DepthwiseConv2d, PointwiseConv2d), _conv),
        (BatchNorm2d, _batchnorm),
        (ReLU, lambda self, m, x, path: self.node("Relu", [x], path)),
        (ReLU6, _relu6),
        (Hardswish, lambda self, m, x, path: self.node("HardSwish", [x], path)),
        # ONNX's HardSigmoid defaults to alpha 0.2; PyTorch's (and ours) is relu6(x + 3) / 6.
        (Hardsigmoid, lambda self, m, x, path: self.node("HardSigmoid", [x], path,
                                                         alpha=1.0 / 6.0, beta=0.5)),
        (SqueezeExcitation, _squeeze_excitation),
        (GlobalAvgPool2d, lambda self, m, x, path: self.node("GlobalAveragePool", [x], path)),
        (Flatten, lambda self, m, x, path: self.node("Flatten", [x], path, axis=1)),
        (Linear, _linear),
        ((Dropout, Identity), lambda self, m, x, path: x),  # the identity at inference
    ]


def _import_onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install -e \".[onnx]\"") \
            from None
    return onnx


def _model_dtype(model):
    for _, param, _ in model.named_parameters():
        return param.dtype
    return np.dtype(np.float32)


def to_onnx(model, resolution=None, fuse=True, opset=OPSET):
    """The ONNX ModelProto of `model` (eval-mode semantics), checked by onnx.checker.

    Input "input" (N, 3, R, R) with R = resolution (default 32 for a CIFAR model, else 224) and
    N symbolic; output "logits" (N, num_classes). fuse=True folds every batch norm first.
    """
    onnx = _import_onnx()
    from . import deploy
    if resolution is None:
        resolution = 32 if getattr(model, "cifar", False) else 224
    if not (isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool)
            and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION):
        raise ValueError(f"to_onnx: expected resolution None or an integer from "
                         f"{MIN_RESOLUTION} to {MAX_RESOLUTION}, got {resolution!r}")
    if fuse:
        model = deploy.fuse(model)
    dtype = _model_dtype(model)
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    builder = _GraphBuilder(onnx, dtype)
    builder.emit(model, INPUT_NAME, "")
    # The last node's output is renamed to the graph's output name (an Identity would do too,
    # but one node fewer is the point of the exercise).
    builder.nodes[-1].output[0] = OUTPUT_NAME
    num_classes = model.classifier[-1].params["weight"].shape[0] \
        if isinstance(model, MobileNet) else None
    graph = onnx.helper.make_graph(
        builder.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info(INPUT_NAME, elem_type,
                                            ["N", 3, resolution, resolution])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, elem_type, ["N", num_classes])],
        builder.initializers)
    proto = onnx.helper.make_model(graph, producer_name="minimobile",
                                   opset_imports=[onnx.helper.make_opsetid("", opset)])
    proto.ir_version = min(proto.ir_version, 8)  # readable by ONNX Runtime releases since 1.13
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _check_finite(model):
    bad = [f"{path}.{name}" if path else name for path, module in model.named_modules()
           for name, value in list(module.params.items()) + list(module.buffers.items())
           if value.dtype.kind == "f" and not np.isfinite(value).all()]
    if bad:
        raise ValueError(f"onnx_export: the model holds NaN or infinite weights "
                         f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); export a "
                         "checkpoint from before the run diverged")


def export(model, path, resolution=None, fuse=True, opset=OPSET):
    """Write `model` as an ONNX file at `path` (see to_onnx), atomically; returns the path.
    A model with NaN or infinite weights is refused (ValueError): its graph would load and
    run, and answer NaN."""
    from .checkpoint import atomic_open
    _check_finite(model)
    proto = to_onnx(model, resolution, fuse, opset)
    path = Path(path)
    with atomic_open(path) as f:  # a full disk or Ctrl-C never leaves half a graph behind
        f.write(proto.SerializeToString())
    return path


def export_checkpoint(checkpoint_path, path, resolution=None, fuse=True, opset=OPSET):
    """Export the network saved in a trainer checkpoint (best.npz, last.npz) to `path`."""
    from .train import model_from_checkpoint
    return export(model_from_checkpoint(checkpoint_path)[1], path, resolution, fuse, opset)
