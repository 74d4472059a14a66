"""Reference solution of exercise 04 (notebooks/04_mobilenet_v3.ipynb): V3's activations,
squeeze-excite and the bneck block (Howard et al. 2019).

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
    out = (x * np.clip(x + 3, 0, 6) / 6).astype(x.dtype)
    return out, ActivationCache(x)


def hardswish_backward(dout, cache):
    """Returns dx: 0 below -3, dout * (x/3 + 1/2) on the closed [-3, 3], dout above 3."""
    x = cache.x
    slope = np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0))
    return (dout * slope).astype(x.dtype)


def hardsigmoid_forward(x):
    """out = relu6(x + 3) / 6, in x's dtype. Return (out, ActivationCache(x))."""
    out = (np.clip(x + 3, 0, 6) / 6).astype(x.dtype)
    return out, ActivationCache(x)


def hardsigmoid_backward(dout, cache):
    """Returns dx: dout / 6 on the open (-3, 3), else 0."""
    x = cache.x
    return (dout * ((x > -3) & (x < 3)) / 6).astype(x.dtype)


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
        s = self.avgpool.forward(x)  # (N, C, 1, 1)
        s = self.scale_activation.forward(self.fc2.forward(self.activation.forward(
            self.fc1.forward(s))))
        self._keep((x, s))
        return x * s

    def backward(self, dout):
        """Returns dx. x reaches out directly (times s) and through the gate s (through the
        pooling): add both paths."""
        x, s = self._take()
        dx = dout * s  # the direct path
        ds = (dout * x).sum(axis=(2, 3), keepdims=True)  # (N, C, 1, 1)
        ds = self.fc1.backward(self.activation.backward(self.fc2.backward(
            self.scale_activation.backward(ds))))
        return dx + self.avgpool.backward(ds)  # plus the path through the gate


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
        rng = _rng(rng)
        act = ACTIVATIONS[activation]
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = []
        if expanded_channels != in_channels:
            layers.append(ConvBNActivation(in_channels, expanded_channels, 1, activation=act,
                                           **bn))
        layers.append(ConvBNActivation(expanded_channels, expanded_channels, kernel_size,
                                       stride, groups=expanded_channels, activation=act, **bn))
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels,
                                            make_divisible(expanded_channels // 4, 8),
                                            rng=rng, dtype=dtype))
        layers.append(ConvBNActivation(expanded_channels, out_channels, 1, activation=None,
                                       **bn))
        self.block = Sequential(*layers)

    def forward(self, x):
        out = x
        for layer in self.block:  # expand, depthwise, squeeze-excite, project
            out = layer.forward(out)
        return x + out if self.use_res_connect else out

    def backward(self, dout):
        dx = dout
        for layer in reversed(list(self.block)):
            dx = layer.backward(dx)
        if self.use_res_connect:  # the skip hands dout to x unchanged; the two paths add
            dx = dx + dout
        return dx
