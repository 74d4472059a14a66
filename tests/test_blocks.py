"""Tests of minimobile.blocks: structure, skip connections, and backward against the oracle."""

import numpy as np
import pytest

from minimobile.blocks import (Bneck, ConvBNActivation, DepthwiseSeparable, InvertedResidual,
                               NonlinearBottleneck, make_divisible)
from minimobile.gradcheck import (numerical_gradient, randomize_batchnorm, relative_error,
                                  sample_indices)
from minimobile.layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Hardswish,
                               PointwiseConv2d, ReLU, ReLU6, SqueezeExcitation, no_grad)


def sampled_error(f, p, analytic, dout, indices):
    """Largest difference between analytic and numerical gradient at the sampled entries, over
    the largest analytic gradient of the whole array: a few samples may all be tiny (a dead
    ReLU channel), and scaled by themselves float64 noise would decide the verdict."""
    numeric = numerical_gradient(f, p, dout, indices=indices)
    picked = tuple(np.array(indices).T)
    scale = np.abs(analytic).max()
    if scale == 0:
        return relative_error(analytic[picked], numeric[picked])
    return float(np.abs(analytic[picked] - numeric[picked]).max() / scale)


def gradient_errors(module, x, rng, per_param=4, inputs=6):
    """sampled_error of every parameter array and of the input, against the float64 central
    difference of sum(module(x) * dout), in training mode."""
    out = module.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = module.backward(dout)
    analytic = {name: grad.copy() for name, _, grad in module.named_parameters()}

    def f():
        with no_grad():
            return module.forward(x)

    errors = {name: sampled_error(f, p, analytic[name], dout,
                                  sample_indices(p.shape, per_param, rng))
              for name, p, _ in module.named_parameters()}
    errors["input"] = sampled_error(f, x, dx, dout, sample_indices(x.shape, inputs, rng))
    return errors


@pytest.mark.parametrize("v, expected", [
    (32 * 0.75, 24), (16 * 0.35, 8), (1280 * 1.4, 1792), (100, 104), (11, 16), (72 // 4, 24),
    (960 // 4, 240), (0.1 * 32, 8),
])
def test_make_divisible_rounds_like_torchvision_and_never_drops_more_than_ten_percent(v,
                                                                                      expected):
    assert make_divisible(v, 8) == expected
    assert make_divisible(v, 8) >= 0.9 * v


def test_conv_bn_activation_picks_the_conv_by_shape_and_omits_a_missing_activation():
    rng = np.random.default_rng(0)
    stem = ConvBNActivation(3, 16, 3, stride=2, activation=Hardswish, rng=rng)
    dw = ConvBNActivation(16, 16, 5, groups=16, activation=ReLU6, rng=rng)
    linear = ConvBNActivation(16, 8, 1, activation=None, rng=rng)
    assert [type(m) for m in stem] == [Conv2d, BatchNorm2d, Hardswish]
    assert [type(m) for m in dw] == [DepthwiseConv2d, BatchNorm2d, ReLU6]
    assert dw[0].padding == 2
    assert [type(m) for m in linear] == [PointwiseConv2d, BatchNorm2d]
    assert list(linear.state_dict()) == ["0.weight", "1.weight", "1.bias", "1.running_mean",
                                         "1.running_var", "1.num_batches_tracked"]


@pytest.mark.parametrize("activation", [ReLU, ReLU6, Hardswish, None])
def test_conv_bn_activation_fuses_in_training_with_the_same_results_as_its_children(activation):
    """Training mode runs batch norm and activation in one pass; the children one by one must
    give the same output, gradients and running statistics, bit for bit."""
    rng = np.random.default_rng(1)
    fused = ConvBNActivation(4, 6, 1, activation=activation, rng=np.random.default_rng(2))
    plain = ConvBNActivation(4, 6, 1, activation=activation, rng=np.random.default_rng(2))
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    dout = rng.standard_normal((3, 6, 5, 5)).astype(np.float32)
    out = fused.forward(x)
    dx = fused.backward(dout)
    assert fused._fused
    children = list(plain)
    y = x
    for child in children:
        y = child.forward(y)
    g = dout
    for child in reversed(children):
        g = child.backward(g)
    np.testing.assert_array_equal(out, y)
    np.testing.assert_array_equal(dx, g)
    for (name, a, ga), (_, b, gb) in zip(fused.named_parameters(), plain.named_parameters()):
        np.testing.assert_array_equal(ga, gb, err_msg=f"grad {name}")
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(fused.state_dict()[key], value, err_msg=key)


def test_conv_bn_activation_runs_its_children_in_eval_mode():
    block = ConvBNActivation(4, 6, 1, activation=ReLU6, rng=np.random.default_rng(0)).eval()
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    out = block.forward(x)
    assert not block._fused
    assert out.max() <= 6 and out.min() >= 0
    assert block.backward(np.ones_like(out)).shape == x.shape


def test_depthwise_separable_has_dw_then_pw_children_and_no_skip():
    block = DepthwiseSeparable(8, 16, stride=2, rng=np.random.default_rng(0))
    assert block.use_res_connect is False
    assert [type(m) for m in block.dw] == [DepthwiseConv2d, BatchNorm2d, ReLU]
    assert [type(m) for m in block.pw] == [PointwiseConv2d, BatchNorm2d, ReLU]
    assert block.forward(np.ones((2, 8, 9, 9), np.float32)).shape == (2, 16, 5, 5)


@pytest.mark.parametrize("in_channels, out_channels, stride, expected", [
    (8, 8, 1, True), (8, 8, 2, False), (8, 16, 1, False), (8, 16, 2, False),
])
def test_inverted_residual_adds_skip_only_when_shapes_match(in_channels, out_channels, stride,
                                                            expected):
    rng = np.random.default_rng(1)
    block = InvertedResidual(in_channels, out_channels, stride, 6, rng=rng).eval()
    x = rng.standard_normal((2, in_channels, 7, 7)).astype(np.float32)
    assert block.use_res_connect is expected
    out = block.forward(x)
    branch = block.conv.forward(x)
    np.testing.assert_array_equal(out, x + branch if expected else branch)


def test_inverted_residual_without_expansion_starts_with_the_depthwise_conv():
    block = InvertedResidual(16, 8, 1, expand_ratio=1, rng=np.random.default_rng(0))
    assert [type(m).__name__ for m in block.conv] == ["ConvBNActivation", "PointwiseConv2d",
                                                      "BatchNorm2d"]
    assert block.state_dict()["conv.0.0.weight"].shape == (16, 1, 3, 3)
    expanded = InvertedResidual(16, 24, 2, expand_ratio=6, rng=np.random.default_rng(0))
    shapes = {k: v.shape for k, v in expanded.state_dict().items()}
    assert shapes["conv.0.0.weight"] == (96, 16, 1, 1)
    assert shapes["conv.1.0.weight"] == (96, 1, 3, 3)
    assert shapes["conv.2.weight"] == (24, 96, 1, 1)
    assert shapes["conv.3.running_var"] == (24,)


@pytest.mark.parametrize("stride, out_channels", [(1, 8), (2, 16)])
def test_nonlinear_bottleneck_is_the_inverted_residual_with_relu6_after_the_projection(
        stride, out_channels):
    linear = InvertedResidual(8, out_channels, stride, 6, rng=np.random.default_rng(0)).eval()
    nonlinear = NonlinearBottleneck(8, out_channels, stride, 6,
                                    rng=np.random.default_rng(0)).eval()
    assert isinstance(nonlinear.conv[-1], ReLU6) and isinstance(nonlinear.conv[-2], BatchNorm2d)
    assert nonlinear.use_res_connect == linear.use_res_connect == (stride == 1)
    linear_state, nonlinear_state = linear.state_dict(), nonlinear.state_dict()
    assert list(nonlinear_state) == list(linear_state)  # same parameters, same draws
    assert all(np.array_equal(nonlinear_state[k], linear_state[k]) for k in linear_state)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 7, 7)).astype(np.float32)
    branch = linear.conv.forward(x)
    clipped = np.clip(branch, 0, 6)
    expected = x + clipped if stride == 1 else clipped
    np.testing.assert_array_equal(nonlinear.forward(x), expected)
    assert (branch < 0).any() and not np.array_equal(nonlinear.forward(x), linear.forward(x))


def test_bneck_has_torchvision_child_names_with_squeeze_excite_after_the_depthwise():
    block = Bneck(24, 5, 72, 40, True, "RE", 2, rng=np.random.default_rng(0))
    assert not block.use_res_connect
    assert isinstance(block.block[2], SqueezeExcitation)
    shapes = {k: v.shape for k, v in block.state_dict().items()}
    assert shapes["block.0.0.weight"] == (72, 24, 1, 1)
    assert shapes["block.1.0.weight"] == (72, 1, 5, 5)
    assert shapes["block.2.fc1.weight"] == (24, 72, 1, 1)  # make_divisible(72 // 4) = 24
    assert shapes["block.2.fc2.bias"] == (72,)
    assert shapes["block.3.0.weight"] == (40, 72, 1, 1)
    assert block.block[0][1].eps == 1e-3 and block.block[0][1].momentum == 0.01
    assert len(block.block[3]) == 2  # the projection is linear


def test_bneck_without_expansion_has_no_expand_conv_and_keeps_the_skip():
    block = Bneck(16, 3, 16, 16, False, "HS", 1, rng=np.random.default_rng(0))
    assert block.use_res_connect
    assert [type(m) for m in block.block[0]] == [DepthwiseConv2d, BatchNorm2d, Hardswish]
    assert len(block.block) == 2


def test_blocks_reject_unknown_strides_and_activations():
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(8, 8, 3, 6)
    with pytest.raises(ValueError, match="activation"):
        Bneck(8, 3, 16, 8, False, "GELU", 1)


BLOCKS = {
    "depthwise_separable_stride_2": (lambda rng: DepthwiseSeparable(
        4, 6, 2, bn_eps=1e-5, rng=rng, dtype=np.float64), 4),
    "inverted_residual_skip": (lambda rng: InvertedResidual(
        4, 4, 1, 6, rng=rng, dtype=np.float64), 4),
    "inverted_residual_t1_stride_2": (lambda rng: InvertedResidual(
        5, 3, 2, 1, rng=rng, dtype=np.float64), 5),
    "nonlinear_bottleneck_skip": (lambda rng: NonlinearBottleneck(
        4, 4, 1, 6, rng=rng, dtype=np.float64), 4),
    "nonlinear_bottleneck_stride_2": (lambda rng: NonlinearBottleneck(
        4, 6, 2, 6, rng=rng, dtype=np.float64), 4),
    "bneck_se_hardswish_k5_skip": (lambda rng: Bneck(
        8, 5, 16, 8, True, "HS", 1, rng=rng, dtype=np.float64), 8),
    "bneck_se_no_expand_stride_2": (lambda rng: Bneck(
        8, 3, 8, 4, True, "RE", 2, rng=rng, dtype=np.float64), 8),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_backward_matches_numerical_gradient(name):
    rng = np.random.default_rng(3)
    make, channels = BLOCKS[name]
    block = randomize_batchnorm(make(rng), rng)
    x = rng.standard_normal((2, channels, 7, 7))
    errors = gradient_errors(block, x, rng)
    assert max(errors.values()) < 1e-6, errors


def test_block_backward_drops_its_caches():
    rng = np.random.default_rng(0)
    block = Bneck(8, 3, 16, 8, True, "HS", 1, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 8, 5, 5))
    block.backward(np.ones_like(block.forward(x)))
    assert all(m._cache is None for _, m in block.named_modules())


@pytest.mark.parametrize("build, message", [
    (lambda: ConvBNActivation(8, 8, 3, activation=ReLU6()),
     r"ConvBNActivation: expected activation to be a layer class such as ReLU6 \(not an "
     r"instance or a name\), or None, got ReLU6\(\)"),
    (lambda: InvertedResidual(8, 8, 1, 6, activation="RE"),
     r"InvertedResidual: expected activation to be a layer class .* got 'RE'"),
    (lambda: InvertedResidual(8, 8, 1, 0),
     r"InvertedResidual: expected an expand_ratio > 0 that leaves at least one hidden channel "
     r"of 8, got 0"),
    (lambda: Bneck(16, 4, 64, 16, False, "RE", 1),
     r"Bneck: expected an odd kernel_size \(3 or 5 in the paper\), got 4"),
])
def test_blocks_name_a_bad_argument_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_make_divisible_names_a_divisor_of_zero():
    with pytest.raises(ValueError, match=r"make_divisible: expected a divisor that is an integer "
                                         r">= 1, got 0"):
        make_divisible(24, divisor=0)
