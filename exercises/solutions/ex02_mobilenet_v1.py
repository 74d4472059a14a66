"""Reference solution of exercise 02 (notebooks/02_mobilenet_v1.ipynb): batch norm in training
mode, the layer after every conv of MobileNet V1, its running statistics, and V1's block.

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

from minimobile.blocks import ConvBNActivation
from minimobile.layers import (Dropout, Flatten, GlobalAvgPool2d, Linear, Module, ReLU, Sequential,
                               _rng)
from minimobile.models import V1_SETTING, V1_STEM_CHANNELS, MobileNet, make_divisible


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
    xd = x.astype(np.float64)
    mean = xd.mean(axis=(0, 2, 3))  # (C,)
    var = xd.var(axis=(0, 2, 3))  # (C,) biased
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (xd - mean[:, None, None]) * invstd[:, None, None]
    out = gamma[:, None, None] * xhat + beta[:, None, None]
    return out.astype(x.dtype), BatchNorm2dCache(x, gamma, mean, var, invstd)


def batchnorm2d_backward(dout, cache):
    """Returns (dx, dgamma, dbeta). With M = N*H*W values per channel and xhat the normalised x,
    dx reaches x three ways: directly, through the mean and through the variance. Sum all three
    (or use the compact formula the notebook derives)."""
    x, gamma, mean, invstd = cache.x, cache.gamma, cache.mean, cache.invstd
    xhat = (x.astype(np.float64) - mean[:, None, None]) * invstd[:, None, None]
    g = dout.astype(np.float64)
    dbeta = g.sum(axis=(0, 2, 3))
    dgamma = (g * xhat).sum(axis=(0, 2, 3))
    M = x.shape[0] * x.shape[2] * x.shape[3]
    # The direct path, minus the path through the mean (every x moves it by 1/M), minus the
    # path through the variance (which moves along xhat).
    dx = (gamma * invstd)[:, None, None] * (g - dbeta[:, None, None] / M
                                            - xhat * dgamma[:, None, None] / M)
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def update_running_statistics(running_mean, running_var, mean, var, count, momentum=0.1):
    """Return (new_running_mean, new_running_var) after one training batch, PyTorch's way:
    running = (1 - momentum) * running + momentum * batch, where the batch variance used is the
    unbiased one (var * count / (count - 1), count = N*H*W values per channel). Do not modify
    the arguments."""
    unbiased = var * count / (count - 1)
    return ((1 - momentum) * running_mean + momentum * mean,
            (1 - momentum) * running_var + momentum * unbiased)


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
        rng = _rng(rng)  # one generator for both convs, so their weights differ
        bn = dict(activation=activation, bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng,
                  dtype=dtype)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.use_res_connect = False
        self.dw = ConvBNActivation(in_channels, in_channels, 3, stride, groups=in_channels, **bn)
        self.pw = ConvBNActivation(in_channels, out_channels, 1, **bn)

    def forward(self, x):
        return self.pw.forward(self.dw.forward(x))

    def backward(self, dout):
        return self.dw.backward(self.pw.backward(dout))


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
        rng = _rng(rng)
        channels = make_divisible(V1_STEM_CHANNELS * width_mult)
        features = [ConvBNActivation(3, channels, 3, stride=1 if cifar else 2, activation=ReLU,
                                     rng=rng, dtype=dtype)]
        for c, stride in V1_SETTING:
            out_channels = make_divisible(c * width_mult)
            features.append(DepthwiseSeparable(channels, out_channels, stride, rng=rng,
                                               dtype=dtype))
            channels = out_channels
        self.features = Sequential(*features)
        self.avgpool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.classifier = Sequential(Dropout(dropout, rng=rng),
                                     Linear(channels, num_classes, rng=rng, dtype=dtype))
        self._init_weights(rng)
