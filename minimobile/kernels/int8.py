"""The int8 kernels of post-training quantisation (`minimobile.quantize`): each op as its
definition written with NumPy (`_loops`) and a Numba kernel (`_simple`, which is also `_fast`:
only inference runs them, and they are already a small share of its time).

Inputs
and weights are int8, products are summed in int32, as an int8 engine does: with |q| <= 127 a
sum of C*K*K products stays below 2**31 for any C*K*K < 133,000, far beyond MobileNet's widest
layer (1280 inputs). Integer sums are exact, so tests compare kernels and references with ==.

"""

import numpy as np
from numba import njit, prange

QMAX = 127  # symmetric int8: -127..127, so that negating a value never overflows


@njit(cache=True, parallel=True)
def quantize_simple(out, x, inv_scale):
    """out = clip(rint(x * inv_scale), -127, 127) as int8; x, out flat (M,)."""
    for i in prange(x.size):
        q = np.rint(x[i] * inv_scale)
        out[i] = np.int8(min(max(q, -QMAX), QMAX))


def quantize_loops(out, x, inv_scale):
    out[...] = np.clip(np.rint(x.astype(np.float64) * inv_scale), -QMAX, QMAX).astype(np.int8)


@njit(cache=True, parallel=True)
def pointwise_int8_simple(acc, x, w, b):
    """acc[n, o, p] = b[o] + sum_i w[o, i] * x[n, i, p] in int32.

    acc (N, C_out, P) int32; x (N, C_in, P) int8; w (C_out, C_in) int8; b (C_out,) int32.
    One task per (image, output channel): each writes its own row of acc.
    """
    N, C_out, P = acc.shape
    C_in = x.shape[1]
    for no in prange(N * C_out):
        n = no // C_out
        o = no % C_out
        row = acc[n, o]
        for p in range(P):
            row[p] = b[o]
        for i in range(C_in):
            wi = np.int32(w[o, i])
            src = x[n, i]
            for p in range(P):
                row[p] += wi * np.int32(src[p])


def pointwise_int8_loops(acc, x, w, b):
    """W (C_out, C_in) @ x[n] (C_in, P) + b for every image, as an int32 matrix product."""
    acc[...] = np.matmul(w.astype(np.int32), x.astype(np.int32)) + b.astype(np.int32)[:, None]


@njit(cache=True, parallel=True)
def depthwise_int8_simple(acc, x, w, b, stride, pad):
    """acc[n, c, i, j] = b[c] + sum_{k, l} w[c, k, l] * x[n, c, i*s - p + k, j*s - p + l] in
    int32, zero outside x (the quantised zero is 0: the scale is symmetric).

    acc (N, C, Ho, Wo) int32; x (N, C, H, W) int8; w (C, K, K) int8; b (C,) int32.
    """
    N, C, Ho, Wo = acc.shape
    H, W = x.shape[2], x.shape[3]
    K = w.shape[1]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        plane = x[n, c]
        for i in range(Ho):
            for j in range(Wo):
                total = np.int32(b[c])
                for k in range(K):
                    r = i * stride - pad + k
                    if r < 0 or r >= H:
                        continue
                    for m in range(K):
                        q = j * stride - pad + m
                        if 0 <= q < W:
                            total += np.int32(w[c, k, m]) * np.int32(plane[r, q])
                acc[n, c, i, j] = total


def depthwise_int8_loops(out, x, w, b, stride, pad):
    """The same sum as K*K shifted, strided slices of the zero-padded x, in int32."""
    N, C, Ho, Wo = out.shape
    K = w.shape[1]
    xp = np.pad(x.astype(np.int32), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    acc = np.broadcast_to(b.astype(np.int32)[:, None, None], (N, C, Ho, Wo)).copy()
    for k in range(K):
        for m in range(K):
            rows = slice(k, k + stride * (Ho - 1) + 1, stride)
            cols = slice(m, m + stride * (Wo - 1) + 1, stride)
            acc += w[:, k, m].astype(np.int32)[:, None, None] * xp[:, :, rows, cols]
    out[...] = acc


@njit(cache=True, parallel=True)
def dequantize_simple(out, acc, scale):
    """out[n, c, p] = acc[n, c, p] * scale[c]: int32 sums back to float; (N, C, P)."""
    N, C, P = acc.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        s = scale[c]
        src = acc[n, c]
        dst = out[n, c]
        for p in range(P):
            dst[p] = src[p] * s


def dequantize_loops(out, acc, scale):
    out[...] = acc * scale[None, :, None]


quantize_fast = quantize_simple
pointwise_int8_fast = pointwise_int8_simple
depthwise_int8_fast = depthwise_int8_simple
dequantize_fast = dequantize_simple
