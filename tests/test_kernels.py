"""The kernel staircase: every rung against the rung below it.

Each op runs through `minimobile.ops` on one rung and then on the rung below (loops <- simple
<- fast), with the same inputs; float64 must agree to 1e-10 and float32 to 1e-5, relative to
the largest magnitude, on shapes that cover stride 2, odd and non-square sizes, K = 5, one
channel and batch 1, and on shapes drawn by hypothesis for the convolutions. Where the fast
rung has several loop orders (chosen by map size in `minimobile.tuning`), each is forced in
turn.
"""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimobile import kernels, ops, tuning
from minimobile.gradcheck import relative_error
from minimobile.kernels import depthwise

TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]
STEPS = [("loops", "simple"), ("simple", "fast")]  # (lower rung, the rung tested against it)

# (N, C, H, W, K, stride)
CONV_SHAPES = [
    (2, 3, 7, 7, 3, 1),
    (2, 3, 7, 7, 3, 2),
    (1, 1, 5, 5, 5, 1),
    (2, 4, 8, 8, 5, 2),
    (1, 2, 6, 9, 3, 2),
    (3, 1, 4, 4, 3, 1),
    (1, 5, 2, 3, 3, 1),
    (2, 3, 9, 11, 3, 2),  # planes of more than tuning.PIXEL_ORDER_MAX_PIXELS pixels
]


def _arrays(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _assert_close(actual, expected, dtype, what):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = relative_error(actual, expected)
    assert err < TOL[dtype], f"{what}: relative error {err:.2e} above {TOL[dtype]:.0e}"


def _compare_rungs(run, dtype, steps=STEPS):
    """run() -> {name: array}, computed on each rung; each rung against the one below."""
    results = {}
    for lower, upper in steps:
        for rung in (lower, upper):
            if rung not in results:
                with kernels.use(rung):
                    results[rung] = run()
        for name, expected in results[lower].items():
            _assert_close(results[upper][name], expected, dtype, f"{upper} against {lower}: {name}")


@pytest.fixture(params=["planes", "channels_last"])
def depthwise_layout(request, monkeypatch):
    """The fast depthwise conv runs plane by plane on large maps and channels last on small
    ones: tests that take this fixture run once with each forced."""
    monkeypatch.setattr(tuning, "DEPTHWISE_CHANNELS_LAST_MAX_PIXELS",
                        10**9 if request.param == "channels_last" else 0)
    return request.param


def _depthwise_case(x, w, stride, pad, dout_seed=1):
    def run():
        out, cache = ops.depthwise_conv2d_forward(x, w, stride, pad)
        dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(x.dtype)
        dx, dw = ops.depthwise_conv2d_backward(dout, cache)
        return {"out": out, "dx": dx, "dw": dw}
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,K,stride", CONV_SHAPES)
def test_depthwise_rungs_match(rng, depthwise_layout, dtype, N, C, H, W, K, stride):
    x, w = _arrays(rng, dtype, (N, C, H, W), (C, 1, K, K))
    _compare_rungs(_depthwise_case(x, w, stride, K // 2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("H,W", [(9, 8), (16, 16)])
def test_the_fast_3x3_forward_sums_the_taps_in_order(rng, depthwise_layout, dtype, stride, H, W):
    """Both fast loop orders sum a 3x3 output as w0*x0 + w1*x1 + ... + w8*x8, left to right in
    x's dtype (3a's taps in registers, 3b's passes): the same bits as numpy doing exactly
    that on the zero-padded planes."""
    x = rng.standard_normal((3, 5, H, W)).astype(dtype)
    w = rng.standard_normal((5, 1, 3, 3)).astype(dtype)
    out, _ = ops.depthwise_conv2d_forward(x, w, stride, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    Ho, Wo = out.shape[2:]
    expected = None
    for k in range(9):
        ki, kj = divmod(k, 3)
        term = w[None, :, 0, ki, kj, None, None] * xp[:, :, ki:ki + stride * Ho:stride,
                                                      kj:kj + stride * Wo:stride]
        expected = term if expected is None else expected + term
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("H,W", [(9, 8), (16, 16), (1, 3)])
def test_3x3_taps_in_registers_give_the_bits_of_the_passes(rng, dtype, stride, H, W):
    """3a with taps_in_registers (the forward's taps summed in a register; the backward's dx
    gathered, dw's nine sums in registers) against its K*K passes over the wide
    grid: the same bits for out and dx, plain and normalising on reading. dw is summed in
    another order (vector lanes per plane, float64 over the planes), so it agrees to the
    dtype's rounding only."""
    x = rng.standard_normal((3, 5, H, W)).astype(dtype)
    w = rng.standard_normal((5, 1, 3, 3)).astype(dtype)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    dout = rng.standard_normal((3, 5, Ho, Wo)).astype(dtype)
    scale, shift = np.linspace(0.5, 2, 5).astype(dtype), np.full(5, -0.1, dtype)
    for prologue in (depthwise.no_prologue(x), (scale, shift, 2)):
        results = []
        for registers in (False, True):
            out = np.empty((3, 5, Ho, Wo), dtype)
            dx, dw = np.empty_like(x), np.empty_like(w)
            depthwise.depthwise_conv2d_forward_phase_planes(out, x, w, stride, 1, 4, *prologue,
                                                            registers)
            depthwise.depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, stride, 1, 2,
                                                             *prologue, registers)
            results.append((out, dx, dw))
        (out_p, dx_p, dw_p), (out_r, dx_r, dw_r) = results
        np.testing.assert_array_equal(out_r, out_p)
        np.testing.assert_array_equal(dx_r, dx_p)
        np.testing.assert_allclose(dw_r, dw_p, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_5x5_weight_gradient_in_registers_matches_the_lanes(rng, dtype, stride):
    """3a's backward with 5x5 filters: dw's 25 sums in registers, in groups of nine, against
    the lanes of the passes (to the dtype's rounding: another order of additions); dx is
    made the same way both times, so it is the same bits."""
    x = rng.standard_normal((3, 4, 11, 10)).astype(dtype)
    w = rng.standard_normal((4, 1, 5, 5)).astype(dtype)
    Ho, Wo = (11 - 1) // stride + 1, (10 - 1) // stride + 1
    dout = rng.standard_normal((3, 4, Ho, Wo)).astype(dtype)
    results = []
    for registers in (False, True):
        dx, dw = np.empty_like(x), np.empty_like(w)
        depthwise.depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, stride, 2, 2,
                                                         *depthwise.no_prologue(x), registers)
        results.append((dx, dw))
    (dx_p, dw_p), (dx_r, dw_r) = results
    np.testing.assert_array_equal(dx_r, dx_p)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dw_r, dw_p, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("H,W", [(4, 4), (2, 2), (9, 8), (1, 3)])
def test_channels_last_forward_gives_the_bits_of_the_phase_planes(rng, dtype, stride, H, W):
    """3b, taps in registers or not, transposing pixel by pixel (normalising each pixel's row
    of channels) or plane by plane, with 1 to 5 tasks: the same bits as 3a, plain and
    normalising on reading."""
    x = rng.standard_normal((5, 11, H, W)).astype(dtype)
    w = rng.standard_normal((11, 1, 3, 3)).astype(dtype)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    scale, shift = np.linspace(0.5, 2, 11).astype(dtype), np.full(11, -0.1, dtype)
    for prologue in (depthwise.no_prologue(x), (scale, shift, 2), (scale, shift, 3)):
        expected = np.empty((5, 11, Ho, Wo), dtype)
        depthwise.depthwise_conv2d_forward_phase_planes(expected, x, w, stride, 1, 4, *prologue)
        for registers in (False, True):
            for pixel_order_max in (0, 10**9):
                for ntasks in (1, 2, 5):
                    out = np.full((5, 11, Ho, Wo), np.nan, dtype)
                    depthwise.depthwise_conv2d_forward_channels_last(
                        out, x, w, stride, 1, ntasks, pixel_order_max, *prologue, registers)
                    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("H,W", [(4, 4), (2, 2), (9, 8), (1, 3), (3, 5)])
def test_channels_last_backward_sums_in_registers_match_the_lanes(rng, dtype, K, stride, H, W):
    """3b's backward with taps_in_registers (dw's sums four output pixels at a time, a 3x3
    filter's dx at stride 1 gathered in a register) against its pixel-by-pixel sums: the
    same bits for dx, dw to the dtype's rounding (its additions come in another order);
    plain and normalising on reading, transposing either way, with 1 and 3 sum tasks."""
    N, C, pad = 5, 37, K // 2
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C, 1, K, K)).astype(dtype)
    Ho, Wo = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    dout = rng.standard_normal((N, C, Ho, Wo)).astype(dtype)
    scale, shift = np.linspace(0.5, 2, C).astype(dtype), np.full(C, -0.1, dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for prologue in (depthwise.no_prologue(x), (scale, shift, 2), (scale, shift, 3)):
        for pixel_order_max in (0, 10**9):
            for sum_tasks in (1, 3):
                results = []
                for registers in (False, True):
                    dx, dw = np.full_like(x, np.nan), np.full_like(w, np.nan)
                    depthwise.depthwise_conv2d_backward_channels_last(
                        dx, dw, dout, x, w, stride, pad, pixel_order_max, sum_tasks, *prologue,
                        registers)
                    results.append((dx, dw))
                (dx_l, dw_l), (dx_r, dw_r) = results
                np.testing.assert_array_equal(dx_r, dx_l)
                np.testing.assert_allclose(dw_r, dw_l, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("pixel_order", [True, False])
def test_depthwise_channels_last_transposes_either_way(rng, monkeypatch, pixel_order):
    """Small planes are turned channels last pixel by pixel, larger ones plane by plane."""
    monkeypatch.setattr(tuning, "DEPTHWISE_CHANNELS_LAST_MAX_PIXELS", 10**9)
    monkeypatch.setattr(tuning, "PIXEL_ORDER_MAX_PIXELS", 10**9 if pixel_order else 0)
    x, w = _arrays(rng, np.float64, (2, 3, 9, 11), (3, 1, 3, 3))
    _compare_rungs(_depthwise_case(x, w, 2, 1), np.float64, STEPS[1:])


def _conv2d_case(x, w, stride, pad):
    def run():
        out, cache = ops.conv2d_forward(x, w, stride, pad)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        dx, dw = ops.conv2d_backward(dout, cache)
        return {"out": out, "dx": dx, "dw": dw}
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,K,stride", CONV_SHAPES)
def test_conv2d_rungs_match(rng, dtype, N, C, H, W, K, stride):
    x, w = _arrays(rng, dtype, (N, C, H, W), (4, C, K, K))
    _compare_rungs(_conv2d_case(x, w, stride, K // 2), dtype)


def _pointwise_case(x, w, b):
    def run():
        out, cache = ops.pointwise_conv2d_forward(x, w, b)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        dx, dw, db = ops.pointwise_conv2d_backward(dout, cache)
        assert (db is None) == (b is None)
        return {"out": out, "dx": dx, "dw": dw, **({"db": db} if b is not None else {})}
    return run


def _force_pointwise_layout(monkeypatch, layout):
    """The fast 1x1 conv runs one product per image on large maps; on small ones it lays the
    images side by side, a few per task ("groups", here 2-3 images so that most cases have
    several groups and a shorter last one) or the whole batch at once ("channel_major")."""
    monkeypatch.setattr(tuning, "PER_IMAGE_MIN_PIXELS", 1 if layout == "per_image" else 10**9)
    if layout != "per_image":
        monkeypatch.setattr(tuning, "POINTWISE_SMALL_MAPS", layout)
        monkeypatch.setattr(tuning, "POINTWISE_GROUP_COLUMNS", 40)


@pytest.fixture(params=["per_image", "channel_major", "groups"])
def pointwise_layout(request, monkeypatch):
    _force_pointwise_layout(monkeypatch, request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N,C_in,C_out,H,W", [(2, 3, 5, 4, 4), (1, 1, 1, 3, 5), (3, 6, 2, 1, 1),
                                               (2, 3, 5, 8, 8), (3, 4, 2, 9, 11), (1, 2, 3, 8, 9)])
def test_pointwise_rungs_match(rng, pointwise_layout, dtype, bias, N, C_in, C_out, H, W):
    x, w, b = _arrays(rng, dtype, (N, C_in, H, W), (C_out, C_in, 1, 1), (C_out,))
    _compare_rungs(_pointwise_case(x, w, b if bias else None), dtype)


FUSED = [None, "relu", "relu6", "hardswish"]


@pytest.fixture(params=["by_image", "by_channel"])
def batchnorm_layout(request, monkeypatch):
    """Fast batch norm runs image by image on small maps, channel by channel on large ones."""
    monkeypatch.setattr(tuning, "BN_BY_IMAGE_MAX_PIXELS",
                        10**9 if request.param == "by_image" else 0)
    return request.param


def _batchnorm_case(x, gamma, beta, activation, eps=1e-5):
    def run():
        out, cache = ops.batchnorm2d_activation_forward(x, gamma, beta, eps, activation)
        dout = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
        dx, dgamma, dbeta = ops.batchnorm2d_activation_backward(dout, cache)
        return {"out": out, "mean": cache.mean, "var": cache.var, "dx": dx, "dgamma": dgamma,
                "dbeta": dbeta}
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 1, 3, 2), (5, 6, 1, 1), (3, 4, 5, 6)])
def test_batchnorm_rungs_match(rng, batchnorm_layout, dtype, activation, shape):
    # Scaled so that the normalised values straddle every kink (0, 6 and +-3).
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma = rng.uniform(1, 4, shape[1]).astype(dtype)
    beta = rng.uniform(-2, 4, shape[1]).astype(dtype)
    _compare_rungs(_batchnorm_case(x, gamma, beta, activation), dtype)


def test_batchnorm_statistics_survive_a_large_mean(rng, batchnorm_layout):
    """The fast rung's one-pass shifted sums against the two-pass rungs, on values whose mean
    is a thousand standard deviations from zero (a naive E[x^2] - E[x]^2 loses it all)."""
    x = rng.standard_normal((4, 3, 6, 6)) + 1000.0
    gamma, beta = np.ones(3), np.zeros(3)
    _compare_rungs(_batchnorm_case(x, gamma, beta, None), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED[1:])
def test_fused_batchnorm_activation_is_bitwise_the_unfused_pair(rng, dtype, activation):
    """On the fast rung, fusion is an optimisation only: the same bits as batch norm then the
    activation."""
    x = (rng.standard_normal((4, 3, 6, 6)) * 2 + 1).astype(dtype)
    gamma = rng.uniform(1, 4, 3).astype(dtype)
    beta = rng.uniform(-2, 4, 3).astype(dtype)
    forward = getattr(ops, f"{activation}_forward")
    backward = getattr(ops, f"{activation}_backward")
    y, bn_cache = ops.batchnorm2d_forward(x, gamma, beta)
    out, act_cache = forward(y)
    fused_out, fused_cache = ops.batchnorm2d_activation_forward(x, gamma, beta,
                                                                activation=activation)
    np.testing.assert_array_equal(fused_out, out)
    dout = rng.standard_normal(x.shape).astype(dtype)
    pair = ops.batchnorm2d_backward(backward(dout, act_cache), bn_cache)
    fused = ops.batchnorm2d_activation_backward(dout, fused_cache)
    for name, a, b in zip(("dx", "dgamma", "dbeta"), fused, pair):
        np.testing.assert_array_equal(a, b, err_msg=name)


def _normalized_depthwise_case(x, gamma, beta, activation, w, stride, pad):
    """Batch norm with its activation deferred, read by a depthwise conv, then both backwards."""
    def run():
        normalized, bn_cache = ops.batchnorm2d_activation_forward(x, gamma, beta,
                                                                  activation=activation, defer=True)
        assert isinstance(normalized, ops.NormalizedMap)
        out, cache = ops.depthwise_conv2d_forward(normalized, w, stride, pad)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        dy, dw = ops.depthwise_conv2d_backward(dout, cache)
        dx, dgamma, dbeta = ops.batchnorm2d_activation_backward(dy, bn_cache)
        return {"out": out, "dy": dy, "dw": dw, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    return run


def _normalized_inputs(rng, dtype, N, C, H, W, K):
    # Scaled so that the normalised values straddle every kink (0, 6 and +-3).
    x = (rng.standard_normal((N, C, H, W)) * 3 + 2).astype(dtype)
    gamma = rng.uniform(1, 4, C).astype(dtype)
    beta = rng.uniform(-2, 4, C).astype(dtype)
    w = rng.standard_normal((C, 1, K, K)).astype(dtype)
    return x, gamma, beta, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("N,C,H,W,K,stride", [CONV_SHAPES[i] for i in (1, 3, 7)])
def test_normalized_depthwise_rungs_match(rng, depthwise_layout, dtype, activation, N, C, H, W,
                                          K, stride):
    """The depthwise conv that applies batch norm's act(x * scale + shift) as it reads: rungs 1
    and 2 make the normalised map whole first, the fast rung normalises each plane in its copy."""
    x, gamma, beta, w = _normalized_inputs(rng, dtype, N, C, H, W, K)
    _compare_rungs(_normalized_depthwise_case(x, gamma, beta, activation, w, stride, K // 2),
                   dtype)


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("stride", [1, 2])
def test_normalizing_on_reading_is_bitwise_normalizing_first(rng, depthwise_layout, activation,
                                                             stride):
    """On the fast rung, deferring batch norm's output into the depthwise conv is an
    optimisation only: the same bits as writing the map and convolving it, forward and
    backward."""
    x, gamma, beta, w = _normalized_inputs(rng, np.float32, 3, 5, 9, 8, 3)
    deferred = _normalized_depthwise_case(x, gamma, beta, activation, w, stride, 1)()

    y, bn_cache = ops.batchnorm2d_activation_forward(x, gamma, beta, activation=activation)
    out, cache = ops.depthwise_conv2d_forward(y, w, stride, 1)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    dy, dw = ops.depthwise_conv2d_backward(dout, cache)
    dx, dgamma, dbeta = ops.batchnorm2d_activation_backward(dy, bn_cache)
    plain = {"out": out, "dy": dy, "dw": dw, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    for name, expected in plain.items():
        np.testing.assert_array_equal(deferred[name], expected, err_msg=name)


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("K,stride,H,W", [(3, 1, 9, 8), (3, 2, 9, 8), (5, 1, 6, 7), (3, 2, 16, 16)])
def test_the_depthwise_backward_makes_batchnorms_sums_with_its_bits(
        rng, monkeypatch, sums_made, depthwise_layout, batchnorm_layout, activation, K, stride,
        H, W):
    """3d: the depthwise conv that read a deferred batch norm's output makes that batch norm's
    first-pass sums, row by row, as it writes dx; the batch norm adds them in its order (by
    channel, or by image in SUM_TASKS shares of a batch they do not divide) and runs its
    second pass alone: the same bits as the batch norm making its own, for either loop order
    of each."""
    monkeypatch.setattr(tuning, "SUM_TASKS", 3)
    x, gamma, beta, w = _normalized_inputs(rng, np.float32, 7, 5, H, W, K)
    fused = _normalized_depthwise_case(x, gamma, beta, activation, w, stride, K // 2)()
    assert sums_made == [True]
    monkeypatch.setattr(ops.BatchNormGradientSums, "take", lambda self, dout: None)
    own = _normalized_depthwise_case(x, gamma, beta, activation, w, stride, K // 2)()
    for name, expected in own.items():
        np.testing.assert_array_equal(fused[name], expected, err_msg=name)


def test_batchnorm_makes_its_own_sums_where_the_conv_cannot_or_for_another_gradient(
        rng, sums_made):
    """No sums on maps of under BN_ROW_SUMS_MIN_PIXELS pixels (batch norm sums those in
    per-position lanes), on rungs 1 and 2, or when the gradient batch norm gets is not the
    array they were made from (here a copy): the batch norm then makes its own, with the
    same result, and the holder is emptied either way."""
    x, gamma, beta, w = _normalized_inputs(rng, np.float32, 4, 6, 4, 4, 3)
    _normalized_depthwise_case(x, gamma, beta, "relu6", w, 1, 1)()
    with kernels.use("simple"):
        _normalized_depthwise_case(x, gamma, beta, "relu6", w, 1, 1)()
    assert sums_made == [False, False]

    x, gamma, beta, w = _normalized_inputs(rng, np.float32, 4, 6, 12, 12, 3)
    results = []
    for copy in (False, True):
        normalized, bn_cache = ops.batchnorm2d_activation_forward(x, gamma, beta, 1e-5,
                                                                  "relu", defer=True)
        out, cache = ops.depthwise_conv2d_forward(normalized, w, 1, 1)
        dy, _ = ops.depthwise_conv2d_backward(np.ones_like(out), cache)
        assert bn_cache.gradient_sums.rows is not None
        results.append(ops.batchnorm2d_backward(dy.copy() if copy else dy, bn_cache))
        assert bn_cache.gradient_sums.rows is None and bn_cache.gradient_sums.dout is None
    assert sums_made[2:] == [True, False]
    for given, own in zip(*results):
        np.testing.assert_array_equal(given, own)


def _normalized_pointwise_case(x, gamma, beta, activation, w, defer=True):
    """Batch norm with its activation, deferred (or written), read by a 1x1 conv, then both
    backwards."""
    def run():
        y, bn_cache = ops.batchnorm2d_activation_forward(x, gamma, beta, activation=activation,
                                                         defer=defer)
        assert isinstance(y, ops.NormalizedMap) == defer
        out, cache = ops.pointwise_conv2d_forward(y, w)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        dy, dw, _ = ops.pointwise_conv2d_backward(dout, cache)
        dx, dgamma, dbeta = ops.batchnorm2d_activation_backward(dy, bn_cache)
        return {"out": out, "dy": dy, "dw": dw, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    return run


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("H,W", [(9, 8), (6, 7), (16, 17)])
def test_the_pointwise_backward_makes_batchnorms_sums_with_its_bits(
        rng, monkeypatch, sums_made, pointwise_layout, batchnorm_layout, activation, H, W):
    """kernels/matmul.py, 3e: the 1x1 conv that read a deferred batch norm's output makes
    that batch norm's first-pass sums as it writes each image's dx (per image, or copying a
    group's out), the same bits as the batch norm making its own; the channel-major layout
    does not make them."""
    monkeypatch.setattr(tuning, "SUM_TASKS", 3)
    x, gamma, beta, _ = _normalized_inputs(rng, np.float32, 7, 6, H, W, 1)
    w = rng.standard_normal((5, 6, 1, 1)).astype(np.float32)
    fused = _normalized_pointwise_case(x, gamma, beta, activation, w)()
    assert sums_made == [pointwise_layout != "channel_major"]
    monkeypatch.setattr(ops.BatchNormGradientSums, "take", lambda self, dout: None)
    own = _normalized_pointwise_case(x, gamma, beta, activation, w)()
    for name, expected in own.items():
        np.testing.assert_array_equal(fused[name], expected, err_msg=name)


def _conv_then_batchnorm_case(conv, x, w, gamma, beta, activation, defer_gradient,
                              stride=1):
    """A depthwise or 1x1 conv, then batch norm with its activation, then both backwards; with
    defer_gradient the batch norm hands the conv its dx as a NormalizedGradient."""
    def run():
        if conv == "depthwise":
            y, conv_cache = ops.depthwise_conv2d_forward(x, w, stride, w.shape[2] // 2)
        else:
            y, conv_cache = ops.pointwise_conv2d_forward(x, w)
        out, bn_cache = ops.batchnorm2d_activation_forward(y, gamma, beta, activation=activation)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        backward = (ops.batchnorm2d_backward_deferred if defer_gradient
                    else ops.batchnorm2d_backward)
        dy, dgamma, dbeta = backward(dout, bn_cache)
        assert isinstance(dy, ops.NormalizedGradient) == (defer_gradient
                                                          and kernels.current() == "fast")
        if conv == "depthwise":
            dx, dw = ops.depthwise_conv2d_backward(dy, conv_cache)
        else:
            dx, dw, _ = ops.pointwise_conv2d_backward(dy, conv_cache)
        dy_made = dy.materialize() if isinstance(dy, ops.NormalizedGradient) else dy
        return {"out": out, "dy": dy_made, "dgamma": dgamma, "dbeta": dbeta, "dx": dx, "dw": dw}
    return run


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("conv,K,stride,H,W", [("depthwise", 3, 1, 9, 8), ("depthwise", 3, 2, 9, 8),
                                               ("depthwise", 5, 1, 4, 4), ("pointwise", 1, 1, 9, 8),
                                               ("pointwise", 1, 1, 4, 4)])
def test_a_conv_makes_the_batchnorm_gradient_after_it_as_it_reads_with_its_bits(
        rng, monkeypatch, depthwise_layout, batchnorm_layout, activation, conv, K, stride, H, W):
    """kernels/batchnorm.py, 3f: the batch norm after a depthwise or 1x1 conv stops after its
    sums and hands the conv a NormalizedGradient, whose dx the conv makes as it reads each
    plane or image: the same bits as the batch norm writing dx, for either loop order of the
    conv (the 1x1's per image and in groups, via depthwise_layout's switch of its threshold)
    and of the batch norm; on rung 2 the batch norm writes dx as before."""
    monkeypatch.setattr(tuning, "SUM_TASKS", 3)
    if conv == "pointwise":
        _force_pointwise_layout(monkeypatch, "per_image" if depthwise_layout == "planes"
                                else "groups")
    x = (rng.standard_normal((7, 5, H, W)) * 2).astype(np.float32)
    w = rng.standard_normal((5, 1, K, K) if conv == "depthwise" else (6, 5, 1, 1))
    w = w.astype(np.float32)
    C_out = 5 if conv == "depthwise" else 6
    gamma = rng.uniform(1, 4, C_out).astype(np.float32)
    beta = rng.uniform(-2, 4, C_out).astype(np.float32)
    made = _conv_then_batchnorm_case(conv, x, w, gamma, beta, activation, True, stride)()
    written = _conv_then_batchnorm_case(conv, x, w, gamma, beta, activation, False, stride)()
    for name, expected in written.items():
        np.testing.assert_array_equal(made[name], expected, err_msg=name)
    with kernels.use("simple"):
        simple = _conv_then_batchnorm_case(conv, x, w, gamma, beta, activation, True, stride)()
    np.testing.assert_allclose(simple["dx"], written["dx"], rtol=1e-4, atol=1e-4)


def test_a_normalized_gradient_is_made_whole_on_the_lower_rungs(rng):
    """A NormalizedGradient handed to a conv on rung 1 or 2 is made whole first
    (materialize), and a 1x1 conv with a bias makes it whole for the bias's gradient."""
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    gamma, beta = np.ones(5, np.float32), np.zeros(5, np.float32)
    y, conv_cache = ops.pointwise_conv2d_forward(x, w, b)
    out, bn_cache = ops.batchnorm2d_activation_forward(y, gamma, beta, activation="relu6")
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dy, _, _ = ops.batchnorm2d_backward_deferred(dout, bn_cache)
    assert isinstance(dy, ops.NormalizedGradient)
    expected = ops.pointwise_conv2d_backward(dy.materialize(), conv_cache)
    with kernels.use("simple"):
        lower = ops.pointwise_conv2d_backward(dy, conv_cache)
    for got, want in zip(lower, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    biased = ops.pointwise_conv2d_backward(dy, conv_cache)
    for got, want in zip(biased, expected):
        np.testing.assert_array_equal(got, want)
    bad = dy._replace(x=dy.x[:, :, :3])
    with pytest.raises(ValueError, match="NormalizedGradient's x and dout of one shape"):
        ops.pointwise_conv2d_backward(bad, conv_cache)


@pytest.fixture(autouse=True)
def _convs_make_sums_on_every_map(monkeypatch):
    """The fusions of kernels/batchnorm.py 3e and 3g run on large maps only in the engine
    (tuning.CONV_MAKES_BN_SUMS_MIN_PIXELS); the kernel tests check them on every map size
    their kernels serve."""
    monkeypatch.setattr(tuning, "CONV_MAKES_BN_SUMS_MIN_PIXELS", 0)


def test_the_convs_make_batchnorms_sums_on_large_maps_only(rng, monkeypatch, sums_made,
                                                          statistics_made):
    """With the engine's threshold, a 16x16 map's batch norm makes its own statistics and
    backward sums, and a 32x32 map's gets both from the convs beside it."""
    monkeypatch.setattr(tuning, "CONV_MAKES_BN_SUMS_MIN_PIXELS", 1024)
    for H in (16, 32):
        x, gamma, beta, w = _normalized_inputs(rng, np.float32, 2, 3, H, H, 3)
        statistics = ops.BatchNormStatistics()
        out, _ = ops.depthwise_conv2d_forward_with_statistics(x, w, 1, 1, statistics)
        normalized, bn_cache = ops.batchnorm2d_activation_forward(out, gamma, beta, 1e-5, "relu",
                                                                  True, statistics)
        y, cache = ops.depthwise_conv2d_forward(normalized, w, 1, 1)
        dy, _ = ops.depthwise_conv2d_backward(np.ones_like(y), cache)
        ops.batchnorm2d_backward(dy, bn_cache)
    assert statistics_made == [False, True] and sums_made == [True]  # 16x16: no holder at all


def _conv_then_batchnorm(conv, x, w, stride, activation, defer, statistics):
    """conv (a plain or normalised input) -> batch norm with its activation, the conv making
    the batch norm's statistics when `statistics` (an ops.BatchNormStatistics) is given: what
    the batch norm computed, as arrays."""
    if conv == "depthwise":
        out, _ = (ops.depthwise_conv2d_forward(x, w, stride, w.shape[2] // 2)
                  if statistics is None else
                  ops.depthwise_conv2d_forward_with_statistics(x, w, stride, w.shape[2] // 2,
                                                               statistics))
    else:
        out, _ = (ops.pointwise_conv2d_forward(x, w) if statistics is None else
                  ops.pointwise_conv2d_forward_with_statistics(x, w, None, statistics))
    C = out.shape[1]
    gamma = np.linspace(0.5, 2, C).astype(out.dtype)
    beta = np.linspace(-1, 1, C).astype(out.dtype)
    y, cache = ops.batchnorm2d_activation_forward(out, gamma, beta, 1e-5, activation, defer,
                                                  statistics)
    return {"conv": out, "out": y.materialize() if defer else y, "mean": cache.mean,
            "var": cache.var, "scale": cache.scale, "shift": cache.shift}


def _normalized_or_plain_input(rng, prologue, N, C, H, W):
    x, gamma, beta, _ = _normalized_inputs(rng, np.float32, N, C, H, W, 1)
    if not prologue:
        return x
    return ops.batchnorm2d_activation_forward(x, gamma, beta, 1e-5, "relu6", defer=True)[0]


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("K,stride,H,W", [(3, 1, 9, 8), (3, 2, 9, 8), (5, 1, 6, 7), (3, 1, 4, 4),
                                          (3, 2, 17, 16)])
def test_a_depthwise_conv_makes_the_batchnorm_statistics_after_it_with_their_bits(
        rng, monkeypatch, statistics_made, depthwise_layout, batchnorm_layout, activation,
        prologue, K, stride, H, W):
    """kernels/batchnorm.py, 3g: the depthwise conv makes the statistics' row sums of the batch
    norm after it as it writes each plane (or image, channels last), image 0 first for the
    shifts; the batch norm adds them in its order (by channel, or by image in SUM_TASKS shares
    of a batch they do not divide): the same bits as the batch norm summing its input itself,
    whether the conv reads its input plain or normalised, and whether the batch norm writes
    its output or defers it. Made only where the batch norm sums row by row: not by image on
    maps of under BN_ROW_SUMS_MIN_PIXELS (here 4x4 and the stride-2 9x8's 5x4)."""
    monkeypatch.setattr(tuning, "SUM_TASKS", 3)
    x = _normalized_or_plain_input(rng, prologue, 7, 5, H, W)
    w = rng.standard_normal((5, 1, K, K)).astype(np.float32)
    for defer in (False, True):
        statistics_made.clear()
        made = _conv_then_batchnorm("depthwise", x, w, stride, activation, defer,
                                    ops.BatchNormStatistics())
        own = _conv_then_batchnorm("depthwise", x, w, stride, activation, defer, None)
        P = made["conv"].shape[2] * made["conv"].shape[3]
        assert statistics_made == [batchnorm_layout == "by_channel"
                                   or P >= tuning.BN_ROW_SUMS_MIN_PIXELS]
        for name, expected in own.items():
            np.testing.assert_array_equal(made[name], expected, err_msg=name)


@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("H,W", [(9, 8), (6, 7), (4, 4)])
def test_a_pointwise_conv_makes_the_batchnorm_statistics_after_it_with_their_bits(
        rng, monkeypatch, statistics_made, pointwise_layout, batchnorm_layout, activation,
        prologue, H, W):
    """3g for the 1x1 conv: where it makes one product per image, it makes the batch norm's
    statistics' row sums just after each product, the same bits as the batch norm making its
    own; with its images grouped or laid channel-major it does not make them."""
    monkeypatch.setattr(tuning, "SUM_TASKS", 3)
    x = _normalized_or_plain_input(rng, prologue, 7, 6, H, W)
    w = rng.standard_normal((5, 6, 1, 1)).astype(np.float32)
    for defer in (False, True):
        statistics_made.clear()
        made = _conv_then_batchnorm("pointwise", x, w, 1, activation, defer,
                                    ops.BatchNormStatistics())
        own = _conv_then_batchnorm("pointwise", x, w, 1, activation, defer, None)
        assert statistics_made == [pointwise_layout == "per_image" and (
            batchnorm_layout == "by_channel" or H * W >= tuning.BN_ROW_SUMS_MIN_PIXELS)]
        for name, expected in own.items():
            np.testing.assert_array_equal(made[name], expected, err_msg=name)


def test_batchnorm_makes_its_own_statistics_for_another_array_a_bias_or_a_lower_rung(
        rng, statistics_made):
    """The statistics are used only for the very array they were made from (here a copy is
    handed on instead), never with a bias added after the product, and not on rungs 1 and 2;
    the batch norm then makes its own, with the same result, and the holder is emptied."""
    x = _normalized_or_plain_input(rng, False, 4, 6, 12, 12)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    gamma, beta = np.ones(6, np.float32), np.zeros(6, np.float32)
    results = []
    for copy in (False, True):
        statistics = ops.BatchNormStatistics()
        out, _ = ops.depthwise_conv2d_forward_with_statistics(x, w, 1, 1, statistics)
        assert statistics.rows is not None and statistics.x is out
        y, cache = ops.batchnorm2d_activation_forward(out.copy() if copy else out, gamma, beta,
                                                      1e-5, "relu", False, statistics)
        assert statistics.rows is None and statistics.x is None
        results.append((y, cache.mean, cache.var))
    assert statistics_made == [True, False]
    for given, own in zip(*results):
        np.testing.assert_array_equal(given, own)

    statistics = ops.BatchNormStatistics()
    w1 = rng.standard_normal((5, 6, 1, 1)).astype(np.float32)
    ops.pointwise_conv2d_forward_with_statistics(x, w1, np.ones(5, np.float32), statistics)
    assert statistics.rows is None and statistics.x is None
    with kernels.use("simple"):
        ops.depthwise_conv2d_forward_with_statistics(x, w, 1, 1, statistics)
    assert statistics.rows is None and statistics.x is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("N,C,H,W", [(5, 3, 4, 4), (2, 4, 9, 11), (3, 2, 1, 1), (3, 7, 3, 5)])
def test_normalized_pointwise_rungs_match(rng, pointwise_layout, dtype, activation, N, C, H, W):
    """The 1x1 conv that applies batch norm's act(x * scale + shift) as it reads: rungs 1 and
    2 make the normalised map whole first, the fast rung normalises each image in its copy
    (per image into a scratch matrix, or as the images are laid side by side)."""
    x, gamma, beta, _ = _normalized_inputs(rng, dtype, N, C, H, W, 1)
    w = rng.standard_normal((5, C, 1, 1)).astype(dtype)
    _compare_rungs(_normalized_pointwise_case(x, gamma, beta, activation, w), dtype)


@pytest.mark.parametrize("activation", FUSED)
def test_normalizing_on_reading_in_a_1x1_conv_is_bitwise_normalizing_first(
        rng, pointwise_layout, activation):
    """On the fast rung, deferring batch norm's output into the 1x1 conv is an optimisation
    only: the same bits as writing the map and multiplying it, forward and backward."""
    x, gamma, beta, _ = _normalized_inputs(rng, np.float32, 7, 6, 5, 5, 1)
    w = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    deferred = _normalized_pointwise_case(x, gamma, beta, activation, w)()
    plain = _normalized_pointwise_case(x, gamma, beta, activation, w, defer=False)()
    for name, expected in plain.items():
        np.testing.assert_array_equal(deferred[name], expected, err_msg=name)


def _scaled_pointwise_case(x, s, w, defer=True):
    """Squeeze-excite's gate, deferred (or written), read by a 1x1 conv, then both backwards."""
    def run():
        u, gate_cache = ops.scale_channels_forward(x, s, defer=defer)
        assert isinstance(u, ops.ScaledMap) == defer
        out, cache = ops.pointwise_conv2d_forward(u, w)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        du, dw, _ = ops.pointwise_conv2d_backward(dout, cache)
        dx, ds = ops.scale_channels_backward(du, gate_cache)
        return {"out": out, "du": du, "dw": dw, "dx": dx, "ds": ds}
    return run


def _gate_inputs(rng, dtype, N, C, H, W):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    s = rng.uniform(0, 1, (N, C, 1, 1)).astype(dtype)
    w = rng.standard_normal((5, C, 1, 1)).astype(dtype)
    return x, s, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W", [(5, 3, 4, 4), (2, 4, 9, 11), (3, 2, 1, 1)])
def test_scaled_pointwise_rungs_match(rng, pointwise_layout, dtype, N, C, H, W):
    """The 1x1 conv that applies squeeze-excite's gate x[n, c] * s[n, c] as it reads: rungs 1
    and 2 make the gated map whole first, the fast rung scales each image in its copy."""
    _compare_rungs(_scaled_pointwise_case(*_gate_inputs(rng, dtype, N, C, H, W)), dtype)


def test_scaling_on_reading_in_a_1x1_conv_is_bitwise_scaling_first(rng, pointwise_layout):
    """On the fast rung, deferring the gate into the 1x1 conv is an optimisation only: the
    same bits as writing the gated map and multiplying it, forward and backward."""
    x, s, w = _gate_inputs(rng, np.float32, 7, 6, 5, 5)
    deferred = _scaled_pointwise_case(x, s, w)()
    plain = _scaled_pointwise_case(x, s, w, defer=False)()
    for name, expected in plain.items():
        np.testing.assert_array_equal(deferred[name], expected, err_msg=name)
    np.testing.assert_array_equal(ops.ScaledMap(x, s).materialize(), x * s)


def _gate_after_batchnorm_case(x, gamma, beta, activation, w, defer=True):
    """V3's squeeze-excite block from the depthwise layer's batch norm on: batch norm with its
    activation, pooled, a gate made from the pooled map, the gated map read by a 1x1 conv;
    then every backward, the pooling's path added as in layers.SqueezeExcitation. defer=True
    writes neither the normalised nor the gated map."""
    def run():
        y, bn_cache = ops.batchnorm2d_activation_forward(x, gamma, beta, activation=activation,
                                                         defer=defer)
        pooled, pool_cache = ops.global_avg_pool_forward(y)
        s = 1 / (1 + np.exp(-pooled))  # any function of the pooled map will do here
        u, gate_cache = ops.scale_channels_forward(y, s, defer=defer)
        out, cache = ops.pointwise_conv2d_forward(u, w)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
        du, dw, _ = ops.pointwise_conv2d_backward(dout, cache)
        dy, ds = ops.scale_channels_backward(du, gate_cache)
        dy = dy + ops.global_avg_pool_backward(ds, pool_cache)
        dx, dgamma, dbeta = ops.batchnorm2d_activation_backward(dy, bn_cache)
        return {"pooled": pooled, "out": out, "du": du, "dw": dw, "ds": ds, "dx": dx,
                "dgamma": dgamma, "dbeta": dbeta}
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("N,C,H,W", [(5, 3, 4, 4), (2, 4, 9, 11)])
def test_a_gate_reading_batchnorm_rungs_match(rng, pointwise_layout, dtype, activation, N, C, H,
                                              W):
    """Squeeze-excite pooling and scaling batch norm's output as it reads it, and the 1x1
    conv after it reading both: rungs 1 and 2 make the maps whole first."""
    x, gamma, beta, _ = _normalized_inputs(rng, dtype, N, C, H, W, 1)
    w = rng.standard_normal((5, C, 1, 1)).astype(dtype)
    _compare_rungs(_gate_after_batchnorm_case(x, gamma, beta, activation, w), dtype)


@pytest.mark.parametrize("activation", FUSED)
def test_a_gate_reading_batchnorm_is_bitwise_writing_the_maps(rng, pointwise_layout, activation):
    """On the fast rung, neither the normalised map nor the gated one written: the same bits,
    forward and backward, as writing both."""
    x, gamma, beta, _ = _normalized_inputs(rng, np.float32, 7, 6, 5, 5, 1)
    w = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    deferred = _gate_after_batchnorm_case(x, gamma, beta, activation, w)()
    plain = _gate_after_batchnorm_case(x, gamma, beta, activation, w, defer=False)()
    for name, expected in plain.items():
        np.testing.assert_array_equal(deferred[name], expected, err_msg=name)
    y, _ = ops.batchnorm2d_activation_forward(x, gamma, beta, activation=activation, defer=True)
    s = np.linspace(0, 1, 7 * 6, dtype=np.float32).reshape(7, 6, 1, 1)
    np.testing.assert_array_equal(ops.ScaledMap(y, s).materialize(), y.materialize() * s)


def test_a_scaled_map_with_a_gate_of_the_wrong_shape_is_refused(rng):
    x, s, w = _gate_inputs(rng, np.float32, 2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"expected the ScaledMap's s of shape \(2, 3, 1, 1\), "
                                         r"got \(1, 3, 1, 1\)"):
        ops.pointwise_conv2d_forward(ops.ScaledMap(x, s[:1]), w)
    with pytest.raises(ValueError, match="expected the ScaledMap's s of rank 4, got shape"):
        ops.pointwise_conv2d_forward(ops.ScaledMap(x, s.reshape(2, 3)), w)


@pytest.mark.parametrize("rung", kernels.RUNGS)
def test_a_deferred_batchnorm_computes_the_same_constants_and_map(rng, batchnorm_layout, rung):
    """defer=True: the statistics and constants of the ordinary forward, and a NormalizedMap
    whose materialize() is the ordinary output (bit for bit on the fast rung, which computes
    both with the same operations)."""
    x, gamma, beta, _ = _normalized_inputs(rng, np.float64, 4, 3, 5, 5, 3)
    with kernels.use(rung):
        out, cache = ops.batchnorm2d_activation_forward(x, gamma, beta, activation="relu6")
        normalized, deferred = ops.batchnorm2d_activation_forward(x, gamma, beta,
                                                                  activation="relu6", defer=True)
    for name in ("mean", "var", "scale", "shift"):
        np.testing.assert_array_equal(getattr(deferred, name), getattr(cache, name), name)
    assert normalized.shape == x.shape and normalized.dtype == x.dtype
    if rung == "fast":
        np.testing.assert_array_equal(normalized.materialize(), out)
    else:
        _assert_close(normalized.materialize(), out, np.float64, f"{rung}: materialize()")


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_inference_rungs_match(rng, dtype):
    x, gamma, beta, mean = _arrays(rng, dtype, (2, 3, 4, 5), (3,), (3,), (3,))
    var = rng.uniform(0.5, 2.0, 3).astype(dtype)

    def run():
        out, cache = ops.batchnorm2d_inference_forward(x, gamma, beta, mean, var, eps=1e-3)
        dx, dgamma, dbeta = ops.batchnorm2d_inference_backward(np.ones_like(out), cache)
        return {"out": out, "dx": dx, "dgamma": dgamma}
    _compare_rungs(run, dtype)


ACTIVATIONS = ["relu", "relu6", "hardswish", "hardsigmoid"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_rungs_match_including_the_kinks(rng, dtype, name):
    # Exactly at the kinks every rung must take PyTorch's side.
    kinks = np.array([-3.0, 0.0, 3.0, 6.0, -4.0, 7.0, 1.5])
    x = np.concatenate([kinks, rng.uniform(-8, 8, 50)]).astype(dtype).reshape(1, 1, 1, -1)
    dout = rng.standard_normal(x.shape).astype(dtype)
    forward, backward = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")

    def run():
        out, cache = forward(x)
        return {"out": out, "dx": backward(dout, cache)}
    _compare_rungs(run, dtype)


def test_activation_gradients_at_the_kinks_are_pytorchs():
    """The values at the kinks themselves, on the loops rung that the others are checked
    against: ReLU 0 at 0; ReLU6 0 at 0 and 6; hard-swish -1/2 at -3 and 3/2 at 3 (the closed
    [-3, 3]); hard-sigmoid 0 at +-3 (the open (-3, 3))."""
    x = np.array([-3.0, 0.0, 3.0, 6.0]).reshape(1, 1, 1, 4)
    expected = {"relu": [0, 0, 1, 1], "relu6": [0, 0, 1, 0], "hardswish": [-0.5, 0.5, 1.5, 1],
                "hardsigmoid": [0, 1 / 6, 0, 0]}
    with kernels.use("loops"):
        for name, slopes in expected.items():
            _, cache = getattr(ops, f"{name}_forward")(x)
            dx = getattr(ops, f"{name}_backward")(np.ones_like(x), cache)
            np.testing.assert_allclose(dx.ravel(), slopes, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_scale_linear_dropout_and_loss_rungs_match(rng, dtype):
    x, w, b, s = _arrays(rng, dtype, (3, 4, 2, 5), (6, 4), (6,), (3, 4, 1, 1))

    def run():
        pooled, pool_cache = ops.global_avg_pool_forward(x)
        scaled, scale_cache = ops.scale_channels_forward(x, s)
        dscaled, ds = ops.scale_channels_backward(np.cos(x), scale_cache)
        out, cache = ops.linear_forward(pooled.reshape(3, 4), w, b)
        dropped, drop_cache = ops.dropout_forward(out, 0.3, np.random.default_rng(5))
        results = {"pool": pooled, "pool dx": ops.global_avg_pool_backward(np.sin(pooled),
                                                                           pool_cache),
                   "scaled": scaled, "scale dx": dscaled, "scale ds": ds, "linear": out,
                   "dropout": dropped, "dropout dx": ops.dropout_backward(np.cos(out),
                                                                          drop_cache)}
        for key, g in zip(("linear dx", "linear dw", "linear db"),
                          ops.linear_backward(np.sin(out), cache)):
            results[key] = g
        for smoothing in (0.0, 0.1):
            loss, dlogits = ops.softmax_cross_entropy(out, np.array([0, 5, 2]), smoothing)
            results[f"loss {smoothing}"] = np.array(loss, dtype=dtype)
            results[f"dlogits {smoothing}"] = dlogits
        return results
    _compare_rungs(run, dtype)


def test_bias_and_channel_sum_rungs_match(rng):
    out, b = _arrays(rng, np.float64, (3, 4, 2, 5), (4,))

    def run():
        biased = ops.add_channel_bias(out.copy(), b)
        return {"biased": biased, "sums": ops.channel_sum(biased)}
    _compare_rungs(run, np.float64)


conv_cases = st.tuples(
    st.integers(1, 3),  # N
    st.integers(1, 5),  # C
    st.integers(1, 9),  # H
    st.integers(1, 9),  # W
    st.sampled_from([1, 3, 5]),  # K
    st.sampled_from([1, 2, 3]),  # stride (3: the general phase split, unused by MobileNet)
    st.booleans(),  # same padding (K // 2) or none
)


@settings(max_examples=60, deadline=None)
@given(case=conv_cases, channels_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_depthwise_rungs_match_on_fuzzed_shapes(case, channels_last, seed):
    N, C, H, W, K, stride, same = case
    pad = K // 2 if same else 0
    if H + 2 * pad < K or W + 2 * pad < K:
        return
    x, w = _arrays(np.random.default_rng(seed), np.float64, (N, C, H, W), (C, 1, K, K))
    # Not monkeypatch: hypothesis runs every example inside one call of the test.
    saved = tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS
    tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS = 10**9 if channels_last else 0
    try:
        _compare_rungs(_depthwise_case(x, w, stride, pad), np.float64)
    finally:
        tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS = saved


@settings(max_examples=40, deadline=None)
@given(case=conv_cases, c_out=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_conv2d_rungs_match_on_fuzzed_shapes(case, c_out, seed):
    N, C, H, W, K, stride, same = case
    pad = K // 2 if same else 0
    if H + 2 * pad < K or W + 2 * pad < K:
        return
    x, w = _arrays(np.random.default_rng(seed), np.float64, (N, C, H, W), (c_out, C, K, K))
    _compare_rungs(_conv2d_case(x, w, stride, pad), np.float64)


def test_depthwise_kernel_is_deterministic_across_runs(rng, depthwise_layout):
    x, w = _arrays(rng, np.float32, (8, 16, 12, 12), (16, 1, 3, 3))
    out, cache = ops.depthwise_conv2d_forward(x, w)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    first = ops.depthwise_conv2d_backward(dout, cache)
    for _ in range(3):
        again = ops.depthwise_conv2d_backward(dout, cache)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_depthwise_backward_is_the_same_for_any_channel_block(rng):
    """The plane-path backward hands each task a block of channels (its size comes from the
    thread count): every block size, dividing C or not, gives the simple rung's gradients and
    the same bits."""
    x, w = _arrays(rng, np.float64, (3, 7, 9, 8), (7, 1, 3, 3))
    dout = rng.standard_normal((3, 7, 5, 4))
    sdx, sdw = np.empty_like(x), np.empty_like(w)
    depthwise.depthwise_conv2d_backward_simple(sdx, sdw, dout, x, w, 2, 1)
    results = []
    for block in (1, 3, 4, 7, 16):
        dx, dw = np.empty_like(x), np.empty_like(w)
        depthwise.depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, 2, 1, block,
                                                         *depthwise.no_prologue(x))
        _assert_close(dx, sdx, np.float64, f"dx, blocks of {block}")
        _assert_close(dw, sdw, np.float64, f"dw, blocks of {block}")
        results.append((dx, dw))
    for dx, dw in results[1:]:
        assert np.array_equal(dx, results[0][0]) and np.array_equal(dw, results[0][1])


@pytest.mark.parametrize("rung", ["simple", "fast"])
@pytest.mark.parametrize("op", ["pointwise_per_image", "pointwise_channel_major",
                                "pointwise_groups", "normalized_pointwise_per_image",
                                "normalized_pointwise_groups", "scaled_pointwise_per_image",
                                "scaled_pointwise_groups", "gated_pointwise_per_image",
                                "gated_pointwise_groups", "projection_pointwise_per_image",
                                "projection_pointwise_groups", "conv2d",
                                "depthwise_stride1", "depthwise_stride2",
                                "depthwise_channels_last", "pool", "gate", "pool_normalized",
                                "gate_normalized",
                                "batchnorm_by_image", "batchnorm_by_channel"])
def test_results_are_the_same_for_any_thread_count(rng, monkeypatch, rung, op):
    """Every kernel writes disjoint outputs and sums over the batch in a fixed split
    (tuning.SUM_TASKS), so one thread and all threads give the same bits."""
    # arrays this small would otherwise run on one thread anyway (kernels.threads_for)
    monkeypatch.setattr(tuning, "SERIAL_MAX_ELEMENTS", 0)
    x = rng.standard_normal((9, 6, 10, 10)).astype(np.float32)
    if "pointwise" in op:
        _force_pointwise_layout(monkeypatch, op.split("pointwise_")[1])
        # a projection (fewer outputs than inputs) makes its weight gradient the other way round
        w = rng.standard_normal((4 if op.startswith("projection") else 8, 6, 1, 1)).astype(
            np.float32)
        scale, shift = np.linspace(0.5, 2, 6, dtype=np.float32), np.full(6, 0.1, np.float32)
        gate = np.linspace(0, 1, 9 * 6, dtype=np.float32).reshape(9, 6, 1, 1)
        read = (ops.NormalizedMap(x, scale, shift, "relu6") if op.startswith("normalized") else
                ops.ScaledMap(x, gate) if op.startswith("scaled") else
                ops.ScaledMap(ops.NormalizedMap(x, scale, shift, "hardswish"), gate)
                if op.startswith("gated") else
                ops.NormalizedMap(x, scale, shift, "relu") if op.startswith("projection") else x)
        forward, backward = (lambda: ops.pointwise_conv2d_forward(read, w, w[:, 0, 0, 0]),
                             ops.pointwise_conv2d_backward)
    elif op == "conv2d":
        w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
        forward, backward = lambda: ops.conv2d_forward(x, w, 1, 1), ops.conv2d_backward
    elif op.startswith(("pool", "gate")):  # the sums of squeeze-excite, plain or read normalised
        scale, shift = np.linspace(0.5, 2, 6, dtype=np.float32), np.full(6, 0.1, np.float32)
        read = (ops.NormalizedMap(x, scale, shift, "hardswish") if op.endswith("normalized")
                else x)
        gate = np.linspace(0, 1, 9 * 6, dtype=np.float32).reshape(9, 6, 1, 1)
        forward, backward = ((lambda: ops.global_avg_pool_forward(read)),
                             ops.global_avg_pool_backward) if op.startswith("pool") else (
                             (lambda: ops.scale_channels_forward(read, gate)),
                             ops.scale_channels_backward)
    elif op.startswith("batchnorm"):
        monkeypatch.setattr(tuning, "BN_BY_IMAGE_MAX_PIXELS", 10**9 if op.endswith("image") else 0)
        gamma, beta = np.linspace(0.5, 2, 6, dtype=np.float32), np.zeros(6, np.float32)
        forward, backward = (lambda: ops.batchnorm2d_activation_forward(x, gamma, beta),
                             ops.batchnorm2d_activation_backward)
    else:
        monkeypatch.setattr(tuning, "DEPTHWISE_CHANNELS_LAST_MAX_PIXELS",
                            10**9 if op.endswith("last") else 0)
        w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
        stride = 1 if op.endswith("stride1") else 2
        forward, backward = (lambda: ops.depthwise_conv2d_forward(x, w, stride, 1),
                             ops.depthwise_conv2d_backward)
    results = []
    threads = numba.get_num_threads()
    most = numba.config.NUMBA_NUM_THREADS  # all of Numba's threads, whatever is in force now
    if most < 2:
        pytest.skip("one thread only: nothing to compare")
    try:
        with kernels.use(rung):
            for n in (1, most):
                numba.set_num_threads(n)
                out, cache = forward()
                dout = np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape)
                results.append((out, *[g for g in backward(dout, cache) if g is not None]))
    finally:
        numba.set_num_threads(threads)
    for first, other in zip(results[0], results[-1]):
        assert np.array_equal(first, other)


def test_use_selects_the_rung_and_puts_the_old_one_back():
    assert kernels.current() == "fast"
    with kernels.use("loops"):
        assert kernels.current() == "loops"
        with kernels.use("simple"):
            assert kernels.pick(depthwise, "depthwise_conv2d_forward") is \
                depthwise.depthwise_conv2d_forward_simple
        assert kernels.current() == "loops"
    assert kernels.current() == "fast"
    with pytest.raises(RuntimeError), kernels.use("simple"):
        raise RuntimeError("an op failed inside")
    assert kernels.current() == "fast"
    with pytest.raises(ValueError, match="expected one of loops, simple, fast, got 'quick'"):
        with kernels.use("quick"):
            pass


def test_every_op_family_has_all_three_rungs():
    """A rung missing for one op would make `kernels.use` fail mid-network."""
    for module in (kernels.depthwise, kernels.matmul, kernels.batchnorm, kernels.elementwise,
                   kernels.int8, kernels.updates):
        names = {n.rsplit("_", 1)[0] for n in dir(module)
                 if n.endswith(("_loops", "_simple", "_fast")) and not n.startswith("_")}
        for name in names:
            for rung in kernels.RUNGS:
                assert hasattr(module, f"{name}_{rung}"), f"{module.__name__}.{name}_{rung}"


@pytest.mark.parametrize("value, ok", [("simple", True), ("quick", False)])
def test_the_environment_variable_selects_the_rung(value, ok):
    env = dict(os.environ, MINIMOBILE_KERNELS=value)
    result = subprocess.run([sys.executable, "-c", "import minimobile as mm; "
                             "print(mm.kernels.current())"], env=env, capture_output=True,
                            text=True)
    if ok:
        assert result.returncode == 0 and result.stdout.strip() == value
    else:
        assert result.returncode != 0
        assert "SettingError: MINIMOBILE_KERNELS: expected one of loops, simple, fast, got " \
            "'quick'" in result.stderr


@pytest.mark.parametrize("variable, value", [("MINIMOBILE_KERNELS", "quick"),
                                             ("MINIMOBILE_BLAS_THREADS", "-1")])
def test_a_bad_environment_variable_lets_the_import_pass_and_stops_the_first_kernel(variable,
                                                                                    value):
    """`import minimobile` must not fail (the command line could not then report it in one
    line); the first op must, before it runs on a rung or BLAS setting nobody asked for."""
    script = ("import numpy as np, minimobile as mm\n"
              "print('imported', flush=True)\n"
              "mm.ops.relu_forward(np.ones(3, np.float32))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, **{variable: value}))
    assert result.stdout == "imported\n"
    assert result.returncode != 0 and f"SettingError: {variable}: expected" in result.stderr


def test_small_arrays_run_on_one_thread_and_the_count_comes_back(monkeypatch):
    seen = []
    monkeypatch.setattr(tuning, "SERIAL_MAX_ELEMENTS", 100)
    threads = numba.get_num_threads()
    for size in (100, 101):
        with kernels.threads_for(size):
            seen.append(numba.get_num_threads())
        assert numba.get_num_threads() == threads
    assert seen == [1, threads]
    with pytest.raises(RuntimeError), kernels.threads_for(10):
        raise RuntimeError("a kernel failed")
    assert numba.get_num_threads() == threads


@pytest.mark.parametrize("env, expected", [({}, str(tuning.GOMP_SPINCOUNT)),
                                           ({"GOMP_SPINCOUNT": "300000"}, "300000"),
                                           ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")])
def test_waiting_threads_sleep_unless_the_environment_says_otherwise(env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", "import os, minimobile; "
                             "print(os.environ.get('GOMP_SPINCOUNT'))"],
                            env={**base, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_the_thread_settings_are_described_in_one_line(monkeypatch):
    from minimobile import parallel
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    line = parallel.describe()
    assert f"threads: {numba.get_num_threads()} Numba" in line and "after 123 spins" in line
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "OMP_WAIT_POLICY=PASSIVE" in parallel.describe()
