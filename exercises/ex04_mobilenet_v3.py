"""Exercise 04, with notebooks/04_mobilenet_v3.ipynb: V3's activations, squeeze-excite and the
bneck block (Howard et al. 2019).

1. hardswish_forward / _backward and hardsigmoid_forward / _backward.
2. SqueezeExcitation.forward / .backward: a per-channel gate computed from the input itself, so
   the input gets a gradient along two paths.
3. Bneck: V3's block from one row of the paper's table, using your SqueezeExcitation (from this
   file: do 2 first), with its backward written out (walk the layers yourself, in reverse, and
   add the skip's gradient; the check refuses a backward that calls self.block.backward).

Check: `python -m pytest exercises -m ex04` (this exercise needs no other). Signatures are the
library's (`minimobile.ops`, `minimobile.layers.SqueezeExcitation`, `minimobile.blocks.Bneck`):
keep them.
"""

import numpy as np

from minimobile.blocks import ACTIVATIONS, ConvBNActivation, make_divisible  # noqa: F401
from minimobile.layers import (GlobalAvgPool2d, Hardsigmoid, Module, PointwiseConv2d, ReLU,
                               Sequential, _rng)
from minimobile.ops import ActivationCache  # noqa: F401


def hardswish_forward(x):
    """out = x * relu6(x + 3) / 6, in x's dtype. Return (out, ActivationCache(x))."""
    raise NotImplementedError("ex04: implement hardswish_forward")


def hardswish_backward(dout, cache):
    """Returns dx: 0 below -3, dout * (x/3 + 1/2) on the closed [-3, 3], dout above 3."""
    raise NotImplementedError("ex04: implement hardswish_backward")


def hardsigmoid_forward(x):
    """out = relu6(x + 3) / 6, in x's dtype. Return (out, ActivationCache(x))."""
    raise NotImplementedError("ex04: implement hardsigmoid_forward")


def hardsigmoid_backward(dout, cache):
    """Returns dx: dout / 6 on the open (-3, 3), else 0."""
    raise NotImplementedError("ex04: implement hardsigmoid_backward")


class SqueezeExcitation(Module):
    """out = x * s, with the gate s = hardsigmoid(fc2(relu(fc1(avgpool(x))))) of shape
    (N, C, 1, 1). The layers are given (torchvision's names); write forward and backward.
    In forward keep what backward needs with self._keep(...), and get it back in backward with
    self._take(); call each child's forward and backward (they keep their own caches).
    """

    def __init__(self, input_channels, squeeze_channels, rng=None, dtype=np.float32):
        super().__init__()
        rng = _rng(rng)
        self.avgpool = GlobalAvgPool2d()
        self.fc1 = PointwiseConv2d(input_channels, squeeze_channels, bias=True, rng=rng,
                                   dtype=dtype)
        self.activation = ReLU()
        self.fc2 = PointwiseConv2d(squeeze_channels, input_channels, bias=True, rng=rng,
                                   dtype=dtype)
        self.scale_activation = Hardsigmoid()

    def forward(self, x):
        raise NotImplementedError("ex04: implement SqueezeExcitation.forward")

    def backward(self, dout):
        """Returns dx. x reaches out directly (times s) and through the gate s (through the
        pooling): add both paths."""
        raise NotImplementedError("ex04: implement SqueezeExcitation.backward")


class Bneck(Module):
    """V3's block from one table row: 1x1 expand to expanded_channels + BN + act (left out when
    expanded_channels == in_channels), K x K depthwise at `stride` + BN + act, your
    SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)) when use_se, then a linear
    1x1 projection + BN. activation is "RE" (ReLU) or "HS" (hard-swish): ACTIVATIONS maps the
    names to layer classes. Hold the layers in `self.block = Sequential(...)` (torchvision's
    names), built with ConvBNActivation(..., activation=None for the projection, bn_eps=...,
    bn_momentum=..., rng=rng, dtype=dtype). Set self.use_res_connect as in V2's block. Write
    backward out: each child of self.block's backward in turn, not self.block.backward.
    """

    def __init__(self, in_channels, kernel_size, expanded_channels, out_channels, use_se,
                 activation, stride, bn_eps=1e-3, bn_momentum=0.01, rng=None, dtype=np.float32):
        super().__init__()
        raise NotImplementedError("ex04: implement Bneck.__init__")

    def forward(self, x):
        raise NotImplementedError("ex04: implement Bneck.forward")

    def backward(self, dout):
        raise NotImplementedError("ex04: implement Bneck.backward")
