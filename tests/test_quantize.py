import numpy as np
import pytest

import minimobile as mm
from minimobile import data, deploy, quantize
from minimobile.kernels import int8 as int8_kernels
from minimobile.gradcheck import randomize_running_statistics, relative_error



def int8(rng, shape):
    return rng.integers(-127, 128, shape).astype(np.int8)


# -- the simple rung against the loops rung (integers: exactly equal) ------------------------------

@pytest.mark.parametrize("N, C_in, C_out, P", [(1, 1, 1, 1), (2, 5, 3, 7), (3, 64, 17, 16)])
def test_pointwise_int8_kernel_equals_the_int32_matrix_product(N, C_in, C_out, P, rng):
    x, w = int8(rng, (N, C_in, P)), int8(rng, (C_out, C_in))
    b = rng.integers(-10_000, 10_000, C_out).astype(np.int32)
    acc = np.empty((N, C_out, P), np.int32)
    int8_kernels.pointwise_int8_simple(acc, x, w, b)
    expected = np.empty_like(acc)
    int8_kernels.pointwise_int8_loops(expected, x, w, b)
    np.testing.assert_array_equal(acc, expected)


def test_int32_accumulation_holds_the_extreme_sums_of_a_wide_layer():
    # 1280 inputs all at -127 times weights all at -127: 20.6 million, far inside int32, and
    # far outside int16 (an engine that accumulated in 16 bits would wrap here).
    x = np.full((1, 1280, 2), -127, np.int8)
    w = np.full((1, 1280), -127, np.int8)
    acc = np.empty((1, 1, 2), np.int32)
    int8_kernels.pointwise_int8_fast(acc, x, w, np.zeros(1, np.int32))
    assert (acc == 1280 * 127 * 127).all()


@pytest.mark.parametrize("N, C, H, W, K, stride", [(1, 1, 5, 5, 3, 1), (2, 3, 7, 6, 3, 2),
                                                   (2, 4, 9, 9, 5, 1), (1, 2, 8, 8, 5, 2)])
def test_depthwise_int8_kernel_equals_its_reference(N, C, H, W, K, stride, rng):
    pad = K // 2
    x, w = int8(rng, (N, C, H, W)), int8(rng, (C, K, K))
    b = rng.integers(-1000, 1000, C).astype(np.int32)
    Ho, Wo = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    acc = np.empty((N, C, Ho, Wo), np.int32)
    int8_kernels.depthwise_int8_simple(acc, x, w, b, stride, pad)
    expected = np.empty_like(acc)
    int8_kernels.depthwise_int8_loops(expected, x, w, b, stride, pad)
    np.testing.assert_array_equal(acc, expected)


def test_quantize_and_dequantize_kernels_equal_their_references(rng):
    x = (rng.standard_normal(1000) * 3).astype(np.float32)
    x[:3] = [100.0, -100.0, 0.5 / 0.05]  # clipped both ways, and a tie (rint: to even)
    q = np.empty(x.shape, np.int8)
    int8_kernels.quantize_simple(q, x, 1 / 0.05)
    expected = np.empty_like(q)
    int8_kernels.quantize_loops(expected, x, 1 / 0.05)
    np.testing.assert_array_equal(q, expected)
    assert q[0] == 127 and q[1] == -127
    acc = rng.integers(-10**6, 10**6, (2, 3, 5)).astype(np.int32)
    scale = rng.uniform(1e-4, 1e-2, 3).astype(np.float32)
    out = np.empty(acc.shape, np.float32)
    int8_kernels.dequantize_simple(out, acc, scale)
    expected = np.empty_like(out)
    int8_kernels.dequantize_loops(expected, acc, scale)
    np.testing.assert_array_equal(out, expected)


# -- quantisation -------------------------------------------------------------------------------

def test_per_channel_weights_keep_each_channels_error_within_half_a_step(rng):
    # Channels whose ranges differ by 1000x: one per-tensor scale would round the small one to 0.
    w = rng.standard_normal((4, 3, 3, 3)) * np.array([1e-3, 1e-1, 1.0, 0.0])[:, None, None, None]
    q, scale = quantize.quantize_per_channel(w)
    assert q.dtype == np.int8 and scale.shape == (4,)
    assert np.abs(q[:3]).reshape(3, -1).max(axis=1).tolist() == [127, 127, 127]
    error = np.abs(q * scale[:, None, None, None] - w)
    assert (error <= scale[:, None, None, None] / 2 * (1 + 1e-6)).all()
    assert (q[3] == 0).all()


@pytest.mark.parametrize("conv", ["pointwise", "depthwise"])
def test_a_quantized_conv_is_close_to_the_float_conv_it_replaces(conv, rng):
    if conv == "pointwise":
        layer = mm.PointwiseConv2d(16, 8, bias=True, rng=rng)
        x = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
        qkind = quantize.QuantizedPointwiseConv2d
    else:
        layer = mm.DepthwiseConv2d(8, 3, stride=2, padding=1, bias=True, rng=rng)
        x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
        qkind = quantize.QuantizedDepthwiseConv2d
    layer.params["bias"][...] = rng.standard_normal(8)
    expected = layer.forward(x)
    q = qkind(layer, quantize.tensor_scale(np.abs(x).max()))
    out = q.forward(x)
    assert out.dtype == np.float32 and out.shape == expected.shape
    # int8 keeps about 2 significant digits: close, not equal.
    assert 1e-5 < relative_error(expected, out) < 2e-2
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(out)


def test_calibration_records_the_largest_input_of_every_quantized_conv(rng):
    model = randomize_running_statistics(mm.mobilenet_v1(cifar=True, width_mult=0.25, seed=0), rng)
    fused = deploy.fuse(model)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    seen = quantize.calibrate(fused, x, batch_size=4)
    assert len(seen) == 26  # 13 depthwise and 13 pointwise convs
    stem_out = fused.features[0].forward(x)  # what features.1.dw.0 sees
    assert seen["features.1.dw.0"] == pytest.approx(np.abs(stem_out).max())
    assert "forward" not in vars(fused.features[1].dw[0])  # the observers are gone


@pytest.mark.parametrize("builder", [mm.mobilenet_v1, mm.mobilenet_v2, mm.mobilenet_v3_small])
def test_the_int8_network_agrees_with_the_float_one(builder, rng):
    model = randomize_running_statistics(builder(cifar=True, width_mult=0.5, seed=0), rng)
    x_calibration = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    int8_model = quantize.quantize(model, x_calibration)
    kinds = (quantize.QuantizedPointwiseConv2d, quantize.QuantizedDepthwiseConv2d)
    assert deploy.count_layers(int8_model, kinds) > 0
    assert deploy.count_layers(int8_model, (mm.PointwiseConv2d, mm.DepthwiseConv2d)) == 0
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    with mm.no_grad():
        expected, logits = model.forward(x), int8_model.forward(x)
    assert relative_error(expected, logits) < 0.1


@pytest.mark.parametrize("conv", ["pointwise", "depthwise"])
def test_a_quantized_conv_runs_on_the_rung_kernels_use_picks(conv, monkeypatch, rng):
    # The int8 convs once called their kernels' fast rung directly, so MINIMOBILE_KERNELS=loops
    # left them on Numba. On the loops rung no Numba int8 kernel may run, and as the sums are
    # integers, every rung gives the same bits.
    if conv == "pointwise":
        layer = mm.PointwiseConv2d(16, 8, bias=True, rng=rng)
        x = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
        q = quantize.QuantizedPointwiseConv2d(layer, quantize.tensor_scale(np.abs(x).max()))
    else:
        layer = mm.DepthwiseConv2d(8, 3, stride=2, padding=1, bias=True, rng=rng)
        x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
        q = quantize.QuantizedDepthwiseConv2d(layer, quantize.tensor_scale(np.abs(x).max()))
    fast = q.forward(x)
    with mm.kernels.use("simple"):
        simple = q.forward(x)

    def numba_kernel(*args):
        raise AssertionError("a Numba int8 kernel ran on the loops rung")

    for op in ("quantize", "pointwise_int8", "depthwise_int8", "dequantize"):
        for rung in ("simple", "fast"):
            monkeypatch.setattr(int8_kernels, f"{op}_{rung}", numba_kernel)
    with mm.kernels.use("loops"):
        loops = q.forward(x)
    np.testing.assert_array_equal(simple, fast)
    np.testing.assert_array_equal(loops, fast)
    with pytest.raises(AssertionError, match="loops rung"):
        q.forward(x)  # the guard is live: the default rung reaches the patched kernels


def test_the_int8_network_in_training_mode_says_it_runs_in_eval_mode(rng):
    model = mm.mobilenet_v3_small(cifar=True, width_mult=0.35, seed=0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    int8_model = quantize.quantize(model, x)
    int8_model.train()
    with pytest.raises(RuntimeError, match=r"inference only.*call model.eval\(\)"):
        int8_model.forward(x)
    assert int8_model.eval().forward(x).shape == (2, 10)


def test_the_report_measures_accuracy_and_weight_bytes(tmp_path, rng):
    fake = data.load_cifar10(data.write_fake_cifar10(tmp_path, n_train_per_batch=8, n_test=24),
                             download=False)
    model = randomize_running_statistics(mm.mobilenet_v1(cifar=True, width_mult=0.25, seed=0), rng)
    result = quantize.report(model, quantize.calibration_images(fake.x_train, 16),
                             fake.x_test, fake.y_test, batch_size=8)
    assert result.calibration_images == 16 and result.test_images == 24
    expected = mm.train.evaluate(model, fake.x_test, fake.y_test).accuracy
    assert result.float_accuracy == expected
    assert 0 <= result.int8_accuracy <= 1
    # int8 conv weights are a quarter of float32; the stem, classifier and scales stay float.
    assert result.fused_weight_bytes < result.float_weight_bytes
    assert 2.5 < result.fused_weight_bytes / result.int8_weight_bytes < 4
    assert "drop" in str(result) and "int8" in str(result)
    # V1 at width 0.25 on 32x32: all but the stem (3*3*3*8 per pixel) and the classifier.
    stem, classifier = 27 * 8 * 32 * 32, 256 * 10
    total = mm.cost.profile(model, (3, 32, 32)).macs
    assert result.int8_mac_fraction == pytest.approx(1 - (stem + classifier) / total)


def test_quantize_refuses_nan_weights_naming_them(rng):
    model = mm.mobilenet_v1(cifar=True, width_mult=0.25, seed=0)
    model.features[3].pw[0].params["weight"][0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite weights \(features.3.pw.0.weight\)"):
        quantize.quantize(model, rng.standard_normal((4, 3, 32, 32)).astype(np.float32))


def test_quantize_refuses_an_empty_calibration_set():
    model = mm.mobilenet_v1(cifar=True, width_mult=0.25, seed=0)
    with pytest.raises(ValueError, match="at least one calibration image"):
        quantize.quantize(model, np.zeros((0, 3, 32, 32), np.float32))


def test_quantize_and_report_name_images_of_the_wrong_kind(rng):
    model = mm.mobilenet_v1(width_mult=0.25, cifar=True, seed=0)
    uint8 = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"quantize: expected normalised float images .* got "
                                         r"uint8 of shape \(4, 3, 32, 32\)"):
        quantize.quantize(model, uint8)
    with pytest.raises(ValueError, match=r"quantize: expected a batch_size that is an integer "
                                         r">= 1, got 0"):
        quantize.quantize(model, data.normalize(uint8), batch_size=0)
    # report normalises its calibration images itself: float ones would be normalised twice.
    with pytest.raises(ValueError, match=r"report: expected uint8 calibration images.* got "
                                         r"float32"):
        quantize.report(model, data.normalize(uint8), uint8, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"tensor_scale: expected a finite max_abs >= 0, got "
                                         r"inf"):
        quantize.tensor_scale(float("inf"))
    with pytest.raises(ValueError, match=r"quantize_tensor: expected a finite scale > 0, got 0"):
        quantize.quantize_tensor(np.zeros(3, np.float32), 0.0)


def test_a_bias_too_large_for_its_scale_saturates_instead_of_wrapping():
    conv = mm.PointwiseConv2d(2, 2, bias=True).astype(np.float64)
    conv.params["weight"][...] = np.array([[1.0, 1.0], [1e-12, 1e-12]]).reshape(2, 2, 1, 1)
    conv.params["bias"][...] = [0.5, 0.5]
    layer = quantize.QuantizedPointwiseConv2d(conv, input_scale=1.0)
    bias = layer.buffers["bias_int32"]
    assert bias[1] == np.iinfo(np.int32).max  # 0.5 / (1e-12 / 127): far past 2^31
    assert bias[0] == round(0.5 / (1.0 / 127))
