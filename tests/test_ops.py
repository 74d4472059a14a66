"""Every op's backward against a float64 central difference of sum(f(x) * dout).

Relative error (scaled by the largest magnitude) must be below 1e-7. Inputs of the piecewise
activations are drawn away from their kinks, where a difference would straddle two pieces.
"""

import numpy as np
import pytest

from minimobile import NonFiniteError, ops
from minimobile.gradcheck import check_gradient, numerical_gradient, relative_error

GRAD_TOL = 1e-7

CONV_SHAPES = [  # (N, C, H, W, K, stride)
    (2, 3, 6, 6, 3, 1),
    (2, 3, 7, 7, 3, 2),
    (1, 1, 5, 5, 5, 1),
    (1, 2, 7, 6, 5, 2),
]


def assert_gradients(forward, backward, inputs, rng, what):
    """Run forward on `inputs` (a dict of float64 arrays), backward with a random dout, and
    compare each returned gradient with the central difference for the same input."""
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for (name, array), grad in zip(inputs.items(), grads):
        if grad is None:
            continue
        err = check_gradient(lambda: forward(**inputs)[0], array, grad, dout)
        assert err < GRAD_TOL, f"{what}: d{name} relative error {err:.2e}"


@pytest.mark.parametrize("N,C,H,W,K,stride", CONV_SHAPES)
def test_depthwise_backward_matches_numerical_gradient(rng, N, C, H, W, K, stride):
    inputs = dict(x=rng.standard_normal((N, C, H, W)), w=rng.standard_normal((C, 1, K, K)))
    assert_gradients(lambda x, w: ops.depthwise_conv2d_forward(x, w, stride, K // 2),
                     ops.depthwise_conv2d_backward, inputs, rng, "depthwise")


@pytest.mark.parametrize("N,C,H,W,K,stride", CONV_SHAPES)
def test_conv2d_backward_matches_numerical_gradient(rng, N, C, H, W, K, stride):
    inputs = dict(x=rng.standard_normal((N, C, H, W)), w=rng.standard_normal((3, C, K, K)))
    assert_gradients(lambda x, w: ops.conv2d_forward(x, w, stride, K // 2),
                     ops.conv2d_backward, inputs, rng, "conv2d")


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_backward_matches_numerical_gradient(rng, bias):
    inputs = dict(x=rng.standard_normal((2, 3, 4, 5)), w=rng.standard_normal((4, 3, 1, 1)))
    if bias:
        inputs["b"] = rng.standard_normal(4)
    assert_gradients(ops.pointwise_conv2d_forward, ops.pointwise_conv2d_backward, inputs, rng,
                     "pointwise")


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (1, 2, 5, 1), (6, 1, 1, 1)])
def test_batchnorm_backward_matches_numerical_gradient(rng, shape):
    # Through the pure op, so probing does not move any running statistics.
    inputs = dict(x=rng.standard_normal(shape) * 2 + 1, gamma=rng.standard_normal(shape[1]),
                  beta=rng.standard_normal(shape[1]))
    assert_gradients(ops.batchnorm2d_forward, ops.batchnorm2d_backward, inputs, rng, "bn")


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hardswish"])
def test_fused_batchnorm_activation_backward_matches_numerical_gradient(rng, activation):
    # gamma and beta spread the normalised values over every piece of every activation.
    inputs = dict(x=rng.standard_normal((3, 2, 4, 4)), gamma=rng.uniform(1, 4, 2),
                  beta=rng.uniform(-2, 4, 2))
    assert_gradients(
        lambda x, gamma, beta: ops.batchnorm2d_activation_forward(x, gamma, beta,
                                                                  activation=activation),
        ops.batchnorm2d_activation_backward, inputs, rng, f"bn + {activation}")


def test_fused_batchnorm_rejects_an_activation_it_cannot_fuse():
    x = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"batchnorm2d_activation: expected activation None or "
                                         r"one of .*relu6.*, got 'hardsigmoid'"):
        ops.batchnorm2d_activation_forward(x, np.ones(3), np.zeros(3), activation="hardsigmoid")


def test_batchnorm_inference_backward_matches_numerical_gradient(rng):
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    inputs = dict(x=rng.standard_normal((2, 3, 4, 4)), gamma=rng.standard_normal(3),
                  beta=rng.standard_normal(3))
    assert_gradients(
        lambda x, gamma, beta: ops.batchnorm2d_inference_forward(x, gamma, beta, mean, var),
        ops.batchnorm2d_inference_backward, inputs, rng, "bn inference")


def _away_from(kinks, rng, shape, low=-8, high=8, margin=0.01):
    x = rng.uniform(low, high, shape)
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] += 2 * margin
    return x


@pytest.mark.parametrize("name,kinks", [("relu", [0]), ("relu6", [0, 6]),
                                        ("hardswish", [-3, 3]), ("hardsigmoid", [-3, 3])])
def test_activation_backward_matches_numerical_gradient(rng, name, kinks):
    inputs = dict(x=_away_from(kinks, rng, (2, 3, 4, 5)))
    assert_gradients(getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward"), inputs,
                     rng, name)


@pytest.mark.parametrize("name,x,grad", [
    ("relu6", [0.0, 6.0, 3.0, -1.0, 7.0], [0, 0, 1, 0, 0]),
    ("hardswish", [-3.0, 3.0, 0.0, -4.0, 4.0], [-0.5, 1.5, 0.5, 0, 1]),
    ("hardsigmoid", [-3.0, 3.0, 0.0, -4.0, 4.0], [0, 0, 1 / 6, 0, 0]),
    ("relu", [0.0, 1.0, -1.0], [0, 1, 0]),
])
def test_activation_gradients_at_the_kinks_follow_pytorch(name, x, grad):
    x = np.array(x).reshape(1, -1)
    _, cache = getattr(ops, f"{name}_forward")(x)
    dx = getattr(ops, f"{name}_backward")(np.ones_like(x), cache)
    np.testing.assert_allclose(dx.ravel(), grad)


def test_global_avg_pool_backward_matches_numerical_gradient(rng):
    assert_gradients(ops.global_avg_pool_forward, ops.global_avg_pool_backward,
                     dict(x=rng.standard_normal((2, 3, 3, 5))), rng, "pool")


def test_scale_channels_backward_matches_numerical_gradient(rng):
    inputs = dict(x=rng.standard_normal((2, 3, 4, 4)), s=rng.standard_normal((2, 3, 1, 1)))
    assert_gradients(ops.scale_channels_forward, ops.scale_channels_backward, inputs, rng,
                     "scale")


def test_linear_backward_matches_numerical_gradient(rng):
    inputs = dict(x=rng.standard_normal((3, 5)), w=rng.standard_normal((4, 5)),
                  b=rng.standard_normal(4))
    assert_gradients(ops.linear_forward, ops.linear_backward, inputs, rng, "linear")


def test_dropout_backward_matches_numerical_gradient_for_a_fixed_mask(rng):
    x = rng.standard_normal((4, 6))
    _, cache = ops.dropout_forward(x, 0.3, np.random.default_rng(1))
    forward = lambda x: ops.dropout_forward(x, 0.3, np.random.default_rng(1))  # same mask
    assert_gradients(forward, ops.dropout_backward, dict(x=x), rng, "dropout")


def test_dropout_is_inverted_and_identity_in_eval(rng):
    x = np.ones((200, 500))
    out, _ = ops.dropout_forward(x, 0.25, rng)
    assert set(np.unique(out)) == {0.0, 1 / 0.75}
    assert abs(out.mean() - 1) < 0.01
    assert np.array_equal(ops.dropout_forward(x, 0.25, rng, training=False)[0], x)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_gradient_matches_numerical_gradient(rng, smoothing):
    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, 5)
    _, dlogits = ops.softmax_cross_entropy(logits, labels, smoothing)
    numeric = numerical_gradient(lambda: ops.softmax_cross_entropy(logits, labels, smoothing)[0],
                                 logits, 1.0)
    assert relative_error(dlogits, numeric) < GRAD_TOL


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [5e4, 5e4, 0.0]])
    loss, dlogits = ops.softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx(np.log(2) / 2)


def test_softmax_cross_entropy_of_uniform_logits_is_log_classes():
    loss, _ = ops.softmax_cross_entropy(np.zeros((4, 10)), np.arange(4))
    assert loss == pytest.approx(np.log(10))


def test_non_finite_logits_are_reported_not_carried_on():
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        ops.softmax_cross_entropy(np.array([[0.0, np.nan]]), np.array([0]))


@pytest.mark.parametrize("call,message", [
    (lambda: ops.depthwise_conv2d_forward(np.zeros((2, 3, 5)), np.zeros((3, 1, 3, 3))),
     r"depthwise_conv2d: expected x of rank 4, got shape \(2, 3, 5\)"),
    (lambda: ops.depthwise_conv2d_forward(np.zeros((2, 3, 5, 5)), np.zeros((4, 1, 3, 3))),
     r"depthwise_conv2d: expected w of shape \(3, 1, K, K\).*got \(4, 1, 3, 3\)"),
    (lambda: ops.pointwise_conv2d_forward(np.zeros((2, 3, 5, 5)), np.zeros((4, 2, 1, 1))),
     r"pointwise_conv2d: expected w of shape \(C_out, 3, 1, 1\).*got \(4, 2, 1, 1\)"),
    (lambda: ops.conv2d_forward(np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3), np.float32)),
     r"conv2d: expected w of dtype float64 like x, got float32"),
    (lambda: ops.conv2d_forward(np.zeros((2, 3, 5, 5), np.int64), np.zeros((4, 3, 3, 3))),
     r"conv2d: expected x of dtype float32 or float64, got int64"),
    (lambda: ops.batchnorm2d_forward(np.zeros((2, 3, 5, 5)), np.ones(4), np.zeros(4)),
     r"batchnorm2d: expected gamma of shape \(3,\), got \(4,\)"),
    (lambda: ops.linear_forward(np.zeros((2, 5)), np.zeros((3, 4)), None),
     r"linear: expected w of shape \(out_features, 5\).*got \(3, 4\)"),
    (lambda: ops.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
     r"softmax_cross_entropy: expected labels in \[0, 3\), got values from 0 to 3"),
    (lambda: ops.depthwise_conv2d_forward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 5, 5)), 1, 0),
     r"depthwise_conv2d: kernel 5x5 does not fit input 2x2"),
    # A NormalizedMap's constants are read once per channel: a short one would read past its end.
    (lambda: ops.depthwise_conv2d_forward(
        ops.NormalizedMap(np.zeros((1, 3, 4, 4)), np.ones(2), np.zeros(3), "relu"),
        np.zeros((3, 1, 3, 3))),
     r"depthwise_conv2d: expected the NormalizedMap's scale of shape \(3,\), got \(2,\)"),
    (lambda: ops.pointwise_conv2d_forward(
        ops.NormalizedMap(np.zeros((1, 3, 4, 4)), np.ones(3), np.zeros(5), None),
        np.zeros((2, 3, 1, 1))),
     r"pointwise_conv2d: expected the NormalizedMap's shift of shape \(3,\), got \(5,\)"),
    (lambda: ops.global_avg_pool_forward(
        ops.NormalizedMap(np.zeros((1, 3, 4, 4)), np.ones(3), np.zeros(3), "gelu")),
     r"global_avg_pool: expected the NormalizedMap's activation to be None or one of .*"
     r"got 'gelu'"),
    (lambda: ops.scale_channels_forward(
        ops.NormalizedMap(np.zeros((1, 3, 4, 4)), np.ones(3, np.float32), np.zeros(3), None),
        np.ones((1, 3, 1, 1))),
     r"scale_channels: expected scale of dtype float64 like the NormalizedMap's x, got float32"),
    (lambda: ops.global_avg_pool_forward(np.zeros((2, 3, 0, 0))),
     r"global_avg_pool: expected a map of at least 1x1 pixels, got shape \(2, 3, 0, 0\)"),
    (lambda: ops.add_channel_bias(np.zeros((2, 3, 4, 4)), np.zeros(3, np.float32)),
     r"add_channel_bias: expected b of dtype float64 like out, got float32"),
    (lambda: ops.add_channel_bias(np.zeros((2, 3, 4, 4))[:, :, ::2], np.zeros(3)),
     r"add_channel_bias: expected out to be a C-contiguous numpy array of rank 4"),
    (lambda: ops.batchnorm2d_forward(np.zeros((2, 3, 5, 5)), np.ones(3), np.zeros(3), eps="1e-5"),
     r"batchnorm2d: expected a finite number eps > 0, got '1e-5'"),
    (lambda: ops.batchnorm2d_inference_forward(np.zeros((2, 3, 5, 5)), np.ones(3), np.zeros(3),
                                               np.zeros(3), np.ones(3), eps=-1.0),
     r"batchnorm2d_inference: expected a finite number eps > 0, got -1.0"),
    (lambda: ops.dropout_forward(np.zeros((2, 3)), 0.5, None),
     r"dropout: expected rng to be a np.random.Generator .*got NoneType"),
    (lambda: ops.dropout_forward(np.zeros((2, 3)), "0.5", np.random.default_rng(0)),
     r"dropout: expected a number p with 0 <= p < 1, got p='0.5'"),
    (lambda: ops.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=None),
     r"softmax_cross_entropy: expected a number with 0 <= label_smoothing < 1, got None"),
])
def test_bad_input_raises_value_error_naming_op_and_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_backward_rejects_dout_of_the_wrong_shape(rng):
    _, cache = ops.depthwise_conv2d_forward(rng.standard_normal((1, 2, 4, 4)),
                                            rng.standard_normal((2, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"depthwise_conv2d backward: expected dout of shape "
                                         r"\(1, 2, 4, 4\), got \(1, 2, 3, 3\)"):
        ops.depthwise_conv2d_backward(np.zeros((1, 2, 3, 3)), cache)


def test_ops_accept_non_contiguous_input(rng):
    x = rng.standard_normal((2, 5, 5, 3)).transpose(0, 3, 1, 2)  # (2, 3, 5, 5), not contiguous
    w = rng.standard_normal((3, 1, 3, 3))
    out, _ = ops.depthwise_conv2d_forward(x, w)
    expected, _ = ops.depthwise_conv2d_forward(np.ascontiguousarray(x), w)
    assert np.array_equal(out, expected)


def test_gradient_checks_name_a_wrong_shape_step_or_index(rng):
    from minimobile.gradcheck import sample_indices
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    f = lambda: x * 2.0  # noqa: E731
    indices = sample_indices(x.shape, 5, rng)
    # A transposed gradient: before, an IndexError or a comparison of the wrong entries.
    with pytest.raises(ValueError, match=r"check_gradient: expected an analytic gradient of "
                                         r"x's shape \(3, 4\), got \(4, 3\)"):
        check_gradient(f, x, (2.0 * dout).T, dout, indices=indices)
    with pytest.raises(ValueError, match=r"expected a step h that is a finite number > 0, got 0"):
        check_gradient(f, x, 2.0 * dout, dout, h=0)
    with pytest.raises(ValueError, match=r"expected at least one index of 2 integers inside "
                                         r"shape \(3, 4\), got none"):
        check_gradient(f, x, 2.0 * dout, dout, indices=[])
    with pytest.raises(ValueError, match=r"inside shape \(3, 4\), got \(3, 0\)"):
        check_gradient(f, x, 2.0 * dout, dout, indices=[(0, 0), (3, 0)])
    assert check_gradient(f, x, 2.0 * dout, dout, indices=indices) < 1e-8
