"""Vectorised NumPy versions of the depthwise conv, written the way CS231n's assignments write
convolutions (im2col by fancy indexing, col2im by np.add.at). They are what a careful NumPy
programmer gets without Numba: the benchmarks time them to show what the kernels buy."""

import numpy as np


def _im2col_indices(C, H, W, K, stride, pad):
    Ho = (H + 2 * pad - K) // stride + 1
    Wo = (W + 2 * pad - K) // stride + 1
    i0 = np.repeat(np.arange(K), K)  # kernel row of each of the K*K taps
    j0 = np.tile(np.arange(K), K)
    rows = i0[:, None] + stride * np.repeat(np.arange(Ho), Wo)[None, :]  # (K*K, Ho*Wo)
    cols = j0[:, None] + stride * np.tile(np.arange(Wo), Ho)[None, :]
    return rows, cols, Ho, Wo


def depthwise_forward_im2col(x, w, stride=1, pad=1):
    N, C, H, W = x.shape
    K = w.shape[2]
    rows, cols, Ho, Wo = _im2col_indices(C, H, W, K, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    patches = xp[:, :, rows, cols]  # (N, C, K*K, Ho*Wo)
    out = np.einsum("nckp,ck->ncp", patches, w.reshape(C, K * K), optimize=True)
    return out.reshape(N, C, Ho, Wo), (x.shape, patches, w, stride, pad)


def depthwise_backward_im2col(dout, cache):
    (N, C, H, W), patches, w, stride, pad = cache
    K = w.shape[2]
    rows, cols, Ho, Wo = _im2col_indices(C, H, W, K, stride, pad)
    d = dout.reshape(N, C, 1, Ho * Wo)
    dw = np.einsum("ncp,nckp->ck", d[:, :, 0], patches, optimize=True).reshape(w.shape)
    dpatches = w.reshape(1, C, K * K, 1) * d  # (N, C, K*K, Ho*Wo)
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dout.dtype)
    np.add.at(dxp, (slice(None), slice(None), rows, cols), dpatches)
    return dxp[:, :, pad:pad + H, pad:pad + W], dw
