"""Every Numba kernel of minimobile, in one place.

Kernels are loops over preallocated arrays, outputs first (llm.c's order). They allocate only
small per-thread scratch buffers, never in the innermost loop. `prange` runs only over disjoint
writes (images for forward passes, channels wherever a weight gradient or a per-channel
statistic is summed), so every result is the same from run to run and for any thread count.
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


# ---------------------------------------------------------------------------------------------
# Depthwise convolution: w (C, 1, K, K), one K x K filter per channel.
#
# Each (n, c) plane is copied into a zero-padded scratch plane xp of pitch Wp = W + 2p, so the
# convolution becomes K*K shifted, branch-free, vectorisable passes over a flat array ("wide"
# output with row pitch Wp, of which the first Wo1 columns are real). Stride 2 reuses the same
# passes: its output is the stride-1 output sampled at every other row and column, and its
# backward is the stride-1 backward of a dout spread onto that grid with zeros in between.
# This costs 4x the multiply-adds of a stride-2 layer but keeps every loop long, contiguous and
# vectorised; computing only the needed rows measured slower here (short loops), and MobileNets
# have only four or five stride-2 depthwise layers.
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _copy_into_padded(xp, plane, pad, Wp):
    """Write an (H, W) plane into the interior of a flat zero-bordered plane of pitch Wp."""
    H, W = plane.shape
    for i in range(H):
        row = xp[(i + pad) * Wp + pad:]
        src = plane[i]
        for j in range(W):
            row[j] = src[j]


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_kernel(out, x, w, stride, pad, ntasks):
    """out[n,c,i,j] = sum_{ki,kj} w[c,0,ki,kj] * xpad[n,c,i*s+ki,j*s+kj]; parallel over planes."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Ho1, Wo1 = Hp - K + 1, Wp - K + 1
    L = (Ho1 - 1) * Wp + Wo1  # length of the wide stride-1 output, pitch Wp
    total = N * C
    for t in prange(ntasks):
        xp = np.zeros(Hp * Wp, dtype=x.dtype)  # borders stay zero: only the interior is rewritten
        acc = np.empty(L, dtype=x.dtype)
        for nc in range(t * total // ntasks, (t + 1) * total // ntasks):
            n = nc // C
            c = nc % C
            _copy_into_padded(xp, x[n, c], pad, Wp)
            w0 = w[c, 0, 0, 0]
            for q in range(L):
                acc[q] = w0 * xp[q]
            for k in range(1, K * K):
                wk = w[c, 0, k // K, k % K]
                src = xp[(k // K) * Wp + k % K:]
                for q in range(L):
                    acc[q] += wk * src[q]
            o = out[n, c]
            if stride == 1:
                for i in range(Ho):
                    row = acc[i * Wp:]
                    dst = o[i]
                    for j in range(Wo):
                        dst[j] = row[j]
            else:
                for i in range(Ho):
                    row = acc[stride * i * Wp:]
                    for j in range(Wo):
                        o[i, j] = row[stride * j]


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_kernel(dx, dw, dout, x, w, stride, pad):
    """dx = w scattered by dout; dw[c] = sum_n,i,j dout * xpad window. Parallel over channels."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Ho1, Wo1 = Hp - K + 1, Wp - K + 1
    L = (Ho1 - 1) * Wp + Wo1
    for c in prange(C):
        xp = np.zeros(Hp * Wp, dtype=x.dtype)
        gw = np.zeros(L, dtype=x.dtype)  # dout on the stride-1 grid; off-grid entries stay 0
        dxp = np.empty(Hp * Wp, dtype=x.dtype)
        dw_partial = np.zeros((K * K, L), dtype=x.dtype)  # one lane per wide position
        for n in range(N):
            _copy_into_padded(xp, x[n, c], pad, Wp)
            g = dout[n, c]
            for i in range(Ho):
                row = gw[stride * i * Wp:]
                src = g[i]
                for j in range(Wo):
                    row[stride * j] = src[j]
            dxp[:] = 0
            for k in range(K * K):
                wk = w[c, 0, k // K, k % K]
                off = (k // K) * Wp + k % K
                dst = dxp[off:]
                src = xp[off:]
                lanes = dw_partial[k]
                for q in range(L):
                    dst[q] += wk * gw[q]
                    lanes[q] += gw[q] * src[q]
            d = dx[n, c]
            for i in range(H):
                row = dxp[(i + pad) * Wp + pad:]
                dst = d[i]
                for j in range(W):
                    dst[j] = row[j]
        for k in range(K * K):
            total = 0.0
            for q in range(L):
                total += dw_partial[k, q]
            dw[c, 0, k // K, k % K] = total


# ---------------------------------------------------------------------------------------------
# Pointwise (1x1) convolution is one matrix product W (Co, Ci) @ X (Ci, N*H*W) once the batch
# is laid out channel-major. The product is BLAS's job, called from NumPy; one large product
# runs several times faster than N small per-image ones (and calling np.dot from inside a
# Numba loop goes through SciPy's BLAS, whose threads fight Numba's). These kernels do the
# layout change and what BLAS lacks: the bias and its gradient.
# ---------------------------------------------------------------------------------------------


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
# Batch norm over (N, H, W) for each channel. Parallel over channels: thread c alone reads and
# writes channel c, so the statistics are summed in the same order on every run.
# Statistics are accumulated in float64 whatever the input dtype, in two passes (mean, then
# centred variance), which is exact enough for float64 gradient checks.
# ---------------------------------------------------------------------------------------------


# Batch norm in training mode, fused with the activation that follows it. A MobileNet step is
# bound by memory traffic, and BN + activation are most of it: fused, the forward reads x for
# the statistics and once more to write act(bn(x)); the backward recomputes bn(x) from x (one
# multiply-add) instead of keeping it, so no intermediate tensor is ever written or read.
# Activation codes: 0 none (BN alone), 1 ReLU, 2 ReLU6, 3 hard-swish; the branch on the code
# sits outside each row loop, so every loop stays branch-free and vectorised.
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "hardswish": 3}


@njit(cache=True)
def _affine_activate_row(dst, src, s, t, kind):
    """dst = act(src * s + t) over one row."""
    zero, three, six = src.dtype.type(0), src.dtype.type(3), src.dtype.type(6)
    P = src.size
    if kind == 0:
        for p in range(P):
            dst[p] = src[p] * s + t
    elif kind == 1:
        for p in range(P):
            dst[p] = max(src[p] * s + t, zero)
    elif kind == 2:
        for p in range(P):
            dst[p] = min(max(src[p] * s + t, zero), six)
    else:
        for p in range(P):
            y = src[p] * s + t
            dst[p] = y * min(max(y + three, zero), six) / six


@njit(cache=True)
def _activation_grad_row(g, dout, src, s, t, kind):
    """g = dout * act'(y), y = src * s + t recomputed exactly as the forward computed it.
    Slopes at the kinks are PyTorch's, as in the standalone activation kernels below."""
    zero, half, one = src.dtype.type(0), src.dtype.type(0.5), src.dtype.type(1)
    three, six = src.dtype.type(3), src.dtype.type(6)
    P = src.size
    if kind == 1:
        for p in range(P):
            g[p] = dout[p] if src[p] * s + t > zero else zero
    elif kind == 2:
        for p in range(P):
            y = src[p] * s + t
            g[p] = dout[p] if (y > zero and y < six) else zero
    else:
        for p in range(P):
            y = src[p] * s + t
            slope = y / three + half
            slope = zero if y < -three else slope
            slope = one if y > three else slope
            g[p] = dout[p] * slope


@njit(cache=True)
def _upstream_row(g, dout, src, s, t, kind):
    """The gradient reaching bn(x) for one row: dout itself when no activation is fused (no
    copy), else dout * act'(bn(x)) written into the scratch row g."""
    if kind == 0:
        return dout
    _activation_grad_row(g, dout, src, s, t, kind)
    return g


@njit(cache=True, parallel=True)
def batchnorm2d_forward_kernel(out, mean, var, scale, shift, x, gamma, beta, eps, kind):
    """mean, var (biased) over (N, H, W); out = act(x * scale + shift) with scale = gamma /
    sqrt(var + eps) and shift = beta - mean * scale, stored in x's dtype for the backward."""
    N, C, P = x.shape
    for c in prange(C):
        m = _channel_total(x, c) / (N * P)
        lanes = np.zeros(P)
        for n in range(N):
            row = x[n, c]
            for p in range(P):
                d = row[p] - m
                lanes[p] += d * d
        v = lanes.sum() / (N * P)
        mean[c] = m
        var[c] = v
        k = gamma[c] / np.sqrt(v + eps)
        scale[c] = k
        shift[c] = beta[c] - m * k
        s = scale[c]
        t = shift[c]
        for n in range(N):
            _affine_activate_row(out[n, c], x[n, c], s, t, kind)


@njit(cache=True, parallel=True)
def batchnorm2d_backward_kernel(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale, shift,
                                kind):
    """With g = dout * act'(bn(x)): dx = gamma*invstd/M * (M*g - sum(g) - xhat*sum(g*xhat)),
    xhat and bn(x) recomputed from x. g lives in one row of per-thread scratch."""
    N, C, P = x.shape
    M = N * P
    for c in prange(C):
        g = np.empty(P, dtype=x.dtype)
        lanes_g = np.zeros(P)
        lanes_gx = np.zeros(P)
        m = mean[c]
        s = scale[c]
        t = shift[c]
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
# comparison needs. Columns are laid out channel-major, (C_in*K*K, N, Ho*Wo), so that the whole
# batch is one matrix product (as for the pointwise conv).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def im2col_kernel(cols, x, K, stride, pad, Ho, Wo):
    """cols[(c*K+ki)*K+kj, n, i*Wo+j] = xpad[n, c, i*s+ki, j*s+kj]; parallel over images."""
    N, C, H, W = x.shape
    for n in prange(N):
        for c in range(C):
            for ki in range(K):
                for kj in range(K):
                    row = cols[(c * K + ki) * K + kj, n]
                    for i in range(Ho):
                        r = i * stride + ki - pad
                        dst = row[i * Wo:]
                        if r < 0 or r >= H:
                            for j in range(Wo):
                                dst[j] = 0
                            continue
                        src = x[n, c, r]
                        for j in range(Wo):
                            col = j * stride + kj - pad
                            dst[j] = src[col] if (col >= 0 and col < W) else 0


@njit(cache=True, parallel=True)
def col2im_kernel(dx, dcols, K, stride, pad, Ho, Wo):
    """The adjoint of im2col: dx[n, c, r, col] += dcols[...]; parallel over images."""
    N, C, H, W = dx.shape
    for n in prange(N):
        dx[n] = 0
        for c in range(C):
            for ki in range(K):
                for kj in range(K):
                    row = dcols[(c * K + ki) * K + kj, n]
                    for i in range(Ho):
                        r = i * stride + ki - pad
                        if r < 0 or r >= H:
                            continue
                        dst = dx[n, c, r]
                        src = row[i * Wo:]
                        for j in range(Wo):
                            col = j * stride + kj - pad
                            if col >= 0 and col < W:
                                dst[col] += src[j]


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
