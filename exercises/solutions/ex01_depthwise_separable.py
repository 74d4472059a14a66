"""Reference solution of exercise 01 (notebooks/01_depthwise_separable.ipynb): what a
depthwise separable convolution costs, and its three pieces written by hand.

0. By hand, before any code: the multiply-adds and parameters of one concrete layer, standard
   and separable; type the four numbers in (they are checked against `minimobile.cost`).
1. standard_conv_macs, depthwise_separable_macs, cost_ratio: count multiply-adds.
2. depthwise_conv2d_forward / _backward in plain NumPy (loop over the K*K taps, not the pixels).
3. depthwise_conv2d_forward_simple / _backward_simple: the same as Numba kernels (the
   library's simple rung, minimobile/kernels/depthwise.py, has the same signature); then run
   `python -m exercises.ex01_depthwise_separable` to time them against your NumPy version
   (what to expect, and why, is in time_depthwise's docstring).
4. pointwise_conv2d_forward / _backward: the 1x1 convolution as a matrix product.

Check: `python -m pytest exercises -m ex01` (this exercise needs no other).
Debug a kernel as plain Python: `NUMBA_DISABLE_JIT=1 pytest exercises -m ex01 -x`.
Signatures are the library's (`minimobile.ops`, `minimobile.kernels`): keep them.
"""

import time
from typing import NamedTuple

import numpy as np
from numba import njit, prange  # noqa: F401: prange is for your kernels

from minimobile.ops import DepthwiseConv2dCache, conv_output_size  # noqa: F401


# --- 0. By hand first ------------------------------------------------------------------------
# MobileNet V1's first block at 224 x 224 input: a 3x3 conv from 32 to 64 channels whose output
# is 112 x 112 (stride 1, padding 1). Work out on paper, for the standard conv and for its
# depthwise separable replacement (3x3 depthwise on 32 channels, then 1x1 pointwise 32 -> 64):
# the multiply-adds of one image and the parameters (weights only: batch norm follows, so no
# biases). Type the numbers in as integer literals (123_456 is fine), not expressions.
STANDARD_MACS = 231_211_008
STANDARD_PARAMS = 18_432
SEPARABLE_MACS = 29_302_784
SEPARABLE_PARAMS = 2_336


# --- 1. Counting multiply-adds -------------------------------------------------------------


def standard_conv_macs(C_in, C_out, K, H_out, W_out):
    """Multiply-adds of one image through a K x K standard conv, C_in -> C_out channels, with an
    H_out x W_out output (every output value sums over C_in * K * K products)."""
    return C_out * C_in * K * K * H_out * W_out


def depthwise_separable_macs(C_in, C_out, K, H_out, W_out):
    """Multiply-adds of a K x K depthwise conv (C_in filters) followed by a 1x1 pointwise conv
    C_in -> C_out, both with an H_out x W_out output."""
    depthwise = C_in * K * K * H_out * W_out
    pointwise = C_out * C_in * H_out * W_out
    return depthwise + pointwise


def cost_ratio(C_in, C_out, K, H_out, W_out):
    """depthwise_separable_macs / standard_conv_macs (Howard et al. 2017, section 3.1): it should
    come out as 1 / C_out + 1 / K**2 whatever C_in and the output size are."""
    return (depthwise_separable_macs(C_in, C_out, K, H_out, W_out)
            / standard_conv_macs(C_in, C_out, K, H_out, W_out))


# --- 2. Depthwise conv in NumPy ------------------------------------------------------------


def depthwise_conv2d_forward(x, w, stride=1, padding=1):
    """out[n,c,i,j] = sum_{ki,kj} w[c,0,ki,kj] * xpad[n,c,i*stride+ki, j*stride+kj].

    x (N, C, H, W), w (C, 1, K, K); out (N, C, Ho, Wo) with Ho = conv_output_size(H, K,
    stride, padding). Return (out, DepthwiseConv2dCache(x, w, stride, padding)).
    Plain NumPy: pad once, then one vectorised multiply-add per tap (ki, kj).
    """
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = conv_output_size(H, K, stride, padding), conv_output_size(W, K, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # (N, C, H+2p, W+2p)
    out = np.zeros((N, C, Ho, Wo), dtype=x.dtype)
    for ki in range(K):
        for kj in range(K):
            rows = slice(ki, ki + stride * Ho, stride)  # the Ho input rows tap ki sees
            cols = slice(kj, kj + stride * Wo, stride)
            out += w[:, 0, ki, kj][None, :, None, None] * xp[:, :, rows, cols]
    return out, DepthwiseConv2dCache(x, w, stride, padding)


def depthwise_conv2d_backward(dout, cache):
    """Returns (dx, dw) for dout (N, C, Ho, Wo) and the forward's cache.

    Each tap (ki, kj) saw the strided window xpad[:, :, ki:ki+stride*Ho:stride, ...]: it sends
    dout * w[c, 0, ki, kj] back into that window of dxpad, and sum(dout * window) into dw.
    """
    x, w, stride, padding = cache.x, cache.w, cache.stride, cache.padding
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for ki in range(K):
        for kj in range(K):
            rows = slice(ki, ki + stride * Ho, stride)
            cols = slice(kj, kj + stride * Wo, stride)
            dw[:, 0, ki, kj] = np.sum(dout * xp[:, :, rows, cols], axis=(0, 2, 3))
            dxp[:, :, rows, cols] += dout * w[:, 0, ki, kj][None, :, None, None]
    H, W = x.shape[2], x.shape[3]
    return dxp[:, :, padding:padding + H, padding:padding + W], dw


# --- 3. The same as Numba kernels ------------------------------------------------------------
# Kernels take their outputs first, already allocated (with np.empty: set every element) and
# return nothing. Start with @njit(cache=True) and plain loops; once the tests pass, try
# @njit(cache=True, parallel=True) with prange over planes (forward) or channels (backward:
# thread c alone writes dw[c], so the result does not depend on the thread count).
# These are the "simple" rung of the library's staircase (minimobile/kernels/depthwise.py):
# read its _loops rung for the definition, but write yours before reading its _simple one.


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_simple(out, x, w, stride, pad):
    """Fill out (N, C, Ho, Wo) with the depthwise conv of x (N, C, H, W) by w (C, 1, K, K)."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(Ho):
            for j in range(Wo):
                total = 0.0
                for ki in range(K):
                    r = i * stride + ki - pad  # the input row under tap ki; outside is padding
                    if r < 0 or r >= H:
                        continue
                    for kj in range(K):
                        s = j * stride + kj - pad
                        if 0 <= s < W:
                            total += w[c, 0, ki, kj] * x[n, c, r, s]
                out[n, c, i, j] = total


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_simple(dx, dw, dout, x, w, stride, pad):
    """Fill dx (N, C, H, W) and dw (C, 1, K, K) from dout (N, C, Ho, Wo), x and w."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    for c in prange(C):  # thread c alone writes dx[:, c] and dw[c]
        dx[:, c] = 0.0
        dw[c] = 0.0
        for n in range(N):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, c, i, j]
                    for ki in range(K):
                        r = i * stride + ki - pad
                        if r < 0 or r >= H:
                            continue
                        for kj in range(K):
                            s = j * stride + kj - pad
                            if 0 <= s < W:
                                dx[n, c, r, s] += g * w[c, 0, ki, kj]
                                dw[c, 0, ki, kj] += g * x[n, c, r, s]


# --- 4. Pointwise (1x1) conv -----------------------------------------------------------------


class PointwiseConv2dCache(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    has_bias: bool


def pointwise_conv2d_forward(x, w, b=None):
    """out[n] = W (C_out, C_in) @ x[n] (C_in, H*W) + b; w (C_out, C_in, 1, 1), b (C_out,) or
    None. Return (out, PointwiseConv2dCache(x, w, b is not None))."""
    N, C, H, W = x.shape
    C_out = w.shape[0]
    out = np.einsum("oc,nchw->nohw", w.reshape(C_out, C), x)
    if b is not None:
        out = out + b[None, :, None, None]
    return out.astype(x.dtype), PointwiseConv2dCache(x, w, b is not None)


def pointwise_conv2d_backward(dout, cache):
    """Returns (dx, dw, db); db is None when the forward had no bias."""
    x, w = cache.x, cache.w
    C_out, C = w.shape[:2]
    dx = np.einsum("oc,nohw->nchw", w.reshape(C_out, C), dout).astype(x.dtype)
    dw = np.einsum("nohw,nchw->oc", dout, x).reshape(w.shape).astype(w.dtype)
    db = dout.sum(axis=(0, 2, 3)).astype(x.dtype) if cache.has_bias else None
    return dx, dw, db


# --- Timing: given, run it yourself once the kernels pass --------------------------------------


def time_depthwise(N=32, C=64, H=16, W=16, K=3, stride=1, repeats=5, seed=0):
    """Median seconds of your NumPy and Numba depthwise conv, forward and backward, float32.

    Each is run once before timing, so Numba's compile time is not counted. Returns a dict
    {"numpy_forward", "numpy_backward", "numba_forward", "numba_backward"} -> seconds.

    What to expect, measured with the reference solution on the 2-core machine this course is
    timed on (`python -m exercises.solutions.ex01_depthwise_separable`, twice, 2026-11-29):
    its prange kernels on 2 threads ran 2.7-2.8x faster than NumPy forward and 4.5-4.8x
    backward; the same kernels on one thread (`NUMBA_NUM_THREADS=1`, which is what a serial
    kernel without prange amounts to) 1.3x forward and 2.3x backward. Why: both versions do
    the same 9 multiply-adds per output, but NumPy does them as 9 vectorised passes over arrays
    that fit in cache here (32 x 64 x 16 x 16 float32 is 2 MB), reading and writing the whole
    output in every pass and making a temporary array each time, while the loop keeps its total
    in a register and writes each output once. The backward gains more because NumPy's also
    pads a copy and makes two temporaries per tap. The loop is held back by `if 0 <= s < W` in
    its innermost loop, which stops the compiler from vectorising it; the library's fast rung
    takes the bounds checks out (the border is handled separately). prange adds about one more
    x per core. Expect timings to wobble by 20 % on a shared machine: run it twice.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((C, 1, K, K)).astype(np.float32)
    pad = K // 2
    Ho, Wo = conv_output_size(H, K, stride, pad), conv_output_size(W, K, stride, pad)
    dout = rng.standard_normal((N, C, Ho, Wo)).astype(np.float32)
    out = np.empty_like(dout)
    dx, dw = np.empty_like(x), np.empty_like(w)
    cache = DepthwiseConv2dCache(x, w, stride, pad)
    contenders = {
        "numpy_forward": lambda: depthwise_conv2d_forward(x, w, stride, pad),
        "numpy_backward": lambda: depthwise_conv2d_backward(dout, cache),
        "numba_forward": lambda: depthwise_conv2d_forward_simple(out, x, w, stride, pad),
        "numba_backward": lambda: depthwise_conv2d_backward_simple(dx, dw, dout, x, w, stride,
                                                                   pad),
    }
    seconds = {}
    for name, run in contenders.items():
        run()  # compiles a kernel on its first call
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        seconds[name] = float(np.median(times))
    return seconds


def _print_timings(seconds):
    for kind in ("forward", "backward"):
        numpy_s, numba_s = seconds[f"numpy_{kind}"], seconds[f"numba_{kind}"]
        print(f"{kind:<9} numpy {numpy_s * 1e3:9.2f} ms   numba {numba_s * 1e3:9.2f} ms   "
              f"numpy time / numba time {numpy_s / numba_s:8.2f}")


if __name__ == "__main__":
    _print_timings(time_depthwise())

