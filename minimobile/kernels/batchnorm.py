"""Batch norm in training mode, with the activation after it, and in evaluation mode.

Training mode, for each channel c over its M = N*H*W values (x as (N, C, P), P = H*W):

    mean = sum(x) / M,  var = sum((x - mean)^2) / M   (biased: the layer makes it unbiased)
    out  = act(gamma * (x - mean) / sqrt(var + eps) + beta) = act(x * scale + shift)

with scale = gamma / sqrt(var + eps), shift = beta - mean * scale, and act one of the
activations of ACTIVATION_CODES (or none). The backward, with g = dout * act'(bn(x)) and
xhat = (x - mean) * invstd:

    dbeta = sum(g),  dgamma = sum(g * xhat),
    dx = gamma * invstd / M * (M * g - sum(g) - xhat * sum(g * xhat))

(derived in notebooks/02_mobilenet_v1.ipynb: the three paths from x to the loss, through
xhat directly, through the mean and through the variance). Outputs: mean, var and invstd in
float64, scale and shift in x's dtype, exactly as the forward used them, so the backward
recomputes bn(x) bit for bit.

The staircase: `_loops`, `_simple` (one Numba task per channel, two passes for the
statistics), `_fast` (one pass of shifted sums, the activation in the same pass, and a loop
order by image on small maps). Beyond the fast rung, the passes over memory that the convs
beside a batch norm can make as they touch the same maps: the backward's first-pass sums
(3e), its dx (3f) and the forward's statistics (3g).
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import tuning
from . import threads_for

# The activations batch norm can apply in its own pass, by the code the kernels take.
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "hardswish": 3}
# The code for "statistics and constants only, out left unwritten": the forward's caller
# applies act(x * scale + shift) itself, where the map is read next (a depthwise conv applies
# it as it copies each plane into its scratch: see kernels/depthwise.py), so the normalised
# map is never written to memory, read back, or kept for the backward.
STATISTICS_ONLY = -1


@njit(cache=True)
def activate(y, kind):
    """act(y) for an activation code; PyTorch's definitions."""
    if kind == 1:
        return max(y, 0.0)
    if kind == 2:
        return min(max(y, 0.0), 6.0)
    if kind == 3:
        return y * min(max(y + 3.0, 0.0), 6.0) / 6.0
    return y


@njit(cache=True)
def activation_slope(y, kind):
    """act'(y), with PyTorch's values at the kinks (ReLU: 0 at 0; ReLU6: 0 at 0 and 6;
    hard-swish: y/3 + 1/2 on the closed [-3, 3])."""
    if kind == 1:
        return 1.0 if y > 0 else 0.0
    if kind == 2:
        return 1.0 if 0 < y < 6 else 0.0
    if kind == 3:
        return 0.0 if y < -3 else (y / 3 + 0.5 if y <= 3 else 1.0)
    return 1.0


# ---------------------------------------------------------------------------------------------
# Rung 1, loops: the formulas above, channel by channel.
# ---------------------------------------------------------------------------------------------


def batchnorm2d_forward_loops(out, mean, var, scale, shift, x, gamma, beta, eps, kind):
    N, C, P = x.shape
    M = N * P
    for c in range(C):
        total = 0.0
        for n in range(N):
            for p in range(P):
                total += x[n, c, p]
        mean[c] = total / M
        squares = 0.0
        for n in range(N):
            for p in range(P):
                squares += (x[n, c, p] - mean[c]) ** 2
        var[c] = squares / M
        scale[c] = gamma[c] / np.sqrt(var[c] + eps)
        shift[c] = beta[c] - mean[c] * scale[c]
        if kind == STATISTICS_ONLY:
            continue
        for n in range(N):
            for p in range(P):
                xhat = (x[n, c, p] - mean[c]) / np.sqrt(var[c] + eps)
                out[n, c, p] = activate(gamma[c] * xhat + beta[c], kind)


def batchnorm2d_backward_loops(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale, shift,
                               kind):
    N, C, P = x.shape
    M = N * P
    for c in range(C):
        g = np.empty((N, P))  # the gradient reaching bn(x): through the activation first
        xhat = np.empty((N, P))
        for n in range(N):
            for p in range(P):
                g[n, p] = dout[n, c, p] * activation_slope(x[n, c, p] * scale[c] + shift[c],
                                                           kind)
                xhat[n, p] = (x[n, c, p] - mean[c]) * invstd[c]
        sum_g = 0.0
        sum_gxhat = 0.0
        for n in range(N):
            for p in range(P):
                sum_g += g[n, p]
                sum_gxhat += g[n, p] * xhat[n, p]
        dbeta[c] = sum_g
        dgamma[c] = sum_gxhat
        for n in range(N):
            for p in range(P):
                dx[n, c, p] = (gamma[c] * invstd[c] / M
                               * (M * g[n, p] - sum_g - xhat[n, p] * sum_gxhat))


def channel_affine_loops(out, x, scale, shift):
    """Evaluation mode: out[n, c] = x[n, c] * scale[c] + shift[c], with the running
    statistics folded into scale and shift."""
    N, C, P = x.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                out[n, c, p] = x[n, c, p] * scale[c] + shift[c]


# ---------------------------------------------------------------------------------------------
# Rung 2, simple: the same passes in Numba, thread c alone reading and writing channel c. The
# forward reads x three times (mean, variance, output), the backward twice (sums, dx).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def batchnorm2d_forward_simple(out, mean, var, scale, shift, x, gamma, beta, eps, kind):
    N, C, P = x.shape
    M = N * P
    for c in prange(C):
        total = 0.0
        for n in range(N):
            for p in range(P):
                total += x[n, c, p]
        mean[c] = total / M
        squares = 0.0
        for n in range(N):
            for p in range(P):
                d = x[n, c, p] - mean[c]
                squares += d * d
        var[c] = squares / M
        scale[c] = gamma[c] / np.sqrt(var[c] + eps)
        shift[c] = beta[c] - mean[c] * scale[c]
        if kind != STATISTICS_ONLY:
            for n in range(N):
                for p in range(P):
                    out[n, c, p] = activate(x[n, c, p] * scale[c] + shift[c], kind)


@njit(cache=True, parallel=True)
def batchnorm2d_backward_simple(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale, shift,
                                kind):
    N, C, P = x.shape
    M = N * P
    for c in prange(C):
        sum_g = 0.0
        sum_gxhat = 0.0
        for n in range(N):
            for p in range(P):
                g = dout[n, c, p] * activation_slope(x[n, c, p] * scale[c] + shift[c], kind)
                sum_g += g
                sum_gxhat += g * (x[n, c, p] - mean[c]) * invstd[c]
        dbeta[c] = sum_g
        dgamma[c] = sum_gxhat
        k = gamma[c] * invstd[c] / M
        for n in range(N):
            for p in range(P):
                g = dout[n, c, p] * activation_slope(x[n, c, p] * scale[c] + shift[c], kind)
                xhat = (x[n, c, p] - mean[c]) * invstd[c]
                dx[n, c, p] = k * (M * g - sum_g - xhat * sum_gxhat)


@njit(cache=True, parallel=True)
def channel_affine_simple(out, x, scale, shift):
    """Parallel over (image, channel) planes; the fast rung is this one (one pass, nothing
    left to save), on one thread for small arrays."""
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


def channel_affine_fast(out, x, scale, shift):
    with threads_for(x.size):
        channel_affine_simple(out, x, scale, shift)


# ---------------------------------------------------------------------------------------------
# Rung 3, fast. What changes against rung 2, and why it is faster (a MobileNet step is bound
# by memory traffic, and batch norm with its activation is most of it):
# - One pass for the statistics instead of two: sums of d = x - k0 and d*d, shifted by one of
#   the channel's own values k0 so that var = E[d^2] - E[d]^2 does not cancel (x read twice in
#   the forward instead of three times: V2 0.5's step went from 787 to 652 ms, 867 to 825 in a
#   second pair of runs, timed alternately against the commit before on 2026-11-26, as commit
#   376af77 records; not committed as a table).
# - Sums go into vectors of lanes, one per position, reduced at the end: LLVM vectorises the
#   accumulation without reordering additions (rung 2's scalar sum cannot be vectorised
#   without fastmath). The sums on all but the smallest maps later moved into registers, with
#   reordering allowed in those loops alone (see _row_sums and _shifted_row_sums below).
# - The activation is applied in the same pass as the normalisation, and the backward
#   recomputes bn(x) from x (one multiply-add) instead of keeping it: no intermediate tensor
#   is written or read. The branch on the activation code sits outside each row loop, so every
#   loop stays branch-free.
# - Two loop orders, because the maps run from 32x32 down to 2x2 (tuning.BN_BY_IMAGE_MAX_PIXELS):
#   by channel (large maps): thread c alone reads and writes channel c, row by row;
#   by image (maps of a few hundred pixels or fewer): a 4x4 row is 64 bytes, and walking one
#   channel through the batch touches a scattered cache line per row at a cost of tens of ns
#   per row. There each image's (C, P) block is one contiguous, vectorised pass with the
#   per-channel constants spread out to one per position, and the sums go into `sum_tasks`
#   fixed partial sums (per position) added in task order. Forward+backward at batch 128 and
#   V1 0.5's channel counts: 1.3x faster at 16x16, 3.6x at 8x8, 10x at 4x4, 15-18x at 2x2.
# Each order gives the same bits on every run and for any thread count; the two agree up to
# float32 rounding (by image, rows of fewer than tuning.BN_ROW_SUMS_MIN_PIXELS values are
# summed in float64 lanes, where by channel rounds each row's sum to x's dtype; and the images
# are added in sum_tasks shares). Against rung 2, forward+backward at N=128, C=96, 16x16
# (bench_ops.py --rungs, 2026-11-29; the ratio is in docs/PERFORMANCE.md, the times only
# here): 5.95 against 3.40 ms, 1.75x; with the sums in registers
# (below), 2.5x (8.73 against 3.46 ms on the AMD EPYC, 2026-11-30).
# ---------------------------------------------------------------------------------------------


def _at(v, p):
    """v[p] for a per-position array, v itself for a scalar (nopython mode only): so one row
    loop takes a channel's constants either as scalars, which LLVM keeps in registers (by
    channel), or one per position (by image, where a row spans many channels). By channel,
    arrays of one repeated value cost loads of four more streams: with them, batch norm's
    fused backward at 128x96x32x32 and 128x48x32x32 took 1.11-1.14x the unfused time without
    an activation and 0.96-1.00x with one; with scalars 0.91-0.97 and 0.77-0.80 (in-process
    A/B, 2026-11-30)."""
    raise NotImplementedError("_at is for Numba kernels")


@overload(_at)
def _at_in_numba(v, p):
    if isinstance(v, types.Array):
        return lambda v, p: v[p]
    return lambda v, p: v


@njit(cache=True)
def _affine_activate_row(dst, src, s, t, kind):
    """dst = act(src * s + t) over one row; s and t per position or scalars (_at)."""
    zero, three, six = src.dtype.type(0), src.dtype.type(3), src.dtype.type(6)
    P = src.size
    if kind == 0:
        for p in range(P):
            dst[p] = src[p] * _at(s, p) + _at(t, p)
    elif kind == 1:
        for p in range(P):
            dst[p] = max(src[p] * _at(s, p) + _at(t, p), zero)
    elif kind == 2:
        for p in range(P):
            dst[p] = min(max(src[p] * _at(s, p) + _at(t, p), zero), six)
    else:
        for p in range(P):
            y = src[p] * _at(s, p) + _at(t, p)
            dst[p] = y * min(max(y + three, zero), six) / six


@njit(cache=True)
def affine_activate_plane(dst, src, a, b, kind):
    """dst = act(src * a + b) over an (H, W) plane, a and b one channel's scale and shift in
    src's dtype: the operations of _affine_activate_row in the same order, so the same bits.
    A depthwise conv reading a STATISTICS_ONLY batch norm's input calls it on each plane."""
    zero, three, six = src.dtype.type(0), src.dtype.type(3), src.dtype.type(6)
    H, W = src.shape
    for r in range(H):
        s_row = src[r]
        d_row = dst[r]
        if kind == 0:
            for p in range(W):
                d_row[p] = s_row[p] * a + b
        elif kind == 1:
            for p in range(W):
                d_row[p] = max(s_row[p] * a + b, zero)
        elif kind == 2:
            for p in range(W):
                d_row[p] = min(max(s_row[p] * a + b, zero), six)
        else:
            for p in range(W):
                y = s_row[p] * a + b
                d_row[p] = y * min(max(y + three, zero), six) / six


@njit(cache=True)
def affine_activate(out, x, scale, shift, kind):
    """out = act(x * scale + shift) per channel of x (N, C, H, W): the map a STATISTICS_ONLY
    forward leaves unwritten, made whole by the rungs that do not fuse it into their reads."""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            affine_activate_plane(out[n, c], x[n, c], scale[c], shift[c], kind)


def normalized_input(x, scale, shift, kind):
    """act(x * scale + shift) made whole: how the loops and simple rungs of the convs that
    read a STATISTICS_ONLY batch norm's input (kernels/depthwise.py and kernels/matmul.py,
    3c) get their input, before their plain loops."""
    y = np.empty_like(x)
    affine_activate(y, x, scale, shift, kind)
    return y


def no_prologue(x):
    """The trailing (scale, shift, kind) arguments of the fast conv kernels that can normalise
    their input as they read it, for an input to be read as it is:
    `depthwise_conv2d_forward_phase_planes(out, x, w, 1, 1, ntasks, *no_prologue(x))` runs
    the plain conv."""
    empty = np.empty(0, dtype=x.dtype)
    return empty, empty, STATISTICS_ONLY


# The backward's two passes recompute g = dout * act'(y), y = src * s + t exactly as the
# forward computed y: slopes at the kinks are PyTorch's, as in the standalone activation
# kernels of kernels/elementwise.py, and the branch on the activation sits outside each row
# loop, so every loop stays branch-free. The second pass (dx, _input_gradient_row) makes g
# inside its own loop and never stores it: with g in a scratch row read back in both passes,
# the backward with an activation took about a quarter more time by channel (recomputing g
# took 0.77-0.80 of it at 96x32x32 and 48x32x32; 2026-11-30, docs/PERFORMANCE.md, "Small
# maps and batch norm's backward").
# The first pass's sums, of g and of g * (x - mean), went into lanes, one float64 per
# position: a load and a store of two lanes per value, in L2 once a lane outgrew L1. Now
# (session 19) each row, one channel of one image, makes its g in a scratch row
# (_upstream_gradient, skipped without an activation, where g is dout) and sums it in
# registers in x's dtype (_row_sums), and the row's sums are added into float64 totals per
# channel. LLVM vectorises a sum only when it may reorder it, so _row_sums alone is compiled
# with fastmath's "reassoc" and nothing else of fastmath, as the depthwise conv's
# _tap_sums_3x3: each row is summed in vector lanes, in an order fixed by the compiled code,
# so the bits still do not depend on the run or the thread count. The one summing loop serves
# every activation, so a fused activation gives the bits of the unfused pair still; in one
# loop per activation, LLVM summed each in its own order. In process against the lanes
# (AMD EPYC, 2026-11-30, batch 128, paired medians of 9 rounds), the whole backward took
# 0.76-0.79 of the time with ReLU6 by channel (96x32x32, 48x32x32) and 0.76-0.84 by image
# (96x16x16 to 288x8x8); 0.94-0.95 by channel without an activation, 0.71-0.74 by image.
# The sums moved by 1e-7 relative, float32's rounding. Rows shorter than
# tuning.BN_ROW_SUMS_MIN_PIXELS keep the lanes.
# The forward's statistics, sums of d = x - k0 and d * d, went the same way
# (_shifted_row_sums, d in x's dtype: k0 is one of x's values, so it is exact there). In
# process against the float64 lanes (same conditions), the statistics took 0.74-0.79 of the
# time by channel (96x32x32, 48x32x32), 0.55 for 16x32x32, and 0.19-0.41 by image (96x16x16,
# 192x8x8, 288x8x8), where the lanes, one per position of a whole image, lived in L2; mean
# and variance moved by 2e-7 relative or less.
@njit(cache=True)
def _upstream_gradient(g, dout, src, s, t, kind):
    """g = dout * act'(y), y = src * s + t recomputed as the forward computed it; flat, s and
    t per position or scalars (_at). Without an activation (kind 0) g is dout, and g is left
    as it is."""
    zero, half, one = src.dtype.type(0), src.dtype.type(0.5), src.dtype.type(1)
    three, six = src.dtype.type(3), src.dtype.type(6)
    n = src.size
    if kind == 0:  # g is dout: the callers read dout instead
        return
    if kind == 1:
        for p in range(n):
            g[p] = dout[p] if src[p] * _at(s, p) + _at(t, p) > zero else zero
    elif kind == 2:
        for p in range(n):
            y = src[p] * _at(s, p) + _at(t, p)
            g[p] = dout[p] if (y > zero and y < six) else zero
    else:
        for p in range(n):
            y = src[p] * _at(s, p) + _at(t, p)
            slope = y / three + half
            slope = zero if y < -three else slope
            slope = one if y > three else slope
            g[p] = dout[p] * slope


@njit(cache=True, fastmath={"reassoc"})
def _row_sums(sums_g, sums_gx, g, src, m, P):
    """For R rows of P values, flat (R*P,): sums_g[r] += the sum of row r's g and sums_gx[r]
    += the sum of its g * (src - m[r]) (m per row or a scalar), each row summed in src's
    dtype in vector lanes and added into the float64 totals."""
    for r in range(src.size // P):
        mr = _at(m, r)
        row_g = src.dtype.type(0)
        row_gx = src.dtype.type(0)
        gr = g[r * P:(r + 1) * P]
        sr = src[r * P:(r + 1) * P]
        for p in range(P):
            row_g += gr[p]
            row_gx += gr[p] * (sr[p] - mr)
        sums_g[r] += row_g
        sums_gx[r] += row_gx


@njit(cache=True)
def _add_into_lanes(lanes_g, lanes_gx, g, src, m):
    """lanes_g += g and lanes_gx += g * (src - m), one float64 lane per position, m spread."""
    for p in range(src.size):
        lanes_g[p] += g[p]
        lanes_gx[p] += g[p] * (src[p] - m[p])


@njit(cache=True)
def _input_gradient_row(d, dout, src, s, t, a, b, mm, cm, kind):
    """d = a * g - b * (src - mm) + cm over one row: dx from the sums (a, b, mm, cm as in
    the backward kernels, per position or scalars), g recomputed as in _upstream_gradient."""
    zero, half, one = src.dtype.type(0), src.dtype.type(0.5), src.dtype.type(1)
    three, six = src.dtype.type(3), src.dtype.type(6)
    P = src.size
    if kind == 0:
        for p in range(P):
            d[p] = _at(a, p) * dout[p] - _at(b, p) * (src[p] - _at(mm, p)) + _at(cm, p)
    elif kind == 1:
        for p in range(P):
            g = dout[p] if src[p] * _at(s, p) + _at(t, p) > zero else zero
            d[p] = _at(a, p) * g - _at(b, p) * (src[p] - _at(mm, p)) + _at(cm, p)
    elif kind == 2:
        for p in range(P):
            y = src[p] * _at(s, p) + _at(t, p)
            g = dout[p] if (y > zero and y < six) else zero
            d[p] = _at(a, p) * g - _at(b, p) * (src[p] - _at(mm, p)) + _at(cm, p)
    else:
        for p in range(P):
            y = src[p] * _at(s, p) + _at(t, p)
            slope = y / three + half
            slope = zero if y < -three else slope
            slope = one if y > three else slope
            g = dout[p] * slope
            d[p] = _at(a, p) * g - _at(b, p) * (src[p] - _at(mm, p)) + _at(cm, p)


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


@njit(cache=True, fastmath={"reassoc"})
def _shifted_row_sums(sums_d, sums_d2, src, k0, P):
    """For R rows of P values, flat (R*P,): sums_d[r] += the sum of d = src - k0[r] over row
    r and sums_d2[r] += the sum of d * d (k0 per row or a scalar), each row summed in src's
    dtype in vector lanes and added into the float64 totals: _row_sums for the forward."""
    for r in range(src.size // P):
        k = _at(k0, r)
        row_d = src.dtype.type(0)
        row_d2 = src.dtype.type(0)
        sr = src[r * P:(r + 1) * P]
        for p in range(P):
            d = sr[p] - k
            row_d += d
            row_d2 += d * d
        sums_d[r] += row_d
        sums_d2[r] += row_d2


@njit(cache=True, parallel=True)
def batchnorm2d_forward_by_channel(out, mean, var, scale, shift, x, gamma, beta, eps, kind,
                                   rows=None):
    """By channel. mean, var (biased) over (N, H, W); out = act(x * scale + shift) with
    scale = gamma / sqrt(var + eps) and shift = beta - mean * scale. `rows`, (2, N, C) sums
    of d = x - x[0, c, 0] and d * d over each row made where x was made (see 3g below),
    replaces the statistics' pass: they are added in image order."""
    N, C, P = x.shape
    for c in prange(C):
        k0 = x[0, c, 0]
        sums = np.zeros(2)
        if rows is None:
            for n in range(N):
                _shifted_row_sums(sums[:1], sums[1:], x[n, c], k0, P)
        else:
            for n in range(N):
                sums[0] += rows[0, n, c]
                sums[1] += rows[1, n, c]
        _shifted_moments(c, mean, var, np.float64(k0), sums[0], sums[1], N * P)
        _batchnorm_constants(c, mean, var, scale, shift, gamma, beta, eps)
        if kind != STATISTICS_ONLY:
            for n in range(N):
                _affine_activate_row(out[n, c], x[n, c], scale[c], shift[c], kind)


@njit(cache=True, parallel=True)
def batchnorm2d_backward_by_channel(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                    shift, kind, rows=None, consts=None):
    """By channel. With g = dout * act'(bn(x)):
    dx = gamma*invstd/M * (M*g - sum(g) - xhat*sum(g*xhat)), xhat and bn(x) recomputed from x,
    g recomputed in each pass (_upstream_gradient, _input_gradient_row). `rows`, (2, N, C)
    sums of g and g * (x - mean) over each row (one channel of one image) made where dout was
    made (see 3e below), replaces the first pass's loop: they are added in image order. With
    `consts`, (4, C) in x's dtype, the second pass is left to the conv that reads dx (3f
    below): consts gets its a, b, mm and cm per channel instead, and dx is not written."""
    N, C, P = x.shape
    M = N * P
    for c in prange(C):
        s, t = scale[c], shift[c]
        mm = x.dtype.type(mean[c])
        sums = np.zeros(2)
        if rows is None:
            g = np.empty(P, dtype=x.dtype)
            for n in range(N):
                _upstream_gradient(g, dout[n, c], x[n, c], s, t, kind)
                _row_sums(sums[:1], sums[1:], g if kind != 0 else dout[n, c], x[n, c], mm, P)
        else:
            for n in range(N):
                sums[0] += rows[0, n, c]
                sums[1] += rows[1, n, c]
        sum_g = sums[0]
        sum_gxhat = sums[1] * invstd[c]
        dbeta[c] = sum_g
        dgamma[c] = sum_gxhat
        k = gamma[c] * invstd[c]
        a = x.dtype.type(k)
        b = x.dtype.type(k * invstd[c] * sum_gxhat / M)  # xhat * b = (x - m) * invstd * ...
        cm = x.dtype.type(-k * sum_g / M)
        if consts is None:
            for n in range(N):
                _input_gradient_row(dx[n, c], dout[n, c], x[n, c], s, t, a, b, mm, cm, kind)
        else:
            consts[0, c], consts[1, c], consts[2, c], consts[3, c] = a, b, mm, cm


@njit(cache=True)
def _spread(per_channel, P, dtype):
    """(C,) -> (C*P,): each channel's value repeated over its P positions."""
    C = per_channel.size
    out = np.empty(C * P, dtype=dtype)
    for c in range(C):
        out[c * P:(c + 1) * P] = per_channel[c]
    return out


@njit(cache=True)
def _sum_rows_in_order(totals):
    """totals (tasks, C) -> (C,): the tasks' rows added in task order."""
    out = np.zeros(totals.shape[1])
    for task in range(totals.shape[0]):
        out += totals[task]
    return out


@njit(cache=True)
def _per_channel_total(lanes, C, P):
    """lanes (tasks, C*P) -> (C,) float64: task by task, then position by position."""
    totals = np.zeros(C)
    for t in range(lanes.shape[0]):
        for c in range(C):
            totals[c] += lanes[t, c * P:(c + 1) * P].sum()
    return totals


@njit(cache=True, parallel=True)
def batchnorm2d_forward_by_image(out, mean, var, scale, shift, x, gamma, beta, eps, kind,
                                 sum_tasks, row_sums_min_pixels, rows=None):
    """By image, for small maps: the same bits on every run and for any thread count, and
    batchnorm2d_forward_by_channel's result up to float32 rounding. x (N, C, P). Rows of
    fewer than row_sums_min_pixels values are summed in float64 lanes, one per position,
    instead of row by row in registers (_shifted_row_sums, which rounds each row's sum to x's
    dtype, as by channel does). `rows` as by channel (made row by row, so only where P >=
    row_sums_min_pixels) replaces the statistics' pass: each task adds its images' in order."""
    N, C, P = x.shape
    M = N * P
    xs = x.reshape(N, C * P)
    k0 = np.empty(C)
    for c in range(C):
        k0[c] = x[0, c, 0]
    by_rows = P >= row_sums_min_pixels or rows is not None
    k0_rows = k0.astype(x.dtype)  # exact: each is one of x's values
    shifts = _spread(k0, 0 if by_rows else P, np.float64)
    lanes = np.zeros((sum_tasks, C if by_rows else C * P))
    lanes_sq = np.zeros((sum_tasks, C if by_rows else C * P))
    if rows is None:
        for task in prange(sum_tasks):
            acc = lanes[task]
            acc_sq = lanes_sq[task]
            for n in range(task * N // sum_tasks, (task + 1) * N // sum_tasks):
                row = xs[n]
                if by_rows:
                    _shifted_row_sums(acc, acc_sq, row, k0_rows, P)
                    continue
                for i in range(C * P):
                    d = row[i] - shifts[i]
                    acc[i] += d
                    acc_sq[i] += d * d
    else:
        for task in range(sum_tasks):
            for n in range(task * N // sum_tasks, (task + 1) * N // sum_tasks):
                lanes[task] += rows[0, n]
                lanes_sq[task] += rows[1, n]
    if by_rows:
        sum_d = _sum_rows_in_order(lanes)
        sum_d2 = _sum_rows_in_order(lanes_sq)
    else:
        sum_d = _per_channel_total(lanes, C, P)
        sum_d2 = _per_channel_total(lanes_sq, C, P)
    for c in range(C):
        _shifted_moments(c, mean, var, k0[c], sum_d[c], sum_d2[c], M)
        _batchnorm_constants(c, mean, var, scale, shift, gamma, beta, eps)
    if kind != STATISTICS_ONLY:
        s = _spread(scale, P, x.dtype)
        t = _spread(shift, P, x.dtype)
        outs = out.reshape(N, C * P)
        for n in prange(N):
            _affine_activate_row(outs[n], xs[n], s, t, kind)


@njit(cache=True, parallel=True)
def batchnorm2d_backward_by_image(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                  shift, kind, sum_tasks, row_sums_min_pixels, rows=None,
                                  consts=None):
    """By image, for small maps: the same bits on every run and for any thread count, and
    batchnorm2d_backward_by_channel's result up to float32 rounding. Rows of fewer than
    row_sums_min_pixels values are summed in float64 lanes, one per position, instead of row
    by row in registers (_row_sums, which rounds each row's sum to x's dtype, as by channel
    does). `rows` as by channel (made row by row, so only where P >= row_sums_min_pixels)
    replaces the first pass's loop: each task adds its images' in order; `consts` as by
    channel."""
    N, C, P = x.shape
    M = N * P
    xs, douts, dxs = x.reshape(N, C * P), dout.reshape(N, C * P), dx.reshape(N, C * P)
    s = _spread(scale, P, x.dtype)
    t = _spread(shift, P, x.dtype)
    by_rows = P >= row_sums_min_pixels
    means = mean.astype(x.dtype)
    m = _spread(mean, P if not by_rows else 0, np.float64)
    if rows is None:
        totals_g = np.zeros((sum_tasks, C if by_rows else C * P))
        totals_gx = np.zeros((sum_tasks, C if by_rows else C * P))
        for task in prange(sum_tasks):
            g = np.empty(C * P, dtype=x.dtype)
            for n in range(task * N // sum_tasks, (task + 1) * N // sum_tasks):
                _upstream_gradient(g, douts[n], xs[n], s, t, kind)
                gn = g if kind != 0 else douts[n]
                if by_rows:
                    _row_sums(totals_g[task], totals_gx[task], gn, xs[n], means, P)
                else:
                    _add_into_lanes(totals_g[task], totals_gx[task], gn, xs[n], m)
    else:
        by_rows = True
        totals_g = np.zeros((sum_tasks, C))
        totals_gx = np.zeros((sum_tasks, C))
        for task in range(sum_tasks):
            for n in range(task * N // sum_tasks, (task + 1) * N // sum_tasks):
                totals_g[task] += rows[0, n]
                totals_gx[task] += rows[1, n]
    if by_rows:
        sum_g = _sum_rows_in_order(totals_g)
        sum_gxhat = _sum_rows_in_order(totals_gx) * invstd
    else:
        sum_g = _per_channel_total(totals_g, C, P)
        sum_gxhat = _per_channel_total(totals_gx, C, P) * invstd
    dbeta[:] = sum_g
    dgamma[:] = sum_gxhat
    k = gamma * invstd
    if consts is not None:  # the values _spread gives every position of a channel
        for c in range(C):
            consts[0, c] = k[c]
            consts[1, c] = k[c] * invstd[c] * sum_gxhat[c] / M
            consts[2, c] = mean[c]
            consts[3, c] = -k[c] * sum_g[c] / M
        return
    a = _spread(k, P, x.dtype)
    b = _spread(k * invstd * sum_gxhat / M, P, x.dtype)
    cm = _spread(-k * sum_g / M, P, x.dtype)
    mm = _spread(mean, P, x.dtype)
    for n in prange(N):
        _input_gradient_row(dxs[n], douts[n], xs[n], s, t, a, b, mm, cm, kind)


def batchnorm2d_forward_fast(out, mean, var, scale, shift, x, gamma, beta, eps, kind):
    with threads_for(x.size):
        _batchnorm2d_forward_fast(out, mean, var, scale, shift, x, gamma, beta, eps, kind)


def batchnorm2d_backward_fast(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale, shift,
                              kind):
    with threads_for(x.size):
        _batchnorm2d_backward_fast(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                   shift, kind)


def _batchnorm2d_forward_fast(out, mean, var, scale, shift, x, gamma, beta, eps, kind,
                              rows=None):
    if x.shape[2] <= tuning.BN_BY_IMAGE_MAX_PIXELS:
        batchnorm2d_forward_by_image(out, mean, var, scale, shift, x, gamma, beta, eps, kind,
                                     tuning.SUM_TASKS, tuning.BN_ROW_SUMS_MIN_PIXELS, rows)
    else:
        batchnorm2d_forward_by_channel(out, mean, var, scale, shift, x, gamma, beta, eps, kind,
                                       rows)


def _batchnorm2d_backward_fast(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale, shift,
                               kind, rows=None, consts=None):
    if x.shape[2] <= tuning.BN_BY_IMAGE_MAX_PIXELS:
        batchnorm2d_backward_by_image(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                      shift, kind, tuning.SUM_TASKS,
                                      tuning.BN_ROW_SUMS_MIN_PIXELS, rows, consts)
    else:
        batchnorm2d_backward_by_channel(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                        shift, kind, rows, consts)


# ---------------------------------------------------------------------------------------------
# 3e. The backward's first pass made where its gradient is made. A batch norm whose output
# one conv alone reads, normalised as it reads (3c in kernels/depthwise.py and in
# kernels/matmul.py), gets its gradient from that conv's backward, and its own first pass
# reads that gradient and x back from memory to sum g and g * (x - mean) over each row (one
# channel of one image). The conv's backward holds both rows in cache as it writes the
# gradient, so it makes the rows' sums there (add_row_sums), one pair per row, in any order
# or thread; the batch norm then adds them in its own order (images in order, by channel or
# in its SUM_TASKS shares by image) and runs its second pass alone
# (batchnorm2d_backward_from_row_sums). A row's sum is the one this module's first pass
# makes, with its helpers, and a float64 total starting from 0 holds it exactly: the same
# bits as the whole backward. Rows of under tuning.BN_ROW_SUMS_MIN_PIXELS are summed in
# per-position lanes instead, which the convs do not make (makes_row_sums).
# ---------------------------------------------------------------------------------------------


def makes_row_sums(P):
    """Whether batch norm's backward on maps of P pixels sums its first pass row by row, so
    that a conv can make those sums for it (add_row_sums); elsewhere it uses lanes."""
    return P > tuning.BN_BY_IMAGE_MAX_PIXELS or P >= tuning.BN_ROW_SUMS_MIN_PIXELS


def by_channel(P):
    """Whether batch norm's backward on maps of P pixels goes channel by channel (its
    _row_sums then reads the channel's mean as a scalar, as add_row_sums must)."""
    return P > tuning.BN_BY_IMAGE_MAX_PIXELS


@njit(cache=True)
def add_row_sums(rows, n, k, g, dy, src, s, t, mean, kind, channel_order):
    """rows[0, n, k] and rows[1, n, k] (zeros before) += the sums of one row's g = dy *
    act'(src * s + t) and of g * (src - mean[k]): batch norm's first pass on row (n, k), as
    batchnorm2d_backward_by_channel (channel_order) or _by_image makes it. g is scratch of
    the row's length."""
    _upstream_gradient(g, dy, src, s, t, kind)
    gn = g if kind != 0 else dy
    if channel_order:
        _row_sums(rows[0, n, k:k + 1], rows[1, n, k:k + 1], gn, src, mean[k], src.size)
    else:
        _row_sums(rows[0, n, k:k + 1], rows[1, n, k:k + 1], gn, src, mean[k:k + 1], src.size)


def batchnorm2d_backward_from_row_sums(dx, dgamma, dbeta, rows, dout, x, mean, invstd, gamma,
                                       scale, shift, kind):
    """batchnorm2d_backward_fast with its first pass's row sums, rows (2, N, C) float64, made
    by the conv that read the output: the same bits as the whole backward."""
    with threads_for(x.size):
        _batchnorm2d_backward_fast(dx, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                   shift, kind, rows)


# ---------------------------------------------------------------------------------------------
# 3f. The backward's second pass made where its result is read. Inside a conv -> batch norm
# (-> activation) unit, batch norm's dx goes to that conv's backward and nowhere else, and
# the depthwise and 1x1 backwards copy their dout, a plane or an image at a time, into
# scratch that stays in cache (phase planes, channels last, the 1x1's groups) or read it
# straight from memory (the 1x1's products per image). So the batch norm can stop after its
# sums (batchnorm2d_backward_deferred: its constants a, b, mm and cm per channel) and hand
# the conv the gradient it was given with its input, for the conv to make dx = a * g - b *
# (x - mm) + cm as it reads each plane or image (input_gradient_rows): dx is never written
# to memory and read back. The operations are the second pass's, in its order, with the
# same constants, so the same bits.
# ---------------------------------------------------------------------------------------------


def batchnorm2d_backward_deferred(dgamma, dbeta, consts, dout, x, mean, invstd, gamma, scale,
                                  shift, kind, rows=None):
    """batchnorm2d_backward_fast up to its second pass: dgamma, dbeta, and consts (4, C) in
    x's dtype, the a, b, mm and cm with which input_gradient_rows makes dx from dout and x.
    rows as in batchnorm2d_backward_from_row_sums (None: the first pass runs here)."""
    with threads_for(x.size):
        # dx's place holds dout, which the kernels do not write when given consts
        _batchnorm2d_backward_fast(dout, dgamma, dbeta, dout, x, mean, invstd, gamma, scale,
                                   shift, kind, rows, consts)


@njit(cache=True)
def input_gradient_rows(d, dy, src, scale, shift, consts, kind, first):
    """d[r] = batch norm's dx for rows r of dy and src (R, P), channel first + r of its
    constants (scale, shift (C,), consts (4, C) as batchnorm2d_backward_deferred made them):
    the second pass's operations, in its order."""
    for r in range(src.shape[0]):
        c = first + r
        _input_gradient_row(d[r], dy[r], src[r], scale[c], shift[c], consts[0, c],
                            consts[1, c], consts[2, c], consts[3, c], kind)


@njit(cache=True)
def input_gradient_image(d, dy, src, scale, shift, consts, spread, kind):
    """input_gradient_rows for one image's rows (C, P). With `spread` (6, C*P), the constants
    spread over the image's positions (scale, shift, a, b, mm, cm), as
    batchnorm2d_backward_by_image reads them, the image is one pass: on small maps a call per
    row of a few pixels costs more than the row. The same operations either way."""
    C, P = src.shape
    if spread.shape[1] == C * P:
        _input_gradient_row(d.reshape(C * P), dy.reshape(C * P), src.reshape(C * P), spread[0],
                            spread[1], spread[2], spread[3], spread[4], spread[5], kind)
    else:
        input_gradient_rows(d, dy, src, scale, shift, consts, kind, 0)


@njit(cache=True, parallel=True)
def input_gradient(dx, dy, x, scale, shift, consts, spread, kind):
    """dx (N, C, P) = batch norm's whole second pass from its constants: what a conv that
    cannot make it as it reads gets (ops.NormalizedGradient.materialize)."""
    for n in prange(x.shape[0]):
        input_gradient_image(dx[n], dy[n], x[n], scale, shift, consts, spread, kind)


def spread_constants(scale, shift, consts, P):
    """The (6, C*P) `spread` of input_gradient_image for maps of P pixels, where batch norm's
    backward goes by image (tuning.BN_BY_IMAGE_MAX_PIXELS); (6, 0) on larger maps."""
    if P > tuning.BN_BY_IMAGE_MAX_PIXELS:
        return np.empty((6, 0), dtype=scale.dtype)
    return np.stack([np.repeat(v, P) for v in (scale, shift, *consts)])


# ---------------------------------------------------------------------------------------------
# 3g. The forward's statistics made where its input is made. A batch norm after a depthwise or
# 1x1 conv reads the conv's whole output back from memory for its statistics, sums of d = x -
# k0 and d * d over each row (one channel of one image), k0 = x[0, c, 0]. The conv has each
# plane or image of that output in cache just after making it, so it makes those rows' sums
# there (add_shifted_row_sums, add_image_shifted_row_sums), and the batch norm adds them in its
# own order (batchnorm2d_forward_from_row_sums): with its output deferred to the next conv
# (3c), it then never reads its input at all. The shift must be known before any row is
# summed, so the conv makes image 0 first, on one thread, and reads k0 off it. A row's sum is
# the one this module's statistics make, with the same helper, and a float64 total starting
# from 0 holds it exactly: the same bits. Only where the statistics go row by row
# (makes_row_sums): rows of under tuning.BN_ROW_SUMS_MIN_PIXELS go into lanes instead.
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def add_shifted_row_sums(rows, n, k, src, k0, channel_order):
    """rows[0, n, k] and rows[1, n, k] (zeros before) += the sums of one row's d = src - k0[k]
    and d * d: batch norm's statistics on row (n, k), as batchnorm2d_forward_by_channel
    (channel_order) or _by_image makes them. src is the row, flat."""
    if channel_order:
        _shifted_row_sums(rows[0, n, k:k + 1], rows[1, n, k:k + 1], src, k0[k], src.size)
    else:
        _shifted_row_sums(rows[0, n, k:k + 1], rows[1, n, k:k + 1], src, k0[k:k + 1], src.size)


@njit(cache=True)
def add_image_shifted_row_sums(rows, n, image, k0, channel_order):
    """add_shifted_row_sums for every row of image n, (C, P); by image in one call, as
    batchnorm2d_forward_by_image sums an image."""
    C, P = image.shape
    if channel_order:
        for k in range(C):
            _shifted_row_sums(rows[0, n, k:k + 1], rows[1, n, k:k + 1], image[k], k0[k], P)
    else:
        _shifted_row_sums(rows[0, n], rows[1, n], image.reshape(C * P), k0, P)


def statistics_rows(out):
    """(rows, k0, channel_order): the zeroed (2, N, C) float64 row sums, the (C,) shifts in
    out's dtype (the conv fills them from image 0) and the loop order, for a conv making the
    statistics of the batch norm that reads `out` (N, C, ...); None where batch norm sums its
    statistics in lanes (makes_row_sums) and the conv cannot make them."""
    N, C = out.shape[:2]
    P = int(np.prod(out.shape[2:]))
    if not makes_row_sums(P):
        return None
    return np.zeros((2, N, C)), np.empty(C, dtype=out.dtype), by_channel(P)


def batchnorm2d_forward_from_row_sums(out, mean, var, scale, shift, x, gamma, beta, eps, kind,
                                      rows):
    """batchnorm2d_forward_fast with its statistics' row sums, rows (2, N, C) float64, made by
    the conv that made x: the same bits as the whole forward."""
    with threads_for(x.size):
        _batchnorm2d_forward_fast(out, mean, var, scale, shift, x, gamma, beta, eps, kind, rows)
