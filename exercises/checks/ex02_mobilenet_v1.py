"""Checks of exercise 02: batch norm against `minimobile.ops.batchnorm2d_forward` in float64
and central differences, the running statistics against the library's `BatchNorm2d` layer, and
the learner's DepthwiseSeparable and MobileNetV1 against the library's with the same weights
(outputs, gradients and the running statistics a training-mode forward leaves behind)."""

import numpy as np

from minimobile import ops
from minimobile.blocks import DepthwiseSeparable
from minimobile.layers import BatchNorm2d, Hardswish
from minimobile.models import MobileNetV1

from . import blocks
from .common import (FORWARD_TOL, GRAD_TOL, Hint, assert_close, assert_gradient,
                     assert_same_dtype, call, describe, fail)

# (shape, eps): the last ones with eps far from the default, so that a hard-coded 1e-5 shows.
BN_SHAPES = [(2, 3, 4, 5), (4, 1, 3, 3), (1, 2, 5, 4), (8, 3, 1, 1)]
BN_CASES = [(shape, 1e-5) for shape in BN_SHAPES] + [((2, 3, 4, 5), 0.1), ((3, 2, 2, 3), 1e-3)]
EPS = 1e-5
EPS_BAND = 1e-3  # an error above the tolerance and below this is eps's size: say so


def _reference_bn(x, gamma, beta, eps):
    """(out, mean, biased var) from the library's op, in float64."""
    out, cache = ops.batchnorm2d_forward(x, gamma, beta, eps)
    return out, cache.mean, cache.var


def _bn_inputs(shape, rng, dtype=np.float64):
    N, C, H, W = shape
    # An offset and a scale per channel, so that forgetting to subtract or divide shows.
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, (1, C, 1, 1))
         + rng.normal(0, 2, (1, C, 1, 1))).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.normal(0, 0.5, C).astype(dtype)
    return x, gamma, beta


def check_forward(ex):
    rng = np.random.default_rng(10)
    for shape, eps in BN_CASES:
        x, gamma, beta = _bn_inputs(shape, rng)
        where = "for " + describe(x=x, eps=eps)
        out, cache = call("ex02 batchnorm2d_forward", ex.batchnorm2d_forward, x, gamma, beta,
                          eps, returns=("out", "cache"))
        expected, mean, var = _reference_bn(x, gamma, beta, eps)
        assert_close(cache.mean, mean, "ex02 batchnorm2d_forward: cache.mean", where,
                     FORWARD_TOL, "the mean of each channel over axes (0, 2, 3)")
        assert_close(cache.var, var, "ex02 batchnorm2d_forward: cache.var", where, FORWARD_TOL,
                     "the biased variance of each channel over axes (0, 2, 3): divide by N*H*W")
        assert_close(cache.invstd, 1 / np.sqrt(var + eps), "ex02 batchnorm2d_forward: "
                     "cache.invstd", where, FORWARD_TOL, "1 / sqrt(var + eps), with the eps "
                     "passed in", eps_band=EPS_BAND)
        assert_close(out, expected, "ex02 batchnorm2d_forward: out", where, FORWARD_TOL,
                     "gamma * (x - mean) * invstd + beta, with gamma and beta broadcast as "
                     "(1, C, 1, 1)", eps_band=EPS_BAND)
    x, gamma, beta = _bn_inputs(BN_SHAPES[0], rng, np.float32)
    out, _ = ex.batchnorm2d_forward(x, gamma, beta, EPS)
    assert_same_dtype(out, x, "ex02 batchnorm2d_forward: out", "for " + describe(x=x) +
                      " in float32")


def _diagnose_dx(dx, x, gamma, dout, eps):
    """Name the missing path from properties of the true dx. It sums to zero over each channel
    (adding a constant to a channel does not change its output), and it is orthogonal to xhat
    up to eps: sum(dx * xhat) = gamma * invstd * sum(dout * xhat) * eps / (var + eps), so the
    threshold for blaming the variance term scales with eps / (var + eps)."""
    expected, cache = ops.batchnorm2d_forward(x, np.ones(x.shape[1]), np.zeros(x.shape[1]), eps)
    xhat, var = expected, cache.var
    true_dx = ops.batchnorm2d_backward(dout, ops.batchnorm2d_forward(x, gamma,
                                                                     np.zeros_like(gamma),
                                                                     eps)[1])[0]
    scale = np.abs(dx).sum(axis=(0, 2, 3)) + 1e-300
    by_mean = np.abs(dx.sum(axis=(0, 2, 3))) / scale
    by_var = np.abs((dx * xhat).sum(axis=(0, 2, 3))) / scale
    var_threshold = 1e-8 + 10 * np.max(eps / (var + eps))
    with np.errstate(all="ignore"):
        ratio = dx / np.where(true_dx == 0, np.nan, true_dx)
        per_channel = np.nan_to_num(np.nanmedian(ratio, axis=(0, 2, 3)), nan=1.0)
    if np.allclose(dx, per_channel[None, :, None, None] * true_dx, rtol=1e-6, atol=1e-12):
        c = int(np.argmax(np.abs(per_channel - 1)))
        return (f"your dx is the true dx times {per_channel[c]:.6g} in channel {c}: every path "
                "is there, a factor is off; look at gamma (dx carries it) and invstd")
    if by_mean.max() > 1e-8:
        c = int(np.argmax(by_mean))
        return (f"your dx sums to {dx[:, c].sum():.3g} over (N, H, W) in channel {c}, but the "
                "true dx sums to 0 in every channel (adding a constant to a channel does not "
                "change its output, the mean absorbs it): the terms through the batch mean are "
                "missing")
    if by_var.max() > var_threshold:
        c = int(np.argmax(by_var))
        return (f"sum(dx * xhat) is {(dx * xhat)[:, c].sum():.3g} in channel {c}, but (nearly) 0 "
                "for the true dx (scaling a channel's deviations does not change its output): "
                "the term through the batch variance is missing or wrong")
    return Hint("dx reaches x directly, through the mean and through the variance: sum the "
                "three", "dx = gamma * invstd / M * (M * dout - sum(dout) - xhat * sum(dout * "
                "xhat)), sums over (N, H, W) per channel")


def check_backward(ex):
    rng = np.random.default_rng(11)
    for shape, eps in BN_CASES:
        x, gamma, beta = _bn_inputs(shape, rng)
        where = "for " + describe(x=x, eps=eps)
        _, cache = call("ex02 batchnorm2d_forward", ex.batchnorm2d_forward, x, gamma, beta, eps,
                        returns=("out", "cache"))
        dout = rng.standard_normal(x.shape)
        dx, dgamma, dbeta = call("ex02 batchnorm2d_backward", ex.batchnorm2d_backward, dout,
                                 cache, returns=("dx", "dgamma", "dbeta"))

        def f():
            return ops.batchnorm2d_forward(x, gamma, beta, eps)[0]
        assert_gradient(f, beta, dbeta, dout, "ex02 batchnorm2d_backward: dbeta", where,
                        GRAD_TOL, "dbeta is dout summed over (N, H, W)")
        assert_gradient(f, gamma, dgamma, dout, "ex02 batchnorm2d_backward: dgamma", where,
                        GRAD_TOL, "dgamma is dout * xhat summed over (N, H, W)")
        hint = _diagnose_dx(np.asarray(dx, dtype=np.float64), x, gamma, dout, eps) if (
            dx is not None and np.shape(dx) == x.shape) else None
        assert_gradient(f, x, dx, dout, "ex02 batchnorm2d_backward: dx", where, GRAD_TOL, hint,
                        eps_band=EPS_BAND)


def check_running_statistics(ex):
    rng = np.random.default_rng(12)
    for shape, momentum in ((BN_SHAPES[0], 0.1), (BN_SHAPES[1], 0.3)):
        x, _, _ = _bn_inputs(shape, rng)
        layer = BatchNorm2d(shape[1], momentum=momentum, dtype=np.float64)
        layer.buffers["running_mean"][...] = rng.normal(0, 1, shape[1])
        layer.buffers["running_var"][...] = rng.uniform(0.5, 2, shape[1])
        before_mean = layer.buffers["running_mean"].copy()
        before_var = layer.buffers["running_var"].copy()
        layer.forward(x)
        _, mean, var = _reference_bn(x, np.ones(shape[1]), np.zeros(shape[1]), EPS)
        count = shape[0] * shape[2] * shape[3]
        where = "for " + describe(x=x, momentum=momentum)
        arguments = (before_mean.copy(), before_var.copy(), mean, var, count, momentum)
        new_mean, new_var = call("ex02 update_running_statistics", ex.update_running_statistics,
                                 *arguments, returns=("running_mean", "running_var"))
        if not (np.array_equal(arguments[0], before_mean)
                and np.array_equal(arguments[1], before_var)):
            fail(f"ex02 update_running_statistics changed its arguments {where}",
                 "return new arrays; the layer decides where they go")
        cs231n = momentum * before_mean + (1 - momentum) * mean
        hint = "running = (1 - momentum) * running + momentum * batch"
        if np.allclose(new_mean, cs231n) and not np.allclose(cs231n, layer.buffers[
                "running_mean"]):
            hint = ("this is CS231n's convention (momentum weighs the old value); PyTorch and "
                    "minimobile weigh the batch: running = (1 - momentum) * running + "
                    "momentum * batch")
        assert_close(new_mean, layer.buffers["running_mean"], "ex02 update_running_statistics: "
                     "running_mean", where, FORWARD_TOL, hint)
        biased = (1 - momentum) * before_var + momentum * var
        hint = "the variance kept is the unbiased one: var * count / (count - 1)"
        if np.allclose(new_var, biased):
            hint = ("you used the biased batch variance; PyTorch keeps the unbiased one, "
                    "var * count / (count - 1)")
        assert_close(new_var, layer.buffers["running_var"], "ex02 update_running_statistics: "
                     "running_var", where, FORWARD_TOL, hint)


# (in_channels, out_channels, stride, keyword arguments): stride 2 with equal channels (no
# skip in V1, ever), and every argument away from its default.
BLOCK_CONFIGS = [(4, 6, 1, {}), (4, 6, 2, {}), (3, 3, 1, {}), (4, 4, 2, {}), (1, 2, 2, {}),
                 (3, 5, 1, dict(activation=Hardswish, bn_eps=1e-1, bn_momentum=0.3))]


def _call_text(kwargs):
    names = {Hardswish: "Hardswish"}
    return "".join(f", {k}={names.get(v, v)}" for k, v in kwargs.items())


def check_depthwise_separable(ex):
    for in_c, out_c, stride, kw in BLOCK_CONFIGS:
        blocks.check_block(
            f"ex02 DepthwiseSeparable({in_c}, {out_c}, stride={stride}{_call_text(kw)})",
            lambda rng: ex.DepthwiseSeparable(in_c, out_c, stride, rng=rng, dtype=np.float64,
                                              **kw),
            lambda rng: DepthwiseSeparable(in_c, out_c, stride, rng=rng, dtype=np.float64,
                                           **kw),
            (2, in_c, 7, 7), False,
            "self.dw = ConvBNActivation(in, in, 3, stride, groups=in, activation=activation, "
            "...) and self.pw = ConvBNActivation(in, out, 1, activation=activation, ...)",
            "dw then pw; V1 has no skip connection",
            "the backward runs in reverse: self.dw.backward(self.pw.backward(dout))",
            skip_hint=blocks.NO_SKIP_HINT)


# (width_mult, cifar): the CIFAR variant (stem at stride 1) and the ImageNet one (stride 2),
# and 0.35, where make_divisible changes every channel count (32 * 0.35 = 11.2 -> 16).
MODEL_CONFIGS = [(0.25, True), (0.35, True), (0.5, False)]


def check_mobilenet_v1(ex):
    for width, cifar in MODEL_CONFIGS:
        blocks.check_block(
            f"ex02 MobileNetV1(num_classes=10, width_mult={width}, cifar={cifar})",
            lambda rng: ex.MobileNetV1(10, width, cifar, rng=rng, dtype=np.float64),
            lambda rng: MobileNetV1(10, width, cifar, rng=rng, dtype=np.float64),
            (2, 3, 32, 32), None,
            "features = [stem] + one DepthwiseSeparable per row of V1_SETTING, channels "
            "make_divisible(c * width_mult); classifier = Sequential(Dropout, Linear): "
            "compare with `minimobile summary v1 --width W`",
            "the stem runs at stride 1 with cifar=True and 2 without; then every row's stride",
            "MobileNet.backward runs classifier, flatten, avgpool and features backwards; if "
            "this fails, check DepthwiseSeparable first", numeric_samples=0)
