"""Depthwise convolution: one K x K filter per channel, w (C, 1, K, K), x (N, C, H, W).

    out[n, c, i, j] = sum_{ki, kj} w[c, 0, ki, kj] * x[n, c, i*s + ki - pad, j*s + kj - pad]

with x read as 0 outside the image (the padding). The backward sends each output's gradient
back along the same taps: dx[n, c, r, q] collects w * dout from every output whose window
covers (r, q), and dw[c] sums dout * x over the windows, the batch included. The derivation is
in notebooks/01_depthwise_separable.ipynb.

The staircase: `_loops` (the definition), `_simple` (one Numba loop over planes, or over
channels for the backward), `_fast` (phase planes for large maps, channels last for small
ones). See `minimobile/kernels/__init__.py` for the conventions.
"""

import numpy as np
from numba import get_num_threads, njit, prange, uint64

from .. import tuning
from . import threads_for
from .batchnorm import (STATISTICS_ONLY, add_image_shifted_row_sums,  # noqa: F401
                        add_row_sums, add_shifted_row_sums, affine_activate_plane, by_channel,
                        input_gradient_image, input_gradient_rows, makes_row_sums, no_prologue,
                        normalized_input, statistics_rows)

# ---------------------------------------------------------------------------------------------
# Rung 1, loops: the definition, one output element at a time.
# ---------------------------------------------------------------------------------------------


def depthwise_conv2d_forward_loops(out, x, w, stride, pad):
    """out (N, C, Ho, Wo) = the depthwise correlation of x with w, zero padding pad."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    total = 0.0
                    for ki in range(K):
                        for kj in range(K):
                            r, q = i * stride + ki - pad, j * stride + kj - pad
                            if 0 <= r < H and 0 <= q < W:  # outside: padding, which is 0
                                total += w[c, 0, ki, kj] * x[n, c, r, q]
                    out[n, c, i, j] = total


def depthwise_conv2d_backward_loops(dx, dw, dout, x, w, stride, pad):
    """dx (N, C, H, W) and dw (C, 1, K, K): every tap of every output sends dout * w back to
    the pixel it read, and dout * that pixel to its weight."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    dx[...] = 0
    dw[...] = 0
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, c, i, j]
                    for ki in range(K):
                        for kj in range(K):
                            r, q = i * stride + ki - pad, j * stride + kj - pad
                            if 0 <= r < H and 0 <= q < W:  # a padded tap has no input
                                dx[n, c, r, q] += w[c, 0, ki, kj] * g
                                dw[c, 0, ki, kj] += x[n, c, r, q] * g


# ---------------------------------------------------------------------------------------------
# Rung 2, simple: the same loops compiled by Numba, each (n, c) plane (forward) or each channel
# (backward: thread c alone writes dw[c] and dx[:, c]) on one thread. Compiled, the loops run
# about a thousand times faster than rung 1 (637-1190x forward+backward on the depthwise rows
# of docs/PERFORMANCE.md, "The staircase, rung by rung"); the index tests in the innermost
# loop and the walk of one small plane at a time are what rung 3 removes.
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_simple(out, x, w, stride, pad):
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(Ho):
            for j in range(Wo):
                total = 0.0
                for ki in range(K):
                    r = i * stride + ki - pad
                    if 0 <= r < H:
                        for kj in range(K):
                            q = j * stride + kj - pad
                            if 0 <= q < W:
                                total += w[c, 0, ki, kj] * x[n, c, r, q]
                out[n, c, i, j] = total


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_simple(dx, dw, dout, x, w, stride, pad):
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    for c in prange(C):
        dwc = np.zeros((K, K))  # float64 whatever the dtype
        for n in range(N):
            dx[n, c] = 0
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, c, i, j]
                    for ki in range(K):
                        r = i * stride + ki - pad
                        if 0 <= r < H:
                            for kj in range(K):
                                q = j * stride + kj - pad
                                if 0 <= q < W:
                                    dx[n, c, r, q] += w[c, 0, ki, kj] * g
                                    dwc[ki, kj] += x[n, c, r, q] * g
        for ki in range(K):
            for kj in range(K):
                dw[c, 0, ki, kj] = dwc[ki, kj]


# ---------------------------------------------------------------------------------------------
# Rung 3, fast. Two loop orders over the same arithmetic, chosen by the output's size
# (tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS), and two notes that shape all of the code below:
# - Inner loops index with slices that start at the offset (`src = xp[off:]; src[q]`) instead
#   of `xp[q + off]`: Numba must guard a possibly negative index for wrap-around, and that
#   guard stops LLVM from vectorising the loop. A slice starts at a known non-negative index.
# - Sums that must be exact in order are accumulated elementwise into small vectors ("lanes")
#   and reduced at the end, so LLVM vectorises the accumulation without reordering additions.
#
# 3a. Phase planes (large maps). What changes against rung 2: each (n, c) plane is copied once
# into a zero-padded scratch plane, so the K*K taps become K*K shifted, branch-free,
# vectorised passes over a flat array (no index test per tap and pixel): a "wide" output whose
# rows have the scratch plane's pitch, of which the first Wo columns are real.
#
# With stride s, the padded plane is split into s*s phase planes, phase (a, b) holding the
# pixels at rows = a and columns = b (mod s), each of pitch Wh = ceil(Wp / s). Tap (ki, kj)
# then reads phase (ki % s, kj % s) shifted by (ki // s, kj // s), so a stride-2 layer is again
# K*K contiguous passes, over exactly its own Ho x Wo outputs. (At s = 1 there is one phase,
# the padded plane itself.) The backward runs the same passes transposed: dout is spread onto
# the wide grid (zeros in the junk columns), each tap adds into its phase of dx and into its
# lane of dw, and dx is gathered back from the phases. Measured against rung 2 (python
# benchmarks/bench_ops.py --rungs, 2026-11-29): forward+backward at N=128, C=96, 16x16, K=3,
# 32.5 ms on rung 2 and 8.0 ms here, 4.1x; with the taps and dw's sums in registers (below),
# 6.7x (64.0 against 9.9 ms on the AMD EPYC, 2026-11-30).
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


# 3a for 3x3 filters: the nine taps of an output pixel summed in a register. The K*K passes
# above write the wide output and read it back once per tap, then copy its real columns out:
# per tap and pixel, a load and a store of the accumulator besides the input's load. For K = 3
# (every depthwise conv of V1 and V2, most of V3's) each output row is summed at once from
# nine shifted reads of the phase planes, straight into the output. Two details make LLVM
# vectorise it: all nine reads go through one slice (nine slices are nine pointers, and LLVM
# gives up on proving that the output overlaps none of them), and the offsets are unsigned,
# so Numba adds no wrap-around test for a negative index. The sum runs in the same tap order
# from the same first product: the bits of the passes. benchmarks/bench_depthwise_taps.py
# times the forward both ways (taps_in_registers=False runs the passes), paired, on the
# phase-plane layers of V1 and V2 at batch 128 (AMD EPYC, 2026-11-30, 7 rounds;
# docs/PERFORMANCE.md, "Squeeze-excite's output scaled on reading, and 3x3 taps in
# registers"): 0.71-0.81 of the passes' time at stride 1, 0.93-0.94 at stride 2, where copying
# into the phases takes a larger share.
@njit(cache=True)
def _taps_3x3(o, xp, w, tap_start, Wh):
    """o[i, j] = sum over the taps k = 0..8 in order of w[k // 3, k % 3] *
    xp[tap_start[k] + i*Wh + j]: one (Ho, Wo) output plane from its phase planes."""
    w0, w1, w2 = w[0, 0], w[0, 1], w[0, 2]
    w3, w4, w5 = w[1, 0], w[1, 1], w[1, 2]
    w6, w7, w8 = w[2, 0], w[2, 1], w[2, 2]
    t0, t1, t2 = uint64(tap_start[0]), uint64(tap_start[1]), uint64(tap_start[2])
    t3, t4, t5 = uint64(tap_start[3]), uint64(tap_start[4]), uint64(tap_start[5])
    t6, t7, t8 = uint64(tap_start[6]), uint64(tap_start[7]), uint64(tap_start[8])
    Ho, Wo = o.shape
    for i in range(Ho):
        row = xp[i * Wh:]
        dst = o[i]
        for j in range(uint64(Wo)):
            v = w0 * row[t0 + j]
            v += w1 * row[t1 + j]
            v += w2 * row[t2 + j]
            v += w3 * row[t3 + j]
            v += w4 * row[t4 + j]
            v += w5 * row[t5 + j]
            v += w6 * row[t6 + j]
            v += w7 * row[t7 + j]
            v += w8 * row[t8 + j]
            dst[j] = v


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_phase_planes(out, x, w, stride, pad, ntasks, scale, shift, kind,
                                          taps_in_registers=True, stats=None):
    """out[n,c,i,j] = sum_{ki,kj} w[c,0,ki,kj] * xpad[n,c,i*s+ki,j*s+kj]; parallel over planes.
    With kind >= 0 the input is act(x * scale + shift) instead of x (see 3c below). 3x3
    filters sum their taps in registers (_taps_3x3) unless taps_in_registers is False. With
    `stats`, (rows, k0, channel_order) from batchnorm.statistics_rows, each plane's batch-norm
    row sums are made as it is written (kernels/batchnorm.py, 3g); image 0 goes first, on
    this thread, as its first pixels are the shifts k0."""
    N, C = x.shape[:2]
    total = N * C
    first = 0
    if stats is not None:
        _phase_planes(out, x, w, stride, pad, scale, shift, kind, taps_in_registers, 0, C,
                      stats)
        first = C
    for t in prange(ntasks):
        _phase_planes(out, x, w, stride, pad, scale, shift, kind, taps_in_registers,
                      first + t * (total - first) // ntasks,
                      first + (t + 1) * (total - first) // ntasks, stats)


@njit(cache=True)
def _phase_planes(out, x, w, stride, pad, scale, shift, kind, taps_in_registers, lo, hi,
                  stats):
    """Planes nc = n * C + c in [lo, hi) of depthwise_conv2d_forward_phase_planes, with
    scratch of their own."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    s = stride
    Hh, Wh = (H + 2 * pad + s - 1) // s, (W + 2 * pad + s - 1) // s
    L = (Ho - 1) * Wh + Wo  # length of the wide output, pitch Wh
    row_start, col_first, col_count, tap_start = _phase_layout(H, W, K, s, pad, Hh, Wh)
    xp = np.zeros(s * s * Hh * Wh, dtype=x.dtype)  # borders stay zero: only the interior
    acc = np.empty(L, dtype=x.dtype)               # is ever rewritten
    plane = np.empty((H, W), dtype=x.dtype)
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        if kind == STATISTICS_ONLY:
            _copy_into_phases(xp, x[n, c], s, row_start, col_first, col_count)
        else:
            affine_activate_plane(plane, x[n, c], scale[c], shift[c], kind)
            _copy_into_phases(xp, plane, s, row_start, col_first, col_count)
        if K == 3 and taps_in_registers:
            _taps_3x3(out[n, c], xp, w[c, 0], tap_start, Wh)
        else:
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
        if stats is not None:
            rows, k0, channel_order = stats
            if n == 0:
                k0[c] = out[0, c, 0, 0]
            add_shifted_row_sums(rows, n, c, out[n, c].reshape(Ho * Wo), k0, channel_order)


# The backward's dx at stride 1 with 3x3 filters, the same way: the passes above scatter each
# tap's share into a padded dx (a load and a store of it per tap and pixel), then copy its
# interior out. Gathered instead, dx[i, j] = sum over taps k in order of w_k * dout at the
# wide position (i + pad) * Wp + j + pad - tap_start[k], read from a copy of dout with zeros
# in front of it and around it, so a tap that falls outside dout reads a zero: nine loads and
# one store per pixel, straight into dx. Adding w_k * 0 to the running sum changes no bit
# (the passes never add those terms), and the taps that do land add in the passes' order
# from the same zero, so the bits are the passes'. (At stride 2 a pixel receives only the
# taps of its own phase, and gathering all nine would read other phases' values.) With dw
# still on its lanes, this gained little: bench_depthwise_taps.py (AMD EPYC, 2026-11-30, 7
# rounds) put the stride-1 backwards at 0.94-1.02 of the passes' time, median 0.95. With dw's
# sums in registers too (_tap_sums_3x3, below; 2026-11-30, session 19) the same benchmark
# printed 0.53-0.70 at stride 1 and 0.91-0.94 at stride 2, where copying the planes in and
# dx out of the phases took most of the time; with dx gathered at stride 2 as well
# (_gather_3x3_stride2, below), 0.52-0.70 at stride 1 and 0.78-0.79 at stride 2.
@njit(cache=True)
def _gather_3x3(plane, gz, w, tap_start, row_start, front):
    """plane[i, j] = sum over taps k = 0..8 in order of w[k // 3, k % 3] *
    gz[front + row_start[i, 0] + j - tap_start[k]], from zero (stride 1).

    The loop is _taps_3x3's written out again on purpose: one helper for both, with a flag for
    the sum's first term, ran the forward 1.2-2.2x slower (bench_depthwise_taps.py), as the
    test inside the loop kept LLVM from vectorising it."""
    w0, w1, w2 = w[0, 0], w[0, 1], w[0, 2]
    w3, w4, w5 = w[1, 0], w[1, 1], w[1, 2]
    w6, w7, w8 = w[2, 0], w[2, 1], w[2, 2]
    H, W = plane.shape
    zero = plane.dtype.type(0)
    for i in range(H):
        base = front + row_start[i, 0]
        t0, t1, t2 = uint64(base - tap_start[0]), uint64(base - tap_start[1]), \
            uint64(base - tap_start[2])
        t3, t4, t5 = uint64(base - tap_start[3]), uint64(base - tap_start[4]), \
            uint64(base - tap_start[5])
        t6, t7, t8 = uint64(base - tap_start[6]), uint64(base - tap_start[7]), \
            uint64(base - tap_start[8])
        dst = plane[i]
        for j in range(uint64(W)):
            v = zero + w0 * gz[t0 + j]
            v += w1 * gz[t1 + j]
            v += w2 * gz[t2 + j]
            v += w3 * gz[t3 + j]
            v += w4 * gz[t4 + j]
            v += w5 * gz[t5 + j]
            v += w6 * gz[t6 + j]
            v += w7 * gz[t7 + j]
            v += w8 * gz[t8 + j]
            dst[j] = v


# dw's nine sums for 3x3 filters, in registers. The passes keep one lane per tap and wide
# position, (9, L) per channel, and add every image into it: a load and a store of a lane per
# tap and pixel, from L2, as a block of 16 channels' lanes (165 KB at 16x16) outgrows L1.
# Here each plane's nine sums over its L wide positions are made in registers and added to
# nine float64 totals per channel, image by image. LLVM vectorises a sum only when it may
# reorder it, so this one function is compiled with fastmath's "reassoc" (and nothing else
# of fastmath): each plane's sum runs in vector lanes, in an order fixed by the compiled code,
# so the bits still do not depend on the thread count or the run, but they are not the
# passes' bits (both are checked against the loops). The junk columns of the wide grid
# hold zeros in gw and add nothing. bench_depthwise_taps.py times the 3x3 backward both ways.
# A 5x5 filter's 25 taps go through the same function in three groups of nine (the last
# padded with repeats, whose sums are dropped): 25 sums at once would not fit in the 16
# vector registers. That script does not time 5x5 filters; a scratch script, not committed,
# did, in process against the lanes (AMD EPYC, 2026-11-30, hard-swish, paired medians of 9
# rounds; docs/PERFORMANCE.md, "Sums in vector lanes", 5x5 filters): the 5x5 backward took
# 0.66-0.84 of the time at stride 1 (120 and 240 channels at 16x16, 96 at 32x32) and 0.89 at
# stride 2 (72 channels from 32x32).
@njit(cache=True, fastmath={"reassoc"})
def _tap_sums_3x3(gw, xp, tap_start):
    """The nine sums over q of gw[q] * xp[tap_start[k] + q], k = 0..8, q < gw.size."""
    t0, t1, t2 = uint64(tap_start[0]), uint64(tap_start[1]), uint64(tap_start[2])
    t3, t4, t5 = uint64(tap_start[3]), uint64(tap_start[4]), uint64(tap_start[5])
    t6, t7, t8 = uint64(tap_start[6]), uint64(tap_start[7]), uint64(tap_start[8])
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = xp.dtype.type(0)
    for q in range(uint64(gw.size)):
        g = gw[q]
        a0 += g * xp[t0 + q]
        a1 += g * xp[t1 + q]
        a2 += g * xp[t2 + q]
        a3 += g * xp[t3 + q]
        a4 += g * xp[t4 + q]
        a5 += g * xp[t5 + q]
        a6 += g * xp[t6 + q]
        a7 += g * xp[t7 + q]
        a8 += g * xp[t8 + q]
    return a0, a1, a2, a3, a4, a5, a6, a7, a8


# dx at stride 2 (pad 1), gathered too. A pixel receives only the taps of its own phase: in
# padded coordinates (r + 1, q + 1), tap (ki, kj) reaches it from output
# ((r + 1 - ki) / 2, (q + 1 - kj) / 2) when both are whole numbers. So an odd row r takes
# taps ki = 0 and 2 from dout's rows u = (r + 1) / 2 and u - 1, an even row ki = 1 from row
# r / 2; an even column q = 2m takes kj = 1 from column m, an odd one kj = 0 and 2 from
# columns m + 1 and m. Each pixel adds its 1, 2 or 4 terms in tap order from zero, as the
# passes added them, so the bits are the passes'; where u or m + 1 falls one past dout's last
# row or column, the wide grid's zeros stand in (its pitch Wh is Wo + 1, and one more row
# of zeros is allocated). The passes zeroed a phase-plane copy of dx, added nine taps into
# it with a load and a store each, and interleaved it back into dx; this writes dx once.
@njit(cache=True)
def _gather_3x3_stride2(plane, gz, w, Wh):
    """plane[r, q] = the sum, in tap order from zero, of w[ki, kj] * gz[i * Wh + j] over the
    taps with 2i + ki = r + 1 and 2j + kj = q + 1 (stride 2, pad 1)."""
    w00, w01, w02 = w[0, 0], w[0, 1], w[0, 2]
    w10, w11, w12 = w[1, 0], w[1, 1], w[1, 2]
    w20, w21, w22 = w[2, 0], w[2, 1], w[2, 2]
    H, W = plane.shape
    zero = plane.dtype.type(0)
    half = W // 2
    for r in range(H):
        dst = plane[r]
        if r % 2 == 1:
            top = gz[((r + 1) // 2) * Wh:]  # ki = 0
            bottom = gz[((r - 1) // 2) * Wh:]  # ki = 2
            for m in range(half):
                dst[2 * m] = zero + w01 * top[m] + w21 * bottom[m]
                dst[2 * m + 1] = (zero + w00 * top[m + 1] + w02 * top[m] + w20 * bottom[m + 1]
                                  + w22 * bottom[m])
            if W % 2 == 1:
                dst[W - 1] = zero + w01 * top[half] + w21 * bottom[half]
        else:
            row = gz[(r // 2) * Wh:]  # ki = 1
            for m in range(half):
                dst[2 * m] = zero + w11 * row[m]
                dst[2 * m + 1] = zero + w10 * row[m + 1] + w12 * row[m]
            if W % 2 == 1:
                dst[W - 1] = zero + w11 * row[half]


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, stride, pad, block, scale, shift,
                                           kind, taps_in_registers=True, bn_rows=None,
                                           bn_mean=None, bn_by_channel=False, dout_bn=None):
    """dx = w scattered by dout; dw[c] = sum_n,i,j dout * xpad window. With 3x3 and 5x5
    filters, dw's sums are made in registers (_tap_sums_3x3), and for 3x3 dx is gathered at
    stride 1 (_gather_3x3) and at stride 2 with pad 1 (_gather_3x3_stride2), unless
    taps_in_registers is False.

    With bn_rows, (2, N, C) zeros, and bn_mean (C,) in x's dtype, x read normalised (kind
    is a batch norm's activation code): each plane of dx, the gradient with respect to that
    batch norm's output, gets batch norm's first-pass sums as it is written
    (batchnorm.add_row_sums; bn_by_channel: batchnorm.by_channel of the plane's pixels).

    With dout_bn = (y, scale, shift, consts, spread, kind), dout is the gradient a batch norm
    with input y (the conv's output) was handed, and the conv's gradient is that batch norm's
    dx, made from them plane by plane as it is read (batchnorm.input_gradient_rows; consts
    from batchnorm2d_backward_deferred, spread from batchnorm.spread_constants).

    Parallel over blocks of `block` channels: a task walks the images in order and, in each,
    its block's planes, which lie side by side. One channel per task read one 1 KB plane per
    image, images 100 KB apart, which the prefetcher does not follow: blocks of 16 channels
    were 13-20 % faster at 32x32 and 3-5 % at 16x16 when timed. Each channel's dw lanes (or
    totals) still add the images in order, so the bits do not depend on the block size or
    thread count."""
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
        # dout on the wide grid, from gz[front]: the junk columns and the borders stay 0
        gather = taps_in_registers and K == 3 and s == 1
        gather_stride2 = taps_in_registers and K == 3 and s == 2 and pad == 1
        front = tap_start[K * K - 1] if gather else 0
        # stride 2 reads one more row and column of dout, which stay 0 (see _gather_3x3_stride2)
        gz = np.zeros(front + (Hh * Wh if gather else
                               (Ho + 1) * Wh if gather_stride2 else L), dtype=x.dtype)
        gw = gz[front:front + L]
        dxp = np.empty(s * s * Hh * Wh, dtype=x.dtype)
        sums_in_registers = taps_in_registers and (K == 3 or K == 5)
        # the taps' offsets in groups of nine, the last group padded with repeats of its last
        groups = (K * K + 8) // 9
        tap_groups = np.empty(groups * 9, dtype=np.int64)
        for k in range(groups * 9):
            tap_groups[k] = tap_start[min(k, K * K - 1)]
        # the passes: one lane per channel, tap and wide position; or nine totals per channel
        dw_partial = np.zeros((c_end - c_first, K * K, 0 if sums_in_registers else L),
                              dtype=x.dtype)
        dw_totals = np.zeros((c_end - c_first, K * K))
        plane = np.empty((H, W), dtype=x.dtype)
        g_row = np.empty(H * W if bn_rows is not None else 0, dtype=x.dtype)
        dout_plane = np.empty((Ho, Wo) if dout_bn is not None else (0, 0), dtype=x.dtype)
        for n in range(N):
            for c in range(c_first, c_end):
                if kind == STATISTICS_ONLY:
                    _copy_into_phases(xp, x[n, c], s, row_start, col_first, col_count)
                else:
                    affine_activate_plane(plane, x[n, c], scale[c], shift[c], kind)
                    _copy_into_phases(xp, plane, s, row_start, col_first, col_count)
                g = dout[n, c]
                if dout_bn is not None:  # batch norm's dx, made as it is read
                    input_gradient_rows(dout_plane.reshape(1, Ho * Wo), g.reshape(1, Ho * Wo),
                                        dout_bn[0][n, c].reshape(1, Ho * Wo), dout_bn[1],
                                        dout_bn[2], dout_bn[3], dout_bn[5], c)
                    g = dout_plane
                for i in range(Ho):
                    row = gw[i * Wh:]
                    src = g[i]
                    for j in range(Wo):
                        row[j] = src[j]
                channel_lanes = dw_partial[c - c_first]
                if sums_in_registers:
                    totals = dw_totals[c - c_first]
                    for group in range(groups):
                        sums = _tap_sums_3x3(gw, xp, tap_groups[9 * group:9 * group + 9])
                        for k in range(min(9, K * K - 9 * group)):
                            totals[9 * group + k] += sums[k]
                if gather:
                    _gather_3x3(dx[n, c], gz, w[c, 0], tap_start, row_start, front)
                elif gather_stride2:
                    _gather_3x3_stride2(dx[n, c], gz, w[c, 0], Wh)
                else:
                    dxp[:] = 0
                    for k in range(K * K):
                        wk = w[c, 0, k // K, k % K]
                        off = tap_start[k]
                        dst = dxp[off:]
                        if sums_in_registers:
                            for q in range(L):
                                dst[q] += wk * gw[q]
                        else:
                            src = xp[off:]
                            lanes = channel_lanes[k]
                            for q in range(L):
                                dst[q] += wk * gw[q]
                                lanes[q] += gw[q] * src[q]
                    _copy_from_phases(dx[n, c], dxp, s, row_start, col_first, col_count)
                if bn_rows is not None:  # dx[n, c] and x[n, c] are in cache: sum them now
                    add_row_sums(bn_rows, n, c, g_row, dx[n, c].reshape(H * W),
                                 x[n, c].reshape(H * W), scale[c], shift[c], bn_mean, kind,
                                 bn_by_channel)
        for c in range(c_first, c_end):
            for k in range(K * K):
                if not sums_in_registers:
                    total = 0.0
                    for q in range(L):
                        total += dw_partial[c - c_first, k, q]
                    dw_totals[c - c_first, k] = total
                dw[c, 0, k // K, k % K] = dw_totals[c - c_first, k]


# ---------------------------------------------------------------------------------------------
# 3b. Channels last (small maps). What changes against 3a: at 4x4 and 2x2 a plane is a handful
# of pixels, and 3a's passes spend their time on per-plane setup (copies, slices, loop
# starts), not on arithmetic: a 2x2 layer was 5x slower than a 16x16 one with 16 times the
# pixels (timed when this rung was written, 2026-11-29; not committed as a table). Here
# each image is turned channels last in per-thread scratch, (pixels, C),
# zero-padded, so every tap of every output pixel is one vectorised pass over the C channels:
# 2-6x faster than 3a for 4x4 and 2x2 outputs at batch 128 (docs/PERFORMANCE.md, "Ops
# against PyTorch", small maps). Against rung 2, with the later steps below, forward+backward
# runs 3.1x faster for a stride-2 16x16 -> 8x8 layer (medians 18.61 against 5.96 ms, C=96)
# and 7.5x for a 5x5 on 8x8 maps (63.70 against 7.92 ms, C=120); the ratios are medians of
# back-to-back pairs, so they differ from the medians' ratio (bench_ops.py --rungs, AMD EPYC,
# 2026-11-30: docs/PERFORMANCE.md, "The staircase, rung by rung"). The forward sums
# the taps in the same order as 3a, so its result is the same bit for bit. The backward sums
# each image's dw, then adds it into `sum_tasks` fixed float64 partial sums, added in task
# order.
# Later steps on the same loop order (2026-11-30; docs/PERFORMANCE.md, "Small maps and batch
# norm's backward"): each task zeroes its scratch image once for all of its images; a small
# image read as batch norm's output is normalised as it is transposed, not one tiny plane at
# a time before it; the forward sums a 3x3's nine taps
# in a register (_taps_3x3_channels_last); and the results go back to NCHW one channel over
# all of its pixels. Against the loops before those steps, in-process at batch 128: forward
# 0.53-0.85 of the time, backward 0.62-0.96, and 0.36-0.38 at 2x2 read normalised.
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _depthwise_weights_by_tap(w):
    """(C, 1, K, K) -> (K*K, C): one row of C weights per tap."""
    C, K = w.shape[0], w.shape[2]
    wt = np.empty((K * K, C), dtype=w.dtype)
    for c in range(C):
        for k in range(K * K):
            wt[k, c] = w[c, 0, k // K, k % K]
    return wt


@njit(cache=True)
def _into_channels_last(xt, image, pad, Wp, pixel_order_max):
    """xt[(i + pad) * Wp + j + pad, c] = image[c, i, j]; xt's border rows stay as they are.

    Small planes go pixel by pixel, so the writes are contiguous: 1.2-2x faster than plane by
    plane when timed at 8x8 and below. Larger planes go plane by plane, reading each one in
    order: pixel by pixel, a 16x16 image's C reads per pixel are 1 KB apart, which all fall in
    4 of L1's 64 sets and defeat the prefetcher (a 16x16 stride-2 forward took 3.8-4.2 ms
    that way, 3.0-3.2 ms plane by plane)."""
    C, H, W = image.shape
    if H * W > pixel_order_max:
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


@njit(cache=True)
def _image_into_channels_last(xt, image, pad, Wp, pixel_order_max, scale, shift, kind, planes):
    """_into_channels_last of the image, or with kind >= 0 of act(image * scale + shift).

    Small planes are normalised as they are transposed, pixel by pixel, each channel with its
    own constants: the operations of affine_activate_plane in its order, so the same bits.
    This was first a call per plane of 16 or 4 pixels, which at 4x4 and 2x2 cost more than
    the convolution, and then a second pass over each pixel's row after the transpose; in
    the transpose itself the fill took 0.32-0.61 of that two-pass time (288x8x8 to 1024x2x2,
    ReLU6 and hard-swish; in-process A/B, 2026-11-30). Larger planes are normalised plane by
    plane into `planes`, scratch of the image's shape, before the transpose."""
    C, H, W = image.shape
    if kind == STATISTICS_ONLY:
        _into_channels_last(xt, image, pad, Wp, pixel_order_max)
    elif H * W <= pixel_order_max:
        _into_channels_last_normalized(xt, image, pad, Wp, scale, shift, kind)
    else:
        for c in range(C):
            affine_activate_plane(planes[c], image[c], scale[c], shift[c], kind)
        _into_channels_last(xt, planes, pad, Wp, pixel_order_max)


@njit(cache=True)
def _into_channels_last_normalized(xt, image, pad, Wp, scale, shift, kind):
    """xt[(i + pad) * Wp + j + pad, c] = act(image[c, i, j] * scale[c] + shift[c]), pixel by
    pixel (batchnorm.ACTIVATION_CODES; the branch sits outside each channel loop)."""
    C, H, W = image.shape
    zero, three, six = image.dtype.type(0), image.dtype.type(3), image.dtype.type(6)
    for i in range(H):
        for j in range(W):
            dst = xt[(i + pad) * Wp + pad + j]
            if kind == 0:
                for c in range(C):
                    dst[c] = image[c, i, j] * scale[c] + shift[c]
            elif kind == 1:
                for c in range(C):
                    dst[c] = max(image[c, i, j] * scale[c] + shift[c], zero)
            elif kind == 2:
                for c in range(C):
                    dst[c] = min(max(image[c, i, j] * scale[c] + shift[c], zero), six)
            else:
                for c in range(C):
                    y = image[c, i, j] * scale[c] + shift[c]
                    dst[c] = y * min(max(y + three, zero), six) / six


@njit(cache=True)
def _from_channels_last(image, t):
    """image (C, H, W) = t (H*W, C) transposed, one channel at a time: the writes are
    contiguous and the strided reads stay in the L1-resident t."""
    C = image.shape[0]
    P = image.shape[1] * image.shape[2]
    planes = image.reshape(C, P)
    flat = t.reshape(t.size)
    for c in range(C):
        dst = planes[c]
        for p in range(P):
            dst[p] = flat[p * C + c]


@njit(cache=True)
def _taps_3x3_channels_last(ot, xt, wt, stride, Wp, Wo):
    """ot[i*Wo + j, c] = sum over the taps k = 0..8 in order of wt[k, c] *
    xt[(i*stride + k // 3)*Wp + j*stride + k % 3, c]: each output pixel's nine taps summed in
    a register for a vector of channels and stored once, where the passes load and store the
    pixel's accumulator row once per tap. As in _taps_3x3, every read goes through one flat
    array with unsigned offsets, so that LLVM vectorises the channel loop. The rows of xt and
    wt are longer than ot's C (CHANNELS_LAST_ROW_PAD)."""
    C = ot.shape[1]
    xp, wp = xt.shape[1], wt.shape[1]
    x = xt.reshape(xt.size)
    w = wt.reshape(wt.size)
    o = ot.reshape(ot.size)
    t1, t2 = uint64(xp), uint64(2 * xp)
    t3, t4, t5 = uint64(Wp * xp), uint64((Wp + 1) * xp), uint64((Wp + 2) * xp)
    t6, t7, t8 = uint64(2 * Wp * xp), uint64((2 * Wp + 1) * xp), uint64((2 * Wp + 2) * xp)
    w1, w2, w3, w4 = uint64(wp), uint64(2 * wp), uint64(3 * wp), uint64(4 * wp)
    w5, w6, w7, w8 = uint64(5 * wp), uint64(6 * wp), uint64(7 * wp), uint64(8 * wp)
    for q in range(ot.shape[0]):
        i, j = q // Wo, q % Wo
        base = uint64((i * stride * Wp + j * stride) * xp)
        dst = o[q * C:]
        for c in range(uint64(C)):
            b = base + c
            v = w[c] * x[b]
            v += w[w1 + c] * x[b + t1]
            v += w[w2 + c] * x[b + t2]
            v += w[w3 + c] * x[b + t3]
            v += w[w4 + c] * x[b + t4]
            v += w[w5 + c] * x[b + t5]
            v += w[w6 + c] * x[b + t6]
            v += w[w7 + c] * x[b + t7]
            v += w[w8 + c] * x[b + t8]
            dst[c] = v


# The forward's channels-last scratch image and its weights by tap have rows of
# C + CHANNELS_LAST_ROW_PAD values. With rows of exactly C, 1024 channels put every row a
# multiple of 4 KB from the next, so the nine weight rows that _taps_3x3_channels_last reads
# together share their address bits below 4 KB (and the nine image rows theirs): V1 1.0's
# 1024-channel 2x2 layer ran 1.19-1.45x the passes' time with the taps in registers, and 0.93
# with both padded (bench_depthwise_taps.py, 2026-11-30; padding the image rows alone gave
# 1.20). Most likely the CPU's "4K aliasing", loads held back by a store whose address
# matches theirs in those bits. Sixteen values are 64 bytes, a cache line.
CHANNELS_LAST_ROW_PAD = 16


@njit(cache=True, parallel=True)
def depthwise_conv2d_forward_channels_last(out, x, w, stride, pad, ntasks, pixel_order_max,
                                           scale, shift, kind, taps_in_registers=True,
                                           stats=None):
    """The same result as depthwise_conv2d_forward_phase_planes, for small maps: ntasks tasks,
    each with its own scratch, take a fixed share of the images (the split changes no bit).
    `stats` as there, image by image."""
    N = x.shape[0]
    ntasks = max(1, min(N, ntasks))
    first = 0
    if stats is not None:
        _channels_last_images(out, x, w, stride, pad, pixel_order_max, scale, shift, kind,
                              taps_in_registers, 0, 1, stats)
        first = 1
    for t in prange(ntasks):
        _channels_last_images(out, x, w, stride, pad, pixel_order_max, scale, shift, kind,
                              taps_in_registers, first + t * (N - first) // ntasks,
                              first + (t + 1) * (N - first) // ntasks, stats)


@njit(cache=True)
def _channels_last_images(out, x, w, stride, pad, pixel_order_max, scale, shift, kind,
                          taps_in_registers, lo, hi, stats):
    """Images [lo, hi) of depthwise_conv2d_forward_channels_last, with scratch of their own."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = out.shape[2], out.shape[3]
    Wp = W + 2 * pad
    wt = _depthwise_weights_by_tap(w)
    wt_padded = np.zeros((K * K, C + CHANNELS_LAST_ROW_PAD), dtype=w.dtype)
    wt_padded[:, :C] = wt
    # Zeroed once: the images overwrite the interior only, so the border stays zero.
    xt = np.zeros(((H + 2 * pad) * Wp, C + CHANNELS_LAST_ROW_PAD), dtype=x.dtype)
    ot = np.empty((Ho * Wo, C), dtype=x.dtype)
    planes = np.empty((C, H, W) if kind != STATISTICS_ONLY else (0, 0, 0), dtype=x.dtype)
    for n in range(lo, hi):
        _image_into_channels_last(xt, x[n], pad, Wp, pixel_order_max, scale, shift, kind,
                                  planes)
        if K == 3 and taps_in_registers:
            _taps_3x3_channels_last(ot, xt, wt_padded, stride, Wp, Wo)
        else:
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
        _from_channels_last(out[n], ot)
        if stats is not None:
            rows, k0, channel_order = stats
            image = out[n].reshape(C, Ho * Wo)
            if n == 0:
                for c in range(C):
                    k0[c] = image[c, 0]
            add_image_shifted_row_sums(rows, n, image, k0, channel_order)


@njit(cache=True)
def _taps_onto(p, K, stride, n_out):
    """The outputs whose window covers padded position p: first and last (clipped to the
    n_out outputs); output o reads p through tap p - o * stride."""
    return max(0, (p - K + stride) // stride), min(n_out - 1, p // stride)


# The backward's sums, fewer loads and stores per multiply (2026-12-02, session 34).
# benchmarks/bench_depthwise_taps.py times both ways (--rounds 7 --repeats 3, Zen 4 EPYC,
# batch 128, medians of the paired ratios): the 3x3 backwards at 8x8 took 0.87-0.90 of the
# pixel-by-pixel sums' time, the stride-2 16x16 -> 8x8 one 0.97, and at 4x4 and 2x2 (where
# dx stays in memory, tuning.DEPTHWISE_GATHER_MIN_PIXELS) 0.94-1.04, within that day's noise:
# - dw: each output pixel adds its K*K products into the image's K*K lane rows, a load and a
#   store of a lane per product. _tap_sums_channels_last takes four pixels per pass over a
#   lane row and adds their products to each other before the lane: one load and one store
#   of it per four products. The order of dw's additions changes (the four first), so
#   dw agrees with the pixel-by-pixel sums to the dtype's rounding, not to the bit; the order
#   is still fixed, so the bits do not depend on the thread count or the run.
# - dx, 3x3 filters at stride 1 (pad 1): each input pixel summed its up to nine terms into a
#   row of C in memory, zeroed first (a load and a store of it per term).
#   _gather_3x3_channels_last reads dout from a copy with a border of one zero pixel, so every
#   pixel has all nine terms (the border's add nothing), sums them in a register in the same
#   order from the same zero, and stores once: the same bits, as _gather_3x3 on the phase
#   planes.


@njit(cache=True)
def _tap_sums_channels_last(lanes, gt, xt, K, stride, Wp, Ho, Wo, gpad, Wg):
    """lanes[k, c] += the sum over output pixels (i, j) of dout[c] * xt[(i*stride + k // K)*Wp
    + j*stride + k % K, c], dout = gt[(i + gpad)*Wg + j + gpad]: four pixels per pass
    over a lane's row (written out, so that their offsets stay in registers), their
    products added to each other first. Every read goes
    through one flat array per operand with unsigned offsets (see _taps_3x3), so LLVM
    vectorises the channel loop; the lane row is the one array it stores to."""
    C = lanes.shape[1]
    gp, xp = gt.shape[1], xt.shape[1]
    g = gt.reshape(gt.size)
    x = xt.reshape(xt.size)
    P = Ho * Wo
    full = P - P % 4
    for p in range(0, full, 4):
        g0 = uint64((((p // Wo) + gpad) * Wg + p % Wo + gpad) * gp)
        g1 = uint64(((((p + 1) // Wo) + gpad) * Wg + (p + 1) % Wo + gpad) * gp)
        g2 = uint64(((((p + 2) // Wo) + gpad) * Wg + (p + 2) % Wo + gpad) * gp)
        g3 = uint64(((((p + 3) // Wo) + gpad) * Wg + (p + 3) % Wo + gpad) * gp)
        x0 = ((p // Wo) * stride * Wp + (p % Wo) * stride) * xp
        x1 = (((p + 1) // Wo) * stride * Wp + ((p + 1) % Wo) * stride) * xp
        x2 = (((p + 2) // Wo) * stride * Wp + ((p + 2) % Wo) * stride) * xp
        x3 = (((p + 3) // Wo) * stride * Wp + ((p + 3) % Wo) * stride) * xp
        for k in range(K * K):
            tap = ((k // K) * Wp + k % K) * xp
            a0, a1 = uint64(x0 + tap), uint64(x1 + tap)
            a2, a3 = uint64(x2 + tap), uint64(x3 + tap)
            lane = lanes[k]
            for c in range(uint64(C)):
                lane[c] += ((g[g0 + c] * x[a0 + c] + g[g1 + c] * x[a1 + c])
                            + (g[g2 + c] * x[a2 + c] + g[g3 + c] * x[a3 + c]))
    for p in range(full, P):
        g0 = uint64((((p // Wo) + gpad) * Wg + p % Wo + gpad) * gp)
        x0 = ((p // Wo) * stride * Wp + (p % Wo) * stride) * xp
        for k in range(K * K):
            a0 = uint64(x0 + ((k // K) * Wp + k % K) * xp)
            lane = lanes[k]
            for c in range(uint64(C)):
                lane[c] += g[g0 + c] * x[a0 + c]


@njit(cache=True)
def _gather_3x3_channels_last(dxt, gz, wt, W, Wg):
    """dxt[r*W + q, c] = the sum over the taps k = 8, 7, ..., 0 of wt[k, c] * gz[(r + 2 -
    k // 3)*Wg + q + 2 - k % 3, c], from zero: dx of a 3x3 filter at stride 1 and pad 1,
    with gz dout channels last inside a border of one zero pixel (pitch Wg = W + 2). The
    taps come in the order the output pixels (i, j) = (r + 1 - k // 3, q + 1 - k % 3) do,
    rows then columns ascending, as the loops' gather added them. The offsets and the loop
    are _taps_3x3_channels_last's, written out again for the reason _gather_3x3 gives."""
    C = dxt.shape[1]
    gp, wp = gz.shape[1], wt.shape[1]
    g = gz.reshape(gz.size)
    w = wt.reshape(wt.size)
    d = dxt.reshape(dxt.size)
    zero = dxt.dtype.type(0)
    t1, t2 = uint64(gp), uint64(2 * gp)
    t3, t4, t5 = uint64(Wg * gp), uint64((Wg + 1) * gp), uint64((Wg + 2) * gp)
    t6, t7, t8 = uint64(2 * Wg * gp), uint64((2 * Wg + 1) * gp), uint64((2 * Wg + 2) * gp)
    w1, w2, w3, w4 = uint64(wp), uint64(2 * wp), uint64(3 * wp), uint64(4 * wp)
    w5, w6, w7, w8 = uint64(5 * wp), uint64(6 * wp), uint64(7 * wp), uint64(8 * wp)
    for p in range(dxt.shape[0]):
        r, q = p // W, p % W
        base = uint64((r * Wg + q) * gp)
        dst = d[p * C:]
        for c in range(uint64(C)):
            b = base + c
            v = zero + w[w8 + c] * g[b]
            v += w[w7 + c] * g[b + t1]
            v += w[w6 + c] * g[b + t2]
            v += w[w5 + c] * g[b + t3]
            v += w[w4 + c] * g[b + t4]
            v += w[w3 + c] * g[b + t5]
            v += w[w2 + c] * g[b + t6]
            v += w[w1 + c] * g[b + t7]
            v += w[c] * g[b + t8]
            dst[c] = v


@njit(cache=True)
def _add_image_row_sums(bn_rows, n, g_row, dx, x, scale, shift, bn_mean, kind, bn_by_channel):
    """batchnorm.add_row_sums for every channel of image n."""
    P = x.shape[2] * x.shape[3]
    for c in range(x.shape[1]):
        add_row_sums(bn_rows, n, c, g_row, dx[n, c].reshape(P), x[n, c].reshape(P), scale[c],
                     shift[c], bn_mean, kind, bn_by_channel)


@njit(cache=True, parallel=True)
def depthwise_conv2d_backward_channels_last(dx, dw, dout, x, w, stride, pad,
                                            pixel_order_max, sum_tasks, scale, shift, kind,
                                            taps_in_registers=True, gather_min_pixels=0,
                                            bn_rows=None, bn_mean=None, bn_by_channel=False,
                                            dout_bn=None):
    """The same result as depthwise_conv2d_backward_phase_planes (up to the order of dw's and
    dx's sums), for small maps. Parallel over sum_tasks fixed shares of the batch.

    dx is gathered: each input pixel sums w * dout over the outputs that read it, in one
    L1-resident row of C, where scattering every output's taps into a padded dx took a
    read-modify-write of an L2-resident row per tap and a zeroing pass (gathering was ~10 %
    faster at 16x16, 8x8 and 4x4 when timed; each pixel's terms are added in output order,
    as the scatter added them, so the bits are the same). With taps_in_registers, dw's sums
    go four pixels at a time (_tap_sums_channels_last) and a 3x3 filter's dx at
    stride 1 and pad 1 is summed in a register (_gather_3x3_channels_last) on maps of at least
    gather_min_pixels pixels: the same dx bits, dw to the dtype's rounding. bn_rows, bn_mean
    and bn_by_channel as in depthwise_conv2d_backward_phase_planes: each image's dx gets
    batch norm's sums as it is turned back to NCHW; dout_bn as there, image by image before
    dout is turned channels last."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = dout.shape[2], dout.shape[3]
    Wp = W + 2 * pad
    wt = _depthwise_weights_by_tap(w)
    gather = (taps_in_registers and K == 3 and stride == 1 and pad == 1
              and H * W >= gather_min_pixels)
    # dout channels last, inside a border of one zero pixel for the gather
    gpad = 1 if gather else 0
    Wg = Wo + 2 * gpad
    # Rows padded as in the forward (CHANNELS_LAST_ROW_PAD): the sums read several rows of
    # each operand together, 4 KB apart at 1024 channels without it.
    wt_padded = np.zeros((K * K, C + CHANNELS_LAST_ROW_PAD), dtype=w.dtype)
    wt_padded[:, :C] = wt
    partial = np.zeros((sum_tasks, K * K, C))
    for task in prange(sum_tasks):
        xt = np.zeros(((H + 2 * pad) * Wp, C + CHANNELS_LAST_ROW_PAD), dtype=x.dtype)
        dxt = np.empty((H * W, C), dtype=x.dtype)
        # Zeroed once: the images overwrite the interior only, so the border stays zero.
        gt = np.zeros(((Ho + 2 * gpad) * Wg, C + CHANNELS_LAST_ROW_PAD), dtype=x.dtype)
        # One image's dw in x's dtype (at most Ho*Wo terms per lane, and it vectorises twice
        # as wide), then added into the task's float64 partial sum.
        lanes = np.empty((K * K, C), dtype=x.dtype)
        planes = np.empty((C, H, W) if kind != STATISTICS_ONLY else (0, 0, 0), dtype=x.dtype)
        g_row = np.empty(H * W if bn_rows is not None else 0, dtype=x.dtype)
        dout_image = np.empty((C, Ho, Wo) if dout_bn is not None else (0, 0, 0), dtype=x.dtype)
        task_sum = partial[task]
        for n in range(task * N // sum_tasks, (task + 1) * N // sum_tasks):
            g = dout[n]
            if dout_bn is not None:  # batch norm's dx, made as it is read
                input_gradient_image(dout_image.reshape(C, Ho * Wo), g.reshape(C, Ho * Wo),
                                     dout_bn[0][n].reshape(C, Ho * Wo), dout_bn[1], dout_bn[2],
                                     dout_bn[3], dout_bn[4], dout_bn[5])
                g = dout_image
            _into_channels_last(gt, g, gpad, Wg, pixel_order_max)
            _image_into_channels_last(xt, x[n], pad, Wp, pixel_order_max, scale, shift, kind,
                                      planes)
            lanes[:] = 0
            if taps_in_registers:
                _tap_sums_channels_last(lanes, gt, xt, K, stride, Wp, Ho, Wo, gpad, Wg)
            else:
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
            if gather:
                _gather_3x3_channels_last(dxt, gt, wt_padded, W, Wg)
                _from_channels_last(dx[n], dxt)
                if bn_rows is not None:  # dx[n] and x[n] are in cache: sum them now
                    _add_image_row_sums(bn_rows, n, g_row, dx, x, scale, shift, bn_mean, kind,
                                        bn_by_channel)
                continue
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
            _from_channels_last(dx[n], dxt)
            if bn_rows is not None:
                _add_image_row_sums(bn_rows, n, g_row, dx, x, scale, shift, bn_mean, kind,
                                    bn_by_channel)
    for c in range(C):
        for k in range(K * K):
            total = 0.0
            for task in range(sum_tasks):
                total += partial[task, k, c]
            dw[c, 0, k // K, k % K] = total


# ---------------------------------------------------------------------------------------------
# 3c. The input normalised as it is read. In a MobileNet most depthwise convs read the output
# of a batch norm and its activation, y = act(x * scale + shift) per channel, which nothing
# else reads. Both loop orders above copy every input plane into scratch before any
# arithmetic (3a into its phase planes, 3b channels last), so they can apply the normalisation
# in that copy instead: batch norm then computes its statistics only (batchnorm.STATISTICS_ONLY)
# and y is never written to memory, read back, or kept for the backward, which recomputes it
# from x the same way. The same bits as normalising first: affine_activate_plane does the
# batch norm kernel's operations in its order. The `normalized` ops below are this; the plain
# ones pass kind STATISTICS_ONLY, which skips the normalisation (and nothing else changes).
# Rungs 1 and 2 make y whole first (batchnorm.affine_activate) and run their plain loops.
# ---------------------------------------------------------------------------------------------


def depthwise_conv2d_normalized_forward_loops(out, x, w, stride, pad, scale, shift, kind):
    """out = the depthwise conv of act(x * scale + shift), act by batch norm's kind codes."""
    depthwise_conv2d_forward_loops(out, normalized_input(x, scale, shift, kind), w, stride, pad)


def depthwise_conv2d_normalized_backward_loops(dy, dw, dout, x, w, stride, pad, scale, shift,
                                               kind):
    """dy: the gradient with respect to the conv's input act(x * scale + shift), not x."""
    depthwise_conv2d_backward_loops(dy, dw, dout, normalized_input(x, scale, shift, kind), w,
                                    stride, pad)


def depthwise_conv2d_normalized_forward_simple(out, x, w, stride, pad, scale, shift, kind):
    depthwise_conv2d_forward_simple(out, normalized_input(x, scale, shift, kind), w, stride,
                                    pad)


def depthwise_conv2d_normalized_backward_simple(dy, dw, dout, x, w, stride, pad, scale, shift,
                                                kind):
    depthwise_conv2d_backward_simple(dy, dw, dout, normalized_input(x, scale, shift, kind), w,
                                     stride, pad)


def depthwise_conv2d_normalized_forward_fast(out, x, w, stride, pad, scale, shift, kind):
    with threads_for(x.size):
        _depthwise_conv2d_forward_fast(out, x, w, stride, pad, scale, shift, kind)


def depthwise_conv2d_normalized_backward_fast(dy, dw, dout, x, w, stride, pad, scale, shift,
                                              kind):
    with threads_for(x.size):
        _depthwise_conv2d_backward_fast(dy, dw, dout, x, w, stride, pad, scale, shift, kind)


# ---------------------------------------------------------------------------------------------
# The fast rung: the loop order for the map's size, with the tuned numbers of minimobile.tuning.
# ---------------------------------------------------------------------------------------------


def depthwise_conv2d_forward_fast(out, x, w, stride, pad):
    with threads_for(x.size):
        _depthwise_conv2d_forward_fast(out, x, w, stride, pad, *no_prologue(x))


def depthwise_conv2d_backward_fast(dx, dw, dout, x, w, stride, pad):
    with threads_for(x.size):
        _depthwise_conv2d_backward_fast(dx, dw, dout, x, w, stride, pad, *no_prologue(x))


def _depthwise_conv2d_forward_fast(out, x, w, stride, pad, scale, shift, kind, stats=None):
    N, C = x.shape[:2]
    if out.shape[2] * out.shape[3] <= tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS:
        ntasks = min(N, tuning.DEPTHWISE_TASKS_PER_THREAD * get_num_threads())
        depthwise_conv2d_forward_channels_last(out, x, w, stride, pad, ntasks,
                                               tuning.PIXEL_ORDER_MAX_PIXELS, scale, shift, kind,
                                               True, stats)
    else:
        ntasks = min(N * C, tuning.DEPTHWISE_TASKS_PER_THREAD * get_num_threads())
        depthwise_conv2d_forward_phase_planes(out, x, w, stride, pad, ntasks, scale, shift, kind,
                                              True, stats)


def depthwise_conv2d_forward_with_statistics(out, x, w, stride, pad, scale, shift, kind):
    """The fast forward (kind STATISTICS_ONLY: x as it is; else normalised as it is read, 3c)
    that also makes the statistics of the batch norm reading `out` (kernels/batchnorm.py,
    3g): returns their (2, N, C) row sums for batchnorm2d_forward_from_row_sums, or None
    where that batch norm sums in lanes (then the conv runs as it always does)."""
    stats = statistics_rows(out)
    with threads_for(x.size):
        _depthwise_conv2d_forward_fast(out, x, w, stride, pad, scale, shift, kind, stats)
    return None if stats is None else stats[0]


def _uses_phase_planes_backward(dout):
    return dout.shape[2] * dout.shape[3] > tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS


def _depthwise_conv2d_backward_fast(dx, dw, dout, x, w, stride, pad, scale, shift, kind,
                                    bn_rows=None, bn_mean=None, bn_by_channel=False,
                                    dout_bn=None):
    C = x.shape[1]
    if not _uses_phase_planes_backward(dout):
        depthwise_conv2d_backward_channels_last(dx, dw, dout, x, w, stride, pad,
                                                tuning.PIXEL_ORDER_MAX_PIXELS, tuning.SUM_TASKS,
                                                scale, shift, kind, True,
                                                tuning.DEPTHWISE_GATHER_MIN_PIXELS, bn_rows,
                                                bn_mean, bn_by_channel, dout_bn)
    else:
        block = max(1, min(tuning.DEPTHWISE_MAX_CHANNEL_BLOCK,
                           C // (tuning.DEPTHWISE_BLOCKS_PER_THREAD * get_num_threads())))
        depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, stride, pad, block, scale,
                                               shift, kind, True, bn_rows, bn_mean,
                                               bn_by_channel, dout_bn)


# ---------------------------------------------------------------------------------------------
# 3d. Batch norm's backward sums, made here. When x is a batch norm's output read normalised
# (3c), dx is that batch norm's incoming gradient, and its backward's first pass reads dx and
# x back from memory to sum g = dx * act'(bn(x)) and g * (x - mean) over each row
# (kernels/batchnorm.py, 3e). Both loop orders hold those rows in cache as they write dx:
# the phase planes one plane of dx and x, channels last one image of each. So the rows'
# sums are made there, with batch norm's own helpers, and batch norm adds them in its order:
# the same bits, and one pass over two maps fewer. Not on maps whose rows batch norm sums in
# per-position lanes (under tuning.BN_ROW_SUMS_MIN_PIXELS: 4x4 and 2x2).
# 3e. Its dout made as it is read: when the conv is followed by a batch norm (the unit conv ->
# batch norm -> activation), its dout is that batch norm's dx, which the batch norm can leave
# unmade (kernels/batchnorm.py, 3f); both loop orders copy dout into scratch, a plane or an
# image at a time, and make it there instead: never written to memory and read back.
# ---------------------------------------------------------------------------------------------


def depthwise_conv2d_backward_fused(dx, dw, dout, x, w, stride, pad, scale, shift, kind,
                                    mean=None, dout_bn=None):
    """depthwise_conv2d_normalized_backward_fast (kind STATISTICS_ONLY: the plain backward)
    with either fusion or both. With `mean` (C,), the batch mean of the batch norm whose
    output act(x * scale + shift) the conv read, it returns that batch norm's first-pass row
    sums, (2, N, C) float64 (batchnorm.batchnorm2d_backward_from_row_sums takes them), or
    None on maps where it does not make them (see above). With dout_bn = (y, scale, shift,
    consts, spread, kind), dout is the gradient handed to the batch norm after the conv,
    whose dx the conv makes as it reads (3f in kernels/batchnorm.py)."""
    N, C, H, W = x.shape
    rows = None
    if mean is not None and makes_row_sums(H * W):
        rows = np.zeros((2, N, C))
    with threads_for(x.size):
        _depthwise_conv2d_backward_fast(dx, dw, dout, x, w, stride, pad, scale, shift, kind,
                                        rows, None if rows is None else mean.astype(x.dtype),
                                        by_channel(H * W), dout_bn)
    return rows
