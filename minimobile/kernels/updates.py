"""Parameter updates: the optimisers' steps and the EMA of the weights, each one pass over memory.

    sgd_update      d = g + wd * p;  buf = m * buf + d (buf = d on the first step);
                    d = d + m * buf (Nesterov) or d = buf;  p -= lr * d
    rmsprop_update  d = g + wd * p;  v = alpha * v + d * d * (1 - alpha);
                    s = sqrt(v) + eps, or centered s = sqrt(v - m * m) + eps after
                    m += (1 - alpha) * (d - m);  buf = mom * buf + d / s;  p -= lr * buf
                    (p -= d / s * lr without momentum)
    adamw_update    p *= 1 - lr * wd;  m += (1 - b1) * (g - m);  v = b2 * v + g * g * (1 - b2);
                    p -= m / (sqrt(v) / bias_correction2_sqrt + eps) * step_size
    ema_update      shadow += w * (live - shadow)

with p, g, the buffers (buf, v, m) and the shadow flat arrays of one dtype, and the scalars
rounded to that dtype first, as NumPy rounds a Python float that meets a float32 array
(minimobile/optim.py, whose optimisers and EMA call these). Scalars made of several
hyper-parameters (1 - alpha, 1 - lr * wd, AdamW's bias corrections) are computed in Python
floats first and rounded once, as NumPy received them. Every operation rounds in the array's
dtype in the order written above, the order of the NumPy expressions they replace, so the
three rungs and the NumPy code give the same bits (IEEE sqrt and division are correctly
rounded in NumPy and in Numba alike).

Why a kernel at all: NumPy runs the SGD step as eight array operations, each a pass over
p-sized memory on one thread, RMSprop's as up to thirteen, AdamW's as fourteen, and the EMA
as three, with two temporary arrays. Once per training step that is small against a batch's
work, but it runs on one core while the other waits: V1 1.0's 3.2 million parameters took
8.7 ms for SGD and 4.6 ms for the EMA (cProfile on one thread, a rough profile of V1 1.0's
step at batch 1: docs/PERFORMANCE.md, "What a step pays once, whatever the batch"). One
fused pass, split over Numba's threads, reads and writes each array once.

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


def rmsprop_update_loops(p, v, buf, m, g, lr, alpha, eps, weight_decay, momentum, centered):
    """In place on the flat arrays p, v, buf and m (buf is used only with momentum, m only when
    centered). The branches test the Python floats, as the NumPy code did."""
    one = p.dtype.type
    lr_, a, a1, eps_ = one(lr), one(alpha), one(1.0 - alpha), one(eps)
    wd, mom = one(weight_decay), one(momentum)
    for i in range(p.size):
        d = g[i]
        if weight_decay != 0.0:
            d = p[i] * wd + d
        v[i] = v[i] * a + d * d * a1
        if centered:
            m[i] = m[i] + (d - m[i]) * a1
            s = np.sqrt(v[i] - m[i] * m[i]) + eps_
        else:
            s = np.sqrt(v[i]) + eps_
        if momentum > 0.0:
            buf[i] = buf[i] * mom + d / s
            p[i] = p[i] - buf[i] * lr_
        else:
            p[i] = p[i] - d / s * lr_


def adamw_update_loops(p, m, v, g, lr, beta1, beta2, eps, weight_decay, step_size,
                       bias_correction2_sqrt):
    """In place on the flat arrays p, m and v. step_size = lr / (1 - beta1**t) and
    bias_correction2_sqrt = (1 - beta2**t) ** 0.5 come from the caller, computed in Python:
    Numba's power need not round as Python's does."""
    one = p.dtype.type
    decay, eps_ = one(1.0 - lr * weight_decay), one(eps)
    b1, b2, b2_ = one(1.0 - beta1), one(beta2), one(1.0 - beta2)
    step, bc2 = one(step_size), one(bias_correction2_sqrt)
    for i in range(p.size):
        if weight_decay != 0.0:
            p[i] = p[i] * decay
        m[i] = m[i] + (g[i] - m[i]) * b1
        v[i] = v[i] * b2 + g[i] * g[i] * b2_
        p[i] = p[i] - m[i] / (np.sqrt(v[i]) / bc2 + eps_) * step


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
def rmsprop_update_simple(p, v, buf, m, g, lr, alpha, eps, weight_decay, momentum, centered):
    lr_ = p.dtype.type(lr)
    a = p.dtype.type(alpha)
    a1 = p.dtype.type(1.0 - alpha)
    eps_ = p.dtype.type(eps)
    wd = p.dtype.type(weight_decay)
    mom = p.dtype.type(momentum)
    for i in prange(p.size):
        d = g[i]
        if weight_decay != 0.0:
            d = p[i] * wd + d
        v[i] = v[i] * a + d * d * a1
        if centered:
            m[i] = m[i] + (d - m[i]) * a1
            s = np.sqrt(v[i] - m[i] * m[i]) + eps_
        else:
            s = np.sqrt(v[i]) + eps_
        if momentum > 0.0:
            buf[i] = buf[i] * mom + d / s
            p[i] = p[i] - buf[i] * lr_
        else:
            p[i] = p[i] - d / s * lr_


@njit(cache=True, parallel=True)
def adamw_update_simple(p, m, v, g, lr, beta1, beta2, eps, weight_decay, step_size,
                        bias_correction2_sqrt):
    decay = p.dtype.type(1.0 - lr * weight_decay)  # in float64 first, as Python computes it
    b1 = p.dtype.type(1.0 - beta1)
    b2 = p.dtype.type(beta2)
    b2_ = p.dtype.type(1.0 - beta2)
    eps_ = p.dtype.type(eps)
    step = p.dtype.type(step_size)
    bc2 = p.dtype.type(bias_correction2_sqrt)
    for i in prange(p.size):
        if weight_decay != 0.0:
            p[i] = p[i] * decay
        m[i] = m[i] + (g[i] - m[i]) * b1
        v[i] = v[i] * b2 + g[i] * g[i] * b2_
        p[i] = p[i] - m[i] / (np.sqrt(v[i]) / bc2 + eps_) * step


@njit(cache=True, parallel=True)
def ema_update_simple(shadow, live, weight):
    w = shadow.dtype.type(weight)
    for i in prange(shadow.size):
        shadow[i] = shadow[i] + w * (live[i] - shadow[i])


def sgd_update_fast(p, buf, g, lr, weight_decay, momentum, nesterov, first_step):
    with threads_for(p.size):
        sgd_update_simple(p, buf, g, lr, weight_decay, momentum, nesterov, first_step)


def rmsprop_update_fast(p, v, buf, m, g, lr, alpha, eps, weight_decay, momentum, centered):
    with threads_for(p.size):
        rmsprop_update_simple(p, v, buf, m, g, lr, alpha, eps, weight_decay, momentum, centered)


def adamw_update_fast(p, m, v, g, lr, beta1, beta2, eps, weight_decay, step_size,
                      bias_correction2_sqrt):
    with threads_for(p.size):
        adamw_update_simple(p, m, v, g, lr, beta1, beta2, eps, weight_decay, step_size,
                            bias_correction2_sqrt)


def ema_update_fast(shadow, live, weight):
    with threads_for(shadow.size):
        ema_update_simple(shadow, live, weight)
