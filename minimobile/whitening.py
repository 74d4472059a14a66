"""Patch-whitening initialisation of the stem conv (airbench, hlb-CIFAR10).

Neighbouring pixels of a natural image are strongly correlated: in the 27-dimensional space of
3x3x3 patches nearly all the variance lies along a few smooth directions (the mean colour,
slow gradients), and the sharp ones (edges, colour contrasts) have eigenvalues hundreds of
times smaller. A stem conv drawn at random mixes all of them, so every one of its channels is
dominated by the same few smooth directions, and batch norm's rescaling cannot undo that.

Whitening starts the stem where training would have to take it: with C the covariance of the
training set's (normalised) patches and C = V diag(lambda) V^T its eigendecomposition, filter k
is v_k / sqrt(lambda_k + eps), so the stem's k-th output channel has variance
lambda_k / (lambda_k + eps), about 1, and the channels are uncorrelated. The stem's ReLU would
discard half of each direction, so the filters come in pairs +v_k, -v_k, as airbench's do: a
stem of C_out channels holds the top C_out / 2 directions twice (at most all K*K*C_in of them;
any channels beyond keep their random initialisation). The filters stay trainable here; the
batch norm after the stem makes their scale irrelevant to the forward pass.

    filters = patch_whitening_filters(normalize(x_train[:5000]), kernel_size=3, count=32)
    whiten_stem(model, normalize(x_train[:5000]))   # the same, written into features.0.0
"""

import numpy as np

from .validation import is_number, require

# airbench94's eps (its images are normalised as ours are): it caps the gain of the weakest
# directions at 1 / sqrt(eps), about 45, so pixel noise is not blown up into unit variance.
WHITENING_EPS = 5e-4
# airbench94 estimates the covariance from the first 5000 training images: 5000 * 900 patches
# of 27 values give it to well under 1 % (and take about a second in float64).
WHITENING_IMAGES = 5000
STEM = "features.0.0"  # the stem conv in every MobileNet here (ConvBNActivation's child 0)


def image_patches(images, kernel_size):
    """Every kernel_size x kernel_size patch of float images (N, C, H, W), fully inside the image,
    as rows of length C * K * K in a conv filter's (C, K, K) order: (N * (H-K+1) * (W-K+1),
    C*K*K), float64."""
    images = np.asarray(images)
    require(images.ndim == 4 and images.shape[2] >= kernel_size
            and images.shape[3] >= kernel_size, "images",
            f"a float array (N, C, H, W) with H, W >= kernel_size={kernel_size}",
            images.shape)
    windows = np.lib.stride_tricks.sliding_window_view(images, (kernel_size, kernel_size),
                                                       axis=(2, 3))  # (N, C, H', W', K, K)
    N, C, Ho, Wo, K, _ = windows.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(N * Ho * Wo, C * K * K).astype(np.float64)


def patch_moment(images, kernel_size, chunk=500):
    """(M, P): the second moment M = sum(p p^T) / P of the P patches of `images`
    (image_patches), (C*K*K, C*K*K) float64, summed over chunks of images so that the patches
    of 5000 images (1 GB in float64) never exist at once."""
    moment, count = 0.0, 0
    for i in range(0, max(1, len(images)), chunk):
        patches = image_patches(images[i:i + chunk], kernel_size)  # (p, D)
        # The second moment about 0, as airbench's: normalised images have mean about 0, and
        # a centred estimate would only shift the mean-colour directions' lambda slightly.
        moment = moment + patches.T @ patches
        count += len(patches)
    return moment / max(1, count), count


def patch_whitening_filters(images, kernel_size, count, eps=WHITENING_EPS):
    """count conv filters (count, C, K, K), float64, that whiten the K x K patches of `images`
    (normalised float (N, C, H, W)): filters [0, count//2) are v_k / sqrt(lambda_k + eps) for
    the eigenvectors of the patches' second-moment matrix, largest eigenvalue first, and
    filters [count//2, 2*(count//2)) are their negatives; an odd count ends with v_{count//2}.
    count may be at most 2 * C * K * K (each direction twice)."""
    require(np.ndim(images) == 4, "images", "a float array (N, C, H, W)", np.shape(images))
    # Raw 0..255 pixels would pass every shape check and whiten the wrong input (the mean
    # colour dominating, eps no longer a cap): the stem is made for normalised images.
    require(np.asarray(images).dtype.kind == "f", "images",
            "normalised float images (data.normalize)", str(np.asarray(images).dtype))
    require(is_number(eps) and eps >= 0, "eps", "a finite number >= 0", eps)
    D = np.shape(images)[1] * kernel_size ** 2
    require(isinstance(count, (int, np.integer)) and 1 <= count <= 2 * D, "count",
            f"an integer from 1 to {2 * D} (each of the {D} patch directions twice)", count)
    moment, P = patch_moment(images, kernel_size)  # (D, D)
    require(P >= D, "images", f"enough images for at least {D} patches (a {D}x{D} "
            f"covariance); patches of {kernel_size}x{kernel_size} found", P)
    eigenvalues, eigenvectors = np.linalg.eigh(moment)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    half = count // 2
    directions = eigenvectors[:, order].T / np.sqrt(eigenvalues[order] + eps)[:, None]  # (D, D)
    filters = np.concatenate([directions[:half], -directions[:half],
                              directions[half:half + count % 2]])  # (count, D)
    return filters.reshape(count, -1, kernel_size, kernel_size)


def whiten_stem(model, images, eps=WHITENING_EPS):
    """Overwrite the stem conv's filters of `model` (its module features.0.0) with the patch
    whitening of `images` (normalised float (N, C, H, W), at the resolution the network trains
    on): the first min(C_out, 2*C*K*K) filters, in pairs +v_k, -v_k (patch_whitening_filters);
    the rest keep their values. Returns the number of filters written."""
    modules = dict(model.named_modules())
    require(STEM in modules and "weight" in getattr(modules[STEM], "params", {}), "model",
            f"a MobileNet whose stem conv is the module {STEM}", type(model).__name__)
    weight = modules[STEM].params["weight"]  # (C_out, C_in, K, K)
    C_out, C_in, K, _ = weight.shape
    require(np.ndim(images) == 4 and np.shape(images)[1] == C_in, "images",
            f"an array (N, {C_in}, H, W) for a stem with {C_in} input channels",
            np.shape(images))
    count = min(C_out, 2 * C_in * K * K)
    weight[:count] = patch_whitening_filters(images, K, count, eps).astype(weight.dtype)
    return count
