"""Cost accounting: parameters and multiply-accumulates (MACs) per layer, as the papers count them.

`profile` runs one image through the model and records what every leaf layer saw. MACs are
those of convolutions (standard, depthwise, pointwise, squeeze-excite's 1x1s) and linear layers;
batch norm, activations, pooling, the squeeze-excite scaling and residual adds are left out, as
in the MobileNet papers. Parameters are the trainable arrays, batch norm's affine weights
included and its running statistics not.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .layers import Conv2d, DepthwiseConv2d, Linear, PointwiseConv2d, no_grad


class LayerCost(NamedTuple):
    name: str  # state-dict prefix, e.g. "features.2.conv.1.0"
    type: str
    output_shape: tuple  # one image's: (C, H, W) or (features,)
    params: int
    macs: int


def layer_macs(module, in_shape, out_shape):
    """Multiply-accumulates of one image through a leaf layer, from its input and output shapes:
    Conv2d C_out*C_in*K*K*Ho*Wo, depthwise C*K*K*Ho*Wo, pointwise C_out*C_in*H*W, Linear
    in*out; 0 for every other layer. Biases add no multiplies and are not counted."""
    w = module.params.get("weight")
    if isinstance(module, Conv2d):
        C_out, C_in, K, _ = w.shape
        return C_out * C_in * K * K * out_shape[2] * out_shape[3]
    if isinstance(module, DepthwiseConv2d):
        C, _, K, _ = w.shape
        return C * K * K * out_shape[2] * out_shape[3]
    if isinstance(module, PointwiseConv2d):
        C_out, C_in = w.shape[:2]
        return C_out * C_in * in_shape[2] * in_shape[3]
    if isinstance(module, Linear):
        return w.shape[0] * w.shape[1]
    return 0


@dataclass
class Profile:
    """A profile's rows (one LayerCost per leaf-layer call, in execution order) and totals."""

    rows: list
    input_size: tuple
    params: int = field(init=False)
    macs: int = field(init=False)

    def __post_init__(self):
        self.params = sum(row.params for row in self.rows)
        self.macs = sum(row.macs for row in self.rows)

    def format_table(self):
        """The per-layer table, then a line of totals (MACs also in millions, 2 decimals)."""
        width = max([len("layer")] + [len(row.name) for row in self.rows])
        header = f"{'layer':<{width}} {'type':<16} {'output':<14} {'params':>11} {'MACs':>13}"
        lines = [header, "-" * len(header)]
        for row in self.rows:
            shape = "x".join(str(d) for d in row.output_shape)
            lines.append(f"{row.name:<{width}} {row.type:<16} {shape:<14} {row.params:>11,} "
                         f"{row.macs:>13,}")
        lines.append("-" * len(header))
        size = "x".join(str(d) for d in self.input_size)
        lines.append(f"total at {size}: {self.params:,} params, {self.macs:,} MACs "
                     f"({self.macs / 1e6:.2f} M)")
        return "\n".join(lines)

    def __str__(self):
        return self.format_table()


def profile(model, input_size=(3, 224, 224)):
    """Per-layer parameters and MACs of model on one image of shape input_size (C, H, W).

    Runs a batch-1 forward in eval mode under no_grad() with each leaf layer's forward
    temporarily wrapped to record its input and output shapes; the model's mode, running
    statistics and methods are as before afterwards. Returns a Profile.
    """
    if not (isinstance(input_size, (tuple, list)) and len(input_size) == 3
            and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
                    for n in input_size)):
        raise ValueError(f"profile: expected input_size as one image's (C, H, W), three "
                         f"integers >= 1, got {input_size!r}")
    params = [p for _, p, _ in model.named_parameters()]
    dtype = params[0].dtype if params else np.float32
    leaves = [(name, m) for name, m in model.named_modules() if not m._modules]
    rows = []

    def wrap(name, module):
        forward = module.forward

        def recording_forward(x):
            out = forward(x)
            rows.append(LayerCost(name, type(module).__name__, tuple(out.shape[1:]),
                                  sum(p.size for p in module.params.values()),
                                  layer_macs(module, x.shape, out.shape)))
            return out
        return recording_forward

    modes = [(m, m.training) for _, m in model.named_modules()]
    # Whatever instance-level forward a leaf already had (usually none) is put back afterwards.
    shadowed = [(m, vars(m).get("forward")) for _, m in leaves]
    try:
        for name, module in leaves:
            # An instance attribute shadows the class's method until it is deleted again.
            module.forward = wrap(name, module)
        model.eval()
        with no_grad():
            model.forward(np.zeros((1,) + tuple(input_size), dtype=dtype))
    finally:
        for module, previous in shadowed:
            del module.forward
            if previous is not None:
                module.forward = previous
        for module, training in modes:
            module.training = training
    return Profile(rows, tuple(input_size))
