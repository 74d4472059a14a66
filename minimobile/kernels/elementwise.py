"""One pass over memory each: activations, pooling, the squeeze-excite gate, bias and channel
sums, dropout and the softmax cross-entropy.

    relu         out = max(x, 0)                     dx = dout where x > 0
    relu6        out = min(max(x, 0), 6)             dx = dout on the open (0, 6)
    hardswish    out = x * relu6(x + 3) / 6          dx = dout * (x/3 + 1/2) on [-3, 3],
                                                          dout above 3, 0 below -3
    hardsigmoid  out = relu6(x + 3) / 6              dx = dout / 6 on the open (-3, 3)
    global_avg_pool  out[n, c] = mean_p x[n, c, p]   dx[n, c, p] = dout[n, c] / P
    scale_channels   out[n, c, p] = x[n, c, p] * s[n, c]   (squeeze-excite's gate)
                     dx = dout * s,  ds[n, c] = sum_p dout * x
    softmax_cross_entropy  mean over rows of -sum_k target_k log softmax(z)_k, with
                     target = (1 - e) onehot + e / classes; dz = (softmax(z) - target) / N

The gradients at the kinks are PyTorch's (derived and plotted in
notebooks/03_mobilenet_v2.ipynb and 04_mobilenet_v3.ipynb). Activations take flat arrays;
the others (N, C, P) with P = H*W.

The staircase is short here: `_loops`, then `_simple`, parallel over elements or (image,
channel) rows. Each op is a single pass that is bound by memory bandwidth once compiled, so
there is no faster loop order to find: `_fast` is `_simple`, kept off the thread pool for small
arrays, but for the two ops that sum rows (pooling, the gate's ds), whose fast rung sums in
vector lanes (`_lanes`; rung 2 adds one value after another). What makes activations cheap in
the engine is not running them at all: batch norm applies them in its own pass
(kernels/batchnorm.py).
"""

import numpy as np
from numba import get_num_threads, njit, prange

from .. import tuning
from . import threads_for
from .batchnorm import affine_activate_plane, normalized_input

# ---------------------------------------------------------------------------------------------
# Rung 1, loops.
# ---------------------------------------------------------------------------------------------


def relu_forward_loops(out, x):
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else 0.0


def relu_backward_loops(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] if x[i] > 0 else 0.0  # 0 at the kink, as PyTorch


def relu6_forward_loops(out, x):
    for i in range(x.size):
        out[i] = min(max(x[i], 0.0), 6.0)


def relu6_backward_loops(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] if 0 < x[i] < 6 else 0.0  # 0 at both kinks


def hardswish_forward_loops(out, x):
    for i in range(x.size):
        out[i] = x[i] * min(max(x[i] + 3, 0.0), 6.0) / 6


def hardswish_backward_loops(dx, dout, x):
    for i in range(x.size):
        v = x[i]
        slope = 0.0 if v < -3 else (v / 3 + 0.5 if v <= 3 else 1.0)  # closed [-3, 3]
        dx[i] = dout[i] * slope


def hardsigmoid_forward_loops(out, x):
    for i in range(x.size):
        out[i] = min(max(x[i] + 3, 0.0), 6.0) / 6


def hardsigmoid_backward_loops(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] / 6 if -3 < x[i] < 3 else 0.0  # open (-3, 3)


def global_avg_pool_forward_loops(out, x):
    N, C, P = x.shape
    for n in range(N):
        for c in range(C):
            out[n, c] = sum(x[n, c, p] for p in range(P)) / P


def global_avg_pool_backward_loops(dx, dout):
    N, C, P = dx.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                dx[n, c, p] = dout[n, c] / P  # every pixel had the same share of the mean


def scale_channels_forward_loops(out, x, s):
    N, C, P = x.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                out[n, c, p] = x[n, c, p] * s[n, c]


def scale_channels_backward_loops(dx, ds, dout, x, s):
    N, C, P = x.shape
    for n in range(N):
        for c in range(C):
            ds[n, c] = sum(dout[n, c, p] * x[n, c, p] for p in range(P))
            for p in range(P):
                dx[n, c, p] = dout[n, c, p] * s[n, c]


def add_channel_bias_loops(out, b):
    """out[n, c, :] += b[c], in place."""
    N, C, P = out.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                out[n, c, p] += b[c]


def channel_sum_loops(sums, x):
    """sums[c] = the sum of x[:, c, :] (the bias gradient)."""
    N, C, P = x.shape
    for c in range(C):
        sums[c] = sum(x[n, c, p] for n in range(N) for p in range(P))


def dropout_forward_loops(out, mask, x, u, p):
    """Inverted dropout on flat arrays: mask = (u >= p) / (1 - p) from uniforms u in [0, 1),
    out = x * mask, so the expected value is unchanged and evaluation needs no rescaling."""
    for i in range(x.size):
        mask[i] = 1.0 / (1.0 - p) if u[i] >= p else 0.0
        out[i] = x[i] * mask[i]


def dropout_backward_loops(dx, dout, mask):
    for i in range(dout.size):
        dx[i] = dout[i] * mask[i]


def softmax_cross_entropy_loops(dlogits, logits, labels, label_smoothing):
    """Returns the mean loss; fills dlogits. Each row shifted by its maximum before exp (the
    same softmax, without overflow)."""
    N, K = logits.shape
    loss = 0.0
    for n in range(N):
        top = max(logits[n])
        exps = [np.exp(logits[n, k] - top) for k in range(K)]
        total = sum(exps)
        for k in range(K):
            target = label_smoothing / K + (1 - label_smoothing) * (k == labels[n])
            loss -= target * (logits[n, k] - top - np.log(total)) / N
            dlogits[n, k] = (exps[k] / total - target) / N
    return loss


# ---------------------------------------------------------------------------------------------
# Rung 2, simple: the same loops in Numba, parallel over elements or over (image, channel)
# rows; each thread writes its own elements only. Rung 3 is this rung (see the top).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def relu_forward_simple(out, x):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        out[i] = max(x[i], zero)


@njit(cache=True, parallel=True)
def relu_backward_simple(dx, dout, x):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        dx[i] = dout[i] if x[i] > zero else zero


@njit(cache=True, parallel=True)
def relu6_forward_simple(out, x):
    zero, six = x.dtype.type(0), x.dtype.type(6)
    for i in prange(x.size):
        out[i] = min(max(x[i], zero), six)


@njit(cache=True, parallel=True)
def relu6_backward_simple(dx, dout, x):
    zero, six = x.dtype.type(0), x.dtype.type(6)
    for i in prange(x.size):
        v = x[i]
        dx[i] = dout[i] if (v > zero and v < six) else zero


@njit(cache=True, parallel=True)
def hardswish_forward_simple(out, x):
    three, six, zero = x.dtype.type(3), x.dtype.type(6), x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        out[i] = v * min(max(v + three, zero), six) / six


@njit(cache=True, parallel=True)
def hardswish_backward_simple(dx, dout, x):
    """Written as selects rather than an if-chain so that LLVM vectorises it."""
    three, half, zero, one = x.dtype.type(3), x.dtype.type(0.5), x.dtype.type(0), x.dtype.type(1)
    for i in prange(x.size):
        v = x[i]
        slope = v / three + half
        slope = zero if v < -three else slope
        slope = one if v > three else slope
        dx[i] = dout[i] * slope


@njit(cache=True, parallel=True)
def hardsigmoid_forward_simple(out, x):
    three, six, zero = x.dtype.type(3), x.dtype.type(6), x.dtype.type(0)
    for i in prange(x.size):
        out[i] = min(max(x[i] + three, zero), six) / six


@njit(cache=True, parallel=True)
def hardsigmoid_backward_simple(dx, dout, x):
    three, six, zero = x.dtype.type(3), x.dtype.type(6), x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        dx[i] = dout[i] / six if (v > -three and v < three) else zero


@njit(cache=True, parallel=True)
def global_avg_pool_forward_simple(out, x):
    N, C, P = x.shape
    for nc in prange(N * C):
        row = x[nc // C, nc % C]
        total = 0.0
        for p in range(P):
            total += row[p]
        out[nc // C, nc % C] = total / P


@njit(cache=True, parallel=True)
def global_avg_pool_backward_simple(dx, dout):
    N, C, P = dx.shape
    for nc in prange(N * C):
        share = dout[nc // C, nc % C] / P
        row = dx[nc // C, nc % C]
        for p in range(P):
            row[p] = share


@njit(cache=True, parallel=True)
def scale_channels_forward_simple(out, x, s):
    N, C, P = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        k = s[n, c]
        src = x[n, c]
        dst = out[n, c]
        for p in range(P):
            dst[p] = src[p] * k


@njit(cache=True, parallel=True)
def scale_channels_backward_simple(dx, ds, dout, x, s):
    N, C, P = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        k = s[n, c]
        g = dout[n, c]
        src = x[n, c]
        dst = dx[n, c]
        total = 0.0
        for p in range(P):
            dst[p] = g[p] * k
            total += g[p] * src[p]
        ds[n, c] = total


@njit(cache=True, parallel=True)
def add_channel_bias_simple(out, b):
    N, C, P = out.shape
    for nc in prange(N * C):
        row = out[nc // C, nc % C]
        bc = b[nc % C]
        for p in range(P):
            row[p] += bc


@njit(cache=True)
def _channel_total(x, c):
    """Sum of x[:, c, :] in float64: one lane per position p, reduced at the end, so the loop
    vectorises and the order is the same on every run."""
    N, _, P = x.shape
    lanes = np.zeros(P)
    for n in range(N):
        row = x[n, c]
        for p in range(P):
            lanes[p] += row[p]
    return lanes.sum()


@njit(cache=True, parallel=True)
def channel_sum_simple(sums, x):
    for c in prange(x.shape[1]):  # thread c alone writes sums[c]
        sums[c] = _channel_total(x, c)


@njit(cache=True, parallel=True)
def dropout_forward_simple(out, mask, x, u, p):
    keep = x.dtype.type(1.0 / (1.0 - p))
    zero = x.dtype.type(0)
    for i in prange(x.size):
        m = keep if u[i] >= p else zero
        mask[i] = m
        out[i] = x[i] * m


@njit(cache=True, parallel=True)
def dropout_backward_simple(dx, dout, mask):
    for i in prange(dout.size):
        dx[i] = dout[i] * mask[i]


@njit(cache=True)
def softmax_cross_entropy_simple(dlogits, logits, labels, label_smoothing):
    # Serial: a batch of 128 rows of 10 logits is microseconds of work, less than waking a
    # thread pool.
    N, K = logits.shape
    loss = 0.0
    for n in range(N):
        top = logits[n, 0]
        for k in range(1, K):
            top = max(top, logits[n, k])
        total = 0.0
        for k in range(K):
            total += np.exp(logits[n, k] - top)
        log_total = np.log(total)
        for k in range(K):
            target = label_smoothing / K + (1 - label_smoothing if k == labels[n] else 0.0)
            log_p = logits[n, k] - top - log_total
            loss -= target * log_p / N
            dlogits[n, k] = (np.exp(log_p) - target) / N
    return loss


# ---------------------------------------------------------------------------------------------
# Rung 3, fast: the simple kernels, run on the calling thread alone when the array is small
# (kernels.threads_for). What that changes: a parallel loop over a few thousand elements
# spends longer waking the sleeping worker thread than working when other programs hold the
# cores: 128-386 us a call against 7-25 us on one thread, beside a second training process
# (tuning.SERIAL_MAX_ELEMENTS has the measurement).
# ---------------------------------------------------------------------------------------------


def _small_on_one_thread(kernel):
    def fast(*args):
        with threads_for(max(np.size(a) for a in args)):
            return kernel(*args)
    fast.__name__ = kernel.__name__.replace("_simple", "_fast")
    fast.__doc__ = f"{kernel.__name__}, on one thread for small arrays."
    return fast


# Two of these ops sum a row, and rung 2's sum `total += row[p]` runs one add after another:
# LLVM vectorises a sum only when it may reorder it. The fast rung's pooling and the gate's
# ds sum in vector lanes instead, through the helpers below, compiled with fastmath's
# "reassoc" and nothing else of fastmath (as batch norm's _row_sums): the order is then the
# compiled code's, the same on every run and for any thread count, and the float64 total
# keeps float64's precision. Measured in docs/PERFORMANCE.md ("Sums in vector lanes").


@njit(cache=True, fastmath={"reassoc"})
def _gate_rows_backward(dx, ds, dout, x, s):
    """For each row r of (R, P) arrays: dx[r] = dout[r] * s[r], and ds[r] = the sum of
    dout[r] * x[r] in float64, in vector lanes. One call per image: a call per row cost more
    than it saved on rows of 16 or 4 pixels."""
    for r in range(x.shape[0]):
        k = s[r]
        g = dout[r]
        src = x[r]
        dst = dx[r]
        total = 0.0
        for p in range(x.shape[1]):
            dst[p] = g[p] * k
            total += g[p] * src[p]
        ds[r] = total


@njit(cache=True, fastmath={"reassoc"})
def _row_means(out, x):
    """out[r] = the mean of row r of x (R, P), summed in float64 in vector lanes."""
    for r in range(x.shape[0]):
        row = x[r]
        total = 0.0
        for p in range(x.shape[1]):
            total += row[p]
        out[r] = total / x.shape[1]


@njit(cache=True, parallel=True)
def global_avg_pool_forward_lanes(out, x):
    """global_avg_pool_forward_simple, summing in vector lanes (_row_means), image by image."""
    for n in prange(x.shape[0]):
        _row_means(out[n], x[n])


@njit(cache=True, parallel=True)
def scale_channels_backward_lanes(dx, ds, dout, x, s):
    """scale_channels_backward_simple, ds summed in vector lanes (_gate_rows_backward), image
    by image."""
    for n in prange(x.shape[0]):
        _gate_rows_backward(dx[n], ds[n], dout[n], x[n], s[n])


relu_forward_fast = _small_on_one_thread(relu_forward_simple)
relu_backward_fast = _small_on_one_thread(relu_backward_simple)
relu6_forward_fast = _small_on_one_thread(relu6_forward_simple)
relu6_backward_fast = _small_on_one_thread(relu6_backward_simple)
hardswish_forward_fast = _small_on_one_thread(hardswish_forward_simple)
hardswish_backward_fast = _small_on_one_thread(hardswish_backward_simple)
hardsigmoid_forward_fast = _small_on_one_thread(hardsigmoid_forward_simple)
hardsigmoid_backward_fast = _small_on_one_thread(hardsigmoid_backward_simple)
global_avg_pool_forward_fast = _small_on_one_thread(global_avg_pool_forward_lanes)
global_avg_pool_backward_fast = _small_on_one_thread(global_avg_pool_backward_simple)
scale_channels_forward_fast = _small_on_one_thread(scale_channels_forward_simple)
scale_channels_backward_fast = _small_on_one_thread(scale_channels_backward_lanes)
add_channel_bias_fast = _small_on_one_thread(add_channel_bias_simple)
channel_sum_fast = _small_on_one_thread(channel_sum_simple)
dropout_forward_fast = _small_on_one_thread(dropout_forward_simple)
dropout_backward_fast = _small_on_one_thread(dropout_backward_simple)
softmax_cross_entropy_fast = softmax_cross_entropy_simple  # serial already


# ---------------------------------------------------------------------------------------------
# Squeeze-excite reading batch norm's output as it is read (V3). The gate's input y is the
# depthwise layer's batch norm and activation, act(x * scale + shift), which only the gate
# reads: it pools y, and its backward multiplies dout by y for ds. Both can make y one image
# at a time in a scratch image (batchnorm.affine_activate_plane, batch norm's operations in
# its order), so y is never written whole or kept; the projection after the gate reads
# act(x * scale + shift) * s the same way (kernels/matmul.py, 3d). The same bits as writing y
# first: the rows are the same numbers, summed and multiplied in the same order as the
# fast kernels above (_row_means, _gate_rows_backward). Rungs 1 and 2 make y whole first and
# run the plain kernels.
# ---------------------------------------------------------------------------------------------


def _whole(x, scale, shift, kind):
    """act(x * scale + shift) for x (N, C, P), made whole (batchnorm.normalized_input)."""
    N, C, P = x.shape
    return normalized_input(x.reshape(N, C, 1, P), scale, shift, kind).reshape(N, C, P)


def global_avg_pool_normalized_forward_loops(out, x, scale, shift, kind):
    """out[n, c] = mean over p of act(x[n, c, p] * scale[c] + shift[c])."""
    global_avg_pool_forward_loops(out, _whole(x, scale, shift, kind))


def global_avg_pool_normalized_forward_simple(out, x, scale, shift, kind):
    global_avg_pool_forward_simple(out, _whole(x, scale, shift, kind))


def scale_channels_normalized_backward_loops(dx, ds, dout, x, s, scale, shift, kind):
    """scale_channels_backward with the gate's input y = act(x * scale + shift): dx = dout * s
    is the gradient with respect to y, and ds = sum over p of dout * y."""
    scale_channels_backward_loops(dx, ds, dout, _whole(x, scale, shift, kind), s)


def scale_channels_normalized_backward_simple(dx, ds, dout, x, s, scale, shift, kind):
    scale_channels_backward_simple(dx, ds, dout, _whole(x, scale, shift, kind), s)


@njit(cache=True)
def _normalize_image(y, image, scale, shift, kind):
    """y = act(image * scale + shift) for one image (C, P), channel by channel."""
    for c in range(image.shape[0]):
        affine_activate_plane(y[c:c + 1], image[c:c + 1], scale[c], shift[c], kind)


@njit(cache=True, parallel=True)
def _global_avg_pool_normalized_images(out, x, scale, shift, kind, ntasks):
    N, C, P = x.shape
    for t in prange(ntasks):
        y = np.empty((C, P), dtype=x.dtype)  # one image of the normalised map
        for n in range(t * N // ntasks, (t + 1) * N // ntasks):
            _normalize_image(y, x[n], scale, shift, kind)
            _row_means(out[n], y)


@njit(cache=True, parallel=True)
def _scale_channels_normalized_images(dx, ds, dout, x, s, scale, shift, kind, ntasks):
    N, C, P = x.shape
    for t in prange(ntasks):
        y = np.empty((C, P), dtype=x.dtype)
        for n in range(t * N // ntasks, (t + 1) * N // ntasks):
            _normalize_image(y, x[n], scale, shift, kind)
            _gate_rows_backward(dx[n], ds[n], dout[n], y, s[n])


def _image_tasks(x):
    """Tasks for the image kernels: tuning.GATE_TASKS_PER_THREAD per thread, each with one
    scratch image."""
    return max(1, min(x.shape[0], tuning.GATE_TASKS_PER_THREAD * get_num_threads()))


def global_avg_pool_normalized_forward_fast(out, x, scale, shift, kind):
    with threads_for(x.size):
        _global_avg_pool_normalized_images(out, x, scale, shift, kind, _image_tasks(x))


def scale_channels_normalized_backward_fast(dx, ds, dout, x, s, scale, shift, kind):
    with threads_for(x.size):
        _scale_channels_normalized_images(dx, ds, dout, x, s, scale, shift, kind,
                                          _image_tasks(x))
