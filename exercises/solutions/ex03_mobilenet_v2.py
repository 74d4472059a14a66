"""Reference solution of exercise 03 (notebooks/03_mobilenet_v2.ipynb): ReLU6 and the inverted
residual block.

1. relu6_forward / relu6_backward: the op, as `minimobile.ops` writes its activations.
2. InvertedResidual: V2's block (Sandler et al. 2018), built from the library's layers, with
   its forward and its backward written out: walk the layers yourself, in reverse, and add
   the skip's gradient (the check refuses a backward that calls self.conv.backward).
   Exercise 06 trains a whole MobileNetV2 made of your blocks, so it needs this one.

Check: `python -m pytest exercises -m ex03` (this exercise needs no other). Signatures are the
library's (`minimobile.ops.relu6_*`, `minimobile.blocks.InvertedResidual`): keep them, so your
block drops into the library's model.
"""

import numpy as np

from minimobile.blocks import ConvBNActivation  # noqa: F401: the pieces of your block
from minimobile.layers import BatchNorm2d, Module, PointwiseConv2d, ReLU6, Sequential  # noqa: F401
from minimobile.ops import ActivationCache  # noqa: F401


def relu6_forward(x):
    """out = min(max(x, 0), 6), elementwise, in x's dtype. Return (out, ActivationCache(x))."""
    out = np.minimum(np.maximum(x, 0), 6).astype(x.dtype)
    return out, ActivationCache(x)


def relu6_backward(dout, cache):
    """Returns dx: dout where 0 < x < 6, else 0 (PyTorch's choice at the kinks x = 0 and 6)."""
    x = cache.x
    return (dout * ((x > 0) & (x < 6))).astype(x.dtype)


class InvertedResidual(Module):
    """V2's block: 1x1 expand to hidden = int(round(in_channels * expand_ratio)) + BN + ReLU6
    (left out when expand_ratio == 1), 3x3 depthwise at `stride` + BN + ReLU6, then a linear
    1x1 projection to out_channels + BN (no activation: the "linear bottleneck").

    Hold the layers in `self.conv = Sequential(...)`, in that order, so the state dict's names
    are torchvision's (conv.0.0.weight, ...): ConvBNActivation(in, out, kernel_size, stride,
    groups=..., activation=..., bn_eps=..., bn_momentum=..., rng=rng, dtype=dtype) makes a
    conv + BN + activation, then PointwiseConv2d and BatchNorm2d for the projection. Pass every
    argument on (activation, bn_eps, bn_momentum, rng, dtype): the check changes each of them.
    Set `self.use_res_connect`: out = x + conv(x) only when the shapes allow it.
    """

    def __init__(self, in_channels, out_channels, stride, expand_ratio, activation=ReLU6,
                 bn_eps=1e-5, bn_momentum=0.1, rng=None, dtype=np.float32):
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)
        hidden = int(round(in_channels * expand_ratio))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.expand_ratio = expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(in_channels, hidden, 1, activation=activation, **bn))
        layers += [
            ConvBNActivation(hidden, hidden, 3, stride, groups=hidden, activation=activation,
                             **bn),
            PointwiseConv2d(hidden, out_channels, rng=rng, dtype=dtype),
            BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum, dtype=dtype),
        ]
        self.conv = Sequential(*layers)

    def forward(self, x):
        out = x
        for layer in self.conv:  # expand, depthwise, project, batch norm
            out = layer.forward(out)
        return x + out if self.use_res_connect else out

    def backward(self, dout):
        """Returns dx, and leaves every layer's parameter gradients in its .grads. Written out:
        each child of self.conv's backward in turn (not self.conv.backward)."""
        dx = dout
        for layer in reversed(list(self.conv)):  # each layer's backward fills its .grads
            dx = layer.backward(dx)
        if self.use_res_connect:
            dx = dx + dout  # the skip hands dout to x unchanged; the two paths add
        return dx
