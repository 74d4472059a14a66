"""Layers: gradients through parameters, batch-norm running statistics, modes, caches and
state dicts."""

import numpy as np
import pytest

import minimobile as mm
from minimobile.gradcheck import check_gradient

GRAD_TOL = 1e-7


def assert_layer_gradients(layer, x, rng):
    """Input and every parameter gradient of a float64 layer against central differences."""
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    analytic = {name: grad.copy() for name, _, grad in layer.named_parameters()}
    err = check_gradient(lambda: layer.forward(x), x, dx, dout)
    assert err < GRAD_TOL, f"{type(layer).__name__}: dx relative error {err:.2e}"
    for name, param, _ in layer.named_parameters():
        err = check_gradient(lambda: layer.forward(x), param, analytic[name], dout)
        assert err < GRAD_TOL, f"{type(layer).__name__}: d{name} relative error {err:.2e}"


@pytest.mark.parametrize("make,shape", [
    (lambda rng: mm.Conv2d(3, 4, 3, stride=2, padding=1, bias=True, rng=rng), (2, 3, 7, 7)),
    (lambda rng: mm.DepthwiseConv2d(3, 5, stride=2, rng=rng), (2, 3, 7, 7)),
    (lambda rng: mm.PointwiseConv2d(3, 4, bias=True, rng=rng), (2, 3, 3, 3)),
    (lambda rng: mm.SqueezeExcitation(6, 3, rng=rng), (2, 6, 4, 4)),
    (lambda rng: mm.Sequential(mm.PointwiseConv2d(3, 4, rng=rng), mm.BatchNorm2d(4),
                               mm.Hardswish(), mm.GlobalAvgPool2d(), mm.Flatten(),
                               mm.Linear(4, 2, rng=rng)), (3, 3, 4, 4)),
])
def test_layer_gradients_match_numerical_gradients(rng, make, shape):
    layer = make(rng).astype(np.float64)
    assert_layer_gradients(layer, rng.standard_normal(shape), rng)


def test_batchnorm_in_eval_mode_is_differentiable(rng):
    bn = mm.BatchNorm2d(3).astype(np.float64)
    bn.buffers["running_mean"][...] = rng.standard_normal(3)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2, 3)
    bn.params["weight"][...] = rng.standard_normal(3)
    assert_layer_gradients(bn.eval(), rng.standard_normal((2, 3, 4, 4)), rng)


def test_batchnorm_updates_running_statistics_the_pytorch_way(rng):
    bn = mm.BatchNorm2d(2, momentum=0.1).astype(np.float64)
    x = rng.standard_normal((4, 2, 3, 3)) * 2 + 5
    bn.forward(x)
    values = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.9 * 0 + 0.1 * values.mean(axis=1))
    np.testing.assert_allclose(bn.buffers["running_var"],
                               0.9 * 1 + 0.1 * values.var(axis=1, ddof=1))  # unbiased
    assert bn.buffers["num_batches_tracked"] == 1


def test_batchnorm_eval_uses_running_statistics(rng):
    bn = mm.BatchNorm2d(2, eps=1e-3).astype(np.float64)
    bn.buffers["running_mean"][...] = [1.0, -2.0]
    bn.buffers["running_var"][...] = [4.0, 0.25]
    x = rng.standard_normal((3, 2, 2, 2))
    out = bn.eval().forward(x)
    expected = (x - np.array([1.0, -2.0])[:, None, None]) / np.sqrt(
        np.array([4.0, 0.25]) + 1e-3)[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert bn.buffers["num_batches_tracked"] == 0


def test_backward_drops_the_cache_so_a_second_backward_fails(rng):
    layer = mm.ReLU6()
    out = layer.forward(rng.standard_normal((2, 3)))
    layer.backward(np.ones_like(out))
    with pytest.raises(RuntimeError, match="ReLU6.backward called without a forward"):
        layer.backward(np.ones_like(out))


def test_no_grad_keeps_no_cache(rng):
    layer = mm.DepthwiseConv2d(3, rng=rng)
    with mm.no_grad():
        layer.forward(rng.standard_normal((1, 3, 5, 5)).astype(np.float32))
    assert layer._cache is None


def test_train_and_eval_switch_every_child():
    model = mm.Sequential(mm.BatchNorm2d(2), mm.Sequential(mm.Dropout(0.5)))
    model.eval()
    assert all(not m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_state_dict_keys_follow_pytorch_naming(rng):
    model = mm.Sequential(mm.Conv2d(3, 4, 3, rng=rng),
                          mm.BatchNorm2d(4),
                          mm.Sequential(mm.SqueezeExcitation(4, 2, rng=rng)))
    assert list(model.state_dict()) == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "2.0.fc1.weight", "2.0.fc1.bias", "2.0.fc2.weight",
        "2.0.fc2.bias"]


def test_load_state_dict_round_trips_and_keeps_array_identity(rng):
    a = mm.Sequential(mm.PointwiseConv2d(3, 4, bias=True, rng=rng), mm.BatchNorm2d(4))
    b = mm.Sequential(mm.PointwiseConv2d(3, 4, bias=True, rng=rng), mm.BatchNorm2d(4))
    weight = b[0].params["weight"]
    b.load_state_dict(a.state_dict())
    assert b[0].params["weight"] is weight  # optimisers hold references
    for key, value in a.state_dict().items():
        assert np.array_equal(b.state_dict()[key], value), key


def test_load_state_dict_lists_every_missing_unexpected_and_misshaped_key(rng):
    model = mm.Sequential(mm.PointwiseConv2d(3, 4, bias=True, rng=rng), mm.BatchNorm2d(4))
    state = model.state_dict()
    del state["1.running_var"]
    state["2.weight"] = np.zeros(3)
    state["0.bias"] = np.zeros(5)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "missing keys (1): 1.running_var" in message
    assert "unexpected keys (1): 2.weight" in message
    assert "0.bias: expected (4,), got (5,)" in message
    for key, value in before.items():  # nothing was half-loaded
        assert np.array_equal(model.state_dict()[key], value)


def test_layers_work_in_float32_and_float64(rng):
    for dtype in (np.float32, np.float64):
        model = mm.Sequential(mm.Conv2d(3, 8, 3, stride=2, padding=1, rng=rng),
                              mm.BatchNorm2d(8), mm.ReLU6(),
                              mm.DepthwiseConv2d(8, 3, rng=rng), mm.SqueezeExcitation(8, 8, rng=rng),
                              mm.PointwiseConv2d(8, 4, rng=rng)).astype(dtype)
        x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
        out = model.forward(x)
        dx = model.backward(np.ones_like(out))
        assert out.dtype == dx.dtype == dtype
        assert all(g.dtype == dtype for _, _, g in model.named_parameters())


def test_dropout_layer_is_identity_in_eval_mode(rng):
    layer = mm.Dropout(0.5, rng=rng)
    x = rng.standard_normal((4, 8))
    assert not np.array_equal(layer.forward(x), x)
    layer.eval()
    assert np.array_equal(layer.forward(x), x)
    assert np.array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))


@pytest.mark.parametrize("build, message", [
    (lambda: mm.Conv2d(3, 0, 3), r"Conv2d: out_channels: expected an integer >= 1, got 0"),
    (lambda: mm.Conv2d(3, 8, 3, stride=0), r"Conv2d: stride: expected an integer >= 1, got 0"),
    (lambda: mm.Conv2d(3, 8, 3, padding=-1),
     r"Conv2d: padding: expected an integer >= 0, got -1"),
    (lambda: mm.DepthwiseConv2d(8, kernel_size=0),
     r"DepthwiseConv2d: kernel_size: expected an integer >= 1, got 0"),
    (lambda: mm.DepthwiseConv2d(8.0), r"DepthwiseConv2d: channels: expected an integer >= 1, "
                                      r"got 8\.0"),
    (lambda: mm.PointwiseConv2d(0, 8),
     r"PointwiseConv2d: in_channels: expected an integer >= 1, got 0"),
    (lambda: mm.BatchNorm2d(-1), r"BatchNorm2d: num_features: expected an integer >= 1, got -1"),
    (lambda: mm.BatchNorm2d(4, eps=0), r"BatchNorm2d: eps: expected a finite number > 0, got 0"),
    (lambda: mm.BatchNorm2d(4, momentum=1.5),
     r"BatchNorm2d: momentum: expected a number in \[0, 1\], got 1\.5"),
    (lambda: mm.Linear(0, 10), r"Linear: in_features: expected an integer >= 1, got 0"),
    (lambda: mm.Dropout("0.2"), r"Dropout: p: expected a number with 0 <= p < 1, got '0\.2'"),
    (lambda: mm.SqueezeExcitation(16, 0),
     r"SqueezeExcitation: squeeze_channels: expected an integer >= 1, got 0"),
])
def test_layers_refuse_bad_sizes_when_built_naming_the_argument(build, message):
    # Before these checks, a zero size surfaced as a ZeroDivisionError in the initialisation
    # and a negative one as a numpy error with no layer named.
    with pytest.raises(ValueError, match=message):
        build()


def test_layers_accept_numpy_integer_sizes():
    assert mm.PointwiseConv2d(np.int64(3), np.int32(4)).params["weight"].shape == (4, 3, 1, 1)
