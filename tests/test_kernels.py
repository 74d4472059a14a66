"""The Numba kernels (through the ops that call them) against the slow loop references.

float64 must agree to 1e-10 and float32 to 1e-5, relative to the largest magnitude, on shapes
that cover stride 2, odd and non-square sizes, K = 5, one channel and batch 1, and on shapes
drawn by hypothesis for the convolutions.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimobile import kernels, ops, reference
from minimobile.gradcheck import relative_error

TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]

# (N, C, H, W, K, stride)
CONV_SHAPES = [
    (2, 3, 7, 7, 3, 1),
    (2, 3, 7, 7, 3, 2),
    (1, 1, 5, 5, 5, 1),
    (2, 4, 8, 8, 5, 2),
    (1, 2, 6, 9, 3, 2),
    (3, 1, 4, 4, 3, 1),
    (1, 5, 2, 3, 3, 1),
    (2, 3, 9, 11, 3, 2),  # planes of more than kernels.PIXEL_ORDER_MAX_PIXELS pixels
]


def _arrays(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _assert_close(actual, expected, dtype, what):
    err = relative_error(actual, expected)
    assert err < TOL[dtype], f"{what}: relative error {err:.2e} above {TOL[dtype]:.0e}"


@pytest.fixture(params=["planes", "channels_last"])
def depthwise_layout(request, monkeypatch):
    """The depthwise conv runs plane by plane on large maps and channels last on small ones:
    tests that take this fixture run once with each forced."""
    monkeypatch.setattr(ops, "DEPTHWISE_CHANNELS_LAST_MAX_PIXELS",
                        10**9 if request.param == "channels_last" else 0)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,K,stride", CONV_SHAPES)
def test_depthwise_kernels_match_reference(rng, depthwise_layout, dtype, N, C, H, W, K, stride):
    pad = K // 2
    x, w = _arrays(rng, dtype, (N, C, H, W), (C, 1, K, K))
    out, cache = ops.depthwise_conv2d_forward(x, w, stride, pad)
    _assert_close(out, reference.depthwise_conv2d_forward(x, w, stride, pad), dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw = ops.depthwise_conv2d_backward(dout, cache)
    rdx, rdw = reference.depthwise_conv2d_backward(dout, x, w, stride, pad)
    _assert_close(dx, rdx, dtype, "dx")
    _assert_close(dw, rdw, dtype, "dw")
    assert out.dtype == dx.dtype == dw.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,K,stride", CONV_SHAPES)
def test_conv2d_kernels_match_reference(rng, dtype, N, C, H, W, K, stride):
    pad = K // 2
    x, w = _arrays(rng, dtype, (N, C, H, W), (4, C, K, K))
    out, cache = ops.conv2d_forward(x, w, stride, pad)
    _assert_close(out, reference.conv2d_forward(x, w, stride, pad), dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw = ops.conv2d_backward(dout, cache)
    rdx, rdw = reference.conv2d_backward(dout, x, w, stride, pad)
    _assert_close(dx, rdx, dtype, "dx")
    _assert_close(dw, rdw, dtype, "dw")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N,C_in,C_out,H,W", [(2, 3, 5, 4, 4), (1, 1, 1, 3, 5), (3, 6, 2, 1, 1),
                                               (2, 3, 5, 8, 8), (3, 4, 2, 9, 11), (1, 2, 3, 8, 9)])
def test_pointwise_kernels_match_reference(rng, dtype, bias, N, C_in, C_out, H, W):
    x, w, b = _arrays(rng, dtype, (N, C_in, H, W), (C_out, C_in, 1, 1), (C_out,))
    b = b if bias else None
    out, cache = ops.pointwise_conv2d_forward(x, w, b)
    _assert_close(out, reference.pointwise_conv2d_forward(x, w, b), dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = ops.pointwise_conv2d_backward(dout, cache)
    rdx, rdw, rdb = reference.pointwise_conv2d_backward(dout, x, w, b)
    _assert_close(dx, rdx, dtype, "dx")
    _assert_close(dw, rdw, dtype, "dw")
    if bias:
        _assert_close(db, rdb, dtype, "db")
    else:
        assert db is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 1, 3, 2), (5, 6, 1, 1)])
def test_batchnorm_kernels_match_reference(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma, beta = _arrays(rng, dtype, shape[1:2], shape[1:2])
    out, cache = ops.batchnorm2d_forward(x, gamma, beta, eps=1e-5)
    rout, rmean, rvar = reference.batchnorm2d_forward(x, gamma, beta, eps=1e-5)
    _assert_close(out, rout, dtype, "out")
    _assert_close(cache.mean, rmean, dtype, "batch mean")
    _assert_close(cache.var, rvar, dtype, "batch variance")
    dout = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = ops.batchnorm2d_backward(dout, cache)
    rdx, rdgamma, rdbeta = reference.batchnorm2d_backward(dout, x, gamma, eps=1e-5)
    _assert_close(dx, rdx, dtype, "dx")
    _assert_close(dgamma, rdgamma, dtype, "dgamma")
    _assert_close(dbeta, rdbeta, dtype, "dbeta")


FUSED = [None, "relu", "relu6", "hardswish"]


@pytest.mark.parametrize("by_image", [True, False])
@pytest.mark.parametrize("activation", FUSED)
def test_batchnorm_both_loop_orders_match_reference(rng, monkeypatch, by_image, activation):
    """Batch norm runs image by image on small maps and channel by channel on large ones:
    force each, in float64 at 1e-10, with every fused activation."""
    monkeypatch.setattr(ops, "BN_BY_IMAGE_MAX_PIXELS", 10**9 if by_image else 0)
    x = rng.standard_normal((5, 4, 3, 7)) * 3 + 2
    gamma = rng.uniform(1, 4, 4)
    beta = rng.uniform(-2, 4, 4)
    out, cache = ops.batchnorm2d_activation_forward(x, gamma, beta, 1e-5, activation)
    rout, rmean, rvar = reference.batchnorm2d_activation_forward(x, gamma, beta, 1e-5,
                                                                 activation)
    _assert_close(out, rout, np.float64, "out")
    _assert_close(cache.mean, rmean, np.float64, "batch mean")
    _assert_close(cache.var, rvar, np.float64, "batch variance")
    dout = rng.standard_normal(x.shape)
    grads = ops.batchnorm2d_activation_backward(dout, cache)
    rgrads = reference.batchnorm2d_activation_backward(dout, x, gamma, beta, 1e-5, activation)
    for name, g, r in zip(("dx", "dgamma", "dbeta"), grads, rgrads):
        _assert_close(g, r, np.float64, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED)
def test_fused_batchnorm_activation_matches_reference(rng, dtype, activation):
    # Scaled so that the normalised values straddle every kink (0, 6 and +-3).
    x = (rng.standard_normal((3, 4, 5, 6)) * 3 + 2).astype(dtype)
    gamma = rng.uniform(1, 4, 4).astype(dtype)
    beta = rng.uniform(-2, 4, 4).astype(dtype)
    out, cache = ops.batchnorm2d_activation_forward(x, gamma, beta, 1e-5, activation)
    rout, rmean, rvar = reference.batchnorm2d_activation_forward(x, gamma, beta, 1e-5,
                                                                 activation)
    _assert_close(out, rout, dtype, "out")
    _assert_close(cache.mean, rmean, dtype, "batch mean")
    dout = rng.standard_normal(x.shape).astype(dtype)
    grads = ops.batchnorm2d_activation_backward(dout, cache)
    rgrads = reference.batchnorm2d_activation_backward(dout, x, gamma, beta, 1e-5, activation)
    for name, g, r in zip(("dx", "dgamma", "dbeta"), grads, rgrads):
        _assert_close(g, r, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", FUSED[1:])
def test_fused_batchnorm_activation_is_bitwise_the_unfused_pair(rng, dtype, activation):
    """Fusion is an optimisation only: the same bits as batch norm then the activation."""
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_inference_kernel_matches_reference(rng, dtype):
    x, gamma, beta, mean = _arrays(rng, dtype, (2, 3, 4, 5), (3,), (3,), (3,))
    var = rng.uniform(0.5, 2.0, 3).astype(dtype)
    out, _ = ops.batchnorm2d_inference_forward(x, gamma, beta, mean, var, eps=1e-3)
    _assert_close(out, reference.batchnorm2d_inference_forward(x, gamma, beta, mean, var, 1e-3),
                  dtype, "out")


ACTIVATIONS = ["relu", "relu6", "hardswish", "hardsigmoid"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_kernels_match_reference_including_the_kinks(rng, dtype, name):
    # Exactly at the kinks the kernels must take PyTorch's side, like the reference does.
    kinks = np.array([-3.0, 0.0, 3.0, 6.0, -4.0, 7.0, 1.5])
    x = np.concatenate([kinks, rng.uniform(-8, 8, 50)]).astype(dtype).reshape(1, 1, 1, -1)
    forward, backward = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
    out, cache = forward(x)
    _assert_close(out, getattr(reference, f"{name}_forward")(x), dtype, "out")
    dout = rng.standard_normal(x.shape).astype(dtype)
    _assert_close(backward(dout, cache), getattr(reference, f"{name}_backward")(dout, x), dtype,
                  "dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_linear_and_loss_match_reference(rng, dtype):
    x, w, b = _arrays(rng, dtype, (3, 4, 2, 5), (6, 4), (6,))
    pooled, cache = ops.global_avg_pool_forward(x)
    _assert_close(pooled, reference.global_avg_pool_forward(x), dtype, "pool out")
    dpool = rng.standard_normal(pooled.shape).astype(dtype)
    _assert_close(ops.global_avg_pool_backward(dpool, cache),
                  reference.global_avg_pool_backward(dpool, x), dtype, "pool dx")
    flat = pooled.reshape(3, 4)
    out, cache = ops.linear_forward(flat, w, b)
    _assert_close(out, reference.linear_forward(flat, w, b), dtype, "linear out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want, what in zip(ops.linear_backward(dout, cache),
                               reference.linear_backward(dout, flat, w), ("dx", "dw", "db")):
        _assert_close(got, want, dtype, f"linear {what}")
    labels = np.array([0, 5, 2])
    for smoothing in (0.0, 0.1):
        loss, dlogits = ops.softmax_cross_entropy(out, labels, smoothing)
        rloss, rdlogits = reference.softmax_cross_entropy(out, labels, smoothing)
        assert abs(loss - rloss) < TOL[dtype] * abs(rloss)
        _assert_close(dlogits, rdlogits, dtype, "dlogits")


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
def test_depthwise_kernels_match_reference_on_fuzzed_shapes(case, channels_last, seed):
    N, C, H, W, K, stride, same = case
    pad = K // 2 if same else 0
    if H + 2 * pad < K or W + 2 * pad < K:
        return
    # Not monkeypatch: hypothesis runs every example inside one call of the test.
    saved = ops.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS
    ops.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS = 10**9 if channels_last else 0
    try:
        _check_depthwise_against_reference(N, C, H, W, K, stride, pad, seed)
    finally:
        ops.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS = saved


def _check_depthwise_against_reference(N, C, H, W, K, stride, pad, seed):
    rng = np.random.default_rng(seed)
    x, w = _arrays(rng, np.float64, (N, C, H, W), (C, 1, K, K))
    out, cache = ops.depthwise_conv2d_forward(x, w, stride, pad)
    _assert_close(out, reference.depthwise_conv2d_forward(x, w, stride, pad), np.float64, "out")
    dout = rng.standard_normal(out.shape)
    dx, dw = ops.depthwise_conv2d_backward(dout, cache)
    rdx, rdw = reference.depthwise_conv2d_backward(dout, x, w, stride, pad)
    _assert_close(dx, rdx, np.float64, "dx")
    _assert_close(dw, rdw, np.float64, "dw")


@settings(max_examples=40, deadline=None)
@given(case=conv_cases, c_out=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_conv2d_kernels_match_reference_on_fuzzed_shapes(case, c_out, seed):
    N, C, H, W, K, stride, same = case
    pad = K // 2 if same else 0
    if H + 2 * pad < K or W + 2 * pad < K:
        return
    rng = np.random.default_rng(seed)
    x, w = _arrays(rng, np.float64, (N, C, H, W), (c_out, C, K, K))
    out, cache = ops.conv2d_forward(x, w, stride, pad)
    _assert_close(out, reference.conv2d_forward(x, w, stride, pad), np.float64, "out")
    dout = rng.standard_normal(out.shape)
    dx, dw = ops.conv2d_backward(dout, cache)
    rdx, rdw = reference.conv2d_backward(dout, x, w, stride, pad)
    _assert_close(dx, rdx, np.float64, "dx")
    _assert_close(dw, rdw, np.float64, "dw")


def test_depthwise_kernel_is_deterministic_across_runs(rng, depthwise_layout):
    x, w = _arrays(rng, np.float32, (8, 16, 12, 12), (16, 1, 3, 3))
    out, cache = ops.depthwise_conv2d_forward(x, w)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    first = ops.depthwise_conv2d_backward(dout, cache)
    for _ in range(3):
        again = ops.depthwise_conv2d_backward(dout, cache)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("per_image", [True, False])
def test_pointwise_both_layouts_match_reference(rng, monkeypatch, per_image):
    """The 1x1 conv runs per image on large maps and channel-major on small ones: force each."""
    monkeypatch.setattr(ops, "PER_IMAGE_MIN_PIXELS", 1 if per_image else 10**9)
    x, w, b = _arrays(rng, np.float64, (3, 4, 5, 6), (7, 4, 1, 1), (7,))
    out, cache = ops.pointwise_conv2d_forward(x, w, b)
    assert cache.per_image == per_image
    _assert_close(out, reference.pointwise_conv2d_forward(x, w, b), np.float64, "out")
    dout = rng.standard_normal(out.shape)
    for got, expected, name in zip(ops.pointwise_conv2d_backward(dout, cache),
                                   reference.pointwise_conv2d_backward(dout, x, w, b),
                                   ("dx", "dw", "db")):
        _assert_close(got, expected, np.float64, name)


def test_depthwise_backward_is_the_same_for_any_channel_block(rng):
    """The plane-by-plane backward hands each task a block of channels (ops picks the size
    from the thread count): every block size, dividing C or not, gives the reference's
    gradients and the same bits."""
    x, w = _arrays(rng, np.float64, (3, 7, 9, 8), (7, 1, 3, 3))
    dout = rng.standard_normal((3, 7, 5, 4))
    rdx, rdw = reference.depthwise_conv2d_backward(dout, x, w, 2, 1)
    results = []
    for block in (1, 3, 4, 7, 16):
        dx, dw = np.empty_like(x), np.empty_like(w)
        kernels.depthwise_conv2d_backward_kernel(dx, dw, dout, x, w, 2, 1, block)
        _assert_close(dx, rdx, np.float64, f"dx, blocks of {block}")
        _assert_close(dw, rdw, np.float64, f"dw, blocks of {block}")
        results.append((dx, dw))
    for dx, dw in results[1:]:
        assert np.array_equal(dx, results[0][0]) and np.array_equal(dw, results[0][1])


@pytest.mark.parametrize("op", ["pointwise_per_image", "pointwise_channel_major", "conv2d",
                                "depthwise_stride2", "depthwise_channels_last",
                                "batchnorm_by_image"])
def test_weight_gradients_are_the_same_for_any_thread_count(rng, monkeypatch, op):
    """Weight gradients sum over the batch in a fixed split (kernels.SUM_TASKS), so one thread
    and all threads give the same bits."""
    x = rng.standard_normal((9, 6, 10, 10)).astype(np.float32)
    if op.startswith("pointwise"):
        monkeypatch.setattr(ops, "PER_IMAGE_MIN_PIXELS", 1 if op.endswith("image") else 10**9)
        w = rng.standard_normal((8, 6, 1, 1)).astype(np.float32)
        forward, backward = (lambda: ops.pointwise_conv2d_forward(x, w, w[:, 0, 0, 0]),
                             ops.pointwise_conv2d_backward)
    elif op == "conv2d":
        w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
        forward, backward = lambda: ops.conv2d_forward(x, w, 1, 1), ops.conv2d_backward
    elif op == "batchnorm_by_image":
        monkeypatch.setattr(ops, "BN_BY_IMAGE_MAX_PIXELS", 10**9)
        gamma, beta = np.linspace(0.5, 2, 6, dtype=np.float32), np.zeros(6, np.float32)
        forward, backward = (lambda: ops.batchnorm2d_activation_forward(x, gamma, beta),
                             ops.batchnorm2d_activation_backward)
    else:
        monkeypatch.setattr(ops, "DEPTHWISE_CHANNELS_LAST_MAX_PIXELS",
                            10**9 if op.endswith("last") else 0)
        w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
        forward, backward = (lambda: ops.depthwise_conv2d_forward(x, w, 2, 1),
                             ops.depthwise_conv2d_backward)
    results = []
    threads = numba.get_num_threads()
    try:
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            out, cache = forward()
            dout = np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape)
            results.append((out, *[g for g in backward(dout, cache) if g is not None]))
    finally:
        numba.set_num_threads(threads)
    for first, other in zip(results[0], results[-1]):
        assert np.array_equal(first, other)
