import numpy as np
import pytest

import minimobile as mm
from minimobile import checkpoint, ops, train
from minimobile.models import build_model
from minimobile.train import TrainConfig, fit
from minimobile.whitening import (image_patches, patch_moment, patch_whitening_filters,
                                  whiten_stem)

from test_train import colour_data


def smooth_images(n=40, size=12, seed=0):
    """Images whose neighbouring pixels and channels are correlated, as natural images' are:
    white noise blurred along both axes, plus a shared component across the channels."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, 3, size + 2, size + 2))
    blurred = (noise[:, :, :-2] + noise[:, :, 1:-1] + noise[:, :, 2:]) / 3
    blurred = (blurred[..., :-2] + blurred[..., 1:-1] + blurred[..., 2:]) / 3  # (n, 3, s, s)
    return blurred + 0.5 * blurred.mean(axis=1, keepdims=True)


def test_image_patches_are_rows_in_a_conv_filters_order():
    # Each patch row dotted with a flattened (C, K, K) filter is the valid conv's output there.
    x = smooth_images(n=2, size=7).astype(np.float32)
    weight = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    conv, _ = ops.conv2d_forward(x, weight, 1, 0)  # (2, 4, 5, 5)
    patches = image_patches(x, 3)  # (2 * 5 * 5, 27), rows in (n, y, x) order
    expected = conv.transpose(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose(patches @ weight.reshape(4, -1).T, expected, rtol=1e-4,
                               atol=1e-4)


def test_the_second_moment_summed_over_chunks_is_the_one_of_all_patches_at_once():
    x = smooth_images(n=7)
    patches = image_patches(x, 3)
    moment, count = patch_moment(x, 3, chunk=3)
    assert count == len(patches) == 7 * 10 * 10
    np.testing.assert_allclose(moment, patches.T @ patches / len(patches), rtol=1e-12)


def test_whitening_filters_give_uncorrelated_channels_of_variance_lambda_over_lambda_plus_eps():
    x = smooth_images()
    eps = 1e-3
    filters = patch_whitening_filters(x, 3, count=54, eps=eps)  # every direction, twice
    assert filters.shape == (54, 3, 3, 3)
    flat = filters.reshape(54, -1)
    moment, _ = patch_moment(x, 3)
    eigenvalues = np.sort(np.linalg.eigvalsh(moment))[::-1]
    # The channels' second moments: diagonal, largest eigenvalue first, lambda / (lambda + eps).
    out = flat[:27] @ moment @ flat[:27].T
    np.testing.assert_allclose(np.diag(out), eigenvalues / (eigenvalues + eps), rtol=1e-9)
    np.testing.assert_allclose(out - np.diag(np.diag(out)), 0, atol=1e-9)
    assert eigenvalues[0] > 100 * eigenvalues[-1]  # the images really were correlated
    np.testing.assert_array_equal(flat[27:], -flat[:27])  # the ReLU keeps one of each pair


@pytest.mark.parametrize("count", [1, 2, 7, 32])
def test_fewer_filters_take_the_largest_directions_in_opposite_pairs(count):
    x = smooth_images()
    every = patch_whitening_filters(x, 3, count=54)
    some = patch_whitening_filters(x, 3, count=count)
    half = count // 2
    np.testing.assert_allclose(some[:half], every[:half], rtol=1e-12)
    np.testing.assert_allclose(some[half:2 * half], -every[:half], rtol=1e-12)
    if count % 2:
        np.testing.assert_allclose(some[-1], every[half], rtol=1e-12)


@pytest.mark.parametrize("name, width, written", [("v1", 0.25, 8), ("v1", 2.0, 54),
                                                  ("v2", 0.5, 16), ("v3-small", 1.0, 16),
                                                  ("v3-large", 0.5, 8)])
def test_whiten_stem_writes_each_mobilenets_stem_and_keeps_filters_beyond_each_direction_twice(
        name, width, written):
    model = build_model(name, width, cifar=True, seed=0)
    weight = dict(model.named_modules())["features.0.0"].params["weight"]
    before = weight.copy()
    x = smooth_images()
    assert whiten_stem(model, x) == written
    np.testing.assert_allclose(weight[:written], patch_whitening_filters(x, 3, written),
                               rtol=1e-5)
    np.testing.assert_array_equal(weight[written:], before[written:])
    assert weight.dtype == np.float32


def test_bad_input_names_what_was_expected_and_what_came():
    x = smooth_images(n=2)
    with pytest.raises(ValueError, match=r"count: expected an integer from 1 to 54.*got 55"):
        patch_whitening_filters(x, 3, count=55)
    with pytest.raises(ValueError, match=r"images: expected a float array \(N, C, H, W\).*"
                       r"got \(3, 12, 12\)"):
        patch_whitening_filters(x[0], 3, count=4)
    with pytest.raises(ValueError, match="at least 27 patches.*got 4"):
        patch_whitening_filters(x[:1, :, :4, :4], 3, count=4)  # one image, 2 x 2 patches
    with pytest.raises(ValueError, match=r"H, W >= kernel_size=3.*got \(2, 3, 2, 12\)"):
        image_patches(x[:, :, :2], 3)
    model = build_model("v1", 0.25, cifar=True, seed=0)
    with pytest.raises(ValueError, match=r"an array \(N, 3, H, W\).*got \(2, 1, 12, 12\)"):
        whiten_stem(model, x[:, :1])
    with pytest.raises(ValueError, match="stem conv is the module features.0.0.*Sequential"):
        whiten_stem(mm.Sequential(mm.Linear(3, 2)), x)


def test_config_rejects_a_whiten_stem_that_is_not_a_bool():
    with pytest.raises(ValueError, match="whiten_stem: expected True or False, got 'yes'"):
        TrainConfig(whiten_stem="yes")


def test_fit_whitens_the_stem_before_the_ema_copies_it_and_not_again_on_resume(tmp_path,
                                                                               monkeypatch):
    # With an lr of 1e-9 the weights barely move, so after an epoch the live and the averaged
    # stems are still the whitening of the first training images.
    data = colour_data(n_train=64, n_test=32)
    config = TrainConfig(model="v1", width=0.25, epochs=1, batch_size=32, lr=1e-9, ema=0.9,
                         whiten_stem=True, out=str(tmp_path / "w"))
    fit(config, data=data, progress=False)
    images = train.normalize(data.x_train)  # 64 images, fewer than WHITENING_IMAGES
    expected = patch_whitening_filters(images, 3, 8)
    arrays, _ = checkpoint.load(tmp_path / "w" / "last.npz")
    for prefix in ("model/", "ema/"):
        np.testing.assert_allclose(arrays[prefix + "features.0.0.weight"], expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())
    plain = tmp_path / "plain"
    fit(TrainConfig(**{**vars(config), "whiten_stem": False, "out": str(plain)}), data=data,
        progress=False)
    stem = checkpoint.load(plain / "last.npz")[0]["model/features.0.0.weight"]
    assert not np.allclose(stem, expected, atol=1e-2 * np.abs(expected).max())
    monkeypatch.setattr(train, "whiten_stem", lambda *a: pytest.fail("whitened on resume"))
    fit(TrainConfig(**{**vars(config), "epochs": 2}), data=data, resume=True, progress=False)


def test_whitening_refuses_raw_pixels_and_a_bad_eps():
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"images: expected normalised float images "
                                         r"\(data.normalize\), got 'uint8'"):
        patch_whitening_filters(images, 2, 4)
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0, got -1.0"):
        patch_whitening_filters(images / 255.0, 2, 4, eps=-1.0)
