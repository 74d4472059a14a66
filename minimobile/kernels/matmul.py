"""Matrix products: the 1x1 (pointwise) conv, the standard conv of the stem, the linear layer.

    1x1 conv    out[n] = W (C_out, C) @ x[n] (C, H*W)          x, out as (N, C, H*W)
    stem conv   out[n, o, i, j] = sum_{c, ki, kj} w[o, c, ki, kj] * x[n, c, i*s+ki-p, j*s+kj-p]
    linear      out = x (N, in) @ w.T (in, out)

Their backwards are products too: for the 1x1 conv dX[n] = W^T @ dout[n] and dW = sum_n
dout[n] @ x[n]^T (derived in notebooks/01_depthwise_separable.ipynb). Biases are added by the
ops (`elementwise.add_channel_bias_*`), not here.

The staircase: `_loops` (the sums as written), `_simple` (the same sums as Numba loops, parallel
over images, or over output channels where the batch is summed), `_fast` (BLAS products called
from inside Numba's pool, laid out so that no product is too short for BLAS).
"""

import numpy as np
from numba import get_num_threads, njit, prange

from .. import tuning
from . import threads_for
from .batchnorm import (STATISTICS_ONLY, _affine_activate_row, add_image_shifted_row_sums,
                        add_row_sums, affine_activate_plane, by_channel, input_gradient,
                        input_gradient_image, makes_row_sums, no_prologue, normalized_input,
                        statistics_rows)

# ---------------------------------------------------------------------------------------------
# Rung 1, loops.
# ---------------------------------------------------------------------------------------------


def pointwise_conv2d_forward_loops(out, x, w):
    """out (N, C_out, P) = w (C_out, C) applied to every pixel of x (N, C, P)."""
    N, C, P = x.shape
    for n in range(N):
        for o in range(w.shape[0]):
            for p in range(P):
                out[n, o, p] = sum(w[o, c] * x[n, c, p] for c in range(C))


def pointwise_conv2d_backward_loops(dx, dw, dout, x, w):
    """dx (N, C, P) and dw (C_out, C): each output pixel sends dout * w back to its input
    pixel's channels, and dout * x to the weights."""
    N, C, P = x.shape
    dx[...] = 0
    dw[...] = 0
    for n in range(N):
        for o in range(w.shape[0]):
            for c in range(C):
                for p in range(P):
                    dx[n, c, p] += w[o, c] * dout[n, o, p]
                    dw[o, c] += dout[n, o, p] * x[n, c, p]


def conv2d_forward_loops(out, x, w, stride, pad):
    """out (N, C_out, Ho, Wo): every output element is a sum over its window of all C
    channels, w (C_out, C, K, K), x read as 0 outside the image."""
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    for n in range(N):
        for o in range(C_out):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    total = 0.0
                    for c in range(C):
                        for ki in range(K):
                            for kj in range(K):
                                r, q = i * stride + ki - pad, j * stride + kj - pad
                                if 0 <= r < H and 0 <= q < W:
                                    total += w[o, c, ki, kj] * x[n, c, r, q]
                    out[n, o, i, j] = total


def conv2d_backward_loops(dx, dw, dout, x, w, stride, pad):
    """dx (N, C, H, W) and dw (C_out, C, K, K), each tap of each output in turn."""
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    dx[...] = 0
    dw[...] = 0
    for n in range(N):
        for o in range(C_out):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    g = dout[n, o, i, j]
                    for c in range(C):
                        for ki in range(K):
                            for kj in range(K):
                                r, q = i * stride + ki - pad, j * stride + kj - pad
                                if 0 <= r < H and 0 <= q < W:
                                    dx[n, c, r, q] += w[o, c, ki, kj] * g
                                    dw[o, c, ki, kj] += x[n, c, r, q] * g


def linear_forward_loops(out, x, w):
    """out (N, out) = x (N, in) @ w.T, w (out, in) as PyTorch stores it."""
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            out[n, o] = sum(w[o, i] * x[n, i] for i in range(x.shape[1]))


def linear_backward_loops(dx, dw, dout, x, w):
    """dx = dout @ w, dw = dout.T @ x."""
    dx[...] = 0
    dw[...] = 0
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            for i in range(x.shape[1]):
                dx[n, i] += dout[n, o] * w[o, i]
                dw[o, i] += dout[n, o] * x[n, i]


# ---------------------------------------------------------------------------------------------
# Rung 2, simple: the same sums in Numba, parallel over images for what belongs to one image
# (out, dx) and over output channels for the weight gradient, which sums over the batch (thread
# o alone writes dw[o]). The innermost loop runs along a contiguous row (pixels, or input
# features) so that LLVM vectorises it.
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def pointwise_conv2d_forward_simple(out, x, w):
    N, C, P = x.shape
    for n in prange(N):
        for o in range(w.shape[0]):
            row = out[n, o]
            row[:] = 0
            for c in range(C):
                woc = w[o, c]
                src = x[n, c]
                for p in range(P):
                    row[p] += woc * src[p]


@njit(cache=True, parallel=True)
def pointwise_conv2d_backward_simple(dx, dw, dout, x, w):
    N, C, P = x.shape
    C_out = w.shape[0]
    for n in prange(N):
        for c in range(C):
            row = dx[n, c]
            row[:] = 0
            for o in range(C_out):
                woc = w[o, c]
                g = dout[n, o]
                for p in range(P):
                    row[p] += woc * g[p]
    for o in prange(C_out):
        for c in range(C):
            total = 0.0
            for n in range(N):
                g = dout[n, o]
                src = x[n, c]
                for p in range(P):
                    total += g[p] * src[p]
            dw[o, c] = total


@njit(cache=True, parallel=True)
def conv2d_forward_simple(out, x, w, stride, pad):
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    for n in prange(N):
        for o in range(C_out):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    total = 0.0
                    for c in range(C):
                        for ki in range(K):
                            r = i * stride + ki - pad
                            if 0 <= r < H:
                                for kj in range(K):
                                    q = j * stride + kj - pad
                                    if 0 <= q < W:
                                        total += w[o, c, ki, kj] * x[n, c, r, q]
                    out[n, o, i, j] = total


@njit(cache=True, parallel=True)
def conv2d_backward_simple(dx, dw, dout, x, w, stride, pad):
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    for n in prange(N):  # dx[n] gathers from the outputs of image n only
        dx[n] = 0
        for o in range(C_out):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, o, i, j]
                    for c in range(C):
                        for ki in range(K):
                            r = i * stride + ki - pad
                            if 0 <= r < H:
                                for kj in range(K):
                                    q = j * stride + kj - pad
                                    if 0 <= q < W:
                                        dx[n, c, r, q] += w[o, c, ki, kj] * g
    for o in prange(C_out):  # dw[o] sums over the whole batch
        acc = np.zeros((C, K, K))
        for n in range(N):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, o, i, j]
                    for c in range(C):
                        for ki in range(K):
                            r = i * stride + ki - pad
                            if 0 <= r < H:
                                for kj in range(K):
                                    q = j * stride + kj - pad
                                    if 0 <= q < W:
                                        acc[c, ki, kj] += x[n, c, r, q] * g
        for c in range(C):
            for ki in range(K):
                for kj in range(K):
                    dw[o, c, ki, kj] = acc[c, ki, kj]


@njit(cache=True, parallel=True)
def linear_forward_simple(out, x, w):
    for n in prange(x.shape[0]):
        for o in range(w.shape[0]):
            total = 0.0
            for i in range(x.shape[1]):
                total += w[o, i] * x[n, i]
            out[n, o] = total


@njit(cache=True, parallel=True)
def linear_backward_simple(dx, dw, dout, x, w):
    N, F = x.shape
    for n in prange(N):
        for i in range(F):
            total = 0.0
            for o in range(w.shape[0]):
                total += dout[n, o] * w[o, i]
            dx[n, i] = total
    for o in prange(w.shape[0]):
        for i in range(F):
            total = 0.0
            for n in range(N):
                total += dout[n, o] * x[n, i]
            dw[o, i] = total


# ---------------------------------------------------------------------------------------------
# Rung 3, fast: BLAS. What changes against rung 2: the sums become matrix products, which
# OpenBLAS runs from registers and cache in blocks, where rung 2's loops reload a row of the
# output for every input channel. Forward+backward at batch 128 (bench_ops.py --rungs,
# 2026-11-29): the 1x1 conv 32->64 on 16x16 maps 28.0 ms on rung 2, 3.2 ms here (8.7x); the
# stem 3->32 on 32x32 131 against 7.8 ms (17x); the classifier 1280->10 1.8 against 0.33 ms. np.dot in
# nopython mode calls SciPy's BLAS, which parallel.py holds to one thread, and these kernels
# spread the calls over Numba's pool: a second thread pool for BLAS would fight Numba's for
# the two cores; inside Numba's pool both cores run BLAS and nothing spins.
#
# On NCHW arrays, image n of a 1x1 conv is out[n] = W @ x[n] with x[n] a (C, H*W) matrix in
# place, so large maps need no layout change at all. Small maps (4x4 at the end of a CIFAR
# network) make per-image products too short for BLAS (tuning.PER_IMAGE_MIN_PIXELS); there
# the images are laid side by side, channel-major, before the product. Rung 3 did it for
# the whole batch at once, (C, N*H*W), one product split by rows of its output: two passes
# over memory for the copies, and every task reading the whole copied batch. Rung 3b does it
# a group of images at a time (matmul_image_groups): each task copies a few images into a
# scratch matrix that stays in its cache, multiplies and copies the result out, so the copies
# cost cache traffic only and each product reads its operand once (tuning.POINTWISE_SMALL_MAPS
# picks; benchmarks/bench_pointwise.py times both). Weight gradients are summed over the batch
# in `sum_tasks` fixed partial sums (see kernels/__init__.py).
# ---------------------------------------------------------------------------------------------


# The prologue kind of squeeze-excite's gate (3d, below): image n's row k is read as
# x[n, k] * scale[n * K + k], one scale per image and channel, no shift. Kinds 0-3 are batch
# norm's (batchnorm.ACTIVATION_CODES), STATISTICS_ONLY reads x as it is.
SCALE_BY_IMAGE = 4
# Both, batch norm first (3d): kind NORMALIZE_THEN_SCALE + a, with a batch norm's activation
# code, reads image n's row k as act_a(x[n, k] * scale[k] + shift[k]) * scale[K + n * K + k]:
# the per-channel constants and then the gate, in one array.
NORMALIZE_THEN_SCALE = 8


@njit(cache=True)
def _scale_row(dst, src, a):
    """dst = src * a: the operation of elementwise.scale_channels_forward, so the same bits."""
    for p in range(src.size):
        dst[p] = src[p] * a


@njit(cache=True)
def _normalize_image(dst, src, n, scale, shift, kind):
    """dst = act(src * scale + shift) for image n's (K, P) matrix, row k with scale[k] and
    shift[k]: batch norm's operations in its order (batchnorm.affine_activate_plane); or, for
    SCALE_BY_IMAGE, dst = src * scale[n * K + k] row by row."""
    K = src.shape[0]
    for k in range(K):
        if kind == SCALE_BY_IMAGE:
            _scale_row(dst[k], src[k], scale[n * K + k])
        elif kind >= NORMALIZE_THEN_SCALE:
            affine_activate_plane(dst[k:k + 1], src[k:k + 1], scale[k], shift[k],
                                  kind - NORMALIZE_THEN_SCALE)
            _scale_row(dst[k], dst[k], scale[K + n * K + k])
        else:
            affine_activate_plane(dst[k:k + 1], src[k:k + 1], scale[k], shift[k], kind)


@njit(cache=True, parallel=True)
def matmul_per_image(out, a, b, ntasks, scale, shift, kind, stats=None):
    """out[n] = a @ b[n] for every n; a (M, K), b (N, K, P), out (N, M, P). With a prologue
    (kind not STATISTICS_ONLY, see 3c below), b[n] is read as act(b[n] * scale + shift), by
    ntasks tasks with a scratch image each (the split does not change any result). With
    `stats`, (rows, k0, channel_order) from batchnorm.statistics_rows, each image's batch-norm
    row sums are made just after its product, while it is in cache (kernels/batchnorm.py,
    3g); image 0 goes first, on this thread, as its first pixels are the shifts k0."""
    N, K, P = b.shape
    first = 0
    if stats is not None:
        _image_products(out, a, b, scale, shift, kind, 0, 1, stats)
        first = 1
    if kind == STATISTICS_ONLY and stats is None:
        for n in prange(N):
            np.dot(a, b[n], out[n])
    else:
        ntasks = max(1, min(N - first, ntasks))
        for t in prange(ntasks):
            _image_products(out, a, b, scale, shift, kind, first + t * (N - first) // ntasks,
                            first + (t + 1) * (N - first) // ntasks, stats)


@njit(cache=True)
def _image_products(out, a, b, scale, shift, kind, lo, hi, stats):
    """Images [lo, hi) of matmul_per_image, with a scratch image of their own."""
    N, K, P = b.shape
    image = np.empty((K, P) if kind != STATISTICS_ONLY else (0, 0), dtype=b.dtype)
    for n in range(lo, hi):
        if kind == STATISTICS_ONLY:
            np.dot(a, b[n], out[n])
        else:
            _normalize_image(image, b[n], n, scale, shift, kind)  # cache-sized
            np.dot(a, image, out[n])
        if stats is not None:
            rows, k0, channel_order = stats
            if n == 0:
                for k in range(out.shape[1]):
                    k0[k] = out[0, k, 0]
            add_image_shifted_row_sums(rows, n, out[n], k0, channel_order)


@njit(cache=True)
def _add_into(acc, part):
    M, K = acc.shape
    for i in range(M):
        dst = acc[i]
        src = part[i]
        for j in range(K):
            dst[j] += src[j]


@njit(cache=True)
def _sum_in_order(row, parts):
    """row = parts[0] + parts[1] + ... added in that order; parts (tasks, K), row (K,)."""
    K = row.size
    first = parts[0]
    for j in range(K):
        row[j] = first[j]
    for t in range(1, parts.shape[0]):
        src = parts[t]
        for j in range(K):
            row[j] += src[j]


@njit(cache=True, parallel=True)
def _sum_partials(dw, partial, tall):
    """dw = partial[0] + partial[1] + ..., added in task order; partial (tasks, M, K), or
    (tasks, K, M) holding the transposes when not tall."""
    M = dw.shape[0]
    for i in prange(M):
        if tall:
            _sum_in_order(dw[i], partial[:, i])
        else:
            _sum_in_order(dw[i], partial[:, :, i])


# The weight gradient's fixed shares: task t sums its images' products into partial[t], its
# first product written there directly (no zeroed buffer to add it to), and the shares are
# then added in task order, row by row on all threads. Before, partial was zero-filled and the
# shares added on one thread: for V1 1.0 at batch 128, 4 x 12.6 MB zeroed and 3 x 12.6 MB
# added per step, one core working while the other waited.
# Which way round: an image's weight gradient is a (M, K) product summed over its P pixels,
# and OpenBLAS makes it faster with more rows than columns. For a projection (fewer outputs
# than inputs, M < K: V2's and V3's last 1x1 conv in each block) the shares hold the
# transposes, x[n] @ dout[n].T, (K, M), and _sum_partials reads them back transposed. In
# process against the products made one way (AMD EPYC, 2026-11-30, batch 128, paired
# medians of 9 rounds; docs/PERFORMANCE.md): the whole backward took 0.76-0.84 of the time
# for 96 -> 16, 48 -> 16 and 48 -> 8 on 32x32 maps, 192 -> 32 on 16x16 and 144 -> 24 on 8x8,
# 0.90-0.95 on 4x4 (288 -> 48, 480 -> 80, 384 -> 64), and the same at 2x2 and where M >= K.


@njit(cache=True, parallel=True)
def matmul_per_image_backward(dx, dw, dout, x, wt, sum_tasks, scale, shift, kind, bn_rows=None,
                              bn_mean=None, bn_by_channel=False, dout_bn=None):
    """The backward of out[n] = w @ x[n]: dw = sum over n of dout[n] @ x[n].T and dx[n] =
    wt @ dout[n]; dout (N, M, P), x (N, K, P), dw (M, K), wt (K, M), dx (N, K, P). Both
    products of an image run back to back, while dout[n] is still in cache. With a prologue,
    x[n] is read as act(x[n] * scale + shift), and dx is the gradient with respect to that.
    With bn_rows (a batch norm's kind only), each image's dx gets that batch norm's
    first-pass sums as it is written (3e below). With dout_bn = (y, scale, shift, consts,
    spread, kind), dout[n] is made from the gradient handed to the batch norm after the conv
    first, into scratch (3f below)."""
    N, _, P = x.shape
    M, K = dw.shape
    tall = M >= K  # which way round the weight gradient's product is made (see above)
    R, S = (M, K) if tall else (K, M)
    partial = np.empty((sum_tasks, R, S), dtype=dw.dtype)
    for t in prange(sum_tasks):
        product = np.empty((R, S), dtype=dw.dtype)
        image = np.empty((K, P) if kind != STATISTICS_ONLY else (0, 0), dtype=x.dtype)
        dout_image = np.empty((M, P) if dout_bn is not None else (0, 0), dtype=dout.dtype)
        lo, hi = t * N // sum_tasks, (t + 1) * N // sum_tasks
        if hi == lo:
            partial[t][:] = 0
        for n in range(lo, hi):
            xn = x[n]
            if kind != STATISTICS_ONLY:
                _normalize_image(image, xn, n, scale, shift, kind)
                xn = image
            dn = dout[n]
            if dout_bn is not None:  # batch norm's dx, made before both products read it
                input_gradient_image(dout_image, dn, dout_bn[0][n], dout_bn[1], dout_bn[2],
                                     dout_bn[3], dout_bn[4], dout_bn[5])
                dn = dout_image
            target = partial[t] if n == lo else product
            if tall:
                np.dot(dn, xn.T, target)
            else:
                np.dot(xn, dn.T, target)
            if n != lo:
                _add_into(partial[t], product)
            np.dot(wt, dn, dx[n])
            if bn_rows is not None:
                _add_image_row_sums(bn_rows, n, dx, x, scale, shift, bn_mean, kind,
                                    bn_by_channel)
    _sum_partials(dw, partial, tall)


@njit(cache=True)
def _add_image_row_sums(bn_rows, n, dx, x, scale, shift, bn_mean, kind, bn_by_channel):
    """batchnorm.add_row_sums for every row of image n of dx and x (N, K, P)."""
    g = np.empty(x.shape[2], dtype=x.dtype)
    for k in range(x.shape[1]):
        add_row_sums(bn_rows, n, k, g, dx[n, k], x[n, k], scale[k], shift[k], bn_mean, kind,
                     bn_by_channel)


@njit(cache=True)
def _spread_constants(scale, shift, kind, P):
    """For batch norm's prologue kinds (0-3), the per-channel constants spread out to one per
    position of an image's (K, P) matrix, (K*P,) each, as _gather_images takes them; other
    kinds' constants as they are."""
    if kind == STATISTICS_ONLY or kind >= SCALE_BY_IMAGE:
        return scale, shift
    return np.repeat(scale, P), np.repeat(shift, P)


@njit(cache=True)
def _gather_images(cols, b, lo, hi, scale, shift, kind):
    """cols[:, i*P:(i+1)*P] = b[lo + i] for the images lo..hi-1: their (K, P) matrices side by
    side, channel-major; b (N, K, P), cols (K, (hi-lo)*P). Reads each image in memory order.
    With a prologue (kind not STATISTICS_ONLY) the copy is act(b * scale + shift), or b scaled
    per image and channel (SCALE_BY_IMAGE).

    For batch norm's kinds, scale and shift come spread out (_spread_constants): each image
    is normalised in one vectorised pass over its K*P values into scratch, and then copied.
    Normalising it channel by channel took a call per row of 16 or 4 pixels, which made the
    prologue cost 15-20 % of a product at 2x2 (V1 1.0's 1024 -> 1024) where it now costs
    what a pass over L1 costs. The operations are affine_activate_plane's, in its order, so
    the bits are the same."""
    K, P = b.shape[1], b.shape[2]
    if STATISTICS_ONLY < kind < SCALE_BY_IMAGE:
        image = np.empty((K, P), dtype=b.dtype)
        for n in range(lo, hi):
            _affine_activate_row(image.reshape(K * P), b[n].reshape(K * P), scale, shift, kind)
            _copy_image_into(cols, image, (n - lo) * P)
        return
    for n in range(lo, hi):
        at = (n - lo) * P
        if kind == SCALE_BY_IMAGE:
            for k in range(K):
                _scale_row(cols[k, at:at + P], b[n, k], scale[n * K + k])
            continue
        if kind >= NORMALIZE_THEN_SCALE:
            for k in range(K):
                affine_activate_plane(cols[k:k + 1, at:at + P], b[n, k:k + 1], scale[k],
                                      shift[k], kind - NORMALIZE_THEN_SCALE)
                _scale_row(cols[k, at:at + P], cols[k, at:at + P], scale[K + n * K + k])
            continue
        _copy_image_into(cols, b[n], at)


@njit(cache=True)
def _copy_image_into(cols, image, at):
    """cols[:, at:at+P] = image (K, P)."""
    K, P = image.shape
    for k in range(K):
        src = image[k]
        dst = cols[k]
        for p in range(P):
            dst[at + p] = src[p]


@njit(cache=True)
def _scatter_images(out, cols, lo, hi):
    """The inverse of _gather_images: out[lo + i] = cols[:, i*P:(i+1)*P]."""
    M, P = out.shape[1], out.shape[2]
    for n in range(lo, hi):
        at = (n - lo) * P
        for m in range(M):
            src = cols[m]
            dst = out[n, m]
            for p in range(P):
                dst[p] = src[at + p]


@njit(cache=True, parallel=True)
def matmul_image_groups(out, a, b, group, scale, shift, kind):
    """out[n] = a @ b[n] for every n, `group` images per product: each task lays its images'
    (K, P) matrices side by side in a scratch matrix (K, group*P) small enough to stay in its
    cache, makes one product and copies the (M, group*P) result back into out (N, M, P). With
    a prologue, the images are normalised in that copy."""
    N, K, P = b.shape
    M = a.shape[0]
    scale, shift = _spread_constants(scale, shift, kind, P)
    for g in prange((N + group - 1) // group):
        lo = g * group
        hi = min(N, lo + group)
        cols = np.empty((K, (hi - lo) * P), dtype=b.dtype)
        product = np.empty((M, (hi - lo) * P), dtype=out.dtype)
        _gather_images(cols, b, lo, hi, scale, shift, kind)
        np.dot(a, cols, product)
        _scatter_images(out, product, lo, hi)


@njit(cache=True, parallel=True)
def matmul_image_groups_backward(dx, dw, dout, x, wt, group, sum_tasks, scale, shift, kind,
                                 bn_rows=None, bn_mean=None, bn_by_channel=False, dout_bn=None):
    """The backward of matmul_image_groups(out, w, x, group, ...): per group of images, dw
    gains dout_g @ x_g.T and dx_g = wt @ dout_g, with x_g (normalised, with a prologue) and
    dout_g gathered as in the forward. The groups are cut into sum_tasks fixed shares, each
    summed by one task in group order. bn_rows and dout_bn as in matmul_per_image_backward
    (dout_bn's dx made image by image as the group is gathered)."""
    N, K, P = x.shape
    M = dw.shape[0]
    ngroups = (N + group - 1) // group
    ntasks = min(sum_tasks, ngroups)
    channel_scale, channel_shift = scale, shift
    scale, shift = _spread_constants(scale, shift, kind, P)
    tall = M >= K  # as in matmul_per_image_backward
    R, S = (M, K) if tall else (K, M)
    partial = np.empty((ntasks, R, S), dtype=dw.dtype)  # each task has a group at least
    for t in prange(ntasks):
        # Flat buffers, reshaped per group, so a last, shorter group is still contiguous.
        cols_buffer = np.empty(K * group * P, dtype=x.dtype)
        dcols_buffer = np.empty(M * group * P, dtype=dout.dtype)
        product = np.empty((R, S), dtype=dw.dtype)
        for g in range(t * ngroups // ntasks, (t + 1) * ngroups // ntasks):
            lo = g * group
            hi = min(N, lo + group)
            width = (hi - lo) * P
            cols = cols_buffer[:K * width].reshape(K, width)
            dcols = dcols_buffer[:M * width].reshape(M, width)
            _gather_images(cols, x, lo, hi, scale, shift, kind)
            if dout_bn is None:
                _gather_images(dcols, dout, lo, hi, scale[:0], shift[:0], STATISTICS_ONLY)
            else:  # batch norm's dx, made as it is gathered
                dout_image = np.empty((M, P), dtype=dout.dtype)
                for n in range(lo, hi):
                    input_gradient_image(dout_image, dout[n], dout_bn[0][n], dout_bn[1],
                                         dout_bn[2], dout_bn[3], dout_bn[4], dout_bn[5])
                    _copy_image_into(dcols, dout_image, (n - lo) * P)
            first = g == t * ngroups // ntasks
            target = partial[t] if first else product
            if tall:
                np.dot(dcols, cols.T, target)
            else:
                np.dot(cols, dcols.T, target)
            if not first:
                _add_into(partial[t], product)
            np.dot(wt, dcols, cols)  # cols now holds this group's dx
            _scatter_images(dx, cols, lo, hi)
            if bn_rows is not None:
                for n in range(lo, hi):
                    _add_image_row_sums(bn_rows, n, dx, x, channel_scale, channel_shift,
                                        bn_mean, kind, bn_by_channel)
    _sum_partials(dw, partial, tall)


@njit(cache=True, parallel=True)
def matmul_rows(out, a, b, ntasks):
    """out = a @ b, the rows of a and out split into ntasks products; a (M, K), b (K, P)."""
    M = a.shape[0]
    for t in prange(ntasks):
        lo = t * M // ntasks
        hi = (t + 1) * M // ntasks
        if hi > lo:
            np.dot(a[lo:hi], b, out[lo:hi])


@njit(cache=True, parallel=True)
def swap_leading_axes(out, x):
    """out[j, i, :] = x[i, j, :]: NCHW <-> CNHW, moving whole H*W rows; x (A, B, P)."""
    A, B, P = x.shape
    for ab in prange(A * B):
        a = ab // B
        b = ab % B
        src = x[a, b]
        dst = out[b, a]
        for p in range(P):
            dst[p] = src[p]

# ---------------------------------------------------------------------------------------------
# The stem conv by im2col (C_in = 3; also the dense conv of the cost comparison). Image by
# image, each thread builds the (C*K*K, Ho*Wo) column matrix of one image in a scratch buffer
# that stays in its cache and multiplies: out[n] = W @ cols, written straight into the NCHW
# output. The backward rebuilds the columns from x rather than keeping them: reading x again
# costs far less memory traffic than writing and re-reading a column matrix K*K times its size.
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _valid_columns(kj, stride, pad, W, Wo):
    """The output columns j whose input column j*stride + kj - pad lies inside 0..W-1."""
    lo = max(0, (pad - kj + stride - 1) // stride)
    hi = min(Wo, (W - 1 + pad - kj) // stride + 1) if W - 1 + pad - kj >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True)
def _im2col_image(cols, x, K, stride, pad, Ho, Wo):
    """cols[(c*K+ki)*K+kj, i*Wo+j] = xpad[c, i*s+ki, j*s+kj] for one image x (C, H, W)."""
    C, H, W = x.shape
    zero = cols.dtype.type(0)
    for c in range(C):
        for ki in range(K):
            for kj in range(K):
                row = cols[(c * K + ki) * K + kj]
                lo, hi = _valid_columns(kj, stride, pad, W, Wo)
                for i in range(Ho):
                    dst = row[i * Wo:]
                    r = i * stride + ki - pad
                    if r < 0 or r >= H:
                        for j in range(Wo):
                            dst[j] = zero
                        continue
                    for j in range(lo):
                        dst[j] = zero
                    for j in range(hi, Wo):
                        dst[j] = zero
                    part = x[c, r, lo * stride + kj - pad:]
                    inside = dst[lo:]
                    if stride == 1:
                        for j in range(hi - lo):
                            inside[j] = part[j]
                    else:
                        for j in range(hi - lo):
                            inside[j] = part[j * stride]


@njit(cache=True)
def _col2im_image(dx, dcols, K, stride, pad, Ho, Wo):
    """The adjoint of _im2col_image: dx (C, H, W) = the sum of dcols over the taps that read
    each pixel."""
    C, H, W = dx.shape
    dx[:] = 0
    for c in range(C):
        for ki in range(K):
            for kj in range(K):
                row = dcols[(c * K + ki) * K + kj]
                lo, hi = _valid_columns(kj, stride, pad, W, Wo)
                for i in range(Ho):
                    r = i * stride + ki - pad
                    if r < 0 or r >= H:
                        continue
                    part = dx[c, r, lo * stride + kj - pad:]
                    inside = row[i * Wo + lo:]
                    if stride == 1:
                        for j in range(hi - lo):
                            part[j] += inside[j]
                    else:
                        for j in range(hi - lo):
                            part[j * stride] += inside[j]


@njit(cache=True, parallel=True)
def conv2d_forward_im2col(out, x, w2, K, stride, pad, Ho, Wo, ntasks):
    """out[n] = w2 @ im2col(x[n]); x (N, C, H, W), w2 (C_out, C*K*K), out (N, C_out, Ho*Wo)."""
    N = x.shape[0]
    for t in prange(ntasks):
        cols = np.empty((w2.shape[1], Ho * Wo), dtype=x.dtype)
        for n in range(t * N // ntasks, (t + 1) * N // ntasks):
            _im2col_image(cols, x[n], K, stride, pad, Ho, Wo)
            np.dot(w2, cols, out[n])


@njit(cache=True, parallel=True)
def conv2d_backward_im2col(dx, dw2, dout, x, w2t, K, stride, pad, Ho, Wo, sum_tasks):
    """dw2 = sum_n dout[n] @ im2col(x[n]).T and dx[n] = col2im(w2t @ dout[n]); dout
    (N, C_out, Ho*Wo), w2t (C*K*K, C_out), dw2 (C_out, C*K*K). Partial sums as for the 1x1."""
    N = x.shape[0]
    C_out, CKK = dw2.shape
    partial = np.zeros((sum_tasks, C_out, CKK), dtype=dw2.dtype)
    for t in prange(sum_tasks):
        cols = np.empty((CKK, Ho * Wo), dtype=x.dtype)
        dcols = np.empty((CKK, Ho * Wo), dtype=x.dtype)
        product = np.empty((C_out, CKK), dtype=dw2.dtype)
        for n in range(t * N // sum_tasks, (t + 1) * N // sum_tasks):
            _im2col_image(cols, x[n], K, stride, pad, Ho, Wo)
            np.dot(dout[n], cols.T, product)
            _add_into(partial[t], product)
            np.dot(w2t, dout[n], dcols)
            _col2im_image(dx[n], dcols, K, stride, pad, Ho, Wo)
    dw2[:] = partial[0]
    for t in range(1, sum_tasks):
        _add_into(dw2, partial[t])


# ---------------------------------------------------------------------------------------------
# The fast rung: the layout and split for the array's size, from minimobile.tuning.
# ---------------------------------------------------------------------------------------------


def _to_channel_major(a):
    """(N, C, P) -> (C, N*P): a copy, or for N = 1 (where the two layouts are the same) a view
    that saves copying a whole map at batch-1 inference."""
    N, C, P = a.shape
    if N == 1:
        return a.reshape(C, P)
    out = np.empty((C, N, P), dtype=a.dtype)
    swap_leading_axes(out, a)
    return out.reshape(C, N * P)


def _from_channel_major(out, a):
    """(C, N*P) -> out (N, C, P)."""
    N, C, P = out.shape
    if N == 1:
        out[0] = a
    else:
        swap_leading_axes(out, a.reshape(C, N, P))


def _matmul(out, a, b):
    """out = a @ b, its rows split into a fixed number of products shared among Numba's
    threads (a split that depended on the thread count might round differently)."""
    matmul_rows(out, np.ascontiguousarray(a), b, max(1, min(a.shape[0], tuning.SUM_TASKS)))


def _per_image(x):
    N, _, P = x.shape
    return N > 1 and P >= tuning.PER_IMAGE_MIN_PIXELS


def pointwise_conv2d_forward_fast(out, x, w):
    with threads_for(max(x.size, out.size)):
        _pointwise_conv2d_forward_fast(out, x, w, *no_prologue(x))


def pointwise_conv2d_backward_fast(dx, dw, dout, x, w):
    with threads_for(max(x.size, dout.size)):
        _pointwise_conv2d_backward_fast(dx, dw, dout, x, w, *no_prologue(x))


# ---------------------------------------------------------------------------------------------
# 3c. The input normalised as it is read, as the depthwise conv does (kernels/depthwise.py,
# 3c): in V1's unit and in V2's and V3's blocks without squeeze-excite, the output of the
# depthwise conv's batch norm and activation, y = act(x * scale + shift), is read by one 1x1
# conv alone. Both of the fast rung's paths can apply the normalisation where they already
# touch each image: on small maps in the copy that lays the images side by side
# (_gather_images), on large maps in a copy of one image into a cache-sized scratch matrix
# before its product (which the plain path does not make: BLAS reads x[n] in place). So y is
# never written to memory or kept for the backward, which recomputes it for the weight's
# gradient; dx is the gradient with respect to y, which batch norm's backward turns into
# the gradient with respect to x, as for the depthwise conv. The same bits as normalising first.
# Rungs 1 and 2 make y whole first (batchnorm.normalized_input) and run their plain loops.
# ---------------------------------------------------------------------------------------------


def _normalized_matrices(x, scale, shift, kind):
    """normalized_input for x (N, C, P), each image's channels a plane of one row; for
    SCALE_BY_IMAGE (3d), x[n, c] * scale[n * C + c]; for NORMALIZE_THEN_SCALE + a, both."""
    N, C, P = x.shape
    if kind == SCALE_BY_IMAGE:
        return x * scale.reshape(N, C, 1)
    if kind >= NORMALIZE_THEN_SCALE:
        y = normalized_input(x.reshape(N, C, 1, P), scale[:C], shift, kind - NORMALIZE_THEN_SCALE)
        return y.reshape(N, C, P) * scale[C:].reshape(N, C, 1)
    return normalized_input(x.reshape(N, C, 1, P), scale, shift, kind).reshape(N, C, P)


def pointwise_conv2d_normalized_forward_loops(out, x, w, scale, shift, kind):
    """out = the 1x1 conv of act(x * scale + shift), act by batch norm's kind codes."""
    pointwise_conv2d_forward_loops(out, _normalized_matrices(x, scale, shift, kind), w)


def pointwise_conv2d_normalized_backward_loops(dx, dw, dout, x, w, scale, shift, kind):
    """dx: the gradient with respect to the conv's input act(x * scale + shift), not x."""
    pointwise_conv2d_backward_loops(dx, dw, dout, _normalized_matrices(x, scale, shift, kind), w)


def pointwise_conv2d_normalized_forward_simple(out, x, w, scale, shift, kind):
    pointwise_conv2d_forward_simple(out, _normalized_matrices(x, scale, shift, kind), w)


def pointwise_conv2d_normalized_backward_simple(dx, dw, dout, x, w, scale, shift, kind):
    pointwise_conv2d_backward_simple(dx, dw, dout, _normalized_matrices(x, scale, shift, kind), w)


def pointwise_conv2d_normalized_forward_fast(out, x, w, scale, shift, kind):
    with threads_for(max(x.size, out.size)):
        _pointwise_conv2d_forward_fast(out, x, w, scale, shift, kind)


def pointwise_conv2d_forward_with_statistics(out, x, w, scale, shift, kind):
    """The fast forward (kind as pointwise_conv2d_normalized_forward_fast's, STATISTICS_ONLY
    for x as it is) that also makes the statistics of the batch norm reading `out`, where
    the products go image by image (kernels/batchnorm.py, 3g): returns their (2, N, C_out)
    row sums for batchnorm2d_forward_from_row_sums, or None (then the conv runs as it always
    does: on small maps the images' products are grouped, and batch norm sums in lanes)."""
    stats = statistics_rows(out) if _per_image(x) else None
    with threads_for(max(x.size, out.size)):
        _pointwise_conv2d_forward_fast(out, x, w, scale, shift, kind, stats)
    return None if stats is None else stats[0]


def pointwise_conv2d_normalized_backward_fast(dx, dw, dout, x, w, scale, shift, kind):
    with threads_for(max(x.size, dout.size)):
        _pointwise_conv2d_backward_fast(dx, dw, dout, x, w, scale, shift, kind)


# ---------------------------------------------------------------------------------------------
# 3d. The input scaled per image and channel as it is read: squeeze-excite's output,
# u[n, c] = y[n, c] * s[n, c], is read by V3's 1x1 projection alone. The same paths as 3c,
# with prologue kind SCALE_BY_IMAGE and scale = s flattened to N*C values: each image's rows
# are multiplied by their gate where 3c normalises them. So u is never written or kept (the
# gate keeps y and s for its own backward anyway), and dx is the gradient with respect to u,
# which the gate's backward takes as before. The same bits as scaling first
# (elementwise.scale_channels_forward multiplies the same two numbers). The rung functions
# are 3c's: rungs 1 and 2 make u whole first (_normalized_matrices).
# In V3 the gate's input y is itself batch norm's output act(z * scale + shift), which the
# gate pools and scales on reading too (kernels/elementwise.py): then the projection reads
# act(z * scale + shift) * s, kind NORMALIZE_THEN_SCALE + act, in the same two roundings as
# writing y and then u, so neither is ever written or kept.
# ---------------------------------------------------------------------------------------------


def _image_group(x):
    """Images per product on small maps: enough for tuning.POINTWISE_GROUP_COLUMNS columns."""
    N, _, P = x.shape
    return max(1, min(N, -(-tuning.POINTWISE_GROUP_COLUMNS // P)))


def _makes_bn_row_sums(x, kind):
    """Whether the fast backward makes a batch norm's row sums for this input (see 3e)."""
    return (STATISTICS_ONLY < kind < SCALE_BY_IMAGE and makes_row_sums(x.shape[2])
            and (_per_image(x) or tuning.POINTWISE_SMALL_MAPS == "groups"))


def _pointwise_conv2d_forward_fast(out, x, w, scale, shift, kind, stats=None):
    if _per_image(x):
        matmul_per_image(out, w, x, tuning.POINTWISE_TASKS_PER_THREAD * get_num_threads(),
                         scale, shift, kind, stats)
    elif tuning.POINTWISE_SMALL_MAPS == "groups":
        matmul_image_groups(out, w, x, _image_group(x), scale, shift, kind)
    else:
        if kind != STATISTICS_ONLY:  # this path copies the batch anyway: normalise it first
            x = _normalized_matrices(x, scale, shift, kind)
        product = np.empty((w.shape[0], x.shape[0] * x.shape[2]), dtype=x.dtype)
        _matmul(product, w, _to_channel_major(x))
        _from_channel_major(out, product)


def _pointwise_conv2d_backward_fast(dx, dw, dout, x, w, scale, shift, kind, bn_rows=None,
                                    bn_mean=None, bn_by_channel=False, dout_bn=None):
    # W^T as a view, Fortran-ordered: np.dot hands BLAS the transpose flag instead of a copy.
    # Copying it cost more than it looks: a transposed copy reads with a stride of a row, and
    # V1 1.0's thirteen 1x1 weights (12.6 MB) took 26 ms per step that way, on one thread.
    wt = w.T
    if _per_image(x):
        matmul_per_image_backward(dx, dw, dout, x, wt, tuning.SUM_TASKS, scale, shift, kind,
                                  bn_rows, bn_mean, bn_by_channel, dout_bn)
    elif tuning.POINTWISE_SMALL_MAPS == "groups":
        matmul_image_groups_backward(dx, dw, dout, x, wt, _image_group(x), tuning.SUM_TASKS,
                                     scale, shift, kind, bn_rows, bn_mean, bn_by_channel, dout_bn)
    else:
        if dout_bn is not None:  # this path reads dout whole: make batch norm's dx first
            made = np.empty_like(dout)
            input_gradient(made, dout, *dout_bn)
            dout = made
        if kind != STATISTICS_ONLY:
            x = _normalized_matrices(x, scale, shift, kind)
        dc = _to_channel_major(dout)  # (C_out, N*P)
        _matmul(dw, dc, _to_channel_major(x).T)
        product = np.empty((x.shape[1], dc.shape[1]), dtype=x.dtype)
        _matmul(product, np.ascontiguousarray(wt), dc)  # split by rows: needs C order
        _from_channel_major(dx, product)


def conv2d_forward_fast(out, x, w, stride, pad):
    with threads_for(out.size):
        _conv2d_forward_fast(out, x, w, stride, pad)


def conv2d_backward_fast(dx, dw, dout, x, w, stride, pad):
    with threads_for(dout.size):
        _conv2d_backward_fast(dx, dw, dout, x, w, stride, pad)


def _conv2d_forward_fast(out, x, w, stride, pad):
    N = x.shape[0]
    C_out, _, K, _ = w.shape
    Ho, Wo = out.shape[2], out.shape[3]
    conv2d_forward_im2col(out.reshape(N, C_out, Ho * Wo), x,
                          np.ascontiguousarray(w.reshape(C_out, -1)), K, stride, pad, Ho, Wo,
                          max(1, min(N, get_num_threads())))


def _conv2d_backward_fast(dx, dw, dout, x, w, stride, pad):
    N = x.shape[0]
    C_out, _, K, _ = w.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    conv2d_backward_im2col(dx, dw.reshape(C_out, -1), dout.reshape(N, C_out, Ho * Wo), x,
                           w.reshape(C_out, -1).T, K, stride, pad, Ho, Wo,  # a view, as above
                           tuning.SUM_TASKS)


def linear_forward_fast(out, x, w):
    """One BLAS product (the classifier is tiny: N x 1280 x 10)."""
    np.dot(x, w.T, out=out)


def linear_backward_fast(dx, dw, dout, x, w):
    np.dot(dout, w, out=dx)
    np.dot(dout.T, x, out=dw)


# ---------------------------------------------------------------------------------------------
# 3e. Batch norm's backward sums, made here, as the depthwise conv makes them (see
# kernels/depthwise.py, 3d, and kernels/batchnorm.py, 3e): when x is a batch norm's output
# read normalised (3c), dx is that batch norm's incoming gradient. Each image's dx is
# written by its product (large maps) or copied out of its group's (small maps) while it
# and the image's x, which the product's prologue has just read, are in cache: the rows'
# sums are made there, and the batch norm runs its second pass alone. Not for the gate's
# kinds (3d), whose dx is not a batch norm's gradient, nor on maps whose rows batch norm
# sums in per-position lanes.
# ---------------------------------------------------------------------------------------------


def pointwise_conv2d_backward_fused(dx, dw, dout, x, w, scale, shift, kind, mean=None,
                                    dout_bn=None):
    """pointwise_conv2d_normalized_backward_fast (kind STATISTICS_ONLY: the plain backward)
    with either fusion or both: `mean` and the row sums it returns as in
    depthwise.depthwise_conv2d_backward_fused (None where they are not made, see above), and
    dout_bn = (y, scale, shift, consts, spread, kind) with dout the gradient handed to the
    batch norm after the conv, whose dx the conv makes as it reads (3f in
    kernels/batchnorm.py)."""
    rows = None
    if mean is not None and _makes_bn_row_sums(x, kind):
        rows = np.zeros((2, x.shape[0], x.shape[1]))
    with threads_for(max(x.size, dout.size)):
        _pointwise_conv2d_backward_fast(dx, dw, dout, x, w, scale, shift, kind, rows,
                                        None if rows is None else mean.astype(x.dtype),
                                        by_channel(x.shape[2]), dout_bn)
    return rows
