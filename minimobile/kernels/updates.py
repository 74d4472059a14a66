"""Parameter updates: SGD's step and the EMA of the weights, each one pass over memory.

    sgd_update   d = g + wd * p;  buf = m * buf + d (buf = d on the first step);
                 d = d + m * buf (Nesterov) or d = buf;  p -= lr * d
    ema_update   shadow += w * (live - shadow)

with p, g, buf (the momentum buffer) and the shadow flat arrays of one dtype, and the scalars
rounded to that dtype first, as NumPy rounds a Python float that meets a float32 array
(minimobile/optim.py, whose SGD and EMA call these). Every operation rounds in the array's
dtype in the order written above, the order of the NumPy expressions they replace, so the
three rungs and the NumPy code give the same bits.

Why a kernel at all: NumPy runs the SGD step as eight array operations, each a pass over
p-sized memory on one thread, and the EMA as three, with two temporary arrays. Once per
training step that is small against a batch's work, but it runs on one core while the other
waits: V1 1.0's 3.2 million parameters took 8.7 ms for SGD and 4.6 ms for the EMA
(2026-11-29, thread time, batch 2, benchmarks in the commit that adds this module). One fused
pass, split over Numba's threads, reads and writes each array once.

The staircase: `_loops` is the formula element by element; `_simple` is the same loop in
Numba, parallel over elements (each element's update is independent, so any split gives the
same bits); `_fast` is `_simple`, kept on one thread for small arrays (batch norm's 1-D
parameters), where waking a worker costs more than the work.
"""

import numpy as np
from numba import njit, prange

from . import threads_for


def sgd_update_loops(p, buf, g, lr, weight_decay, momentum, nesterov, first_step):
    """In place on the flat arrays p and buf (buf is not read or written when momentum is 0)."""
    one = p.dtype.type
    lr, wd, m = one(lr), one(weight_decay), one(momentum)
    for i in range(p.size):
        d = g[i]
        if wd != 0:
            d = p[i] * wd + d
        if m != 0:
            buf[i] = d if first_step else buf[i] * m + d
            d = buf[i] * m + d if nesterov else buf[i]
        p[i] = p[i] - d * lr


def ema_update_loops(shadow, live, weight):
    """shadow += weight * (live - shadow), in place on flat float arrays."""
    w = shadow.dtype.type(weight)
    for i in range(shadow.size):
        shadow[i] = shadow[i] + w * (live[i] - shadow[i])


@njit(cache=True, parallel=True)
def sgd_update_simple(p, buf, g, lr, weight_decay, momentum, nesterov, first_step):
    lr_ = p.dtype.type(lr)
    wd = p.dtype.type(weight_decay)
    m = p.dtype.type(momentum)
    for i in prange(p.size):
        d = g[i]
        if wd != 0:
            d = p[i] * wd + d
        if m != 0:
            if first_step:
                buf[i] = d
            else:
                buf[i] = buf[i] * m + d
            if nesterov:
                d = buf[i] * m + d
            else:
                d = buf[i]
        p[i] = p[i] - d * lr_


@njit(cache=True, parallel=True)
def ema_update_simple(shadow, live, weight):
    w = shadow.dtype.type(weight)
    for i in prange(shadow.size):
        shadow[i] = shadow[i] + w * (live[i] - shadow[i])


def sgd_update_fast(p, buf, g, lr, weight_decay, momentum, nesterov, first_step):
    with threads_for(p.size):
        sgd_update_simple(p, buf, g, lr, weight_decay, momentum, nesterov, first_step)


def ema_update_fast(shadow, live, weight):
    with threads_for(shadow.size):
        ema_update_simple(shadow, live, weight)
