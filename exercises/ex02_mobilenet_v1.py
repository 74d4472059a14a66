"""Exercise 02, with notebooks/02_mobilenet_v1.ipynb: batch norm in training mode, the layer
after every conv of MobileNet V1, its running statistics, and V1's block.

1. batchnorm2d_forward: normalise each channel by its batch mean and (biased) variance.
2. batchnorm2d_backward: the gradient through the batch statistics (the notebook derives it).
3. update_running_statistics: PyTorch's convention, which the library's BatchNorm2d follows.
4. DepthwiseSeparable: V1's block, built from the library's layers, forward and backward.
5. MobileNetV1: the whole network from its table, made of your blocks.

Check: `python -m pytest exercises -m ex02` (this exercise needs no other). Signatures are the
library's (`minimobile.ops`, `minimobile.blocks.DepthwiseSeparable`,
`minimobile.models.MobileNetV1`).
"""

from typing import NamedTuple

import numpy as np

from minimobile.blocks import ConvBNActivation  # noqa: F401: the pieces of your block
from minimobile.layers import (Dropout, Flatten, GlobalAvgPool2d, Linear,  # noqa: F401
                               Module, ReLU, Sequential, _rng)
from minimobile.models import V1_SETTING, V1_STEM_CHANNELS, MobileNet, make_divisible  # noqa: F401


class BatchNorm2dCache(NamedTuple):
    """What the backward needs. The library's cache has the same first five fields (and more,
    for its fused activations); keep these names, the tests read them."""
    x: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray  # (C,) batch mean over N, H, W
    var: np.ndarray  # (C,) biased batch variance (divided by N*H*W)
    invstd: np.ndarray  # (C,) 1 / sqrt(var + eps)


def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    """out = gamma * (x - mean) / sqrt(var + eps) + beta, statistics per channel over N, H, W.

    x (N, C, H, W); gamma, beta (C,). Return (out, BatchNorm2dCache(x, gamma, mean, var,
    invstd)); out in x's dtype.
    """
    raise NotImplementedError("ex02: implement batchnorm2d_forward")


def batchnorm2d_backward(dout, cache):
    """Returns (dx, dgamma, dbeta). With M = N*H*W values per channel and xhat the normalised x,
    dx reaches x three ways: directly, through the mean and through the variance. Sum all three
    (or use the compact formula the notebook derives)."""
    raise NotImplementedError("ex02: implement batchnorm2d_backward")


def update_running_statistics(running_mean, running_var, mean, var, count, momentum=0.1):
    """Return (new_running_mean, new_running_var) after one training batch, PyTorch's way:
    running = (1 - momentum) * running + momentum * batch, where the batch variance used is the
    unbiased one (var * count / (count - 1), count = N*H*W values per channel). Do not modify
    the arguments."""
    raise NotImplementedError("ex02: implement update_running_statistics")


class DepthwiseSeparable(Module):
    """V1's block (Howard et al. 2017, Figure 3): a 3x3 depthwise conv at `stride` + BN +
    activation, then a 1x1 pointwise conv to out_channels + BN + activation. Children `dw` and
    `pw`, each a ConvBNActivation(in, out, kernel_size, stride, groups=..., activation=...,
    bn_eps=..., bn_momentum=..., rng=rng, dtype=dtype), so the state dict reads dw.0.weight,
    dw.1.weight, ..., pw.1.running_var. V1 has no skip: set self.use_res_connect = False.
    """

    def __init__(self, in_channels, out_channels, stride=1, activation=ReLU, bn_eps=1e-5,
                 bn_momentum=0.1, rng=None, dtype=np.float32):
        super().__init__()
        raise NotImplementedError("ex02: implement DepthwiseSeparable.__init__")

    def forward(self, x):
        raise NotImplementedError("ex02: implement DepthwiseSeparable.forward")

    def backward(self, dout):
        raise NotImplementedError("ex02: implement DepthwiseSeparable.backward")


class MobileNetV1(MobileNet):
    """MobileNet V1 from its table (minimobile.models.V1_SETTING), made of your
    DepthwiseSeparable: the stem ConvBNActivation(3, C, 3, stride=1 if cifar else 2,
    activation=ReLU) with C = make_divisible(32 * width_mult), then one block per row (out
    channels make_divisible(c * width_mult), the row's stride), kept in
    `self.features = Sequential(...)`; then `self.avgpool = GlobalAvgPool2d()`,
    `self.flatten = Flatten()`, `self.classifier = Sequential(Dropout(dropout, rng=rng),
    Linear(C_last, num_classes, rng=rng, dtype=dtype))`, and `self._init_weights(rng)`.
    MobileNet (the base class) already has forward and backward; rng defaults to
    np.random.default_rng().
    """

    def __init__(self, num_classes=1000, width_mult=1.0, cifar=False, dropout=0.0, rng=None,
                 dtype=np.float32):
        super().__init__()
        raise NotImplementedError("ex02: implement MobileNetV1.__init__")
