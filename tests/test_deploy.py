import numpy as np
import pytest

import minimobile as mm
from minimobile import deploy, ops
from minimobile.gradcheck import randomize_running_statistics, relative_error

BUILDERS = {"v1": mm.mobilenet_v1, "v2": mm.mobilenet_v2, "v3-small": mm.mobilenet_v3_small,
            "v3-large": mm.mobilenet_v3_large}



@pytest.mark.parametrize("conv, w_shape, stride, padding", [
    ("standard", (6, 3, 3, 3), 2, 1),
    ("depthwise", (5, 1, 3, 3), 1, 1),
    ("depthwise", (4, 1, 5, 5), 2, 2),
    ("pointwise", (7, 5, 1, 1), 1, 0),
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_folded_conv_equals_conv_then_batchnorm(conv, w_shape, stride, padding, with_bias, rng):
    C_out, C_in = w_shape[0], (w_shape[0] if conv == "depthwise" else w_shape[1])
    x = rng.standard_normal((2, C_in, 9, 7))
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(C_out) if with_bias else None
    gamma, beta = rng.uniform(0.5, 1.5, C_out), rng.normal(0, 1, C_out)
    mean, var = rng.normal(0, 1, C_out), rng.uniform(0.1, 3, C_out)

    def conv_op(x, w):
        if conv == "standard":
            return ops.conv2d_forward(x, w, stride, padding)[0]
        if conv == "depthwise":
            return ops.depthwise_conv2d_forward(x, w, stride, padding)[0]
        return ops.pointwise_conv2d_forward(x, w)[0]

    z = conv_op(x, w) + (0 if b is None else b[:, None, None])
    expected, _ = ops.batchnorm2d_inference_forward(z, gamma, beta, mean, var, 1e-3)
    wf, bf = deploy.fold_batchnorm(w, b, gamma, beta, mean, var, eps=1e-3)
    assert wf.shape == w.shape and bf.shape == (C_out,)
    np.testing.assert_allclose(conv_op(x, wf) + bf[:, None, None], expected, rtol=1e-12,
                               atol=1e-12)


def test_fold_batchnorm_keeps_the_weights_dtype_and_leaves_its_inputs_alone(rng):
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    before = w.copy()
    wf, bf = deploy.fold_batchnorm(w, None, np.ones(4, np.float32), np.zeros(4, np.float32),
                                   np.zeros(4, np.float32), np.ones(4, np.float32))
    assert wf.dtype == bf.dtype == np.float32
    np.testing.assert_array_equal(w, before)
    np.testing.assert_allclose(wf, w / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_fold_batchnorm_names_a_mis_shaped_statistic(rng):
    with pytest.raises(ValueError, match=r"running_var of shape \(4,\).*got \(3,\)"):
        deploy.fold_batchnorm(np.ones((4, 1, 3, 3)), None, np.ones(4), np.zeros(4),
                              np.zeros(4), np.ones(3))


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("cifar, resolution, batch", [(True, 32, 3), (False, 224, 1)])
def test_fused_network_gives_the_same_logits_with_no_batchnorm_left(name, cifar, resolution,
                                                                    batch, rng):
    model = randomize_running_statistics(BUILDERS[name](cifar=cifar, seed=0), rng)
    x = rng.standard_normal((batch, 3, resolution, resolution)).astype(np.float32)
    with mm.no_grad():
        expected = model.forward(x)
        fused = deploy.fuse(model)
        logits = fused.forward(x)
    assert logits.dtype == np.float32
    assert relative_error(expected, logits) < 1e-5
    assert deploy.count_layers(model, mm.BatchNorm2d) > 0
    assert deploy.count_layers(fused, mm.BatchNorm2d) == 0
    # Fewer ops: one conv per former (conv, BN) pair, the same convs in number.
    convs = (mm.Conv2d, mm.DepthwiseConv2d, mm.PointwiseConv2d)
    assert deploy.count_layers(fused, convs) == deploy.count_layers(model, convs)
    assert len(list(fused.named_modules())) < len(list(model.named_modules()))


def test_fuse_leaves_the_original_model_untouched_and_in_its_mode(rng):
    model = randomize_running_statistics(mm.mobilenet_v2(cifar=True, width_mult=0.5, seed=1),
                                         rng).train()
    state = model.state_dict()
    deploy.fuse(model)
    assert model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_depthwise_layer_with_bias_backward_matches_numerical_gradient(rng):
    from minimobile.gradcheck import check_gradient
    layer = mm.DepthwiseConv2d(3, 3, stride=2, padding=1, bias=True, rng=rng, dtype=np.float64)
    layer.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((2, 3, 7, 6))
    dout = rng.standard_normal(layer.forward(x).shape)
    dx = layer.backward(dout)
    f = lambda: layer.forward(x)  # noqa: E731  (reads x and the bias, perturbed in place)
    assert check_gradient(f, x, dx, dout) < 1e-7
    assert check_gradient(f, layer.params["bias"], layer.grads["bias"], dout) < 1e-7
    assert check_gradient(f, layer.params["weight"], layer.grads["weight"], dout) < 1e-7


def test_a_batchnorm_that_follows_no_conv_is_reported():
    model = mm.Sequential(mm.ReLU(), mm.BatchNorm2d(3))
    with pytest.raises(ValueError, match="expected every BatchNorm2d to follow a conv.*1"):
        deploy.fuse(model)


def test_fused_containers_are_plain_sequentials_that_run_in_either_mode(rng):
    # ConvBNActivation may assume its batch norm is there (it fuses BN and activation in
    # training mode), so the fused copy holds plain Sequentials with the same child names.
    from minimobile.blocks import ConvBNActivation
    model = randomize_running_statistics(mm.mobilenet_v1(cifar=True, width_mult=0.25, seed=2), rng)
    fused = deploy.fuse(model)
    assert deploy.count_layers(fused, ConvBNActivation) == 0
    assert "features.1.pw.0.bias" in fused.state_dict()
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(fused.forward(x), fused.train().forward(x))


def test_fold_batchnorm_refuses_integer_weights_and_a_variance_it_cannot_divide_by():
    ones = np.ones(2)
    with pytest.raises(ValueError, match=r"fold_batchnorm: expected float weights w, got int64"):
        deploy.fold_batchnorm(np.ones((2, 3), np.int64), None, ones, ones, ones, ones)
    with pytest.raises(ValueError, match=r"fold_batchnorm: expected running_var \+ eps > 0 and "
                                         r"finite in every channel, got -1 at its least"):
        deploy.fold_batchnorm(np.ones((2, 3)), None, ones, ones, ones, np.array([1.0, -1.00001]))
