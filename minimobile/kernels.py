"""Every Numba kernel of minimobile, in one place.

Kernels are loops over preallocated arrays, outputs first (llm.c's order). They allocate only
small per-thread scratch buffers, never in the innermost loop. `prange` runs only over disjoint
writes: images for forward passes, channels wherever a per-channel weight gradient or
statistic is summed, or SUM_TASKS fixed shares of the batch whose partial sums are added in
task order. So every result is the same from run to run and for any thread count.
The plain NumPy references these are tested against live in `minimobile/reference.py`.

Debugging: `NUMBA_DISABLE_JIT=1 pytest -x tests/test_kernels.py` runs these as plain Python,
or call `kernel.py_func(...)` on small arrays to step through one with pdb.

Two performance notes that shape the code:
- Inner loops index with slices that start at the offset (`src = xp[off:]; src[q]`) instead of
  `xp[q + off]`: Numba must guard a possibly negative index for wrap-around, and that guard
  stops LLVM from vectorising the loop. A slice starts at a known non-negative index.
- Sums that must be exact in order (gradient checks compare at 1e-10) are accumulated
  elementwise into small vectors and reduced at the end, so LLVM can vectorise the
  accumulation without reordering floating-point additions (we never use fastmath).
"""

import numpy as np
from numba import njit, prange

# Sums over the batch that are not split by channel (the weight gradients of the matrix
# products and of the channels-last depthwise conv, batch norm's sums on small maps) are cut
# into this many fixed shares of the images, each summed by one task, and the partial sums are
# added in task order: the result does not depend on how many threads ran the tasks. 4 keeps
# two cores busy with little extra memory.
SUM_TASKS = 4


# ---------------------------------------------------------------------------------------------
# Depthwise convolution: w (C, 1, K, K), one K x K filter per channel.
#
# Each (n, c) plane is copied into a zero-padded scratch plane, so the convolution becomes K*K
# shifted, branch-free, vectorisable passes over a flat array: a "wide" output whose rows have
# the scratch plane's pitch, of which the first Wo columns are real.
#
# With stride s, the padded plane is split into s*s phase planes, phase (a, b) holding the
# pixels at rows = a and columns = b (mod s), each of pitch Wh = ceil(Wp / s). Tap (ki, kj)
# then reads phase (ki % s, kj % s) shifted by (ki // s, kj // s), so a stride-2 layer is again
# K*K contiguous passes, over exactly its own Ho x Wo outputs. (At s = 1 there is one phase,
# the padded plane itself.) The backward runs the same passes transposed: dout is spread onto
# the wide grid (zeros in the junk columns), each tap adds into its phase of dx and into its
# lane of dw, and dx is gathered back from the phases.
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _phase_layout(H, W, K, s, pad, Hh, Wh):
    """Where things live in the flat phase planes, computed once per call so that the per-plane
    loops do no integer division (which costs more than the convolution on small maps):
    row_start[r, b], where row r's pixels with (col + pad) % s == b begin; col_first[b] and
    col_count[b], which columns those are; tap_start[k], where tap k = ki*K + kj reads from."""
    row_start = np.empty((H, s), dtype=np.int64)
    col_first = np.empty(s, dtype=np.int64)
    col_count = np.empty(s, dtype=np.int64)
    for b in range(s):
        first = (b - pad) % s
        col_first[b] = first
        col_count[b] = (W - first + s - 1) // s if W > first else 0
        for r in range(H):
            pr = r + pad
            row_start[r, b] = ((pr % s) * s + b) * Hh * Wh + (pr // s) * Wh + (first + pad) // s
    tap_start = np.empty(K * K, dtype=np.int64)
    for k in range(K * K):
        ki, kj = k // K, k % K
        tap_start[k] = ((ki % s) * s + kj % s) * Hh * Wh + (ki // s) * Wh + kj // s
    return row_start, col_first, col_count, tap_start


@njit(cache=True)
def _copy_into_phases(xp, plane, s, row_start, col_first, col_count):
    """Write an (H, W) plane into the interior of its s*s flat zero-bordered phase planes."""
    H, W = plane.shape
    for r in range(H):
        src = plane[r]
        if s == 1:
            dst = xp[row_start[r, 0]:]
            for m in range(W):
                dst[m] = src[m]
        elif s == 2:
            # Even and odd columns in one loop with a literal stride: LLVM turns the pair of
            # strided loads into vector shuffles, where a loop per phase stays scalar.
            even = 0 if col_first[0] == 0 else 1
            dst_even = xp[row_start[r, even]:]
            dst_odd = xp[row_start[r, 1 - even]:]
            for m in range(W // 2):
                dst_even[m] = src[2 * m]
                dst_odd[m] = src[2 * m + 1]
            if W % 2 == 1:
                dst_even[W // 2] = src[W - 1]
        else:
            for b in range(s):
                dst = xp[row_start[r, b]:]
                part = src[col_first[b]:]
                for m in range(col_count[b]):
                    dst[m] = part[m * s]


@njit(cache=True)
def _copy_from_phases(plane, xp, s, row_start, col_first, col_count):
    """The inverse of _copy_into_phases: read the (H, W) interior back out of the phases."""
    H, W = plane.shape
    for r in range(H):
        dst = plane[r]
        if s == 1:
            src = xp[row_start[r, 0]:]
            for m in range(W):
                dst[m] = src[m]
        elif s == 2:
            even = 0 if col_first[0] == 0 else 1
            src_even = xp[row_start[r, even]:]
            src_odd = xp[row_start[r, 1 - even]:]
            for m in range(W // 2):
                dst[2 * m] = src_even[m]
                dst[2 * m + 1] = src_odd[m]
            if W % 2 == 1:
                dst[W - 1] = src_even[W // 2]
        else:
            for b in range(s):
                src = xp[row_start[r, b]:]
                part = dst[col_first[b]:]
                for m in range(col_count[b]):
                    part[m * s] = src[m]


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_kernel(out, x, w, stride, pad, ntasks):
    """out[n,c,i,j] = sum_{ki,kj} w[c,0,ki,kj] * xpad[n,c,i*s+ki,j*s+kj]; parallel over planes."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    s = stride
    Hh, Wh = (H + 2 * pad + s - 1) // s, (W + 2 * pad + s - 1) // s
    L = (Ho - 1) * Wh + Wo  # length of the wide output, pitch Wh
    row_start, col_first, col_count, tap_start = _phase_layout(H, W, K, s, pad, Hh, Wh)
    total = N * C
    for t in prange(ntasks):
        xp = np.zeros(s * s * Hh * Wh, dtype=x.dtype)  # borders stay zero: only the interior
        acc = np.empty(L, dtype=x.dtype)               # is ever rewritten
        for nc in range(t * total // ntasks, (t + 1) * total // ntasks):
            n = nc // C
            c = nc % C
            _copy_into_phases(xp, x[n, c], s, row_start, col_first, col_count)
            w0 = w[c, 0, 0, 0]
            for q in range(L):
                acc[q] = w0 * xp[q]
            for k in range(1, K * K):
                wk = w[c, 0, k // K, k % K]
                src = xp[tap_start[k]:]
                for q in range(L):
                    acc[q] += wk * src[q]
            o = out[n, c]
            for i in range(Ho):
                row = acc[i * Wh:]
                dst = o[i]
                for j in range(Wo):
                    dst[j] = row[j]


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_kernel(dx, dw, dout, x, w, stride, pad, block):
    """dx = w scattered by dout; dw[c] = sum_n,i,j dout * xpad window.

    Parallel over blocks of `block` channels: a task walks the images in order and, in each,
    its block's planes, which lie side by side. One channel per task read one 1 KB plane per
    image, images 100 KB apart, which the prefetcher does not follow: blocks of 16 channels
    were 13-20 % faster at 32x32 and 3-5 % at 16x16 when timed. Each channel's dw lanes still
    add the images in order, so the bits do not depend on the block size or thread count."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    s = stride
    Hh, Wh = (H + 2 * pad + s - 1) // s, (W + 2 * pad + s - 1) // s
    L = (Ho - 1) * Wh + Wo
    row_start, col_first, col_count, tap_start = _phase_layout(H, W, K, s, pad, Hh, Wh)
    for b in prange((C + block - 1) // block):
        c_first = b * block
        c_end = min(C, c_first + block)
        xp = np.zeros(s * s * Hh * Wh, dtype=x.dtype)
        gw = np.zeros(L, dtype=x.dtype)  # dout on the wide grid; the junk columns stay 0
        dxp = np.empty(s * s * Hh * Wh, dtype=x.dtype)
        # one lane per channel, tap and wide position
        dw_partial = np.zeros((c_end - c_first, K * K, L), dtype=x.dtype)
        for n in range(N):
            for c in range(c_first, c_end):
                _copy_into_phases(xp, x[n, c], s, row_start, col_first, col_count)
                g = dout[n, c]
                for i in range(Ho):
                    row = gw[i * Wh:]
                    src = g[i]
                    for j in range(Wo):
                        row[j] = src[j]
                dxp[:] = 0
                channel_lanes = dw_partial[c - c_first]
                for k in range(K * K):
                    wk = w[c, 0, k // K, k % K]
                    off = tap_start[k]
                    dst = dxp[off:]
                    src = xp[off:]
                    lanes = channel_lanes[k]
                    for q in range(L):
                        dst[q] += wk * gw[q]
                        lanes[q] += gw[q] * src[q]
                _copy_from_phases(dx[n, c], dxp, s, row_start, col_first, col_count)
        for c in range(c_first, c_end):
            for k in range(K * K):
                total = 0.0
                for q in range(L):
                    total += dw_partial[c - c_first, k, q]
                dw[c, 0, k // K, k % K] = total


# Small maps, channels last. At 4x4 and 2x2 a plane is a handful of pixels, and the passes
# above spend their time on per-plane setup (copies, slices, loop starts), not on arithmetic:
# a 2x2 layer was 5x slower than a 16x16 one with 16 times the pixels. There each image is
# turned channels last in per-thread scratch, (pixels, C), zero-padded, so that every tap of
# every output pixel is one vectorised pass over the C channels; the forward sums the taps in
# the same order as the passes above, so its result is the same bit for bit. The backward
# sums each image's dw, then adds it into SUM_TASKS fixed float64 partial sums, added in task
# order.


@njit(cache=True)
def _depthwise_weights_by_tap(w):
    """(C, 1, K, K) -> (K*K, C): one row of C weights per tap."""
    C, K = w.shape[0], w.shape[2]
    wt = np.empty((K * K, C), dtype=w.dtype)
    for c in range(C):
        for k in range(K * K):
            wt[k, c] = w[c, 0, k // K, k % K]
    return wt


# Planes of at most this many pixels are turned channels last pixel by pixel, larger ones
# plane by plane (see _into_channels_last).
PIXEL_ORDER_MAX_PIXELS = 64


@njit(cache=True)
def _into_channels_last(xt, image, pad, Wp):
    """xt[(i + pad) * Wp + j + pad, c] = image[c, i, j]; xt's border rows stay as they are.

    Small planes go pixel by pixel, so the writes are contiguous: 1.2-2x faster than plane by
    plane when timed at 8x8 and below. Larger planes go plane by plane, reading each one in
    order: pixel by pixel, a 16x16 image's C reads per pixel are 1 KB apart, which all fall in
    4 of L1's 64 sets and defeat the prefetcher (a 16x16 stride-2 forward took 3.8-4.2 ms
    that way, 3.0-3.2 ms plane by plane)."""
    C, H, W = image.shape
    if H * W > PIXEL_ORDER_MAX_PIXELS:
        for c in range(C):
            for i in range(H):
                src = image[c, i]
                dst = xt[(i + pad) * Wp + pad:]
                for j in range(W):
                    dst[j, c] = src[j]
    else:
        for i in range(H):
            for j in range(W):
                dst = xt[(i + pad) * Wp + pad + j]
                for c in range(C):
                    dst[c] = image[c, i, j]


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_channels_last_kernel(out, x, w, stride, pad):
    """The same result as depthwise_conv2d_forward_kernel, for small maps; parallel over images."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    Wp = W + 2 * pad
    wt = _depthwise_weights_by_tap(w)
    for n in prange(N):
        xt = np.zeros(((H + 2 * pad) * Wp, C), dtype=x.dtype)
        ot = np.empty((Ho * Wo, C), dtype=x.dtype)
        _into_channels_last(xt, x[n], pad, Wp)
        for i in range(Ho):
            for j in range(Wo):
                acc = ot[i * Wo + j]
                src = xt[i * stride * Wp + j * stride]
                w0 = wt[0]
                for c in range(C):
                    acc[c] = w0[c] * src[c]
                for k in range(1, K * K):
                    src = xt[(i * stride + k // K) * Wp + j * stride + k % K]
                    wk = wt[k]
                    for c in range(C):
                        acc[c] += wk[c] * src[c]
        o = out[n]
        for c in range(C):
            for i in range(Ho):
                row = o[c, i]
                src = ot[i * Wo:]  # a slice, not ot[i * Wo + j, c]: see the top of the file
                for j in range(Wo):
                    row[j] = src[j, c]


@njit(cache=True)
def _taps_onto(p, K, stride, n_out):
    """The outputs whose window covers padded position p: first and last (clipped to the
    n_out outputs); output o reads p through tap p - o * stride."""
    return max(0, (p - K + stride) // stride), min(n_out - 1, p // stride)


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_channels_last_kernel(dx, dw, dout, x, w, stride, pad):
    """The same result as depthwise_conv2d_backward_kernel (up to the order of dw's sum), for
    small maps. Parallel over SUM_TASKS fixed shares of the batch.

    dx is gathered: each input pixel sums w * dout over the outputs that read it, in one
    L1-resident row of C, where scattering every output's taps into a padded dx took a
    read-modify-write of an L2-resident row per tap and a zeroing pass (gathering was ~10 %
    faster at 16x16, 8x8 and 4x4 when timed; each pixel's terms are added in output order,
    as the scatter added them, so the bits are the same)."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    Wp = W + 2 * pad
    wt = _depthwise_weights_by_tap(w)
    partial = np.zeros((SUM_TASKS, K * K, C))
    for task in prange(SUM_TASKS):
        xt = np.zeros(((H + 2 * pad) * Wp, C), dtype=x.dtype)
        dxt = np.empty((H * W, C), dtype=x.dtype)
        gt = np.empty((Ho * Wo, C), dtype=x.dtype)
        # One image's dw in x's dtype (at most Ho*Wo terms per lane, and it vectorises twice
        # as wide), then added into the task's float64 partial sum.
        lanes = np.empty((K * K, C), dtype=x.dtype)
        task_sum = partial[task]
        for n in range(task * N // SUM_TASKS, (task + 1) * N // SUM_TASKS):
            _into_channels_last(gt, dout[n], 0, Wo)
            _into_channels_last(xt, x[n], pad, Wp)
            lanes[:] = 0
            for i in range(Ho):
                for j in range(Wo):
                    gq = gt[i * Wo + j]
                    for k in range(K * K):
                        src = xt[(i * stride + k // K) * Wp + j * stride + k % K]
                        lane = lanes[k]
                        for c in range(C):
                            lane[c] += gq[c] * src[c]
            for k in range(K * K):
                for c in range(C):
                    task_sum[k, c] += lanes[k, c]
            for r in range(H):
                i_first, i_last = _taps_onto(r + pad, K, stride, Ho)
                for q in range(W):
                    j_first, j_last = _taps_onto(q + pad, K, stride, Wo)
                    acc = dxt[r * W + q]
                    acc[:] = 0
                    for i in range(i_first, i_last + 1):
                        for j in range(j_first, j_last + 1):
                            wk = wt[(r + pad - i * stride) * K + q + pad - j * stride]
                            gq = gt[i * Wo + j]
                            for c in range(C):
                                acc[c] += wk[c] * gq[c]
            d = dx[n]
            for c in range(C):
                for r in range(H):
                    row = d[c, r]
                    src = dxt[r * W:]
                    for q in range(W):
                        row[q] = src[q, c]
    for c in range(C):
        for k in range(K * K):
            total = 0.0
            for task in range(SUM_TASKS):
                total += partial[task, k, c]
            dw[c, 0, k // K, k % K] = total


# ---------------------------------------------------------------------------------------------
# Matrix products for the 1x1 and im2col convolutions. The products are BLAS's job: np.dot in
# nopython mode calls SciPy's BLAS, which parallel.py holds to one thread, and these kernels
# spread the calls over Numba's pool. A second thread pool for BLAS would fight Numba's for
# the two cores (see parallel.py); inside Numba's pool, both cores run BLAS and nothing spins.
#
# On NCHW arrays, image n of a 1x1 conv is out[n] = W @ x[n] with x[n] a (C_in, H*W) matrix in
# place, so large maps need no layout change at all. Small maps (4x4 at the end of a CIFAR
# network) make per-image products too short for BLAS; there the batch is laid out
# channel-major, (C, N*H*W), and one product is split by rows of its output.
# Weight gradients are summed over the batch in SUM_TASKS fixed partial sums (see the top).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def batched_matmul_kernel(out, a, b):
    """out[n] = a @ b[n] for every n; a (M, K), b (N, K, P), out (N, M, P)."""
    for n in prange(b.shape[0]):
        np.dot(a, b[n], out[n])


@njit(cache=True)
def _add_into(acc, part):
    M, K = acc.shape
    for i in range(M):
        dst = acc[i]
        src = part[i]
        for j in range(K):
            dst[j] += src[j]


@njit(cache=True, parallel=True)
def batched_matmul_backward_kernel(dx, dw, dout, x, wt):
    """The backward of out[n] = w @ x[n]: dw = sum over n of dout[n] @ x[n].T and dx[n] =
    wt @ dout[n]; dout (N, M, P), x (N, K, P), dw (M, K), wt (K, M), dx (N, K, P). Both
    products of an image run back to back, while dout[n] is still in cache."""
    N = x.shape[0]
    M, K = dw.shape
    partial = np.zeros((SUM_TASKS, M, K), dtype=dw.dtype)
    for t in prange(SUM_TASKS):
        product = np.empty((M, K), dtype=dw.dtype)
        for n in range(t * N // SUM_TASKS, (t + 1) * N // SUM_TASKS):
            np.dot(dout[n], x[n].T, product)
            _add_into(partial[t], product)
            np.dot(wt, dout[n], dx[n])
    dw[:] = partial[0]
    for t in range(1, SUM_TASKS):
        _add_into(dw, partial[t])


@njit(cache=True, parallel=True)
def matmul_kernel(out, a, b, ntasks):
    """out = a @ b, the rows of a and out split into ntasks products; a (M, K), b (K, P)."""
    M = a.shape[0]
    for t in prange(ntasks):
        lo = t * M // ntasks
        hi = (t + 1) * M // ntasks
        if hi > lo:
            np.dot(a[lo:hi], b, out[lo:hi])


@njit(cache=True, parallel=True)
def swap_leading_axes_kernel(out, x):
    """out[j, i, :] = x[i, j, :]: NCHW <-> CNHW, moving whole H*W rows; x (A, B, P)."""
    A, B, P = x.shape
    for ab in prange(A * B):
        a = ab // B
        b = ab % B
        src = x[a, b]
        dst = out[b, a]
        for p in range(P):
            dst[p] = src[p]


@njit(cache=True, parallel=True)
def add_channel_bias_kernel(out, b):
    """out[n, c, :] += b[c]; out (N, C, P)."""
    N, C, P = out.shape
    for nc in prange(N * C):
        row = out[nc // C, nc % C]
        bc = b[nc % C]
        for p in range(P):
            row[p] += bc


@njit(cache=True)
def _channel_total(x, c):
    """Sum of x[:, c, :] in float64: one lane per position p, reduced at the end, so the loop
    vectorises and the order is the same on every run. x (N, C, P)."""
    N, _, P = x.shape
    lanes = np.zeros(P)
    for n in range(N):
        row = x[n, c]
        for p in range(P):
            lanes[p] += row[p]
    return lanes.sum()


@njit(cache=True, parallel=True)
def channel_sum_kernel(sums, x):
    """sums[c] = sum over n and p of x[n, c, p], in float64, the same order on every run."""
    for c in prange(x.shape[1]):
        sums[c] = _channel_total(x, c)


@njit(cache=True, parallel=True)
def spatial_mean_kernel(out, x):
    """out[n, c] = mean over p of x[n, c, p]: global average pooling; x (N, C, P)."""
    N, C, P = x.shape
    for nc in prange(N * C):
        row = x[nc // C, nc % C]
        total = 0.0
        for p in range(P):
            total += row[p]
        out[nc // C, nc % C] = total / P


# ---------------------------------------------------------------------------------------------
# Batch norm over (N, H, W) for each channel, in training mode, fused with the activation that
# follows it. A MobileNet step is bound by memory traffic, and BN + activation are most of it:
# fused, the forward reads x for the statistics and once more to write act(bn(x)); the
# backward recomputes bn(x) from x (one multiply-add) instead of keeping it, so no
# intermediate tensor is ever written or read.
#
# Two loop orders over the same arithmetic, because the maps run from 32x32 down to 2x2:
# - by channel (large maps): thread c alone reads and writes channel c, row by row;
# - by image (maps of a few hundred pixels or fewer): a 4x4 row is 64 bytes, and walking one
#   channel through the batch touches a scattered cache line per row at a cost of tens of ns
#   per row. There each image's (C, P) block is one contiguous, vectorised pass with the
#   per-channel constants spread out to one per position, and the sums go into SUM_TASKS
#   fixed partial sums (per position) added in task order, as the matrix products do.
# Both give the same result on every run and for any thread count. Statistics are accumulated
# in float64 whatever the input dtype, in one pass of sums shifted by one of the channel's own
# values (_shifted_moments), which is exact enough for float64 gradient checks.
#
# Activation codes: 0 none (BN alone), 1 ReLU, 2 ReLU6, 3 hard-swish; the branch on the code
# sits outside each row loop, so every loop stays branch-free and vectorised. The row helpers
# take the affine constants s and t as arrays, one per position: a row of one channel's
# constant (by channel) or the channels spread out (by image).
# ---------------------------------------------------------------------------------------------
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "hardswish": 3}


@njit(cache=True)
def _affine_activate_row(dst, src, s, t, kind):
    """dst = act(src * s + t) over one row."""
    zero, three, six = src.dtype.type(0), src.dtype.type(3), src.dtype.type(6)
    P = src.size
    if kind == 0:
        for p in range(P):
            dst[p] = src[p] * s[p] + t[p]
    elif kind == 1:
        for p in range(P):
            dst[p] = max(src[p] * s[p] + t[p], zero)
    elif kind == 2:
        for p in range(P):
            dst[p] = min(max(src[p] * s[p] + t[p], zero), six)
    else:
        for p in range(P):
            y = src[p] * s[p] + t[p]
            dst[p] = y * min(max(y + three, zero), six) / six


@njit(cache=True)
def _upstream_row(g, dout, src, s, t, kind):
    """The gradient reaching bn(x) for one row: dout itself when no activation is fused (no
    copy), else g = dout * act'(y), y = src * s + t recomputed exactly as the forward computed
    it. Slopes at the kinks are PyTorch's, as in the standalone activation kernels below."""
    if kind == 0:
        return dout
    zero, half, one = src.dtype.type(0), src.dtype.type(0.5), src.dtype.type(1)
    three, six = src.dtype.type(3), src.dtype.type(6)
    P = src.size
    if kind == 1:
        for p in range(P):
            g[p] = dout[p] if src[p] * s[p] + t[p] > zero else zero
    elif kind == 2:
        for p in range(P):
            y = src[p] * s[p] + t[p]
            g[p] = dout[p] if (y > zero and y < six) else zero
    else:
        for p in range(P):
            y = src[p] * s[p] + t[p]
            slope = y / three + half
            slope = zero if y < -three else slope
            slope = one if y > three else slope
            g[p] = dout[p] * slope
    return g


@njit(cache=True)
def _shifted_moments(c, mean, var, k0, sum_d, sum_d2, M):
    """mean and biased variance of channel c from one pass of sums of d = x - k0 and d*d, with
    k0 one of the channel's own values. The shift keeps var = E[d^2] - E[d]^2 from cancelling
    catastrophically (k0 is within a few standard deviations of the mean), and one pass
    instead of two reads x once less."""
    mean_d = sum_d / M
    mean[c] = k0 + mean_d
    var[c] = max(sum_d2 / M - mean_d * mean_d, 0.0)


@njit(cache=True)
def _batchnorm_constants(c, mean, var, scale, shift, gamma, beta, eps):
    """scale = gamma / sqrt(var + eps), shift = beta - mean * scale, stored in x's dtype."""
    k = gamma[c] / np.sqrt(var[c] + eps)
    scale[c] = k
    shift[c] = beta[c] - mean[c] * k


@njit(cache=True, parallel=True)
def batchnorm2d_forward_kernel(out, mean, var, scale, shift, x, gamma, beta, eps, kind):
    """By channel. mean, var (biased) over (N, H, W); out = act(x * scale + shift) with
    scale = gamma / sqrt(var + eps) and shift = beta - mean * scale."""
    N, C, P = x.shape
    for c in prange(C):
        k0 = np.float64(x[0, c, 0])
        lanes = np.zeros(P)
        lanes_sq = np.zeros(P)
        for n in range(N):
            row = x[n, c]
            for p in range(P):
                d = row[p] - k0
                lanes[p] += d
                lanes_sq[p] += d * d
        _shifted_moments(c, mean, var, k0, lanes.sum(), lanes_sq.sum(), N * P)
        _batchnorm_constants(c, mean, var, scale, shift, gamma, beta, eps)
        s = np.full(P, scale[c])
        t = np.full(P, shift[c])
        for n in range(N):
            _affine_activate_row(out[n, c], x[n, c], s, t, kind)


@njit(cache=True, parallel=True)
def batchnorm2d_backward_kernel(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale, shift,
                                kind):
    """By channel. With g = dout * act'(bn(x)):
    dx = gamma*invstd/M * (M*g - sum(g) - xhat*sum(g*xhat)), xhat and bn(x) recomputed from x.
    g lives in one row of per-thread scratch."""
    N, C, P = x.shape
    M = N * P
    for c in prange(C):
        g = np.empty(P, dtype=x.dtype)
        lanes_g = np.zeros(P)
        lanes_gx = np.zeros(P)
        m = mean[c]
        s = np.full(P, scale[c])
        t = np.full(P, shift[c])
        for n in range(N):
            src = x[n, c]
            grad = _upstream_row(g, dout[n, c], src, s, t, kind)
            for p in range(P):
                lanes_g[p] += grad[p]
                lanes_gx[p] += grad[p] * (src[p] - m)
        sum_g = lanes_g.sum()
        sum_gxhat = lanes_gx.sum() * invstd[c]
        dbeta[c] = sum_g
        dgamma[c] = sum_gxhat
        k = gamma[c] * invstd[c]
        a = x.dtype.type(k)
        b = x.dtype.type(k * invstd[c] * sum_gxhat / M)  # xhat * this = (x - m) * invstd * ...
        cm = x.dtype.type(-k * sum_g / M)
        mm = x.dtype.type(m)
        for n in range(N):
            src = x[n, c]
            d = dx[n, c]
            grad = _upstream_row(g, dout[n, c], src, s, t, kind)
            for p in range(P):
                d[p] = a * grad[p] - b * (src[p] - mm) + cm


@njit(cache=True)
def _spread(per_channel, P, dtype):
    """(C,) -> (C*P,): each channel's value repeated over its P positions."""
    C = per_channel.size
    out = np.empty(C * P, dtype=dtype)
    for c in range(C):
        out[c * P:(c + 1) * P] = per_channel[c]
    return out


@njit(cache=True)
def _per_channel_total(lanes, C, P):
    """lanes (SUM_TASKS, C*P) -> (C,) float64: task by task, then position by position."""
    totals = np.zeros(C)
    for t in range(lanes.shape[0]):
        for c in range(C):
            totals[c] += lanes[t, c * P:(c + 1) * P].sum()
    return totals


@njit(cache=True, parallel=True)
def batchnorm2d_forward_by_image_kernel(out, mean, var, scale, shift, x, gamma, beta, eps,
                                        kind):
    """By image: the same result as batchnorm2d_forward_kernel, for small maps. x (N, C, P)."""
    N, C, P = x.shape
    M = N * P
    xs = x.reshape(N, C * P)
    k0 = np.empty(C)
    for c in range(C):
        k0[c] = x[0, c, 0]
    shifts = _spread(k0, P, np.float64)
    lanes = np.zeros((SUM_TASKS, C * P))
    lanes_sq = np.zeros((SUM_TASKS, C * P))
    for task in prange(SUM_TASKS):
        acc = lanes[task]
        acc_sq = lanes_sq[task]
        for n in range(task * N // SUM_TASKS, (task + 1) * N // SUM_TASKS):
            row = xs[n]
            for i in range(C * P):
                d = row[i] - shifts[i]
                acc[i] += d
                acc_sq[i] += d * d
    sum_d = _per_channel_total(lanes, C, P)
    sum_d2 = _per_channel_total(lanes_sq, C, P)
    for c in range(C):
        _shifted_moments(c, mean, var, k0[c], sum_d[c], sum_d2[c], M)
        _batchnorm_constants(c, mean, var, scale, shift, gamma, beta, eps)
    s = _spread(scale, P, x.dtype)
    t = _spread(shift, P, x.dtype)
    outs = out.reshape(N, C * P)
    for n in prange(N):
        _affine_activate_row(outs[n], xs[n], s, t, kind)


@njit(cache=True, parallel=True)
def batchnorm2d_backward_by_image_kernel(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                         shift, kind):
    """By image: the same result as batchnorm2d_backward_kernel, for small maps."""
    N, C, P = x.shape
    M = N * P
    xs, douts, dxs = x.reshape(N, C * P), dout.reshape(N, C * P), dx.reshape(N, C * P)
    s = _spread(scale, P, x.dtype)
    t = _spread(shift, P, x.dtype)
    m = _spread(mean, P, np.float64)
    lanes_g = np.zeros((SUM_TASKS, C * P))
    lanes_gx = np.zeros((SUM_TASKS, C * P))
    for task in prange(SUM_TASKS):
        g = np.empty(C * P, dtype=x.dtype)
        acc_g = lanes_g[task]
        acc_gx = lanes_gx[task]
        for n in range(task * N // SUM_TASKS, (task + 1) * N // SUM_TASKS):
            src = xs[n]
            grad = _upstream_row(g, douts[n], src, s, t, kind)
            for i in range(C * P):
                acc_g[i] += grad[i]
                acc_gx[i] += grad[i] * (src[i] - m[i])
    sum_g = _per_channel_total(lanes_g, C, P)
    sum_gxhat = _per_channel_total(lanes_gx, C, P) * invstd
    dbeta[:] = sum_g
    dgamma[:] = sum_gxhat
    k = gamma * invstd
    a = _spread(k, P, x.dtype)
    b = _spread(k * invstd * sum_gxhat / M, P, x.dtype)
    cm = _spread(-k * sum_g / M, P, x.dtype)
    mm = _spread(mean, P, x.dtype)
    for n in prange(N):
        g = np.empty(C * P, dtype=x.dtype)
        src = xs[n]
        d = dxs[n]
        grad = _upstream_row(g, douts[n], src, s, t, kind)
        for i in range(C * P):
            d[i] = a[i] * grad[i] - b[i] * (src[i] - mm[i]) + cm[i]


@njit(cache=True, parallel=True)
def channel_affine_kernel(out, x, scale, shift):
    """out[n, c] = x[n, c] * scale[c] + shift[c]: batch norm with running statistics."""
    N, C, P = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        s = x.dtype.type(scale[c])
        t = x.dtype.type(shift[c])
        src = x[n, c]
        dst = out[n, c]
        for p in range(P):
            dst[p] = src[p] * s + t


# ---------------------------------------------------------------------------------------------
# Activations, elementwise on flat arrays. Gradients at the kinks follow PyTorch.
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def relu_forward_kernel(out, x):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        out[i] = max(x[i], zero)


@njit(cache=True, parallel=True)
def relu_backward_kernel(dx, dout, x):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        dx[i] = dout[i] if x[i] > zero else zero


@njit(cache=True, parallel=True)
def relu6_forward_kernel(out, x):
    zero, six = x.dtype.type(0), x.dtype.type(6)
    for i in prange(x.size):
        out[i] = min(max(x[i], zero), six)


@njit(cache=True, parallel=True)
def relu6_backward_kernel(dx, dout, x):
    """Gradient 1 on the open interval (0, 6), 0 at and beyond both kinks (PyTorch's)."""
    zero, six = x.dtype.type(0), x.dtype.type(6)
    for i in prange(x.size):
        v = x[i]
        dx[i] = dout[i] if (v > zero and v < six) else zero


@njit(cache=True, parallel=True)
def hardswish_forward_kernel(out, x):
    """x * relu6(x + 3) / 6."""
    three, six, zero = x.dtype.type(3), x.dtype.type(6), x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        out[i] = v * min(max(v + three, zero), six) / six


@njit(cache=True, parallel=True)
def hardswish_backward_kernel(dx, dout, x):
    """0 below -3, x/3 + 1/2 on the closed [-3, 3], 1 above 3 (PyTorch's). Written as selects
    rather than an if-chain so that LLVM vectorises it."""
    three, half, zero, one = x.dtype.type(3), x.dtype.type(0.5), x.dtype.type(0), x.dtype.type(1)
    for i in prange(x.size):
        v = x[i]
        slope = v / three + half
        slope = zero if v < -three else slope
        slope = one if v > three else slope
        dx[i] = dout[i] * slope


@njit(cache=True, parallel=True)
def hardsigmoid_forward_kernel(out, x):
    """relu6(x + 3) / 6."""
    three, six, zero = x.dtype.type(3), x.dtype.type(6), x.dtype.type(0)
    for i in prange(x.size):
        out[i] = min(max(x[i] + three, zero), six) / six


@njit(cache=True, parallel=True)
def hardsigmoid_backward_kernel(dx, dout, x):
    """1/6 on the open interval (-3, 3), else 0 (PyTorch's)."""
    three, six, zero = x.dtype.type(3), x.dtype.type(6), x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        dx[i] = dout[i] / six if (v > -three and v < three) else zero


# ---------------------------------------------------------------------------------------------
# Standard convolution by im2col: the stem (C_in = 3) and the dense conv that the cost
# comparison needs. Image by image, each thread builds the (C_in*K*K, Ho*Wo) column matrix of
# one image in a scratch buffer that stays in its cache, and multiplies: out[n] = W @ cols,
# written straight into the NCHW output. The backward rebuilds the columns from x rather than
# keeping them: reading x again costs far less memory traffic than writing and re-reading a
# column matrix K*K times its size.
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
def conv2d_forward_kernel(out, x, w2, K, stride, pad, Ho, Wo, ntasks):
    """out[n] = w2 @ im2col(x[n]); x (N, C, H, W), w2 (C_out, C*K*K), out (N, C_out, Ho*Wo)."""
    N = x.shape[0]
    for t in prange(ntasks):
        cols = np.empty((w2.shape[1], Ho * Wo), dtype=x.dtype)
        for n in range(t * N // ntasks, (t + 1) * N // ntasks):
            _im2col_image(cols, x[n], K, stride, pad, Ho, Wo)
            np.dot(w2, cols, out[n])


@njit(cache=True, parallel=True)
def conv2d_backward_kernel(dx, dw2, dout, x, w2t, K, stride, pad, Ho, Wo):
    """dw2 = sum_n dout[n] @ im2col(x[n]).T and dx[n] = col2im(w2t @ dout[n]); dout
    (N, C_out, Ho*Wo), w2t (C*K*K, C_out), dw2 (C_out, C*K*K). Partial sums as for the 1x1."""
    N = x.shape[0]
    C_out, CKK = dw2.shape
    partial = np.zeros((SUM_TASKS, C_out, CKK), dtype=dw2.dtype)
    for t in prange(SUM_TASKS):
        cols = np.empty((CKK, Ho * Wo), dtype=x.dtype)
        dcols = np.empty((CKK, Ho * Wo), dtype=x.dtype)
        product = np.empty((C_out, CKK), dtype=dw2.dtype)
        for n in range(t * N // SUM_TASKS, (t + 1) * N // SUM_TASKS):
            _im2col_image(cols, x[n], K, stride, pad, Ho, Wo)
            np.dot(dout[n], cols.T, product)
            _add_into(partial[t], product)
            np.dot(w2t, dout[n], dcols)
            _col2im_image(dx[n], dcols, K, stride, pad, Ho, Wo)
    dw2[:] = partial[0]
    for t in range(1, SUM_TASKS):
        _add_into(dw2, partial[t])


# ---------------------------------------------------------------------------------------------
# Data augmentation
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def crop_flip_kernel(out, x, dy, dx, flipped, padding):
    """Kernel of crop_flip: reads x directly, treating out-of-range pixels as the zero padding.

    Never materialises the padded array, which would be 1.6x the input. Debug with
    NUMBA_DISABLE_JIT=1, or call crop_flip_kernel.py_func(...) for plain Python.
    """
    N, C, H, W = x.shape
    for n in prange(N):  # thread n alone writes out[n]: disjoint, so deterministic
        # Output column j reads source column base + step * j; hoisting the flip out of the
        # pixel loop and zeroing padded rows whole halves the time of a per-pixel test.
        step = -1 if flipped[n] else 1
        base = W - 1 + dx[n] - padding if flipped[n] else dx[n] - padding
        for c in range(C):
            for i in range(H):
                si = i + dy[n] - padding
                if si < 0 or si >= H:
                    out[n, c, i, :] = 0
                    continue
                for j in range(W):
                    sj = base + step * j
                    out[n, c, i, j] = x[n, c, si, sj] if 0 <= sj < W else 0
